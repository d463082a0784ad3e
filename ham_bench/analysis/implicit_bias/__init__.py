"""Implicit bias of HAM on underdetermined linear regression (issue 6, theory experiment).

Checks two of the paper's qualitative claims (docs/paper_numbers.md):

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
  is Sign-In's balance formula (docs/methods.md) at m * w = theta0:
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
(docs/methods.md). For the support coordinates that start with the wrong sign:
the step and the flow time (sum of lr) at which each first has the right sign
and |theta| >= eps_zero.

Modules: ``problem`` (the regression problem, basis pursuit, the m*w init), ``flow``
(mirror-flow limits), ``training`` (the runs), ``experiment`` (metrics per run and the grid),
``report`` (aggregation over seeds and the tables), ``plot`` (the figure). The command line is
``scripts/implicit_bias.py``.
"""
