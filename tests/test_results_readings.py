"""The committed results are what the analysis makes of their runs.csv, and the READMEs quote them.

Every results dir with a make_tables runs.csv is rebuilt from it (``--from-csv``) and compared file
by file with what is committed, so a table, paired table, readings.json or ranking that the code
would now write differently fails here (stale output). The figures the READMEs quote are then
checked against the committed readings.json, so a hand-typed reading cannot drift from them.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ham_bench.analysis.ranking import rank, ranking_readings, render
from ham_bench.analysis.report import make_tables
from ham_bench.analysis.runs_csv import load_runs
from sweep_fixtures import REPO

RESULTS = {"fmnist_sparse": ["imagenet_sparse"], "fmnist_sparse/acdc_erk": [], "fmnist_dense": [], "alpha_sweep": [],
           "alpha_beta_sweep": []}
GENERATED = ("tables.md", "readings.json", "runs.csv", "sparse.csv", "sparse_detail.csv", "sparse_paired.csv",
             "dense.csv", "dense_detail.csv", "dense_paired.csv", "ranking.md")


def _readings(name: str) -> dict:
    return json.loads((REPO / "results" / name / "readings.json").read_text())


def _text(name: str) -> str:
    return " ".join((REPO / "results" / name / "README.md").read_text().split())


@pytest.mark.parametrize("name", sorted(RESULTS))
def test_committed_results_are_what_their_runs_csv_gives(name, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)  # the source line of tables.md names the runs.csv as given
    source = Path("results") / name / "runs.csv"
    extra = None
    if name == "alpha_beta_sweep":
        runs, where = load_runs([], source)
        entries, off = rank(runs)
        (tmp_path / "ranking.md").write_text(render(where, entries, off))
        extra = {"ranking": ranking_readings(entries, off)}
    make_tables([], tmp_path, paper=RESULTS[name], from_csv=source, extra_readings=extra)
    committed = REPO / "results" / name
    made = sorted(p.name for p in tmp_path.iterdir())
    assert made == sorted(n for n in GENERATED if (committed / n).exists())
    for file in made:
        assert (tmp_path / file).read_text() == (committed / file).read_text(), f"results/{name}/{file} is stale"


def _range(spread: dict, digits: int = 1, unit: str = "") -> str:
    return f"{spread['min']:.{digits}f}-{spread['max']:.{digits}f}{unit}"


def test_the_readmes_quote_the_generated_figures():
    sparse = _readings("fmnist_sparse")["tables"]["sparse"]
    text = _text("fmnist_sparse")
    assert f"{_range(sparse['seconds_per_run'], unit=' s per run')}, median " \
           f"{sparse['seconds_per_run']['median']:.1f} s" in text
    summary = sparse["paired_summary"]
    change = summary["sign_flips_change_percent"]
    assert f"−{-change['min']:.1f} % to +{change['max']:.1f} %" in text
    assert f"holds in {summary['gain_at_least_zero']} of {summary['cells']} cells" in text
    assert summary["significant_after_holm"] == 0 and \
        f"none of the {summary['cells']} cells survives Holm's correction" in text
    gain = summary["gain"]
    assert f"median gain is +{gain['median']:.2f} points (−{-gain['min']:.2f} to +{gain['max']:.2f}" in text
    assert f"median of {sparse['seed_std']['median']:.2f} points" in text
    assert f"exceeds 2.5 pooled stds in {['', 'one', 'two', 'three', 'four', 'five', 'six'][len(summary['effect_size_above_2.5'])]} cells" in text
    p_min = min(p["p_holm"] for p in sparse["paired"])
    assert f"the smallest corrected p is {p_min:.2f}" in text
    nm = next(p for p in sparse["paired"] if p["row"].startswith("N:M"))
    assert f"N:M 2:4: +{nm['gain']:.2f} (p {nm['p']:.2f})" in text
    cells = {(p["row"].replace("+HAM", ""), p["column"]): p["gain"] for p in sparse["paired"]}
    for method in ("GMP", "IMP", "LRR", "AC/DC", "SNIP", "SynFlow", "Random", "SET", "spred"):
        gains = [cells[(method, f"s={s}")] for s in ("0.8", "0.9", "0.95")]
        assert min(gains) > 0 and f"{method} +{min(gains):.2f} to +{max(gains):.2f}" in text, method
    random = next(p for p in sparse["paired"] if p["row"] == "Random+HAM" and p["column"] == "s=0.9")
    assert f"+HAM flips {-random['sign_flips_change_percent']:.1f} % fewer signs than Random at s=0.9" in text

    dense = _readings("fmnist_dense")["tables"]["dense"]
    text = _text("fmnist_dense")
    assert f"{_range(dense['seconds_per_run'], unit=' s per run')}, median {dense['seconds_per_run']['median']:.1f}" \
        in text
    sgd = {p["column"]: p for p in dense["paired"]}
    assert f"paired t-test p = {sgd['6 ep']['p']:.3f}, {sgd['6 ep']['p_holm']:.3f} corrected" in text
    for column in ("3 ep", "6 ep"):
        assert f"+{sgd[column]['sign_flips_change_percent']:.1f} %" in text

    numbers = _readings("alpha_beta_sweep")
    text = _text("alpha_beta_sweep")
    stds = [numbers["tables"][t]["seed_std"] for t in ("dense", "sparse")]
    assert f"{min(s['min'] for s in stds):.2f}-{max(s['max'] for s in stds):.2f} points" in text
    ranking = numbers["ranking"]
    assert (ranking["ham_off_rank"], ranking["of"]) == (3, 13) and "ranks 3rd of the 13" in text
    assert f"+{ranking['margin_over_runner_up']:.2f} over the runner-up" in text
    seconds = [numbers["tables"][t]["seconds_per_run"] for t in ("dense", "sparse")]
    assert f"{min(s['min'] for s in seconds):.1f}-{max(s['max'] for s in seconds):.1f} s per run" in text

    flow = _readings("implicit_bias")["dist_to_own_flow_limit"]
    assert f"at most {flow['max_of_seed_means']['value']:.3f} as a mean over seeds and " \
           f"{flow['max_single_run']['value']:.3f} in a single run" in _text("implicit_bias")
