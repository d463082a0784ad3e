"""The engine's bookkeeping in one training step: masks handed to the optimizer, sign flips counted.

``train_step`` calls, at their places in the hook order (``engine.step``)::

    begin(step)                after backward, before mask_gradients: which masked tensors the optimizer
                               takes this step (``optimizer.bookkeeping_params()`` and
                               ``sparsifier.optimizer_masks()``); the sparsifier's
                               ``masks_applied_by_optimizer`` names them, so that its own gradient
                               masking and re-masking skip them
    before_optimizer(stepped)  after before_step: hands the optimizer those masks as they are now
                               (before_step may have changed them) and a flip slot for every tracked
                               weight its kernels update (``ham_bench.optim.bookkeeping``); takes the
                               signs of the other tracked weights (the fallback)
    end()                      after after_step: the fallback's flip counts, the check of declared mask
                               changes; returns this step's flips per tracked weight (int64, on device)

Tracked weights: ``sparsifier.effective_weights()`` (every selected conv/linear layer's forward
weight), in that order (``keys``). A flip: a tracked weight's sign went from + to - or - to + between
consecutive steps (both nonzero: pruning to zero and growth from zero are not flips); a step whose
``after_step`` restores old weights (``sparsifier.rewinds_weights(step)``, IMP) counts none, and the
restored signs are the next step's reference. Where counted:

* inside the optimizer's kernel, which compares each weight before and after its update, for a
  tracked weight that is itself a parameter the optimizer step updates in a fused kernel, when the
  method does not reparameterize weights and does not declare ``changes_masks_after_step(step)``
  (a weight pruned after its update would be counted there);
* otherwise (the exact fallback: m * w and soft-threshold weights, bases the kernels cannot fuse,
  optimizers without bookkeeping, skipped optimizer steps, declared steps), from the signs of the
  effective weights taken right before the optimizer step, compared after ``after_step``.

Both compare the same two states because, between ``after_step`` of one step and the optimizer step
of the next, a method's hooks zero weights, grow them from zero or rescale them (Sign-In's
re-balancing), but never turn the sign of a nonzero weight: the sign before the optimizer step is,
for flips, the sign after the previous step. Nothing is kept per weight and nothing syncs.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ham_bench.metrics.topology import mask_seen, mask_unchanged
from ham_bench.optim.bookkeeping import StepBookkeeping, sign_flips, signs

__all__ = ["Bookkeeper"]


def _storage(t: Tensor) -> tuple:
    return t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride()


class Bookkeeper:
    """One run's step bookkeeping (module docstring); build it once, after the optimizer is bound."""

    def __init__(self, sparsifier, optimizer):
        self.sparsifier = sparsifier
        self.optimizer = optimizer
        weights = sparsifier.effective_weights()
        self.keys = tuple(weights)
        self.device = next(iter(weights.values())).device if weights else torch.device("cpu")
        params = {_storage(p): p for group in optimizer.param_groups for p in group["params"]}
        # the parameter each tracked weight IS (none for computed weights, m * w, soft thresholds)
        self.params = ({} if sparsifier.reparameterizes_weights
                       else {key: params[_storage(w)] for key, w in weights.items() if _storage(w) in params})
        self.supported = callable(getattr(optimizer, "bookkeeping_params", None))
        self._indices: dict[tuple[int, ...], Tensor] = {}
        self._clear()

    def _clear(self) -> None:
        self.handed: frozenset[str] = frozenset()
        self.in_kernel: dict[int, Tensor] = {}
        self.declared = False
        self.rewinds = False
        self.before: dict[int, Tensor] = {}
        self.seen: dict | None = None
        self.flips: Tensor | None = None

    # ---- the step ---------------------------------------------------------------------------
    def begin(self, step: int) -> None:
        sparsifier = self.sparsifier
        self.step = step
        fused = frozenset()
        if self.supported and not sparsifier.skips_optimizer_step(step):
            fused = self.optimizer.bookkeeping_params()
        self.handed = frozenset(key for key, (tensor, _) in sparsifier.optimizer_masks().items() if tensor in fused)
        sparsifier.masks_applied_by_optimizer = dict.fromkeys(self.handed)  # mask_gradients skips them
        self.declared = sparsifier.changes_masks_after_step(step)
        self.rewinds = sparsifier.rewinds_weights(step)  # the step's flips are 0 (weights restored)
        self.in_kernel = {} if self.declared or self.rewinds else {
            index: self.params[key] for index, key in enumerate(self.keys)
            if key in self.params and self.params[key] in fused}
        self.flips = torch.zeros(len(self.keys), dtype=torch.int64, device=self.device)

    def before_optimizer(self, stepped: bool) -> None:
        masks = self.sparsifier.optimizer_masks()
        self.seen = None if self.declared else {key: mask_seen(mask) for key, (_, mask) in masks.items()}
        if not stepped:  # nothing updates the weights: the method masks everything itself
            self.handed, self.in_kernel = frozenset(), {}
        self.sparsifier.masks_applied_by_optimizer = {key: (mask, mask._version) for key, (_, mask) in masks.items()
                                                      if key in self.handed}
        if self.handed or self.in_kernel:
            self.optimizer.set_bookkeeping(StepBookkeeping(
                masks={tensor: mask for key, (tensor, mask) in masks.items() if key in self.handed},
                flips={param: self.flips[index:index + 1] for index, param in self.in_kernel.items()}))
        fallback = [] if self.rewinds else [index for index in range(len(self.keys)) if index not in self.in_kernel]
        if fallback:
            weights = self.sparsifier.effective_weights()
            self.before = {index: signs(weights[self.keys[index]]) for index in fallback}

    def end(self) -> Tensor:
        if self.before:
            weights = self.sparsifier.effective_weights()
            indices = tuple(self.before)
            counts = torch.stack([sign_flips(before, weights[self.keys[index]])
                                  for index, before in self.before.items()])
            self.flips.index_add_(0, self._index(indices), counts)
        if self.seen is not None:
            self._check_undeclared_mask_changes()
        return self.flips

    def finish(self) -> None:
        """After the step, also when it raised: the sparsifier masks everything itself again."""
        self.sparsifier.masks_applied_by_optimizer = {}
        if self.supported:
            self.optimizer.set_bookkeeping(None)
        self._clear()

    # ---- helpers ------------------------------------------------------------------------------
    def _index(self, indices: tuple[int, ...]) -> Tensor:
        index = self._indices.get(indices)
        if index is None:  # made once per set of fallback weights: no copy to the device per step
            index = self._indices[indices] = torch.tensor(indices, dtype=torch.long, device=self.device)
        return index

    def _check_undeclared_mask_changes(self) -> None:
        now = {key: mask for key, (_, mask) in self.sparsifier.optimizer_masks().items()}
        changed = sorted(key for key in set(self.seen) | set(now) if not mask_unchanged(self.seen.get(key), now.get(key)))
        if changed:
            raise RuntimeError(
                f"sparsifier {self.sparsifier.name}: after_step({self.step}) changed the masks of {', '.join(changed)}, "
                f"but changes_masks_after_step({self.step}) is False; declare it (sparsifiers.base): the optimizer's "
                f"kernels count sign flips between a weight before and after its update, and a weight pruned "
                f"afterwards is no flip")
