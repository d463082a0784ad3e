"""ham-bench: a sparse-training benchmark framework around HAM (Hyperbolic Aware Minimization, ICLR 2026)."""

__version__ = "0.1.0"
