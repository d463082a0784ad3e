"""Synthetic sweeps made of a REAL run's files, shared by the analysis tests.

One short real run (Fashion-MNIST subset, Random PaI at s=0.9, 2 epochs) provides a real run dir
(summary.json, metrics.jsonl, .hydra/). A sweep is copies of it: each copy gets the config a real
run of that row would have stored (composed with the Hydra compose API), the sparsifier name the
real instance reports, and known numbers (accuracy, per-epoch sign flips, seconds), so every
expected mean and std is known exactly and the analysis outputs do not depend on the machine.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from ham_bench.cli import CONFIG_DIR
from sparsifiers import build_sparsifier
from sparsifiers.random import RandomSparsifier

REPO = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
REAL_RUN_OVERRIDES = ["sparsifier=random", "sparsifier.sparsity=0.9", "ham=off", "epochs=2",
                      "dataset.subset=1200", "progress=false"]
BASE_FLIPS = (500, 100)                 # sign flips per epoch of a copy with flips_scale 1
BASE_DIFFERS = (0.02, 0.025)            # sign_differs_from_init per epoch

class PluginPaI(RandomSparsifier):
    """A plugin sparsifier, selected by class path over the random config (``+sparsifier._target_=...``)."""

    name = "plugin_pai"


PLUGIN = ["sparsifier=random", f"+sparsifier._target_={__name__}.PluginPaI"]
RANDOM = ["sparsifier=random"]
RANDOM_HAM = ["sparsifier=random", "ham=hyp_star"]
SIGNIN = ["sparsifier=signin", "ham=off"]
RIGL = ["sparsifier=rigl", "ham=off"]


def run_script(name: str, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """``python scripts/<name>.py ARGS`` with this checkout's package first on the path."""
    return subprocess.run([sys.executable, str(REPO / "scripts" / f"{name}.py"), *args], cwd=REPO, env=ENV,
                          capture_output=True, text=True, timeout=timeout)


