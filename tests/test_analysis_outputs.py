"""The analysis outputs on the fixture sweeps equal their recorded copies in tests/analysis_golden/.

make_tables' files (tables.md and every CSV), the ranking of rank_ham_sweep and the contents of
every figure the plots draw (axes, titles, labels, every line's and band's data) were recorded
from the scripts and are compared in full, so a refactoring that changes any output fails here.
An output changed on purpose is re-recorded with ``HAM_BENCH_WRITE_GOLDEN=1`` and the diff is
reviewed in the commit. Paths of the temporary sweeps read ``<tmp>``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import matplotlib.figure
import pytest

from ham_bench.analysis.plots import make_plots
from sweep_fixtures import plot_sweep, real_run_dir, run_script, tables_sweep, val_sweep

GOLDEN = Path(__file__).with_name("analysis_golden")
WRITE = os.environ.get("HAM_BENCH_WRITE_GOLDEN") == "1"


def check(name: str, text: str) -> None:
    path = GOLDEN / name
    if WRITE:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return
    assert text.splitlines() == path.read_text().splitlines(), f"{name} differs from its recorded copy"


def _round(values) -> list:
    return [float(f"{float(v):.6g}") for v in values]


def describe(figure: matplotlib.figure.Figure) -> dict:
    """Everything a reader sees in a figure, as data: per axes its texts, scales, lines and bands."""
    suptitle = figure._suptitle.get_text() if figure._suptitle is not None else ""
    axes = []
    for ax in figure.axes:
        legend = ax.get_legend()
        axes.append({
            "title": ax.get_title(), "xlabel": ax.get_xlabel(), "ylabel": ax.get_ylabel(),
            "xscale": ax.get_xscale(), "yscale": ax.get_yscale(),
            "legend": [t.get_text() for t in legend.get_texts()] if legend else [],
            "lines": [{"label": line.get_label(), "x": _round(line.get_xdata()), "y": _round(line.get_ydata()),
                       "style": line.get_linestyle(), "color": str(line.get_color())} for line in ax.lines],
            "bands": [[_round(vertex) for path in c.get_paths() for vertex in path.vertices] for c in ax.collections],
        })
    return {"suptitle": suptitle, "axes": axes}


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory):
    source = real_run_dir(tmp_path_factory)
    base = tmp_path_factory.getbasetemp()
    tables = tables_sweep(source, tmp_path_factory.mktemp("golden_tables", numbered=False))
    plots = plot_sweep(source, tmp_path_factory.mktemp("golden_plots", numbered=False))
    ranks = val_sweep(source, tmp_path_factory.mktemp("golden_ranks", numbered=False))
    return base, tables, plots, ranks


def test_make_tables_files_are_unchanged(sweeps, tmp_path):
    base, tables, _, _ = sweeps
    out = tmp_path / "out"
    result = run_script("make_tables", *map(str, tables), "--out", str(out), "--paper", "imagenet_sparse",
                        "--paper", "imagenet_dense")
    assert result.returncode == 0, result.stderr
    names = sorted(path.name for path in out.iterdir())
    check("make_tables/files.txt", "\n".join(names) + "\n")
    for name in names:
        check(f"make_tables/{name}", (out / name).read_text().replace(str(base), "<tmp>"))


def test_ranking_is_unchanged(sweeps, tmp_path):
    base, _, _, ranks = sweeps
    result = run_script("rank_ham_sweep", str(ranks), "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    check("rank/ranking.md", (tmp_path / "ranking.md").read_text().replace(str(base), "<tmp>"))


def test_figures_are_unchanged(sweeps, tmp_path, monkeypatch):
    _, _, plots_root, _ = sweeps
    drawn = []
    savefig = matplotlib.figure.Figure.savefig

    def spy(figure, *args, **kwargs):
        drawn.append(describe(figure))
        return savefig(figure, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", spy)
    make_plots([plots_root], tmp_path, sparsity=0.9)
    make_plots([plots_root], tmp_path / "log", sparsity=0.8, log_scale=True, metric="best_test_acc")
    lines = []
    for figure in drawn:  # one line per figure title and per axes: diffs stay readable
        lines.append(json.dumps({"suptitle": figure["suptitle"]}))
        lines += [json.dumps(ax, sort_keys=True) for ax in figure["axes"]]
    check("plots/figures.jsonl", "\n".join(lines) + "\n")
