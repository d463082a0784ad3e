"""Rounds of training inside one run (IMP, LRR, CS): the layout scaled to the run, the LR position, weight snapshots.

``Rounds(total_steps, count, rewind_fraction)`` splits the run into ``count``
rounds: round 0 has length L, every later round L - k, where k =
``round(rewind_fraction * L)`` is the rewind point (later rounds restart
their schedule at position k and run to its end). So
``total = L + (count - 1) * (L - k)``; round boundaries are placed at the
proportional points ``round(total * (1 + r (1 - rho)) / (1 + (count - 1)(1 - rho)))``,
so rounds differ by at most one step and any run length fits (a round
shorter than one step beyond k is a ConfigError).

The LR schedule: every round replays the run's schedule (``lr_factor`` over
``total`` steps) compressed to L steps. ``schedule_position(step)`` maps a
step at position q of its round (q = step - start in round 0, k + step -
start later) to ``q * total // L``: position k of a later round gets exactly
the LR of step k of round 0, and a warm-up is replayed when k falls inside it.

``WeightSnapshot`` holds one copy of a model's parameters and buffers (BN
running statistics included), taken and restored bitwise, saved in the
method's ``state_dict`` so a resumed run rewinds to the same point.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from sparsifiers.config import ConfigError


class Rounds:
    """Round starts, the rewind point k and the LR position of each step (module docstring)."""

    def __init__(self, total_steps: int, count: int, rewind_fraction: float, what: str):
        self.total = int(total_steps)
        self.count = int(count)
        later = 1.0 - rewind_fraction
        span = 1.0 + (self.count - 1) * later
        ends = [round(self.total * (1.0 + r * later) / span) for r in range(self.count)]
        self.starts = [0] + ends[:-1]
        self.length = ends[0]
        self.rewind = round(rewind_fraction * self.length)
        short = [r for r in range(self.count) if ends[r] - self.starts[r] < 1 or (r and self.rewind >= self.length)]
        if short:
            raise ConfigError(f"{what} needs {self.count} rounds of training, which do not fit the run's "
                              f"{self.total} steps; lengthen the run (epochs) or ask for fewer rounds")

    def round_of(self, step: int) -> int:
        return bisect.bisect_right(self.starts, step) - 1

    def position(self, step: int) -> int:
        """Position in the round's own schedule (0 .. L): round 0 from 0, later rounds from the rewind point k."""
        r = self.round_of(step)
        return step - self.starts[r] + (self.rewind if r else 0)

    def schedule_position(self, step: int) -> int:
        return self.position(step) * self.total // self.length

    def ends_round(self, step: int) -> bool:
        """Whether ``step`` is the last step of a round that another follows (its ``after_step`` switches)."""
        return step + 1 in self.starts[1:]

    def epochs_per_round(self, steps_per_epoch: int) -> float:
        return self.length / steps_per_epoch


class WeightSnapshot:
    """One copy of a model's parameters and buffers (``exclude``: tensors left out, e.g. CS's mask logits)."""

    def __init__(self, model: nn.Module, exclude: Iterable[torch.Tensor] = ()):
        skip = {id(t) for t in exclude}
        named = {**dict(model.named_parameters()), **dict(model.named_buffers())}
        self.tensors = {name: t for name, t in named.items() if id(t) not in skip}
        self.saved: dict[str, torch.Tensor] | None = None

    @torch.no_grad()
    def take(self) -> None:
        self.saved = {name: t.detach().clone() for name, t in self.tensors.items()}

    @torch.no_grad()
    def restore(self) -> None:
        for name, tensor in self.tensors.items():
            tensor.copy_(self.saved[name])

    def state_dict(self) -> dict[str, Any]:
        return {} if self.saved is None else {name: t.clone() for name, t in self.saved.items()}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        self.saved = ({name: state[name].to(t.device, t.dtype) for name, t in self.tensors.items()}
                      if state else None)
