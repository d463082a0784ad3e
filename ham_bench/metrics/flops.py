"""The FLOPs meter: training FLOPs from the step records, standard and measured (``flop_counts`` has the formulas).

Per step, from the record: the optimizer stepped or not, its passes (2 when
SAM stepped), whether a dense gradient was taken, and the masks after the
step (the mask state the NEXT step trains with, so it is charged to the next
step). Per-step work stays on the device (no host sync); a layer's active
count is recomputed only when its mask tensor changed
(``topology.mask_unchanged``): fixed masks cost nothing per step, RigL pays
on update steps, STR (a new support tensor every call) every step.

Facts from elsewhere, never guessed: HAM's covered weights
(``HAM.covered_numel()``, 0 without HAM) and whether the method trains dense
at a step (``sparsifier.trains_dense(step)``, for the standard accounting).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ham_bench.metrics.flop_counts import (FLOPS_PER_MULTIPLY_ADD, HAM_FLOPS_PER_WEIGHT, dense_forward_flops,
                                           forward_flops, inference_flops, layer_positions, layer_weights,
                                           training_forward_flops)
from ham_bench.metrics.meter import Meter
from ham_bench.metrics.topology import mask_seen, mask_unchanged

STANDARD_COUNTS = ("dense", "dense_passes", "sparse", "sparse_passes", "dense_gradient", "dense_gradient_extra_passes",
                   "optimizer_steps", "max_passes")


def ham_covered_numel(optimizer) -> int:
    """Weights HAM updates per optimizer step (0 for any other optimizer): HAM reports it itself."""
    covered = getattr(optimizer, "covered_numel", None)
    return int(covered()) if callable(covered) else 0


class FlopsMeter(Meter):
    """Standard and measured training FLOPs, and inference FLOPs of the effective weights (``flop_counts``)."""

    name = "flops"

    def __init__(self, model: nn.Module, sparsifier, input_shape, batch_size: int = 1, ham_weights: int = 0):
        self.model = model
        self.sparsifier = sparsifier
        self.batch_size = int(batch_size)
        self.ham_weights = int(ham_weights)
        self.positions = layer_positions(model, input_shape)
        self.keys = list(self.positions)
        weights = layer_weights(model, sparsifier)
        self.dense_forward = sum(dense_forward_flops(self.positions, weights).values())
        device = weights[self.keys[0]].device if self.keys else torch.device("cpu")
        self._scale = torch.tensor([FLOPS_PER_MULTIPLY_ADD * self.positions[k] for k in self.keys],
                                   dtype=torch.int64, device=device)
        self._dense_counts = torch.tensor([weights[k].numel() for k in self.keys], dtype=torch.int64, device=device)
        # measured: per-sample FLOPs of the sparse parts summed over steps (device), and the step counts
        self._measured = torch.zeros((), dtype=torch.int64, device=device)
        self.measured_steps = 0
        self.measured_update_steps = 0
        self.measured_optimizer_steps = 0
        self._reported_total = 0
        self.counts = dict.fromkeys(STANDARD_COUNTS, 0)  # the standard accounting's step categories
        self.counts["max_passes"] = 1
        self._refresh(force=True)

    # ---- per step ---------------------------------------------------------------------------
    @torch.no_grad()
    def _refresh(self, force: bool = False, masks: Mapping[str, torch.Tensor] | None = None) -> None:
        """Re-read the mask state: ``self._pending`` = f_S of the masks the next step trains with."""
        if masks is None:
            masks = self.sparsifier.masks() if self.sparsifier is not None else {}
        if force:
            self._seen, self._counts = {}, {}
        changed = force
        for index, key in enumerate(self.keys):
            mask = masks.get(key)
            if mask_unchanged(self._seen.get(key), mask):
                continue
            self._seen[key] = mask_seen(mask)
            self._counts[key] = self._dense_counts[index] if mask is None else mask.sum()
            changed = True
        if changed:
            counts = torch.stack([self._counts[key] for key in self.keys]) if self.keys else self._dense_counts
            self._pending = (counts * self._scale).sum()

    @torch.no_grad()
    def on_step(self, record) -> None:
        passes, counts = record.passes, self.counts
        if record.dense_gradient:  # 2 f_S + f_D, and SAM's second pass (3 f_S) if it stepped
            self._measured += self._pending * (2 + 3 * (passes - 1))
            self.measured_update_steps += 1
            counts["dense_gradient"] += 1
            counts["dense_gradient_extra_passes"] += passes - 1
        else:
            self._measured += self._pending * (3 * passes)
            kind = "dense" if self.sparsifier.trains_dense(record.step) else "sparse"
            counts[kind] += 1
            counts[f"{kind}_passes"] += passes
        self.measured_steps += 1
        if record.stepped:
            self.measured_optimizer_steps += 1
            counts["optimizer_steps"] += 1
        counts["max_passes"] = max(counts["max_passes"], passes)
        self._refresh(masks=record.masks)

    # ---- totals ------------------------------------------------------------------------------
    def _measured_totals(self) -> dict[str, int]:
        per_sample = int(self._measured) + self.measured_update_steps * self.dense_forward
        ham = HAM_FLOPS_PER_WEIGHT * self.ham_weights * self.measured_optimizer_steps
        return {"total": self.batch_size * per_sample + ham, "ham": ham,
                "reference": self.measured_steps * self.batch_size * 3 * self.dense_forward}

    @torch.no_grad()
    def epoch_report(self, epoch: int | None = None, weights=None) -> dict[str, Any]:
        """``train_flops_epoch``, ``train_flops_measured`` (so far) and its fraction of dense, inference now."""
        self._refresh()
        totals = self._measured_totals()
        epoch_flops = totals["total"] - self._reported_total
        self._reported_total = totals["total"]
        inference = sum(forward_flops(self.positions, layer_weights(self.model, self.sparsifier)).values())
        return {
            "train_flops_epoch": epoch_flops,
            "train_flops_measured": totals["total"],
            "train_flops_measured_fraction_of_dense":
                totals["total"] / totals["reference"] if totals["reference"] else 0.0,
            "inference_flops": inference,
            "inference_flops_fraction_of_dense": inference / self.dense_forward if self.dense_forward else 1.0,
        }

    @torch.no_grad()
    def summary(self) -> dict[str, Any]:
        """Inference FLOPs now, the standard training accounting over the steps made, and the measured one."""
        report = inference_flops(self.model, self.sparsifier, positions=self.positions)
        f_d = report["inference_flops_dense"]
        f_s = training_forward_flops(self.positions, self.sparsifier, layer_weights(self.model, self.sparsifier))
        c, batch = self.counts, self.batch_size
        per_sample = (3 * f_d * c["dense_passes"] + 3 * f_s * c["sparse_passes"]
                      + (2 * f_s + f_d) * c["dense_gradient"] + 3 * f_s * c["dense_gradient_extra_passes"])
        ham = HAM_FLOPS_PER_WEIGHT * self.ham_weights * c["optimizer_steps"]
        total = batch * per_sample + ham
        steps = c["dense"] + c["sparse"] + c["dense_gradient"]
        reference = steps * batch * 3 * f_d
        measured = self._measured_totals()
        report.update({
            "train_flops": total,
            "train_flops_per_step": total / steps if steps else 0.0,
            "train_flops_dense_reference": reference,
            "train_flops_fraction_of_dense": total / reference if reference else 0.0,
            "train_flops_ham": ham,
            "train_flops_formula": (f"{self.sparsifier.name}: {c['dense']} steps at 3 f_D, {c['sparse']} at 3 f_S, "
                                    f"{c['dense_gradient']} at 2 f_S + f_D; x{c['max_passes']} passes (SAM); "
                                    f"HAM {HAM_FLOPS_PER_WEIGHT} x {self.ham_weights} weights per optimizer step; "
                                    f"batch {batch}"),
            "train_flops_measured": measured["total"], "train_flops_measured_ham": measured["ham"],
            "train_flops_measured_fraction_of_dense":
                measured["total"] / measured["reference"] if measured["reference"] else 0.0,
            "train_flops_measured_steps": self.measured_steps,
        })
        return report

    # ---- checkpoints -------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"measured": int(self._measured), "measured_steps": self.measured_steps,
                "measured_update_steps": self.measured_update_steps,
                "measured_optimizer_steps": self.measured_optimizer_steps,
                "reported_total": self._reported_total, "counts": dict(self.counts)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the totals; call after the model and sparsifier are restored (it re-reads the masks)."""
        self._measured.fill_(int(state["measured"]))
        self.measured_steps = int(state["measured_steps"])
        self.measured_update_steps = int(state["measured_update_steps"])
        self.measured_optimizer_steps = int(state["measured_optimizer_steps"])
        self._reported_total = int(state["reported_total"])
        self.counts = {key: int(state["counts"][key]) for key in STANDARD_COUNTS}
        self._refresh(force=True)
