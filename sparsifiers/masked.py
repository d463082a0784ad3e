"""Methods with explicit bool masks on layer weights: the shared machinery, and Random PaI as its default.

A ``MaskedSparsifier`` keeps its masks in ``mask_by_name`` (``<layer>.weight``
-> bool tensor), only for layers that are actually masked (kept-dense and
density-1 layers have none). Gradients of masked entries are zeroed after
every backward and weights re-masked after every optimizer step (after HAM
too), so masked weights stay exactly zero under momentum, weight decay and
HAM. Unless the layers are reparameterized, the masks may be handed to the
optimizer instead (``optimizer_masks``, ``sparsifiers.base``): the kernel that
updates a weight then masks its gradient and the weight itself, and the two
passes here skip it for that step. A method overrides what makes it different:

- ``initial_masks()`` (default: exact-count random masks at the target
  densities, i.e. Random PaI, which is this class under its own name) and ``initial_densities()`` (default: the
  configured distribution, ``uniform`` or ``erk``);
- schedules in ``before_step`` / ``after_step`` / ``on_epoch_end``, changing
  masks with ``set_masks`` (``sparsifiers.masks`` turns scores into
  exact-count masks).

Which tensor a method masks and scores for a layer is not hard-wired: it
asks ``self.tensors`` (a :class:`MaskedTensors`), which by default is the
layer's weight. A method whose layers are reparameterized (STR) or a
wrapper that reparameterizes another method's layers (Sign-In) injects a
different ``MaskedTensors`` before ``attach``: ``tensors.get(key)`` is then,
e.g., the factor w of m * w, and ``tensors.reset_entries`` resets the state
of both factors. The inner method's code is the same either way.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from sparsifiers.base import Sparsifier, TrainingContext
from sparsifiers.distributions import DISTRIBUTIONS, active_counts, layer_densities, random_masks
from sparsifiers.optimizer_state import reset_entries


class MaskedTensors:
    """The tensor a masked method masks and scores for each layer: here, the layer's own weight."""

    def __init__(self, layers: Mapping[str, nn.Module]):
        self.layers = layers

    def get(self, key: str) -> torch.Tensor:
        return self.layers[key.rsplit(".", 1)[0]].weight

    def reset_entries(self, optimizer, key: str, keep: torch.Tensor | None = None) -> None:
        """Fresh optimizer state for ``key``'s tensor where ``keep`` is False (``optimizer_state``)."""
        reset_entries(optimizer, self.get(key), keep)


