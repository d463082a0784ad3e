"""The experiment: every method on every seed, one row of metrics per (seed, method), and the flow-limit grid."""

from __future__ import annotations

import time

import numpy as np

from ham_bench.analysis.implicit_bias.flow import mirror_flow_limit
from ham_bench.analysis.implicit_bias.problem import Problem, make_problem
from ham_bench.analysis.implicit_bias.report import aggregate
from ham_bench.analysis.implicit_bias.training import RunResult, run_method


def solution_metrics(prob: Problem, th: np.ndarray) -> dict:
    k = len(prob.support)
    topk = np.sort(np.argsort(-np.abs(th))[:k])
    l1, l2 = float(np.abs(th).sum()), float(np.linalg.norm(th))
    return {
        "mse": float(np.mean((prob.X @ th - prob.y) ** 2)),
        "l1": l1,
        "l1_over_bp": l1 / float(np.abs(prob.theta_bp).sum()),
        "n_eff": (l1 / l2) ** 2 if l2 > 0 else 0.0,  # (L1/L2)^2: effective number of nonzeros
        "dist_bp": float(np.linalg.norm(th - prob.theta_bp)),
        "dist_l2": float(np.linalg.norm(th - prob.theta_l2)),
        "dist_star": float(np.linalg.norm(th - prob.theta_star)),
        "support_topk": float(np.isin(topk, prob.support).mean()),  # fraction of the support among the top-k |theta|
        "support_signs": float(np.mean(np.sign(th[prob.support]) == np.sign(prob.theta_star[prob.support]))),
    }


def run_metrics(prob: Problem, res: RunResult, pred: np.ndarray) -> dict:
    out = solution_metrics(prob, res.theta)
    wrong = np.sign(prob.theta0[prob.support]) != np.sign(prob.theta_star[prob.support])
    fixed = res.escape_step[wrong] >= 0
    out.update(
        {
            "dist_pred": float(np.linalg.norm(res.theta - pred)),
            "steps": res.steps,
            "converged": float(res.converged),
            "flow_time": res.flow_time,
            "flips": res.flips,
            "support_flips": res.support_flips,
            "first_flip_step": res.first_flip_step if res.first_flip_step >= 0 else float("nan"),
            "wrong_sign_support": int(wrong.sum()),
            "wrong_fixed": int(fixed.sum()),
            # medians over the wrong-signed support coordinates (nan when a seed has none or one never escapes)
            "fix_steps": float(np.median(res.escape_step[wrong])) if wrong.any() and fixed.all() else float("nan"),
            "fix_time": float(np.median(res.escape_time[wrong])) if wrong.any() and fixed.all() else float("nan"),
            "gamma_kept": res.gamma_kept,
        }
    )
    return out


# ---------------------------------------------------------------------- experiment


def method_list(alphas, mw_gammas):
    out = [("gd_zero", "gd", 0.0, True), ("gd", "gd", 0.0, False)]
    out += [(f"mw_gamma={g:g}", "mw", g, False) for g in mw_gammas]
    out += [(f"ham_a={a:g}", "ham", a, False) for a in alphas]
    return out


def run_experiment(args) -> tuple[list[dict], dict]:
    probs = [make_problem(args.n, args.d, args.k, seed, args.init_scale) for seed in args.seeds]
    rows, traces = [], {}
    for seed, prob in zip(args.seeds, probs):
        for name, th in (("basis pursuit", prob.theta_bp), ("min-L2", prob.theta_l2), ("theta*", prob.theta_star)):
            rows.append({"seed": seed, "method": f"ref:{name}", "kind": "ref", "param": float("nan")} | solution_metrics(prob, th))
    for name, kind, param, zero in method_list(args.alphas, args.mw_gammas):
        t0 = time.perf_counter()
        results = run_method(probs, kind, param, args.c, args.max_steps, args.tol, args.eps_zero, zero_init=zero)
        seconds = time.perf_counter() - t0
        traces[name] = results[0].trace
        for seed, prob, res in zip(args.seeds, probs, results):
            theta0 = np.zeros_like(prob.theta0) if zero else prob.theta0
            pred = mirror_flow_limit(prob.X, prob.y, theta0, kind, param)
            row = {"seed": seed, "method": name, "kind": kind, "param": param}
            row |= run_metrics(prob, res, pred)
            row["seconds_all_seeds"] = seconds
            rows.append(row)
        agg = aggregate([r for r in rows if r["method"] == name])[0]
        print(
            f"{name:>12s}: steps {agg['steps']:>8.0f} conv {agg['converged']:.2f} mse {agg['mse']:.1e} "
            f"L1/BP {agg['l1_over_bp']:.3f} dBP {agg['dist_bp']:.3f} dL2 {agg['dist_l2']:.3f} "
            f"dFlow {agg['dist_pred']:.1e} flips {agg['flips']:.1f} ({seconds:.1f}s, {len(probs)} seeds)",
            flush=True,
        )
    return rows, traces


def flow_limit_rows(args) -> list[dict]:
    """The mirror-flow limit (no training) over a wider grid and a smaller init."""
    rows = []
    for scale in args.pred_init_scales:
        probs = [make_problem(args.n, args.d, args.k, seed, scale) for seed in args.seeds]
        grid = [(f"ham_a={a:g}", "ham", a) for a in args.pred_alphas]
        grid += [(f"mw_gamma={g:g}", "mw", g) for g in args.pred_mw_gammas]
        for name, kind, param in grid:
            for seed, prob in zip(args.seeds, probs):
                th = mirror_flow_limit(prob.X, prob.y, prob.theta0, kind, param)
                rows.append({"seed": seed, "method": name, "init_scale": scale} | solution_metrics(prob, th))
    return rows
