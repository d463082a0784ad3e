"""AC/DC: alternating compressed / decompressed training (Peste et al., NeurIPS 2021).

Schedule (all lengths in ``schedule_unit``: ``epochs``, or ``fraction`` of the
whole run, turned into steps so it fits any run length)::

    [0, dense_warmup)                          dense warm-up
    then full cycles of compressed_length + decompressed_length, as many as
    fit before the final phase; whatever is left before it extends the last
    decompressed phase
    [total - final_compressed_length, total)   final compressed phase

With epochs (10, 5, 5, 15) over 100 epochs this is the paper's ImageNet
schedule (compressed 10-14, ..., 70-74; decompressed 15-19, ..., 65-69 and
75-84; final 85-99); with (10, 20, 20, 30) over 200 epochs the CIFAR one.
The run always ends compressed.

Compression: magnitude top-k straight to the target over the masked layers
(``distribution=global``, AC/DC's choice; ``uniform``/``erk`` prune each layer
to its own density instead); the mask is enforced on gradients after every
backward and on weights after every step. Decompression: the mask becomes all
ones (pruned weights restart at 0) and the state of EVERY parameter in the
optimizer is reset as if it were freshly created (``optimizer_state.reset_state``:
momentum buffers and Adam's moments AND its step counter, so AdamW's first
updates after a decompression are a fresh Adam's, not 3-8x larger). Choice where the paper is silent: at
compression, the optimizer state of the newly pruned entries is zeroed too
(keeps masked entries at zero state; results-neutral for per-element
optimizers). Phases switch at step boundaries, after ``after_step``, so the
first step of a phase already runs in it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from sparsifiers.config import ConfigError, choice, number
from sparsifiers.masked import MaskedSparsifier
from sparsifiers.masks import global_topk_masks, layer_topk_masks
from sparsifiers.optimizer_state import reset_state
from sparsifiers.registry import register_sparsifier

DENSE, COMPRESSED, DECOMPRESSED = "dense", "compressed", "decompressed"
SCHEDULE_UNITS = ("epochs", "fraction")
LENGTH_KEYS = ("dense_warmup", "compressed_length", "decompressed_length", "final_compressed_length")


@register_sparsifier("acdc")
class ACDCSparsifier(MaskedSparsifier):
    """AC/DC with a warm-up / alternating / final-compressed schedule and global magnitude pruning."""

    name = "acdc"
    selection_defaults = {"sparsity": 0.9, "distribution": "global"}
    distributions = ("global", "uniform", "erk")

    def __init__(self, schedule_unit: str = "fraction", dense_warmup: float = 0.1, compressed_length: float = 0.05,
                 decompressed_length: float = 0.05, final_compressed_length: float = 0.15, **selection):
        super().__init__(**selection)
        self.schedule_unit = choice("schedule_unit", schedule_unit, SCHEDULE_UNITS)
        given = dict(zip(LENGTH_KEYS, (dense_warmup, compressed_length, decompressed_length,
                                       final_compressed_length)))
        high = 1.0 if schedule_unit == "fraction" else None
        self.lengths = {key: float(number(key, value, low=0.0, high=high)) for key, value in given.items()}
        for key in ("compressed_length", "final_compressed_length"):
            if self.lengths[key] == 0:
                raise ConfigError(f"sparsifier.{key} must be > 0, got 0")
        self.phase = DENSE
        self.phase_bounds: dict[str, int] = {}

    # ---- schedule ------------------------------------------------------------------
    def _steps(self, length: float) -> int:
        context = self.context
        if self.schedule_unit == "epochs":
            return round(length * context.steps_per_epoch)
        return round(length * context.total_steps)

    def _build_schedule(self) -> None:
        total = self.context.total_steps
        warmup = self._steps(self.lengths["dense_warmup"])
        compressed = max(1, self._steps(self.lengths["compressed_length"]))
        decompressed = self._steps(self.lengths["decompressed_length"])
        final = max(1, self._steps(self.lengths["final_compressed_length"]))
        final_start = total - final
        if final_start < warmup:
            unit = "epochs" if self.schedule_unit == "epochs" else "of the run"
            raise ConfigError(
                f"sparsifier.dense_warmup + sparsifier.final_compressed_length "
                f"({self.lengths['dense_warmup']:g} + {self.lengths['final_compressed_length']:g} {unit}) "
                f"exceed the run ({self.context.epochs} epochs); shorten them or use sparsifier.schedule_unit=fraction")
        cycles = (final_start - warmup) // (compressed + decompressed)
        self.phase_bounds = {"warmup_end": warmup, "compressed": compressed, "decompressed": decompressed,
                             "cycles": cycles, "alternation_end": warmup + cycles * (compressed + decompressed),
                             "final_start": final_start, "total": total}

    def schedule_warnings(self) -> list[str]:
        warnings, b = [], self.phase_bounds
        for key in ("compressed_length", "decompressed_length", "final_compressed_length"):
            steps = self.lengths[key] * (self.context.steps_per_epoch if self.schedule_unit == "epochs"
                                         else self.context.total_steps)
            if 0 < steps < 1:
                warnings.append(f"acdc: sparsifier.{key}={self.lengths[key]:g} is {steps:.2f} steps in this run; "
                                f"{'it is stretched to 1 step' if key != 'decompressed_length' else 'it vanishes'}")
        if b["cycles"] == 0:
            warnings.append(f"acdc: no compressed/decompressed cycle fits between the warm-up (step {b['warmup_end']}) "
                            f"and the final phase (step {b['final_start']}): the run is dense, then compressed once")
        return warnings

    def phase_at(self, step: int) -> str:
        """The phase step ``step`` (0-based) runs in."""
        b = self.phase_bounds
        if step >= b["final_start"]:
            return COMPRESSED
        if step < b["warmup_end"]:
            return DENSE
        if step >= b["alternation_end"]:
            return DECOMPRESSED if b["cycles"] else DENSE
        offset = (step - b["warmup_end"]) % (b["compressed"] + b["decompressed"])
        return COMPRESSED if offset < b["compressed"] else DECOMPRESSED

    def trains_dense(self, step: int) -> bool:
        return self.phase_at(step) != COMPRESSED

    def phase_starts(self, unit: str = "steps") -> list[tuple[int, str]]:
        """``(start, phase)`` of every phase, in steps or (``unit="epochs"``) fractional epochs."""
        starts, previous = [], None
        for step in self._boundary_candidates():
            phase = self.phase_at(step)
            if phase != previous:
                starts.append((step, phase))
                previous = phase
        if unit == "epochs":
            return [(step / self.context.steps_per_epoch, phase) for step, phase in starts]
        return starts

    def _boundary_candidates(self):
        b = self.phase_bounds
        points = {0, b["warmup_end"], b["alternation_end"], b["final_start"]}
        cycle = b["compressed"] + b["decompressed"]
        for k in range(b["cycles"]):
            points.add(b["warmup_end"] + k * cycle)
            points.add(b["warmup_end"] + k * cycle + b["compressed"])
        return sorted(p for p in points if 0 <= p < b["total"])

    # ---- set-up ----------------------------------------------------------------------
    def attach(self, model: nn.Module, context) -> None:
        super().attach(model, context)
        self._build_schedule()
        self.phase = DENSE
        self._enter(self.phase_at(0))

    def initial_masks(self) -> dict[str, torch.Tensor]:
        return {}  # the run starts dense; the schedule compresses

    # ---- phase changes -----------------------------------------------------------------
    @torch.no_grad()
    def magnitude_masks(self) -> dict[str, torch.Tensor]:
        """Keep the largest-|w| entries: globally (exact total count) or per layer (exact layer counts)."""
        keys = self.masked_keys
        if not keys:
            return {}
        if self.selection.distribution == "global":
            scores = {key: self.tensors.get(key).detach().abs() for key in keys}
            total = sum(s.numel() for s in scores.values())
            return global_topk_masks(scores, total - round(self.selection.sparsity * total))
        counts = self.target_counts()
        scores = {key: self.tensors.get(key).detach().abs() for key in keys
                  if self.target_density_by_name[key] < 1.0}
        return layer_topk_masks(scores, counts)

    @torch.no_grad()
    def _enter(self, phase: str) -> None:
        if phase == self.phase:
            return
        if phase == COMPRESSED:
            self.set_masks(self.magnitude_masks(), reset_pruned_state=True)
        elif self.phase == COMPRESSED:  # decompression: all-ones mask, the optimizer as if freshly created
            self.set_masks({})
            reset_state(self.optimizer)
        self.phase = phase

    # ---- hooks -----------------------------------------------------------------------
    def after_step(self, step: int) -> None:
        self.apply_masks()
        if step + 1 < self.phase_bounds["total"]:
            self._enter(self.phase_at(step + 1))

    def on_epoch_start(self, epoch: int) -> None:
        step = epoch * self.context.steps_per_epoch
        if step < self.phase_bounds["total"]:
            self._enter(self.phase_at(step))

    def extra_metrics(self) -> dict[str, Any]:
        return {"acdc_phase": self.phase}

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "phase": self.phase}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.phase = state["phase"]