def real_run_dir(tmp_path_factory) -> Path:
    """A real run dir from the ham-bench CLI, made once per test session."""
    run_dir = tmp_path_factory.getbasetemp() / "real_run"
    if not (run_dir / "summary.json").exists():
        result = subprocess.run([sys.executable, "-m", "ham_bench", *REAL_RUN_OVERRIDES, f"hydra.run.dir={run_dir}"],
                                cwd=REPO, env=ENV, capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["epochs"] == 2
    return run_dir


def make_variant(source: Path, target: Path, overrides: list[str], seed: int, acc: float | None = None,
                 status: str = "completed", flips_scale: float = 1.0, extra_summary: dict | None = None,
                 keep_summary: bool = True, seconds: float | None = None) -> Path:
    """Copy the real run to ``target`` as the run ``overrides`` + ``seed=...`` with final accuracy ``acc``."""
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("checkpoint.pt"))
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=[*overrides, f"seed={seed}", "epochs=2", "dataset.subset=1200",
                                                      "progress=false"])
    OmegaConf.save(cfg, target / ".hydra" / "config.yaml")  # what Hydra stores: the unresolved config
    resolved = OmegaConf.to_container(cfg, resolve=True)
    rows = [json.loads(line) for line in (target / "metrics.jsonl").read_text().splitlines()]
    for row, flips, differs in zip(rows, BASE_FLIPS, BASE_DIFFERS):
        row["sign_flips"] = int(flips * flips_scale)
        row["sign_differs_from_init"] = differs * flips_scale
    if acc is not None:
        rows[-1]["test_acc"] = acc
    (target / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    summary = json.loads((target / "summary.json").read_text())
    sparsifier_cfg = resolved["sparsifier"]
    summary.update({
        "status": status, "final_test_acc": acc, "best_test_acc": None if acc is None else acc + 0.5,
        "target_sparsity": float(sparsifier_cfg.get("sparsity", 0.0)),
        "final_sparsity": float(sparsifier_cfg.get("sparsity", 0.0)),
        "sign_flips_total": sum(row["sign_flips"] for row in rows),
        "seconds": 60.0 + 10 * seed if seconds is None else seconds,
        "error": None if status == "completed" else f"{status} on purpose",
        "method": {**summary["method"], "sparsifier": build_sparsifier(sparsifier_cfg).name, "seed": seed,
                   "ham": resolved["ham"].get("variant", "hyp_star") if resolved["ham"]["enabled"] else "off"},
        **(extra_summary or {}),
    })
    if keep_summary:
        (target / "summary.json").write_text(json.dumps(summary))
    else:
        (target / "summary.json").unlink()
    return target


def tables_sweep(source: Path, root: Path) -> tuple[Path, Path]:
    """Two sweep dirs, as two multirun commands would leave them."""
    first, second = root / "first", root / "second"
    runs = [
        # Random, s=0.9, 3 seeds: mean 82, std 2
        (first, "0_random", RANDOM + ["ham=off", "sparsifier.sparsity=0.9"], 0, 80.0, {}),
        (first, "1_random", RANDOM + ["ham=off", "sparsifier.sparsity=0.9"], 1, 82.0, {}),
        (first, "2_random", RANDOM + ["ham=off", "sparsifier.sparsity=0.9"], 2, 84.0, {}),
        # Random+HAM, s=0.9: seeds 0, 1 complete (85, 86); seed 2 FAILED (diverged)
        (first, "3_random_ham", RANDOM_HAM + ["sparsifier.sparsity=0.9"], 0, 85.0, {"flips_scale": 3.0}),
        (first, "4_random_ham", RANDOM_HAM + ["sparsifier.sparsity=0.9"], 1, 86.0, {"flips_scale": 3.0}),
        (first, "5_random_ham", RANDOM_HAM + ["sparsifier.sparsity=0.9"], 2, 10.0, {"status": "failed"}),
        # Random, s=0.8, one seed; its seed 1 was killed (no summary.json)
        (first, "6_random", RANDOM + ["ham=off", "sparsifier.sparsity=0.8"], 0, 87.5, {}),
        (first, "7_random", RANDOM + ["ham=off", "sparsifier.sparsity=0.8"], 1, None, {"keep_summary": False}),
        # second sweep dir: Random+Sign-In at s=0.9 (3 seeds) and a stopped RigL run
        (second, "0_signin", SIGNIN + ["sparsifier.sparsity=0.9"], 0, 83.0, {"flips_scale": 0.5}),
        (second, "1_signin", SIGNIN + ["sparsifier.sparsity=0.9"], 1, 83.5, {"flips_scale": 0.5}),
        (second, "2_signin", SIGNIN + ["sparsifier.sparsity=0.9"], 2, 84.5, {"flips_scale": 0.5}),
        (second, "3_rigl", RIGL + ["sparsifier.sparsity=0.9"], 0, 81.0, {"status": "stopped"}),
        # dense rows: baseline (2 seeds) and HAM with SAM (1 seed)
        (second, "4_dense", ["sparsifier=dense", "ham=off"], 0, 90.0, {}),
        (second, "5_dense", ["sparsifier=dense", "ham=off"], 1, 91.0, {}),
        (second, "6_dense_sam_ham", ["sparsifier=dense", "ham=hyp_star", "optimizer=sam"], 0, 91.5, {}),
    ]
    for parent, name, overrides, seed, acc, options in runs:
        options = dict(options)
        flops = {"train_flops_fraction": 0.3 + seed / 10, "inference_flops_fraction": 0.1}
        make_variant(source, parent / name, overrides, seed, acc, status=options.pop("status", "completed"),
                     flips_scale=options.pop("flips_scale", 1.0), keep_summary=options.pop("keep_summary", True),
                     extra_summary=flops if "random" in name and "ham" not in name else None)
    return first, second


PLOT_FLIPS = {"random": 1.0, "signin": 0.5, "ham": 3.0}


def plot_sweep(source: Path, root: Path) -> Path:
    """Random, +Sign-In, +HAM at three sparsities (2 seeds), dense, a SAM row and a failed run."""
    variants = {"random": RANDOM + ["ham=off"], "signin": SIGNIN, "ham": RANDOM_HAM}
    for sparsity, base_acc in [(0.8, 88.0), (0.9, 86.0), (0.95, 83.0)]:
        for name, overrides in variants.items():
            for seed in (0, 1):
                acc = base_acc + (1.5 if name == "ham" else 0.0) + seed
                make_variant(source, root / f"{name}_{sparsity}_{seed}", overrides + [f"sparsifier.sparsity={sparsity}"],
                             seed, acc, flips_scale=PLOT_FLIPS[name] * (1 + seed))
    make_variant(source, root / "dense_0", ["sparsifier=dense", "ham=off"], 0, 90.0)
    make_variant(source, root / "dense_sam", ["sparsifier=dense", "ham=off", "optimizer=sam"], 0, 95.0,
                 flips_scale=50.0)  # a dense sweep's SAM row: not the sparse runs' setting
    make_variant(source, root / "ham_failed", RANDOM_HAM + ["sparsifier.sparsity=0.9"], 2, 10.0, status="failed",
                 flips_scale=100.0)
    return root


def hydra_dirname(index: int, overrides: list[str], seed: int) -> str:
    """The name Hydra's multirun gives a job dir: ``<n>_<its overrides, sorted, comma-joined>``."""
    return f"{index}_" + ",".join(sorted([*overrides, f"seed={seed}"]))


def val_sweep(source: Path, root: Path) -> Path:
    """A HAM alpha x beta validation sweep; (50, 0) has a diverged run despite its best mean."""
    grid = {
        (5, 0.0): {("dense", 0): 90.0, ("dense", 1): 90.4, ("random", 0): 85.0, ("random", 1): 85.2},
        (20, 1e-3): {("dense", 0): 90.6, ("dense", 1): 90.8, ("random", 0): 85.6, ("random", 1): 85.4},
        (50, 0.0): {("dense", 0): 95.0, ("dense", 1): 95.0, ("random", 0): 95.0, ("random", 1): 10.0},
    }
    cases = [([f"sparsifier={setting}", "ham=hyp_star", f"ham.alpha={alpha}", f"ham.beta={beta}"], seed, acc)
             for (alpha, beta), cells in grid.items() for (setting, seed), acc in cells.items()]
    cases += [([f"sparsifier={setting}", "ham=off"], seed, acc)
              for setting, seed, acc in [("dense", 0, 90.1), ("dense", 1, 89.9), ("random", 0, 84.0),
                                         ("random", 1, 84.4)]]
    for index, (overrides, seed, acc) in enumerate(cases):
        overrides = [*overrides, "dataset.eval_split=val"]
        make_variant(source, root / hydra_dirname(index, overrides, seed), overrides, seed, acc,
                     status="failed" if acc == 10.0 else "completed", extra_summary={"eval_split": "val"})
    return root
