"""IMP with weight rewinding (Frankle & Carbin, ICLR 2019; Frankle et al., ICML 2020) and LRR (Renda et al., ICLR 2020).

Iterative magnitude pruning as rounds inside one run (``sparsifiers.rounds``)::

    round 0: train dense; IMP snapshots every parameter and buffer at step k of it
    at the end of round r - 1 (r = 1 .. R):
        prune: among the unmasked weights, keep n_r = n_{r-1} - ceil(p * n_{r-1}) of the largest |w|
               over the budget's units (global by default); round R keeps exactly round((1 - s) * N)
        IMP: weights and buffers <- the snapshot (theta_k), then the mask   LRR: the weights stay
        the LR position rewinds to k, and round r trains the rest of the schedule

``R = ceil(ln(1 - s) / ln(1 - p))`` rounds of pruning (p = ``prune_fraction``
0.2: R = 8, 11, 14 for s = 0.8, 0.9, 0.95), so the run trains R + 1 rounds.
Round 0 is L steps, every later round L - k, with k = ``round(rewind_fraction
* L)``; the rounds fill the run: ``epochs = L_epochs * (1 + R (1 - rewind_fraction))``.
LRR (k = 0): 9 / 12 / 15 rounds of ``epochs / (R + 1)`` epochs each at
s = 0.8 / 0.9 / 0.95; e.g. open_lth's 160-epoch CIFAR round needs
``epochs=1440 / 1920 / 2400``. IMP (k = 2 % of a round): ``epochs = L_epochs
* 8.84 / 11.78 / 14.72``, e.g. 1414 / 1885 / 2355 epochs for L = 160. Each
round replays the run's LR schedule compressed to one round
(``schedule_position``); warm-up is replayed when k lies inside it. The cost
is R + 1 trainings of a round: state it next to results.

Choices and deviations (config keys):

- ``rewind_fraction`` (k as a fraction of a round): IMP 0.02 (early
  rewinding, a few hundred iterations of a CIFAR ResNet-20 run; ~5 epochs of
  ImageNet is 0.05), LRR 0 (Renda's recommended LRR retrains the full schedule).
- ``round_optimizer_state: reset`` (default, open_lth's fresh optimizer every
  level: momentum 0, Adam's counters restarted) | ``keep`` (the state goes on,
  pruned entries zeroed). Renda's TF code restores the optimizer state of the
  checkpoint it rewinds to; that is not offered.
- Exact counts by top-k (open_lth prunes ties at its threshold, Renda's
  ``np.percentile`` interpolates); masked weights rank below every unmasked
  one, so masks only shrink. Layers: every conv and linear weight, first conv
  and classifier included (``distribution: global``, open_lth's
  ``sparse_global``); ``uniform`` / ``erk`` run the same chain per layer,
  ``pattern: nm`` per group of m (target n of m).
- The snapshot holds all parameters and buffers (BN running statistics are
  part of theta_k, as open_lth reloads the full state dict); the rewind is
  bitwise, and the sign-flip meter does not count it (``rewinds_weights``).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from sparsifiers.budget import BudgetedPruning
from sparsifiers.config import choice, number
from sparsifiers.optimizer_state import reset_state
from sparsifiers.registry import register_sparsifier
from sparsifiers.rounds import Rounds, WeightSnapshot


def pruning_rounds(sparsity: float, prune_fraction: float) -> int:
    """R = ceil(ln(1 - s) / ln(1 - p)): rounds of pruning p of the remaining weights to reach s."""
    if sparsity <= 0.0:
        return 0
    return max(1, math.ceil(math.log(1.0 - sparsity) / math.log(1.0 - prune_fraction) - 1e-12))


def round_keep(r: int, rounds: int, prune_fraction: float):
    """``keep(size, final, density)`` of round r: the chain n_j = n_{j-1} - ceil(p n_{j-1}), exactly final at R."""
    def keep(size: int, final: int, density: float) -> int:
        if r >= rounds:
            return final
        count = size
        for _ in range(r):
            count = max(final, count - math.ceil(prune_fraction * count))
        return count
    return keep


@register_sparsifier("imp")
class IMP(BudgetedPruning):
    """IMP with weight rewinding (Frankle & Carbin ICLR 2019; Frankle et al. ICML 2020): rounds inside one run."""

    name = "imp"
    rewinds = True  # IMP restores theta_k at every round boundary; LRR keeps the weights

    def __init__(self, prune_fraction: float = 0.2, rewind_fraction: float = 0.02,
                 round_optimizer_state: str = "reset", **budget):
        super().__init__(**budget)
        self.prune_fraction = float(number("prune_fraction", prune_fraction, low=0.0, high=1.0,
                                           low_open=True, high_open=True))
        self.rewind_fraction = float(number("rewind_fraction", rewind_fraction, low=0.0, high=1.0, high_open=True))
        self.round_optimizer_state = choice("round_optimizer_state", round_optimizer_state, ("reset", "keep"))
        self.pruning_rounds = pruning_rounds(self.selection.sparsity, self.prune_fraction)
        self.rounds: Rounds | None = None
        self.snapshot: WeightSnapshot | None = None
        self.round = 0

    # ---- set-up ----------------------------------------------------------------------
    def attach(self, model: nn.Module, context) -> None:
        super().attach(model, context)
        what = (f"sparsifier.sparsity={self.selection.sparsity:g} at sparsifier.prune_fraction="
                f"{self.prune_fraction:g} ({self.pruning_rounds} prunings)")
        self.rounds = Rounds(context.total_steps, self.pruning_rounds + 1, self.rewind_fraction, what)
        if self.rewinds:
            self.snapshot = WeightSnapshot(model)
            if self.rounds.rewind == 0:
                self.snapshot.take()  # theta_0: the weights at initialization

    def initial_masks(self) -> dict[str, torch.Tensor]:
        return {}  # round 0 trains dense

    # ---- declared properties ---------------------------------------------------------------
    def schedule_position(self, step: int) -> int:
        return self.rounds.schedule_position(step)

    def rewinds_weights(self, step: int) -> bool:
        return self.rewinds and self.rounds.ends_round(step)

    def trains_dense(self, step: int) -> bool:
        return self.rounds.round_of(step) == 0

    def changes_masks_after_step(self, step: int) -> bool:
        return self.rounds.ends_round(step)  # after_step prunes (and, for IMP, rewinds)

    # ---- hooks -----------------------------------------------------------------------
    def after_step(self, step: int) -> None:
        self.apply_masks()
        if self.rewinds and self.rounds.rewind and step + 1 == self.rounds.rewind:
            self.snapshot.take()  # theta_k, k steps into round 0
        if self.rounds.ends_round(step):
            self.next_round(self.rounds.round_of(step) + 1)

    @torch.no_grad()
    def next_round(self, r: int) -> None:
        """Prune to round r's counts by |w| of the trained weights, rewind (IMP), mask, optimizer policy."""
        masks = self.budget_masks(self.masked_magnitudes(), round_keep(r, self.pruning_rounds, self.prune_fraction))
        if self.rewinds:
            self.snapshot.restore()
        self.set_masks(masks, reset_pruned_state=True)
        if self.round_optimizer_state == "reset":
            reset_state(self.optimizer)
        self.round = r

    # ---- reports and checkpoints -----------------------------------------------------------
    def extra_metrics(self) -> dict[str, Any]:
        return {f"{self.name}_round": self.round, f"{self.name}_rounds": self.pruning_rounds + 1,
                f"{self.name}_rewind_step": self.rounds.rewind, **self.pattern_metrics()}

    def state_dict(self) -> dict[str, Any]:
        state = {**super().state_dict(), "round": self.round}
        if self.snapshot is not None:
            state["snapshot"] = self.snapshot.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.round = int(state["round"])
        if self.snapshot is not None:
            self.snapshot.load_state_dict(state.get("snapshot", {}))


@register_sparsifier("lrr")
class LRR(IMP):
    """LRR (Renda, Frankle & Carbin, ICLR 2020): iterative magnitude pruning rewinding only the learning rate."""

    name = "lrr"
    rewinds = False

    def __init__(self, prune_fraction: float = 0.2, rewind_fraction: float = 0.0,
                 round_optimizer_state: str = "reset", **budget):
        super().__init__(prune_fraction=prune_fraction, rewind_fraction=rewind_fraction,
                         round_optimizer_state=round_optimizer_state, **budget)
