#!/usr/bin/env python3
"""Rank HAM's (alpha, beta) pairs of a validation sweep and name the chosen pair.

    scripts/rank_ham_sweep.py SWEEP_DIR --out results/alpha_beta_sweep
    scripts/rank_ham_sweep.py --from-csv results/alpha_beta_sweep/runs.csv --out results/alpha_beta_sweep

Writes ``ranking.md`` beside make_tables' tables of the same runs (``tables.md``, CSVs,
``readings.json`` with the ranking's figures under ``ranking``). The
selection rule (fixed before the sweep ran) and the refusal of test-split runs:
``ham_bench.analysis.ranking``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ham_bench.analysis.ranking import rank, ranking_readings, render
from ham_bench.analysis.report import make_tables
from ham_bench.analysis.runs_csv import load_runs
from ham_bench.atomic_io import write_text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep_dir", type=Path, nargs="?", metavar="SWEEP_DIR")
    parser.add_argument("--from-csv", type=Path, metavar="RUNS_CSV", help="rank the runs of a make_tables runs.csv")
    parser.add_argument("--out", type=Path, required=True, help="write ranking.md and make_tables' files here")
    args = parser.parse_args(argv)
    if (args.sweep_dir is None) == (args.from_csv is None):
        parser.error("give either SWEEP_DIR or --from-csv RUNS_CSV")
    paths = [args.sweep_dir] if args.sweep_dir is not None else []
    runs, source = load_runs(paths, args.from_csv)
    entries, off = rank(runs)
    text = render(source, entries, off)
    # every group, and every run that did not complete; the ranking's figures go into readings.json
    make_tables(paths, out=args.out, from_csv=args.from_csv, extra_readings={"ranking": ranking_readings(entries, off)})
    write_text(args.out / "ranking.md", text)
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
