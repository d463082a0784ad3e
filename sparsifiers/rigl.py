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

The update itself (drop, grow, zero-init, optimizer-state reset) is the
shared DST path of ``sparsifiers.dst``, which SET and MEST use with other
scores; RigL supplies the dense-gradient growth score and the step skip.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.distributed as dist

from sparsifiers.dst import DropFractionSchedule
from sparsifiers.registry import register_sparsifier


@register_sparsifier("rigl")
class RigLSparsifier(DropFractionSchedule):
    """RigL (Evci et al., ICML 2020): magnitude drop, dense-gradient growth, cosine drop fraction, constant counts."""

    name = "rigl"
    metric_prefix = "rigl"

    def __init__(self, drop_fraction: float = 0.3, drop_fraction_schedule: str = "cosine",
                 update_interval: int = 100, update_end: float = 0.75, first_update_step: int | None = None,
                 skip_step_on_update: bool = True, **selection):
        super().__init__(drop_fraction=drop_fraction, drop_fraction_schedule=drop_fraction_schedule,
                         update_interval=update_interval, update_end=update_end,
                         first_update_step=first_update_step, **selection)
        self.skip_step_on_update = bool(skip_step_on_update)

    # ---- schedule ------------------------------------------------------------------
    def needs_dense_gradient(self, step: int) -> bool:
        return self.is_update_step(step)

    def skips_optimizer_step(self, step: int) -> bool:
        return self.skip_step_on_update and self.is_update_step(step)

    # ---- hooks -----------------------------------------------------------------------
    def before_step(self, step: int, dense_gradients: Mapping[str, torch.Tensor] | None = None) -> None:
        self.next_step = step
        if self.is_update_step(step):
            self.update_masks(step, dense_gradients or {})

    def after_step(self, step: int) -> None:
        self.apply_masks()
        self.next_step = step + 1

    # ---- RigL's scores -------------------------------------------------------------------
    def grow_scores(self, key: str, step: int, gradients: Mapping[str, torch.Tensor]) -> torch.Tensor | None:
        """|dense gradient|, averaged over the ranks first when torch.distributed runs."""
        dense_grad = gradients.get(key)
        if dense_grad is None:
            return None
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(dense_grad)
            dense_grad.div_(dist.get_world_size())
        return dense_grad.abs().flatten()

    def after_exchange(self, key: str, mask: torch.Tensor, gradients: Mapping[str, torch.Tensor]) -> None:
        weight = self.tensors.get(key)
        if not self.skip_step_on_update and weight.grad is not None:
            weight.grad.copy_(gradients[key]).mul_(mask)
