"""GMP: gradual magnitude pruning (Zhu & Gupta, 2017; Gale, Elsen & Hooker, "The State of Sparsity", 2019).

Sparsity follows the cubic schedule from ``initial_sparsity`` s_i to the
target s_f between steps t0 and t_end::

    s(t) = s_f + (s_i - s_f) * (1 - p) ** exponent,   p = clip((t - t0) / (t_end - t0), 0, 1)

with t0 = ``begin`` and t_end = ``end`` (fractions of the run's steps, so the
schedule fits any run length; t_end at most the last step). Updates run in
``after_step(t)`` of the steps t0, t0 + dT, t0 + 2 dT, ... and ALWAYS of
t_end (when ``t_end - t0`` is no multiple of dT the last grid update lands
before t_end and the target would never be reached: Gale's (8k, 68k, 8k)
ends at 0.9497 for 0.95). dT = ``update_every`` of the run's steps (at
least one step). An update keeps, per unit of the budget
(``sparsifiers.budget``: per layer by default, or global, or N:M groups),
the ``round((1 - s_unit(t)) * size)`` largest ``|w * m|`` (exact top-k;
masked entries rank below every active one, so each mask is a subset of the
previous), zeroes the newly pruned weights and their optimizer state. No
regrowth ever. Between updates gradients are masked and weights re-masked.

Per unit, s_unit(t) uses the unit's own final sparsity (ERK layers, N:M
groups: 1 - n/m) in the same formula; the last update keeps exactly the
unit's final count.

Choices and deviations (config keys):

- Exact top-k, no threshold smoothing (TF's ``threshold_decay`` = 0.9 EMA
  and its 256-bin histogram make the achieved sparsity approximate and lag);
  scores |w * m| (TF scores the raw |W|, which can let a pruned weight back).
- Layers: per layer, uniform (TF: one threshold per tensor), first conv and
  classifier pruned (``dense_first: false``, Zhu & Gupta's "standard";
  Gale's "extended" variant keeps the first conv dense). ``distribution:
  global`` is the one-top-k variant (jaxpruner, sparsimony).
- Defaults begin 0.2, end 0.75, update every 1 % of the run: the RigL
  codebase's CIFAR settings (20k / 75k / 1000 of 97,656 steps). Gale's best
  ResNet-50 runs used begin ~0.31 and end 0.53-0.78 of 128k steps, every 2k.
- TF's update condition (``last_update + dT <= t``, progress from t - t0),
  not jaxpruner's (t + 1 - t0, absolute multiples of dT).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from sparsifiers.budget import BudgetedPruning
from sparsifiers.config import ConfigError, number
from sparsifiers.registry import register_sparsifier


@register_sparsifier("gmp")
class GMP(BudgetedPruning):
    """GMP (Zhu & Gupta 2017; Gale et al. 2019): gradual magnitude pruning, cubic schedule, exact counts."""

    name = "gmp"
    selection_defaults = {"sparsity": 0.9, "distribution": "uniform", "dense_first": False}

    def __init__(self, initial_sparsity: float = 0.0, begin: float = 0.2, end: float = 0.75,
                 update_every: float = 0.01, exponent: float = 3.0, **budget):
        super().__init__(**budget)
        self.initial_sparsity = float(number("initial_sparsity", initial_sparsity, low=0.0, high=1.0,
                                             high_open=True))
        self.begin = float(number("begin", begin, low=0.0, high=1.0))
        self.end = float(number("end", end, low=0.0, high=1.0))
        if self.end < self.begin:
            raise ConfigError(f"sparsifier.end must be >= sparsifier.begin ({begin}), got {end}")
        self.update_every = float(number("update_every", update_every, low=0.0, high=1.0, low_open=True))
        self.exponent = float(number("exponent", exponent, low=0.0, low_open=True))
        self.t0 = self.t_end = self.interval = 0
        self.scheduled = 0.0  # s(t) of the last update
        self.updates_done = 0

    # ---- schedule ------------------------------------------------------------------
    def attach(self, model: nn.Module, context) -> None:
        last = context.total_steps - 1
        self.t_end = min(last, round(self.end * context.total_steps))
        self.t0 = min(self.t_end, round(self.begin * context.total_steps))
        self.interval = max(1, round(self.update_every * context.total_steps))
        super().attach(model, context)

    def initial_masks(self) -> dict[str, torch.Tensor]:
        return {}  # dense until the first update at t0

    def progress(self, step: int) -> float:
        if self.t_end == self.t0:
            return 1.0 if step >= self.t0 else 0.0
        return min(1.0, max(0.0, (step - self.t0) / (self.t_end - self.t0)))

    def sparsity_at(self, step: int, final: float | None = None) -> float:
        """s(t) toward ``final`` (default: the target)."""
        final = self.selection.sparsity if final is None else final
        return final + (self.initial_sparsity - final) * (1.0 - self.progress(step)) ** self.exponent

    def is_update_step(self, step: int) -> bool:
        return self.t0 <= step <= self.t_end and ((step - self.t0) % self.interval == 0 or step == self.t_end)

    def trains_dense(self, step: int) -> bool:
        return step <= self.t0

    def changes_masks_after_step(self, step: int) -> bool:
        return self.is_update_step(step)  # after_step prunes

    # ---- hooks -----------------------------------------------------------------------
    def after_step(self, step: int) -> None:
        self.apply_masks()
        if self.is_update_step(step):
            self.prune(step)

    @torch.no_grad()
    def prune(self, step: int) -> None:
        """Keep round((1 - s_unit(step)) * size) of the largest |w * m| per unit; the pruned lose their state."""
        done = self.progress(step) >= 1.0

        def keep(size: int, final: int, density: float) -> int:
            if done:
                return final
            return min(size, max(final, round((1.0 - self.sparsity_at(step, 1.0 - density)) * size)))

        self.set_masks(self.budget_masks(self.masked_magnitudes(), keep), reset_pruned_state=True)
        self.scheduled = self.sparsity_at(step)
        self.updates_done += 1

    # ---- reports and checkpoints ---------------------------------------------------------
    def extra_metrics(self) -> dict[str, Any]:
        """s(t) of the last update (0 before the first), the updates so far, N:M validity under ``pattern: nm``."""
        return {"gmp_scheduled_sparsity": self.scheduled, "gmp_updates": self.updates_done, **self.pattern_metrics()}

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "scheduled": self.scheduled, "updates_done": self.updates_done}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.scheduled = float(state["scheduled"])
        self.updates_done = int(state["updates_done"])
