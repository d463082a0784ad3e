"""Optimizers: HAM (Hyperbolic Aware Minimization, ICLR 2026), SAM (Foret et al., ICLR 2021), and the config factory.

    from ham_bench.optim import HAM, SAM, build_optimizer
    opt = HAM(torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9), alpha=20.0, beta=1e-3)
"""

from .factory import build_optimizer
from .ham import HAM, HAMDivergenceWarning
from .sam import SAM

__all__ = ["HAM", "HAMDivergenceWarning", "SAM", "build_optimizer"]
