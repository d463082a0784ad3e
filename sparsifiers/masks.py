"""Scores to masks with exact counts: the one top-k every method uses.

A mask keeps exactly ``k`` entries, chosen by ``torch.topk`` on the scores:
ties are broken by topk's order (deterministic on CPU), never by a
threshold compare, which can keep more or fewer than ``k`` when scores tie
(STR's thresholded zeros, SynFlow's disconnected weights). No host sync.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor


def topk_mask(scores: Tensor, k: int) -> Tensor:
    """A bool mask of ``scores``' shape with True at its ``k`` largest entries."""
    flat = torch.zeros(scores.numel(), dtype=torch.bool, device=scores.device)
    flat[torch.topk(scores.detach().flatten(), k, sorted=False).indices] = True
    return flat.view(scores.shape)


def global_topk_masks(scores: Mapping[str, Tensor], k: int) -> dict[str, Tensor]:
    """Masks keeping the ``k`` largest scores over all tensors together (a method's global budget)."""
    total = sum(s.numel() for s in scores.values())
    if not 0 <= k <= total:
        raise ValueError(f"cannot keep {k} of {total} weights")
    flat = topk_mask(torch.cat([s.detach().flatten().float() for s in scores.values()]), k)
    parts = flat.split([s.numel() for s in scores.values()])
    return {key: part.view(s.shape) for (key, s), part in zip(scores.items(), parts)}


def layer_topk_masks(scores: Mapping[str, Tensor], counts: Mapping[str, int]) -> dict[str, Tensor]:
    """Per-layer masks keeping ``counts[key]`` largest scores of each tensor."""
    return {key: topk_mask(score.float(), counts[key]) for key, score in scores.items()}
