"""Where each method's gradient flow converges: argmin D_phi(theta, theta0) s.t. X theta = y, phi'' = 1 / h."""

from __future__ import annotations

import numpy as np


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
