"""``make_tables``: a sweep's tables as markdown and CSV, and the runs that are not in the means.

``make_tables(paths, out)`` finds and groups the runs (``ham_bench.analysis.runs``), builds the
dense and the sparse table (``ham_bench.analysis.tables``), lists every run that did not
complete (failed, stopped, or without summary.json: still running or killed) and every duplicate
(a newer run of the same config and seed is used), and with ``out`` writes ``tables.md``
(everything printed), ``<table>.csv`` (wide), ``<table>_detail.csv``, ``<table>_paired.csv``
(``ham_bench.analysis.paired``), ``runs.csv`` (one line per run) and ``readings.json`` (every
figure a README quotes: ``ham_bench.analysis.readings``). ``from_csv`` rebuilds all of them from
a runs.csv when the run dirs are gone (``ham_bench.analysis.runs_csv``). All files are computed
first and then written atomically, so a bad input leaves nothing half-written.
"""

from __future__ import annotations

import json
from pathlib import Path

from ham_bench.analysis.paired import ham_pairs, paired_rows, render_paired
from ham_bench.analysis.paper import load_paper_numbers
from ham_bench.analysis.readings import readings
from ham_bench.analysis.runs import Group, Run
from ham_bench.analysis.runs_csv import load_runs, refuse_ambiguous
from ham_bench.analysis.tables import (DAGGER, Table, build_tables, detail_rows, flops_keys, markdown, short_value,
                                       split_name, wide_rows)
from ham_bench.atomic_io import write_csv, write_json, write_text

REBUILT = ("Rebuilt from make_tables' runs.csv (the run dirs are not at hand): the runs' settings beyond its "
           "columns are the Hydra overrides in the run dir names; the recipe shared by all runs is stated in the "
           "results README.")
HEADLINE_KEYS = ("dataset.name", "model.name", "batch_size", "optimizer.lr", "optimizer.momentum",
                 "optimizer.weight_decay", "schedule.name", "label_smoothing", "ham.alpha", "ham.beta")


def common_settings(table: Table) -> str:
    """The few headline settings every run of the table shares (dataset, model, recipe, HAM when on)."""
    shared = []
    for key in HEADLINE_KEYS:
        values = {json.dumps(g.first.flat[key], default=str): g.first.flat[key]
                  for g in table.groups if key in g.first.flat}
        if len(values) == 1:
            shared.append(f"{key}={short_value(next(iter(values.values())))}")
    return ", ".join(shared)


def render_table(table: Table) -> str:
    split = table.eval_split
    metric = split_name(table.metric, table)
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
    pairs = ham_pairs(table)
    if pairs:
        parts.append(render_paired(table, pairs))
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


def make_tables(paths: list[Path], out: Path | None = None, paper: list[str] | None = None,
                metric: str = "final_test_acc", from_csv: Path | list[Path] | None = None,
                extra_readings: dict | None = None) -> str:
    """Aggregate the runs under ``paths`` (or of ``from_csv``); returns the markdown and, with ``out``,
    writes the files. Everything is computed before the first file is written."""
    runs, source = load_runs(paths, from_csv)
    tables = build_tables(runs, metric, load_paper_numbers(paper or []))
    groups = [g for t in tables for g in t.groups]
    if from_csv:
        refuse_ambiguous(groups, from_csv)
    completed = sum(r.status == "completed" for r in runs)
    header = [f"# ham-bench results: {len(runs)} runs ({completed} completed) from {source}", ""]
    if from_csv:
        header += [REBUILT, ""]
    text = "\n".join(header + [render_table(t) for t in tables] + [render_problems(runs, groups)])
    if out is not None:
        csvs = {"runs.csv": runs_csv_rows(runs)}
        for table in tables:
            csvs[f"{table.name}.csv"] = wide_rows(table)
            csvs[f"{table.name}_detail.csv"] = detail_rows(table)
            pairs = ham_pairs(table)
            if pairs:
                csvs[f"{table.name}_paired.csv"] = paired_rows(table, pairs)
        numbers = {**readings(source, runs, tables), **(extra_readings or {})}
        out = Path(out)
        write_text(out / "tables.md", text)
        for name, (header_row, lines) in csvs.items():
            write_csv(out / name, header_row, lines)
        write_json(out / "readings.json", numbers)
    return text
