#!/usr/bin/env python3
"""Aggregate ham-bench runs into the paper's tables: mean ± std over seeds, markdown and CSV.

    scripts/make_tables.py multirun/fmnist_sparse [more sweep or run dirs ...]
    scripts/make_tables.py multirun/imagenet_sparse --paper imagenet_sparse --out results/imagenet_sparse

Runs are found, read and grouped by ``ham_bench.sweep_runs``: every directory
holding a ``summary.json``, ``.hydra/config.yaml`` or ``metrics.jsonl`` is a run;
one group per resolved config except the seed (method, HAM, optimizer, epochs,
target sparsity, anything else that differs).

Tables (a dense table and a sparse table, each when such runs exist):

- the wide table, the HAM paper's layout: one row per method (``Random``,
  ``Random+Sign-In``, ``Random+HAM``, ...), one column per target sparsity
  (sparse) or per optimizer and run length (dense: ``100 ep``, ``+SAM 100 ep``);
  each cell ``mean ± std (n)`` over seeds, optionally beside the published
  number (``--paper``, from ``scripts/paper_numbers.yaml``);
- the detail table, the AC/DC / RigL papers' layout: one row per method and
  sparsity with n and seeds, mean and std, best-epoch accuracy, achieved
  sparsity, sign flips, the training / inference FLOPs columns when the
  summaries have them (every numeric summary key whose name holds "flops" and
  "fraction", e.g. ``train_flops_fraction_of_dense``), seconds per run, and
  the paper's number and our difference to it.

Only runs with status ``completed`` enter the means. Every other run (failed,
stopped, or without summary.json: still running or killed) is listed under
the tables, and its cell is marked with † so nothing drops silently. Std is
the sample standard deviation (ddof = 1); with one seed it is left blank.
Two completed runs of the same group and seed (e.g. a sweep given twice)
count once: the newest is used, the others are listed as duplicates.

``--out DIR`` writes ``tables.md`` (everything printed), ``<table>.csv``
(wide), ``<table>_detail.csv`` and ``runs.csv`` (one line per run).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ham_bench.atomic_io import write_text
from ham_bench.sweep_runs import (FAMILIES, METHOD_LABELS, Group, Run, base_order, collect_runs, group_runs,
                                  mean_std, variant_order)

PAPER_NUMBERS = Path(__file__).resolve().parent / "paper_numbers.yaml"

FAMILY_ORDER = ["Dense", "PaI", "DtS", "DST", "Cont.", "other"]
FLOPS_PREFERRED = ("train_flops_fraction", "train_flops_fraction_of_dense", "inference_flops_fraction",
                   "inference_flops_fraction_of_dense")
DAGGER = "†"


# ---------------------------------------------------------------------------------- row labels
def _label_groups(groups: list[Group], column_of) -> None:
    """Row label = method, plus the settings that tell apart groups with the same method and column."""
    clashes: dict[tuple, list[Group]] = {}
    for group in groups:
        group.label = group.first.method
        clashes.setdefault((group.label, column_of(group.first)), []).append(group)
    extra_keys: dict[str, set[str]] = {}
    for (label, _column), members in clashes.items():
        if len(members) < 2:
            continue
        common = set.intersection(*(set(m.first.flat) for m in members))
        differing = {k for k in common if len({json.dumps(m.first.flat[k], default=str) for m in members}) > 1}
        differing -= {"sparsifier.sparsity", "sparsifier.inner.sparsity"}
        if not differing:  # differ only in keys some lack: name those
            differing = set.union(*(set(m.first.flat) for m in members)) - common
        extra_keys.setdefault(label, set()).update(differing)
    for group in groups:
        keys = sorted(extra_keys.get(group.first.method, ()))
        if keys:
            settings = ", ".join(f"{k}={_short(group.first.flat.get(k, '∅'))}" for k in keys)
            group.label = f"{group.first.method} [{settings}]"


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


# ---------------------------------------------------------------------------------- tables
@dataclass
class Table:
    name: str                     # "dense" | "sparse"
    title: str
    column_header: str
    groups: list[Group]
    columns: list
    rows: list[str]               # row labels, ordered
    cells: dict                   # (row label, column) -> Group
    families: dict                # row label -> family
    metric: str
    eval_split: str
    paper: dict | None = None     # row label -> {column: [mean, std]}
    paper_title: str = ""


def _row_order(label: str, family: str, base: str, signin: bool, ham: str) -> tuple:
    """Paper order: family, then base method, then base / +Sign-In / +HAM."""
    family_index = FAMILY_ORDER.index(family) if family in FAMILY_ORDER else len(FAMILY_ORDER)
    return family_index, base_order(base), variant_order(signin, ham != "off"), ham, _natural(label)


def _natural(label: str) -> tuple:
    """Numbers in a label compare as numbers: ``alpha=5`` before ``alpha=20``."""
    parts = re.split(r"(\d+(?:\.\d+)?(?:e-?\d+)?)", label)
    return tuple((0, float(part), "") if index % 2 else (1, 0.0, part) for index, part in enumerate(parts))


def _parse_label(label: str) -> tuple[str, str, bool, str]:
    """(family, base, signin, ham) of a published row label such as ``RiGL+Sign-In`` or ``HAM``."""
    if label in ("baseline", "HAM"):
        return "Dense", "dense", False, "off" if label == "baseline" else "hyp_star"
    name = label.split("+")[0]
    base = next((key for key, value in METHOD_LABELS.items() if value == name), name)
    return FAMILIES.get(base, "other"), base, "Sign-In" in label, "hyp_star" if "HAM" in label else "off"


def _dense_column_order(column: str) -> tuple:
    prefix, _, epochs = column.rpartition(" ep")[0].rpartition(" ")
    try:
        number = int(epochs)
    except ValueError:
        number = 0
    return prefix, number


def build_table(name: str, groups: list[Group], metric: str, paper: dict | None = None) -> Table:
    dense = name == "dense"
    column_of = (lambda run: run.dense_column) if dense else (lambda run: run.sparsity)
    _label_groups(groups, column_of)
    cells, order, families = {}, {}, {}
    for group in groups:
        run = group.first
        cells[(group.label, column_of(run))] = group
        order[group.label] = _row_order(group.label, run.family, run.base, run.signin, run.ham)
        families[group.label] = run.family
    sort_columns = (lambda c: _dense_column_order(str(c))) if dense else float
    columns = {column for _, column in cells}
    paper_rows = (paper or {}).get("rows") or {}
    for label, values in paper_rows.items():  # published rows we did not run stay, empty on our side
        columns |= {str(c) if dense else float(c) for c in values}
        if label not in order:
            family, base, signin, ham = _parse_label(label)
            order[label] = _row_order(label, family, base, signin, ham)
            families[label] = family
    columns = sorted(columns, key=sort_columns)
    rows = sorted(order, key=order.get)
    splits = sorted({g.first.eval_split for g in groups})
    if dense:
        title = "Dense: top-1 accuracy (%) by optimizer and epochs"
        header = "run"
    else:
        title = "Sparse: top-1 accuracy (%) by target sparsity"
        header = "s"
    paper_map = {label: {(str(c) if dense else float(c)): v for c, v in values.items()}
                 for label, values in paper_rows.items()}
    return Table(name=name, title=title, column_header=header, groups=groups, columns=columns, rows=rows,
                 cells=cells, families=families, metric=metric, eval_split="/".join(splits) or "test",
                 paper=paper_map or None, paper_title=(paper or {}).get("title", ""))


def build_tables(runs: list[Run], metric: str = "final_test_acc", paper: dict | None = None) -> list[Table]:
    """The dense and the sparse table of these runs (each only if it has runs). ``paper``: name -> numbers."""
    groups = group_runs(runs)
    dense = [g for g in groups if g.first.base == "dense"]
    sparse = [g for g in groups if g.first.base != "dense"]
    paper = paper or {}
    tables = []
    for name, members in (("dense", dense), ("sparse", sparse)):
        if members:
            tables.append(build_table(name, members, metric, paper.get(name)))
    return tables


def load_paper_numbers(names: list[str]) -> dict:
    """``--paper imagenet_sparse`` -> {"sparse": {...}}; the table kind is the name's suffix."""
    data = yaml.safe_load(PAPER_NUMBERS.read_text())
    out = {}
    for name in names:
        if name not in data:
            raise SystemExit(f"error: --paper must be one of {', '.join(sorted(data))}, got {name!r}")
        kind = "dense" if name.endswith("_dense") else "sparse"
        out[kind] = data[name]
    return out


