"""Preemption loses (almost) nothing: a signal mid-epoch writes a checkpoint of that step and the run ends as
interrupted; the same command continues it and gives the uninterrupted run's metrics; under DDP too; a kill -9
loses at most the checkpoint interval; submitit's requeue resumes instead of restarting (issue 13, item 7).

Real processes and real signals throughout. Every run: 3000 Fashion-MNIST images, batches of 64 (46 steps an
epoch), checkpoints every 5 steps, the non-compiled HAM (no compile time in each process).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from cli_runs import ENV, HAM_DIAGNOSTICS, free_port, ham_bench, last_line, rows, start, summary, \
    wait_for
from ham_bench.engine.checkpoint import load_checkpoint

ARGS = ["dataset.subset=3000", "batch_size=64", "epochs=2", "progress=false", "ham.implementation=foreach",
        "log_every=2", "checkpoint_every_steps=5"]
STEPS = 46


def checkpoint_step(run_dir):
    """(epochs done, steps done in the next epoch) of the run dir's checkpoint, or None while there is none."""
    try:
        state = load_checkpoint(run_dir / "checkpoint.pt")
    except Exception:  # noqa: BLE001 - not there yet
        return None
    return state["epoch"], (state["progress"] or {}).get("step", 0)


def assert_same_run(resumed, reference, resumed_epoch):
    """Rows equal, except the HAM diagnostics of the epoch resumed in its middle (see cli_runs.HAM_DIAGNOSTICS)."""
    got, want = rows(resumed), rows(reference)
    assert len(got) == len(want)
    for epoch, (a, b) in enumerate(zip(got, want), start=1):
        ignore = HAM_DIAGNOSTICS if epoch == resumed_epoch else set()
        assert {k: v for k, v in a.items() if k not in ignore} == {k: v for k, v in b.items() if k not in ignore}, \
            epoch


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    result = ham_bench(*ARGS, f"hydra.run.dir={run_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


def interrupt(run_dir, signum, args=ARGS):
    """Start the run, send ``signum`` once its first mid-epoch checkpoint exists; the finished process."""
    process = start(*args, f"hydra.run.dir={run_dir}")
    try:
        wait_for(lambda: checkpoint_step(run_dir) is not None, what="the first mid-epoch checkpoint")
        process.send_signal(signum)
        process.wait(timeout=120)
    finally:
        process.kill()
    return process


def test_sigterm_mid_epoch_then_the_same_command_gives_the_uninterrupted_run(tmp_path, reference):
    run_dir = tmp_path / "run"
    process = interrupt(run_dir, signal.SIGTERM)
    stderr = process.stderr.read()
    assert process.returncode == 143 and "Traceback" not in stderr, stderr[-3000:]
    epoch, step = checkpoint_step(run_dir)
    assert epoch == 0 and 5 < step < STEPS  # the step the signal was noticed at, in the middle of epoch 1
    record = summary(run_dir)
    assert record["status"] == "interrupted" and record["signal"] == "SIGTERM"
    assert last_line(stderr) == (f"interrupted: stopped by SIGTERM at epoch 1, step {step} of {STEPS}, after "
                                 f"writing a checkpoint of that step; the same command (or resume={run_dir}) "
                                 f"continues it")
    again = ham_bench(*ARGS, f"hydra.run.dir={run_dir}")
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resumed from {run_dir} at epoch 1, step {step} of {STEPS}" in again.stdout
    assert summary(run_dir)["status"] == "completed"
    assert_same_run(run_dir, reference, resumed_epoch=1)


@pytest.mark.parametrize("signum", [signal.SIGUSR2, signal.SIGHUP, signal.SIGINT], ids=["USR2", "HUP", "INT"])
def test_other_stop_signals_also_checkpoint_and_end_as_interrupted(tmp_path, signum):
    run_dir = tmp_path / "run"
    process = interrupt(run_dir, signum)
    assert process.returncode == 128 + signum, process.stderr.read()[-3000:]
    assert summary(run_dir)["status"] == "interrupted" and summary(run_dir)["signal"] == signal.Signals(signum).name
    assert checkpoint_step(run_dir)[1] > 5


def test_kill_9_mid_epoch_loses_at_most_the_checkpoint_interval(tmp_path, reference):
    run_dir = tmp_path / "run"
    process = start(*ARGS, f"hydra.run.dir={run_dir}")
    try:
        wait_for(lambda: (checkpoint_step(run_dir) or (0, 0))[1] >= 20, what="a checkpoint at step 20")
        time.sleep(0.15)
        process.send_signal(signal.SIGKILL)
        killed_at = time.time()
        process.wait(timeout=60)
    finally:
        process.kill()
    epoch, step = checkpoint_step(run_dir)
    lost = killed_at - (run_dir / "checkpoint.pt").stat().st_mtime
    seconds_per_step = rows(reference, drop=())[0]["epoch_seconds"] / STEPS
    assert step % 5 == 0 and not (run_dir / "summary.json").exists()
    assert lost < 5 * seconds_per_step * 4 + 1.0, (lost, seconds_per_step)  # 5 steps, with room for a busy machine
    again = ham_bench(*ARGS, f"hydra.run.dir={run_dir}")
    assert again.returncode == 0, again.stderr[-3000:]
    assert_same_run(run_dir, reference, resumed_epoch=epoch + 1)


# ---- data parallel --------------------------------------------------------------------------------
DDP = ["dataset.subset=3000", "batch_size=32", "epochs=2", "progress=false", "ham.implementation=foreach",
       "log_every=2", "checkpoint_every_steps=5", "eval_batch_size=100"]


def torchrun(run_dir):
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port", str(free_port()),
            "-m", "ham_bench", *DDP, f"hydra.run.dir={run_dir}"]


