"""scripts/plot_sign_flips.py writes its PNG files from real metrics.jsonl files.

The runs are copies of one real run (see test_make_tables.py) relabelled as baseline, +Sign-In
and +HAM with known sign-flip counts, at three sparsities, plus a failed run that must be left out.
"""

import json
import subprocess
import sys

import matplotlib.image
import pytest

from ham_bench.atomic_io import read_jsonl
from test_make_tables import RANDOM, RANDOM_HAM, REPO, SIGNIN, load_script, make_variant, real_run_dir

plots = load_script("plot_sign_flips")
SCRIPT = REPO / "scripts" / "plot_sign_flips.py"
FLIPS = {"random": 1.0, "signin": 0.5, "ham": 3.0}


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    source = real_run_dir(tmp_path_factory)
    root = tmp_path_factory.mktemp("plot_sweep")
    variants = {"random": RANDOM + ["ham=off"], "signin": SIGNIN, "ham": RANDOM_HAM}
    for sparsity, base_acc in [(0.8, 88.0), (0.9, 86.0), (0.95, 83.0)]:
        for name, overrides in variants.items():
            for seed in (0, 1):
                acc = base_acc + (1.5 if name == "ham" else 0.0) + seed
                make_variant(source, root / f"{name}_{sparsity}_{seed}", overrides + [f"sparsifier.sparsity={sparsity}"],
                             seed, acc, flips_scale=FLIPS[name] * (1 + seed))
    make_variant(source, root / "dense_0", ["sparsifier=dense", "ham=off"], 0, 90.0)
    make_variant(source, root / "dense_sam", ["sparsifier=dense", "ham=off", "optimizer=sam"], 0, 95.0,
                 flips_scale=50.0)  # a dense sweep's SAM row: not the sparse runs' setting
    make_variant(source, root / "ham_failed", RANDOM_HAM + ["sparsifier.sparsity=0.9"], 2, 10.0, status="failed",
                 flips_scale=100.0)
    return root, source


def test_sign_flip_series_are_the_metrics_rows(sweep):
    root, source = sweep
    real = [json.loads(line) for line in (source / "metrics.jsonl").read_text().splitlines()]
    runs = [r for r in plots.collect_runs([root]) if r.status == "completed" and r.sparsity == 0.9 and r.ham != "off"]
    assert len(runs) == 2
    epochs, mean, low, high = plots._per_epoch([read_jsonl(r.path / "metrics.jsonl") for r in runs], "sign_flips")
    assert epochs == [1, 2]
    for index, row in enumerate(real):  # seeds scaled by 3 and 6: mean 4.5x, band 3x..6x
        assert mean[index] == pytest.approx((int(row["sign_flips"] * 3) + int(row["sign_flips"] * 6)) / 2)
        assert (low[index], high[index]) == (int(row["sign_flips"] * 3), int(row["sign_flips"] * 6))


def test_one_training_setting_per_figure(sweep):
    root, _ = sweep
    runs = [r for r in plots.collect_runs([root]) if r.status == "completed"]
    kept = plots._one_setting(runs)
    assert {(r.optimizer, r.epochs) for r in kept} == {("sgd", 2)}
    assert [r.path.name for r in runs if r not in kept] == ["dense_sam"]


def test_cli_writes_both_pngs(sweep, tmp_path):
    root, _ = sweep
    out = tmp_path / "plots"
    result = subprocess.run([sys.executable, str(SCRIPT), str(root), "--out", str(out), "--sparsity", "0.9"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "left out 1 runs" in result.stderr and "ham_failed (failed)" in result.stderr
    for name in ("sign_flips.png", "accuracy_vs_sparsity.png"):
        path = out / name
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        image = matplotlib.image.imread(path)
        assert image.shape[0] > 300 and image.shape[1] > 500
        assert image[..., :3].std() > 0.01  # not a blank canvas
        assert str(path) in result.stdout


def test_nothing_at_the_requested_sparsity_still_writes_the_accuracy_plot(sweep, tmp_path):
    root, _ = sweep
    written = plots.make_plots([root], tmp_path, sparsity=0.5, log_scale=True)
    names = sorted(p.name for p in written)
    assert "accuracy_vs_sparsity.png" in names
    assert names == ["accuracy_vs_sparsity.png", "sign_flips.png"]  # the dense run still has a panel
