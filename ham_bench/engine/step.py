"""One training step, in the one place that holds the hook order.

    record = train_step(model, optimizer, sparsifier, inputs, targets, step, criterion)

Order (the sparsifier contract, ``sparsifiers.base``)::

    zero_grad; forward; loss.backward()
    dense = copy of the masked tensors' gradients        if sparsifier.needs_dense_gradient(step)
    bookkeeper.begin(step)                               masks the optimizer applies itself this step
    sparsifier.mask_gradients()                          (skipping those)
    sparsifier.before_step(step, dense)
    bookkeeper.before_optimizer(stepped)                 masks and flip slots to the optimizer; fallback signs
    optimizer.step()                                     unless sparsifier.skips_optimizer_step(step)
        SAM (``optimizer.requires_closure``): step(closure), the closure runs
        forward + backward at the perturbed weights, then mask_gradients
    sparsifier.after_step(step)                          (re-masking what the optimizer did not)
    bookkeeper.end()                                     this step's sign flips per tracked weight

The bookkeeping (``engine.bookkeeper``) lets the optimizer's fused kernels mask
gradients and weights and count sign flips in the pass that updates the
weights, with an exact fallback for everything they do not cover. The
trainer, the tests and the benchmarks all call this function. It returns a
:class:`StepRecord`, what meters learn about the step; it never syncs with
the device (losses, logits and flip counts stay tensors).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from ham_bench.engine.bookkeeper import Bookkeeper


@dataclass
class StepRecord:
    """What happened in one training step."""

    step: int
    loss: torch.Tensor            # the first forward's mean loss (detached)
    logits: torch.Tensor          # the first forward's logits (detached, float)
    stepped: bool                 # the optimizer step ran
    passes: int                   # forward/backward passes (2 when SAM stepped)
    dense_gradient: bool          # a dense gradient of the masked tensors was taken
    masks: Mapping[str, torch.Tensor]  # the sparsifier's masks after the step
    sign_flips: torch.Tensor | None = None  # int64 per tracked weight: flips in this step (device)
    sign_flip_keys: tuple[str, ...] = ()    # the tracked weights (sparsifier.effective_weights() keys)


def _forward_loss(model, inputs, targets, criterion, autocast):
    with autocast():
        logits = model(inputs)
        return criterion(logits.float(), targets), logits


def train_step(model: nn.Module, optimizer, sparsifier, inputs: torch.Tensor, targets: torch.Tensor, step: int,
               criterion: Callable = nn.functional.cross_entropy,
               autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
               mark: Callable[[str], None] | None = None, bookkeeper: Bookkeeper | None = None) -> StepRecord:
    """One step on one batch (``model`` may be a DDP wrapper of the model the sparsifier is attached to).

    ``bookkeeper``: the run's ``Bookkeeper(sparsifier, optimizer)`` (made here, for this step, when not
    given). ``mark(phase)``, for benchmarks, is called at the end of each phase: ``forward_backward``,
    ``before_step`` (dense-gradient copy, gradient masking, before_step), ``optimizer_step``, ``after_step``.
    """
    bookkeeper = Bookkeeper(sparsifier, optimizer) if bookkeeper is None else bookkeeper
    optimizer.zero_grad(set_to_none=True)
    loss, logits = _forward_loss(model, inputs, targets, criterion, autocast)
    loss.backward()
    if mark is not None:
        mark("forward_backward")
    dense_gradient = sparsifier.needs_dense_gradient(step)
    dense = dense_gradients(sparsifier) if dense_gradient else None
    bookkeeper.begin(step)
    try:
        sparsifier.mask_gradients()
        sparsifier.before_step(step, dense)
        if mark is not None:
            mark("before_step")
        stepped = not sparsifier.skips_optimizer_step(step)
        bookkeeper.before_optimizer(stepped)
        passes = 1
        if stepped:
            if getattr(optimizer, "requires_closure", False):
                def closure():
                    with torch.enable_grad():
                        second, _ = _forward_loss(model, inputs, targets, criterion, autocast)
                        second.backward()
                    sparsifier.mask_gradients()
                    return second

                optimizer.step(closure)
                passes = 2
            else:
                optimizer.step()
        if mark is not None:
            mark("optimizer_step")
        sparsifier.after_step(step)
        flips = bookkeeper.end()
    finally:
        bookkeeper.finish()
    if mark is not None:
        mark("after_step")
    return StepRecord(step=step, loss=loss.detach(), logits=logits.detach(), stepped=stepped, passes=passes,
                      dense_gradient=dense_gradient, masks=sparsifier.masks(), sign_flips=flips,
                      sign_flip_keys=bookkeeper.keys)


@torch.no_grad()
def dense_gradients(sparsifier) -> dict[str, torch.Tensor]:
    """A copy of the full gradient of every tensor the sparsifier masks, taken before masking."""
    return {key: tensor.grad.detach().clone() for key, tensor in sparsifier.masked_tensors().items()
            if tensor.grad is not None}
