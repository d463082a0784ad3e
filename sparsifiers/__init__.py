"""Sparsity methods for ham-bench: one module per method on a small common core.

    from sparsifiers import build_sparsifier, available_sparsifiers
    sparsifier = build_sparsifier({"name": "rigl", "sparsity": 0.9})

``sparsifiers.base`` is the contract (the hooks, when each runs, the declared
properties), ``sparsifiers.masked`` the machinery of masked methods,
``sparsifiers.masks`` the exact-count top-k (unstructured and N:M),
``sparsifiers.selection`` the layer selection, ``sparsifiers.optimizer_state``
what a method may do to optimizer state, and ``sparsifiers.registry`` how
third-party methods plug in. Shared by families of methods:
``sparsifiers.budget`` (exact-count masks over global / per-layer / N:M
units: SNIP, SynFlow, GMP, IMP, LRR, CS), ``sparsifiers.pai`` (pruning at
initialization), ``sparsifiers.dst`` (the one DST update path of RigL, SET,
MEST), ``sparsifiers.rounds`` (rounds inside one run: IMP, LRR, CS) and
``sparsifiers.reparameterization`` (computed weights: STR, Sign-In, PILoT,
CS, spred).
"""

from sparsifiers.base import Sparsifier, TrainingContext, sparsity_report
from sparsifiers.config import ConfigError
from sparsifiers.masked import MaskedSparsifier, MaskedTensors
from sparsifiers.masks import global_topk_masks, layer_topk_masks, topk_mask
from sparsifiers.optimizer_state import reset_entries, reset_state
from sparsifiers.registry import available_sparsifiers, build_sparsifier, register_sparsifier, sparsifier_class
from sparsifiers.selection import LayerSelection, prunable_layers

__all__ = [
    "ConfigError",
    "LayerSelection",
    "MaskedSparsifier",
    "MaskedTensors",
    "Sparsifier",
    "TrainingContext",
    "available_sparsifiers",
    "build_sparsifier",
    "global_topk_masks",
    "layer_topk_masks",
    "prunable_layers",
    "register_sparsifier",
    "reset_entries",
    "reset_state",
    "sparsifier_class",
    "sparsity_report",
    "topk_mask",
]
