"""Sign-flip counting on the tracked (prunable / HAM-covered) weights.

A flip is a weight whose sign went from + to - or - to + between two
consecutive optimizer steps (both signs nonzero: pruning to zero, or regrowth
from zero, is not a flip). A step after which the method restored old weights
(``sparsifier.rewinds_weights(step)``: IMP's rewind) counts nothing: the
restored signs become the reference for the next step. The counter also reports how many weights have the
sign opposite to their sign at initialization (``sign_differs_from_init_count``)
and which fraction of the weights nonzero at initialization that is
(``sign_differs_from_init``): weights masked at init cannot differ, so
counting them would dilute a 90 % sparse run's fraction tenfold and make it
incomparable with a dense run's.

Memory: ONE byte per tracked weight. Each byte packs the previous sign and
the initial sign as ``3 * (initial + 1) + (previous + 1)`` (values 0..8).
Counts accumulate in device tensors; only ``epoch_report`` syncs.
"""

from __future__ import annotations

import torch

from ham_bench.metrics.meter import Meter


class SignFlipCounter:
    def __init__(self, weights: dict[str, torch.Tensor]):
        self.names = list(weights)
        self.packed = {name: self._pack(torch.sign(w).to(torch.int8), torch.sign(w).to(torch.int8))
                       for name, w in weights.items()}
        device = next(iter(weights.values())).device if weights else "cpu"
        self.epoch_flips = torch.zeros(len(self.names), dtype=torch.int64, device=device)
        self.total_flips = torch.zeros(len(self.names), dtype=torch.int64, device=device)

    @staticmethod
    def _pack(initial: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
        return (3 * (initial + 1) + (previous + 1)).to(torch.uint8)

    @torch.no_grad()
    def update(self, weights: dict[str, torch.Tensor]) -> None:
        """Count flips since the last call; call once after every optimizer step."""
        counts = []
        for name in self.names:
            packed = self.packed[name]
            current = torch.sign(weights[name]).to(torch.int8)
            previous = (packed % 3).to(torch.int8) - 1
            counts.append(((current * previous) < 0).sum())
            self._store_previous(packed, current)
        if counts:
            self.epoch_flips += torch.stack(counts)

    @torch.no_grad()
    def rebase(self, weights: dict[str, torch.Tensor]) -> None:
        """Take ``weights``' signs as the previous ones without counting flips (weights were restored)."""
        for name in self.names:
            self._store_previous(self.packed[name], torch.sign(weights[name]).to(torch.int8))

    @staticmethod
    def _store_previous(packed: torch.Tensor, current: torch.Tensor) -> None:
        # keep the initial-sign part, replace the previous-sign part
        packed.sub_(packed % 3).add_((current + 1).to(torch.uint8))

    def initial_signs(self, name: str) -> torch.Tensor:
        """Signs at initialization (int8: -1, 0, +1) of the weights tracked as ``name``, from the packed bytes."""
        return (self.packed[name] // 3).to(torch.int8) - 1

    @torch.no_grad()
    def epoch_report(self, weights: dict[str, torch.Tensor]) -> dict:
        """Flips this epoch (per layer and total) and the fraction differing from init; resets the epoch count."""
        per_layer = self.epoch_flips.tolist()
        self.total_flips += self.epoch_flips
        self.epoch_flips.zero_()
        differ, total = 0, 0
        differ_per_layer = {}
        for name in self.names:
            initial = self.initial_signs(name)
            current = torch.sign(weights[name]).to(torch.int8)
            n = int(((initial * current) < 0).sum())
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
        return {"packed": {k: v.clone() for k, v in self.packed.items()},
                "epoch_flips": self.epoch_flips.clone(), "total_flips": self.total_flips.clone()}

    def load_state_dict(self, state: dict) -> None:
        for name, value in state["packed"].items():
            self.packed[name].copy_(value)
        self.epoch_flips.copy_(state["epoch_flips"])
        self.total_flips.copy_(state["total_flips"])


class SignFlipMeter(Meter):
    """The counter over the sparsifier's effective weights (every selected conv/linear layer), once per step."""

    name = "sign_flips"
    final_keys = ("sign_differs_from_init",)

    def __init__(self, sparsifier):
        self.sparsifier = sparsifier
        self.counter = SignFlipCounter(sparsifier.effective_weights())

    def on_step(self, record) -> None:
        if self.sparsifier.rewinds_weights(record.step):
            self.counter.rebase(self.sparsifier.effective_weights())
        else:
            self.counter.update(self.sparsifier.effective_weights())

    def epoch_report(self, epoch: int, weights) -> dict:
        return self.counter.epoch_report(weights)

    def summary(self) -> dict:
        return {"sign_flips_total": int(self.counter.total_flips.sum())}  # over the reported epochs

    def state_dict(self) -> dict:
        return self.counter.state_dict()

    def load_state_dict(self, state) -> None:
        self.counter.load_state_dict(state)
