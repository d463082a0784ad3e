"""What a command trains: a new run, or which run it continues and with which config.

Rules (the README's "Stopping and resuming"):

* ``resume=DIR`` continues DIR with the config stored in its checkpoint.
  Overrides given beside it must not change the run: only ``RESUME_KEYS``
  (and ``logger`` with its keys) may be given, anything else is refused with
  one line naming it. ``epochs=N`` extends (or shortens, down to the epochs
  done) the run: everything planned over the run's length (the LR
  schedule's cosine and warm-up, RigL's T_end, AC/DC's phases, STR's
  projection, PILoT's pruning epoch) is re-planned for N epochs from the
  resumed step on, while the epochs already trained keep the old plan; so
  the result is not that of a run started with ``epochs=N``.
* ``resume=latest`` is the newest run under ``outputs/`` and ``multirun/``
  (by its checkpoint's time) that did not complete.
* A new run pointed at a dir that holds a run: an interrupted run (or one
  killed without a summary) that has a checkpoint and the same config, up to
  ``RESUME_KEYS``, is continued; this is how a requeued SLURM job, or the
  same command run again, picks up where it stopped. Any other run there is
  refused unless ``force=true``, which replaces it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ham_bench.engine.checkpoint import CHECKPOINT_NAME, CheckpointError, load_checkpoint
from ham_bench.engine.run_dir import RunDirError, run_status

# keys a resume may change: none of them changes what is trained (epochs: see the module docstring)
RESUME_KEYS = ("resume", "force", "epochs", "stop_after_epochs", "progress", "log_every", "checkpoint_every_steps",
               "checkpoint_every_minutes", "divergence_factor", "ham_warn_clamp_fraction", "ham.warn_exponent",
               "ham.warn_every", "dataset.root")
RESUME_PREFIXES = ("logger",)
CONTINUABLE = ("interrupted", "incomplete")
LATEST_ROOTS = ("outputs", "multirun")


@dataclass
class Plan:
    """What the run does: train ``cfg`` from scratch, or continue ``resumed_from`` from ``resume_state``."""

    cfg: DictConfig
    resume_state: dict[str, Any] | None = None
    resumed_from: Path | None = None
    replaces: str | None = None  # force=true: the status of the run this one replaces
    note: str | None = None      # a log line for a decision the run's own log lines do not show


def allowed_with_resume(key: str) -> bool:
    return key in RESUME_KEYS or any(key == p or key.startswith(p + ".") for p in RESUME_PREFIXES)


def override_keys(overrides: list[str]) -> list[str]:
    """The config keys (or groups) a list of Hydra task overrides sets, e.g. ``epochs``, ``logger``."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    return [parser.parse_override(text).key_or_group for text in overrides]


