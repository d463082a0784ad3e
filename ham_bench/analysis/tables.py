"""The paper's tables of a sweep: one cell per method and column, mean ± std over seeds.

Two layouts, each for a dense and a sparse table:

- the wide table, the HAM paper's layout: one row per method (``Random``,
  ``Random+Sign-In``, ``Random+HAM``, ...), one column per target sparsity
  (sparse) or per optimizer and run length (dense: ``100 ep``, ``+SAM 100 ep``);
  each cell ``mean ± std (n)`` over seeds, optionally beside the published
  number (``ham_bench.analysis.paper``);
- the detail table, the AC/DC / RigL papers' layout: one row per method and
  sparsity with n and seeds, mean and std, best-epoch accuracy, achieved
  sparsity, sign flips, the training / inference FLOPs columns when the
  summaries have them (every numeric summary key whose name holds "flops" and
  "fraction", e.g. ``train_flops_fraction_of_dense``), seconds per run and, with
  ``--paper``, the published number as a reference level (levels of another dataset and
  model do not compare; the gains do: ``ham_bench.analysis.paired``).

Only completed runs enter the means; a cell with any other run is marked †.
Std is the sample standard deviation (ddof = 1); with one seed it is blank.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ham_bench.analysis.labels import parse_label, row_order
from ham_bench.analysis.paper import format_paper
from ham_bench.analysis.runs import Group, Run, group_runs, mean_std

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
            settings = ", ".join(f"{k}={short_value(group.first.flat.get(k, '∅'))}" for k in keys)
            group.label = f"{group.first.method} [{settings}]"


def short_value(value: Any) -> str:
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


def _dense_column_order(column: str) -> tuple:
    prefix, _, epochs = column.rpartition(" ep")[0].rpartition(" ")
    try:
        number = int(epochs)
    except ValueError:
        number = 0
    return prefix, number


def build_table(name: str, groups: list[Group], metric: str, paper: dict | None = None) -> Table:
    dense = name == "dense"
    run_column = (lambda run: run.dense_column) if dense else (lambda run: run.sparsity)
    _label_groups(groups, run_column)
    cells, order, families = {}, {}, {}
    for group in groups:
        run = group.first
        cells[(group.label, run_column(run))] = group
        order[group.label] = row_order(group.label, run.family, run.base, run.signin, run.ham)
        families[group.label] = run.family
    sort_columns = (lambda c: _dense_column_order(str(c))) if dense else float
    columns = {column for _, column in cells}
    paper_rows = (paper or {}).get("rows") or {}
    for label, values in paper_rows.items():  # published rows we did not run stay, empty on our side
        columns |= {str(c) if dense else float(c) for c in values}
        if label not in order:
            family, base, signin, ham = parse_label(label)
            order[label] = row_order(label, family, base, signin, ham)
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
                                                 str(table.columns.index(column_of(table, g.first)))))
    flops = flops_keys([run for g in groups for run in g.used])
    header = ["family", "method", "ham", "optimizer", "epochs", "target sparsity", "n", "seeds",
              f"{split_name(table.metric, table)} mean", "std", f"{split_name('best_test_acc', table)} mean",
              "achieved sparsity", "sign flips (total)",
              *flops, "seconds per run", "eval split", "not completed"]
    if table.paper:
        header.append("paper")
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
            published = table.paper.get(group.label, {}).get(column_of(table, run))
            line.append(format_paper(published))
        lines.append(line)
    return header, lines


def column_of(table: Table, run: Run):
    """The table column a run belongs to: its target sparsity (sparse) or ``100 ep`` / ``+SAM 100 ep`` (dense)."""
    return run.dense_column if table.name == "dense" else run.sparsity


def split_name(key: str, table: Table) -> str:
    """``final_test_acc`` -> ``final_val_acc`` when the runs evaluated on the validation split."""
    return key.replace("test", table.eval_split) if table.eval_split != "test" else key


def markdown(header: list[str], lines: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(cell.replace("|", "\\|") for cell in line) + " |" for line in lines]
    return "\n".join(out)
