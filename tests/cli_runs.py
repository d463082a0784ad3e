"""Running ``ham-bench`` for tests: as a real process, or many command lines in one process.

``ham_bench(*args)`` runs ``python -m ham_bench ARGS`` from this checkout and waits;
``start(*args)`` starts it and returns the Popen (for signals). ``run_in_one_process``
runs many command lines through the same entry point, ``ham_bench.cli.main``, one after
the other in ONE Python process (``tests/cli_batch.py``), each in its own working dir,
and reports each one's exit status and stderr: the CLI path is the real one, only the
interpreter start-up is shared.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "PYTHONPATH": str(REPO),
       "OMP_NUM_THREADS": "1"}
TIMING_KEYS = {"epoch_seconds", "samples_per_second", "compile_seconds"}
SHORT = ["dataset.subset=600", "epochs=2", "progress=false", "ham.implementation=foreach"]  # a few seconds
# HAM's diagnostics accumulate inside the optimizer and are not in its checkpoint state (ham_bench.metrics.ham
# and ham_bench.optim.ham, not this change's files): the row of an epoch resumed in its middle covers only the
# steps after the resume for these keys.
HAM_DIAGNOSTICS = {"ham_mean_abs_exponent", "ham_clamp_fraction", "ham_max_abs_exponent", "ham_steps"}


def ham_bench(*args: str, cwd=None, timeout: int = 600, env: dict | None = None,
              preexec_fn=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ham_bench", *args], cwd=cwd or REPO, env={**ENV, **(env or {})},
                          capture_output=True, text=True, timeout=timeout, preexec_fn=preexec_fn)


def start(*args: str, cwd=None, module: tuple[str, ...] = ("-m", "ham_bench")) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, *module, *args], cwd=cwd or REPO, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_for(condition, timeout: float = 120.0, what: str = "a condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def rows(run_dir: Path, drop=TIMING_KEYS) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k not in drop}
            for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def summary(run_dir: Path) -> dict:
    return json.loads((Path(run_dir) / "summary.json").read_text())


def last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every path under ``folder`` with its content (None for dirs): to compare before and after."""
    folder = Path(folder)
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None)
            for p in sorted(folder.rglob("*"))}


def run_in_one_process(cases: list[dict], timeout: int = 600) -> list[dict]:
    """Run ``{"args": [...], "cwd": dir}`` command lines in one process; each result adds code/stderr."""
    result = subprocess.run([sys.executable, str(REPO / "tests" / "cli_batch.py")], input=json.dumps(cases),
                            cwd=REPO, env=ENV, capture_output=True, text=True, timeout=timeout)
    lines = [line for line in result.stdout.splitlines() if line.startswith("{\"case\"")]
    assert len(lines) == len(cases), result.stderr[-3000:]
    return [json.loads(line) for line in lines]


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory):
    """A real run (``SHORT``) stopped after its first epoch: a checkpoint to continue from."""
    run_dir = tmp_path_factory.mktemp("stopped") / "run"
    result = ham_bench(*SHORT, "stop_after_epochs=1", f"hydra.run.dir={run_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


@pytest.fixture
def run_copy(stopped_run, tmp_path):
    """A copy of ``stopped_run`` for one test to change."""
    shutil.copytree(stopped_run, tmp_path / "run")
    return tmp_path / "run"
