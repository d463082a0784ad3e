"""The meter protocol: what every metric implements, with do-nothing defaults.

A meter is told facts by the step record (``ham_bench.engine.step.StepRecord``:
optimizer stepped or skipped, passes, dense gradient, masks, the step's sign
flips per tracked weight, counted by the engine's bookkeeping), by the
optimizer (e.g. HAM's ``covered_numel()``) and by the sparsifier's declared
properties (``sparsifiers.base``); it never reads configs or guesses from
names. The trainer calls, on every rank:

    on_step(record)              after every training step (no host sync here)
    epoch_report(epoch, weights) once per epoch, after evaluation: the meter's
                                 keys of the metrics row (``weights``: the
                                 sparsifier's effective weights, read once)
    summary()                    keys of summary.json at the end of the run
    state_dict() / load_state_dict(state)   saved in checkpoints under ``name``

``final_keys`` are row keys that summary.json repeats as ``final_<key>`` from
the last row. A new metric is one file: a subclass, added in ``build_meters``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch


class Meter:
    name = "meter"
    final_keys: tuple[str, ...] = ()

    def on_step(self, record) -> None:
        pass

    def epoch_report(self, epoch: int, weights: Mapping[str, torch.Tensor]) -> dict[str, Any]:
        return {}

    def summary(self) -> dict[str, Any]:
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        pass
