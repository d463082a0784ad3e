"""Plots of a ham-bench sweep: sign flips per epoch, and accuracy vs sparsity with and without HAM.

- ``sign_flips.png`` (the HAM paper's Fig. 2a analogue): for each base method
  in the sweep (Random, AC/DC, RiGL, ...; and the dense baseline when present)
  at one target sparsity, the sign flips per epoch (``sign_flips`` in
  metrics.jsonl: flips between consecutive steps, summed over the epoch)
  of the method alone, +Sign-In and +HAM (+Sign-In+HAM when run), and in a
  second row the fraction of weights whose sign differs from initialization
  (``sign_differs_from_init``: the fraction of the weights nonzero at
  initialization whose sign now differs, as the trainer logs it; the plot
  draws the logged value and computes nothing itself). Lines are the mean over
  seeds; the band spans the seeds' minimum to maximum.
- ``accuracy_vs_sparsity.png``: for each base method, final accuracy (mean ±
  std over seeds, from summary.json) against target sparsity, alone, +HAM
  and +Sign-In; the dense baseline and dense HAM as horizontal lines.
- ``ham_gain.png``: the same runs as differences, +HAM minus the method alone
  (points) against target sparsity, on an axis of their own: the effects of
  a few tenths of a point that the accuracy axis (spanning all methods) hides.
  Bars: ± the standard error of the difference of the two means,
  sqrt(s1^2 / n1 + s2^2 / n2); dense HAM - baseline as a horizontal line.

All figures use one training setting: the optimizer and run length most of the sparse runs have
(a dense sweep's SAM and 2x-length runs are left out).

Runs are found and labelled by ``ham_bench.analysis.runs``, as for the tables; only completed
runs are plotted, and the runs left out are named on stderr.
"""

from __future__ import annotations

import math
import statistics
import sys
from collections import Counter, defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from ham_bench.analysis.labels import METHOD_LABELS, base_order, variant_order  # noqa: E402
from ham_bench.analysis.paired import pairs_of  # noqa: E402
from ham_bench.analysis.runs import Run, group_runs, mean_std  # noqa: E402
from ham_bench.analysis.runs_csv import load_runs  # noqa: E402
from ham_bench.atomic_io import read_jsonl_or_exit, savefig  # noqa: E402

VARIANT_STYLES = {  # (signin, ham on) -> label suffix, colour, line style
    (False, False): ("", "tab:blue", "-"),
    (True, False): ("+Sign-In", "tab:orange", "--"),
    (False, True): ("+HAM", "tab:green", "-"),
    (True, True): ("+Sign-In+HAM", "tab:red", ":"),
}
PANEL_WIDTH, MIN_WIDTH = 4.2, 6.5  # inches


METRIC_NAMES = {"final_test_acc": "final {split} accuracy", "best_test_acc": "best-epoch {split} accuracy"}


def metric_name(metric: str, split: str) -> str:
    """``final_test_acc`` -> ``final test accuracy``: what a title shows instead of the summary key."""
    return METRIC_NAMES.get(metric, metric).format(split=split)


def _base_label(base: str) -> str:
    return "dense" if base == "dense" else METHOD_LABELS.get(base, base)


def _finish_panel(ax, title: str) -> None:
    ax.set_title(title)
    ax.set_xlabel("target sparsity")
    ax.legend(fontsize=8)


def _bases(runs: list[Run]) -> list[str]:
    present = {run.base for run in runs}
    return sorted(present, key=base_order)


def _one_setting(runs: list[Run]) -> list[Run]:
    """The runs of ONE training setting: the (optimizer, epochs) most sparse runs have.

    Dense sweeps also hold SAM and 2x-length runs; averaged into one line or one reference
    level they would mix different trainings.
    """
    settings = Counter((r.optimizer, r.epochs) for r in runs if r.base != "dense") or \
        Counter((r.optimizer, r.epochs) for r in runs)
    if not settings:
        return runs
    best = max(settings, key=lambda s: (settings[s], s[0] == "sgd", -(s[1] or 0)))
    return [r for r in runs if (r.optimizer, r.epochs) == best]