def test_sigterm_under_ddp_then_the_same_command_gives_the_uninterrupted_run(tmp_path):
    """torchrun, 2 gloo processes: SIGTERM to torchrun, which passes it to both ranks; they agree on a step."""
    reference, run_dir = tmp_path / "reference", tmp_path / "run"
    done = subprocess.run(torchrun(reference), env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    process = subprocess.Popen(torchrun(run_dir), env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: checkpoint_step(run_dir) is not None, what="the first mid-epoch checkpoint")
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=120)
    finally:
        process.kill()
    epoch, step = checkpoint_step(run_dir)
    assert epoch == 0 and 5 < step < STEPS and step % 2 == 0  # stopped where the ranks all-reduce (log_every=2)
    assert summary(run_dir)["status"] == "interrupted"
    again = subprocess.run(torchrun(run_dir), env=ENV, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert summary(run_dir)["status"] == "completed"
    assert_same_run(run_dir, reference, resumed_epoch=1)


# ---- SLURM's requeue, through submitit's local executor ----------------------------------------------
def submitit_task(folder):
    """The pid of the task process submitit's local controller started for jobs under ``folder``, if running."""
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                command = handle.read().split(b"\0")
        except OSError:
            continue
        if b"submitit.core._submit" in command and any(str(folder).encode() in part for part in command):
            return int(entry)
    return None


def test_a_requeued_submitit_job_resumes_instead_of_restarting(tmp_path, reference):
    """submitit's preemption signal (SIGUSR2, sent here to the job's task as SLURM would) makes the job write a
    checkpoint and hand over to submitit, which requeues the same job (same overrides, same run dir): the
    requeued job must continue where it stopped."""
    sweep = tmp_path / "sweep"
    process = start("-m", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=5", *ARGS,
                    f"hydra.sweep.dir={sweep}")
    try:
        job = None
        wait_for(lambda: any(p.is_dir() and not p.name.startswith(".") for p in sweep.glob("*")), what="the job dir")
        (job,) = [p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith(".")]
        wait_for(lambda: checkpoint_step(job) is not None, what="the first mid-epoch checkpoint")
        os.kill(submitit_task(sweep), signal.SIGUSR2)
        stdout, stderr = process.communicate(timeout=600)
    finally:
        process.kill()
    assert process.returncode == 0, stderr[-3000:]
    log = (job / "cli.log").read_text()
    assert log.count("stopped by SIGUSR2") == 1 and log.count(f"resumed from {job} at epoch 1, step ") == 1, log
    assert log.count("epoch 1/2 ") == 1  # never started over
    assert summary(job)["status"] == "completed"
    assert_same_run(job, reference, resumed_epoch=1)


def test_a_resumed_epoch_skips_its_done_batches_without_loading_them():
    """The batches after step k are those of the uninterrupted epoch, and the first k are never read."""
    import torch

    from ham_bench.data.images import InMemoryImageDataset, build_loader

    class Counting(InMemoryImageDataset):
        fetched = 0

        def __getitems__(self, positions):
            Counting.fetched += len(positions)
            return super().__getitems__(positions)

    data = Counting(torch.randint(0, 255, (100, 1, 4, 4), dtype=torch.uint8), torch.arange(100), [0.5], [0.5])
    loader = build_loader(data, 10, shuffle=True, seed=7, drop_last=True)
    loader.generator.manual_seed(3)
    whole = [y.tolist() for _, y in loader]
    loader.generator.manual_seed(3)
    loader.batch_sampler.skip_next(4)
    Counting.fetched = 0
    rest = [y.tolist() for _, y in loader]
    assert rest == whole[4:] and Counting.fetched == 60
