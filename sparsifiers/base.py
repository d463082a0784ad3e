"""The small interface every sparsifier implements, and the shared mask machinery.

The trainer only talks to this interface; it never asks which method runs.
Call order inside one training step (see ``ham_bench.trainer``)::

    loss.backward()
    sparsifier.mask_gradients()          # after EVERY backward (SAM does two)
    run = sparsifier.before_step(step)   # once per step; False skips the optimizer step (RigL)
    if run: optimizer.step()             # base optimizer, then HAM
    sparsifier.after_step(step)          # re-apply masks, schedules, regrowth

and once per epoch ``on_epoch_start(epoch)`` / ``on_epoch_end(epoch, stats)``.

A sparsifier knows nothing of HAM: it sees the optimizer only through
``bind_optimizer`` (to reset or zero optimizer state, e.g. AC/DC's momentum
reset or RigL's zero-init of regrown weights). ``optimizer.state`` and
``optimizer.param_groups`` of ham_bench's HAM/SAM wrappers are the base
optimizer's own objects, so the same code works for every optimizer.

Layer selection (shared by all methods): the ``weight`` of every Conv*d and
Linear module, in ``model.named_modules()`` order. ``dense_first`` /
``dense_last`` keep the first conv / last linear dense; such layers stay in
the reports (density 1.0) but are never masked.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

PRUNABLE_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


@dataclass
class TrainingContext:
    """What a sparsifier may need to know about the run it is attached to."""

    epochs: int
    steps_per_epoch: int
    seed: int = 0
    device: torch.device | str = "cpu"

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch


def prunable_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Conv and linear modules by qualified name, in definition order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, PRUNABLE_TYPES)}


def zero_optimizer_state(optimizer, param: torch.Tensor, keep: torch.Tensor | None = None) -> None:
    """Zero the per-element optimizer state of ``param`` (momentum, Adam moments).

    With ``keep`` (a bool mask of param's shape), only entries where keep is
    False are zeroed. Scalar state such as Adam's ``step`` is left alone.
    """
    if optimizer is None:
        return
    state = optimizer.state.get(param)
    if not state:
        return
    for value in state.values():
        if torch.is_tensor(value) and value.shape == param.shape:
            if keep is None:
                value.zero_()
            else:
                value.mul_(keep)


class Sparsifier:
    """Base class and the ``dense`` method: no masking at all.

    Subclasses override a few hooks. ``sparsity`` is the target fraction of
    zeros over the masked layers (dense first/last layers included in the
    count, as RigL's ERK does).
    """

    name = "dense"

    def __init__(self, sparsity: float = 0.0, distribution: str = "uniform", dense_first: bool = True,
                 dense_last: bool = False, power_scale: float = 1.0, seed: int | None = None):
        if not 0.0 <= float(sparsity) < 1.0:
            raise ValueError(f"sparsifier.sparsity must be in [0, 1), got {sparsity}")
        self.sparsity = float(sparsity)
        self.distribution = distribution
        self.dense_first = dense_first
        self.dense_last = dense_last
        self.power_scale = power_scale
        self.seed = seed
        self.model: nn.Module | None = None
        self.context: TrainingContext | None = None
        self.optimizer = None
        self.layers: dict[str, nn.Module] = {}

    # ---- set-up -----------------------------------------------------------------
    def attach(self, model: nn.Module, context: TrainingContext) -> None:
        """Select layers and build masks. Called once, before the optimizer exists."""
        self.model = model
        self.context = context
        self.layers = prunable_layers(model)

    def masked_layer_names(self) -> list[str]:
        """Names of the selected layers that may be masked (first/last excluded as configured)."""
        names = list(self.layers)
        convs = [n for n in names if not isinstance(self.layers[n], nn.Linear)]
        linears = [n for n in names if isinstance(self.layers[n], nn.Linear)]
        excluded = set()
        if self.dense_first and convs:
            excluded.add(convs[0])
        elif self.dense_first and not convs and linears:
            excluded.add(linears[0])
        if self.dense_last and linears:
            excluded.add(linears[-1])
        return [n for n in names if n not in excluded]

    def parameter_group_overrides(self) -> list[dict[str, Any]]:
        """Extra optimizer settings for parameters this method adds.

        Each entry is ``{"params": [...], <group keys>}``; e.g. STR returns its
        thresholds with ``weight_decay`` set and ``ham: False``.
        """
        return []

    def bind_optimizer(self, optimizer) -> None:
        """Called once the optimizer (possibly HAM- or SAM-wrapped) exists."""
        self.optimizer = optimizer

    # ---- per step ----------------------------------------------------------------
    def mask_gradients(self) -> None:
        """Called after every backward pass."""

    def before_step(self, step: int) -> bool:
        """Called once per step before the optimizer; return False to skip its step."""
        return True

    def after_step(self, step: int) -> None:
        """Called after the optimizer step (base + HAM)."""

    # ---- per epoch ---------------------------------------------------------------
    def on_epoch_start(self, epoch: int) -> None:
        pass

    def on_epoch_end(self, epoch: int, stats: dict[str, float] | None = None) -> None:
        """``stats`` carries the epoch's training metrics (e.g. ``train_acc``)."""

    # ---- reports -----------------------------------------------------------------
    def effective_weights(self) -> dict[str, torch.Tensor]:
        """The weight each selected layer uses in its forward pass, by ``<layer>.weight``.

        Reports (sparsity, sign flips) read these, so methods whose weight is
        computed (STR's soft threshold, Sign-In's m*w) are measured like the rest.
        """
        return {f"{name}.weight": m.weight.detach() for name, m in self.layers.items()}

    def masks(self) -> dict[str, torch.Tensor]:
        """Current bool masks of the masked layers by ``<layer>.weight`` (empty when none)."""
        return {}

    def target_densities(self) -> dict[str, float]:
        """Target density per selected layer (1.0 for dense ones)."""
        return {f"{name}.weight": 1.0 for name in self.layers}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class MaskedSparsifier(Sparsifier):
    """Shared machinery for methods that keep explicit bool masks on layer weights.

    Masks live in ``self.mask_by_name`` keyed ``<layer>.weight``. Gradients of
    masked entries are zeroed after every backward and weights re-masked after
    every optimizer step (after HAM too), so masked weights stay exactly zero.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.mask_by_name: dict[str, torch.Tensor] = {}
        self.masking_enabled = True

    def weight(self, key: str) -> torch.Tensor:
        return self.layers[key.rsplit(".", 1)[0]].weight

    @torch.no_grad()
    def apply_masks(self) -> None:
        if not self.masking_enabled:
            return
        for key, mask in self.mask_by_name.items():
            self.weight(key).mul_(mask)

    @torch.no_grad()
    def mask_gradients(self) -> None:
        if not self.masking_enabled:
            return
        for key, mask in self.mask_by_name.items():
            grad = self.weight(key).grad
            if grad is not None:
                grad.mul_(mask)

    def after_step(self, step: int) -> None:
        self.apply_masks()

    def masks(self) -> dict[str, torch.Tensor]:
        return dict(self.mask_by_name) if self.masking_enabled else {}

    def state_dict(self) -> dict[str, Any]:
        return {"masks": {k: v.clone() for k, v in self.mask_by_name.items()},
                "masking_enabled": self.masking_enabled}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, mask in state.get("masks", {}).items():
            self.mask_by_name[key] = mask.to(self.weight(key).device)
        self.masking_enabled = state.get("masking_enabled", True)
        self.apply_masks()
