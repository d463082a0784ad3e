"""readings.json: every figure a results README quotes, generated with the tables.

A reading of a results table ("seed stds 0.00-0.58", "41.6-82.3 s per run", "+HAM flips 29 % fewer
at ...") must come from the runs, not from a hand count. ``readings`` collects, per table:

- ``runs``, ``cells`` and the seeds per cell;
- ``seed_std``: min / median / max of the cells' sample stds (cells with 2 or more seeds);
- ``seconds_per_run``: min / median / max / sum over the completed runs;
- ``cells``: per row and column the seeds, mean, std, mean seconds, mean sign flips over the run
  and, where the run dirs are at hand, the mean sign flips of every epoch;
- ``paired``: per +HAM cell (``ham_bench.analysis.paired``) the gain, pooled std, effect size,
  test, p and Holm-adjusted p, the paper's gain, and the change of sign flips in percent (over the
  run, and per epoch where the run dirs are at hand), with a summary over the table;
- ``variants``: per method and column, +Sign-In - method, +HAM - method and +HAM - +Sign-In;
- ``rank``: per column, the rows ordered by mean, best first.

Numbers keep 6 significant digits.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict

from ham_bench.analysis.paired import ALPHA, Pair, ham_pairs
from ham_bench.analysis.runs import Group, Run, mean_std
from ham_bench.analysis.tables import Table, column_name, column_of
from ham_bench.atomic_io import read_jsonl_or_exit


def _r(value):
    if isinstance(value, float):
        return float(f"{value:.6g}") if math.isfinite(value) else None
    return value


def spread(values: list[float]) -> dict | None:
    """min / median / max of some values (None if there are none)."""
    if not values:
        return None
    return {"min": _r(min(values)), "median": _r(statistics.median(values)), "max": _r(max(values))}


def _per_epoch(group: Group) -> list[float] | None:
    """Mean sign flips of each epoch over the group's seeds, from metrics.jsonl (None without run dirs)."""
    by_epoch: dict[int, list[float]] = defaultdict(list)
    for run in group.used:
        for row in read_jsonl_or_exit(run.path / "metrics.jsonl") if run.path.is_dir() else []:
            if isinstance(row.get("sign_flips"), (int, float)):
                by_epoch[int(row["epoch"])].append(float(row["sign_flips"]))
    if not by_epoch or any(len(v) != len(group.used) for v in by_epoch.values()):
        return None
    return [_r(statistics.fmean(by_epoch[e])) for e in sorted(by_epoch)]


def _change(new: float | None, old: float | None) -> float | None:
    return _r(100.0 * (new / old - 1.0)) if new is not None and old else None


def _cell(table: Table, group: Group) -> dict:
    mean, std = mean_std(group.values(table.metric))
    out = {"row": group.label, "column": column_name(table, column_of(table, group.first)),
           "seeds": [r.seed for r in group.used], "mean": _r(mean), "std": _r(std),
           "seconds_mean": _r(mean_std(group.values("seconds"))[0]),
           "sign_flips_mean": _r(mean_std(group.values("sign_flips_total"))[0])}
    per_epoch = _per_epoch(group)
    if per_epoch is not None:
        out["sign_flips_per_epoch"] = per_epoch
    return out


def _pair(table: Table, pair: Pair) -> dict:
    flips = [mean_std(g.values("sign_flips_total"))[0] for g in (pair.on, pair.off)]
    out = {"row": pair.on.label, "vs": pair.off.label, "column": column_name(table, pair.column),
           "gain": _r(pair.gain), "pooled_std": _r(pair.pooled_std), "effect_size": _r(pair.effect),
           "test": pair.test, "p": _r(pair.p), "p_holm": _r(pair.p_holm),
           "significant": None if pair.p_holm is None else pair.p_holm < ALPHA, "paper_gain": _r(pair.paper_gain),
           "sign_flips_change_percent": _change(*flips)}
    epochs = [_per_epoch(g) for g in (pair.on, pair.off)]
    if None not in epochs and len(epochs[0]) == len(epochs[1]):
        out["sign_flips_change_percent_per_epoch"] = [_change(a, b) for a, b in zip(*epochs)]
    return out


def _summary(pairs: list[dict]) -> dict:
    gains = [p["gain"] for p in pairs if p["gain"] is not None]
    changes = [p["sign_flips_change_percent"] for p in pairs if p["sign_flips_change_percent"] is not None]
    tested = [p for p in pairs if p["p"] is not None]
    return {"cells": len(pairs), "gain_at_least_zero": sum(g >= 0 for g in gains), "gain": spread(gains),
            "effect_size_above_2.5": [f"{p['row']} {p['column']}" for p in pairs if (p["effect_size"] or 0) > 2.5],
            "tested": len(tested), "p_min": _r(min((p["p"] for p in tested), default=None)),
            "significant_after_holm": sum(bool(p["significant"]) for p in tested),
            "sign_flips_change_percent": spread(changes)}


def variant_differences(table: Table) -> list[dict]:
    """Per method and column, the differences of the cell means of its variants (+Sign-In, +HAM) in points."""
    out = []
    for label in table.rows:
        if "+" in label or "[" in label or table.families.get(label) == "Dense":
            continue
        for column in table.columns:
            means = {suffix: mean_std(g.values(table.metric))[0] if (g := table.cells.get((label + suffix, column)))
                     else None for suffix in ("", "+Sign-In", "+HAM")}
            if means[""] is None or (means["+Sign-In"] is None and means["+HAM"] is None):
                continue
            diff = {f"{a or 'method'} - {b or 'method'}": _r(means[a] - means[b])
                    for a, b in (("+Sign-In", ""), ("+HAM", ""), ("+HAM", "+Sign-In"))
                    if means[a] is not None and means[b] is not None}
            out.append({"method": label, "column": column_name(table, column), **diff})
    return out


def table_readings(table: Table) -> dict:
    groups = [g for g in table.groups if g.used]
    stds = [s for s in (mean_std(g.values(table.metric))[1] for g in groups) if s is not None]
    seconds = [v for g in table.groups for v in g.values("seconds")]
    pairs = [_pair(table, p) for p in ham_pairs(table)]
    ranks = {}
    for column in table.columns:
        cells = [(mean_std(g.values(table.metric))[0], g.label) for g in groups if column_of(table, g.first) == column]
        ranks[column_name(table, column)] = [label for mean, label in sorted(cells, key=lambda c: -c[0])
                                             if mean is not None]
    variants = variant_differences(table)
    diffs = {key: [v[key] for v in variants if key in v]
             for key in ("+Sign-In - method", "+HAM - method", "+HAM - +Sign-In")}
    return {"metric": table.metric, "eval_split": table.eval_split, "runs": sum(len(g.runs) for g in table.groups),
            "cells": len(groups), "seeds_per_cell": spread([len(g.used) for g in groups]),
            "seed_std": {**(spread(stds) or {}), "cells": len(stds)},
            "seconds_per_run": {**(spread(seconds) or {}), "sum": _r(sum(seconds))},
            "cells_detail": [_cell(table, g) for g in groups], "paired": pairs,
            "paired_summary": _summary(pairs), "variants": variants,
            "variants_summary": {key: {**(spread(values) or {}), "cells": len(values),
                                       "at_least_zero": sum(v >= 0 for v in values)} for key, values in diffs.items()},
            "rank": ranks}


def readings(source: str, runs: list[Run], tables: list[Table]) -> dict:
    return {"generated_by": "scripts/make_tables.py", "source": source, "runs": len(runs),
            "completed": sum(r.status == "completed" for r in runs),
            "tables": {table.name: table_readings(table) for table in tables}}
