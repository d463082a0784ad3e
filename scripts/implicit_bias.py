"""Implicit bias of HAM on underdetermined linear regression (issue 6, theory experiment).

Checks two of the paper's qualitative claims (shared/design/paper_numbers.md):

3. As alpha grows, the interpolating solution HAM converges to moves from the
   minimum-L2 toward the minimum-L1 (basis pursuit) solution, and recovers a
   sparse ground truth better.
4. m*w over-parameterization with a small init scale stalls near zero (few
   sign flips); HAM does not (inverse metric 1 + alpha|theta| >= 1).

Problem (one per seed, float64, full batch)::

    X ~ N(0, 1)^{n x d},  theta* k-sparse (random support, random signs,
    magnitudes U[0.5, 1.5]),  y = X theta*  (noiseless),
    f(theta) = ||X theta - y||^2 / (2 n).

Methods. All start from the SAME small random theta0 = init_scale * N(0, 1),
except ``gd_zero``. HAM is multiplicative: a weight at exactly 0 never moves,
so HAM cannot start from 0; theta0 is small and nonzero for that reason, and
its random signs mean that about half of the true support starts with the
wrong sign and has to cross zero (where claim 4 is about).

- ``gd_zero``: plain GD (torch SGD) from theta = 0: the min-L2 solution.
- ``gd``: plain GD from theta0 (``ham_a=0`` must match it exactly).
- ``mw_gamma=G``: theta = m * w, plain GD on (m, w). Gradient flow conserves
  gamma = m^2 - w^2 per coordinate and gives d theta = -sqrt(gamma^2 +
  4 theta^2) grad dt: the inverse metric at theta = 0 is |gamma|. The init
  is Sign-In's balance formula (methods.md) at m * w = theta0:
  m = sqrt((G + sqrt(G^2 + 4 theta0^2)) / 2), w = theta0 / m. The init scale
  is |m| ~ max(sqrt(G), sqrt|theta0|): G << |theta0| is the small balanced
  init (|m| = |w| ~ 0.03, what gamma decays to without Sign-In's
  rebalancing); G ~ |theta0| is about what independent small random factors
  give; G = 1 is the large init (Sign-In's rebalanced value, |m| ~ 1).
- ``ham_a=A``: ``HAM(SGD([theta], lr), alpha=A, beta=0, variant="hyp_star",
  clamp=5)`` from ham_bench.optim; flow d theta = -(1 + A|theta|) grad dt.

Step size (a documented choice). Each step uses one scalar lr from the
current state::

    lr_k = c / (lambda_max(X diag(h) X^T / n) + kappa * max_i |g_i|)

h is the inverse metric (GD 1; HAM 1 + alpha|theta|; m*w m^2 + w^2, the
curvature of f(m*w) in (m, w)), kappa bounds the rest of the Jacobian of
the update (GD 0; HAM alpha, from d(alpha|theta| g)/d theta; m*w 2, the
(m, w) cross term g, doubled to keep gamma: each step multiplies m^2 - w^2 by
1 - lr^2 g^2). For GD this is lr = c / L. lambda_max is tracked by a
warm-started power iteration. A scalar lr only re-times the gradient flow,
so it does not move the point the flow converges to; c sets how closely the
discrete run follows the flow (the ``dist to flow limit`` column, O(c)).

Stopping: ||X theta - y|| / ||y|| <= tol, or max_steps (then ``converged`` 0).

References: basis pursuit min ||theta||_1 s.t. X theta = y via
scipy.optimize.linprog (HiGHS); min-L2 via the pseudo-inverse; and the
mirror-flow limit of each method, argmin_{X theta = y} D_phi(theta, theta0)
with phi'' = 1 / h (exact for these flows on least squares), by Newton on
the n-dim dual. The script also tabulates that flow limit over a wider alpha
grid and a smaller init, without training.

Sign flips: per step, coordinates whose sign changed with both sides nonzero
(methods.md). For the support coordinates that start with the wrong sign:
the step and the flow time (sum of lr) at which each first has the right sign
and |theta| >= eps_zero.

Run (defaults are the committed experiment)::

    PYTHONPATH=. python scripts/implicit_bias.py
    PYTHONPATH=. python scripts/implicit_bias.py --small --out /tmp/ib
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.optimize import linprog

from ham_bench.optim import HAM

# --------------------------------------------------------------------------- problem


@dataclass
class Problem:
    X: np.ndarray  # (n, d)
    y: np.ndarray  # (n,)
    theta_star: np.ndarray  # (d,)
    support: np.ndarray  # (k,) indices of theta_star's nonzeros, sorted
    theta0: np.ndarray  # (d,) the shared small init
    theta_bp: np.ndarray  # basis pursuit (min L1 interpolant)
    theta_l2: np.ndarray  # min-L2 interpolant


def make_problem(n: int, d: int, k: int, seed: int, init_scale: float) -> Problem:
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    support = np.sort(rng.choice(d, size=k, replace=False))
    theta_star = np.zeros(d)
    theta_star[support] = rng.choice([-1.0, 1.0], size=k) * rng.uniform(0.5, 1.5, size=k)
    y = X @ theta_star
    theta0 = init_scale * rng.standard_normal(d)
    return Problem(X, y, theta_star, support, theta0, basis_pursuit(X, y), np.linalg.pinv(X) @ y)


def basis_pursuit(X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """min ||theta||_1 s.t. X theta = y, as an LP in (u, v) >= 0, theta = u - v."""
    d = X.shape[1]
    res = linprog(np.ones(2 * d), A_eq=np.hstack([X, -X]), b_eq=y, bounds=(0, None), method="highs")
    if res.status != 0:
        raise RuntimeError(f"basis pursuit LP failed: {res.message}")
    return res.x[:d] - res.x[d:]


def mw_init(theta0: np.ndarray, gamma: float) -> tuple[np.ndarray, np.ndarray]:
    """Sign-In's balance: m * w = theta0 and m^2 - w^2 = gamma (> 0) in every coordinate."""
    m = np.sqrt((gamma + np.sqrt(gamma**2 + 4.0 * theta0**2)) / 2.0)
    return m, theta0 / m


