"""Random pruning at initialization (PaI): one fixed random mask, drawn before training.

Masks hit exact per-layer counts (``round(density * numel)``) by a seeded
shuffle; the per-layer densities come from ``uniform`` or ``erk``
(``sparsifiers.distributions``). Masked weights are zeroed at attach, their
gradients after every backward and the weights again after every optimizer
step, so they stay exactly zero under momentum, weight decay and HAM. All of
this is ``MaskedSparsifier``'s default behaviour; this class names it.

Choices (each a config key): ``distribution`` defaults to ``erk`` (all conv
and linear layers masked); with ``uniform`` the first conv stays dense unless
``dense_first=false``. ``seed`` (None: the run's seed) fixes the mask.
"""

from __future__ import annotations

from sparsifiers.masked import MaskedSparsifier
from sparsifiers.registry import register_sparsifier


@register_sparsifier("random")
class RandomSparsifier(MaskedSparsifier):
    """Random PaI with uniform or ERK layer-wise densities and exact-count masks."""

    name = "random"
