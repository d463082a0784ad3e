"""The sign-flip study's aggregation on a synthetic sweep with known flips (copies of one real run)."""

import json

import pytest

from ham_bench.analysis.sign_flip_study import sign_flip_study
from sweep_fixtures import make_variant, real_run_dir, run_script


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    source = real_run_dir(tmp_path_factory)
    root = tmp_path_factory.mktemp("sign_flip_sweep")
    # Random PaI: flips fall with alpha (scales 1.0, 0.8, 0.5); dense: rise (1.0, 1.5)
    for index, (overrides, scale) in enumerate([
            (["sparsifier=random", "ham=off"], 1.0), (["sparsifier=random", "ham=hyp_star", "ham.alpha=20"], 0.8),
            (["sparsifier=random", "ham=hyp_star", "ham.alpha=200"], 0.5), (["sparsifier=dense", "ham=off"], 1.0),
            (["sparsifier=dense", "ham=hyp_star", "ham.alpha=20"], 1.5)]):
        for seed in (0, 1):
            make_variant(source, root / f"{index}_{seed}", overrides, seed, acc=80.0 + seed,
                         flips_scale=scale * (1 + 0.1 * seed))
    return root


def test_cells_ratios_and_directions(sweep, tmp_path):
    readings = sign_flip_study([sweep], tmp_path)
    random = readings["Random 2 ep"]
    # per run: 500 + 100 flips x scale x (1, 1.1) -> mean 600 x scale x 1.05
    assert random["alphas"] == [0.0, 20.0, 200.0]
    assert random["flips_means"] == [pytest.approx(630.0), pytest.approx(504.0, abs=0.6), pytest.approx(315.0)]
    assert random["spearman_rho"] == -1.0 and random["steps"] == ["down", "down"]
    assert random["off_to_largest_alpha"] == 0.5
    dense = readings["baseline 2 ep"]
    assert dense["steps"] == ["up"] and dense["off_to_largest_alpha"] == pytest.approx(1.5, abs=0.01)
    table = (tmp_path / "tables.md").read_text()
    assert "| 2 | Random | 200 | 2 | 315 ± 21 |" in table and "0.500" in table
    assert json.loads((tmp_path / "readings.json").read_text()) == readings
    assert (tmp_path / "sign_flips_vs_alpha.png").stat().st_size > 10_000
    assert (tmp_path / "study.csv").read_text().startswith("epochs,method,alpha,seeds,flips_mean")


def test_script_and_its_errors(sweep, tmp_path):
    result = run_script("sign_flip_study", str(sweep), "--out", str(tmp_path / "out"))
    assert result.returncode == 0 and "Random 2 ep: rho -1.0" in result.stdout, result.stderr
    result = run_script("sign_flip_study", str(tmp_path / "missing"), "--out", str(tmp_path / "x"))
    assert result.returncode == 1 and result.stderr.startswith("error: no such directory")
