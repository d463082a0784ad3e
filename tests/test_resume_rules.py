"""resume= continues a run with its own config: overrides that would change it are refused, the few that make
sense are allowed; resume=latest finds the newest unfinished run (issue 13, item 4)."""

from __future__ import annotations

import shutil

import pytest

from cli_runs import SHORT as ARGS, ham_bench, last_line, rows, run_copy, snapshot, stopped_run, summary  # noqa: F401


@pytest.mark.parametrize("overrides, named", [
    (["optimizer.lr=1"], "optimizer.lr=1"),
    (["optimizer.lr=-1"], "optimizer.lr=-1"),
    (["sparsifier=rigl", "seed=3", "progress=true"], "sparsifier=rigl, seed=3"),
    (["experiment=fmnist_sparse"], "experiment=fmnist_sparse"),
])
def test_overrides_that_would_change_the_run_are_refused_naming_them(run_copy, overrides, named):
    before = snapshot(run_copy)
    result = ham_bench(f"resume={run_copy}", *overrides)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert last_line(result.stderr) == (f"error: resume continues a run with its own config; these overrides would "
                                        f"change it: {named} (allowed with resume: force, epochs, stop_after_epochs, "
                                        f"progress, log_every, checkpoint_every_steps, checkpoint_every_minutes, "
                                        f"divergence_factor, ham_warn_clamp_fraction, ham.warn_exponent, ham.warn_every, "
                                        f"dataset.root, logger)")
    assert snapshot(run_copy) == before


def test_epochs_extends_the_run_with_the_schedule_replanned(run_copy):
    result = ham_bench(f"resume={run_copy}", "epochs=3", "log_every=5", "progress=false")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "epochs 2 -> 3: the LR schedule and the sparsifier's phases are re-planned for 3 epochs" in result.stdout
    done = rows(run_copy)
    assert [row["epoch"] for row in done] == [1, 2, 3]
    # cosine over 3 epochs from epoch 2 on: epoch 2 starts at lr 0.05 * (1 + cos(pi / 3)) / 2
    assert done[1]["lr"] == pytest.approx(0.05 * 0.75)
    assert summary(run_copy)["status"] == "completed" and summary(run_copy)["epochs_planned"] == 3


def test_fewer_epochs_than_done_is_refused(run_copy, tmp_path):
    longer = tmp_path / "longer"
    assert ham_bench(*ARGS, "epochs=3", "stop_after_epochs=2", f"hydra.run.dir={longer}").returncode == 0
    result = ham_bench(f"resume={longer}", "epochs=1")
    assert result.returncode == 2
    assert last_line(result.stderr) == ("error: epochs=1 with resume: the run has already trained 2 epochs "
                                        "(epochs must be >= 2)")


def test_resume_latest_continues_the_newest_unfinished_run(stopped_run, tmp_path):
    work = tmp_path / "work"
    older, newer = work / "outputs" / "a" / "older", work / "outputs" / "b" / "newer"
    shutil.copytree(stopped_run, older)
    shutil.copytree(stopped_run, newer)
    (newer / "checkpoint.pt").touch()  # newest checkpoint
    result = ham_bench("resume=latest", cwd=work)
    assert result.returncode == 0, result.stderr[-3000:]
    assert summary(newer)["status"] == "completed" and summary(older)["status"] == "stopped"
    again = ham_bench("resume=latest", cwd=work)  # newer is complete now: the older one is next
    assert again.returncode == 0 and summary(older)["status"] == "completed"