def _fmt(value: float | None, digits: int = 2) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def format_cell(group: Group | None, metric: str) -> str:
    if group is None:
        return "—"
    mean, std = mean_std(group.values(metric))
    mark = DAGGER if group.flagged else ""
    if mean is None:
        return f"— (0){mark}"
    spread = f" ± {std:.2f}" if std is not None else ""
    return f"{mean:.2f}{spread} ({len(group.used)}){mark}"


def format_paper(value) -> str:
    if not value:
        return "—"
    mean, std = value
    return f"{mean:.2f}" + (f" ± {std:.2f}" if std is not None else "")


def column_name(table: Table, column) -> str:
    return column if table.name == "dense" else f"s={column:g}"


def wide_rows(table: Table) -> tuple[list[str], list[list[str]]]:
    published = {column for values in (table.paper or {}).values() for column in values}
    header = ["family", "method"] if table.name == "sparse" else ["method"]
    for column in table.columns:
        header.append(column_name(table, column))
        if column in published:  # the published number right of ours, where the paper has the column
            header.append("paper")
    lines = []
    for label in table.rows:
        line = [table.families.get(label, "")] if table.name == "sparse" else []
        line.append(label)
        for column in table.columns:
            line.append(format_cell(table.cells.get((label, column)), table.metric))
            if column in published:
                line.append(format_paper(table.paper.get(label, {}).get(column)))
        lines.append(line)
    return header, lines


