"""Dynamic sparse training: the one mask-update path RigL, SET and MEST share; they differ only in scores and counts.

An update, in every masked layer (``update_masks``)::

    kept  = the n_keep active entries with the largest drop score      (drop_scores: |w| by default)
    grown = the n_grow entries NOT kept with the largest grow score    (grow_scores: the method's)
    mask  = kept | grown

A just-dropped entry may be regrown: it is then "kept" in effect and keeps
its value and optimizer state. Every other entry that changes is zeroed with
its optimizer state (``tensors.reset_entries``): dropped entries go to 0,
grown ones start at w = 0 with a fresh state. ``exchange_counts`` says how
many to keep and grow (RigL and SET: drop ``floor(f(t) * n_active)`` and grow
as many, so per-layer counts never change; MEST: prune to one sparsity and
grow to another). Counts are Python ints, masks change by ``topk`` + scatter,
so an update never syncs with the host.

The schedule shared by RigL and SET: every ``update_interval`` steps (dT)
from ``first_update_step`` (default dT: none at step 0, before any training)
while ``step < update_end * total_steps`` (T_end), with drop fraction
``f(t) = f0/2 * (1 + cos(pi t / T_end))`` (``drop_fraction_schedule=cosine``;
``constant`` keeps f0). Ties in either score are broken by ``torch.topk``'s
order (deterministic on CPU), not by added noise.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from sparsifiers.config import choice, number
from sparsifiers.distributions import DISTRIBUTIONS
from sparsifiers.masked import MaskedSparsifier
from sparsifiers.masks import topk_mask

DROP_SCHEDULES = ("cosine", "constant")


class DynamicSparsifier(MaskedSparsifier):
    """The DST update path; subclasses give ``grow_scores``, the schedule, and may change counts and drop scores."""

    selection_defaults = {"sparsity": 0.9, "distribution": "erk"}
    distributions = DISTRIBUTIONS
    metric_prefix = "dst"  # extra_metrics keys start with it

    def __init__(self, **selection):
        super().__init__(**selection)
        self.active_count_by_name: dict[str, int] = {}
        self.next_step = 0
        self.updates_done = 0

    @torch.no_grad()
    def attach(self, model: nn.Module, context) -> None:
        super().attach(model, context)
        counts = self.target_counts()
        self.active_count_by_name = {key: counts[key] for key in self.mask_by_name}

    # ---- what a method chooses ---------------------------------------------------------
    def exchange_counts(self, step: int, key: str, mask: torch.Tensor) -> tuple[int, int] | None:
        """(n_keep, n_grow) for ``key`` at this update, None to leave the layer alone."""
        raise NotImplementedError

    def drop_scores(self, key: str, weight: torch.Tensor) -> torch.Tensor:
        """Flat scores of the active entries: the largest are kept (default: |w|)."""
        return weight.detach().abs().flatten()

    def grow_scores(self, key: str, step: int, gradients: Mapping[str, torch.Tensor]) -> torch.Tensor | None:
        """Flat scores in [0, inf) of the candidates: the largest are grown; None skips the layer."""
        raise NotImplementedError

    def after_exchange(self, key: str, mask: torch.Tensor, gradients: Mapping[str, torch.Tensor]) -> None:
        """Called once a layer's mask changed (RigL hands the new connections their gradient)."""

    # ---- the mask update -------------------------------------------------------------
    @torch.no_grad()
    def update_masks(self, step: int, gradients: Mapping[str, torch.Tensor]) -> None:
        """Keep the best active entries by drop score, grow the best others by grow score, per masked layer."""
        for key, mask in self.mask_by_name.items():
            counts = self.exchange_counts(step, key, mask)
            grow = None if counts is None else self.grow_scores(key, step, gradients)
            if grow is None:
                continue
            n_keep, n_grow = counts
            weight = self.tensors.get(key)
            flat_mask = mask.flatten()
            # keep: the n_keep largest drop scores among the active (inactive score -1 < any score)
            kept = topk_mask(torch.where(flat_mask, self.drop_scores(key, weight), -1.0), n_keep)
            # grow: the n_grow largest grow scores among those not kept (kept entries score -1)
            new_mask = kept | topk_mask(torch.where(kept, -1.0, grow), n_grow)
            new_mask = new_mask.view_as(mask)
            survived = mask & new_mask  # active before and after: keep value and optimizer state
            weight.mul_(survived)       # dropped -> 0, grown -> start at 0 (already 0: they were masked)
            self.tensors.reset_entries(self.optimizer, key, keep=survived)
            mask.copy_(new_mask)
            self.active_count_by_name[key] = n_keep + n_grow
            self.after_exchange(key, new_mask, gradients)
        self.updates_done += 1

    def random_scores(self, key: str, step: int, like: torch.Tensor) -> torch.Tensor:
        """Uniform [0, 1) grow scores seeded by (seed, step, layer): random growth, the same on every rank."""
        salt = list(self.mask_by_name).index(key)
        return torch.rand(like.numel(), generator=self.step_generator(step, like.device, salt), device=like.device)

    # ---- checkpoints -----------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "updates_done": self.updates_done, "next_step": self.next_step,
                "seed": self._seed()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.updates_done = state["updates_done"]
        self.next_step = state["next_step"]
        self.active_count_by_name = {key: int(mask.sum()) for key, mask in self.mask_by_name.items()}
        if "seed" in state:  # later random growth continues the saved run's stream, whatever this run's seed
            self.selection = dataclasses.replace(self.selection, seed=int(state["seed"]))


