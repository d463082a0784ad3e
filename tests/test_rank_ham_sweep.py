"""The ranking (ham_bench.analysis.ranking, scripts/rank_ham_sweep.py): the HAM alpha/beta choice on a
synthetic validation sweep made of a real run."""

from __future__ import annotations

import json

import pytest

from ham_bench.analysis.ranking import rank
from ham_bench.analysis.runs import collect_runs
from sweep_fixtures import make_variant, real_run_dir, run_script, val_sweep as build_val_sweep


@pytest.fixture(scope="module")
def val_sweep(tmp_path_factory):
    return build_val_sweep(real_run_dir(tmp_path_factory), tmp_path_factory.mktemp("ham_sweep"))


def test_ranking_follows_the_rule_and_names_the_choice(val_sweep, tmp_path):
    result = run_script("rank_ham_sweep", str(val_sweep), "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    entries, off = rank(collect_runs([val_sweep]))
    assert [(e["alpha"], e["beta"]) for e in entries] == [(20.0, 1e-3), (5.0, 0.0), (50.0, 0.0)]
    assert entries[0]["score"] == pytest.approx(88.1) and entries[0]["dense"] == pytest.approx(90.7)
    assert entries[1]["random"] == pytest.approx(85.1)
    assert entries[2]["score"] is None and entries[2]["not_completed"] == 1  # diverged: out, listed last
    assert off == pytest.approx(87.1)
    ranking = (tmp_path / "ranking.md").read_text()
    assert "Chosen: alpha = 20, beta = 0.001." in ranking
    assert "HAM off (same settings and seeds): 87.10 % mean val acc. Ranked with the pairs it would be 3 of 3." \
        in ranking
    numbers = json.loads((tmp_path / "readings.json").read_text())["ranking"]
    assert (numbers["ham_off_rank"], numbers["of"], numbers["ranked"]) == (3, 3, 2)
    assert numbers["margin_over_runner_up"] == pytest.approx(0.45) and numbers["score_range"] == pytest.approx(0.45)
    rebuilt = run_script("rank_ham_sweep", "--from-csv", str(tmp_path / "runs.csv"), "--out", str(tmp_path / "csv"))
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert (tmp_path / "csv" / "ranking.md").read_text().split("\n", 3)[3] == ranking.split("\n", 3)[3]
    assert "| — | 50 | 0 | — |" in ranking
    assert (tmp_path / "tables.md").exists() and (tmp_path / "runs.csv").exists()


def test_a_run_on_the_test_split_is_refused(val_sweep, tmp_path_factory, tmp_path):
    source = real_run_dir(tmp_path_factory)
    mixed = tmp_path / "mixed"
    make_variant(source, mixed / "test_run", ["sparsifier=dense", "ham=hyp_star"], 0, 91.0,
                 extra_summary={"eval_split": "test"})
    result = run_script("rank_ham_sweep", str(mixed), "--out", str(tmp_path / "out"))
    assert result.returncode == 1 and result.stderr.strip().splitlines() == [
        "error: the sweep has runs evaluated on the test split; the choice must use dataset.eval_split=val"]
    assert not (tmp_path / "out").exists()  # nothing written
