"""Aggregation over seeds (mean, sample std, n per metric), the markdown tables and the CSV files."""

from __future__ import annotations

import csv

import numpy as np

from ham_bench.analysis.runs_csv import value
from ham_bench.atomic_io import write_csv as write_csv_rows


def aggregate(rows: list[dict], keys=("method",)) -> list[dict]:
    groups: dict = {}
    for r in rows:
        groups.setdefault(tuple(r[k] for k in keys), []).append(r)
    out = []
    for key, group in groups.items():
        agg = dict(zip(keys, key)) | {"seeds": len(group)}
        numeric = [k for k in group[0] if k not in ("seed", "kind", *keys) and isinstance(group[0][k], (int, float))]
        for name in numeric:
            vals = np.array([r.get(name, np.nan) for r in group], dtype=float)
            finite = vals[np.isfinite(vals)]
            agg[name] = float(finite.mean()) if len(finite) else float("nan")
            agg[name + "_std"] = float(finite.std(ddof=1)) if len(finite) > 1 else 0.0
            agg[name + "_n"] = len(finite)
        out.append(agg)
    return out


def _fmt(agg: dict, key: str, fmt: str) -> str:
    v = agg.get(key, float("nan"))
    if not np.isfinite(v):
        return "–"
    s = fmt.format(v)
    if agg["seeds"] > 1 and agg.get(key + "_std", 0.0) > 0:
        s += " ± " + fmt.format(agg[key + "_std"])
    if agg.get(key + "_n", agg["seeds"]) < agg["seeds"]:
        s += f" (n={agg[key + '_n']})"
    return s


def _table(aggs, cols, first="method") -> str:
    lines = [f"| {first} | " + " | ".join(h for _, h, _ in cols) + " |", "|---|" + "---|" * len(cols)]
    for a in aggs:
        lines.append(f"| {a['method']} | " + " | ".join(_fmt(a, k, f) for k, _, f in cols) + " |")
    return "\n".join(lines) + "\n"


BIAS_COLS = [
    ("mse", "train MSE", "{:.1e}"),
    ("l1", "L1 norm", "{:.3f}"),
    ("l1_over_bp", "L1 / L1(BP)", "{:.3f}"),
    ("n_eff", "(L1/L2)^2", "{:.1f}"),
    ("dist_bp", "dist to BP", "{:.3f}"),
    ("dist_l2", "dist to min-L2", "{:.3f}"),
    ("dist_star", "dist to theta*", "{:.3f}"),
    ("support_topk", "support in top-k", "{:.2f}"),
    ("support_signs", "support signs right", "{:.2f}"),
    ("dist_pred", "dist to own flow limit", "{:.1e}"),
    ("steps", "steps", "{:.0f}"),
    ("converged", "converged", "{:.1f}"),
]
SIGN_COLS = [
    ("flips", "sign flips (all)", "{:.1f}"),
    ("support_flips", "flips on support", "{:.1f}"),
    ("first_flip_step", "first flip (step)", "{:.1f}"),
    ("wrong_sign_support", "support coords wrong at init", "{:.1f}"),
    ("wrong_fixed", "of which fixed", "{:.1f}"),
    ("fix_steps", "steps to fix (median)", "{:.0f}"),
    ("fix_time", "flow time to fix (median)", "{:.3g}"),
    ("flow_time", "flow time to converge", "{:.3g}"),
    ("gamma_kept", "gamma kept (m*w)", "{:.3f}"),
]
REF_COLS = [("l1", "L1 norm", "{:.3f}"), ("dist_bp", "dist to BP", "{:.3f}"), ("dist_l2", "dist to min-L2", "{:.3f}"),
            ("dist_star", "dist to theta*", "{:.3f}"), ("mse", "train MSE", "{:.1e}")]
FLOW_COLS = [("l1_over_bp", "L1 / L1(BP)", "{:.3f}"), ("dist_bp", "dist to BP", "{:.3f}"),
             ("support_topk", "support in top-k", "{:.2f}"), ("support_signs", "support signs right", "{:.2f}")]


