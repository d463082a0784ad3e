"""Checks of the composed run config, done before anything is built or written.

Each failure is a ``ConfigError`` whose message is one line naming the key,
the allowed range and the value given; the CLI prints it and exits with 2.
"""

from __future__ import annotations

from omegaconf import DictConfig


class ConfigError(ValueError):
    """A user-fixable problem with the run config."""


def _number(cfg: DictConfig, key: str):
    value = cfg
    for part in key.split("."):
        value = value.get(part) if isinstance(value, DictConfig) else None
    return value


def _check(cfg: DictConfig, key: str, ok, allowed: str) -> None:
    value = _number(cfg, key)
    if value is None:
        return
    try:
        good = ok(value)
    except TypeError:
        good = False
    if not good:
        raise ConfigError(f"{key} must be {allowed}, got {value!r}")


def validate_config(cfg: DictConfig) -> None:
    """Raise ConfigError on the first invalid value."""
    _check(cfg, "epochs", lambda v: isinstance(v, int) and v >= 1, "an integer >= 1")
    _check(cfg, "batch_size", lambda v: isinstance(v, int) and v >= 1, "an integer >= 1")
    _check(cfg, "eval_batch_size", lambda v: isinstance(v, int) and v >= 1, "an integer >= 1")
    _check(cfg, "optimizer.lr", lambda v: v > 0, "> 0")
    _check(cfg, "optimizer.weight_decay", lambda v: v >= 0, ">= 0")
    _check(cfg, "optimizer.name", lambda v: v in ("sgd", "adamw", "sam"), "one of sgd, adamw, sam")
    _check(cfg, "optimizer.rho", lambda v: v > 0, "> 0")
    _check(cfg, "ham.alpha", lambda v: v >= 0, ">= 0")
    _check(cfg, "ham.beta", lambda v: v >= 0, ">= 0")
    _check(cfg, "ham.clamp", lambda v: v > 0, "> 0")
    _check(cfg, "ham.variant", lambda v: v in ("hyp_star", "hyp"), "one of hyp_star, hyp")
    _check(cfg, "sparsifier.sparsity", lambda v: 0 <= v < 1, "in [0, 1)")
    _check(cfg, "label_smoothing", lambda v: 0 <= v < 1, "in [0, 1)")
    _check(cfg, "schedule.name", lambda v: v in ("cosine", "multistep"), "one of cosine, multistep")
    _check(cfg, "schedule.warmup_epochs", lambda v: 0 <= v < cfg.epochs, f"in [0, epochs={cfg.epochs})")
    _check(cfg, "precision", lambda v: v in ("fp32", "bf16"), "one of fp32, bf16")
    _check(cfg, "device", lambda v: v == "auto" or v == "cpu" or str(v).startswith("cuda"),
           "auto, cpu or cuda[:N]")
    _check(cfg, "num_workers", lambda v: isinstance(v, int) and v >= 0, "an integer >= 0")
