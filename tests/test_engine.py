"""The step engine and the trainer, checked by value on a tiny fixed model and loader.

Every column of the metrics row is recomputed independently (a bare loop on a
copy of the model, a plain evaluation, the schedule's formula, zeros and signs
counted from weight snapshots); SAM and HAM run through the engine with the
gradients checked masked on both passes; a non-zero written into a masked
weight is zeroed by the next step; and every method, stopped between two
epochs in the middle of its schedule and resumed in-process, ends with the
same rows, masks and cumulative counters as the uninterrupted run.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ham_bench.cli import CONFIG_DIR
from ham_bench.engine.step import train_step
from ham_bench.engine.trainer import Trainer, TrainerSettings
from ham_bench.loggers import MetricsLogger
from ham_bench.metrics import build_meters
from ham_bench.metrics.meter import Meter
from ham_bench.optim import HAM, SAM, build_optimizer
from ham_bench.run import run_experiment
from ham_bench.schedule import build_scheduler, lr_factor
from sparsifiers import TrainingContext, build_sparsifier

STEPS, EPOCHS, BATCH = 8, 4, 16
TIMING = {"epoch_seconds", "samples_per_second", "compile_seconds", "seconds", "segment_seconds"}


def learnable_data(n, seed):
    """1x8x8 images whose class (of 4) is the quadrant with the largest sum: learnable in a few steps."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 8, 8, generator=generator)
    quadrants = torch.stack([x[:, 0, :4, :4].sum((1, 2)), x[:, 0, :4, 4:].sum((1, 2)),
                             x[:, 0, 4:, :4].sum((1, 2)), x[:, 0, 4:, 4:].sum((1, 2))], 1)
    return x, quadrants.argmax(1)


def tiny_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(128, 32), nn.ReLU(), nn.Linear(32, 4))


class SignSnapshots(Meter):
    """Records the effective weights after every step (a test's independent view of the run)."""

    name = "snapshots"

    def __init__(self, sparsifier):
        self.sparsifier = sparsifier
        self.initial = {k: w.clone() for k, w in sparsifier.effective_weights().items()}
        self.per_step = []

    def on_step(self, record):
        self.per_step.append({k: w.clone() for k, w in self.sparsifier.effective_weights().items()})


def build(tmp_path, sparsifier_cfg, optimizer="sgd", ham=False, train_size=STEPS * BATCH - 10):
    """A Trainer on the tiny data, built as ham_bench.run does; the last training batch is short (6 samples)."""
    model = tiny_model()
    sparsifier = build_sparsifier(sparsifier_cfg)
    train = TensorDataset(*learnable_data(train_size, 1))
    loader = DataLoader(train, batch_size=BATCH, shuffle=False)
    test = TensorDataset(*learnable_data(80, 2))
    eval_loader = DataLoader(test, batch_size=16)
    sparsifier.attach(model, TrainingContext(epochs=EPOCHS, steps_per_epoch=len(loader), seed=0))
    ham_cfg = {"enabled": True, "alpha": 5.0, "beta": 1e-3, "implementation": "foreach", "diagnostics": True}
    opt_cfg = ({"name": "sam", "lr": 0.1, "momentum": 0.9, "rho": 0.05} if optimizer == "sam"
               else {"name": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4})
    optimizer = build_optimizer(model, opt_cfg, ham_cfg if ham else None, extra_groups=sparsifier.parameter_groups())
    sparsifier.bind_optimizer(optimizer)
    schedule = {"name": "cosine", "warmup_epochs": 0, "min_lr_factor": 0.0}
    scheduler = build_scheduler(optimizer, schedule, len(loader), EPOCHS * len(loader))
    snapshots = SignSnapshots(sparsifier)
    meters = build_meters(model, sparsifier, optimizer, input_shape=(1, 8, 8), batch_size=BATCH,
                          steps_per_epoch=len(loader)) + [snapshots]
    logger = MetricsLogger(tmp_path, OmegaConf.create({"logger": {"wandb": {"enabled": False}}}))
    trainer = Trainer(model, loader, eval_loader, optimizer, scheduler, sparsifier, meters, logger, tmp_path,
                      TrainerSettings(epochs=EPOCHS, progress=False, log_every=2), torch.device("cpu"))
    return trainer, snapshots, schedule


