"""RigL: Rigging the Lottery (Evci et al., ICML 2020), dynamic sparse training with constant layer sizes.

Every ``update_interval`` steps (dT) until ``update_end`` (T_end, a fraction
of the run's steps), in every masked layer: drop the ``floor(f(t) * n_active)``
active weights of smallest |w|, then grow as many connections, among those
inactive after the drop, with the largest |dense gradient| (a just-dropped
one may regrow and keeps its value and optimizer state). New connections
start at w = 0 with zero optimizer state; dropped ones are zeroed with their
state. Per-layer counts never change. ``f(t) = f0/2 * (1 + cos(pi t / T_end))``
(``drop_fraction_schedule=cosine``; ``constant`` keeps f0). On update steps
the optimizer step is skipped (``skip_step_on_update``, as the reference;
declared by ``skips_optimizer_step``).
Initial masks: exact-count random masks from ``distribution`` (ERK default).

The dense gradient: RigL declares ``needs_dense_gradient`` on its update
steps, so the step engine copies each masked layer's full gradient before
masking it as on every step (SAM's perturbation and the optimizer never see
inactive gradients) and hands the copy to ``before_step``, which scores
growth from it. The copy is the gradient of the step's first backward, at
the current (unperturbed) weights: under SAM, growth is scored there, not at
SAM's perturbed point, because ``before_step`` runs before the optimizer step
whose closure makes SAM's second backward (the convention of every method,
``sparsifiers.base``). When the optimizer
step is not skipped, the layer's gradient becomes the copy masked by the NEW
mask, so new connections take their first step with their real gradient.

Data parallelism: if ``torch.distributed`` is initialized, the gradient copy
is all-reduced (averaged) before scoring, so every rank picks the same
connections even when gradients are not synchronised (e.g. under
``no_sync`` accumulation); under plain DDP it is already the averaged
gradient and the reduction changes nothing. Weights are identical across
ranks, so drop scores need none.

Choices where the papers are silent (all config keys): the first update is
at ``first_update_step`` (default: ``update_interval``, i.e. none at step 0,
before any training); ties in |w| or |grad| are broken by ``torch.topk``'s
order (deterministic on CPU), not by added noise. No host syncs: counts are
Python ints fixed at attach, masks change with ``topk`` + scatter.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from sparsifiers.config import choice, number
from sparsifiers.masked import MaskedSparsifier
from sparsifiers.distributions import DISTRIBUTIONS
from sparsifiers.masks import topk_mask
from sparsifiers.registry import register_sparsifier

DROP_SCHEDULES = ("cosine", "constant")


@register_sparsifier("rigl")
class RigLSparsifier(MaskedSparsifier):
    """RigL: magnitude drop, dense-gradient growth, cosine drop fraction, constant per-layer counts."""

    name = "rigl"
    selection_defaults = {"sparsity": 0.9, "distribution": "erk"}
    distributions = DISTRIBUTIONS

    def __init__(self, drop_fraction: float = 0.3, drop_fraction_schedule: str = "cosine",
                 update_interval: int = 100, update_end: float = 0.75, first_update_step: int | None = None,
                 skip_step_on_update: bool = True, **selection):
        super().__init__(**selection)
        self.drop_fraction = float(number("drop_fraction", drop_fraction, low=0.0, high=1.0))
        self.drop_fraction_schedule = choice("drop_fraction_schedule", drop_fraction_schedule, DROP_SCHEDULES)
        self.update_interval = int(number("update_interval", update_interval, int, low=1))
        self.update_end = float(number("update_end", update_end, low=0.0, high=1.0))
        self.first_update_step = (self.update_interval if first_update_step is None
                                  else int(number("first_update_step", first_update_step, int, low=0)))
        self.skip_step_on_update = bool(skip_step_on_update)
        self.end_step = 0
        self.active_count_by_name: dict[str, int] = {}
        self.next_step = 0
        self.updates_done = 0

    # ---- schedule ------------------------------------------------------------------
    def is_update_step(self, step: int) -> bool:
        return (self.first_update_step <= step < self.end_step
                and (step - self.first_update_step) % self.update_interval == 0)

    def needs_dense_gradient(self, step: int) -> bool:
        return self.is_update_step(step)

    def skips_optimizer_step(self, step: int) -> bool:
        return self.skip_step_on_update and self.is_update_step(step)

    def drop_fraction_at(self, step: int) -> float:
        if self.drop_fraction_schedule == "constant":
            return self.drop_fraction
        return self.drop_fraction / 2 * (1 + math.cos(math.pi * step / self.end_step))

    # ---- set-up ----------------------------------------------------------------------
    @torch.no_grad()
    def attach(self, model: nn.Module, context) -> None:
        self.end_step = int(self.update_end * context.total_steps)
        super().attach(model, context)
        counts = self.target_counts()
        self.active_count_by_name = {key: counts[key] for key in self.mask_by_name}

    # ---- hooks -----------------------------------------------------------------------
    def before_step(self, step: int, dense_gradients: Mapping[str, torch.Tensor] | None = None) -> None:
        self.next_step = step
        if self.is_update_step(step):
            self.update_masks(step, dense_gradients or {})

    def after_step(self, step: int) -> None:
        self.apply_masks()
        self.next_step = step + 1

    # ---- the mask update -------------------------------------------------------------
    @torch.no_grad()
    def update_masks(self, step: int, dense_gradients: Mapping[str, torch.Tensor]) -> None:
        """Drop smallest |w|, grow largest |dense grad|, per masked layer, constant counts."""
        fraction = self.drop_fraction_at(step)
        reduce = dist.is_available() and dist.is_initialized()
        for key, mask in self.mask_by_name.items():
            dense_grad = dense_gradients.get(key)
            n_active = self.active_count_by_name[key]
            if dense_grad is None or n_active >= mask.numel():
                continue
            if reduce:
                dist.all_reduce(dense_grad)
                dense_grad.div_(dist.get_world_size())
            weight = self.tensors.get(key)
            n_drop = int(fraction * n_active)
            flat_mask = mask.flatten()
            # drop: keep the n_active - n_drop largest |w| among the active (inactive score -1 < any |w|)
            kept = topk_mask(torch.where(flat_mask, weight.detach().abs().flatten(), -1.0), n_active - n_drop)
            # grow: the n_drop largest |grad| among those inactive now (kept entries score -1 < any |g|)
            new_mask = kept | topk_mask(torch.where(kept, -1.0, dense_grad.abs().flatten()), n_drop)
            new_mask = new_mask.view_as(mask)
            survived = mask & new_mask  # active before and after: keep value and optimizer state
            weight.mul_(survived)       # dropped -> 0, grown -> start at 0 (already 0: they were masked)
            self.tensors.reset_entries(self.optimizer, key, keep=survived)
            mask.copy_(new_mask)
            if not self.skip_step_on_update and weight.grad is not None:
                weight.grad.copy_(dense_grad).mul_(new_mask)
        self.updates_done += 1

    # ---- reports ---------------------------------------------------------------------
    def extra_metrics(self) -> dict[str, Any]:
        """The drop fraction the next step would use (0 once updates have ended) and the updates so far."""
        active = self.next_step < self.end_step
        return {"rigl_drop_fraction": self.drop_fraction_at(self.next_step) if active else 0.0,
                "rigl_updates": self.updates_done}

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "updates_done": self.updates_done, "next_step": self.next_step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.updates_done = state["updates_done"]
        self.next_step = state["next_step"]
