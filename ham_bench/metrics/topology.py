"""Mask topology over training: ITOP rate, mask churn, overlap with the initial mask, sign agreement.

Definitions (over the sparsifier's masked layers, ``masked_keys``;
a layer's mask is ``sparsifier.masks()[<layer>.weight]``, and a masked layer
with no entry there, e.g. AC/DC in a dense phase or PILoT before pruning,
has every weight active; STR's mask is the support of its soft threshold):

- ITOP rate (Liu et al., ICML 2021, in-time over-parameterization): the
  fraction of weights that have been active in at least one mask state
  since the tracker started (the start of training).
- Mask churn: the Hamming distance between consecutive mask states, summed
  over the epoch's mask changes (``mask_churn``, per layer and total) and
  divided by the number of masked weights (``mask_churn_fraction``; with one
  update per epoch it is the fraction of weights whose mask changed).
  ``mask_updates`` counts the steps at which any mask changed.
- Overlap with the initial mask: ``|M_t & M_0| / |M_t|``, the fraction of
  currently active weights that were active in the initial mask (1 for a
  fixed mask).
- Sign agreement with initialization: over the weights active in both, i.e.
  whose effective weight is nonzero at initialization and now, the fraction
  whose sign is the initial one. Over every tracked (selected) layer, like
  the sign-flip counts. The initial signs are those the ``SignFlipCounter``
  already stores (no second copy) when it is given.

Cost: ``update_after_step()`` is called once per step; it syncs nothing and
skips every layer whose mask tensor is the same object at the same version
(``Tensor._version``, bumped by every in-place write) as at the last call, so
fixed masks cost nothing and RigL pays only on update steps. Methods whose
``masks()`` builds new tensors (STR) are compared every step. Memory: three
bools per masked weight (initial, ever active, previous); checkpoints hold
them as packed bits.

Mask dumps for topology studies are their own meter (``ham_bench.metrics.masks``).
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

from ham_bench.mask_dump import pack_bits, unpack_bits
from ham_bench.metrics.meter import Meter


def mask_seen(mask: torch.Tensor | None) -> tuple[Any, int | None]:
    """What ``mask_unchanged`` compares later: the tensor object and its version counter (None: no mask)."""
    return mask, getattr(mask, "_version", None)


def mask_unchanged(seen: tuple[Any, int | None] | None, mask: torch.Tensor | None) -> bool:
    """True when ``mask`` is the object recorded by ``mask_seen`` and was not written in place since.

    No host sync: it compares the object and ``Tensor._version`` (bumped by
    every in-place write), never the values.
    """
    if seen is None:
        return False
    seen_mask, seen_version = seen
    if mask is None:
        return seen_mask is None
    return mask is seen_mask and seen_version is not None and mask._version == seen_version


def _hamming(previous: torch.Tensor | None, current: torch.Tensor | None) -> torch.Tensor:
    if previous is None:
        return current.logical_not().sum()
    if current is None:
        return previous.logical_not().sum()
    return (previous ^ current).sum()


class TopologyMeter(Meter):
    """ITOP rate, mask churn, overlap with the initial mask and sign agreement (module docstring)."""

    name = "topology"
    final_keys = ("itop_rate", "mask_overlap_initial", "sign_agreement_init")

    def __init__(self, sparsifier, flip_counter=None):
        self.sparsifier = sparsifier
        self.flip_counter = flip_counter
        weights = sparsifier.effective_weights()
        self.keys = list(sparsifier.masked_keys)
        self.shapes = {key: tuple(weights[key].shape) for key in self.keys}
        device = weights[self.keys[0]].device if self.keys else torch.device("cpu")
        self.sign_keys = list(flip_counter.names) if flip_counter is not None else list(weights)
        self._own_initial_signs = None
        if flip_counter is None:
            self._own_initial_signs = {key: torch.sign(w).to(torch.int8) for key, w in weights.items()}
        masks = sparsifier.masks()
        self.initial: dict[str, torch.Tensor | None] = {}
        self.previous: dict[str, torch.Tensor | None] = {}
        self.ever: dict[str, torch.Tensor] = {}
        self._seen: dict[str, tuple[Any, int | None]] = {}
        for key in self.keys:
            mask = masks.get(key)
            self.initial[key] = None if mask is None else mask.detach().clone()
            self.previous[key] = self.initial[key]
            self.ever[key] = (torch.ones(self.shapes[key], dtype=torch.bool, device=device) if mask is None
                              else mask.detach().clone())
            self._seen[key] = mask_seen(mask)
        self._churn = torch.zeros(len(self.keys), dtype=torch.int64, device=device)
        self._updates = torch.zeros((), dtype=torch.int64, device=device)

    # ---- per step ------------------------------------------------------------------------
    def on_step(self, record) -> None:
        self.update_after_step(record.masks)

    @torch.no_grad()
    def update_after_step(self, masks: Mapping[str, torch.Tensor] | None = None) -> None:
        """Record the current mask state; once per step after ``sparsifier.after_step``. No host sync.

        ``masks``: the ``sparsifier.masks()`` of this step if the caller already has it (STR builds it anew
        on every call), else it is read here.
        """
        masks = self.sparsifier.masks() if masks is None else masks
        indices, distances = [], []
        for index, key in enumerate(self.keys):
            mask = masks.get(key)
            if mask_unchanged(self._seen.get(key), mask):
                continue
            self._seen[key] = mask_seen(mask)
            previous = self.previous[key]
            if mask is None and previous is None:
                continue
            indices.append(index)
            distances.append(_hamming(previous, mask))
            if mask is None:
                self.ever[key].fill_(True)
                self.previous[key] = None
            else:
                self.ever[key] |= mask
                self.previous[key] = mask.detach().clone()
        if distances:
            for index, distance in zip(indices, distances):
                self._churn[index] += distance
            self._updates += (torch.stack(distances).sum() > 0).to(torch.int64)

    # ---- per epoch -----------------------------------------------------------------------
    def initial_signs(self, key: str) -> torch.Tensor:
        if self.flip_counter is not None:
            return self.flip_counter.initial_signs(key)
        return self._own_initial_signs[key]

    @torch.no_grad()
    def epoch_report(self, epoch: int | None = None, weights: Mapping[str, torch.Tensor] | None = None
                     ) -> dict[str, Any]:
        """The epoch's topology metrics (flat keys + per-layer dicts); resets the epoch's churn. Syncs."""
        self.update_after_step()  # mask changes made by on_epoch_end (STR projection, PILoT pruning)
        churn = self._churn.tolist()
        updates = int(self._updates)
        self._churn.zero_()
        self._updates.zero_()
        sizes = {key: self.ever[key].numel() for key in self.keys}
        total = sum(sizes.values())
        ever = {key: int(self.ever[key].sum()) for key in self.keys}
        active, common = {}, {}
        for key in self.keys:
            current, initial = self.previous[key], self.initial[key]
            active[key] = sizes[key] if current is None else int(current.sum())
            if current is None:
                common[key] = sizes[key] if initial is None else int(initial.sum())
            else:
                common[key] = active[key] if initial is None else int((current & initial).sum())
        weights = self.sparsifier.effective_weights() if weights is None else weights
        agree, both = {}, {}
        for key in self.sign_keys:
            initial = self.initial_signs(key)
            current = torch.sign(weights[key]).to(torch.int8)
            nonzero = (initial != 0) & (current != 0)
            both[key] = int(nonzero.sum())
            agree[key] = int((nonzero & (initial == current)).sum())

        def ratio(a, b):
            return a / b if b else None

        return {
            "itop_rate": ratio(sum(ever.values()), total),
            "itop_rate_per_layer": {key: ratio(ever[key], sizes[key]) for key in self.keys},
            "mask_updates": updates,
            "mask_churn": int(sum(churn)),
            "mask_churn_fraction": ratio(sum(churn), total),
            "mask_churn_per_layer": dict(zip(self.keys, (int(c) for c in churn))),
            "mask_overlap_initial": ratio(sum(common.values()), sum(active.values())),
            "mask_overlap_initial_per_layer": {key: ratio(common[key], active[key]) for key in self.keys},
            "sign_agreement_init": ratio(sum(agree.values()), sum(both.values())),
            "sign_agreement_init_per_layer": {key: ratio(agree[key], both[key]) for key in self.sign_keys},
        }

    # ---- checkpoints -----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Masks as packed bits (None: all active), the epoch's churn so far, own initial signs if any."""
        def packed(mask):  # a uint8 tensor of packed bits: checkpoints load with weights_only
            return None if mask is None else torch.from_numpy(pack_bits(mask))

        return {"initial": {k: packed(v) for k, v in self.initial.items()},
                "previous": {k: packed(v) for k, v in self.previous.items()},
                "ever": {k: packed(v) for k, v in self.ever.items()},
                "churn": self._churn.cpu().clone(), "updates": int(self._updates),
                "initial_signs": (None if self._own_initial_signs is None
                                  else {k: v.cpu().clone() for k, v in self._own_initial_signs.items()})}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        device = self._churn.device

        def unpacked(key, value):
            return None if value is None else unpack_bits(torch.as_tensor(value).numpy(), self.shapes[key]).to(device)

        self.initial = {k: unpacked(k, state["initial"][k]) for k in self.keys}
        self.previous = {k: unpacked(k, state["previous"][k]) for k in self.keys}
        self.ever = {k: unpacked(k, state["ever"][k]) for k in self.keys}
        self._churn.copy_(state["churn"].to(device))
        self._updates.fill_(int(state["updates"]))
        if state.get("initial_signs") is not None and self._own_initial_signs is not None:
            self._own_initial_signs = {k: v.to(device) for k, v in state["initial_signs"].items()}
        self._seen = {}  # compare the restored masks with the sparsifier's at the next update
