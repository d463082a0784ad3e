"""Optimizers: HAM (Hyperbolic Aware Minimization, ICLR 2026), SAM (Foret et al., ICLR 2021), and the config factory.

    from ham_bench.optim import HAM, SAM, build_optimizer
    opt = HAM(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), alpha=200.0, beta=1e-3)
"""

from .factory import build_optimizer
from .ham import HAM
from .sam import SAM

__all__ = ["HAM", "SAM", "build_optimizer"]
