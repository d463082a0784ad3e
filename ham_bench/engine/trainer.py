"""Epochs around the step engine: data order, evaluation, meters merged into one row, checkpoints.

Per epoch: ``sparsifier.on_epoch_start``, one ``train_step`` per batch (the
hook order lives there, ``ham_bench.engine.step``) with the LR schedule
stepped after it and every meter's ``on_step(record)``; then
``sparsifier.on_epoch_end``, evaluation (loss, top-1, top-5), the metrics
row (training and evaluation values, every meter's ``epoch_report``, the
method's ``extra_metrics``), one log line and a checkpoint.

Host syncs are kept out of the step: losses and accuracies accumulate in
device tensors and are read every ``log_every`` steps (progress bar and the
non-finite-loss check) and at the end of the epoch.

Data parallel (``ham_bench.distributed``): ``model`` is the plain model that
the sparsifier, meters and checkpoints see; ``train_model`` (its DDP wrapper)
runs the training forward/backward. Loss and accuracy sums are all-reduced
where they are read, so every rank logs, checks and reports the same
numbers; only rank 0 (``settings.is_main_process``) writes.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from ham_bench import distributed
from ham_bench.engine.bookkeeper import Bookkeeper
from ham_bench.engine.checkpoint import CHECKPOINT_NAME, save_checkpoint
from ham_bench.engine.step import train_step

log = logging.getLogger("ham_bench")

RANK_SEED_STRIDE = 1_000_003 ** 2  # rank r's per-epoch seed is offset by r * this


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN/inf loss; the run stops and keeps its last good checkpoint."""


@dataclass
class TrainerSettings:
    epochs: int
    label_smoothing: float = 0.0
    precision: str = "fp32"
    channels_last: bool = False
    compile: bool = False  # torch.compile the training model (forward and backward)
    progress: bool = True
    log_every: int = 20
    stop_after_epochs: int | None = None
    is_main_process: bool = True
    extra_row: dict = field(default_factory=dict)