def monotone_report(rows: list[dict], alphas) -> str:
    """Per consecutive pair of alphas: in how many seeds did the HAM limit's L1 norm
    (and distance to basis pursuit) not increase?"""
    order = sorted(alphas)
    seeds = sorted({r["seed"] for r in rows if r["kind"] == "ham"})
    value = {(r["seed"], r["method"]): r for r in rows}
    lines = []
    for key, label in (("l1", "L1 norm"), ("dist_bp", "distance to basis pursuit")):
        steps, whole = [], 0
        for seed in seeds:
            vals = [value[seed, f"ham_a={a:g}"][key] for a in order]
            whole += all(b <= a + 1e-9 for a, b in zip(vals, vals[1:]))
        for a, b in zip(order, order[1:]):
            count = sum(value[s, f"ham_a={b:g}"][key] <= value[s, f"ham_a={a:g}"][key] + 1e-9 for s in seeds)
            steps.append(f"{a:g}->{b:g}: {count}/{len(seeds)}")
        lines.append(f"- HAM {label} non-increasing in alpha, seeds per step: {', '.join(steps)}; over the whole grid: {whole}/{len(seeds)}")
    return "\n".join(lines) + "\n"


def write_csv(path, rows: list[dict]) -> None:
    """One column per key (in order of first appearance), one line per row; missing values blank."""
    keys: list = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    write_csv_rows(path, keys, [[r.get(k, "") for k in keys] for r in rows])


def render(args, argv: list[str], rows: list[dict], aggs: list[dict], flow_aggs: list[dict], wall: float) -> str:
    """table.md: the command, the settings, and every table of the experiment."""
    import torch

    runs = [a for a in aggs if not a["method"].startswith("ref:")]
    refs = [a | {"method": a["method"][4:]} for a in aggs if a["method"].startswith("ref:")]
    text = [
        "# Implicit bias: generated tables\n",
        "Command: `" + " ".join(["PYTHONPATH=. python scripts/implicit_bias.py", *argv]) + "`\n",
        f"Wall time: {wall:.1f} s (2 shared CPU cores, torch {torch.__version__}, 1 thread, float64)\n",
        f"n = {args.n}, d = {args.d}, k = {args.k}, seeds = {args.seeds}, theta0 ~ {args.init_scale:g} * N(0, 1), "
        f"c = {args.c:g}, tol = {args.tol:g}, max steps = {args.max_steps}, eps_zero = {args.eps_zero:g}. "
        "Mean ± std over seeds; (n=...) counts seeds where a value exists.\n",
        "## Reference solutions\n",
        _table(refs, REF_COLS, "reference"),
        "## Where each method converges\n",
        _table(runs, BIAS_COLS),
        monotone_report(rows, args.alphas),
        "## Sign dynamics\n",
        _table(runs, SIGN_COLS),
        "## Flow limits without training (argmin D_phi(theta, theta0) s.t. X theta = y)\n",
    ]
    for scale in args.pred_init_scales:
        text += [f"theta0 ~ {scale:g} * N(0, 1):\n",
                 _table([f for f in flow_aggs if f["init_scale"] == scale], FLOW_COLS)]
    return "\n".join(text)


def readings(rows: list[dict], aggs: list[dict]) -> dict:
    """readings.json: the figures results/implicit_bias/README.md quotes beyond table.md's cells."""
    trained = [r for r in rows if r["kind"] != "ref"]
    means = [a for a in aggs if not a["method"].startswith("ref:")]

    def worst(items: list[dict], key: str) -> dict:
        top = max(items, key=lambda item: item[key])
        return {"value": float(f"{top[key]:.6g}"), "method": top["method"], **({"seed": top["seed"]} if "seed" in top
                                                                              else {})}

    return {"generated_by": "scripts/implicit_bias.py", "runs": len(trained),
            "all_converged": all(r["converged"] == 1.0 for r in trained),
            "train_mse_max": worst(trained, "mse"),
            "dist_to_own_flow_limit": {"max_single_run": worst(trained, "dist_pred"),
                                       "max_of_seed_means": worst(means, "dist_pred"),
                                       "max_single_run_ham": worst([r for r in trained if r["kind"] == "ham"],
                                                                   "dist_pred")}}


def read_csv(path) -> list[dict]:
    """A CSV that ``write_csv`` wrote, with its numbers as numbers (blank cells dropped)."""
    with open(path, newline="") as handle:
        return [{k: value(v) for k, v in row.items() if v != ""} for row in csv.DictReader(handle)]
