"""A torch optimizer whose step takes the training engine's bookkeeping into fused kernels, with HAM off.

``FusedOptimizer(torch.optim.SGD(...))`` is what the factory builds when HAM is
off: the base optimizer, unchanged for every parameter nobody asks about, while
the params the engine hands masks and sign-flip slots for
(``bookkeeping.StepBookkeeping``) are updated by the same one-pass kernels as
HAM's (``ham_fused``: torch SGD / Adam / AdamW math without HAM's factor; SGD
bit for bit torch's on CPU, Adam(W) up to float32 rounding), which also mask
and count. A HAM-off baseline thus pays for its
bookkeeping exactly what a HAM run pays, i.e. nothing beyond the step. Its
``param_groups``, ``state`` and ``defaults`` are the base's own objects
(``wrapper.WrappedOptimizer``); ``state_dict()`` is the base's plus an empty
``"fused"`` entry, and it loads a plain base state dict too.
"""

from __future__ import annotations

import math

import torch
from torch.optim import Optimizer
from torch.utils.weak import WeakIdKeyDictionary

from .ham_foreach import AfterBaseSteps
from .ham_fused import FUSABLE, FusedSteps
from .wrapper import WrappedOptimizer

__all__ = ["FusedOptimizer", "IMPLEMENTATIONS"]

IMPLEMENTATIONS = ("auto", "compiled", "foreach")


class FusedOptimizer(FusedSteps, AfterBaseSteps, WrappedOptimizer):
    """The base optimizer, with the engine's bookkeeping fused into its update of the params handed over.

    ``implementation``: ``"auto"`` (compiled kernels; the plain base step with the bookkeeping done by torch
    ops if compiling fails), ``"compiled"`` (a failed compile raises) or ``"foreach"`` (no kernels: the engine
    does the bookkeeping itself, ``bookkeeping_params()`` is empty).
    """

    variant = "hyp_star"  # the kernels' sign convention; without HAM's factor it changes nothing
    clamp = math.inf
    _state_key = "fused"

    def __init__(self, optimizer: Optimizer, implementation: str = "auto"):
        self._init_fused(optimizer, implementation)
        self.diagnostics_enabled = False

    def _init_fused(self, optimizer: Optimizer, implementation: str) -> None:
        name = type(self).__name__
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"{name}: optimizer must be a torch.optim.Optimizer instance, e.g. "
                            f"{name}(torch.optim.SGD(model.parameters(), lr=0.1)); got {type(optimizer).__name__}")
        if isinstance(optimizer, FusedOptimizer):
            raise TypeError(f"{name}: optimizer is already wrapped in {type(optimizer).__name__}")
        if implementation not in IMPLEMENTATIONS:
            raise ValueError(f"{name}: implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}")
        self.base_optimizer = optimizer
        self.implementation = implementation
        self._fusable = FUSABLE.get(type(optimizer))
        self._compile_failed = False
        self._reset_caches()
        self._diag_count = 0
        self._diag_steps = 0
        self._init_wrapper()

    def _reset_caches(self) -> None:
        self._book = None
        self._layout_masks: dict = {}  # param -> (mask, its _version, the mask in the param's layout)
        self._adam_steps = WeakIdKeyDictionary()  # Adam's step tensor -> (its _version, the count)

    def __getstate__(self):
        state = super().__getstate__()
        for key in ("_book", "_layout_masks", "_adam_steps"):  # caches: rebuilt empty after unpickling
            state.pop(key, None)
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        self._reset_caches()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(implementation={self.implementation!r})\nbase: {self.base_optimizer!r}"

    def _covered_by_group(self) -> list:
        return []  # no HAM factor anywhere

    def _accumulator(self, device: torch.device) -> None:
        return None

    @torch.no_grad()
    def step(self, closure=None):
        """The base step; the params handed over with ``set_bookkeeping`` in fused kernels. Returns the loss."""
        return self._fused_step(closure)

    def _fused_step(self, closure):
        # not step(): torch wraps each class's step() in its hook runner, so subclasses must not call it
        if self._use_compiled():
            return self._step_compiled(closure)
        return self._step_foreach(closure, book=self._take_book())
