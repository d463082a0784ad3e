"""Where a pruning method keeps its weights: one global budget, one per layer, or N:M groups; exact counts always.

Methods that prune from scores toward their target in steps (SNIP and
SynFlow at attach, GMP's cubic schedule, IMP's rounds) subclass
``BudgetedPruning`` and say only HOW MANY each unit keeps at a point of their
schedule, as ``keep(size, final, density) -> int``; the budget says what the
units are and turns scores into exact-count masks (``budget_masks``):

- ``distribution: global``: one unit, all masked layers together (first conv
  and classifier included unless kept dense): ``size`` = N,
  ``final`` = ``round((1 - s) * N)``, ``density`` = 1 - s;
- ``uniform`` / ``erk``: one unit per layer whose target density is below 1:
  ``size`` = N_l, ``final`` = ``round(d_l * N_l)``, ``density`` = d_l;
- ``pattern: nm`` (keys ``n``, ``m``): every group of ``m`` consecutive
  entries along the input dimension (``sparsifiers.masks.nm_groups``, NHWC
  for convs) of every masked layer whose input dimension divides by ``m``
  is a unit: ``size`` = m, ``final`` = n, ``density`` = n / m. The target is
  then ``1 - n/m`` on those layers (``sparsity`` is set to it); layers that
  do not divide stay dense and out of the masked layers. ``extra_metrics()`` adds ``nm_valid``: per
  masked layer, whether every group holds at most n nonzeros.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import torch

from sparsifiers.config import ConfigError, choice, number
from sparsifiers.masked import MaskedSparsifier
from sparsifiers.masks import global_topk_masks, layer_topk_masks, nm_divisible, nm_topk_mask, nm_validity

PATTERNS = ("unstructured", "nm")
Keep = Callable[[int, int, float], int]


def nm_settings(n: Any, m: Any) -> tuple[int, int]:
    """(n, m) checked: 1 <= n < m."""
    m = int(number("m", m, int, low=2))
    n = int(number("n", n, int, low=1, high=m - 1))
    return n, m


class BudgetedPruning(MaskedSparsifier):
    """Exact-count masks from scores over the method's units (module docstring); ``pattern`` unstructured | nm."""

    selection_defaults = {"sparsity": 0.9, "distribution": "global"}
    distributions = ("global", "uniform", "erk")

    def __init__(self, pattern: str = "unstructured", n: int = 2, m: int = 4, **selection):
        super().__init__(**selection)
        self.pattern = choice("pattern", pattern, PATTERNS)
        self.n, self.m = nm_settings(n, m)
        if self.pattern == "nm":  # the target is fixed by n:m on the layers that take it
            self.selection = dataclasses.replace(self.selection, sparsity=1.0 - self.n / self.m)

    @property
    def scope(self) -> str:
        if self.pattern == "nm":
            return "nm"
        return "global" if self.selection.distribution == "global" else "layer"

    @property
    def masked_keys(self) -> list[str]:
        """Under ``pattern: nm``, only the layers whose input dimension divides by m."""
        keys = super().masked_keys
        if self.pattern != "nm":
            return keys
        return [key for key in keys if nm_divisible(self.layers[key.rsplit(".", 1)[0]].weight.shape, self.m)]

    def initial_densities(self) -> dict[str, float]:
        if self.pattern != "nm":
            return super().initial_densities()
        masked = set(self.masked_keys)
        return {key: self.n / self.m if key in masked else 1.0 for key in self.layer_shapes()}

    def prune_keys(self) -> list[str]:
        """The layers the budget prunes (what a method scores)."""
        if self.scope == "global":
            return list(self.masked_keys)
        return [key for key in self.masked_keys if self.target_density_by_name[key] < 1.0]

    @torch.no_grad()
    def masked_magnitudes(self) -> dict[str, torch.Tensor]:
        """|w| of the pruned layers, masked entries at -1 (below any weight: masks only shrink)."""
        scores = {}
        for key in self.prune_keys():
            magnitude = self.tensors.get(key).detach().abs()
            mask = self.mask_by_name.get(key)
            scores[key] = magnitude if mask is None else torch.where(mask, magnitude, -1.0)
        return scores

    @torch.no_grad()
    def budget_masks(self, scores: Mapping[str, torch.Tensor], keep: Keep,
                     index_ties: bool = False) -> dict[str, torch.Tensor]:
        """Masks keeping, in every unit, the ``keep(size, final, density)`` largest scores."""
        if not scores:
            return {}
        if self.scope == "global":
            size = sum(s.numel() for s in scores.values())
            density = 1.0 - self.selection.sparsity
            return global_topk_masks(scores, keep(size, round(density * size), density), index_ties)
        if self.scope == "nm":
            per_group = keep(self.m, self.n, self.n / self.m)
            return {key: nm_topk_mask(score, per_group, self.m) for key, score in scores.items()}
        counts = self.target_counts()
        return layer_topk_masks(scores, {key: keep(s.numel(), counts[key], self.target_density_by_name[key])
                                         for key, s in scores.items()}, index_ties)

    def pattern_metrics(self) -> dict[str, Any]:
        """``nm_valid`` per masked layer under ``pattern: nm`` (a host sync: per epoch, not per step)."""
        if self.pattern != "nm":
            return {}
        weights = self.effective_weights()
        return {"nm_valid": nm_validity({key: weights[key] for key in self.prune_keys()}, self.n, self.m)}

    def check_no_empty_layer(self, masks: Mapping[str, torch.Tensor]) -> None:
        """Layer collapse (every weight of a layer pruned) is an error, not a silent dead network."""
        empty = [key for key, mask in masks.items() if not bool(mask.any())]
        if empty:
            raise ConfigError(f"sparsifier.sparsity={self.selection.sparsity:g} leaves no weight in {', '.join(empty)} "
                              f"({self.name}: layer collapse); lower it or prune per layer "
                              f"(sparsifier.distribution=uniform|erk)")