def flops_keys(runs: list[Run]) -> list[str]:
    """The FLOPs columns the summaries have: numeric keys with "flops" and "fraction" in their name."""
    found = {key for run in runs for key, value in run.summary.items()
             if "flops" in key and "fraction" in key and isinstance(value, (int, float))}
    return sorted(found, key=lambda k: (FLOPS_PREFERRED.index(k) if k in FLOPS_PREFERRED else 99, k))


def detail_rows(table: Table) -> tuple[list[str], list[list[str]]]:
    """One line per group: the numbers behind each cell, FLOPs columns when any summary has them."""
    groups = sorted(table.groups, key=lambda g: (table.rows.index(g.label),
                                                 str(table.columns.index(_column(table, g.first)))))
    flops = flops_keys([run for g in groups for run in g.used])
    header = ["family", "method", "ham", "optimizer", "epochs", "target sparsity", "n", "seeds",
              f"{_split_name(table.metric, table)} mean", "std", f"{_split_name('best_test_acc', table)} mean",
              "achieved sparsity", "sign flips (total)",
              *flops, "seconds per run", "eval split", "not completed"]
    if table.paper:
        header += ["paper", "ours - paper"]
    lines = []
    for group in groups:
        run = group.first
        mean, std = mean_std(group.values(table.metric))
        best, _ = mean_std(group.values("best_test_acc"))
        achieved, _ = mean_std(group.values("final_sparsity"))
        flips, _ = mean_std(group.values("sign_flips_total"))
        seconds, _ = mean_std(group.values("seconds"))
        line = [run.family, group.label, run.ham, run.optimizer, str(run.epochs), f"{run.sparsity:g}",
                str(len(group.used)), " ".join(str(r.seed) for r in group.used), _fmt(mean), _fmt(std),
                _fmt(best), _fmt(achieved, 4), "" if flips is None else f"{flips:.0f}"]
        for key in flops:
            line.append(_fmt(mean_std(group.values(key))[0], 3))
        not_done = [r for r in group.runs if r.status != "completed"]
        line += [_fmt(seconds, 0), run.eval_split,
                 ", ".join(f"seed {r.seed}: {r.status}" for r in not_done)]
        if table.paper:
            published = table.paper.get(group.label, {}).get(_column(table, run))
            line.append(format_paper(published))
            line.append(f"{mean - published[0]:+.2f}" if published and mean is not None else "")
        lines.append(line)
    return header, lines


def _column(table: Table, run: Run):
    return run.dense_column if table.name == "dense" else run.sparsity


def markdown(header: list[str], lines: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(cell.replace("|", "\\|") for cell in line) + " |" for line in lines]
    return "\n".join(out)


def common_settings(table: Table) -> str:
    """The few headline settings every run of the table shares (dataset, model, recipe, HAM when on)."""
    keys = ("dataset.name", "model.name", "batch_size", "optimizer.lr", "optimizer.momentum",
            "optimizer.weight_decay", "schedule.name", "label_smoothing", "ham.alpha", "ham.beta")
    shared = []
    for key in keys:
        values = {json.dumps(g.first.flat[key], default=str): g.first.flat[key]
                  for g in table.groups if key in g.first.flat}
        if len(values) == 1:
            shared.append(f"{key}={_short(next(iter(values.values())))}")
    return ", ".join(shared)


def _split_name(key: str, table: Table) -> str:
    """``final_test_acc`` -> ``final_val_acc`` when the runs evaluated on the validation split."""
    return key.replace("test", table.eval_split) if table.eval_split != "test" else key


def render_table(table: Table) -> str:
    split = table.eval_split
    metric = _split_name(table.metric, table)
    parts = [f"## {table.title}", "",
             f"Cells: {metric} mean ± sample std over seeds (number of completed seeds); "
             f"{DAGGER}: some runs of the cell did not complete (see the list below)."]
    settings = common_settings(table)
    if settings:
        parts.append(f"Shared settings: {settings}.")
    if table.paper:
        parts.append(f"paper: {table.paper_title} (published, test split).")
        if split != "test":
            parts.append(f"Note: our numbers are on the {split} split, the paper's on the test split.")
    parts += ["", markdown(*wide_rows(table)), "", f"### {table.title.split(':')[0]}: details", "",
              markdown(*detail_rows(table)), ""]
    return "\n".join(parts)