class DropFractionSchedule(DynamicSparsifier):
    """RigL's and SET's schedule: an update every dT steps until T_end, dropping a cosine-annealed fraction."""

    def __init__(self, drop_fraction: float = 0.3, drop_fraction_schedule: str = "cosine",
                 update_interval: int = 100, update_end: float = 0.75, first_update_step: int | None = None,
                 **selection):
        super().__init__(**selection)
        self.drop_fraction = float(number("drop_fraction", drop_fraction, low=0.0, high=1.0))
        self.drop_fraction_schedule = choice("drop_fraction_schedule", drop_fraction_schedule, DROP_SCHEDULES)
        self.update_interval = int(number("update_interval", update_interval, int, low=1))
        self.update_end = float(number("update_end", update_end, low=0.0, high=1.0))
        self.first_update_step = (self.update_interval if first_update_step is None
                                  else int(number("first_update_step", first_update_step, int, low=0)))
        self.end_step = 0

    def attach(self, model: nn.Module, context) -> None:
        self.end_step = int(self.update_end * context.total_steps)
        super().attach(model, context)

    def is_update_step(self, step: int) -> bool:
        return (self.first_update_step <= step < self.end_step
                and (step - self.first_update_step) % self.update_interval == 0)

    def schedule_warnings(self) -> list[str]:
        total = self.context.total_steps
        if self.mask_by_name and not any(self.is_update_step(s) for s in range(total)):
            return [f"{self.name}: no mask update in this run of {total} steps (every {self.update_interval} steps "
                    f"from step {self.first_update_step} until step {self.end_step}), so it trains as a fixed "
                    f"random mask; lower sparsifier.update_interval or sparsifier.first_update_step"]
        return []

    def drop_fraction_at(self, step: int) -> float:
        if self.drop_fraction_schedule == "constant":
            return self.drop_fraction
        return self.drop_fraction / 2 * (1 + math.cos(math.pi * step / self.end_step))

    def exchange_counts(self, step: int, key: str, mask: torch.Tensor) -> tuple[int, int] | None:
        """Drop ``floor(f(t) * n_active)`` and grow as many: constant counts (None: the layer is dense)."""
        n_active = self.active_count_by_name[key]
        if n_active >= mask.numel():
            return None
        n_drop = int(self.drop_fraction_at(step) * n_active)
        return n_active - n_drop, n_drop

    def extra_metrics(self) -> dict[str, Any]:
        """The drop fraction the next step would use (0 once updates have ended) and the updates so far."""
        active = self.next_step < self.end_step
        return {f"{self.metric_prefix}_drop_fraction": self.drop_fraction_at(self.next_step) if active else 0.0,
                f"{self.metric_prefix}_updates": self.updates_done}
