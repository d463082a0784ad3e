"""Scores to masks with exact counts: the one top-k every method uses, unstructured and N:M.

A mask keeps exactly ``k`` entries, chosen by ``torch.topk`` on the scores:
ties are broken by topk's order (deterministic on CPU), or with
``index_ties=True`` by a stable sort (the lower flat index wins: SynFlow's
many exactly-zero scores), never by a threshold compare, which can keep more
or fewer than ``k`` when scores tie (STR's thresholded zeros, SynFlow's
disconnected weights). No host sync.

N:M: a weight of shape (O, I) or (O, I, *kernel) is cut into groups of ``m``
consecutive entries along the input dimension I, the GEMM reduction
dimension that sparse tensor cores need, taken in (O, *kernel, I) order
(NHWC for convs): ``nm_groups``. ``nm_topk_mask`` keeps the ``n`` largest
scores of every group (ties: the lower input index). A layer is N:M-valid
when every group holds at most ``n`` nonzeros (``nm_valid``).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor


def topk_mask(scores: Tensor, k: int, index_ties: bool = False) -> Tensor:
    """A bool mask of ``scores``' shape with True at its ``k`` largest entries (``index_ties``: lower index first)."""
    flat = torch.zeros(scores.numel(), dtype=torch.bool, device=scores.device)
    values = scores.detach().flatten()
    if index_ties:
        flat[torch.sort(values, descending=True, stable=True).indices[:k]] = True
    else:
        flat[torch.topk(values, k, sorted=False).indices] = True
    return flat.view(scores.shape)


def global_topk_masks(scores: Mapping[str, Tensor], k: int, index_ties: bool = False) -> dict[str, Tensor]:
    """Masks keeping the ``k`` largest scores over all tensors together (a method's global budget)."""
    total = sum(s.numel() for s in scores.values())
    if not 0 <= k <= total:
        raise ValueError(f"cannot keep {k} of {total} weights")
    dtype = torch.float64 if any(s.dtype == torch.float64 for s in scores.values()) else torch.float32
    flat = topk_mask(torch.cat([s.detach().flatten().to(dtype) for s in scores.values()]), k, index_ties)
    parts = flat.split([s.numel() for s in scores.values()])
    return {key: part.view(s.shape) for (key, s), part in zip(scores.items(), parts)}


def layer_topk_masks(scores: Mapping[str, Tensor], counts: Mapping[str, int],
                     index_ties: bool = False) -> dict[str, Tensor]:
    """Per-layer masks keeping ``counts[key]`` largest scores of each tensor."""
    return {key: topk_mask(score if score.dtype == torch.float64 else score.float(), counts[key], index_ties)
            for key, score in scores.items()}


# ---- N:M along the input dimension ------------------------------------------------------------------
def nm_divisible(shape, m: int) -> bool:
    """Whether a weight of ``shape`` splits into N:M groups inside its input dimension (I % m == 0)."""
    return len(shape) >= 2 and shape[1] % m == 0


def nm_groups(tensor: Tensor, m: int) -> Tensor:
    """``tensor`` as rows of ``m`` consecutive input entries, in (O, *kernel, I) order (NHWC for convs)."""
    if tensor.dim() > 2:
        tensor = tensor.movedim(1, -1)
    return tensor.reshape(-1, m)


def nm_ungroup(groups: Tensor, shape) -> Tensor:
    """The inverse of ``nm_groups``: rows back to a tensor of ``shape``."""
    shape = tuple(shape)
    if len(shape) > 2:
        return groups.reshape(shape[0], *shape[2:], shape[1]).movedim(-1, 1).contiguous()
    return groups.reshape(shape)


def nm_topk_mask(scores: Tensor, n: int, m: int) -> Tensor:
    """A bool mask keeping the ``n`` largest scores of every group of ``m`` (``nm_groups``; ties: lower index)."""
    groups = nm_groups(scores.detach(), m)
    kept = torch.sort(groups, dim=1, descending=True, stable=True).indices[:, :n]
    mask = torch.zeros(groups.shape, dtype=torch.bool, device=scores.device).scatter_(1, kept, True)
    return nm_ungroup(mask, scores.shape)


def nm_valid(weight: Tensor, n: int, m: int) -> Tensor:
    """A 0-d bool tensor: every group of ``m`` of ``weight`` holds at most ``n`` nonzeros (no host sync)."""
    return (nm_groups(weight.detach() != 0, m).sum(dim=1) <= n).all()


def nm_validity(weights: Mapping[str, Tensor], n: int, m: int) -> dict[str, bool]:
    """Per tensor, whether it is N:M-valid (``nm_valid``); reads the device (a host sync: per epoch, not per step)."""
    return {key: bool(nm_valid(weight, n, m)) for key, weight in weights.items()}