# ----------------------------------------------------------------- mirror-flow limits


def _mirror_maps(kind: str, param):
    """(phi', (phi')^-1, phi*, h) elementwise, for phi'' = 1 / h."""
    if kind == "gd" or (kind == "ham" and param == 0):
        return (lambda t: t, lambda u: u, lambda u: 0.5 * u**2, lambda t: np.ones_like(t))
    if kind == "ham":
        a = param
        return (
            lambda t: np.sign(t) * np.log1p(a * np.abs(t)) / a,
            lambda u: np.sign(u) * np.expm1(a * np.abs(u)) / a,
            lambda u: (np.expm1(a * np.abs(u)) - a * np.abs(u)) / a**2,
            lambda t: 1.0 + a * np.abs(t),
        )
    if kind == "mw":
        g = param  # |gamma| per coordinate, conserved by the flow
        return (
            lambda t: 0.5 * np.arcsinh(2.0 * t / g),
            lambda u: 0.5 * g * np.sinh(2.0 * u),
            lambda u: 0.25 * g * (np.cosh(2.0 * u) - 1.0),
            lambda t: np.sqrt(g**2 + 4.0 * t**2),
        )
    raise ValueError(f"unknown kind {kind!r}")


def mirror_flow_limit(X, y, theta0, kind: str, param, iters: int = 300) -> np.ndarray:
    """Where d theta = -h(theta) grad f dt from theta0 converges on f = ||X theta - y||^2 / 2n:
    argmin_{X theta = y} D_phi(theta, theta0) with phi'' = 1 / h. Damped Newton
    on the dual min_lam sum phi*(phi'(theta0) + X^T lam) - lam^T y.
    param: alpha for ham, gamma = m^2 - w^2 (scalar or per coordinate) for mw."""
    grad_phi, inv, conj, h = _mirror_maps(kind, param)
    with np.errstate(over="ignore", invalid="ignore"):
        u0 = grad_phi(theta0)
        lam = np.zeros(X.shape[0])

        def dual(lam):
            return conj(u0 + X.T @ lam).sum() - lam @ y

        obj = dual(lam)
        for _ in range(iters):
            theta = inv(u0 + X.T @ lam)
            grad = X @ theta - y
            if np.linalg.norm(grad) <= 1e-12 * max(1.0, np.linalg.norm(y)):
                break
            hess = (X * h(theta)) @ X.T
            step = np.linalg.solve(hess + 1e-14 * np.trace(hess) * np.eye(len(lam)), grad)
            t = 1.0
            while t > 1e-12:
                cand = lam - t * step
                val = dual(cand)
                if np.isfinite(val) and val <= obj - 1e-4 * t * (grad @ step):
                    break
                t *= 0.5
            lam, obj = cand, val
        return inv(u0 + X.T @ lam)


