"""Optimizers: HAM (Hyperbolic Aware Minimization, ICLR 2026), SAM (Foret et al., ICLR 2021), and the config factory.

    from ham_bench.optim import HAM, SAM, build_optimizer
    opt = HAM(torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9), alpha=20.0, beta=1e-3)

Modules: ``ham`` (the class), ``ham_groups`` (coverage, per-group settings),
``ham_foreach`` (HAM after the base's own step), ``ham_fused`` (the compiled
path: base update and HAM in one pass), ``ham_kernels`` / ``kernel_cache``
(the kernels and their compilation), ``ham_diagnostics``, ``divergence``
(``HAMDivergenceWarning``), ``exempt`` (timm's ``no_weight_decay``),
``bookkeeping`` (masks and sign flips a training engine hands the fused
kernels), ``fused`` (``FusedOptimizer``: that bookkeeping with HAM off),
``sam``, ``wrapper``, ``factory``.
"""

from .factory import build_optimizer
from .fused import FusedOptimizer
from .ham import HAM, HAMDivergenceWarning
from .sam import SAM

__all__ = ["FusedOptimizer", "HAM", "HAMDivergenceWarning", "SAM", "build_optimizer"]
