"""ham-bench: a sparse-training benchmark framework around HAM (Hyperbolic Aware Minimization, ICLR 2026)."""

__version__ = "0.1.0"


def _quiet_cuda_home_warning() -> None:
    """Drop torch's "No CUDA runtime is found, using CUDA_HOME=..." log line.

    ``torch.utils.cpp_extension`` logs it when imported (``torch.compile``
    does, for HAM's kernels) on a machine with a CUDA toolkit but no GPU: on
    CPU it says nothing a run needs. Only that message is dropped.
    """
    import logging

    class _Drop(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return not str(record.msg).startswith("No CUDA runtime is found")

    logger = logging.getLogger("torch.utils.cpp_extension")
    if not any(type(f).__name__ == "_Drop" for f in logger.filters):
        logger.addFilter(_Drop())


_quiet_cuda_home_warning()