class MaskedSparsifier(Sparsifier):
    """Fixed exact-count masks drawn at attach (Random PaI, ``sparsifiers.random``); every masked method's base."""

    name = "masked"
    selection_defaults = {"sparsity": 0.9, "distribution": "erk"}
    distributions = DISTRIBUTIONS

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.mask_by_name: dict[str, torch.Tensor] = {}
        self.target_density_by_name: dict[str, float] = {}
        self.chosen_densities: dict[str, torch.Tensor] = {}  # under global: the split the last top-k chose
        self.tensors: MaskedTensors | None = None  # injected by a wrapper, else set in attach

    # ---- set-up ---------------------------------------------------------------------------
    @torch.no_grad()
    def attach(self, model: nn.Module, context: TrainingContext) -> None:
        super().attach(model, context)
        if self.tensors is None:
            self.tensors = self.default_tensors()
        self.target_density_by_name = self.initial_densities()
        self.set_masks(self.initial_masks())

    def default_tensors(self) -> MaskedTensors:
        """What this method masks per layer when no wrapper injected ``tensors``: the layer's weight."""
        return MaskedTensors(self.layers)

    def initial_densities(self) -> dict[str, float]:
        """Target density per selected layer (kept-dense layers: 1) from the configured distribution.

        ``global`` (magnitude methods that rank all layers together) fixes only the total: every
        masked layer shows ``1 - sparsity`` until the method's own top-k chooses the split.
        """
        if self.selection.distribution == "global":
            masked = set(self.masked_keys)
            return {key: (1.0 - self.selection.sparsity if key in masked else 1.0) for key in self.layer_shapes()}
        return layer_densities(self.selection.distribution, self.layer_shapes(), self.selection.sparsity,
                               self.selection.power_scale, dense_names=self.dense_keys())

    def initial_masks(self) -> dict[str, torch.Tensor]:
        """Exact-count random masks at the target densities (layers at density 1 get none)."""
        drawn = random_masks(self.layer_shapes(), self.target_density_by_name, self.generator())
        return {key: mask.to(self.tensors.get(key).device) for key, mask in drawn.items()
                if self.target_density_by_name[key] < 1.0}

    # ---- helpers for methods -----------------------------------------------------------------
    def layer_shapes(self) -> dict[str, tuple[int, ...]]:
        """Shapes of every selected layer's masked tensor, by ``<layer>.weight``."""
        return {f"{name}.weight": tuple(self.tensors.get(f"{name}.weight").shape) for name in self.layers}

    def dense_keys(self) -> list[str]:
        """Selected layers kept dense by ``dense_first`` / ``dense_last``."""
        masked = set(self.masked_keys)
        return [f"{name}.weight" for name in self.layers if f"{name}.weight" not in masked]

    def target_counts(self) -> dict[str, int]:
        """Exact nonzeros per selected layer at the target densities."""
        return active_counts(self.layer_shapes(), self.target_density_by_name)

    @torch.no_grad()
    def set_masks(self, masks: Mapping[str, torch.Tensor], reset_pruned_state: bool = False) -> None:
        """Adopt ``masks`` (``{}``: no masking) and zero the masked weights; optionally give the newly
        masked entries a fresh optimizer state, so a later regrowth starts clean."""
        self.mask_by_name = dict(masks)
        if self.mask_by_name and self.selection.distribution == "global":  # device tensors: no sync here
            self.chosen_densities = {key: mask.float().mean() for key, mask in self.mask_by_name.items()}
        self.apply_masks()  # a subclass's apply_masks (spred: both factors); new masks are never skipped
        if reset_pruned_state:
            for key, mask in self.mask_by_name.items():
                self.tensors.reset_entries(self.optimizer, key, keep=mask)

    @torch.no_grad()
    def apply_masks(self) -> None:
        """Re-mask; skips a mask the optimizer applied in this step (the same object, unchanged since): in
        force already."""
        applied = self.masks_applied_by_optimizer
        self._mask_tensors(skip={key for key, seen in applied.items() if seen is not None
                                 and seen[0] is self.mask_by_name.get(key) and seen[0]._version == seen[1]})

    @torch.no_grad()
    def _mask_tensors(self, skip: set[str] | frozenset[str] = frozenset()) -> None:
        for key, mask in self.mask_by_name.items():
            if key not in skip:
                self.tensors.get(key).mul_(mask)

    # ---- hooks --------------------------------------------------------------------------------
    def trains_dense(self, step: int) -> bool:
        return False

    @torch.no_grad()
    def mask_gradients(self) -> None:
        skip = self.masks_applied_by_optimizer
        for key, mask in self.mask_by_name.items():
            if key in skip:
                continue
            grad = self.tensors.get(key).grad
            if grad is not None:
                grad.mul_(mask)

    def after_step(self, step: int) -> None:
        self.apply_masks()

    def masks(self) -> dict[str, torch.Tensor]:
        return dict(self.mask_by_name)

    def masked_tensors(self) -> dict[str, torch.Tensor]:
        return {key: self.tensors.get(key) for key in self.mask_by_name}

    def optimizer_masks(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """The masks this class enforces, on their tensors; none for reparameterized layers (their hooks
        do more around the masking than the optimizer would)."""
        if self.reparameterizes_weights:
            return {}
        return {key: (self.tensors.get(key), mask) for key, mask in self.mask_by_name.items()}

    def target_densities(self) -> dict[str, float]:
        """Per-layer targets. Under ``global`` only the total is fixed: every masked layer shows ``1 - sparsity``
        until a top-k chooses the split, then the densities the last one chose (kept through dense phases)."""
        targets = dict(self.target_density_by_name) or super().target_densities()
        return {**targets, **{key: float(density) for key, density in self.chosen_densities.items()}}

    def state_dict(self) -> dict[str, Any]:
        return {"masks": {k: v.clone() for k, v in self.mask_by_name.items()},
                "chosen_densities": {k: v.clone() for k, v in self.chosen_densities.items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.mask_by_name = {key: mask.to(self.tensors.get(key).device, torch.bool)
                             for key, mask in state["masks"].items()}
        self.chosen_densities = {key: torch.as_tensor(value) for key, value in state["chosen_densities"].items()}
        self.apply_masks()
