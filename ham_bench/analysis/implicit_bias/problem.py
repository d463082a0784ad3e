"""The underdetermined regression problem, its reference solutions and Sign-In's balanced m*w init."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linprog


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
