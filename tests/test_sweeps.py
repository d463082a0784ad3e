"""Sweeps: a bad point is refused before anything launches; a job that fails later is recorded and the sweep
carries on, with the basic and the joblib launcher; make_tables lists it; job dirs stay inside the sweep dir
(issue 13, items 3 and 10)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from cli_runs import ENV, REPO, ham_bench, last_line, summary

FAST = ["dataset.subset=600", "epochs=1", "progress=false", "ham.implementation=foreach"]


def test_a_bad_point_is_refused_before_any_job_runs(tmp_path):
    sweep = tmp_path / "sweep"
    result = ham_bench("-m", "sparsifier=random", "sparsifier.sparsity=0.5,1.5,0.8", *FAST,
                       f"hydra.sweep.dir={sweep}")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert last_line(result.stderr).startswith("error: sweep job #1 (sparsifier=random sparsifier.sparsity=1.5 ")
    assert last_line(result.stderr).endswith("sparsifier.sparsity must be in [0, 1), got 1.5; nothing was launched")
    assert not sweep.exists() and "Launching" not in result.stdout + result.stderr


@pytest.mark.parametrize("launcher", [[], ["hydra/launcher=local_parallel"]], ids=["basic", "joblib"])
def test_a_job_that_fails_later_is_recorded_and_the_sweep_carries_on(tmp_path, launcher):
    sweep = tmp_path / "sweep"
    result = ham_bench("-m", *launcher, "batch_size=64,5000,128", *FAST, f"hydra.sweep.dir={sweep}")
    assert result.returncode == 3 and "Traceback" not in result.stderr, result.stderr[-3000:]
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert [summary(job)["status"] for job in jobs] == ["completed", "failed", "completed"]
    assert summary(jobs[1])["error"] == ("batch_size=5000 exceeds the training set (600 samples); "
                                         "use a smaller batch_size")
    assert f"sweep: {jobs[1].name}: failed (batch_size=5000 exceeds" in result.stderr
    assert last_line(result.stderr) == "sweep: 2 of 3 runs completed; see summary.json in the run dirs above"
    tables = subprocess.run([sys.executable, str(REPO / "scripts" / "make_tables.py"), str(sweep)], env=ENV,
                            capture_output=True, text=True, timeout=300)
    assert tables.returncode == 0, tables.stderr[-3000:]
    assert "every run completed" not in tables.stdout
    failed_row = next(line for line in tables.stdout.splitlines() if jobs[1].name in line)
    assert "failed" in failed_row and "exceeds the training set" in failed_row


def test_a_value_with_dot_dot_slash_cannot_put_a_job_outside_its_sweep_dir(tmp_path):
    sweep = tmp_path / "parent" / "sweep"
    result = ham_bench("-m", "+logger.wandb.tags=[../../../escaped]", *FAST, f"hydra.sweep.dir={sweep}")
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = [p for p in sweep.iterdir() if p.is_dir()]
    assert [job.name for job in jobs] == ["0_+logger.wandb.tags=[.._.._.._escaped],dataset.subset=600,epochs=1,"
                                          "ham.implementation=foreach,progress=False"]
    assert summary(jobs[0])["status"] == "completed"
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_dir() and p.parent == tmp_path) == ["parent"]
    assert sorted(p.name for p in (tmp_path / "parent").iterdir()) == ["sweep"]
