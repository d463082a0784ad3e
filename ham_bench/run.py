"""One experiment from a composed config: build data, model, sparsifier, optimizer, train, summarize.

Outputs in the run dir (the contract scripts rely on): ``.hydra/`` (written by
Hydra), ``metrics.jsonl`` (one row per epoch), ``checkpoint.pt`` (every epoch,
and inside epochs by ``checkpoint_every_*`` or a stop signal) and
``summary.json`` (at the end). All are written atomically. ``status`` is one
of ``STATUSES``: ``completed``; ``stopped`` (``stop_after_epochs``);
``interrupted`` (a signal: a checkpoint of the step it reached was written);
``failed`` (a non-finite loss or weight, or a file that could not be written);
``diverged`` (``engine.health``'s rule). ``error`` says what happened and
where the last good checkpoint is, if there is one. ``resume=<run dir>``
continues a run in its own dir from its checkpoint, with the config stored
there (``engine.resume``).

Data parallel (launched by torchrun or a multi-task SLURM job, see
``ham_bench.distributed``): every rank builds the same run, the sparsifier
attaches to the plain model, its masks are broadcast from rank 0 and the model
is wrapped in DistributedDataParallel; ``batch_size`` is per rank. Only rank 0
writes (metrics, checkpoints, summary, wandb); a resumed run loads rank 0's
checkpoint on every rank.
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from ham_bench import atomic_io, distributed
from ham_bench.data import build_datasets, build_loader, seeded_batches
from ham_bench.engine.checkpoint import CHECKPOINT_NAME, load_checkpoint
from ham_bench.engine.health import DivergedError, NonFiniteLossError
from ham_bench.engine.preemption import Interrupted, StopSignals, signal_name
from ham_bench.engine.progress import CheckpointSchedule
from ham_bench.engine.trainer import Trainer, TrainerSettings
from ham_bench.loggers import MetricsLogger
from ham_bench.metrics import build_meters
from ham_bench.models import build_model
from ham_bench.optim import build_optimizer
from ham_bench.optim.divergence import HAMDivergenceWarning, warning_of
from ham_bench.provenance import provenance
from ham_bench.schedule import build_scheduler
from sparsifiers import build_sparsifier
from sparsifiers.base import TrainingContext
from sparsifiers.config import ConfigError

log = logging.getLogger("ham_bench")

STATUSES = ("completed", "stopped", "interrupted", "failed", "diverged")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_trainer(cfg: DictConfig, run_dir: Path, resume_state: dict | None = None) -> Trainer:
    """Everything one run needs, built in the order the sparsifier interface expects.

    ``resume_state``: the checkpoint being resumed (``engine.checkpoint.load_checkpoint``), restored here.
    """
    device = distributed.local_device(resolve_device(cfg.device))
    seed_everything(cfg.seed)
    with distributed.main_process_first():  # rank 0 downloads, if anything is downloaded
        data = build_datasets(cfg.dataset)
    pin = device.type == "cuda"
    train_loader = build_loader(data.train, cfg.batch_size, shuffle=True, num_workers=cfg.num_workers,
                                seed=cfg.seed, drop_last=True, pin_memory=pin,
                                sampler=distributed.train_sampler(data.train, cfg.seed))
    if len(train_loader) == 0:
        raise ConfigError(f"batch_size={cfg.batch_size} exceeds the training set ({len(data.train)} samples"
                          f"{' on this rank' if distributed.is_distributed() else ''}); use a smaller batch_size")
    eval_loader = build_loader(data.eval, cfg.eval_batch_size, shuffle=False, num_workers=cfg.num_workers,
                               seed=cfg.seed, pin_memory=pin, sampler=distributed.eval_sampler(data.eval))
    model = build_model(cfg.model, data.num_classes, data.in_channels, data.image_size).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    context = TrainingContext(epochs=cfg.epochs, steps_per_epoch=len(train_loader), seed=cfg.seed, device=device,
                              input_shape=(data.in_channels, data.image_size, data.image_size),
                              sample_batch=seeded_batches(data.train, cfg.batch_size, cfg.seed))
    sparsifier = build_sparsifier(cfg.sparsifier)
    sparsifier.attach(model, context)
    if distributed.is_main_process():
        for warning in sparsifier.schedule_warnings():
            log.warning(warning)
    distributed.broadcast_masks(sparsifier)
    train_model = distributed.wrap_model(model, device, sparsifier)  # the model itself when not distributed
    optimizer = build_optimizer(model, cfg.optimizer, cfg.ham, extra_groups=sparsifier.parameter_groups())
    sparsifier.bind_optimizer(optimizer)
    scheduler = build_scheduler(optimizer, cfg.schedule, len(train_loader), context.total_steps,
                                position=sparsifier.schedule_position)
    settings = TrainerSettings(
        epochs=cfg.epochs, label_smoothing=cfg.label_smoothing, precision=cfg.precision,
        channels_last=cfg.channels_last, compile=bool(cfg.get("compile", False)), progress=cfg.progress,
        log_every=cfg.log_every,
        stop_after_epochs=cfg.get("stop_after_epochs"), is_main_process=distributed.is_main_process(),
        num_classes=data.num_classes, divergence_factor=cfg.get("divergence_factor", 10.0),
        extra_row={"eval_split": data.eval_split_name})
    schedule = CheckpointSchedule(cfg.get("checkpoint_every_steps"), cfg.get("checkpoint_every_minutes"))
    meters = build_meters(model, sparsifier, optimizer, input_shape=(data.in_channels, data.image_size, data.image_size),
                          batch_size=cfg.batch_size * distributed.world_size(),  # samples per step over all ranks
                          steps_per_epoch=len(train_loader), log_every=cfg.log_every,
                          warn_clamp_fraction=cfg.ham_warn_clamp_fraction, run_dir=run_dir,
                          dump_masks_at=tuple(cfg.get("dump_masks_at") or ()),
                          is_main_process=settings.is_main_process)
    keep_epochs = resume_state["epoch"] if resume_state is not None else 0
    metrics_logger = (MetricsLogger(run_dir, cfg, keep_epochs=keep_epochs, steps_per_epoch=len(train_loader),
                                    wandb_state=(resume_state or {}).get("wandb"))
                      if settings.is_main_process else None)
    trainer = Trainer(model, train_loader, eval_loader, optimizer, scheduler, sparsifier, meters, metrics_logger,
                      run_dir, settings, device, seed=cfg.seed, train_model=train_model, schedule=schedule,
                      checkpoint_extra={"config": OmegaConf.to_container(cfg, resolve=True),
                                        "wandb": metrics_logger.wandb_state if metrics_logger else None,
                                        "model_args": {"num_classes": data.num_classes,
                                                       "in_channels": data.in_channels,
                                                       "image_size": data.image_size}})
    log.info("run dir %s | %s on %s (%d train / %d %s samples) | model %s, %.2fM params | sparsifier %s "
             "| optimizer %s | HAM %s | device %s", run_dir, data.name, device, len(data.train),
             len(data.eval), data.eval_split_name, cfg.model.name,
             sum(p.numel() for p in model.parameters()) / 1e6, sparsifier.name, cfg.optimizer.name,
             cfg.ham.variant if cfg.ham.enabled else "off", device)
    if distributed.is_distributed():
        log.info(distributed.describe(cfg.batch_size))
    if resume_state is not None:
        trainer.restore(resume_state)
        log.info("resumed from %s at %s", cfg.resume, trainer.saved_at)
        if int(resume_state["config"]["epochs"]) != cfg.epochs:  # extended: the LR from the new plan, from here on
            for group, base, factor in zip(optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
                group["lr"] = base * factor(scheduler.last_epoch)
            log.info("epochs %s -> %d: the LR schedule and the sparsifier's phases are re-planned for %d epochs "
                     "from here on (the epochs done keep their plan)", resume_state["config"]["epochs"], cfg.epochs,
                     cfg.epochs)
    return trainer


def summary_of(trainer: Trainer | None, cfg: DictConfig, status: str, seconds: float, error: str | None) -> dict:
    rows = trainer.metrics_logger.rows if trainer else []
    last = rows[-1] if rows else {}
    summary = {
        "status": status,
        "error": error,
        "final_test_acc": last.get("test_acc"),
        "final_test_top5": last.get("test_top5"),
        "final_test_loss": last.get("test_loss"),
        "best_test_acc": max((r["test_acc"] for r in rows), default=None),
        "epochs": len(rows),
        "epochs_planned": cfg.epochs,
        "seconds": seconds if trainer is None else sum(trainer.previous_seconds) + seconds,
        "segment_seconds": [seconds] if trainer is None else [*trainer.previous_seconds, seconds],
        "eval_split": last.get("eval_split"),
        # the instance's name: compositions read e.g. "rigl+signin"
        "method": {"sparsifier": (trainer.sparsifier.name if trainer is not None
                                  else cfg.sparsifier.get("name", cfg.sparsifier.get("_target_"))),
                   "optimizer": cfg.optimizer.name,
                   "ham": cfg.ham.variant if cfg.ham.enabled else "off",
                   "model": cfg.model.name, "dataset": cfg.dataset.name, "seed": cfg.seed},
    }
    summary["provenance"] = provenance(trainer.device if trainer is not None else None)
    summary["warnings"] = trainer.sparsifier.schedule_warnings() if trainer is not None else []
    if trainer is not None and warning_of(trainer.optimizer):
        summary["warnings"].append(warning_of(trainer.optimizer))  # HAM's divergence warning (issue 14)
    for meter in trainer.meters if trainer is not None else ():
        summary.update(meter.summary())
        summary.update({f"final_{key}": last[key] for key in meter.final_keys if key in last})
    return summary


@contextlib.contextmanager
def _ham_warnings_logged():
    """HAM's divergence warning as a log line of the run (its source line would point into the trainer)."""
    shown = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, HAMDivergenceWarning):
            if distributed.is_main_process():
                log.warning("%s", message)
        else:
            shown(message, category, filename, lineno, file, line)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = shown