def _per_epoch(rows_per_seed: list[list[dict]], key: str) -> tuple[list[int], list[float], list[float], list[float]]:
    values: dict[int, list[float]] = defaultdict(list)
    for rows in rows_per_seed:
        for row in rows:
            if isinstance(row.get(key), (int, float)):
                values[int(row["epoch"])].append(float(row[key]))
    epochs = sorted(values)
    return (epochs, [sum(values[e]) / len(values[e]) for e in epochs], [min(values[e]) for e in epochs],
            [max(values[e]) for e in epochs])


def sign_flips_figure(runs: list[Run], sparsity: float, log_scale: bool = False):
    """Sign flips per epoch (top) and sign differs from init (bottom), one column per base method."""
    chosen = [r for r in runs if r.status == "completed" and (r.base == "dense" or abs(r.sparsity - sparsity) < 1e-9)]
    chosen = _one_setting(chosen)
    bases = _bases(chosen)
    if not bases:
        print(f"sign_flips.png: no completed runs at sparsity {sparsity:g}", file=sys.stderr)
        return None
    figure, axes = plt.subplots(2, len(bases), figsize=(max(MIN_WIDTH, PANEL_WIDTH * len(bases)), 6.4),
                                squeeze=False, sharex="col")
    for column, base in enumerate(bases):
        series: dict[tuple, list[list[dict]]] = defaultdict(list)
        for run in chosen:
            if run.base == base:
                series[(run.signin, run.ham != "off")].append(read_jsonl_or_exit(run.path / "metrics.jsonl"))
        for variant, rows_per_seed in sorted(series.items(), key=lambda item: variant_order(*item[0])):
            suffix, colour, style = VARIANT_STYLES[variant]
            name = ("baseline" if not variant[1] else "HAM") if base == "dense" else _base_label(base) + suffix
            for row_index, key in enumerate(("sign_flips", "sign_differs_from_init")):
                epochs, mean, low, high = _per_epoch(rows_per_seed, key)
                if not epochs:
                    continue
                ax = axes[row_index][column]
                ax.plot(epochs, mean, style, color=colour, marker="o", markersize=3,
                        label=f"{name} (n={len(rows_per_seed)})")
                if len(rows_per_seed) > 1:
                    ax.fill_between(epochs, low, high, color=colour, alpha=0.18, linewidth=0)
        title = "dense" if base == "dense" else f"{_base_label(base)}, s = {sparsity:g}"
        axes[0][column].set_title(title)
        axes[0][column].legend(fontsize=8)
        axes[1][column].set_xlabel("epoch")
        axes[1][column].xaxis.set_major_locator(MaxNLocator(integer=True))
        if log_scale:
            axes[0][column].set_yscale("log")
    axes[0][0].set_ylabel("sign flips per epoch")
    axes[1][0].set_ylabel("fraction of weights nonzero at init\nwhose sign differs")
    figure.suptitle("Sign flips during training\n(mean over seeds; band: min to max)", fontsize=11)
    figure.tight_layout()
    return figure


def accuracy_figure(runs: list[Run], metric: str = "final_test_acc"):
    """Accuracy against target sparsity per base method: alone, +HAM, +Sign-In; dense as lines."""
    groups = [g for g in group_runs(_one_setting(runs)) if g.used]
    sparse_bases = [b for b in _bases([g.first for g in groups]) if b != "dense"]
    if not sparse_bases:
        print("accuracy_vs_sparsity.png: no completed sparse runs", file=sys.stderr)
        return None
    dense = {g.first.ham != "off": mean_std(g.values(metric)) for g in groups if g.first.base == "dense"}
    figure, axes = plt.subplots(1, len(sparse_bases), figsize=(max(MIN_WIDTH, PANEL_WIDTH * len(sparse_bases)), 4.0),
                                squeeze=False, sharey=True)
    split = next((g.first.eval_split for g in groups), "test")
    for column, base in enumerate(sparse_bases):
        ax = axes[0][column]
        lines: dict[tuple, list[tuple[float, float, float]]] = defaultdict(list)
        for group in groups:
            run = group.first
            if run.base != base:
                continue
            mean, std = mean_std(group.values(metric))
            if mean is not None:
                lines[(run.signin, run.ham != "off")].append((run.sparsity, mean, std or 0.0))
        for variant, points in sorted(lines.items(), key=lambda item: variant_order(*item[0])):
            points.sort()
            suffix, colour, style = VARIANT_STYLES[variant]
            ax.errorbar([p[0] for p in points], [p[1] for p in points], yerr=[p[2] for p in points], fmt=style,
                        color=colour, marker="o", markersize=4, capsize=3, label=_base_label(base) + suffix)
        for ham_on, (mean, _std) in sorted(dense.items()):
            if mean is not None:
                ax.axhline(mean, color="grey", linestyle=":" if ham_on else "-", linewidth=1,
                           label="dense + HAM" if ham_on else "dense")
        _finish_panel(ax, _base_label(base))
    axes[0][0].set_ylabel(f"{split} top-1 accuracy (%)")
    figure.suptitle(f"{metric_name(metric, split).capitalize()} vs target sparsity\n(mean ± std over seeds)",
                    fontsize=11)
    figure.tight_layout()
    return figure


