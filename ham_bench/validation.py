"""The run config checked once, before anything is built or written.

Every key is checked in exactly one place: the run's own keys here, each
config group's keys by that group's checker (``data.dataset_settings``,
``models.model_settings``, ``optim.optimizer_settings``,
``schedule.schedule_settings``, the sparsifier's constructor through
``build_sparsifier``), which the builders call again when they build. Each
failure is a ``ConfigError`` (``sparsifiers.config``) whose message is one line
naming the key, what is allowed and the value given; the CLI prints it and
exits with 2. Top-level keys that are not run keys (a typo such as
``+epoch=3``) are refused.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence

import torch
from omegaconf import DictConfig, OmegaConf

from ham_bench.data import dataset_settings
from ham_bench.models import model_settings
from ham_bench.optim.factory import optimizer_settings
from ham_bench.schedule import schedule_settings
from sparsifiers import build_sparsifier
from sparsifiers.config import ConfigError, choice, flag, number

__all__ = ["ConfigError", "GROUPS", "RUN_KEYS", "validate_config"]

GROUPS = ("dataset", "model", "optimizer", "ham", "sparsifier", "schedule", "logger")
RUN_KEYS = ("seed", "epochs", "batch_size", "eval_batch_size", "label_smoothing", "num_workers", "device",
            "precision", "channels_last", "compile", "progress", "log_every", "ham_warn_clamp_fraction", "stop_after_epochs",
            "dump_masks_at", "resume")
WANDB_KEYS = ("enabled", "project", "entity", "mode", "tags")


def _refuse_unknown_keys(cfg: Mapping) -> None:
    for key in cfg:
        if key not in RUN_KEYS and key not in GROUPS and key != "hydra":  # hydra: with return_hydra_config
            close = difflib.get_close_matches(str(key), [*RUN_KEYS, *GROUPS], n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ConfigError(f"{key} is not a setting of ham-bench{hint}; run keys: {', '.join(RUN_KEYS)}")


def _check_run_keys(cfg: Mapping) -> None:
    epochs = number("epochs", cfg.get("epochs"), int, low=1, where="")
    for key in ("batch_size", "eval_batch_size"):
        number(key, cfg.get(key), int, low=1, where="")
    number("seed", cfg.get("seed", 0), int, low=0, where="")
    number("num_workers", cfg.get("num_workers", 0), int, low=0, where="")
    number("log_every", cfg.get("log_every", 20), int, low=1, where="")
    number("label_smoothing", cfg.get("label_smoothing", 0.0), low=0.0, high=1.0, high_open=True, where="")
    number("ham_warn_clamp_fraction", cfg.get("ham_warn_clamp_fraction", 0.01), low=0.0, high=1.0, where="")
    choice("precision", cfg.get("precision", "fp32"), ("fp32", "bf16"), where="")
    for key in ("channels_last", "progress"):
        flag(key, cfg.get(key, True), where="")
    flag("compile", cfg.get("compile", False), where="")
    device = cfg.get("device", "auto")
    if not (device in ("auto", "cpu") or (isinstance(device, str) and device.split(":")[0] == "cuda")):
        raise ConfigError(f"device must be auto, cpu or cuda[:N], got {device!r}")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={device} but no CUDA GPU is visible here; use device=cpu or device=auto")
    if cfg.get("stop_after_epochs") is not None:
        number("stop_after_epochs", cfg["stop_after_epochs"], int, low=1, high=epochs, where="")
    dump = cfg.get("dump_masks_at") or []
    if not isinstance(dump, Sequence) or isinstance(dump, str):
        raise ConfigError(f"dump_masks_at must be a list of epochs, got {dump!r}")
    for epoch in dump:
        number("dump_masks_at", epoch, int, low=1, high=epochs, where="")
    resume = cfg.get("resume")
    if resume is not None and not isinstance(resume, str):
        raise ConfigError(f"resume must be a run dir or null, got {resume!r}")


def _check_logger(logger: Mapping) -> None:
    unknown = sorted(set(logger) - {"wandb"})
    if unknown:
        raise ConfigError(f"logger.{unknown[0]} is not a setting of the logger; allowed: wandb")
    wandb = logger.get("wandb") or {}
    unknown = sorted(set(wandb) - set(WANDB_KEYS))
    if unknown:
        raise ConfigError(f"logger.wandb.{unknown[0]} is not a setting; allowed: {', '.join(WANDB_KEYS)}")
    flag("enabled", wandb.get("enabled", False), where="logger.wandb")
    if wandb.get("mode") is not None:
        choice("mode", wandb["mode"], ("online", "offline", "disabled"), where="logger.wandb")


def validate_config(cfg: DictConfig) -> None:
    """Raise ConfigError on the first invalid value of the composed run config."""
    _refuse_unknown_keys(cfg)
    _check_run_keys(cfg)
    missing = [group for group in GROUPS if cfg.get(group) is None]
    if missing:
        raise ConfigError(f"the config has no {missing[0]} group (configs/train.yaml's defaults list names it)")
    dataset_settings(cfg.dataset)
    model_settings(cfg.model)
    optimizer_settings(cfg.optimizer, cfg.ham)
    schedule_settings(cfg.schedule, cfg.epochs)
    build_sparsifier(cfg.sparsifier)
    _check_logger(OmegaConf.to_container(cfg.logger, resolve=True))