def _outcome(trainer: Trainer, run_dir: Path, error: Exception) -> str:
    """The error's line, and what is left to continue from (true whether or not a checkpoint exists)."""
    if trainer.saved_at is None:
        return f"{error}; the run stops; no checkpoint was written before it, nothing to resume from"
    return f"{error}; the run stops; its last good checkpoint ({trainer.saved_at}) is kept in {run_dir}"


def _write_summary(run_dir: Path, summary: dict) -> None:
    try:
        atomic_io.write_json(run_dir / "summary.json", summary)
    except atomic_io.WriteError as error:  # e.g. the disk is full: say so, the run's status is in the log
        log.error("%s", error)


def run_experiment(cfg: DictConfig, run_dir: Path, resume_state: dict | None = None,
                   stop: StopSignals | None = None) -> dict:
    """Train one run and write summary.json; returns the summary (``status`` one of ``STATUSES``).

    Resuming (``cfg.resume``): ``resume_state`` is the checkpoint the caller already read (the CLI reads
    it for the config), else it is read here, once. ``stop``: installed signal handlers (the CLI's, so
    it can hand a preempted job over to submitit afterwards); installed here when not given.
    """
    if stop is None:
        with StopSignals() as own:
            return run_experiment(cfg, run_dir, resume_state, own)
    run_dir = Path(run_dir)
    started = time.perf_counter()
    if resume_state is None and cfg.get("resume"):
        distributed.barrier()  # every rank reads rank 0's checkpoint, once it is written
        resume_state = load_checkpoint(Path(cfg.resume) / CHECKPOINT_NAME)
    trainer = build_trainer(cfg, run_dir, resume_state)
    trainer.started = started
    trainer.schedule.stop = stop  # the signals the trainer looks at after every step
    status, error, signum = "completed", None, None
    main = trainer.settings.is_main_process  # only rank 0 writes
    try:
        with _ham_warnings_logged():
            last_row = trainer.fit()
        if last_row.get("epoch", trainer.start_epoch) < cfg.epochs:
            status = "stopped"  # stop_after_epochs: resumable with resume=<run dir>
    except (NonFiniteLossError, DivergedError, atomic_io.WriteError) as exc:
        status = "diverged" if isinstance(exc, DivergedError) else "failed"
        error = _outcome(trainer, run_dir, exc)
        log.error("%s", error)
    except Interrupted as exc:
        status, signum = "interrupted", signal_name(exc.signum)
        error = (f"{exc}, after writing a checkpoint of that step; the same command (or resume={run_dir}) "
                 f"continues it")
        log.warning("%s", error)
    except BaseException as exc:  # record why, then let it propagate (a second Ctrl-C, a bug)
        if main:
            interrupted = isinstance(exc, KeyboardInterrupt)
            reason = (f"{signal_name(2)} twice: stopped at once; the work since its last checkpoint "
                      f"({trainer.saved_at or 'none'}) is lost" if interrupted else repr(exc))
            _write_summary(run_dir, summary_of(trainer, cfg, "interrupted" if interrupted else "failed",
                                               time.perf_counter() - started, reason))
        raise
    if not main:
        return {"status": status, "error": error, "signal": signum}
    summary = summary_of(trainer, cfg, status, time.perf_counter() - started, error)
    if signum is not None:
        summary["signal"] = signum  # interrupted: which signal
    _write_summary(run_dir, summary)
    trainer.metrics_logger.finish(summary)
    if status == "completed":
        log.info("done: %s acc %.2f%% (best %.2f%%), sparsity %.4f, %d sign flips, %.0fs -> %s",
                 summary["eval_split"], summary["final_test_acc"], summary["best_test_acc"],
                 summary["final_sparsity"], summary["sign_flips_total"], summary["seconds"], run_dir)
    return summary