class Trainer:
    def __init__(self, model: nn.Module, train_loader, eval_loader, optimizer, scheduler, sparsifier, meters,
                 metrics_logger, run_dir: Path, settings: TrainerSettings, device: torch.device, seed: int = 0,
                 checkpoint_extra: dict | None = None, train_model: nn.Module | None = None):
        self.model = model
        self.train_model = model if train_model is None else train_model
        if settings.compile:
            self.train_model = torch.compile(self.train_model)
        self.train_loader = train_loader
        self.eval_loader = eval_loader
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.sparsifier = sparsifier
        self.meters = list(meters)
        self.metrics_logger = metrics_logger
        self.run_dir = Path(run_dir)
        self.settings = settings
        self.device = device
        self.seed = seed
        self.checkpoint_extra = checkpoint_extra or {}
        self.bookkeeper = Bookkeeper(sparsifier, optimizer)  # masks and sign flips inside the optimizer step
        self.criterion = nn.CrossEntropyLoss(label_smoothing=settings.label_smoothing)
        self.steps_per_epoch = len(train_loader)
        self.start_epoch = 0
        self.best_acc = 0.0

    # ---- helpers -----------------------------------------------------------------
    def _autocast(self):
        if self.settings.precision == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _to_device(self, x, y):
        x = x.to(self.device, non_blocking=True)
        if self.settings.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y.to(self.device, non_blocking=True)

    def _seed_epoch(self, epoch: int) -> None:
        # Data order, augmentation and dropout depend on (seed, epoch) only, so a
        # resumed run repeats exactly what the uninterrupted run would have done.
        # Each rank draws its own augmentation/dropout noise (rank 0: the single-process stream).
        epoch_seed = self.seed * 1_000_003 + epoch + RANK_SEED_STRIDE * distributed.rank()
        torch.manual_seed(epoch_seed)
        generator = getattr(self.train_loader, "generator", None)
        if generator is not None:
            generator.manual_seed(epoch_seed)
        sampler = getattr(self.train_loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)

    # ---- one epoch -------------------------------------------------------------------
    def train_epoch(self, epoch: int) -> dict:
        self.train_model.train()
        self._seed_epoch(epoch)
        self.sparsifier.on_epoch_start(epoch)
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), dtype=torch.int64, device=self.device)
        seen = 0
        started = time.perf_counter()
        bar = tqdm(self.train_loader, desc=f"epoch {epoch + 1}/{self.settings.epochs}", leave=False,
                   disable=not (self.settings.progress and self.settings.is_main_process), dynamic_ncols=True)
        for index, (x, y) in enumerate(bar):
            x, y = self._to_device(x, y)
            record = train_step(self.train_model, self.optimizer, self.sparsifier, x, y,
                                epoch * self.steps_per_epoch + index, self.criterion, self._autocast,
                                bookkeeper=self.bookkeeper)
            self.scheduler.step()
            for meter in self.meters:
                meter.on_step(record)
            loss_sum += record.loss * y.size(0)
            correct += (record.logits.argmax(1) == y).sum()
            seen += y.size(0)
            if (index + 1) % self.settings.log_every == 0 or index + 1 == self.steps_per_epoch:
                total_loss, total_correct, total_seen = distributed.global_sums(loss_sum, correct, seen)
                mean_loss = total_loss / total_seen
                if not math.isfinite(mean_loss):
                    raise NonFiniteLossError(
                        f"non-finite training loss at epoch {epoch + 1}, step {index + 1}: {mean_loss}")
                bar.set_postfix(loss=f"{mean_loss:.4f}", acc=f"{100 * total_correct / total_seen:.2f}")
        seconds = time.perf_counter() - started
        total_loss, total_correct, total_seen = distributed.global_sums(loss_sum, correct, seen)
        return {"train_loss": total_loss / total_seen, "train_acc": 100.0 * total_correct / total_seen,
                "epoch_seconds": seconds, "samples_per_second": total_seen / seconds}

    @torch.no_grad()
    def evaluate(self) -> dict:
        distributed.broadcast_buffers(self.model)  # every rank evaluates rank 0's BatchNorm statistics
        self.model.eval()
        loss_sum = torch.zeros((), device=self.device, dtype=torch.float64)
        top1 = torch.zeros((), dtype=torch.int64, device=self.device)
        top5 = torch.zeros((), dtype=torch.int64, device=self.device)
        seen = 0
        for x, y in self.eval_loader:
            x, y = self._to_device(x, y)
            with self._autocast():
                logits = self.model(x).float()
            loss_sum += nn.functional.cross_entropy(logits, y, reduction="sum").double()
            k = min(5, logits.size(1))
            best = logits.topk(k, dim=1).indices
            top1 += (best[:, 0] == y).sum()
            top5 += (best == y[:, None]).any(dim=1).sum()
            seen += y.size(0)
        loss_sum, top1, top5, seen = distributed.global_sums(loss_sum, top1, top5, seen)  # over the ranks' shards
        return {"test_loss": loss_sum / seen, "test_acc": 100.0 * top1 / seen,
                "test_top5": 100.0 * top5 / seen}

    def epoch_row(self, epoch: int, lr: float, train: dict, evaluation: dict) -> dict:
        """The metrics row: training and evaluation values, then every meter's report and the method's extras."""
        weights = self.sparsifier.effective_weights()
        row = {"epoch": epoch + 1, "lr": lr, **train, **evaluation}
        for meter in self.meters:
            row.update(meter.epoch_report(epoch, weights))
        row.update(self.sparsifier.extra_metrics())
        row.update(self.settings.extra_row)
        return row

    # ---- the run ---------------------------------------------------------------------
    def fit(self) -> dict:
        """Train from ``start_epoch`` to the end; returns the last metrics row."""
        row = {}
        last_epoch = self.settings.epochs
        if self.settings.stop_after_epochs is not None:
            last_epoch = min(last_epoch, self.settings.stop_after_epochs)
        for epoch in range(self.start_epoch, last_epoch):
            lr = self.optimizer.param_groups[0]["lr"]
            train = self.train_epoch(epoch)
            self.sparsifier.on_epoch_end(epoch, train)
            row = self.epoch_row(epoch, lr, train, self.evaluate())
            self.best_acc = max(self.best_acc, row["test_acc"])
            if self.settings.is_main_process:
                self.metrics_logger.log_epoch(row)
                save_checkpoint(self.run_dir / CHECKPOINT_NAME, self.checkpoint_state(epoch + 1))
                log.info("epoch %d/%d  train loss %.4f acc %.2f  |  %s loss %.4f acc %.2f top5 %.2f  |  "
                         "sparsity %.4f  flips %d  lr %.4g  %.1fs (%.0f samples/s)",
                         epoch + 1, self.settings.epochs, row["train_loss"], row["train_acc"],
                         self.settings.extra_row.get("eval_split", "test"), row["test_loss"], row["test_acc"],
                         row["test_top5"], row["sparsity"], row["sign_flips"], lr, row["epoch_seconds"],
                         row["samples_per_second"])
        return row

    def checkpoint_state(self, epoch: int) -> dict:
        return {
            "epoch": epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "sparsifier": self.sparsifier.state_dict(),
            "meters": {meter.name: meter.state_dict() for meter in self.meters},
            "steps_per_epoch": self.steps_per_epoch,
            "best_acc": self.best_acc,
            "rng": {"torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
            **self.checkpoint_extra,
        }

    def restore(self, state: dict) -> None:
        """Continue from a checkpoint's state (``engine.checkpoint.load_checkpoint``, read once by the caller)."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.sparsifier.load_state_dict(state["sparsifier"])
        for meter in self.meters:  # after model and sparsifier: meters re-read the masks they restore against
            meter.load_state_dict(state["meters"][meter.name])
        self.best_acc = state["best_acc"]
        torch.set_rng_state(state["rng"]["torch"])
        if state["rng"]["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        self.start_epoch = state["epoch"]
