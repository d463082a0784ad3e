"""MEST: Memory-Economic Sparse Training (Yuan et al., NeurIPS 2021), elastic mutation on the shared DST path.

Every update, in every masked layer: prune to the stage's prune-to sparsity
by the score ``|w| + lambda * |g|`` (keep the largest, exact count, among the
active entries), then grow uniformly at random among the entries not kept
until the layer is at the stage's grow-to sparsity (new connections: w = 0,
zero optimizer state). Per stage ``i`` and layer density ``d``:
prune-to density ``d - prune_offsets[i]``, grow-to density ``d + grow_offsets[i]``
(``round(density * N_l)`` weights each). Defaults, the reference README's
EM&S (elastic mutation with soft memory bound) for target 0.9: prune-to the
target, grow-to 0.88 / 0.89 / 0.90, so the network trains slightly denser
than the target between updates and each update's pruning can undo a bad
growth; stages start at epochs 90 and 120 of 160. Its script uses grow-to
0.85 / 0.875 / 0.90. Plain EM: prune-to 0.92 / 0.91 / 0.90 and grow-to the
target throughout (``prune_offsets: [0.02, 0.01, 0]``, ``grow_offsets: [0, 0, 0]``).
The last stage always trains at the target (its offsets must be 0), so every
run ends with exactly the target's count active. Why EM&S is the default:
under EM the connections regrown at random in the second stage stay in the
final mask, and one that sits on an input that is always zero (a dead unit)
never gets a gradient and stays exactly 0, so the achieved sparsity can
exceed the target; EM&S's last update prunes such zeros first.

Schedule, scaled to any run: updates at step 0 (at attach, on the initial
weights: the reference's epoch-0 update) and then every ``update_every``
(a fraction of the run; 5 / 160 epochs by default) and once at the first
step of the last stage, so even a short run ends with a last-stage update.
An update "at position p" runs in ``after_step(p - 1)``, where that step's
sparse gradient is still in ``.grad``: the gradient term uses it (the
reference reads ``w.grad`` at the start of an epoch, after ``zero_grad``,
where it is zero: its term is inert).

Choices and deviations (config keys):

- ``gradient_weight`` (lambda) default 0: the public code's ``--sp-lmd``
  default, the only value found (the paper publishes none).
- Layers: per-layer densities from ``distribution`` (``uniform`` default, as
  the reference) with the first conv and the classifier kept dense
  (``dense_first``, ``dense_last``): the reference sparsifies only the 3x3
  convs of the residual blocks; 1x1 shortcuts are masked here (they cannot
  be told apart generically).
- Initial mask: the update at step 0 on the initial weights (magnitude
  prune-to, random grow-to), as the reference's magnitude pruning of the
  random init followed by its epoch-0 update.
- Exact counts by top-k (the reference's ``np.percentile`` with strict
  comparisons drops ties on both sides); growth is seeded by (seed, step,
  layer); regrown entries get a zero optimizer state (the reference keeps
  stale momentum).
- ``extra_metrics()``: ``mest_stage``, ``mest_updates`` and
  ``mest_train_density_mean``, the time-averaged density of the masked
  layers over the steps so far (EM&S trains denser than it reports).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from sparsifiers.config import ConfigError, number
from sparsifiers.dst import DynamicSparsifier
from sparsifiers.registry import register_sparsifier


@register_sparsifier("mest")
class MEST(DynamicSparsifier):
    """MEST (Yuan et al., NeurIPS 2021): prune by |w| + lambda |g|, random regrowth, elastic mutation (EM&S)."""

    name = "mest"
    metric_prefix = "mest"
    selection_defaults = {"sparsity": 0.9, "distribution": "uniform", "dense_first": True, "dense_last": True}

    def __init__(self, update_every: float = 0.03125, stage_starts: Sequence[float] = (0.5625, 0.75),
                 prune_offsets: Sequence[float] = (0.0, 0.0, 0.0), grow_offsets: Sequence[float] = (0.02, 0.01, 0.0),
                 gradient_weight: float = 0.0, **selection):
        super().__init__(**selection)
        self.update_every = float(number("update_every", update_every, low=0.0, high=1.0, low_open=True))
        self.stage_starts = [float(number("stage_starts", s, low=0.0, high=1.0, low_open=True, high_open=True))
                             for s in stage_starts]
        if self.stage_starts != sorted(self.stage_starts):
            raise ConfigError(f"sparsifier.stage_starts must increase, got {list(stage_starts)}")
        self.offsets = {key: [float(number(key, o, low=0.0, high=1.0)) for o in values]
                        for key, values in (("prune_offsets", prune_offsets), ("grow_offsets", grow_offsets))}
        for key, values in self.offsets.items():
            if len(values) != len(self.stage_starts) + 1 or values[-1] != 0.0:
                raise ConfigError(f"sparsifier.{key} needs one offset per stage ({len(self.stage_starts) + 1}) "
                                  f"ending with 0 (the last stage trains at the target), got {list(values)}")
        self.gradient_weight = float(number("gradient_weight", gradient_weight, low=0.0))
        self.positions: set[int] = set()
        self.density_sum = 0.0
        self.steps_seen = 0

    # ---- schedule ------------------------------------------------------------------
    def stage_at(self, position: int) -> int:
        return sum(1 for start in self.stage_starts if position >= start * self.context.total_steps)

    def _update_positions(self) -> set[int]:
        total = self.context.total_steps
        interval = max(1, round(self.update_every * total))
        last_stage = math.ceil(self.stage_starts[-1] * total) if self.stage_starts else total
        return {p for p in range(interval, total, interval)} | ({last_stage} if last_stage < total else set())

    # ---- set-up ----------------------------------------------------------------------
    @torch.no_grad()
    def attach(self, model: nn.Module, context) -> None:
        super().attach(model, context)
        self.positions = self._update_positions()
        self.active_count_by_name = {key: mask.numel() for key, mask in self.mask_by_name.items()}
        self.update_masks(0, {})  # the epoch-0 update: magnitude prune-to on the initial weights, random grow-to

    def schedule_warnings(self) -> list[str]:
        if not self.positions:
            return [f"mest: no mask update in this run of {self.context.total_steps} steps; raise the run length "
                    f"or lower sparsifier.update_every"]
        return []

    def initial_masks(self) -> dict[str, torch.Tensor]:
        """All-ones masks on the layers to sparsify: the update at step 0 makes them sparse."""
        return {key: torch.ones(shape, dtype=torch.bool, device=self.tensors.get(key).device)
                for key, shape in self.layer_shapes().items() if self.target_density_by_name[key] < 1.0}

    # ---- the update ----------------------------------------------------------------------
    def exchange_counts(self, step: int, key: str, mask: torch.Tensor) -> tuple[int, int]:
        stage = self.stage_at(step)
        density, numel = self.target_density_by_name[key], mask.numel()
        keep = min(numel, max(0, round((density - self.offsets["prune_offsets"][stage]) * numel)))
        total = min(numel, max(keep, round((density + self.offsets["grow_offsets"][stage]) * numel)))
        return keep, total - keep

    def drop_scores(self, key: str, weight: torch.Tensor) -> torch.Tensor:
        score = weight.detach().abs().flatten()
        if self.gradient_weight and weight.grad is not None:
            score = score + self.gradient_weight * weight.grad.detach().abs().flatten()
        return score

    def grow_scores(self, key: str, step: int, gradients: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self.random_scores(key, step, self.mask_by_name[key])

    def changes_masks_after_step(self, step: int) -> bool:
        return step + 1 in self.positions  # after_step prunes and regrows

    def after_step(self, step: int) -> None:
        self.apply_masks()
        numel = sum(mask.numel() for mask in self.mask_by_name.values())
        self.density_sum += sum(self.active_count_by_name.values()) / numel if numel else 1.0
        self.steps_seen += 1
        if step + 1 in self.positions:
            self.update_masks(step + 1, {})
        self.next_step = step + 1

    # ---- reports and checkpoints -----------------------------------------------------------
    def extra_metrics(self) -> dict[str, Any]:
        return {"mest_stage": self.stage_at(self.next_step), "mest_updates": self.updates_done,
                "mest_train_density_mean": self.density_sum / self.steps_seen if self.steps_seen else None}

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "density_sum": self.density_sum, "steps_seen": self.steps_seen}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.density_sum = float(state["density_sum"])
        self.steps_seen = int(state["steps_seen"])
