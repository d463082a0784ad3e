"""Run outputs: metrics.jsonl (one row per epoch) and, optionally, wandb.

metrics.jsonl is rewritten atomically after each epoch, so it always holds
whole rows. A new run never reads an old file; a resumed run keeps the rows
up to its checkpoint's epoch (the rows after it, e.g. of an epoch that
diverged, are dropped at the next write), and a line that is not JSON is
refused with one line naming the file and the line.
wandb runs offline unless the user chose a mode (config key or WANDB_MODE).

wandb (``logger=wandb``): one wandb run per training run. Its id is kept in
the checkpoint (``wandb``: id and group), so a resumed run (``resume=``, or
the same command continuing an interrupted run) logs into the same wandb run
(``wandb.init(id=..., resume="allow")``) instead of starting another. The
runs of a Hydra sweep share a wandb ``group``: ``logger.wandb.group``, or by
default the sweep dir relative to ``multirun/`` (e.g. ``2026-12-01/13-25-01``;
the dir's name for a sweep dir elsewhere); a single run has no group unless
one is set.
Every row is logged against ``global_step`` (optimizer steps done): the
epoch rows at the end of their epoch, and, every ``log_every`` steps,
``step/train_loss`` and ``step/train_acc`` (running means over the epoch so
far, the values the trainer reads there anyway) and ``step/lr``.
"""

from __future__ import annotations

import os
import secrets
import string
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from ham_bench import atomic_io
from sparsifiers.config import ConfigError


def _new_run_id() -> str:
    """A wandb run id: 8 lowercase letters and digits, as wandb makes them."""
    return "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))


class MetricsLogger:
    def __init__(self, run_dir: Path, cfg: DictConfig, keep_epochs: int = 0, steps_per_epoch: int = 1,
                 wandb_state: dict | None = None):
        """``wandb_state``: the ``wandb`` entry of the checkpoint being resumed ({"id", "group"}), if any."""
        self.path = Path(run_dir) / "metrics.jsonl"
        self.rows = []
        if keep_epochs:
            try:
                rows = atomic_io.read_jsonl(self.path)
            except ValueError as error:
                raise ConfigError(f"{error}; resume needs the rows of the epochs done (fix or remove that line)"
                                  ) from None
            self.rows = [row for row in rows if row.get("epoch", 0) <= keep_epochs]
        self.steps_per_epoch = int(steps_per_epoch)
        self.wandb_run = None
        self.wandb_state: dict | None = None  # {"id", "group"}: what a checkpoint keeps for a resume
        wandb_cfg = cfg.logger.get("wandb", {})
        if wandb_cfg.get("enabled", False):
            self.wandb_run = self._start_wandb(run_dir, cfg, wandb_cfg, wandb_state)

    def _start_wandb(self, run_dir: Path, cfg: DictConfig, wandb_cfg, resumed: dict | None):
        import wandb

        mode = wandb_cfg.get("mode") or os.environ.get("WANDB_MODE") or "offline"
        if resumed and resumed.get("id"):
            run_id, group = resumed["id"], resumed.get("group")
        else:
            run_id, group = _new_run_id(), wandb_cfg.get("group") or sweep_group()
        self.wandb_state = {"id": run_id, "group": group}
        run = wandb.init(project=wandb_cfg.get("project", "ham-bench"), entity=wandb_cfg.get("entity"),
                         mode=mode, dir=str(run_dir), tags=list(wandb_cfg.get("tags", [])), id=run_id,
                         resume="allow", group=group, config=OmegaConf.to_container(cfg, resolve=True),
                         name=Path(run_dir).name)
        run.define_metric("global_step")
        run.define_metric("*", step_metric="global_step")
        return run

    def log_step(self, global_step: int, values: dict) -> None:
        """Per-step values (every ``log_every`` steps) to wandb; metrics.jsonl keeps epoch rows only."""
        if self.wandb_run is not None:
            self.wandb_run.log({"global_step": int(global_step), **{f"step/{k}": float(v) for k, v in values.items()}})

    def log_epoch(self, row: dict) -> None:
        self.rows.append(row)
        atomic_io.write_jsonl(self.path, self.rows)
        if self.wandb_run is not None:
            flat = {k: v for k, v in row.items() if isinstance(v, (int, float))}
            for key, value in row.items():
                if isinstance(value, dict):
                    flat.update({f"{key}/{k}": v for k, v in value.items() if isinstance(v, (int, float))})
            flat["global_step"] = int(row["epoch"]) * self.steps_per_epoch
            self.wandb_run.log(flat)

    def finish(self, summary: dict) -> None:
        if self.wandb_run is not None:
            self.wandb_run.summary.update({k: v for k, v in summary.items() if isinstance(v, (int, float, str))})
            self.wandb_run.finish()
            self.wandb_run = None


def sweep_group() -> str | None:
    """In a Hydra sweep, its dir relative to ``multirun/`` (its jobs' shared wandb group); else None."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode
    except ImportError:
        return None
    if not HydraConfig.initialized():
        return None
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return None
    parts = Path(hydra_cfg.sweep.dir).parts
    if "multirun" in parts[:-1]:  # multirun/<experiment or date>/.../<time>: what follows multirun/
        return "/".join(parts[len(parts) - parts[::-1].index("multirun"):])
    return parts[-1] if parts else None
