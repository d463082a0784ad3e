"""Example plugin: keep the largest-|w| weights of each layer at initialization, then train with that fixed mask.

Only the public interface of ``sparsifiers.base`` is used: subclass
``MaskedSparsifier``, compute the layer-wise targets, build bool masks in
``attach``; gradient masking, re-masking after every step, reports and
checkpoints come from the base class.
"""

from __future__ import annotations

import torch

from sparsifiers.base import MaskedSparsifier
from sparsifiers.distributions import DISTRIBUTIONS


class MagnitudePaI(MaskedSparsifier):
    """Layer-wise magnitude pruning at initialization with uniform or ERK densities."""

    name = "magnitude_pai"
    distributions = DISTRIBUTIONS

    def __init__(self, sparsity: float = 0.9, distribution: str = "uniform", dense_first: bool | None = None,
                 dense_last: bool = False, power_scale: float = 1.0, seed: int | None = None):
        super().__init__(sparsity=sparsity, distribution=distribution, dense_first=dense_first,
                         dense_last=dense_last, power_scale=power_scale, seed=seed)

    @torch.no_grad()
    def attach(self, model, context) -> None:
        super().attach(model, context)
        self.compute_target_densities()
        counts = self.target_counts()
        for key, density in self.target_density_by_name.items():
            if density >= 1.0:
                continue
            score = self.weight(key).abs().flatten()
            keep = torch.zeros_like(score, dtype=torch.bool)
            keep[torch.topk(score, counts[key]).indices] = True
            self.mask_by_name[key] = keep.view_as(self.weight(key))
        self.apply_masks()