def bare_loop_losses(model, optimizer, scheduler, loader, epochs):
    """Per-epoch mean training loss and accuracy of a plain PyTorch loop (dense, no sparsifier)."""
    rows = []
    for _ in range(epochs):
        loss_sum = correct = seen = 0.0
        for x, y in loader:
            optimizer.zero_grad()
            logits = model(x)
            loss = nn.functional.cross_entropy(logits, y)
            loss.backward()
            optimizer.step()
            scheduler.step()
            loss_sum += float(loss.detach()) * len(y)
            correct += int((logits.argmax(1) == y).sum())
            seen += len(y)
        rows.append((loss_sum / seen, 100.0 * correct / seen))
    return rows


@torch.no_grad()
def plain_evaluation(model, loader):
    model.eval()
    loss = top1 = top5 = seen = 0
    for x, y in loader:
        logits = model(x)
        loss += float(nn.functional.cross_entropy(logits, y, reduction="sum"))
        best = logits.topk(min(5, logits.size(1)), 1).indices
        top1 += int((best[:, 0] == y).sum())
        top5 += int((best == y[:, None]).any(1).sum())
        seen += len(y)
    return loss / seen, 100.0 * top1 / seen, 100.0 * top5 / seen


def flips_between(before, after):
    return sum(int(((torch.sign(before[k]) * torch.sign(after[k])) < 0).sum()) for k in before)


