"""Run dirs: nothing of the user's is removed, a run's record is never overwritten, a dir in use is refused,
files are readable by whoever the umask allows (issue 13, items 1, 5 and 11)."""

from __future__ import annotations

import json
import os
import signal
import stat

from cli_runs import ham_bench, last_line, snapshot, start, summary, wait_for

FAST = ["dataset.subset=600", "epochs=1", "progress=false", "ham.implementation=foreach"]


def completed_run(run_dir):
    result = ham_bench(*FAST, f"hydra.run.dir={run_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


# ---- item 1: only what this process created is removed -----------------------------------------
def test_a_validation_error_in_a_folder_of_earlier_runs_leaves_every_file(tmp_path):
    folder = tmp_path / "project"
    completed_run(folder / "earlier_run")
    (folder / "notes.txt").write_text("mine\n")
    before = snapshot(folder)
    result = ham_bench("hydra.run.dir=.", "optimizer.lr=-1", cwd=folder)
    assert result.returncode == 2 and last_line(result.stderr) == "error: optimizer.lr must be > 0, got -1"
    assert snapshot(folder) == before


def test_an_error_after_the_data_loaded_leaves_the_folder_too(tmp_path):
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine\n")
    before = snapshot(folder)
    result = ham_bench("hydra.run.dir=.", "dataset.subset=600", "batch_size=5000", cwd=folder)
    assert result.returncode == 2 and "exceeds the training set" in last_line(result.stderr)
    assert snapshot(folder) == before


def test_the_dirs_this_process_created_are_removed_parents_included(tmp_path):
    result = ham_bench("hydra.run.dir=a/b/c", "optimizer.lr=-1", cwd=tmp_path)
    assert result.returncode == 2
    assert list(tmp_path.iterdir()) == []


# ---- item 5: a run's record is protected; a dir in use is refused ---------------------------------
def test_a_new_run_pointed_at_a_completed_run_is_refused_and_force_replaces_it(tmp_path):
    run_dir = completed_run(tmp_path / "run")
    before = snapshot(run_dir)
    result = ham_bench(*FAST, "seed=1", f"hydra.run.dir={run_dir}")
    assert result.returncode == 2
    assert last_line(result.stderr) == (f"error: {run_dir} holds a completed run; force=true replaces it, "
                                        f"resume={run_dir} epochs=N extends it")
    assert snapshot(run_dir) == before  # .hydra/ included: Hydra was stopped before it wrote anything
    forced = ham_bench(*FAST, "seed=1", "force=true", f"hydra.run.dir={run_dir}")
    assert forced.returncode == 0, forced.stderr[-3000:]
    assert summary(run_dir)["method"]["seed"] == 1 and len((run_dir / "metrics.jsonl").read_text().splitlines()) == 1


def test_a_run_dir_in_use_is_refused_until_its_run_ends(tmp_path):
    run_dir = tmp_path / "run"
    args = ["dataset.subset=6000", "epochs=30", "progress=false", "ham.implementation=foreach",
            f"hydra.run.dir={run_dir}"]
    first = start(*args)
    try:
        wait_for(lambda: (run_dir / "cli.log").exists() and "run dir" in (run_dir / "cli.log").read_text(),
                 what="the first run to start training")
        for second in (ham_bench(*args), ham_bench(f"resume={run_dir}")):
            assert second.returncode == 2, second.stderr[-2000:]
            assert last_line(second.stderr).startswith(f"error: {run_dir} is in use by process {first.pid} on ")
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=120) == 128 + signal.SIGTERM
    finally:
        first.kill()
    assert summary(run_dir)["status"] == "interrupted"
    assert not (run_dir / ".ham-bench.lock").exists()


def test_a_lock_left_by_a_killed_run_does_not_block_its_dir(tmp_path):
    run_dir = tmp_path / "run"
    args = ["dataset.subset=6000", "epochs=2", "progress=false", "ham.implementation=foreach",
            "checkpoint_every_steps=5", f"hydra.run.dir={run_dir}"]
    first = start(*args)
    try:
        wait_for(lambda: (run_dir / "checkpoint.pt").exists(), what="a mid-epoch checkpoint")
        os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=60)
    finally:
        first.kill()
    assert (run_dir / ".ham-bench.lock").exists()  # the file stays; the kernel released its lock
    again = ham_bench(*args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert summary(run_dir)["status"] == "completed"


# ---- item 11: files follow the umask --------------------------------------------------------------
def test_run_files_get_the_mode_the_umask_allows(tmp_path):
    for umask, mode in ((0o002, 0o664), (0o077, 0o600)):
        run_dir = tmp_path / f"umask{umask:o}"
        result = ham_bench(*FAST, f"hydra.run.dir={run_dir}", preexec_fn=lambda umask=umask: os.umask(umask))
        assert result.returncode == 0, result.stderr[-3000:]
        for name in ("checkpoint.pt", "metrics.jsonl", "summary.json"):
            assert stat.S_IMODE((run_dir / name).stat().st_mode) == mode, (name, oct(umask))
        assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"
