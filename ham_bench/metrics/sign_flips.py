"""Sign flips of the tracked (prunable / HAM-covered) weights.

A flip is a weight whose sign went from + to - or - to + between two
consecutive optimizer steps (both signs nonzero: pruning to zero, or regrowth
from zero, is not a flip). The step engine counts them (``engine.bookkeeper``:
inside the optimizer's fused kernels, which read the old weight anyway, or on
its exact fallback) and hands each step's counts over in the step record; this
module adds them up per epoch and over the run, on the device. A step after
which the method restored old weights (``sparsifier.rewinds_weights(step)``:
IMP's rewind) counts nothing: the restored signs are the reference for the
next step (the engine's counts are 0 for that step).

The counter also reports how many weights have the sign opposite to their sign
at initialization (``sign_differs_from_init_count``) and which fraction of the
weights nonzero at initialization that is (``sign_differs_from_init``):
weights masked at init cannot differ, so counting them would dilute a 90 %
sparse run's fraction tenfold and make it incomparable with a dense run's.

Memory: ONE byte per tracked weight, the int8 sign at initialization, never
touched by a step. Only ``epoch_report`` syncs.
"""

from __future__ import annotations

import torch

from ham_bench.metrics.meter import Meter
from ham_bench.optim.bookkeeping import signs


class SignFlipCounter:
    def __init__(self, weights: dict[str, torch.Tensor]):
        self.names = list(weights)
        self.initial = {name: signs(w) for name, w in weights.items()}
        device = next(iter(weights.values())).device if weights else "cpu"
        self.epoch_flips = torch.zeros(len(self.names), dtype=torch.int64, device=device)
        self.total_flips = torch.zeros(len(self.names), dtype=torch.int64, device=device)

    def add(self, flips: torch.Tensor) -> None:
        """Add one step's flips (int64, one per tracked weight, in ``names`` order). No host sync."""
        self.epoch_flips += flips

    def initial_signs(self, name: str) -> torch.Tensor:
        """Signs at initialization (int8: -1, 0, +1) of the weights tracked as ``name``."""
        return self.initial[name]

    @torch.no_grad()
    def epoch_report(self, weights: dict[str, torch.Tensor]) -> dict:
        """Flips this epoch (per layer and total) and the fraction differing from init; resets the epoch count."""
        per_layer = self.epoch_flips.tolist()
        self.total_flips += self.epoch_flips
        self.epoch_flips.zero_()
        differ, total = 0, 0
        differ_per_layer = {}
        for name in self.names:
            initial = self.initial[name]
            n = int(((initial * signs(weights[name])) < 0).sum())
            nonzero = int(initial.count_nonzero())
            differ_per_layer[name] = n / nonzero if nonzero else 0.0
            differ += n
            total += nonzero
        return {
            "sign_flips": int(sum(per_layer)),
            "sign_flips_per_layer": dict(zip(self.names, per_layer)),
            "sign_flips_cumulative": int(self.total_flips.sum()),
            "sign_differs_from_init": differ / total if total else 0.0,
            "sign_differs_from_init_count": differ,
            "sign_differs_from_init_per_layer": differ_per_layer,
        }

    def state_dict(self) -> dict:
        return {"initial": {k: v.clone() for k, v in self.initial.items()},
                "epoch_flips": self.epoch_flips.clone(), "total_flips": self.total_flips.clone()}

    def load_state_dict(self, state: dict) -> None:
        if "packed" in state:  # checkpoints before the engine counted flips: 3 * (initial + 1) + (previous + 1)
            initial = {name: (packed // 3).to(torch.int8) - 1 for name, packed in state["packed"].items()}
        else:
            initial = state["initial"]
        for name, value in initial.items():
            self.initial[name].copy_(value)
        self.epoch_flips.copy_(state["epoch_flips"])
        self.total_flips.copy_(state["total_flips"])


class SignFlipMeter(Meter):
    """The counter over the sparsifier's effective weights (every selected conv/linear layer): each step's
    flips from the step record (``StepRecord.sign_flips``)."""

    name = "sign_flips"
    final_keys = ("sign_differs_from_init",)

    def __init__(self, sparsifier):
        self.sparsifier = sparsifier
        self.counter = SignFlipCounter(sparsifier.effective_weights())
        self._keys = tuple(self.counter.names)

    def on_step(self, record) -> None:
        if record.sign_flips is None:
            return
        if record.sign_flip_keys != self._keys:
            raise ValueError(f"sign flips: the step counted {record.sign_flip_keys}, the meter tracks {self._keys}")
        self.counter.add(record.sign_flips)

    def epoch_report(self, epoch: int, weights) -> dict:
        return self.counter.epoch_report(weights)

    def summary(self) -> dict:
        return {"sign_flips_total": int(self.counter.total_flips.sum())}  # over the reported epochs

    def state_dict(self) -> dict:
        return self.counter.state_dict()

    def load_state_dict(self, state) -> None:
        self.counter.load_state_dict(state)
