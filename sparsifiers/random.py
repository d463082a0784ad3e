"""Random pruning at initialization (PaI): one fixed random mask, drawn before training.

Masks hit exact per-layer counts (``round(density * numel)``) by a seeded
shuffle; the per-layer densities come from ``uniform`` or ``erk``
(``sparsifiers.distributions``). Masked weights are zeroed at attach, their
gradients after every backward and the weights again after every optimizer
step, so they stay exactly zero under momentum, weight decay and HAM.

Choices (each a config key): ``distribution`` defaults to ``erk`` (all conv
and linear layers masked); with ``uniform`` the first conv stays dense unless
``dense_first=false``. ``seed`` (None: the run's seed) fixes the mask.
"""

from __future__ import annotations

import torch
from torch import nn

from sparsifiers.base import MaskedSparsifier, TrainingContext
from sparsifiers.distributions import DISTRIBUTIONS
from sparsifiers.registry import register_sparsifier


@register_sparsifier("random")
class RandomSparsifier(MaskedSparsifier):
    """Random PaI with uniform or ERK layer-wise densities and exact-count masks."""

    name = "random"
    distributions = DISTRIBUTIONS

    def __init__(self, sparsity: float = 0.9, distribution: str = "erk", dense_first: bool | None = None,
                 dense_last: bool = False, power_scale: float = 1.0, seed: int | None = None):
        super().__init__(sparsity=sparsity, distribution=distribution, dense_first=dense_first,
                         dense_last=dense_last, power_scale=power_scale, seed=seed)

    @torch.no_grad()
    def attach(self, model: nn.Module, context: TrainingContext) -> None:
        super().attach(model, context)
        self.compute_target_densities()
        self.draw_random_masks()
        self.apply_masks()
