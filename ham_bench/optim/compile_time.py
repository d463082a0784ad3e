"""Seconds spent compiling HAM's kernels in this process, so throughput can be reported without them.

HAM's compiled path (``ham_fused._warm``) compiles its kernels with
``torch.compile`` on the first step that needs each variant: ~10-60 s on a
small CPU, all inside epoch 1. The trainer reads :func:`total` around each
epoch and reports the difference as the row's ``compile_seconds``;
``samples_per_second`` excludes it.
"""

from __future__ import annotations

_TOTAL = [0.0]


def total() -> float:
    """Seconds spent compiling so far in this process."""
    return _TOTAL[0]


def add(seconds: float) -> None:
    """Count ``seconds`` of compilation (``ham_fused._warm``, once per kernel variant)."""
    _TOTAL[0] += float(seconds)
