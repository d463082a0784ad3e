"""The sign-flip study: sign flips against HAM's alpha, per method and run length (the HAM paper's Fig. 2a question).

The paper claims that HAM flips more signs than its base optimizer (more
exploration of sign patterns). The study runs each method (dense, Random PaI,
AC/DC, RigL at one sparsity) with HAM off and at several alphas, at one or more
run lengths, seeds pooled, and reports per (run length, method, alpha): total
flips over the run (mean, std, n), flips per epoch, the ratio to HAM off of the
same method and length, final test accuracy, and HAM's clamp fraction (a sign
that alpha is too large for the gradient scale). ``readings`` says, per method
and length, whether flips rise or fall with alpha (Spearman's rank correlation
over the seed means, and the sign of every step between consecutive alphas).
HAM off is alpha = 0: HAM with alpha = beta = 0 is the base step itself.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from scipy import stats

from ham_bench import atomic_io
from ham_bench.analysis.labels import METHOD_LABELS, base_order
from ham_bench.analysis.runs import Run, collect_runs


@dataclass
class Cell:
    epochs: int
    base: str
    alpha: float
    flips: list[float] = field(default_factory=list)        # total flips per run (one per seed)
    per_epoch: list[list[float]] = field(default_factory=list)
    accuracy: list[float] = field(default_factory=list)
    clamp: list[float] = field(default_factory=list)


def _alpha(run: Run) -> float:
    return 0.0 if run.ham == "off" else float(run.config["ham"]["alpha"])


def _rows(run: Run) -> list[dict]:
    return atomic_io.read_jsonl_or_exit(run.path / "metrics.jsonl")


def cells(runs: list[Run]) -> list[Cell]:
    """Completed runs pooled over seeds by (run length, method, alpha), in study order."""
    table: dict[tuple, Cell] = {}
    for run in runs:
        if run.status != "completed":
            continue
        key = (run.epochs, run.base, _alpha(run))
        cell = table.setdefault(key, Cell(*key))
        rows = _rows(run)
        cell.flips.append(float(run.summary["sign_flips_total"]))
        cell.per_epoch.append([float(r["sign_flips"]) for r in rows])
        cell.accuracy.append(float(run.summary["final_test_acc"]))
        cell.clamp.append(max((float(r.get("ham_clamp_fraction", 0.0)) for r in rows), default=0.0))
    return [table[key] for key in sorted(table, key=lambda k: (k[0], base_order(k[1]), k[2]))]


def _mean_std(values: list[float]) -> tuple[float, float | None]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def _off(cell: Cell, by_key: dict) -> Cell | None:
    return by_key.get((cell.epochs, cell.base, 0.0))


def study_rows(found: list[Cell]) -> tuple[list[str], list[list]]:
    by_key = {(c.epochs, c.base, c.alpha): c for c in found}
    header = ["epochs", "method", "alpha", "seeds", "flips_mean", "flips_std", "flips_per_epoch_mean",
              "ratio_to_ham_off", "test_acc_mean", "test_acc_std", "clamp_fraction_max"]
    rows = []
    for cell in found:
        mean, std = _mean_std(cell.flips)
        off = _off(cell, by_key)
        ratio = mean / statistics.fmean(off.flips) if off is not None and statistics.fmean(off.flips) else None
        acc, acc_std = _mean_std(cell.accuracy)
        per_epoch = statistics.fmean(statistics.fmean(series) for series in cell.per_epoch)
        rows.append([cell.epochs, METHOD_LABELS.get(cell.base, cell.base), cell.alpha, len(cell.flips), mean, std,
                     per_epoch, ratio, acc, acc_std, max(cell.clamp)])
    return header, rows


def readings(found: list[Cell]) -> dict:
    """Per (run length, method): Spearman's rho of flips vs alpha over seed means, and each step's direction."""
    series: dict[tuple, list[tuple[float, float]]] = defaultdict(list)
    for cell in found:
        series[(cell.epochs, cell.base)].append((cell.alpha, statistics.fmean(cell.flips)))
    out = {}
    for (epochs, base), points in series.items():
        points.sort()
        alphas, means = zip(*points)
        rho = stats.spearmanr(alphas, means).statistic if len(points) > 2 else None
        steps = ["up" if b > a else "down" if b < a else "flat" for a, b in zip(means, means[1:])]
        out[f"{METHOD_LABELS.get(base, base)} {epochs} ep"] = {
            "alphas": list(alphas), "flips_means": [round(m, 1) for m in means],
            "spearman_rho": None if rho is None or math.isnan(rho) else round(float(rho), 3),
            "steps": steps, "off_to_largest_alpha": round(means[-1] / means[0], 3) if means[0] else None}
    return out


def _fmt(value, digits: int = 1) -> str:
    if value is None:
        return ""
    return f"{value:,.{digits}f}" if isinstance(value, float) else str(value)


def render(header: list[str], rows: list[list], found_readings: dict) -> str:
    lines = ["# Sign flips against HAM's alpha", "",
             "Total sign flips over the run (mean ± std over seeds, n), flips per epoch, the ratio to HAM off of "
             "the same method and run length, final test accuracy and HAM's largest per-epoch clamp fraction. "
             "alpha = 0 is HAM off.", "",
             "| epochs | method | alpha | n | flips | per epoch | / HAM off | test acc | clamp |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for epochs, method, alpha, n, mean, std, per_epoch, ratio, acc, acc_std, clamp in rows:
        spread = f" ± {std:,.0f}" if std is not None else ""
        acc_spread = f" ± {acc_std:.2f}" if acc_std is not None else ""
        lines.append(f"| {epochs} | {method} | {alpha:g} | {n} | {mean:,.0f}{spread} | {per_epoch:,.0f} | "
                     f"{_fmt(ratio, 3)} | {acc:.2f}{acc_spread} | {clamp:.2g} |")
    lines += ["", "Direction (Spearman's rho of flips vs alpha over the seed means; each step between alphas):", ""]
    for name, reading in found_readings.items():
        lines.append(f"- {name}: rho = {reading['spearman_rho']}, steps {', '.join(reading['steps'])}, "
                     f"largest alpha / off = {reading['off_to_largest_alpha']}")
    return "\n".join(lines) + "\n"


def figure(found: list[Cell]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lengths = sorted({c.epochs for c in found})
    fig, axes = plt.subplots(1, len(lengths), figsize=(5.5 * len(lengths), 4.2), squeeze=False)
    for ax, epochs in zip(axes[0], lengths):
        for base in sorted({c.base for c in found if c.epochs == epochs}, key=base_order):
            points = sorted((c.alpha, c) for c in found if c.epochs == epochs and c.base == base)
            x = [a for a, _ in points]
            means = [statistics.fmean(c.flips) for _, c in points]
            errors = [statistics.stdev(c.flips) if len(c.flips) > 1 else 0.0 for _, c in points]
            ax.errorbar(x, means, yerr=errors, marker="o", capsize=3, label=METHOD_LABELS.get(base, base))
        ax.set_xscale("symlog", linthresh=10)
        ax.set_yscale("log")
        ax.set_xlabel("HAM alpha (0 = HAM off)")
        ax.set_ylabel("sign flips over the run")
        ax.set_title(f"{epochs} epochs")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def sign_flip_study(paths: list[Path], out: Path) -> dict:
    """Read the study's runs, write tables.md, study.csv, readings.json and sign_flips_vs_alpha.png to ``out``."""
    found = cells(collect_runs(paths))
    if not found:
        raise SystemExit(f"error: no completed runs under {', '.join(str(p) for p in paths)}")
    header, rows = study_rows(found)
    found_readings = readings(found)
    out = Path(out)
    atomic_io.write_csv(out / "study.csv", header, rows)
    atomic_io.write_text(out / "tables.md", render(header, rows, found_readings))
    atomic_io.write_json(out / "readings.json", found_readings)
    atomic_io.savefig(out / "sign_flips_vs_alpha.png", figure(found), dpi=120)
    return found_readings