def test_every_column_of_the_row_against_an_independent_computation(tmp_path):
    trainer, snapshots, schedule = build(tmp_path, {"name": "random", "sparsity": 0.5})
    trainer.fit()
    rows = trainer.metrics_logger.rows
    assert [row["epoch"] for row in rows] == [1, 2, 3, 4]
    steps = trainer.steps_per_epoch
    for epoch, row in enumerate(rows):  # lr: the schedule's formula at the epoch's first step
        assert row["lr"] == pytest.approx(0.1 * lr_factor(epoch * steps, schedule, steps, EPOCHS * steps), rel=1e-12)
        assert row["lr"] == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * epoch / EPOCHS)), rel=1e-12)
    # evaluation of the final model, by hand
    loss, top1, top5 = plain_evaluation(trainer.model, trainer.eval_loader)
    assert rows[-1]["test_loss"] == pytest.approx(loss, rel=1e-6)
    assert rows[-1]["test_acc"] == pytest.approx(top1) and rows[-1]["test_top5"] == pytest.approx(top5)
    assert rows[-1]["test_acc"] > 50.0  # learnable data: far above chance (25 %)
    # sparsity and sign flips from the snapshots after every step
    per_step, last = snapshots.per_step, snapshots.per_step[-1]
    assert len(per_step) == EPOCHS * steps
    zeros = sum(int((w == 0).sum()) for w in last.values())
    assert rows[-1]["sparsity"] == pytest.approx(zeros / sum(w.numel() for w in last.values()), abs=1e-12)
    chain = [snapshots.initial, *per_step]
    for epoch, row in enumerate(rows):
        expected = sum(flips_between(chain[i], chain[i + 1]) for i in range(epoch * steps, (epoch + 1) * steps))
        assert row["sign_flips"] == expected
    assert rows[-1]["sign_flips_cumulative"] == sum(row["sign_flips"] for row in rows)
    initial_nonzero = sum(int((w != 0).sum()) for w in snapshots.initial.values())
    differ = flips_between(snapshots.initial, last)
    assert rows[-1]["sign_differs_from_init_count"] == differ
    assert rows[-1]["sign_differs_from_init"] == pytest.approx(differ / initial_nonzero)
    # FLOPs of a fixed mask: every step costs B x 3 f_S (the last batch is short but FLOPs count full batches)
    assert rows[0]["train_flops_epoch"] == rows[1]["train_flops_epoch"] == rows[-1]["train_flops_measured"] / EPOCHS
    # training loss and accuracy (and the weights): a bare PyTorch loop on a copy of the dense twin of this run
    dense_trainer, _, _ = build(tmp_path / "dense", {"name": "dense"})
    bare_model = copy.deepcopy(dense_trainer.model)
    bare_optimizer = torch.optim.SGD(
        [{"params": [p for p in bare_model.parameters() if p.dim() > 1], "weight_decay": 5e-4},
         {"params": [p for p in bare_model.parameters() if p.dim() <= 1], "weight_decay": 0.0}],
        lr=0.1, momentum=0.9)
    bare_scheduler = build_scheduler(bare_optimizer, schedule, steps, EPOCHS * steps)
    expected = bare_loop_losses(bare_model, bare_optimizer, bare_scheduler, dense_trainer.train_loader, EPOCHS)
    dense_trainer.fit()
    for row, (loss, accuracy) in zip(dense_trainer.metrics_logger.rows, expected):
        assert row["train_loss"] == pytest.approx(loss, rel=1e-6)  # per-sample mean, the short batch weighted
        assert row["train_acc"] == pytest.approx(accuracy)
    for p, q in zip(dense_trainer.model.parameters(), bare_model.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


class CheckedSAM(SAM):
    """SAM that asserts, at both of its gradient reads, that masked entries carry no gradient."""

    masks: dict = {}

    def first_step(self, zero_grad=False):
        self.check("first pass (perturbation)")
        super().first_step(zero_grad)

    def second_step(self, zero_grad=False):
        self.check("second pass (the base step)")
        super().second_step(zero_grad)

    def check(self, where):
        for param, mask in self.masks.items():
            assert param.grad is not None and int(param.grad[~mask].count_nonzero()) == 0, where
        self.checked = getattr(self, "checked", 0) + 1


@pytest.mark.parametrize("method", ["random", "rigl"])
def test_sam_and_ham_through_the_engine_mask_both_passes_and_learn(method):
    model = tiny_model()
    cfg = {"name": method, "sparsity": 0.7}
    if method == "rigl":
        cfg.update(update_interval=3, skip_step_on_update=False)
    sparsifier = build_sparsifier(cfg)
    sparsifier.attach(model, TrainingContext(epochs=4, steps_per_epoch=8, seed=0))
    sam = CheckedSAM(model.parameters(), torch.optim.SGD, lr=0.1, momentum=0.9, rho=0.05)
    optimizer = HAM(sam, alpha=5.0, beta=0.0, implementation="foreach")
    sparsifier.bind_optimizer(optimizer)
    x, y = learnable_data(128, 3)
    records = []
    for epoch in range(4):
        sparsifier.on_epoch_start(epoch)
        for index in range(8):
            sam.masks = {t: sparsifier.masks()[k] for k, t in sparsifier.masked_tensors().items()}
            records.append(train_step(model, optimizer, sparsifier, x[index::8], y[index::8], epoch * 8 + index))
        sparsifier.on_epoch_end(epoch, {})
    assert all(r.passes == 2 and r.stepped for r in records)
    assert sam.checked == 2 * len(records)
    if method == "rigl":
        assert sum(r.dense_gradient for r in records) == 7 and sparsifier.updates_done == 7
    with torch.no_grad():
        accuracy = float((model(x).argmax(1) == y).float().mean())
    assert accuracy > 0.6  # chance is 0.25


MASKED = ["random", "rigl", "acdc", "str", "signin", "rigl_signin", "acdc_signin", "pilot"]


@pytest.mark.parametrize("method", MASKED)
def test_a_nonzero_written_into_a_masked_weight_is_zeroed_by_the_next_step(method):
    model = tiny_model()
    settings = {"rigl": {"update_interval": 2}}.get(method, {})
    cfg = compose_sparsifier(method, settings)
    sparsifier = build_sparsifier(cfg)
    sparsifier.attach(model, TrainingContext(epochs=2, steps_per_epoch=6, seed=0))
    optimizer = build_optimizer(model, {"name": "sgd", "lr": 0.1, "momentum": 0.9}, None,
                                extra_groups=sparsifier.parameter_groups())
    sparsifier.bind_optimizer(optimizer)
    x, y = learnable_data(96, 4)
    corrupted = 0
    for epoch in range(2):
        sparsifier.on_epoch_start(epoch)
        for index in range(6):
            tensors = sparsifier.masked_tensors()
            with torch.no_grad():
                for key, tensor in tensors.items():
                    inactive = ~sparsifier.masks()[key]
                    tensor[inactive] = 0.01  # a write from outside, e.g. a buggy user callback
                    corrupted += int(inactive.sum())
            train_step(model, optimizer, sparsifier, x[index::6], y[index::6], epoch * 6 + index)
            weights = sparsifier.effective_weights()
            for key, mask in sparsifier.masks().items():
                assert int(weights[key][~mask].count_nonzero()) == 0, (method, key, epoch, index)
        sparsifier.on_epoch_end(epoch, {"train_acc": 50.0})
    assert corrupted > 0  # the method had enforced masks during the run


def compose_sparsifier(option, settings=None):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"sparsifier={option}"])
    cfg = OmegaConf.to_container(cfg.sparsifier, resolve=True)
    target = cfg["inner"] if "inner" in cfg and settings else cfg
    target.update(settings or {})
    return cfg


