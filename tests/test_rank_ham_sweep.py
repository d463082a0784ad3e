"""scripts/rank_ham_sweep.py: the HAM alpha/beta choice on a synthetic validation sweep made of a real run."""

from __future__ import annotations

import pytest
from test_make_tables import load_script, make_variant, real_run_dir

rank_ham_sweep = load_script("rank_ham_sweep")
VAL = {"eval_split": "val"}


def _make(source, root, name, overrides, seed, acc, status="completed", split=VAL):
    return make_variant(source, root / name, [*overrides, "dataset.eval_split=val"], seed, acc, status=status,
                        extra_summary=split)


@pytest.fixture(scope="module")
def val_sweep(tmp_path_factory):
    source = real_run_dir(tmp_path_factory)
    root = tmp_path_factory.mktemp("ham_sweep")
    grid = {  # (alpha, beta) -> accuracy per (setting, seed); (50, 0) has a diverged run despite its best mean
        (5, 0.0): {("dense", 0): 90.0, ("dense", 1): 90.4, ("random", 0): 85.0, ("random", 1): 85.2},
        (20, 1e-3): {("dense", 0): 90.6, ("dense", 1): 90.8, ("random", 0): 85.6, ("random", 1): 85.4},
        (50, 0.0): {("dense", 0): 95.0, ("dense", 1): 95.0, ("random", 0): 95.0, ("random", 1): 10.0},
    }
    index = 0
    for (alpha, beta), cells in grid.items():
        for (setting, seed), acc in cells.items():
            status = "failed" if acc == 10.0 else "completed"
            _make(source, root, f"{index}", [f"sparsifier={setting}", "ham=hyp_star", f"ham.alpha={alpha}",
                                             f"ham.beta={beta}"], seed, acc, status=status)
            index += 1
    for setting, seed, acc in [("dense", 0, 90.1), ("dense", 1, 89.9), ("random", 0, 84.0), ("random", 1, 84.4)]:
        _make(source, root, f"{index}", [f"sparsifier={setting}", "ham=off"], seed, acc)
        index += 1
    return root


def test_ranking_follows_the_rule_and_names_the_choice(val_sweep, tmp_path):
    assert rank_ham_sweep.main([str(val_sweep), "--out", str(tmp_path)]) == 0
    entries, off = rank_ham_sweep.rank(rank_ham_sweep.collect_runs([val_sweep]))
    assert [(e["alpha"], e["beta"]) for e in entries] == [(20.0, 1e-3), (5.0, 0.0), (50.0, 0.0)]
    assert entries[0]["score"] == pytest.approx(88.1) and entries[0]["dense"] == pytest.approx(90.7)
    assert entries[1]["random"] == pytest.approx(85.1)
    assert entries[2]["score"] is None and entries[2]["not_completed"] == 1  # diverged: out, listed last
    assert off == pytest.approx(87.1)
    ranking = (tmp_path / "ranking.md").read_text()
    assert "Chosen: alpha = 20, beta = 0.001." in ranking
    assert "| — | 50 | 0 | — |" in ranking
    assert (tmp_path / "tables.md").exists() and (tmp_path / "runs.csv").exists()


def test_a_run_on_the_test_split_is_refused(val_sweep, tmp_path_factory, tmp_path):
    source = real_run_dir(tmp_path_factory)
    mixed = tmp_path / "mixed"
    make_variant(source, mixed / "test_run", ["sparsifier=dense", "ham=hyp_star"], 0, 91.0,
                 extra_summary={"eval_split": "test"})
    with pytest.raises(SystemExit, match="test split"):
        rank_ham_sweep.main([str(mixed), "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()  # nothing written
