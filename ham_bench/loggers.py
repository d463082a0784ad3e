"""Run outputs: metrics.jsonl (one row per epoch) and, optionally, wandb.

metrics.jsonl is rewritten atomically after each epoch, so it always holds
whole rows. A new run never reads an old file; a resumed run keeps the rows
up to its checkpoint's epoch (the rows after it, e.g. of an epoch that
diverged, are dropped at the next write), and a line that is not JSON is
refused with one line naming the file and the line.
wandb runs offline unless the user chose a mode (config key or WANDB_MODE).
"""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from ham_bench import atomic_io
from sparsifiers.config import ConfigError


class MetricsLogger:
    def __init__(self, run_dir: Path, cfg: DictConfig, keep_epochs: int = 0):
        self.path = Path(run_dir) / "metrics.jsonl"
        self.rows = []
        if keep_epochs:
            try:
                rows = atomic_io.read_jsonl(self.path)
            except ValueError as error:
                raise ConfigError(f"{error}; resume needs the rows of the epochs done (fix or remove that line)"
                                  ) from None
            self.rows = [row for row in rows if row.get("epoch", 0) <= keep_epochs]
        self.wandb_run = None
        wandb_cfg = cfg.logger.get("wandb", {})
        if wandb_cfg.get("enabled", False):
            self.wandb_run = self._start_wandb(run_dir, cfg, wandb_cfg)

    @staticmethod
    def _start_wandb(run_dir: Path, cfg: DictConfig, wandb_cfg):
        import wandb

        mode = wandb_cfg.get("mode") or os.environ.get("WANDB_MODE") or "offline"
        return wandb.init(project=wandb_cfg.get("project", "ham-bench"), entity=wandb_cfg.get("entity"),
                          mode=mode, dir=str(run_dir), tags=list(wandb_cfg.get("tags", [])),
                          config=OmegaConf.to_container(cfg, resolve=True), name=Path(run_dir).name)

    def log_epoch(self, row: dict) -> None:
        self.rows.append(row)
        atomic_io.write_jsonl(self.path, self.rows)
        if self.wandb_run is not None:
            flat = {k: v for k, v in row.items() if isinstance(v, (int, float))}
            for key, value in row.items():
                if isinstance(value, dict):
                    flat.update({f"{key}/{k}": v for k, v in value.items() if isinstance(v, (int, float))})
            self.wandb_run.log(flat, step=row["epoch"])

    def finish(self, summary: dict) -> None:
        if self.wandb_run is not None:
            self.wandb_run.summary.update({k: v for k, v in summary.items() if isinstance(v, (int, float, str))})
            self.wandb_run.finish()
            self.wandb_run = None
