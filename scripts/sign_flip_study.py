#!/usr/bin/env python3
"""The sign-flip study's tables and plot: sign flips against HAM's alpha, per method and run length.

    scripts/sign_flip_study.py multirun/sign_flips/<stamp> --out results/sign_flips

Writes ``tables.md``, ``study.csv``, ``readings.json`` and ``sign_flips_vs_alpha.png`` into ``--out``
(what they hold: ``ham_bench.analysis.sign_flip_study``). The runs come from scripts/sweep_sign_flips.sh.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ham_bench.analysis.sign_flip_study import sign_flip_study


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dirs", nargs="+", type=Path, metavar="SWEEP_DIR")
    parser.add_argument("--out", type=Path, required=True, help="folder for the tables and the plot")
    args = parser.parse_args(argv)
    missing = [str(p) for p in args.sweep_dirs if not p.is_dir()]
    if missing:
        print(f"error: no such directory: {', '.join(missing)}", file=sys.stderr)
        return 1
    for name, reading in sign_flip_study(args.sweep_dirs, args.out).items():
        print(f"{name}: rho {reading['spearman_rho']}, largest alpha / off {reading['off_to_largest_alpha']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
