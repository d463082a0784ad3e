#!/usr/bin/env python3
"""Aggregate ham-bench runs into the paper's tables: mean ± std over seeds, markdown and CSV.

    scripts/make_tables.py multirun/fmnist_sparse [more sweep or run dirs ...]
    scripts/make_tables.py multirun/imagenet_sparse --paper imagenet_sparse --out results/imagenet_sparse
    scripts/make_tables.py --from-csv results/fmnist_sparse/runs.csv --paper imagenet_sparse --out results/fmnist_sparse

Every directory holding a ``summary.json``, ``.hydra/config.yaml`` or ``metrics.jsonl`` is a run;
one row group per resolved config except the seed. Only completed runs enter the means; every
other run is listed under the tables and its cell marked with †. ``--out DIR`` writes
``tables.md`` (everything printed), ``<table>.csv`` (wide), ``<table>_detail.csv``,
``<table>_paired.csv`` (+HAM minus the method per cell, with a seed-paired test and Holm's
correction), ``runs.csv`` (one line per run) and ``readings.json`` (the figures the results
READMEs quote). The tables: ``ham_bench.analysis.tables`` and
``ham_bench.analysis.paired``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ham_bench.analysis.paper import paper_names
from ham_bench.analysis.report import make_tables


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep_dirs", nargs="*", type=Path, metavar="SWEEP_DIR",
                        help="multirun sweep dirs or single run dirs (searched recursively)")
    parser.add_argument("--from-csv", type=Path, metavar="RUNS_CSV", action="append",
                        help="rebuild everything from a runs.csv that make_tables wrote (run dirs gone); "
                             "repeatable: the runs of several files, e.g. an earlier table and its new rows")
    parser.add_argument("--out", type=Path, help="write tables.md, <table>.csv, <table>_detail.csv, runs.csv here")
    parser.add_argument("--paper", action="append", default=[], choices=paper_names(),
                        help="print the published numbers beside ours (repeatable: one dense and one sparse)")
    parser.add_argument("--metric", default="final_test_acc", choices=["final_test_acc", "best_test_acc"],
                        help="the summary value averaged over seeds (default: accuracy after the last epoch)")
    args = parser.parse_args(argv)
    if bool(args.sweep_dirs) == bool(args.from_csv):
        parser.error("give either SWEEP_DIR ... or --from-csv RUNS_CSV")
    text = make_tables(args.sweep_dirs, args.out, args.paper, args.metric, from_csv=args.from_csv)
    try:
        print(text)
    except BrokenPipeError:  # e.g. piped into head
        sys.stderr.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