# ------------------------------------------------------------------------- training


@dataclass
class RunResult:
    theta: np.ndarray
    steps: int
    converged: bool
    flow_time: float  # sum of lr: time of the underlying gradient flow
    flips: int  # sign changes (both sides nonzero), all coordinates, whole run
    support_flips: int  # the same, on the true support only
    first_flip_step: int  # -1 if none
    escape_step: np.ndarray  # per support coord: first step with the right sign and |theta| >= eps; -1 never
    escape_time: np.ndarray  # the same in flow time; inf never
    gamma_kept: float  # m*w: median over coordinates of gamma_end / gamma_0 (nan otherwise)
    trace: dict = field(default_factory=dict)  # first problem only: log-spaced steps, flow times, thetas


class CurvatureTracker:
    """lambda_max(X diag(h) X^T / n) per problem by power iteration, warm-started
    from the previous step's vector (h changes little per step, so one
    iteration a step tracks it)."""

    def __init__(self, X: np.ndarray, h: np.ndarray, warmup: int = 100):
        self.X, self.Xt = X, X.transpose(0, 2, 1)  # (S, n, d), (S, d, n)
        self.v = np.ones(X.shape[:2]) / math.sqrt(X.shape[1])
        self.estimate(h, iters=warmup)

    def estimate(self, h: np.ndarray, iters: int = 1) -> np.ndarray:
        n = self.X.shape[1]
        for _ in range(iters):
            u = (self.X @ ((self.Xt @ self.v[:, :, None])[:, :, 0] * h)[:, :, None])[:, :, 0] / n
            lam = np.einsum("sn,sn->s", self.v, u)
            self.v = u / np.sqrt(np.einsum("sn,sn->s", u, u))[:, None]
        return lam


