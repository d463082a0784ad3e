#!/usr/bin/env python3
"""Plots of a ham-bench sweep: sign flips per epoch, and accuracy vs sparsity with and without HAM.

    scripts/plot_sign_flips.py multirun/fmnist_sparse --out results/fmnist_sparse
    scripts/plot_sign_flips.py SWEEP [SWEEP ...] --sparsity 0.9 --out DIR [--log]

Writes ``sign_flips.png``, ``accuracy_vs_sparsity.png`` and ``ham_gain.png`` (+HAM minus the
method, on its own axis) into ``--out``; what each shows:
``ham_bench.analysis.plots``. Only completed runs are plotted; the others are named on stderr.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ham_bench.analysis.plots import make_plots


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dirs", nargs="*", type=Path, metavar="SWEEP_DIR")
    parser.add_argument("--from-csv", type=Path, action="append", metavar="RUNS_CSV",
                        help="the runs of a make_tables runs.csv, repeatable (no sign-flip figure: it needs "
                             "metrics.jsonl)")
    parser.add_argument("--out", type=Path, required=True, help="folder for the PNG files")
    parser.add_argument("--sparsity", type=float, default=0.9,
                        help="target sparsity of the sign-flip plot (the paper's Fig. 2a: Random PaI at 0.9)")
    parser.add_argument("--log", action="store_true", help="log scale for sign flips per epoch")
    parser.add_argument("--metric", default="final_test_acc", choices=["final_test_acc", "best_test_acc"])
    args = parser.parse_args(argv)
    if bool(args.sweep_dirs) == bool(args.from_csv):
        parser.error("give either SWEEP_DIR ... or --from-csv RUNS_CSV")
    for path in make_plots(args.sweep_dirs, args.out, args.sparsity, args.log, args.metric, args.from_csv):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
