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
import re
from collections.abc import Mapping, Sequence

import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ham_bench.data import dataset_settings
from ham_bench.models import model_settings
from ham_bench.optim.factory import optimizer_settings
from ham_bench.schedule import schedule_settings
from sparsifiers import build_sparsifier
from sparsifiers.config import ConfigError, choice, flag, number

__all__ = ["ConfigError", "GROUPS", "RUN_KEYS", "one_line", "validate_config"]

GROUPS = ("dataset", "model", "optimizer", "ham", "sparsifier", "schedule", "logger")
RUN_KEYS = ("seed", "epochs", "batch_size", "eval_batch_size", "label_smoothing", "num_workers", "device",
            "precision", "channels_last", "compile", "progress", "log_every", "ham_warn_clamp_fraction",
            "divergence_factor", "stop_after_epochs", "checkpoint_every_steps", "checkpoint_every_minutes",
            "dump_masks_at", "resume", "force")
WANDB_KEYS = ("enabled", "project", "entity", "mode", "tags", "group")


def one_line(error: BaseException) -> str:
    """An error of Hydra or OmegaConf (several lines, and a cause) as one line."""
    parts = []
    for part in (error, error.__cause__):
        lines = [line.strip() for line in str(part or "").splitlines() if line.strip()]
        if "Config search path:" in lines:
            lines = lines[:lines.index("Config search path:")]
        key = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("full_key:")), "")
        lines = [line for line in lines if "HYDRA_FULL_ERROR" not in line
                 and not line.startswith(("full_key:", "object_type=", "reference_type="))]
        if lines:
            rest = "".join(f"{line}{' ' if line.endswith(':') else ', '}" for line in lines[1:]).rstrip(", ")
            parts.append(lines[0] + (f" ({rest})" if rest else "") + (f" (key {key})" if key else ""))
    return "; ".join(dict.fromkeys(parts)) or type(error).__name__


def _refuse_unknown_keys(cfg: Mapping) -> None:
    for key in cfg:
        if key not in RUN_KEYS and key not in GROUPS and key != "hydra":  # hydra: with return_hydra_config
            close = difflib.get_close_matches(str(key), [*RUN_KEYS, *GROUPS], n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ConfigError(f"{key} is not a setting of ham-bench{hint}; run keys: {', '.join(RUN_KEYS)}")


def _integer(cfg: Mapping, key: str, default=None, **limits) -> int:
    """An integer run key, checked; written back as an int when given as a float (``epochs=2.0``)."""
    value = number(key, cfg.get(key, default), int, where="", **limits)
    if key in cfg and isinstance(cfg[key], float):
        cfg[key] = value
    return value


def _check_run_keys(cfg: Mapping) -> None:
    epochs = _integer(cfg, "epochs", low=1)
    for key in ("batch_size", "eval_batch_size"):
        _integer(cfg, key, low=1)
    seed = cfg.get("seed", 0)
    if _integer(cfg, "seed", 0, low=0) > 2 ** 32 - 1:  # numpy's seeds are 32-bit
        raise ConfigError(f"seed must be an integer in [0, {2 ** 32 - 1}], got {seed!r}")
    _integer(cfg, "num_workers", 0, low=0)
    _integer(cfg, "log_every", 20, low=1)
    number("label_smoothing", cfg.get("label_smoothing", 0.0), low=0.0, high=1.0, high_open=True, where="")
    number("ham_warn_clamp_fraction", cfg.get("ham_warn_clamp_fraction", 0.01), low=0.0, high=1.0, where="")
    if cfg.get("precision", "fp32") not in ("fp32", "bf16"):
        raise ConfigError(f"precision must be one of [fp32, bf16], got {cfg.get('precision')!r}")
    for key, default in (("channels_last", True), ("compile", False), ("progress", True), ("force", False)):
        if not isinstance(cfg.get(key, default), bool):
            raise ConfigError(f"{key} must be true or false, got {cfg.get(key)!r}")
    device = cfg.get("device", "auto")
    if not (device in ("auto", "cpu") or (isinstance(device, str) and re.fullmatch(r"cuda(:\d+)?", device))):
        raise ConfigError(f"device must be auto, cpu or cuda[:N], got {device!r}")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={device} but no CUDA GPU is visible here; use device=cpu or device=auto")
    if str(device).startswith("cuda:") and int(device.split(":")[1]) >= torch.cuda.device_count():
        raise ConfigError(f"device={device} but this machine shows {torch.cuda.device_count()} GPU(s) "
                          f"(cuda:0 to cuda:{torch.cuda.device_count() - 1})")
    if cfg.get("stop_after_epochs") is not None:
        _integer(cfg, "stop_after_epochs", low=1, high=epochs)
    dump = cfg.get("dump_masks_at") or []
    if not isinstance(dump, Sequence) or isinstance(dump, str):
        raise ConfigError(f"dump_masks_at must be a list of epochs, got {dump!r}")
    for epoch in dump:
        number("dump_masks_at", epoch, int, low=1, high=epochs, where="")
    resume = cfg.get("resume")
    if resume is not None and not isinstance(resume, str):
        raise ConfigError(f"resume must be a run dir, latest or null, got {resume!r}")
    if cfg.get("divergence_factor") is not None:
        number("divergence_factor", cfg["divergence_factor"], low=1.0, low_open=True, where="")
    if cfg.get("checkpoint_every_steps") is not None:
        _integer(cfg, "checkpoint_every_steps", low=1)
    if cfg.get("checkpoint_every_minutes") is not None:
        number("checkpoint_every_minutes", cfg["checkpoint_every_minutes"], low=0.0, low_open=True, where="")


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
    for key in ("project", "entity", "group"):
        if wandb.get(key) is not None and not isinstance(wandb[key], str):
            raise ConfigError(f"logger.wandb.{key} must be a name (a string){'' if key == 'project' else ' or null'}, "
                              f"got {wandb[key]!r}")
    tags = wandb.get("tags") or []
    if not isinstance(tags, list) or not all(isinstance(tag, str) for tag in tags):
        raise ConfigError(f"logger.wandb.tags must be a list of strings, got {wandb.get('tags')!r}")


def validate_config(cfg: DictConfig) -> None:
    """Raise ConfigError on the first invalid value of the composed run config."""
    try:  # the run's keys only: hydra's own node resolves only inside a Hydra app (${hydra:...})
        for key in cfg:
            if key != "hydra":
                node = cfg[key]
                if OmegaConf.is_config(node):
                    OmegaConf.to_container(node, resolve=True)
    except OmegaConfBaseException as error:  # e.g. epochs=${oops}
        raise ConfigError(f"the config does not resolve: {one_line(error)}") from None
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