def run_method(
    probs: list[Problem],
    kind: str,
    param: float,
    c: float,
    max_steps: int,
    tol: float,
    eps_zero: float,
    zero_init: bool = False,
) -> list[RunResult]:
    """Full-batch training of one method on all problems (seeds) at once.

    param: alpha (ham) or gamma (mw). The problems share one (S, d)
    weight tensor and one scalar lr per step, the smallest of their step-size
    rules among problems not yet converged (a scalar step re-times each flow,
    and every update is elementwise, so problems do not interact). A problem's
    result is taken at the step it reaches the tolerance."""
    X = np.stack([p.X for p in probs])  # (S, n, d)
    Xt = X.transpose(0, 2, 1)
    y = np.stack([p.y for p in probs])
    S, n, d = X.shape
    theta0 = np.zeros((S, d)) if zero_init else np.stack([p.theta0 for p in probs])
    y_norm = np.linalg.norm(y, axis=1)
    support = np.stack([p.support for p in probs])
    rows = np.arange(S)[:, None]
    target_sign = np.sign(np.stack([p.theta_star[p.support] for p in probs]))

    if kind == "mw":
        m, w = mw_init(theta0, param)
        gamma0 = m**2 - w**2
        kappa = 2.0
    else:
        # theta is an (S, d) weight matrix: HAM covers it like a linear layer's weight.
        theta = torch.from_numpy(theta0.copy())
        theta.grad = torch.zeros_like(theta)
        grad_np = theta.grad.numpy()
        opt_base = torch.optim.SGD([theta], lr=0.0)
        opt = HAM(opt_base, alpha=param, beta=0.0, variant="hyp_star", clamp=5.0) if kind == "ham" else opt_base
        kappa = float(param) if kind == "ham" else 0.0

    checkpoints = set(np.unique(np.geomspace(1, max_steps, 150).astype(int)).tolist()) | {0}
    trace = {"steps": [], "time": [], "theta": []}
    flips = np.zeros(S, dtype=np.int64)
    support_flips = np.zeros(S, dtype=np.int64)
    first_flip = np.full(S, -1)
    flow_time = np.zeros(S)
    escape = np.full(support.shape, -1)
    escape_time = np.full(support.shape, np.inf)
    done = np.zeros(S, dtype=bool)
    converged = np.zeros(S, dtype=bool)
    steps = np.zeros(S, dtype=np.int64)
    final = np.zeros((S, d))
    gamma_kept = np.full(S, np.nan)
    curvature = None
    step = 0
    th = theta0.copy()
    while True:
        resid = (X @ th[:, :, None])[:, :, 0] - y
        rel = np.sqrt(np.einsum("sn,sn->s", resid, resid)) / y_norm
        s_vals = th[rows, support]
        ok = (np.sign(s_vals) == target_sign) & (np.abs(s_vals) >= eps_zero) & (escape < 0) & ~done[:, None]
        escape[ok] = step
        if ok.any():
            escape_time[ok] = (flow_time[:, None] + np.zeros_like(escape_time))[ok]
        if not done[0] and step in checkpoints:
            trace["steps"].append(step), trace["time"].append(flow_time[0]), trace["theta"].append(th[0].copy())
        finished = ~done & ((rel <= tol) | ~np.isfinite(rel) | (step >= max_steps))
        if finished.any():
            converged[finished] = rel[finished] <= tol
            steps[finished] = step
            final[finished] = th[finished]
            if kind == "mw":
                gamma_kept[finished] = np.median((m**2 - w**2)[finished] / gamma0[finished], axis=1)
            if finished[0] and (not trace["steps"] or trace["steps"][-1] != step):
                trace["steps"].append(step), trace["time"].append(flow_time[0]), trace["theta"].append(th[0].copy())
            done |= finished
            if done.all():
                break
        active = ~done
        g = (Xt @ resid[:, :, None])[:, :, 0] / n
        if kind == "gd":
            h = np.ones_like(th)
        elif kind == "ham":
            h = 1.0 + param * np.abs(th)
        else:
            h = m * m + w * w
        if curvature is None:
            curvature = CurvatureTracker(X, h)
        bound = curvature.estimate(h) + kappa * np.abs(g).max(axis=1)
        lr = c / float(bound[active].max())
        if kind == "mw":  # plain GD on (m, w)
            m, w = m - lr * g * w, w - lr * g * m
            new = m * w
        else:
            opt_base.param_groups[0]["lr"] = lr  # HAM reads the base optimizer's groups
            grad_np[:] = g
            opt.step()
            new = theta.detach().numpy().copy()
        flow_time[active] += lr
        changed = new * th < 0
        flipped = changed.sum(axis=1)
        first_flip[active & (flipped > 0) & (first_flip < 0)] = step + 1
        flips[active] += flipped[active]
        support_flips[active] += changed[rows, support].sum(axis=1)[active]
        th = new
        step += 1
    trace = {key: np.array(val) for key, val in trace.items()}
    return [
        RunResult(
            theta=final[i],
            steps=int(steps[i]),
            converged=bool(converged[i]),
            flow_time=float(flow_time[i]),
            flips=int(flips[i]),
            support_flips=int(support_flips[i]),
            first_flip_step=int(first_flip[i]),
            escape_step=escape[i],
            escape_time=escape_time[i],
            gamma_kept=float(gamma_kept[i]),
            trace=trace if i == 0 else {},
        )
        for i in range(S)
    ]


# ------------------------------------------------------------------------- metrics


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


# ------------------------------------------------------------------------- reporting


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


def _replace(tmp: str, path: str) -> None:
    os.chmod(tmp, 0o644)  # mkstemp creates 0600
    os.replace(tmp, path)


