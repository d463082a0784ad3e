"""Weight reparameterizations shared by the continuous methods (STR, Sign-In, PILoT).

The forward weight of a layer is computed from trainable factors with
``torch.nn.utils.parametrize``: ``layer.weight`` becomes a property that
returns the computed weight, the factors live under
``layer.parametrizations.weight`` (``original`` for STR, ``original0`` = m and
``original1`` = w for the product), and the module's own forward code is
untouched. We use parametrize rather than forward pre-hooks (the approach of
``torch.nn.utils.prune``) because every reader of ``layer.weight`` (forward,
reports, sign-flip counts, evaluation, export) then sees the computed weight,
with no stale copy kept between forwards, and it works for any module type.

Also here: ``FactorTensors`` (what a masked method masks on an m * w layer),
``OriginalTensors`` (the raw W under a one-tensor parametrization: STR, CS),
the exact-count magnitude projection used by STR's final projection and
PILoT's final pruning, and helpers that turn a reparameterized
model back into a plain one (``plain_state_dict``, ``remove_reparameterizations``).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.utils import parametrize

from sparsifiers.masked import MaskedTensors
from sparsifiers.masks import global_topk_masks, layer_topk_masks
from sparsifiers.optimizer_state import reset_entries


# ---- theta = m * w -----------------------------------------------------------------
def balanced_factors(theta: torch.Tensor, gamma: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(m, w) with m * w = theta and m^2 - w^2 = gamma, m >= 0 (w carries the sign).

    ``m = sqrt((gamma + sqrt(gamma^2 + 4 theta^2)) / 2)``, ``w = theta / m``;
    theta = 0 gives m = sqrt(gamma), w = 0 exactly. gamma = 0 is spred's
    split ``m = sqrt|theta|``, ``w = sign(theta) sqrt|theta|`` (0, 0 at theta = 0).
    """
    m = torch.sqrt((gamma + torch.sqrt(gamma * gamma + 4.0 * theta * theta)) / 2.0)
    if gamma > 0:
        return m, theta / m
    return m, torch.where(m > 0, theta / m, torch.zeros_like(theta))


