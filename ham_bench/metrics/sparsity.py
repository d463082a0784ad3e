"""Sparsity: exact zeros of the effective weights, per layer and over the masked layers, beside the targets.

Row keys: ``sparsity`` (zeros over every selected conv/linear weight),
``sparsity_per_layer``, ``sparsity_masked_layers`` and
``target_sparsity_masked_layers`` (over the layers the method masks, i.e.
without kept-dense first/last layers), ``dense_layers``. Summary:
``final_sparsity`` (read at the end) and ``target_sparsity`` (the method's).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ham_bench.metrics.meter import Meter
from sparsifiers.base import sparsity_report


class SparsityMeter(Meter):
    name = "sparsity"
    final_keys = ("sparsity_masked_layers", "target_sparsity_masked_layers", "dense_layers")

    def __init__(self, sparsifier):
        self.sparsifier = sparsifier

    def epoch_report(self, epoch: int, weights: Mapping[str, torch.Tensor]) -> dict[str, Any]:
        report = sparsity_report(self.sparsifier, weights)
        return {"sparsity": report["achieved_sparsity_all_layers"],
                "sparsity_per_layer": {r["name"]: 1 - r["nonzeros"] / r["params"] for r in report["layers"]},
                "sparsity_masked_layers": report["achieved_sparsity"],
                "target_sparsity_masked_layers": report["target_sparsity"],
                "dense_layers": [r["name"] for r in report["layers"] if not r["masked"]]}

    def summary(self) -> dict[str, Any]:
        return {"final_sparsity": sparsity_report(self.sparsifier)["achieved_sparsity_all_layers"],
                "target_sparsity": float(self.sparsifier.selection.sparsity)}