def _atomic_write(path: str, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    _replace(tmp, path)


def write_csv(path: str, rows: list[dict]) -> None:
    keys: list = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", suffix=".tmp")
    with os.fdopen(fd, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
    _replace(tmp, path)


def plot(path: str, aggs: list[dict], flow_aggs: list[dict], traces: dict, prob: Problem, args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by = {a["method"]: a for a in aggs}
    alphas = sorted(args.alphas)
    ham = [by[f"ham_a={a:g}"] for a in alphas]
    xs = [max(a, 0.1) for a in alphas]  # alpha = 0 drawn at 0.1 on the log axis
    fig, ax = plt.subplots(2, 3, figsize=(18, 10))

    a = ax[0, 0]
    a.errorbar(xs, [h["l1_over_bp"] for h in ham], [h["l1_over_bp_std"] for h in ham], marker="o", lw=2, label="HAM (trained)")
    a.axhline(1.0, color="g", ls="--", label="basis pursuit (min L1)")
    a.axhline(by["ref:min-L2"]["l1_over_bp"], color="r", ls="--", label="min-L2")
    for i, g in enumerate(args.mw_gammas):
        a.axhline(by[f"mw_gamma={g:g}"]["l1_over_bp"], ls="-.", lw=1, color=f"C{i + 1}", label=f"m*w, gamma {g:g}")
    a.set(xscale="log", xlabel="alpha (0 drawn at 0.1)", ylabel="L1 norm / basis-pursuit L1 (mean ± std)",
          title="L2 -> L1: L1 norm of the interpolant reached")
    a.legend(fontsize=8)

    a = ax[0, 1]
    for key, label in (("dist_bp", "to basis pursuit (= theta* here)"), ("dist_l2", "to min-L2"), ("dist_pred", "to its own flow limit")):
        a.errorbar(xs, [h[key] for h in ham], [h[key + "_std"] for h in ham], marker="o", label=label)
    a.set(xscale="log", yscale="log", xlabel="alpha (0 drawn at 0.1)", ylabel="L2 distance", title="HAM limit: distances")
    a.legend(fontsize=8)

    a = ax[0, 2]
    for i, scale in enumerate(args.pred_init_scales):
        pts = [f for f in flow_aggs if f["init_scale"] == scale and f["method"].startswith("ham_a=")]
        px = [max(float(f["method"][6:]), 0.1) for f in pts]
        a.errorbar(px, [f["l1_over_bp"] for f in pts], [f["l1_over_bp_std"] for f in pts], marker="s", color=f"C{i}", label=f"HAM flow limit, init {scale:g}")
        pts = [f for f in flow_aggs if f["init_scale"] == scale and f["method"].startswith("mw_gamma=")]
        # sqrt(gamma^2 + 4 theta^2) ~ gamma (1 + (2 / gamma)|theta|): m*w at gamma is HAM at alpha ~ 2 / gamma, re-timed
        px = [2.0 / float(f["method"][9:]) for f in pts]
        a.plot(px, [f["l1_over_bp"] for f in pts], "x--", color=f"C{i}", label=f"m*w flow limit, init {scale:g} (x = 2/gamma)")
    a.axhline(1.0, color="g", ls="--")
    a.set(xscale="log", xlabel="alpha (HAM) or 2/gamma (m*w)", ylabel="L1 / basis-pursuit L1",
          title="flow limits without training (mean ± std over seeds)")
    a.legend(fontsize=8)

    wrong = prob.support[np.sign(prob.theta0[prob.support]) != np.sign(prob.theta_star[prob.support])]
    idx = wrong[0] if len(wrong) else prob.support[0]
    names = ["gd"] + [f"mw_gamma={g:g}" for g in args.mw_gammas] + [f"ham_a={a:g}" for a in alphas if a >= 10]
    for col, (xkey, xlabel) in enumerate((("steps", "step + 1"), ("time", "flow time = sum of lr (0 drawn at 1e-6)"))):
        a = ax[1, col]
        for i, name in enumerate(names):
            tr = traces[name]
            x = tr[xkey] + 1 if xkey == "steps" else np.maximum(tr[xkey], 1e-6)
            a.plot(x, tr["theta"][:, idx] * np.sign(prob.theta_star[idx]), color=f"C{i}", label=name)
        a.axhline(0, color="k", lw=0.5)
        a.set(xscale="log", yscale="symlog", xlabel=xlabel, ylabel="theta_i * sign(theta*_i)",
              title=f"a support coordinate that starts with the wrong sign (seed {args.seeds[0]}, i = {idx})")
        a.set_yscale("symlog", linthresh=1e-4)
        a.legend(fontsize=7)

    a = ax[1, 2]
    meth = [x for x in aggs if not x["method"].startswith("ref:")]
    pos = np.arange(len(meth))
    a.bar(pos - 0.2, [x["flips"] for x in meth], 0.4, yerr=[x["flips_std"] for x in meth], label="all coordinates")
    a.bar(pos + 0.2, [x["support_flips"] for x in meth], 0.4, yerr=[x["support_flips_std"] for x in meth], label="true support")
    a.set_xticks(pos)
    a.set_xticklabels([x["method"] for x in meth], rotation=45, ha="right", fontsize=8)
    a.set(ylabel="sign flips over the run", title="sign flips (mean ± std over seeds)")
    a.legend(fontsize=8)
    fig.tight_layout()
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", suffix=".png")
    os.close(fd)
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    _replace(tmp, path)


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
    p.add_argument("--c", type=float, default=0.25, help="step-size factor (module docstring)")
    p.add_argument("--max-steps", type=int, default=300_000)
    p.add_argument("--tol", type=float, default=1e-7, help="stop at ||X theta - y|| / ||y|| <= tol")
    p.add_argument("--eps-zero", type=float, default=1e-2, help="a coordinate counts as escaped from zero at |theta| >= this")
    p.add_argument("--pred-alphas", type=float, nargs="+", default=[0, 1, 10, 100, 1e3, 1e4, 1e5, 1e6], help="flow-limit table (no training)")
    p.add_argument("--pred-mw-gammas", type=float, nargs="+", default=[1e-8, 1e-6, 1e-4, 1e-3, 1e-2, 1.0])
    p.add_argument("--pred-init-scales", type=float, nargs="+", default=[1e-3, 1e-6])
    p.add_argument("--out", default="results/implicit_bias", help="output directory")
    p.add_argument("--small", action="store_true", help="reduced size for tests; explicit flags still win: " + str(SMALL))
    p.add_argument("--no-plot", action="store_true")
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--small" in argv:
        p.set_defaults(**SMALL)
    args = p.parse_args(argv)
    if min(args.mw_gammas) <= 0:
        p.error("--mw-gammas must be > 0 (gamma = m^2 - w^2 of the balanced init)")
    if args.n >= args.d or not 0 < args.k < args.n:
        p.error(f"need k < n < d for an underdetermined problem with a recoverable sparse truth (got n={args.n}, d={args.d}, k={args.k})")
    return args, argv


def main(argv=None) -> int:
    args, argv = parse_args(argv)
    torch.set_num_threads(1)
    os.makedirs(args.out, exist_ok=True)
    t0 = time.perf_counter()
    rows, traces = run_experiment(args)
    flow_rows = flow_limit_rows(args)
    wall = time.perf_counter() - t0
    aggs = aggregate(rows)
    flow_aggs = aggregate(flow_rows, keys=("init_scale", "method"))
    write_csv(os.path.join(args.out, "runs.csv"), rows)
    write_csv(os.path.join(args.out, "summary.csv"), aggs)
    write_csv(os.path.join(args.out, "flow_limits.csv"), flow_aggs)
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
        text += [f"theta0 ~ {scale:g} * N(0, 1):\n", _table([f for f in flow_aggs if f["init_scale"] == scale], FLOW_COLS)]
    _atomic_write(os.path.join(args.out, "table.md"), "\n".join(text))
    if not args.no_plot:
        plot(os.path.join(args.out, "implicit_bias.png"), aggs, flow_aggs, traces, make_problem(args.n, args.d, args.k, args.seeds[0], args.init_scale), args)
    print("\n".join(text))
    return 0


if __name__ == "__main__":
    sys.exit(main())
