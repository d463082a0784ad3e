"""The one training loop shared by every model x dataset x sparsifier x optimizer (+HAM).

Per step (see ``sparsifiers.base`` for the hook contract)::

    forward, backward -> sparsifier.mask_gradients -> sparsifier.before_step
    -> optimizer.step (base, then HAM; SAM gets a closure for its second pass)
    -> sparsifier.after_step (re-mask) -> lr schedule -> sign-flip count

Per epoch: evaluation (loss, top-1, top-5), sparsity per layer, sign flips,
HAM diagnostics, one metrics row, one summary line, and a checkpoint.

Host syncs are kept out of the step: losses and accuracies accumulate in
device tensors and are read every ``log_every`` steps (progress bar, the
non-finite-loss check and HAM's clamp warning) and at the end of the epoch.

Data parallel (``ham_bench.distributed``): ``model`` is the plain model that
the sparsifier, reports and checkpoints see; ``train_model`` (its DDP wrapper)
runs the training forward/backward. Loss and accuracy sums are all-reduced
where they are read, so every rank logs, checks and reports the same numbers;
only rank 0 (``settings.is_main_process``) writes.
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

from ham_bench import atomic_io, distributed
from ham_bench.flops import TrainingFlopsMeter
from ham_bench.sign_flips import SignFlipCounter
from ham_bench.topology import TopologyTracker, dump_masks
from sparsifiers.base import sparsity_report

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
    progress: bool = True
    log_every: int = 20
    ham_warn_clamp_fraction: float = 0.01
    stop_after_epochs: int | None = None
    input_shape: tuple = ()          # one sample's shape, for FLOPs
    batch_size: int = 1
    optimizer_cfg: dict = field(default_factory=dict)
    ham_cfg: dict = field(default_factory=dict)
    dump_masks_at: tuple = ()        # epochs (1-based) whose masks are dumped to masks/epoch_NNNN.npz
    is_main_process: bool = True
    extra_row: dict = field(default_factory=dict)


class Trainer:
    def __init__(self, model: nn.Module, train_loader, eval_loader, optimizer, scheduler, sparsifier,
                 metrics_logger, run_dir: Path, settings: TrainerSettings, device: torch.device,
                 seed: int = 0, checkpoint_extra: dict | None = None, train_model: nn.Module | None = None):
        self.model = model
        self.train_model = model if train_model is None else train_model
        self.train_loader = train_loader
        self.eval_loader = eval_loader
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.sparsifier = sparsifier
        self.metrics_logger = metrics_logger
        self.run_dir = Path(run_dir)
        self.settings = settings
        self.device = device
        self.seed = seed
        self.checkpoint_extra = checkpoint_extra or {}
        self.criterion = nn.CrossEntropyLoss(label_smoothing=settings.label_smoothing)
        self.steps_per_epoch = len(train_loader)
        self.uses_closure = bool(getattr(optimizer, "requires_closure", False))
        self.has_ham_diagnostics = callable(getattr(optimizer, "diagnostics", None))
        self.flip_counter = SignFlipCounter(self.sparsifier.effective_weights())
        self.topology = TopologyTracker(sparsifier, self.flip_counter)
        self.flops_meter = TrainingFlopsMeter(model, sparsifier, settings.input_shape, settings.optimizer_cfg,
                                              settings.ham_cfg, settings.batch_size)
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

    def _loss(self, x, y):
        with self._autocast():
            logits = self.train_model(x)
            return self.criterion(logits.float(), y), logits

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
        warned = False
        started = time.perf_counter()
        bar = tqdm(self.train_loader, desc=f"epoch {epoch + 1}/{self.settings.epochs}", leave=False,
                   disable=not (self.settings.progress and self.settings.is_main_process), dynamic_ncols=True)
        for index, (x, y) in enumerate(bar):
            step = epoch * self.steps_per_epoch + index
            x, y = self._to_device(x, y)
            self.optimizer.zero_grad(set_to_none=True)
            loss, logits = self._loss(x, y)
            loss.backward()
            self.sparsifier.mask_gradients()
            if self.sparsifier.before_step(step):
                if self.uses_closure:
                    self.optimizer.step(self._closure(x, y))
                else:
                    self.optimizer.step()
            self.sparsifier.after_step(step)
            self.scheduler.step()
            self.flip_counter.update(self.sparsifier.effective_weights())
            masks = self.sparsifier.masks()
            self.topology.update_after_step(masks)
            self.flops_meter.update_after_step(step, masks)

            loss_sum += loss.detach() * y.size(0)
            correct += (logits.detach().argmax(1) == y).sum()
            seen += y.size(0)
            if (index + 1) % self.settings.log_every == 0 or index + 1 == self.steps_per_epoch:
                total_loss, total_correct, total_seen = distributed.global_sums(loss_sum, correct, seen)
                mean_loss = total_loss / total_seen
                if not math.isfinite(mean_loss):
                    raise NonFiniteLossError(
                        f"non-finite training loss at epoch {epoch + 1}, step {index + 1}: {mean_loss}")
                bar.set_postfix(loss=f"{mean_loss:.4f}", acc=f"{100 * total_correct / total_seen:.2f}")
                if not warned:
                    warned = self._warn_if_clamped(epoch, index)
        seconds = time.perf_counter() - started
        total_loss, total_correct, total_seen = distributed.global_sums(loss_sum, correct, seen)
        return {"train_loss": total_loss / total_seen, "train_acc": 100.0 * total_correct / total_seen,
                "epoch_seconds": seconds, "samples_per_second": total_seen / seconds}

    def _closure(self, x, y):
        def closure():
            # SAM's second forward/backward at the perturbed weights
            with torch.enable_grad():
                loss, _ = self._loss(x, y)
                loss.backward()
            self.sparsifier.mask_gradients()
            return loss
        return closure

    def _warn_if_clamped(self, epoch: int, index: int) -> bool:
        if not self.has_ham_diagnostics:
            return False
        stats = self.optimizer.diagnostics(reset=False)
        fraction = stats.get("ham_clamp_fraction", 0.0)
        if fraction > self.settings.ham_warn_clamp_fraction and self.settings.is_main_process:
            log.warning("HAM: %.1f%% of exponents sit at the clamp (epoch %d, step %d): alpha is too large "
                        "for this gradient scale and the run is likely to diverge; try a smaller ham.alpha "
                        "or optimizer.lr", 100 * fraction, epoch + 1, index + 1)
            return True
        return False

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
            evaluation = self.evaluate()
            weights = self.sparsifier.effective_weights()
            report = sparsity_report(self.sparsifier, weights)
            sparsity = report["achieved_sparsity_all_layers"]
            row = {"epoch": epoch + 1, "lr": lr, **train, **evaluation, "sparsity": sparsity,
                   "sparsity_per_layer": {r["name"]: 1 - r["nonzeros"] / r["params"] for r in report["layers"]},
                   "sparsity_masked_layers": report["achieved_sparsity"],
                   "target_sparsity_masked_layers": report["target_sparsity"],
                   "dense_layers": [r["name"] for r in report["layers"] if not r["masked"]],
                   **self.flip_counter.epoch_report(weights), **self.topology.epoch_report(weights),
                   **self.flops_meter.epoch_report(), **self.sparsifier.extra_metrics(),
                   **self.settings.extra_row}
            if self.has_ham_diagnostics:
                row.update(self.optimizer.diagnostics(reset=True))
            self.best_acc = max(self.best_acc, row["test_acc"])
            if self.settings.is_main_process:
                self.metrics_logger.log_epoch(row)
                self.save_checkpoint(epoch + 1)
                if epoch + 1 in self.settings.dump_masks_at:
                    dump_masks(self.run_dir / "masks" / f"epoch_{epoch + 1:04d}.npz", self.sparsifier, epoch + 1)
                log.info("epoch %d/%d  train loss %.4f acc %.2f  |  %s loss %.4f acc %.2f top5 %.2f  |  "
                         "sparsity %.4f  flips %d  lr %.4g  %.1fs (%.0f samples/s)",
                         epoch + 1, self.settings.epochs, row["train_loss"], row["train_acc"],
                         self.settings.extra_row.get("eval_split", "test"), row["test_loss"], row["test_acc"],
                         row["test_top5"], sparsity, row["sign_flips"], lr, row["epoch_seconds"],
                         row["samples_per_second"])
        return row

    def checkpoint_state(self, epoch: int) -> dict:
        return {
            "epoch": epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "sparsifier": self.sparsifier.state_dict(),
            "sign_flips": self.flip_counter.state_dict(),
            "topology": self.topology.state_dict(),
            "flops": self.flops_meter.state_dict(),
            "steps_per_epoch": self.steps_per_epoch,
            "best_acc": self.best_acc,
            "rng": {"torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
            **self.checkpoint_extra,
        }

    def save_checkpoint(self, epoch: int) -> None:
        atomic_io.torch_save(self.run_dir / "checkpoint.pt", self.checkpoint_state(epoch))

    def load_checkpoint(self, path: Path) -> None:
        state = torch.load(path, map_location=self.device, weights_only=False)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.sparsifier.load_state_dict(state["sparsifier"])
        self.flip_counter.load_state_dict(state["sign_flips"])
        self.topology.load_state_dict(state["topology"])
        self.flops_meter.load_state_dict(state["flops"])
        self.best_acc = state["best_acc"]
        torch.set_rng_state(state["rng"]["torch"])
        if state["rng"]["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        self.start_epoch = state["epoch"]
