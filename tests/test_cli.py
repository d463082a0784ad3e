"""The ``ham-bench`` app end to end: config composition, real runs, multirun, bad input, resume."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from ham_bench.cli import CONFIG_DIR
from ham_bench.validation import validate_config

REPO = Path(__file__).resolve().parent.parent
# a Fashion-MNIST subset keeps each real run to a few seconds
FAST = ["dataset.subset=3000", "epochs=1", "progress=false"]
TIMING_KEYS = {"epoch_seconds", "samples_per_second", "compile_seconds"}


def ham_bench(*args, cwd=None):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
    return subprocess.run([sys.executable, "-m", "ham_bench", *args], cwd=cwd or REPO, env=env,
                          capture_output=True, text=True, timeout=600)


def group_options():
    for group in sorted(p for p in Path(CONFIG_DIR).iterdir() if p.is_dir() and p.name != "experiment"):
        for option in sorted(group.glob("*.yaml")):
            yield f"{group.name}={option.stem}"


@pytest.mark.parametrize("override", list(group_options()))
def test_every_config_option_composes_and_validates(override):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=[override])
    validate_config(cfg)
    group, option = override.split("=")
    assert cfg[group] is not None


def test_real_run_writes_the_output_contract(tmp_path):
    run_dir = tmp_path / "run"
    result = ham_bench(*FAST, f"hydra.run.dir={run_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert (run_dir / ".hydra" / "config.yaml").exists()
    assert (run_dir / "checkpoint.pt").exists()
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1
    for key in ("train_loss", "train_acc", "test_loss", "test_acc", "test_top5", "lr", "epoch_seconds",
                "samples_per_second", "sparsity", "sparsity_per_layer", "sign_flips", "sign_flips_per_layer",
                "sign_differs_from_init", "ham_mean_abs_exponent", "ham_clamp_fraction"):
        assert key in rows[0], key
    assert rows[0]["sign_flips"] == sum(rows[0]["sign_flips_per_layer"].values()) > 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert summary["final_test_acc"] > 60.0  # chance is 10 %
    assert summary["best_test_acc"] >= summary["final_test_acc"]
    assert summary["epochs"] == 1 and summary["sign_flips_total"] == rows[0]["sign_flips"]
    assert 0.0 <= summary["final_sparsity"] < 0.01
    assert "epoch 1/1" in result.stdout + result.stderr


def test_multirun_two_by_two(tmp_path):
    sweep = tmp_path / "sweep"
    result = ham_bench("-m", "ham=off,hyp_star", "seed=0,1", "dataset.subset=600", "epochs=1", "progress=false",
                       f"hydra.sweep.dir={sweep}")
    assert result.returncode == 0, result.stderr[-3000:]
    summaries = [json.loads(p.read_text()) for p in sorted(sweep.glob("*/summary.json"))]
    assert len(summaries) == 4
    assert sorted((s["method"]["ham"], s["method"]["seed"]) for s in summaries) == [
        ("hyp_star", 0), ("hyp_star", 1), ("off", 0), ("off", 1)]
    assert all(s["status"] == "completed" for s in summaries)


@pytest.mark.parametrize("override, message", [
    ("optimizer.lr=-0.1", "error: optimizer.lr must be > 0, got -0.1"),
    ("optimizer.lr=0", "error: optimizer.lr must be > 0, got 0"),
    ("epochs=0", "error: epochs must be an integer >= 1, got 0"),
    ("batch_size=0", "error: batch_size must be an integer >= 1, got 0"),
    ("ham.alpha=-1", "error: ham.alpha must be >= 0, got -1"),
    ("ham.beta=-0.5", "error: ham.beta must be >= 0, got -0.5"),
    ("sparsifier.sparsity=1.0", "error: sparsifier.sparsity must be in [0, 1), got 1.0"),
    ("sparsifier.sparsity=-0.2", "error: sparsifier.sparsity must be in [0, 1), got -0.2"),
])
def test_bad_values_fail_with_one_line_and_leave_no_run_dir(tmp_path, override, message):
    run_dir = tmp_path / "bad"
    result = ham_bench(override, f"hydra.run.dir={run_dir}")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == message
    assert "Traceback" not in result.stderr
    assert not run_dir.exists()


def test_missing_dataset_says_where_and_how(tmp_path):
    run_dir = tmp_path / "bad"
    result = ham_bench("dataset=cifar100", "model=resnet18_cifar", f"dataset.root={tmp_path / 'nowhere'}",
                       f"hydra.run.dir={run_dir}")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and str(tmp_path / "nowhere") in lines[-1]
    assert "Traceback" not in result.stderr
    assert not run_dir.exists()


def test_resume_reproduces_the_uninterrupted_run(tmp_path):
    args = ["dataset.subset=1200", "epochs=2", "progress=false", "sparsifier=random",
            "sparsifier.sparsity=0.5"]
    full, part = tmp_path / "full", tmp_path / "part"
    assert ham_bench(*args, f"hydra.run.dir={full}").returncode == 0
    first = ham_bench(*args, "stop_after_epochs=1", f"hydra.run.dir={part}")
    assert first.returncode == 0, first.stderr[-3000:]
    assert json.loads((part / "summary.json").read_text())["status"] == "stopped"
    resumed = ham_bench(f"resume={part}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    def rows(run_dir):
        return [{k: v for k, v in json.loads(line).items() if k not in TIMING_KEYS}
                for line in (run_dir / "metrics.jsonl").read_text().splitlines()]

    assert len(rows(part)) == 2
    assert rows(part) == rows(full)
    assert json.loads((part / "summary.json").read_text())["status"] == "completed"
    assert (part / ".hydra" / "config.yaml").exists()
