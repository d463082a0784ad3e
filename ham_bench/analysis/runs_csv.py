"""Runs rebuilt from a ``runs.csv`` that make_tables wrote, for results whose run dirs are gone.

A runs.csv line holds what the tables need of a run: status, method label, HAM variant,
optimizer, epochs, target sparsity, seed, eval split and the summary values (accuracies, achieved
sparsity, sign flips, FLOPs fractions, seconds). What it lacks is the rest of the config; the
settings that tell runs apart are taken from the run dir's name where Hydra's multirun wrote them
there (``<n>_<key>=<value>,...``, e.g. ``3_ham.alpha=20,ham=hyp_star,seed=0``): value overrides
(``ham.alpha=20``, ``epochs=3``) count, config-group choices (``ham=hyp_star``, ``experiment=...``)
are already in the method columns. Per-epoch metrics (metrics.jsonl) are not in the file: the
sign-flip plot and the per-epoch readings need the run dirs.

Two completed lines of one row, column and seed that nothing tells apart are refused rather than
pooled or dropped: their run dir names do not say how they differ.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

from ham_bench.analysis.labels import METHOD_LABELS
from ham_bench.analysis.runs import Run, collect_runs, relevant

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
REQUIRED = ("run dir", "status", "family", "method", "ham", "optimizer", "epochs", "target sparsity", "seed",
            "final_test_acc", "eval split")
NON_SUMMARY = {"run dir", "status", "family", "method", "ham", "optimizer", "epochs", "target sparsity", "seed",
               "eval split", "epochs done", "note"}
OVERRIDE_DIR = re.compile(r"^\d+_(.+=.*)$")


def value(text: str):
    """A CSV or override value as the number / bool / None it stands for, else the text."""
    if text in ("", "None", "null"):
        return None
    if text in ("True", "False", "true", "false"):
        return text.lower() == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _groups() -> set[str]:
    return {p.name for p in CONFIG_DIR.iterdir() if p.is_dir()} | {"experiment", "hydra"}


def dir_overrides(run_dir: str) -> dict:
    """The value overrides Hydra's multirun put into a run dir's name; config-group choices left out."""
    match = OVERRIDE_DIR.match(Path(run_dir).name)
    if not match:
        return {}
    groups, out = _groups(), {}
    for item in re.split(r",(?=[+~]{0,2}[\w.@/-]+=)", match.group(1)):
        key, _, text = item.partition("=")
        key = key.lstrip("+~")
        if key in groups or "/" in key or "@" in key:
            continue
        out[key] = value(text)
    return out


def _base(label: str, family: str) -> tuple[str, bool]:
    if family == "Dense":
        return "dense", False
    name = label.split(" [")[0].split("+HAM")[0]
    signin = name.endswith("+Sign-In")
    name = name[:-len("+Sign-In")] if signin else name
    return next((key for key, shown in METHOD_LABELS.items() if shown == name), name), signin


def load_runs_csv(path: Path) -> list[Run]:
    """The runs of a make_tables runs.csv; a file that is not one ends in one clear line."""
    path = Path(path)
    try:
        with open(path, newline="") as handle:
            reader = csv.DictReader(handle)
            lines = list(reader)
            missing = [column for column in REQUIRED if column not in (reader.fieldnames or [])]
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise SystemExit(f"error: --from-csv {path}: {error.strerror if isinstance(error, OSError) else error}")
    if missing or not lines:
        raise SystemExit(f"error: --from-csv {path}: not a make_tables runs.csv "
                         f"({'missing columns: ' + ', '.join(missing) if missing else 'no runs'})")
    runs = []
    for line in lines:
        summary = {key: value(text) for key, text in line.items() if key not in NON_SUMMARY and text != ""}
        base, signin = _base(line["method"], line["family"])
        sparsity, epochs = float(line["target sparsity"] or 0.0), value(line["epochs"])
        flat = {"sparsifier.sparsity": sparsity, "optimizer.name": line["optimizer"], "epochs": epochs,
                "dataset.eval_split": line["eval split"], "ham.enabled": line["ham"] != "off",
                **dir_overrides(line["run dir"])}
        runs.append(Run(path=Path(line["run dir"]), status=line["status"], summary=summary, config={},
                        flat=relevant(flat), seed=value(line["seed"]), base=base, signin=signin, ham=line["ham"],
                        optimizer=line["optimizer"], epochs=epochs, sparsity=sparsity, eval_split=line["eval split"],
                        epochs_done=value(line.get("epochs done", "")) or 0, note=line.get("note") or ""))
    return runs


def refuse_ambiguous(groups, path: Path | list[Path]) -> None:
    """Two completed lines of one group and seed cannot be told apart from runs.csv: stop."""
    for group in groups:
        for duplicate in group.duplicates:
            used = next(run for run in group.used if run.seed == duplicate.seed)
            where = path if isinstance(path, (str, Path)) else ", ".join(map(str, path))
            raise SystemExit(f"error: --from-csv {where}: {used.path} and {duplicate.path} have the same method, "
                             "column and seed and nothing in runs.csv tells them apart; rebuild from the run dirs")


def load_runs(paths: list[Path], from_csv: Path | list[Path] | None = None) -> tuple[list[Run], str]:
    """The runs under ``paths``, or those of one or more runs.csv files; and where they came from."""
    if from_csv:
        files = [from_csv] if isinstance(from_csv, (str, Path)) else list(from_csv)
        runs = [run for path in files for run in load_runs_csv(path)]
        return runs, f"{', '.join(map(str, files))} (rebuilt from runs.csv)"
    runs = collect_runs(paths)
    if not runs:
        raise SystemExit(f"error: no run dirs (summary.json / .hydra/config.yaml) under {', '.join(map(str, paths))}")
    return runs, ", ".join(str(p) for p in paths)
