"""Full-batch training of GD, m*w and HAM on all seeds' problems at once, with the sign dynamics."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from ham_bench.analysis.implicit_bias.problem import Problem, mw_init
from ham_bench.optim import HAM


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
