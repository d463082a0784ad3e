"""Per-step learning-rate schedules with linear warm-up (cosine, multistep).

The schedule is a ``LambdaLR`` stepped once per optimizer step, so epochs can
be fractional and warm-up is smooth. It is given the optimizer the user sees
(HAM or SAM wrapper included): their ``param_groups`` are the base
optimizer's, so HAM reads the scheduled lr of the current step. A sparsifier that restarts
training inside the run (IMP, LRR, CS) moves the position on the schedule:
step ``t`` runs at ``lr_factor(position(t))`` with ``position =
sparsifier.schedule_position`` (identity for every other method).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

from torch.optim.lr_scheduler import LambdaLR

SCHEDULES = ("cosine", "multistep")


def lr_factor(step: int, cfg: Mapping, steps_per_epoch: int, total_steps: int) -> float:
    """Multiplier of the base lr at optimizer step ``step`` (0-based)."""
    warmup_steps = int(round(float(cfg.get("warmup_epochs", 0)) * steps_per_epoch))
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    name = cfg["name"]
    if name == "cosine":
        span = max(1, total_steps - warmup_steps)
        progress = min(1.0, (step - warmup_steps) / span)
        floor = float(cfg.get("min_lr_factor", 0.0))
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
    if name == "multistep":
        epoch = step / steps_per_epoch
        passed = sum(1 for milestone in cfg.get("milestones", ()) if epoch >= milestone)
        return float(cfg.get("gamma", 0.1)) ** passed
    raise ValueError(f"schedule.name must be one of {list(SCHEDULES)}, got {name!r}")


def build_scheduler(optimizer, cfg: Mapping, steps_per_epoch: int, total_steps: int,
                    position: Callable[[int], int] | None = None) -> LambdaLR:
    """A per-step ``LambdaLR`` following ``cfg`` (see ``configs/schedule/``); step ``t`` at ``position(t)``."""
    position = position or (lambda step: step)
    return LambdaLR(optimizer, lambda step: lr_factor(position(step), cfg, steps_per_epoch, total_steps))
