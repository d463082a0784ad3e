"""Sparsity methods for ham-bench: one module per method on a small common interface.

    from sparsifiers import build_sparsifier, available_sparsifiers
    sparsifier = build_sparsifier({"name": "rigl", "sparsity": 0.9})

See ``sparsifiers.base`` for the hooks the trainer calls and
``sparsifiers.registry`` for how third-party methods plug in.
"""

from sparsifiers.base import MaskedSparsifier, Sparsifier, TrainingContext, prunable_layers
from sparsifiers.optimizer_state import reset_entries, reset_state
from sparsifiers.registry import available_sparsifiers, build_sparsifier, register_sparsifier, sparsifier_class

__all__ = [
    "MaskedSparsifier",
    "Sparsifier",
    "TrainingContext",
    "available_sparsifiers",
    "build_sparsifier",
    "prunable_layers",
    "register_sparsifier",
    "sparsifier_class",
    "reset_entries",
    "reset_state",
]
