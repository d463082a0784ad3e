"""Failed and diverged runs are not successes: exit status 3, a true message, status failed or diverged
(issue 13, item 6). The MLP without HAM at lr 10 / 3 / 1.5 explodes in a few steps: to NaN in epoch 1, to a
finite 1e15 loss at chance accuracy in epoch 1, to NaN in epoch 2 after a finite epoch 1."""

from __future__ import annotations

import math

import torch

from cli_runs import ham_bench, last_line, summary
from ham_bench.engine.checkpoint import load_checkpoint, save_checkpoint

MLP = ["dataset.subset=1200", "progress=false", "model=mlp", "ham=off"]


def run(run_dir, *args):
    result = ham_bench(*MLP, *args, f"hydra.run.dir={run_dir}")
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    return result


def finite(state):
    return all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_a_nan_loss_before_any_checkpoint_fails_and_says_nothing_is_kept(tmp_path):
    result = run(tmp_path / "run", "epochs=1", "optimizer.lr=10")
    assert result.returncode == 3
    assert last_line(result.stderr) == ("error: non-finite training loss at epoch 1, step 9 of 9: nan; the run stops; "
                                        "no checkpoint was written before it, nothing to resume from")
    assert summary(tmp_path / "run")["status"] == "failed" and not (tmp_path / "run" / "checkpoint.pt").exists()


def test_a_nan_loss_after_a_good_epoch_names_the_checkpoint_that_is_kept(tmp_path):
    run_dir = tmp_path / "run"
    result = run(run_dir, "epochs=2", "optimizer.lr=1.5", "divergence_factor=null")
    assert result.returncode == 3
    assert last_line(result.stderr) == (f"error: non-finite training loss at epoch 2, step 9 of 9: nan; the run "
                                        f"stops; its last good checkpoint (the end of epoch 1) is kept in {run_dir}")
    state = load_checkpoint(run_dir / "checkpoint.pt")
    assert state["epoch"] == 1 and finite(state)


def test_mid_epoch_checkpoints_are_never_written_with_nan_weights(tmp_path):
    run_dir = tmp_path / "run"
    result = run(run_dir, "epochs=1", "optimizer.lr=10", "checkpoint_every_steps=1", "batch_size=32", "log_every=100")
    assert result.returncode == 3
    line = last_line(result.stderr)
    assert line.startswith("error: non-finite ") and summary(run_dir)["status"] == "failed"
    if "no checkpoint was written" in line:
        assert not (run_dir / "checkpoint.pt").exists()
    else:  # the message names the step of the checkpoint that is kept, and it is a good one
        state = load_checkpoint(run_dir / "checkpoint.pt")
        assert f"(epoch 1, step {state['progress']['step']} of 37) is kept" in line and finite(state)


def test_an_exploding_loss_at_chance_accuracy_is_diverged(tmp_path):
    run_dir = tmp_path / "run"
    result = run(run_dir, "epochs=1", "optimizer.lr=3")
    assert result.returncode == 3
    line = last_line(result.stderr)
    assert line.startswith("error: training diverged at epoch 1: training loss ")
    assert "> 10 x ln 10 = 2.3 (divergence_factor=10); the run stops; no checkpoint was written" in line
    record = summary(run_dir)
    assert record["status"] == "diverged" and record["final_test_acc"] <= 20


def test_a_nan_test_loss_fails_the_run(tmp_path):
    """Training stays finite (BatchNorm normalizes with batch statistics) while evaluation reads NaN running means."""
    run_dir = tmp_path / "run"
    args = ["dataset.subset=600", "epochs=2", "progress=false", "ham.implementation=foreach"]
    assert ham_bench(*args, "stop_after_epochs=1", f"hydra.run.dir={run_dir}").returncode == 0
    state = load_checkpoint(run_dir / "checkpoint.pt")
    key = next(k for k in state["model"] if k.endswith("running_mean"))
    state["model"][key] = torch.full_like(state["model"][key], math.nan)
    save_checkpoint(run_dir / "checkpoint.pt", state)
    result = ham_bench(f"resume={run_dir}")
    assert result.returncode == 3, result.stderr[-3000:]
    assert last_line(result.stderr).startswith("error: non-finite test loss at epoch 2: nan; the run stops")
    assert summary(run_dir)["status"] == "failed"
