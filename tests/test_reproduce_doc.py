"""Every command docs/reproduce.md shows works, and its cost table is what those commands cost.

The commands are read from the page's fenced code blocks (``ham_bench.analysis.compute``):

- every ``ham-bench`` line is expanded as its Hydra sweep and every run (seeds aside, which change
  nothing but the seed) is composed with the Hydra compose API and validated like the app does;
- every ``scripts/*.py`` line is run in an empty folder: it must get past its argument parsing
  (it then stops at the missing sweep dirs or runs.csv, with status 1, not 2);
- every other script it names exists and is executable;
- the cost table's runs, epochs and GPU-hours are recomputed from the commands;
- the CPU smoke test really runs and completes.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import defaultdict
from functools import lru_cache

import pytest

from ham_bench.analysis.compute import (IMAGES_PER_SECOND, TRAIN_IMAGES, arguments, commands, compose_run, cost,
                                        gpu_hours, runs)
from sweep_fixtures import ENV, REPO

DOC = REPO / "docs" / "reproduce.md"
COMMANDS = commands(DOC.read_text())
HAM_BENCH = [c for c in COMMANDS if arguments(c)[1][0] == "ham-bench"]
SCRIPTS = [c for c in COMMANDS if arguments(c)[1][0].startswith("scripts/")]


@lru_cache(maxsize=None)
def _compose(overrides: tuple):
    return compose_run(list(overrides))


def _distinct_runs(command: str) -> dict[tuple, int]:
    """The command's runs without their seed -> how many seeds each has."""
    counts: dict[tuple, int] = defaultdict(int)
    for run in runs(command):
        counts[tuple(o for o in run if not o.startswith("seed="))] += 1
    return counts


def test_the_page_shows_the_commands_of_every_table():
    assert len(HAM_BENCH) == 13 and len(SCRIPTS) == 10
    overlays = {o.split("=")[1] for c in HAM_BENCH for o in arguments(c)[1] if o.startswith("experiment=")}
    assert overlays == {"fmnist_dense", "fmnist_sparse", "cifar100_dense", "cifar100_sparse", "imagenet_dense",
                        "imagenet_sparse"}


@pytest.mark.parametrize("command", HAM_BENCH)
def test_every_ham_bench_command_composes_and_validates(command):
    for overrides in _distinct_runs(command):
        _compose(overrides)  # raises on an unknown key or group, or a value the app refuses


def test_epochs_1_alone_is_refused_as_the_page_says():
    from ham_bench.validation import ConfigError

    with pytest.raises(ConfigError, match=re.escape("schedule.warmup_epochs must be in [0, epochs=1)")):
        compose_run(["experiment=imagenet_sparse", "epochs=1"])
    assert "`schedule.warmup_epochs must be in [0, epochs=1)`" in DOC.read_text()


@pytest.mark.parametrize("command", SCRIPTS)
def test_every_script_command_gets_past_its_arguments(command, tmp_path):
    env, words = arguments(command)
    script = REPO / words[0]
    assert script.exists() and os.access(script, os.X_OK) or script.suffix == ".py", script
    if script.suffix != ".py":
        if "--rank-only" in words:
            assert "--rank-only" in script.read_text()
        return
    result = subprocess.run([sys.executable, str(script), *words[1:]], cwd=tmp_path, env=ENV,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stderr  # argparse errors exit with 2
    assert result.stderr.startswith("error: ") and ("no such directory" in result.stderr
                                                    or "No such file or directory" in result.stderr), result.stderr
    assert not any(tmp_path.iterdir())  # nothing half-written


def _cost_table() -> dict[str, list[str]]:
    text = DOC.read_text().split("## What each table costs")[1].split("\n## ")[0]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in text.splitlines() if line.startswith("| ")]
    return {row[1].strip("`"): row[2:] for row in rows[1:]}


def test_the_cost_table_is_what_the_commands_cost():
    configs: dict[str, list] = defaultdict(list)
    for command in (c for c in HAM_BENCH if " -m " in c):  # the tables' sweeps, not the single checks
        for overrides, seeds in _distinct_runs(command).items():
            cfg = _compose(overrides)
            overlay = next(o.split("=")[1] for o in overrides if o.startswith("experiment="))
            configs[overlay] += [cfg] * seeds
    table = _cost_table()
    assert set(table) == set(configs)
    for overlay, members in configs.items():
        total = cost(members)
        runs_cell, epochs_cell, fp32_cell, bf16_cell = table[overlay]
        assert (runs_cell, epochs_cell) == (str(total["runs"]), f"{total['epochs']:,}"), overlay
        rates = IMAGES_PER_SECOND.get(members[0].model.name)
        if rates is None:  # the CPU tables: measured wall time
            assert fp32_cell.startswith("CPU: ") and bf16_cell == ""
            continue
        assert fp32_cell == f"{gpu_hours(total['images'], rates['fp32']):,.0f}", overlay
        assert bf16_cell == f"{gpu_hours(total['images'], rates['bf16']):,.0f}", overlay
    text = " ".join(DOC.read_text().split())
    for precision in ("fp32", "bf16"):
        assert f"{IMAGES_PER_SECOND['resnet18_cifar'][precision]:,.0f}" in text
    one_run = {p: gpu_hours(100 * TRAIN_IMAGES["imagenet"], r) for p, r in IMAGES_PER_SECOND["resnet50"].items()}
    assert f"One 100-epoch ImageNet run is {one_run['fp32']:.0f} GPU-hours at 938 images/s " \
           f"({one_run['bf16']:.0f} at 2470)" in text


@pytest.mark.slow
def test_the_smoke_test_runs(tmp_path):
    [smoke] = [c for c in HAM_BENCH if "dataset=fake" in c]
    _env, words = arguments(smoke)
    result = subprocess.run([sys.executable, "-m", "ham_bench", *words[1:], f"hydra.run.dir={tmp_path}"],
                            cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["epochs"] == 2
    assert summary["method"]["sparsifier"] == "rigl" and summary["method"]["ham"] == "hyp_star"
