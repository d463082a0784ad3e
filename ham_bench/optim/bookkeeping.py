"""Bookkeeping an optimizer can do inside the kernels that update the weights: masks and sign-flip counts.

A training engine that keeps masked weights at zero and counts sign flips
would otherwise pay passes of its own over every weight, every step:
masking the gradients after backward, re-masking the weights after the step,
and comparing each weight's sign before and after. The fused kernels of
:class:`ham_bench.optim.HAM` and :class:`ham_bench.optim.FusedOptimizer` read the
gradient and the old weight and write the new weight anyway, so they do all
three in the same pass. The engine hands them, as plain data, for one step:

    optimizer.bookkeeping_params()          # which params the next step can take (after backward)
    optimizer.set_bookkeeping(StepBookkeeping(masks={p: bool mask}, flips={p: int64 slot}))
    optimizer.step()

``masks[p]``: the step treats the gradient of ``p`` as 0 where the mask is
False and leaves ``p`` exactly 0 there (any layout; the kernels use a copy in
``p``'s layout, cached per mask object and version). ``flips[p]``: a 1-element
int64 tensor the step adds to the number of weights of ``p`` whose sign went
from + to - or - to + in this step (both nonzero: pruning to zero or growth
from zero is not a flip). Nothing is kept per weight, and nothing syncs.
The optimizer knows nothing of sparsifiers; without ``set_bookkeeping`` (e.g.
HAM in your own loop) a step does none of it.

A param handed over whose step cannot run in a fused kernel after all (a
failed compile, a changed layout) gets the same bookkeeping from
:func:`around`, the exact fallback: masked gradient before the step, signs
before, re-masked weight and counted flips after.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

__all__ = ["StepBookkeeping", "around", "masked_gradients", "sign_flips", "signs"]


@dataclass
class StepBookkeeping:
    """Masks to enforce and flip slots to add to, for one optimizer step (see the module docstring)."""

    masks: dict[Tensor, Tensor] = field(default_factory=dict)
    flips: dict[Tensor, Tensor] = field(default_factory=dict)

    def params(self) -> set[Tensor]:
        return set(self.masks) | set(self.flips)


def signs(t: Tensor) -> Tensor:
    """int8 signs (-1, 0, +1) in ``t``'s layout."""
    return torch.sign(t.detach()).to(torch.int8)


def sign_flips(before: Tensor, after: Tensor) -> Tensor:
    """How many entries changed sign between ``before`` (int8 signs) and ``after`` (both nonzero): a device scalar."""
    return ((before * signs(after)) < 0).sum()


@torch.no_grad()
def around(book: StepBookkeeping, params: Iterable[Tensor], run: Callable[[], Any]) -> Any:
    """``run()`` (a step that updates ``params``) with ``book``'s bookkeeping for them done by torch ops."""
    params = [p for p in params if p in book.masks or p in book.flips]
    for p in params:
        mask = book.masks.get(p)
        if mask is not None and p.grad is not None:
            p.grad.mul_(mask)
    before = {p: signs(p) for p in params if p in book.flips}
    result = run()
    for p in params:
        mask = book.masks.get(p)
        if mask is not None:
            p.mul_(mask)
        if p in before:
            book.flips[p].add_(sign_flips(before[p], p))
    return result


def masked_gradients(book: StepBookkeeping, closure: Callable[[], Any]) -> Callable[[], Any]:
    """``closure`` (forward + backward) followed by masking the gradients of ``book``'s masked params: for a
    base that makes its own gradients (SAM's perturbed pass)."""
    def run():
        loss = closure()
        with torch.no_grad():
            for p, mask in book.masks.items():
                if p.grad is not None:
                    p.grad.mul_(mask)
        return loss

    return run