# ---- in-process resume, for every method, stopped in the middle of its schedule --------------------
# 4 epochs x 8 steps; the stop after epoch 2 falls inside a phase of every method's schedule
RESUME_CASES = {
    "dense": [], "random": [], "signin": [], "pilot": ["sparsifier.prune_at=0.75"],
    "rigl": ["sparsifier.update_interval=3"], "rigl_signin": ["sparsifier.inner.update_interval=3"],
    "acdc": ["sparsifier.dense_warmup=0.125", "sparsifier.compressed_length=0.25",
             "sparsifier.decompressed_length=0.125", "sparsifier.final_compressed_length=0.25"],
    "acdc_signin": ["sparsifier.inner.dense_warmup=0.125", "sparsifier.inner.compressed_length=0.25",
                    "sparsifier.inner.decompressed_length=0.125", "sparsifier.inner.final_compressed_length=0.25"],
    "str": ["sparsifier.s_init=-3.0", "sparsifier.projection_at=0.75"],
    # the taxonomy: schedules and rounds are fractions of the run, so most need no override to act in 32 steps
    "snip": [], "synflow": ["sparsifier.rounds=10"], "gmp": [], "imp": [], "lrr": [],
    "set": ["sparsifier.update_interval=3"], "mest": [], "cs": [], "spred": ["sparsifier.prune_at=0.75"], "nm": [],
}
NO_SPARSITY_KEY = {"dense", "nm"}  # nm's sparsity is 1 - n/m


def run_config(method, *extra):
    overrides = [f"sparsifier={method}", "dataset.subset=512", "batch_size=64", "epochs=4", "progress=false",
                 "log_every=4", "ham.diagnostics=true", *RESUME_CASES[method], *extra]
    if method not in NO_SPARSITY_KEY:
        overrides.append("sparsifier.sparsity=0.8")
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


def without_timing(rows):
    return [{k: v for k, v in row.items() if k not in TIMING} for row in rows]


WHOLE_RUNS: dict[str, tuple[dict, Path]] = {}  # method -> (summary, run dir) of its uninterrupted run


def uninterrupted(method, tmp_path_factory):
    """One uninterrupted run per method, shared by the two resume tests (checkpoints never change a number)."""
    if method not in WHOLE_RUNS:
        run_dir = tmp_path_factory.mktemp(f"whole_{method}")
        WHOLE_RUNS[method] = run_experiment(run_config(method, "checkpoint_every_steps=3"), run_dir), run_dir
    return WHOLE_RUNS[method]