class ProductWeight(nn.Module):
    """Parametrization ``weight = m * w``; registering it splits the current weight into factors at ``gamma``."""

    def __init__(self, gamma: float = 1.0):
        super().__init__()
        self.gamma = gamma

    def forward(self, m: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return m * w

    def right_inverse(self, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return balanced_factors(theta.detach(), self.gamma)


def add_product(layer: nn.Module, gamma: float = 1.0) -> tuple[nn.Parameter, nn.Parameter]:
    """Reparameterize ``layer.weight`` as m * w (m^2 - w^2 = gamma, 1: balanced); returns the new (m, w)."""
    parametrize.register_parametrization(layer, "weight", ProductWeight(gamma))
    return product_factors(layer)


def product_factors(layer: nn.Module) -> tuple[nn.Parameter, nn.Parameter]:
    container = layer.parametrizations.weight
    return container.original0, container.original1


class FactorTensors(MaskedTensors):
    """What a masked method masks for a layer reparameterized as m * w: the factor w (which carries the sign;
    w = 0 gives theta = 0); its optimizer-state resets act on both factors."""

    def __init__(self, layers, factors: dict[str, tuple[nn.Parameter, nn.Parameter]]):
        super().__init__(layers)
        self.factors = factors

    def get(self, key: str) -> torch.Tensor:
        pair = self.factors.get(key)
        return pair[1] if pair is not None else super().get(key)

    def reset_entries(self, optimizer, key: str, keep: torch.Tensor | None = None) -> None:
        for tensor in self.factors.get(key, (super().get(key),)):
            reset_entries(optimizer, tensor, keep)


class OriginalTensors(MaskedTensors):
    """What a method masks on a layer whose weight one parametrization computes from W (STR, CS): the raw W."""

    def get(self, key: str) -> torch.Tensor:
        layer = self.layers[key.rsplit(".", 1)[0]]
        if parametrize.is_parametrized(layer, "weight"):
            return layer.parametrizations.weight.original
        return layer.weight


@torch.no_grad()
def rebalance_(m: torch.Tensor, w: torch.Tensor, gamma: float = 1.0) -> None:
    """Re-balance (m, w) in place to m^2 - w^2 = gamma, keeping m * w (up to rounding)."""
    new_m, new_w = balanced_factors(m * w, gamma)
    m.copy_(new_m)
    w.copy_(new_w)


# ---- back to a plain model ----------------------------------------------------------------
def plain_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """``model.state_dict()`` with every reparameterized weight merged into ``<layer>.weight``.

    Loads into the same architecture without any sparsifier attached (export,
    evaluation elsewhere). The model itself is not changed.
    """
    state = model.state_dict()
    for name, module in model.named_modules():
        if not parametrize.is_parametrized(module):
            continue
        prefix = f"{name}." if name else ""
        for tensor_name in list(module.parametrizations.keys()):
            drop = f"{prefix}parametrizations.{tensor_name}."
            for key in [k for k in state if k.startswith(drop)]:
                del state[key]
            state[f"{prefix}{tensor_name}"] = getattr(module, tensor_name).detach().clone()
    return state


def remove_reparameterizations(model: nn.Module) -> None:
    """Merge every reparameterized weight into a plain ``weight`` Parameter, in place.

    The factors (and any optimizer built on them) are gone afterwards: use it
    for evaluation or export at the end of training, not to continue training.
    """
    for module in model.modules():
        if parametrize.is_parametrized(module):
            for tensor_name in list(module.parametrizations.keys()):
                parametrize.remove_parametrizations(module, tensor_name, leave_parametrized=True)


# ---- exact-count magnitude projection ---------------------------------------------------------
def epoch_at(fraction: float, epochs: int) -> int:
    """1-based epoch at whose end an event placed at ``fraction`` of training happens (at least 1)."""
    return max(1, min(epochs, int(math.floor(fraction * epochs + 1e-9))))


def late_event_warnings(name: str, key: str, fraction: float, epochs: int) -> list[str]:
    """A warning when a projection meant to leave fine-tuning epochs (fraction < 1) lands on the run's last epoch."""
    if fraction < 1.0 and epoch_at(fraction, epochs) == epochs:
        return [f"{name}: sparsifier.{key}={fraction:g} falls at the end of the last epoch of this {epochs}-epoch "
                f"run, so the fixed mask gets no fine-tuning; run more epochs or lower sparsifier.{key}"]
    return []


@torch.no_grad()
def projection_masks(sparsifier, scores: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Exact-count masks keeping the largest ``scores`` of a ``MaskedSparsifier``'s masked layers.

    ``distribution=global``: one top-k over all masked layers with exactly
    ``round(sparsity * N)`` zeros (AC/DC's global count); ``uniform``/``erk``:
    a top-k per layer at its target count (``active_counts`` of
    ``target_density_by_name``; layers at density 1 get no mask).
    """
    if sparsifier.selection.distribution == "global":
        total = sum(s.numel() for s in scores.values())
        return global_topk_masks(scores, total - round(sparsifier.selection.sparsity * total))
    counts = sparsifier.target_counts()
    return layer_topk_masks({key: score for key, score in scores.items()
                             if sparsifier.target_density_by_name[key] < 1.0}, counts)


@torch.no_grad()
def pin_masked_factors(factors: dict[str, tuple[torch.Tensor, torch.Tensor]], masks: dict[str, torch.Tensor],
                       optimizer=None) -> None:
    """Hold masked entries of m * w at the balanced zero: m = 1 (and w = 0, kept by the mask on w).

    Also zeroes m's optimizer state there, so a regrown entry restarts from
    m = 1, w = 0 with no stale momentum, and its first gradient on w equals
    the gradient on theta. No host sync.
    """
    for key, mask in masks.items():
        pair = factors.get(key)
        if pair is None:
            continue
        m = pair[0]
        m.masked_fill_(mask.logical_not(), 1.0)
        reset_entries(optimizer, m, keep=mask)