def problem_runs(runs: list[Run], groups: list[Group]) -> tuple[list[Run], list[Run]]:
    duplicates = [run for group in groups for run in group.duplicates]
    return [run for run in runs if run.status != "completed"], duplicates


def render_problems(runs: list[Run], groups: list[Group]) -> str:
    bad, duplicates = problem_runs(runs, groups)
    parts = ["## Runs not in the means", ""]
    if not bad and not duplicates:
        return "\n".join(parts + ["None: every run completed.", ""])
    header = ["run dir", "method", "target sparsity", "seed", "status", "epochs done", "why"]
    lines = [[str(r.path), r.method, f"{r.sparsity:g}", str(r.seed), r.status,
              f"{r.epochs_done}/{r.epochs}", r.note.splitlines()[0][:160] if r.note else ""] for r in bad]
    lines += [[str(r.path), r.method, f"{r.sparsity:g}", str(r.seed), "duplicate (a newer run of the same "
               "config and seed is used)", f"{r.epochs_done}/{r.epochs}", ""] for r in duplicates]
    return "\n".join(parts + [markdown(header, lines), ""])


def runs_csv_rows(runs: list[Run]) -> tuple[list[str], list[list[str]]]:
    flops = flops_keys(runs)
    header = ["run dir", "status", "family", "method", "ham", "optimizer", "epochs", "target sparsity", "seed",
              "final_test_acc", "best_test_acc", "final_sparsity", "sign_flips_total", *flops, "seconds",
              "eval split", "epochs done", "note"]
    lines = []
    for r in runs:
        s = r.summary
        lines.append([str(r.path), r.status, r.family, r.method, r.ham, r.optimizer, str(r.epochs),
                      f"{r.sparsity:g}", str(r.seed)] + [
                      "" if s.get(k) is None else str(s.get(k)) for k in
                      ("final_test_acc", "best_test_acc", "final_sparsity", "sign_flips_total", *flops,
                       "seconds")] + [r.eval_split, str(r.epochs_done), r.note.splitlines()[0] if r.note else ""])
    return header, lines


def _write_csv(path: Path, header: list[str], lines: list[list[str]]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(lines)
    write_text(path, buffer.getvalue())


def make_tables(paths: list[Path], out: Path | None = None, paper: list[str] | None = None,
                metric: str = "final_test_acc") -> str:
    """Aggregate the runs under ``paths``; returns the markdown and, with ``out``, writes the files."""
    runs = collect_runs(paths)
    if not runs:
        raise SystemExit(f"error: no run dirs (summary.json / .hydra/config.yaml) under {', '.join(map(str, paths))}")
    tables = build_tables(runs, metric, load_paper_numbers(paper or []))
    groups = [g for t in tables for g in t.groups]
    completed = sum(r.status == "completed" for r in runs)
    text = "\n".join([f"# ham-bench results: {len(runs)} runs ({completed} completed) from "
                      f"{', '.join(str(p) for p in paths)}", ""]
                     + [render_table(t) for t in tables] + [render_problems(runs, groups)])
    if out is not None:
        out = Path(out)
        write_text(out / "tables.md", text)
        for table in tables:
            _write_csv(out / f"{table.name}.csv", *wide_rows(table))
            _write_csv(out / f"{table.name}_detail.csv", *detail_rows(table))
        _write_csv(out / "runs.csv", *runs_csv_rows(runs))
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep_dirs", nargs="+", type=Path, metavar="SWEEP_DIR",
                        help="multirun sweep dirs or single run dirs (searched recursively)")
    parser.add_argument("--out", type=Path, help="write tables.md, <table>.csv, <table>_detail.csv, runs.csv here")
    parser.add_argument("--paper", action="append", default=[],
                        choices=sorted(yaml.safe_load(PAPER_NUMBERS.read_text())),
                        help="print the published numbers beside ours (repeatable: one dense and one sparse)")
    parser.add_argument("--metric", default="final_test_acc", choices=["final_test_acc", "best_test_acc"],
                        help="the summary value averaged over seeds (default: accuracy after the last epoch)")
    args = parser.parse_args(argv)
    text = make_tables(args.sweep_dirs, args.out, args.paper, args.metric)
    try:
        print(text)
    except BrokenPipeError:  # e.g. piped into head
        sys.stderr.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