@pytest.mark.parametrize("method", list(RESUME_CASES))
def test_in_process_resume_mid_schedule_matches_the_uninterrupted_run(tmp_path, tmp_path_factory, method):
    whole, whole_dir = uninterrupted(method, tmp_path_factory)
    part = run_experiment(run_config(method, "stop_after_epochs=2"), tmp_path / "part")
    assert (whole["status"], part["status"]) == ("completed", "stopped")
    cfg = run_config(method)
    cfg.resume = str(tmp_path / "part")
    resumed = run_experiment(cfg, tmp_path / "part")
    assert resumed["status"] == "completed"
    rows = lambda run_dir: without_timing(json.loads(line) for line in (run_dir / "metrics.jsonl").open())  # noqa: E731
    assert rows(tmp_path / "part") == rows(whole_dir)
    for key in ("sign_flips_total", "train_flops", "train_flops_measured", "final_test_acc", "final_sparsity"):
        assert resumed[key] == whole[key], key
    whole_state = torch.load(whole_dir / "checkpoint.pt", weights_only=True)
    part_state = torch.load(tmp_path / "part" / "checkpoint.pt", weights_only=True)
    assert json.dumps(whole_state["sparsifier"], default=str) == json.dumps(part_state["sparsifier"], default=str)
    for key, value in whole_state["model"].items():
        assert torch.equal(value, part_state["model"][key]), key
    if method == "rigl":
        assert whole_state["sparsifier"]["updates_done"] == 7  # steps 3, ..., 21: five before the stop, two after


# ---- mid-epoch: a stop signal in the middle of epoch 2, for every method ----------------------------
# The signal is recorded as the handler would record it (StopSignals.signum), at a fixed step, so the
# stop is deterministic; the trainer then writes the step's checkpoint and ends the run as interrupted.
STOP_AT_STEP = 13  # epoch 2, step 5 of 8; checkpoints every 3 steps as well, so restored state is mid-interval


def test_the_mid_epoch_cases_cover_the_registry():
    from sparsifiers import available_sparsifiers
    assert set(available_sparsifiers()) <= set(RESUME_CASES), set(available_sparsifiers()) - set(RESUME_CASES)


@pytest.mark.parametrize("method", list(RESUME_CASES))
def test_a_stop_signal_mid_epoch_then_resume_matches_the_uninterrupted_run(tmp_path, tmp_path_factory, method,
                                                                           monkeypatch):
    import signal

    import ham_bench.engine.trainer as trainer_module
    from ham_bench.engine.preemption import StopSignals
    from cli_runs import HAM_DIAGNOSTICS

    whole, whole_dir = uninterrupted(method, tmp_path_factory)
    stop = StopSignals()
    real_step = trainer_module.train_step

    def step_then_signal(*args, **kwargs):
        record = real_step(*args, **kwargs)
        if args[5] + 1 == STOP_AT_STEP:  # train_step(model, optimizer, sparsifier, x, y, step, ...)
            stop.signum = signal.SIGTERM
        return record

    with monkeypatch.context() as patch, stop:
        patch.setattr(trainer_module, "train_step", step_then_signal)
        part = run_experiment(run_config(method, "checkpoint_every_steps=3"), tmp_path / "part", stop=stop)
    assert part["status"] == "interrupted", part
    state = torch.load(tmp_path / "part" / "checkpoint.pt", weights_only=True)
    assert (state["epoch"], state["progress"]["step"]) == (1, STOP_AT_STEP - 8)
    cfg = run_config(method, "checkpoint_every_steps=3")
    cfg.resume = str(tmp_path / "part")
    resumed = run_experiment(cfg, tmp_path / "part")
    assert resumed["status"] == "completed"

    def rows(run_dir):
        return [{k: v for k, v in row.items() if k not in TIMING and not (epoch == 2 and k in HAM_DIAGNOSTICS)}
                for epoch, row in enumerate(map(json.loads, (run_dir / "metrics.jsonl").open()), start=1)]

    assert rows(tmp_path / "part") == rows(whole_dir)
    for key in ("sign_flips_total", "train_flops", "train_flops_measured", "final_test_acc", "final_sparsity"):
        assert resumed[key] == whole[key], key
    whole_state = torch.load(whole_dir / "checkpoint.pt", weights_only=True)
    part_state = torch.load(tmp_path / "part" / "checkpoint.pt", weights_only=True)
    for key, value in whole_state["model"].items():
        assert torch.equal(value, part_state["model"][key]), key
