#!/usr/bin/env python3
"""Rank HAM's (alpha, beta) pairs of a validation sweep and name the chosen pair.

    scripts/rank_ham_sweep.py SWEEP_DIR --out results/alpha_beta_sweep

Writes ``ranking.md`` beside make_tables' tables of the same runs (``tables.md``, CSVs). The
selection rule (fixed before the sweep ran) and the refusal of test-split runs:
``ham_bench.analysis.ranking``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ham_bench.analysis.ranking import rank, render
from ham_bench.analysis.report import make_tables
from ham_bench.analysis.runs import collect_runs
from ham_bench.atomic_io import READABLE, write_text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep_dir", type=Path, metavar="SWEEP_DIR")
    parser.add_argument("--out", type=Path, required=True, help="write ranking.md and make_tables' files here")
    args = parser.parse_args(argv)
    runs = collect_runs([args.sweep_dir])
    if not runs:
        raise SystemExit(f"error: no run dirs under {args.sweep_dir}")
    entries, off = rank(runs)
    make_tables([args.sweep_dir], out=args.out)  # every group, and every run that did not complete
    text = render(args.sweep_dir, entries, off)
    write_text(args.out / "ranking.md", text, READABLE)
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