def _standard_error(pair) -> float:
    parts = [statistics.variance(v) / len(v) for v in (pair.on.values(pair.metric), pair.off.values(pair.metric))
             if len(v) > 1]
    return math.sqrt(sum(parts)) if len(parts) == 2 else 0.0


def ham_gain_figure(runs: list[Run], metric: str = "final_test_acc"):
    """+HAM minus the method alone against target sparsity, one panel per base method."""
    groups = [g for g in group_runs(_one_setting(runs)) if g.used]
    pairs = [p for p in pairs_of(groups, metric, lambda run: run.sparsity) if p.gain is not None]
    sparse = [p for p in pairs if p.on.first.base != "dense"]
    bases = _bases([p.on.first for p in sparse])
    if not bases:
        print("ham_gain.png: no sparse cell has both +HAM and the method alone", file=sys.stderr)
        return None
    dense = [p.gain for p in pairs if p.on.first.base == "dense"]
    figure, axes = plt.subplots(1, len(bases), figsize=(max(MIN_WIDTH, PANEL_WIDTH * len(bases)), 3.6),
                                squeeze=False, sharey=True)
    split = groups[0].first.eval_split
    for column, base in enumerate(bases):
        ax = axes[0][column]
        for signin in (False, True):
            points = sorted((p.column, p.gain, _standard_error(p)) for p in sparse
                            if p.on.first.base == base and p.on.first.signin == signin)
            if points:
                suffix, colour, style = VARIANT_STYLES[(signin, True)]
                ax.errorbar([q[0] for q in points], [q[1] for q in points], yerr=[q[2] for q in points], fmt=style,
                            color=colour, marker="o", markersize=4, capsize=3,
                            label=f"{_base_label(base)}{suffix} - {_base_label(base)}{'+Sign-In' if signin else ''}")
        ax.axhline(0.0, color="black", linewidth=0.8)
        if len(dense) == 1:
            ax.axhline(dense[0], color="grey", linestyle=":", linewidth=1, label="dense: HAM - baseline")
        _finish_panel(ax, _base_label(base))
    axes[0][0].set_ylabel(f"+HAM - method ({split} accuracy, points)")
    figure.suptitle(f"What HAM adds: {metric_name(metric, split)}, +HAM minus the method alone\n"
                    "(difference of seed means; bars: ± standard error of the difference)", fontsize=11)
    figure.tight_layout()
    return figure


def make_plots(paths: list[Path], out: Path, sparsity: float = 0.9, log_scale: bool = False,
               metric: str = "final_test_acc", from_csv: list[Path] | None = None) -> list[Path]:
    """Draw every figure first, then write the PNG files; ``from_csv``: the runs of a runs.csv
    (no per-epoch metrics there, so no sign-flip figure)."""
    runs, _source = load_runs(paths, from_csv)
    out = Path(out)
    left_out = [r for r in runs if r.status != "completed"]
    if left_out:
        print(f"left out {len(left_out)} runs that did not complete: "
              + ", ".join(f"{r.path.name} ({r.status})" for r in left_out), file=sys.stderr)
    figures = {"sign_flips.png": None if from_csv else sign_flips_figure(runs, sparsity, log_scale),
               "accuracy_vs_sparsity.png": accuracy_figure(runs, metric),
               "ham_gain.png": ham_gain_figure(runs, metric)}
    if from_csv:
        print("sign_flips.png: not drawn, runs.csv has no per-epoch sign flips (needs the run dirs)", file=sys.stderr)
    written = []
    for name, figure in figures.items():
        if figure is not None:
            savefig(out / name, figure, dpi=130)
            plt.close(figure)
            written.append(out / name)
    return written