def _flat(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        flat = {}
        for key, value in node.items():
            flat.update(_flat(value, f"{prefix}{key}."))
        return flat if flat or not prefix else {prefix[:-1]: {}}
    return {prefix[:-1]: node}


def differences(stored: DictConfig, new: DictConfig) -> list[str]:
    """The dotted keys whose values differ between two run configs (``resume`` and ``force`` aside)."""
    a = _flat(OmegaConf.to_container(stored, resolve=True))
    b = _flat(OmegaConf.to_container(new, resolve=True))
    return sorted(key for key in set(a) | set(b) if a.get(key, "<unset>") != b.get(key, "<unset>")
                  and key not in ("resume", "force"))


def _continued(run_dir: Path, state: dict, new: DictConfig, keys: list[str]) -> DictConfig:
    """The stored config with the allowed ``keys`` taken from ``new`` (keys outside the allowed set are refused)."""
    cfg = OmegaConf.create(state["config"])
    for key in keys:
        top = key.split(".")[0]
        source = "logger" if top == "logger" else key
        if source in ("resume",):
            continue
        OmegaConf.update(cfg, source, OmegaConf.select(new, source), merge=False, force_add=True)
    if "stop_after_epochs" not in keys:
        cfg.stop_after_epochs = None  # the stop of the earlier command does not carry over
    cfg.resume = str(run_dir)
    done = int(state["epoch"]) + (1 if state.get("progress") else 0)  # epochs (partly) trained
    if int(cfg.epochs) < done:
        raise RunDirError(f"epochs={cfg.epochs} with resume: the run has already trained {done} epochs "
                          f"(epochs must be >= {done})")
    stop = cfg.get("stop_after_epochs")
    if stop is not None and isinstance(stop, int) and not isinstance(stop, bool) and stop <= int(state["epoch"]):
        raise RunDirError(f"stop_after_epochs={stop} with resume: the run has already done {state['epoch']} epochs "
                          f"(give a later epoch, up to epochs={cfg.epochs})")
    return cfg


def continue_run(run_dir: Path, new: DictConfig, overrides: list[str]) -> Plan:
    """``resume=DIR``: DIR's checkpoint and config, with the allowed overrides (others refused)."""
    run_dir = Path(run_dir)
    checkpoint = run_dir / CHECKPOINT_NAME
    if not checkpoint.exists():
        raise CheckpointError(f"resume={run_dir}: no {CHECKPOINT_NAME} in that dir (nothing to continue)")
    keys = override_keys(overrides)
    refused = [text for text, key in zip(overrides, keys) if not allowed_with_resume(key)]
    if refused:
        raise RunDirError(f"resume continues a run with its own config; these overrides would change it: "
                          f"{', '.join(refused)} (allowed with resume: {', '.join(RESUME_KEYS[1:])}, logger)")
    state = load_checkpoint(checkpoint)
    return Plan(_continued(run_dir, state, new, keys), state, run_dir)


def plan_run(cfg: DictConfig, run_dir: Path, overrides: list[str]) -> Plan:
    """The run this command makes in ``run_dir`` (module docstring); RunDirError when it may not use that dir."""
    run_dir = Path(run_dir)
    if cfg.get("resume"):
        return continue_run(Path(cfg.resume), cfg, overrides)
    status = run_status(run_dir)
    if status is None:
        return Plan(cfg)
    if cfg.get("force") is True:
        return Plan(cfg, replaces=status, note=f"force=true: replacing the {status} run in {run_dir}")
    checkpoint = run_dir / CHECKPOINT_NAME
    if status in CONTINUABLE and checkpoint.exists():
        state = load_checkpoint(checkpoint)
        changed = differences(OmegaConf.create(state["config"]), cfg)
        refused = [key for key in changed if not allowed_with_resume(key)]
        if not refused:
            return Plan(_continued(run_dir, state, cfg, changed), state, run_dir)
        raise RunDirError(f"{run_dir} holds an {status} run of another config ({', '.join(refused[:4])} differ); "
                          f"resume={run_dir} continues it, force=true replaces it")
    hint = ("force=true replaces it, resume=DIR epochs=N extends it" if status == "completed"
            else "resume=DIR continues it from its last checkpoint, force=true replaces it"
            if checkpoint.exists() else "force=true replaces it")
    raise RunDirError(f"{run_dir} holds a {status} run; {hint.replace('DIR', str(run_dir))}")


def latest_run(roots: tuple[str, ...] = LATEST_ROOTS) -> Path:
    """``resume=latest``: the run dir under ``roots`` with the newest checkpoint, among runs not completed."""
    found = []
    for root in roots:
        for checkpoint in Path(root).rglob(CHECKPOINT_NAME) if Path(root).is_dir() else ():
            if run_status(checkpoint.parent) != "completed":
                found.append((checkpoint.stat().st_mtime, checkpoint.parent))
    if not found:
        raise RunDirError(f"resume=latest: no run under {' or '.join(r + '/' for r in roots)} with a checkpoint "
                          f"that did not complete (give the run dir: resume=DIR)")
    return max(found)[1]
