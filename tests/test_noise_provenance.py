"""Logs without noise, throughput without compilation, and where a result came from (issue 14, item 10):
progress as plain lines when output is not a terminal, no "No CUDA runtime" line on CPU, compile time reported
apart from epoch 1's samples/s, a resumed run's seconds summed over its segments, and the provenance facts.
Real ``ham-bench`` processes (their output is a pipe, as in a log file or a joblib sweep)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cli_runs import ENV, ham_bench, rows, summary

FAST = ["progress=false", "ham.implementation=foreach"]


def test_progress_without_a_terminal_is_whole_lines_not_carriage_returns(tmp_path):
    result = ham_bench("dataset.subset=3000", "epochs=1", "progress=true", "log_every=2",
                       "ham.implementation=foreach", f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    assert "\r" not in output
    lines = [line for line in output.splitlines() if "  step " in line]
    assert 5 <= len(lines) <= 10, lines  # about 10 per epoch, at log_every reads, never the last step
    for line in lines:
        assert re.search(r"\[INFO\] - epoch 1/1  step \d+/23  train loss \d+\.\d{4} acc \d+\.\d\d  \d+ samples/s$",
                         line), line


def _import_cpp_extension(cuda_home: Path, first: str) -> str:
    code = f"import logging; logging.basicConfig(); {first}; import torch.utils.cpp_extension"
    result = subprocess.run([sys.executable, "-c", code], env={**ENV, "CUDA_HOME": str(cuda_home)},
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="the message is only logged without a CUDA runtime")
def test_the_cuda_home_warning_is_silenced_on_cpu(tmp_path):
    assert "No CUDA runtime is found" in _import_cpp_extension(tmp_path, "pass")  # what torch alone prints
    assert "No CUDA runtime is found" not in _import_cpp_extension(tmp_path, "import ham_bench")


def test_compile_time_is_reported_apart_from_epoch_1s_throughput(tmp_path):
    run_dir = tmp_path / "run"
    result = ham_bench("dataset.subset=600", "epochs=2", "progress=false", "ham.implementation=compiled",
                       f"hydra.run.dir={run_dir}", timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "No CUDA runtime is found" not in result.stdout + result.stderr
    first, second = rows(run_dir, drop=())
    assert first["compile_seconds"] > 0 and second["compile_seconds"] == 0
    seen = 600 // 128 * 128
    for row in (first, second):
        assert row["samples_per_second"] == pytest.approx(seen / (row["epoch_seconds"] - row["compile_seconds"]))


def test_a_resumed_runs_seconds_add_up_its_segments_and_provenance_is_complete(tmp_path):
    run_dir = tmp_path / "run"
    first = ham_bench("dataset.subset=600", "epochs=2", *FAST, "stop_after_epochs=1", f"hydra.run.dir={run_dir}")
    assert first.returncode == 0, first.stderr[-3000:]
    stopped = summary(run_dir)
    assert stopped["status"] == "stopped" and stopped["segment_seconds"] == [stopped["seconds"]]
    second = ham_bench(f"resume={run_dir}")
    assert second.returncode == 0, second.stderr[-3000:]
    done = summary(run_dir)
    segments = done["segment_seconds"]
    assert len(segments) == 2 and done["seconds"] == pytest.approx(sum(segments))
    assert segments[0] == pytest.approx(stopped["seconds"], abs=1.0)  # up to its last checkpoint
    assert done["seconds"] > segments[1]
    facts = done["provenance"]
    assert len(facts["git_commit"]) == 40 and isinstance(facts["git_dirty"], bool)
    assert facts["torch"] == torch.__version__ and facts["packages"]["torch"] and facts["packages"]["ham-bench"]
    assert "torch_cuda" in facts and "cudnn" in facts
    assert facts["device"] == "cpu" and facts["device_name"] == facts["cpu_model"] and facts["cpu_model"]
    assert facts["cpu_capability"] == torch.backends.cpu.get_cpu_capability() and facts["threads"] >= 1
    assert facts["command"][:3] == [Path(sys.executable).name, "-m", "ham_bench"]
    assert any(arg.startswith("resume=") and str(run_dir) in arg for arg in facts["command"][3:])
