"""Epochs around the step engine: data order, evaluation, meters merged into one row, checkpoints.

Per epoch: ``sparsifier.on_epoch_start``, one ``train_step`` per batch (the
hook order lives there, ``ham_bench.engine.step``) with the LR schedule
stepped after it and every meter's ``on_step(record)``; then
``sparsifier.on_epoch_end``, evaluation (loss, top-1, top-5), the metrics
row (training and evaluation values, every meter's ``epoch_report``, the
method's ``extra_metrics``), one log line and a checkpoint.

Progress: a tqdm bar when stderr is a terminal; otherwise (a log file, a
pipe, a joblib sweep) about ``PROGRESS_LINES`` plain log lines per epoch
("epoch 1/5  step 94/468  train loss ... acc ...  N samples/s"), at the
``log_every`` steps where the values are read anyway, so logs hold whole
lines and no carriage returns. ``compile_seconds`` in a row is the time HAM
spent compiling its kernels in that epoch (``ham_bench.optim.compile_time``;
epoch 1 only); ``samples_per_second`` excludes it, ``epoch_seconds`` does not.

Host syncs are kept out of the step: losses and accuracies accumulate in
device tensors (``engine.progress.EpochProgress``) and are read every
``log_every`` steps (progress bar and the non-finite-loss check) and at the
end of the epoch.

Checkpoints are also written inside an epoch (``engine.progress``): every
``checkpoint_every_steps`` steps, every ``checkpoint_every_minutes``, and at
the step where a stop signal is noticed (``engine.preemption``), after
which the run ends as interrupted. A run restored from such a checkpoint
skips the epoch's done steps and continues exactly. No checkpoint is ever
written with non-finite weights, or for an epoch whose losses diverged
(``engine.health``): the last checkpoint is the last good one.

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
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from ham_bench import distributed
from ham_bench.engine import health, trainer_state
from ham_bench.engine.bookkeeper import Bookkeeper
from ham_bench.engine.checkpoint import CHECKPOINT_NAME, save_checkpoint
from ham_bench.engine.health import DivergedError, NonFiniteLossError
from ham_bench.engine.preemption import Interrupted
from ham_bench.engine.progress import CheckpointSchedule, EpochProgress, set_rng_state
from ham_bench.engine.step import train_step
from ham_bench.optim import compile_time
from ham_bench.optim.divergence import describe as describe_ham

log = logging.getLogger("ham_bench")

RANK_SEED_STRIDE = 1_000_003 ** 2  # rank r's per-epoch seed is offset by r * this
PROGRESS_LINES = 10  # without a terminal: about this many progress lines per epoch, at log_every steps


def _is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False

__all__ = ["DivergedError", "NonFiniteLossError", "Trainer", "TrainerSettings"]


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
    num_classes: int = 10
    divergence_factor: float | None = 10.0
    extra_row: dict = field(default_factory=dict)


class Trainer:
    def __init__(self, model: nn.Module, train_loader, eval_loader, optimizer, scheduler, sparsifier, meters,
                 metrics_logger, run_dir: Path, settings: TrainerSettings, device: torch.device, seed: int = 0,
                 checkpoint_extra: dict | None = None, train_model: nn.Module | None = None,
                 schedule: CheckpointSchedule | None = None):
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
        self.schedule = schedule or CheckpointSchedule()
        self.bookkeeper = Bookkeeper(sparsifier, optimizer)  # masks and sign flips inside the optimizer step
        self.criterion = nn.CrossEntropyLoss(label_smoothing=settings.label_smoothing)
        self.steps_per_epoch = len(train_loader)
        self.start_epoch = 0
        self.best_acc = 0.0
        self.first_loss: float | None = None  # the first epoch's training loss (the divergence rule)
        self.saved_at: str | None = None      # where the last checkpoint was written, for messages
        self.epoch_lr: float | None = None    # the learning rate the last epoch started with
        self._resumed_progress: EpochProgress | None = None
        self.started = time.perf_counter()    # this segment's start (run.py sets it to the process's)
        self.previous_seconds: list[float] = []  # the seconds of the segments before a resume, from the checkpoint

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
        sampler = getattr(getattr(self.train_loader, "batch_sampler", None), "sampler", None)
        for candidate in (sampler, getattr(self.train_loader, "sampler", None)):
            if hasattr(candidate, "set_epoch"):
                candidate.set_epoch(epoch)
                break

    def _batches(self, skip: int, rng: dict | None):
        """The epoch's batches after the first ``skip``, with the RNG state of step ``skip`` put back.

        The loader itself when its sampler can skip (the batches are never loaded, and the
        iteration draws exactly what an uninterrupted epoch draws); else an iterator whose
        first ``skip`` batches were loaded and dropped.
        """
        batch_sampler = getattr(self.train_loader, "batch_sampler", None)
        if hasattr(batch_sampler, "skip_next"):
            batch_sampler.skip_next(skip)  # 0 for a whole epoch
            batches = self.train_loader
        elif not skip:
            batches = self.train_loader
        else:
            batches = iter(self.train_loader)
            for _ in range(skip):
                next(batches)
        if rng is not None:  # after _seed_epoch: the global RNG of the step resumed at
            set_rng_state(rng)
        return batches

    def _where(self, epoch: int, step: int | None = None) -> str:
        return f"epoch {epoch + 1}" + ("" if step is None else f", step {step} of {self.steps_per_epoch}")

    def _save(self, epoch_state: int, where: str, progress: EpochProgress | None = None) -> None:
        """A checkpoint (after checking the weights are finite); ``progress``: a mid-epoch one (all ranks call)."""
        health.check_weights(self.model, where)
        state = self.checkpoint_state(epoch_state, progress.state_dict() if progress is not None else None)
        if self.settings.is_main_process:
            save_checkpoint(self.run_dir / CHECKPOINT_NAME, state)
        self.saved_at = where
        self.schedule.saved()

    # ---- one epoch -------------------------------------------------------------------
    def train_epoch(self, epoch: int) -> dict:
        self.train_model.train()
        self._seed_epoch(epoch)
        progress, self._resumed_progress = self._resumed_progress, None
        if progress is None:
            progress = EpochProgress.start(self.device)
            progress.lr = self.optimizer.param_groups[0]["lr"]
            self.sparsifier.on_epoch_start(epoch)  # a resumed epoch had it already (its effect is in the state)
        batches = self._batches(progress.step, progress.rng)
        shown = self.settings.progress and self.settings.is_main_process
        lines = shown and not _is_terminal(sys.stderr)  # a log file or pipe: plain lines, no carriage returns
        bar = tqdm(batches, desc=f"epoch {epoch + 1}/{self.settings.epochs}", total=self.steps_per_epoch,
                   initial=progress.step, leave=False, dynamic_ncols=True, disable=not shown or lines)
        line_every = max(1, math.ceil(self.steps_per_epoch / PROGRESS_LINES))
        next_line = line_every * (progress.step // line_every + 1)
        compiled_before = compile_time.total()
        progress.started = time.perf_counter()
        for index, (x, y) in enumerate(bar, start=progress.step):
            x, y = self._to_device(x, y)
            step = epoch * self.steps_per_epoch + index
            record = train_step(self.train_model, self.optimizer, self.sparsifier, x, y, step, self.criterion,
                                self._autocast, bookkeeper=self.bookkeeper)
            self.scheduler.step()
            for meter in self.meters:
                meter.on_step(record)
            progress.add(record.loss, record.logits, y)
            last = index + 1 == self.steps_per_epoch
            flags = None if distributed.is_distributed() else self.schedule.flags()
            if (index + 1) % self.settings.log_every == 0 or last:
                *totals, stop_flag, due_flag = distributed.global_sums(
                    progress.loss_sum, progress.correct, progress.seen, *self.schedule.flags())
                flags = [stop_flag, due_flag]
                health.check_finite("training loss", totals[0] / totals[2], self._where(epoch, index + 1))
                bar.set_postfix(loss=f"{totals[0] / totals[2]:.4f}", acc=f"{100 * totals[1] / totals[2]:.2f}")
                if lines and not last and index + 1 >= next_line:
                    next_line += line_every * ((index + 1 - next_line) // line_every + 1)
                    log.info("epoch %d/%d  step %d/%d  train loss %.4f acc %.2f  %.0f samples/s", epoch + 1,
                             self.settings.epochs, index + 1, self.steps_per_epoch, totals[0] / totals[2],
                             100 * totals[1] / totals[2], progress.seen / max(progress.elapsed(), 1e-9))
                if self.settings.is_main_process and self.metrics_logger is not None:  # wandb, when on
                    self.metrics_logger.log_step(step + 1, {"train_loss": totals[0] / totals[2],
                                                            "train_acc": 100 * totals[1] / totals[2],
                                                            "lr": self.optimizer.param_groups[0]["lr"]})
            save, stop = self.schedule.decide(step + 1, flags)
            if save and not last:  # the epoch's end writes its own checkpoint
                where = self._where(epoch, index + 1)
                totals = distributed.global_sums(progress.loss_sum, progress.seen)
                health.check_finite("training loss", totals[0] / totals[1], where)
                self._save(epoch, where, progress)
                if stop:
                    raise Interrupted(self.schedule.signum(), where)
        seconds = progress.elapsed()
        compiling = compile_time.total() - compiled_before
        total_loss, total_correct, total_seen = distributed.global_sums(progress.loss_sum, progress.correct,
                                                                        progress.seen)
        self.epoch_lr = progress.lr
        return {"train_loss": total_loss / total_seen, "train_acc": 100.0 * total_correct / total_seen,
                "epoch_seconds": seconds, "compile_seconds": compiling,
                "samples_per_second": total_seen / max(seconds - compiling, 1e-9)}

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
        """Train from ``start_epoch`` to the end; returns the last metrics row.

        Raises NonFiniteLossError, DivergedError (the epoch's row is logged, no checkpoint is
        written for it) or Interrupted (after a checkpoint of the step it stopped at).
        """
        row = {}
        last_epoch = self.settings.epochs
        if self.settings.stop_after_epochs is not None:
            last_epoch = min(last_epoch, self.settings.stop_after_epochs)
        for epoch in range(self.start_epoch, last_epoch):
            try:
                train = self.train_epoch(epoch)
            except NonFiniteLossError as error:  # name HAM's alpha and exponents: the usual cause with HAM on
                raise NonFiniteLossError(f"{error}{describe_ham(self.optimizer)}") from None
            lr = self.epoch_lr
            self.sparsifier.on_epoch_end(epoch, train)
            row = self.epoch_row(epoch, lr, train, self.evaluate())
            if self.settings.is_main_process:
                self.metrics_logger.log_epoch(row)
            health.check_finite("test loss", row["test_loss"], self._where(epoch))
            diverged = health.divergence(row, self.first_loss, self.settings.num_classes,
                                         self.settings.divergence_factor)
            if diverged:
                raise DivergedError(f"training diverged at {self._where(epoch)}: {diverged}"
                                    f"{describe_ham(self.optimizer)}")
            if self.first_loss is None and epoch == 0:
                self.first_loss = row["train_loss"]
            self.best_acc = max(self.best_acc, row["test_acc"])
            self._save(epoch + 1, f"the end of epoch {epoch + 1}")
            if self.settings.is_main_process:
                log.info("epoch %d/%d  train loss %.4f acc %.2f  |  %s loss %.4f acc %.2f top5 %.2f  |  "
                         "sparsity %.4f  flips %d  lr %.4g  %.1fs (%.0f samples/s)",
                         epoch + 1, self.settings.epochs, row["train_loss"], row["train_acc"],
                         self.settings.extra_row.get("eval_split", "test"), row["test_loss"], row["test_acc"],
                         row["test_top5"], row["sparsity"], row["sign_flips"], lr, row["epoch_seconds"],
                         row["samples_per_second"])
            stop = distributed.global_sums(*self.schedule.flags())[0] > 0  # a signal during evaluation
            if stop and epoch + 1 < last_epoch:
                raise Interrupted(self.schedule.signum(), f"the end of epoch {epoch + 1}")
        return row

    def segment_seconds(self) -> list[float]:
        """Seconds of every segment of the run: those before resumes, then this one so far."""
        return [*self.previous_seconds, time.perf_counter() - self.started]

    def checkpoint_state(self, epoch: int, progress: dict | None = None) -> dict:
        """The state to continue from: ``epoch`` epochs done, plus ``progress`` into the next one if given."""
        return trainer_state.state_dict(self, epoch, progress)

    def restore(self, state: dict) -> None:
        """Continue from a checkpoint's state (``engine.trainer_state.restore``)."""
        trainer_state.restore(self, state)
        progress = state.get("progress")
        if progress:
            self._resumed_progress = EpochProgress.from_state(progress, self.device)
        self.saved_at = (self._where(self.start_epoch, progress["step"]) if progress
                         else f"the end of epoch {self.start_epoch}")
