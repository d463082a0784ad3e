"""Checkpoints and run files that cannot be trusted or used: refused in one line, nothing runs, nothing is
half-written (issue 13, items 2 and 8)."""

from __future__ import annotations

import errno
import os
import resource
import signal
import subprocess

import pytest
import torch

from cli_runs import SHORT as ARGS, ham_bench, last_line, run_copy, snapshot, stopped_run, summary  # noqa: F401
from ham_bench.engine.checkpoint import FORMAT, load_checkpoint, save_checkpoint

class WritesMarker:
    """Unpickling this runs ``touch <marker>``: what a crafted checkpoint does under torch.load(weights_only=False)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def killed(run_dir):
    """As if the run had been killed (no summary.json): the same command then reads its checkpoint to continue."""
    (run_dir / "summary.json").unlink()


def craft(run_dir, marker):
    state = load_checkpoint(run_dir / "checkpoint.pt")
    torch.save({**state, "format": FORMAT, "payload": WritesMarker(marker)}, run_dir / "checkpoint.pt")


# ---- item 2: a crafted checkpoint runs nothing -------------------------------------------------
@pytest.mark.parametrize("command", ["resume", "same command", "export"])
def test_a_crafted_checkpoint_that_would_write_a_file_is_refused_and_runs_nothing(run_copy, tmp_path, command):
    marker = tmp_path / "MARKER"
    craft(run_copy, marker)
    killed(run_copy)
    args = {"resume": [f"resume={run_copy}"], "same command": [*ARGS, f"hydra.run.dir={run_copy}"],
            "export": ["export", str(run_copy)]}[command]
    result = ham_bench(*args)
    assert not marker.exists()
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert last_line(result.stderr) == (f"error: {run_copy / 'checkpoint.pt'}: refused, it holds objects that "
                                        f"would run code when loaded (Trying to load unsupported GLOBAL "
                                        f"posix.system whose module posix is blocked.); it was not loaded")


def test_a_checkpoint_of_another_format_is_refused(run_copy):
    state = load_checkpoint(run_copy / "checkpoint.pt")
    torch.save({**state, "format": "ham-bench-checkpoint/1"}, run_copy / "checkpoint.pt")
    result = ham_bench(f"resume={run_copy}")
    assert result.returncode == 2
    assert last_line(result.stderr) == (f"error: {run_copy / 'checkpoint.pt'}: format 'ham-bench-checkpoint/1', "
                                        f"this ham-bench reads 'ham-bench-checkpoint/2' or 'ham-bench-checkpoint/3' "
                                        f"(written by another version or program)")


# ---- item 8: broken files ------------------------------------------------------------------------
def truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def random_bytes(path):
    path.write_bytes(os.urandom(4096))


def without_optimizer(path):
    state = load_checkpoint(path)
    del state["optimizer"]
    save_checkpoint(path, state)


def garbage_metrics_line(path):
    metrics = path.parent / "metrics.jsonl"
    metrics.write_text(metrics.read_text() + "{not json\n")


@pytest.mark.parametrize("damage, message", [
    (truncate, "checkpoint.pt: not a readable checkpoint (truncated or corrupt"),
    (random_bytes, "checkpoint.pt: not a readable checkpoint (truncated or corrupt"),
    (without_optimizer, "checkpoint.pt: not a complete checkpoint, it has no optimizer"),
    (garbage_metrics_line, "metrics.jsonl: not a JSON-lines file (line 2: "),
])
def test_a_broken_run_file_is_refused_in_one_line_and_the_dir_stays_as_it_was(run_copy, damage, message):
    damage(run_copy / "checkpoint.pt")
    killed(run_copy)
    before = snapshot(run_copy)
    for args in ([f"resume={run_copy}"], [*ARGS, f"hydra.run.dir={run_copy}"]):
        result = ham_bench(*args)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
        assert last_line(result.stderr).startswith("error: ") and message in last_line(result.stderr)
        assert snapshot(run_copy) == before


def test_orphan_temporary_files_of_killed_writes_are_removed_on_resume(run_copy):
    orphans = [run_copy / ".checkpoint.pt.k1ll3d.tmp", run_copy / ".metrics.jsonl.x9.tmp"]
    for orphan in orphans:
        orphan.write_bytes(b"half a write")
    mine = run_copy / ".my-notes.tmp"  # not a file ham-bench writes: left alone
    mine.write_text("keep")
    result = ham_bench(f"resume={run_copy}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert not any(orphan.exists() for orphan in orphans) and mine.exists()


def limit_file_size():
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))


def test_a_write_that_fails_says_why_in_one_line_and_leaves_nothing_half_written(tmp_path):
    """The checkpoint (about 200 kB) cannot be written under a 100 kB file-size limit (a real EFBIG)."""
    run_dir = tmp_path / "run"
    result = ham_bench(*ARGS, f"hydra.run.dir={run_dir}", preexec_fn=limit_file_size)
    assert result.returncode == 3 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert last_line(result.stderr) == (f"error: cannot write {run_dir / 'checkpoint.pt'}: File too large (errno "
                                        f"{errno.EFBIG}); the file was not created; the run stops; no checkpoint "
                                        f"was written before it, nothing to resume from")
    assert summary(run_dir)["status"] == "failed"
    assert sorted(p.name for p in run_dir.iterdir()) == [".hydra", "cli.log", "metrics.jsonl", "summary.json"]


def test_a_full_disk_is_named_as_such(tmp_path):
    """A real ENOSPC: the run dir on a 64 kB tmpfs (needs mount rights; skipped without them)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here")
    try:
        result = ham_bench(*ARGS, f"hydra.run.dir={disk / 'run'}")
        assert result.returncode == 3 and "Traceback" not in result.stderr, result.stderr[-3000:]
        assert "No space left on device (errno 28)" in last_line(result.stderr)
        assert not [p for p in (disk / "run").iterdir() if p.name.endswith(".tmp")]
    finally:
        subprocess.run(["umount", str(disk)], check=True)
