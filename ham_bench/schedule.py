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
from collections.abc import Callable, Mapping, Sequence

from torch.optim.lr_scheduler import LambdaLR

from sparsifiers.config import ConfigError, choice, number

SCHEDULES = ("cosine", "multistep")
SCHEDULE_KEYS = {"cosine": ("name", "warmup_epochs", "min_lr_factor"),
                 "multistep": ("name", "warmup_epochs", "milestones", "gamma")}


def schedule_settings(cfg: Mapping, epochs: int) -> dict:
    """The ``schedule`` config checked against the run length (ConfigError naming the key)."""
    name = choice("name", cfg.get("name"), SCHEDULES, where="schedule")
    unknown = sorted(set(cfg) - set(SCHEDULE_KEYS[name]))
    if unknown:
        raise ConfigError(f"schedule.{unknown[0]} is not a setting of schedule={name}; allowed: "
                          f"{', '.join(SCHEDULE_KEYS[name])}")
    warmup = number("warmup_epochs", cfg.get("warmup_epochs", 0), low=0.0, where="schedule")
    if warmup >= epochs:
        raise ConfigError(f"schedule.warmup_epochs must be in [0, epochs={epochs}), got {cfg.get('warmup_epochs')!r}")
    settings = {"name": name, "warmup_epochs": warmup}
    if name == "cosine":
        settings["min_lr_factor"] = number("min_lr_factor", cfg.get("min_lr_factor", 0.0), low=0.0, high=1.0,
                                           where="schedule")
    else:
        milestones = cfg.get("milestones", ())
        if not isinstance(milestones, Sequence) or isinstance(milestones, str):
            raise ConfigError(f"schedule.milestones must be a list of epochs, got {milestones!r}")
        settings["milestones"] = [number("milestones", m, low=0.0, where="schedule") for m in milestones]
        settings["gamma"] = number("gamma", cfg.get("gamma", 0.1), low=0.0, high=1.0, low_open=True, where="schedule")
    return settings


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
    raise ConfigError(f"schedule.name must be one of [{', '.join(SCHEDULES)}], got {name!r}")


def build_scheduler(optimizer, cfg: Mapping, steps_per_epoch: int, total_steps: int,
                    position: Callable[[int], int] | None = None) -> LambdaLR:
    """A per-step ``LambdaLR`` following ``cfg`` (see ``configs/schedule/``); step ``t`` at ``position(t)``."""
    position = position or (lambda step: step)
    # plain values: a key read from an OmegaConf node costs ~10 us, and LambdaLR asks every group every step
    plain = {key: (list(cfg[key]) if key == "milestones" else cfg[key]) for key in cfg}
    return LambdaLR(optimizer, lambda step: lr_factor(position(step), plain, steps_per_epoch, total_steps))
