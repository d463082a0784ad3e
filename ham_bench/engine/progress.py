"""Where a run is inside an epoch, saved so a resumed run continues exactly; and when to save it.

:class:`EpochProgress` is what a mid-epoch checkpoint adds to an epoch-end one:
the epoch's partial sums (training loss, correct predictions, samples), the
steps done, the seconds trained, and every rank's RNG states at that step
(torch, CUDA, numpy, Python). Resuming skips the steps done without loading
their batches (the batch sampler draws the epoch's order from ``(seed, epoch)``
as before and drops those batches, ``data.images.ResumableBatchSampler``),
then puts the RNG states back, so the rest of the epoch, its row of
metrics.jsonl and everything after are those of the uninterrupted run. Under
DDP each rank's sums and RNG states are gathered into rank 0's checkpoint
(one ``all_gather_object`` when saving) and each rank takes its own back; a
mid-epoch checkpoint must be resumed with the same number of processes.
One exception: with ``num_workers > 0`` and random augmentation, the workers'
RNG streams restart at the resumed step (they live in the worker processes),
so the augmentation of the rest of that epoch differs; the order does not.

:class:`CheckpointSchedule` decides after each step whether to save
(``checkpoint_every_steps``, ``checkpoint_every_minutes``, a stop signal) and
whether to stop. Steps count the same on every rank; the clock and signals
do not, so under DDP those two are read only where the ranks already
all-reduce (every ``log_every`` steps) and any rank's flag counts for all.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ham_bench import distributed
from ham_bench.engine.checkpoint import CheckpointError


# ---- RNG states as plain values (checkpoints load with weights_only) -----------------------------
def rng_state() -> dict[str, Any]:
    kind, keys, position, has_gauss, gauss = np.random.get_state()
    python = random.getstate()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "position": int(position),
                      "has_gauss": int(has_gauss), "gauss": float(gauss)},
            "python": [python[0], list(python[1]), python[2]]}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if state.get("numpy"):
        n = state["numpy"]
        np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["position"], n["has_gauss"],
                             n["gauss"]))
    if state.get("python"):
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))


def _gather(obj: Any) -> list[Any]:
    """``obj`` from every rank, in rank order (a list of one when not distributed)."""
    if not distributed.is_distributed():
        return [obj]
    gathered = [None] * distributed.world_size()
    torch.distributed.all_gather_object(gathered, obj)
    return gathered


@dataclass
class EpochProgress:
    """The running sums and position of one epoch on this rank (device tensors: adding never syncs)."""

    loss_sum: torch.Tensor
    correct: torch.Tensor
    seen: int = 0
    step: int = 0                   # batches done in this epoch
    seconds: float = 0.0            # training seconds of this epoch before ``started``
    lr: float | None = None         # the learning rate the epoch started with (its row's ``lr``)
    rng: dict | None = None         # the RNG states to put back before the next batch (a resumed epoch)
    started: float = field(default_factory=time.perf_counter)

    @classmethod
    def start(cls, device: torch.device) -> "EpochProgress":
        return cls(torch.zeros((), device=device), torch.zeros((), dtype=torch.int64, device=device))

    def add(self, loss: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor) -> None:
        self.loss_sum += loss * targets.size(0)
        self.correct += (logits.argmax(1) == targets).sum()
        self.seen += targets.size(0)
        self.step += 1

    def elapsed(self) -> float:
        return self.seconds + time.perf_counter() - self.started

    def state_dict(self) -> dict[str, Any]:
        """Every rank's sums and RNG states (a collective under DDP: every rank calls it at the same step)."""
        mine = {"loss_sum": self.loss_sum.detach().cpu().clone(), "correct": self.correct.detach().cpu().clone(),
                "seen": self.seen, "rng": rng_state()}
        return {"step": self.step, "seconds": self.elapsed(), "lr": self.lr, "world_size": distributed.world_size(),
                "ranks": _gather(mine)}

    @classmethod
    def from_state(cls, state: dict[str, Any], device: torch.device) -> "EpochProgress":
        if state["world_size"] != distributed.world_size():
            raise CheckpointError(f"the checkpoint was written in the middle of an epoch by {state['world_size']} "
                                  f"processes; resume it with {state['world_size']} (this run has "
                                  f"{distributed.world_size()})")
        mine = state["ranks"][distributed.rank()]
        return cls(mine["loss_sum"].to(device), mine["correct"].to(device), int(mine["seen"]), int(state["step"]),
                   float(state["seconds"]), state["lr"], mine["rng"])


class CheckpointSchedule:
    """When to write a mid-epoch checkpoint, and when to stop (module docstring)."""

    def __init__(self, every_steps: int | None = None, every_minutes: float | None = None, stop=None):
        self.every_steps = every_steps
        self.every_seconds = None if every_minutes is None else 60.0 * float(every_minutes)
        self.stop = stop  # engine.preemption.StopSignals, or None
        self.last = time.monotonic()

    def flags(self) -> list[float]:
        """This rank's [stop requested, save due by the clock], summed over the ranks where they are read."""
        due = self.every_seconds is not None and time.monotonic() - self.last >= self.every_seconds
        return [float(bool(self.stop is not None and self.stop.requested)), float(due)]

    def decide(self, steps_done: int, flags: list[float] | None) -> tuple[bool, bool]:
        """(save, stop) after ``steps_done`` steps of the run; ``flags`` None where they may not be read."""
        save = bool(self.every_steps) and steps_done % self.every_steps == 0
        if flags is None:
            return save, False
        stop = flags[0] > 0
        return save or stop or flags[1] > 0, stop

    def saved(self) -> None:
        self.last = time.monotonic()

    def signum(self) -> int:
        """The signal that asked to stop (SIGTERM when only another rank received one)."""
        import signal

        return self.stop.signum if self.stop is not None and self.stop.signum else int(signal.SIGTERM)
