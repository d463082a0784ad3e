"""Implicit bias of HAM on underdetermined linear regression (the theory experiment).

    PYTHONPATH=. python scripts/implicit_bias.py                      # the committed experiment
    PYTHONPATH=. python scripts/implicit_bias.py --small --out /tmp/ib  # reduced size (the tests)

Writes ``table.md``, ``runs.csv``, ``summary.csv``, ``flow_limits.csv``, ``readings.json`` (the
figures the README quotes beyond the tables) and ``implicit_bias.png`` into ``--out``;
``--readings-only`` rebuilds summary.csv and readings.json from an existing runs.csv. The problem,
the methods, the step size and the metrics:
``ham_bench.analysis.implicit_bias``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from ham_bench.analysis.implicit_bias.experiment import flow_limit_rows, run_experiment
from ham_bench.analysis.implicit_bias.plot import write_plot
from ham_bench.analysis.implicit_bias.problem import make_problem
from ham_bench.analysis.implicit_bias.report import aggregate, read_csv, readings, render, write_csv
from ham_bench.atomic_io import write_json, write_text

SMALL = dict(n=15, d=40, k=2, seeds=[2, 3], alphas=[0, 10, 100], mw_gammas=[1e-6, 1.0], c=1.0, tol=1e-5,
             max_steps=50_000, pred_alphas=[0, 100], pred_mw_gammas=[1e-6], pred_init_scales=[1e-3])


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=40, help="samples")
    p.add_argument("--d", type=int, default=200, help="dimension")
    p.add_argument("--k", type=int, default=5, help="nonzeros of the ground truth")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--alphas", type=float, nargs="+", default=[0, 1, 10, 100, 1000, 10000])
    p.add_argument("--mw-gammas", type=float, nargs="+", default=[1e-6, 1e-3, 1.0], help="m*w: gamma = m^2 - w^2 at init (> 0)")
    p.add_argument("--init-scale", type=float, default=1e-3, help="std of the shared small random init theta0")
    p.add_argument("--c", type=float, default=0.25, help="step-size factor (ham_bench.analysis.implicit_bias)")
    p.add_argument("--max-steps", type=int, default=300_000)
    p.add_argument("--tol", type=float, default=1e-7, help="stop at ||X theta - y|| / ||y|| <= tol")
    p.add_argument("--eps-zero", type=float, default=1e-2, help="a coordinate counts as escaped from zero at |theta| >= this")
    p.add_argument("--pred-alphas", type=float, nargs="+", default=[0, 1, 10, 100, 1e3, 1e4, 1e5, 1e6], help="flow-limit table (no training)")
    p.add_argument("--pred-mw-gammas", type=float, nargs="+", default=[1e-8, 1e-6, 1e-4, 1e-3, 1e-2, 1.0])
    p.add_argument("--pred-init-scales", type=float, nargs="+", default=[1e-3, 1e-6])
    p.add_argument("--out", default="results/implicit_bias", help="output directory")
    p.add_argument("--small", action="store_true", help="reduced size for tests; explicit flags still win: " + str(SMALL))
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--readings-only", action="store_true",
                   help="no training: rebuild summary.csv and readings.json from --out's runs.csv")
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--small" in argv:
        p.set_defaults(**SMALL)
    args = p.parse_args(argv)
    if min(args.mw_gammas) <= 0:
        p.error("--mw-gammas must be > 0 (gamma = m^2 - w^2 of the balanced init)")
    if args.n >= args.d or not 0 < args.k < args.n:
        p.error(f"need k < n < d for an underdetermined problem with a recoverable sparse truth (got n={args.n}, d={args.d}, k={args.k})")
    return args, argv


def reaggregate(out: Path) -> int:
    try:
        rows = read_csv(out / "runs.csv")
    except OSError as error:
        raise SystemExit(f"error: --readings-only: {out / 'runs.csv'}: {error.strerror}")
    aggs = aggregate(rows)
    write_csv(out / "summary.csv", aggs)
    write_json(out / "readings.json", readings(rows, aggs))
    return 0


def main(argv=None) -> int:
    args, argv = parse_args(argv)
    out = Path(args.out)
    if args.readings_only:
        return reaggregate(out)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    rows, traces = run_experiment(args)
    flow_rows = flow_limit_rows(args)
    wall = time.perf_counter() - t0
    aggs = aggregate(rows)
    flow_aggs = aggregate(flow_rows, keys=("init_scale", "method"))
    write_csv(out / "runs.csv", rows)
    write_csv(out / "summary.csv", aggs)
    write_csv(out / "flow_limits.csv", flow_aggs)
    write_json(out / "readings.json", readings(rows, aggs))
    text = render(args, argv, rows, aggs, flow_aggs, wall)
    write_text(out / "table.md", text)
    if not args.no_plot:
        prob = make_problem(args.n, args.d, args.k, args.seeds[0], args.init_scale)
        write_plot(out / "implicit_bias.png", aggs, flow_aggs, traces, prob, args)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
