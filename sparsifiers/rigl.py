"""RigL: Rigging the Lottery (Evci et al., ICML 2020), dynamic sparse training with constant layer sizes.

Every ``update_interval`` steps (dT) until ``update_end`` (T_end, a fraction
of the run's steps), in every masked layer: drop the ``floor(f(t) * n_active)``
active weights of smallest |w|, then grow as many connections, among those
inactive after the drop, with the largest |dense gradient| (a just-dropped
one may regrow and keeps its value and optimizer state). New connections
start at w = 0 with zero optimizer state; dropped ones are zeroed with their
state. Per-layer counts never change. ``f(t) = f0/2 * (1 + cos(pi t / T_end))``
(``drop_fraction_schedule=cosine``; ``constant`` keeps f0). On update steps
the optimizer step is skipped (``skip_step_on_update``, as the reference).
Initial masks: exact-count random masks from ``distribution`` (ERK default).

The dense gradient: the trainer masks gradients (``mask_gradients``) before
``before_step``. On a step that will update the mask, ``mask_gradients``
first copies each masked layer's full gradient and then masks as on every
step, so SAM's perturbation and the optimizer never see inactive gradients.
``before_step`` scores growth from the copy and frees it. The copy is the
gradient of the step's first backward, at the current (unperturbed)
weights: under SAM, growth is scored there, not at SAM's perturbed point,
because ``before_step`` runs before the optimizer step whose closure makes
SAM's second backward (the convention of every method, ``sparsifiers.base``). When the optimizer
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
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from sparsifiers.base import MaskedSparsifier, TrainingContext, config_number
from sparsifiers.distributions import DISTRIBUTIONS
from sparsifiers.registry import register_sparsifier

DROP_SCHEDULES = ("cosine", "constant")


@register_sparsifier("rigl")
class RigLSparsifier(MaskedSparsifier):
    """RigL: magnitude drop, dense-gradient growth, cosine drop fraction, constant per-layer counts."""

    name = "rigl"
    distributions = DISTRIBUTIONS

    def __init__(self, sparsity: float = 0.9, distribution: str = "erk", dense_first: bool | None = None,
                 dense_last: bool = False, power_scale: float = 1.0, seed: int | None = None,
                 drop_fraction: float = 0.3, drop_fraction_schedule: str = "cosine", update_interval: int = 100,
                 update_end: float = 0.75, first_update_step: int | None = None, skip_step_on_update: bool = True):
        super().__init__(sparsity=sparsity, distribution=distribution, dense_first=dense_first,
                         dense_last=dense_last, power_scale=power_scale, seed=seed)
        drop_fraction = config_number("drop_fraction", drop_fraction)
        update_interval = config_number("update_interval", update_interval, int)
        update_end = config_number("update_end", update_end)
        if first_update_step is not None:
            first_update_step = config_number("first_update_step", first_update_step, int)
        if not 0.0 <= drop_fraction <= 1.0:
            raise ValueError(f"sparsifier.drop_fraction must be in [0, 1], got {drop_fraction}")
        if drop_fraction_schedule not in DROP_SCHEDULES:
            raise ValueError(f"sparsifier.drop_fraction_schedule must be one of [{', '.join(DROP_SCHEDULES)}], "
                             f"got {drop_fraction_schedule!r}")
        if int(update_interval) < 1:
            raise ValueError(f"sparsifier.update_interval must be >= 1 (steps), got {update_interval}")
        if not 0.0 <= float(update_end) <= 1.0:
            raise ValueError(f"sparsifier.update_end must be a fraction of the run's steps in [0, 1], "
                             f"got {update_end}")
        if first_update_step is not None and int(first_update_step) < 0:
            raise ValueError(f"sparsifier.first_update_step must be >= 0 or null, got {first_update_step}")
        self.drop_fraction = float(drop_fraction)
        self.drop_fraction_schedule = drop_fraction_schedule
        self.update_interval = int(update_interval)
        self.update_end = float(update_end)
        self.first_update_step = self.update_interval if first_update_step is None else int(first_update_step)
        self.skip_step_on_update = bool(skip_step_on_update)
        self.end_step = 0
        self.active_count_by_name: dict[str, int] = {}
        self.next_step = 0
        self._want_dense_grads = False
        self._dense_grads: dict[str, torch.Tensor] = {}
        self.updates_done = 0

    # ---- schedule ------------------------------------------------------------------
    def is_update_step(self, step: int) -> bool:
        return (self.first_update_step <= step < self.end_step
                and (step - self.first_update_step) % self.update_interval == 0)

    def drop_fraction_at(self, step: int) -> float:
        if self.drop_fraction_schedule == "constant":
            return self.drop_fraction
        return self.drop_fraction / 2 * (1 + math.cos(math.pi * step / self.end_step))

    # ---- set-up ----------------------------------------------------------------------
    @torch.no_grad()
    def attach(self, model: nn.Module, context: TrainingContext) -> None:
        super().attach(model, context)
        self.end_step = int(self.update_end * context.total_steps)
        self.compute_target_densities()
        self.draw_random_masks()
        counts = self.target_counts()
        self.active_count_by_name = {key: counts[key] for key in self.mask_by_name}
        self.apply_masks()
        self._expect_step(0)

    # ---- hooks -----------------------------------------------------------------------
    @torch.no_grad()
    def mask_gradients(self) -> None:
        if self._want_dense_grads:
            for key in self.mask_by_name:
                grad = self.weight(key).grad
                if grad is None:
                    continue
                if key in self._dense_grads:
                    self._dense_grads[key].copy_(grad)
                else:
                    self._dense_grads[key] = grad.detach().clone()
        super().mask_gradients()

    def before_step(self, step: int) -> bool:
        self.next_step = step
        self._want_dense_grads = False  # SAM's second backward needs no copy
        if not self.is_update_step(step):
            self._dense_grads.clear()
            return True
        if not self._dense_grads and self.mask_by_name:
            raise RuntimeError(f"RigL update at step {step} found no dense gradient: call mask_gradients() after "
                               f"backward and before before_step() (see sparsifiers.base)")
        self.update_masks(step)
        return not self.skip_step_on_update

    def after_step(self, step: int) -> None:
        self.apply_masks()
        self._expect_step(step + 1)

    def on_epoch_start(self, epoch: int) -> None:
        self._expect_step(epoch * self.context.steps_per_epoch)

    def _expect_step(self, step: int) -> None:
        """Remember the next step, so ``mask_gradients`` knows whether to keep the dense gradient."""
        self.next_step = step
        self._want_dense_grads = self.is_update_step(step)

    # ---- the mask update -------------------------------------------------------------
    @torch.no_grad()
    def update_masks(self, step: int) -> None:
        """Drop smallest |w|, grow largest |dense grad|, per masked layer, constant counts."""
        fraction = self.drop_fraction_at(step)
        reduce = dist.is_available() and dist.is_initialized()
        for key, mask in self.mask_by_name.items():
            dense_grad = self._dense_grads.pop(key, None)
            n_active = self.active_count_by_name[key]
            if dense_grad is None or n_active >= mask.numel():
                continue
            if reduce:
                dist.all_reduce(dense_grad)
                dense_grad.div_(dist.get_world_size())
            weight = self.weight(key)
            n_drop = int(fraction * n_active)
            flat_mask = mask.flatten()
            # drop: keep the n_active - n_drop largest |w| among the active (inactive score -1 < any |w|)
            drop_score = torch.where(flat_mask, weight.detach().abs().flatten(), -1.0)
            kept = torch.zeros_like(flat_mask)
            kept[torch.topk(drop_score, n_active - n_drop, sorted=False).indices] = True
            # grow: the n_drop largest |grad| among those inactive now (kept entries score -1 < any |g|)
            grow_score = torch.where(kept, -1.0, dense_grad.abs().flatten())
            new_mask = kept.clone()
            new_mask[torch.topk(grow_score, n_drop, sorted=False).indices] = True
            new_mask = new_mask.view_as(mask)
            survived = mask & new_mask  # active before and after: keep value and optimizer state
            weight.mul_(survived)       # dropped -> 0, grown -> start at 0 (already 0: they were masked)
            self.zero_state(key, keep=survived)
            mask.copy_(new_mask)
            if not self.skip_step_on_update and weight.grad is not None:
                weight.grad.copy_(dense_grad).mul_(new_mask)
        self._dense_grads.clear()
        self.updates_done += 1

    # ---- reports ---------------------------------------------------------------------
    def extra_metrics(self) -> dict[str, Any]:
        """The drop fraction the next step would use (0 once updates have ended) and the updates so far."""
        active = self.next_step < self.end_step
        return {"rigl_drop_fraction": self.drop_fraction_at(self.next_step) if active else 0.0,
                "rigl_updates": self.updates_done}

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "updates_done": self.updates_done}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.updates_done = state.get("updates_done", 0)
