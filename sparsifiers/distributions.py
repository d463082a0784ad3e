"""Layer-wise sparsity distributions and exact-count random masks.

``uniform`` and ``erk`` return a density (fraction of nonzeros) per layer,
keyed like the input shapes. Layers in ``dense_names`` (a kept-dense first
conv or last linear) get density 1.0 and are left out of the budget, as
RigL's ``custom_sparsity_map`` does: the target sparsity holds over the other
layers. Layers that ERK itself has to make dense (their density would exceed
1) stay inside the budget, as in RigL, so the target still holds over every
layer it distributes.

Masks hit exact counts: ``round(density * numel)`` ones per layer, placed by
a seeded shuffle (``torch.randperm``), never by Bernoulli draws.
"""

from __future__ import annotations

import math
from typing import Iterable, Mapping, Sequence

import torch

DISTRIBUTIONS = ("uniform", "erk")


def _numel(shape: Sequence[int]) -> int:
    return math.prod(int(d) for d in shape)


def _check_sparsity(sparsity: float) -> float:
    sparsity = float(sparsity)
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    return sparsity


def uniform_densities(shapes_by_name: Mapping[str, Sequence[int]], sparsity: float,
                      dense_names: Iterable[str] = ()) -> dict[str, float]:
    """Every layer at density ``1 - sparsity``; ``dense_names`` at 1.0."""
    sparsity = _check_sparsity(sparsity)
    dense = set(dense_names)
    return {name: 1.0 if name in dense else 1.0 - sparsity for name in shapes_by_name}


def erk_densities(shapes_by_name: Mapping[str, Sequence[int]], sparsity: float, power_scale: float = 1.0,
                  dense_names: Iterable[str] = ()) -> dict[str, float]:
    """Erdos-Renyi-Kernel densities with RigL's redistribution of overflow.

    ``raw_l = (sum(shape_l) / prod(shape_l)) ** power_scale`` and density
    ``eps * raw_l``, with ``eps`` chosen so the layers hold
    ``sum_l (N_l - floor(S * N_l))`` nonzeros; while the largest ``eps * raw_l``
    exceeds 1, every layer with that largest ``raw_l`` is made dense (its
    zeros move to the others) and ``eps`` is solved again.
    """
    sparsity = _check_sparsity(sparsity)
    user_dense = set(dense_names)
    names = [name for name in shapes_by_name if name not in user_dense]
    if sparsity == 0.0 or not names:
        return {name: 1.0 for name in shapes_by_name}
    numel = {name: _numel(shapes_by_name[name]) for name in names}
    raw = {name: (sum(int(d) for d in shapes_by_name[name]) / numel[name]) ** power_scale for name in names}
    forced_dense: set[str] = set()
    while True:
        rhs = 0.0
        divisor = 0.0
        for name in names:
            zeros = math.floor(sparsity * numel[name])
            if name in forced_dense:
                rhs -= zeros
            else:
                rhs += numel[name] - zeros
                divisor += raw[name] * numel[name]
        if divisor == 0.0:  # every layer forced dense: nothing left to distribute
            break
        eps = rhs / divisor
        largest = max(raw[name] for name in names if name not in forced_dense)
        if eps * largest > 1.0:
            forced_dense |= {name for name in names if name not in forced_dense and raw[name] == largest}
            continue
        break
    densities = {}
    for name in shapes_by_name:
        if name in user_dense or name in forced_dense:
            densities[name] = 1.0
        else:
            densities[name] = eps * raw[name]
    return densities


def layer_densities(distribution: str, shapes_by_name: Mapping[str, Sequence[int]], sparsity: float,
                    power_scale: float = 1.0, dense_names: Iterable[str] = ()) -> dict[str, float]:
    """Dispatch on the ``distribution`` config key (``uniform`` | ``erk``)."""
    if distribution == "uniform":
        return uniform_densities(shapes_by_name, sparsity, dense_names)
    if distribution == "erk":
        return erk_densities(shapes_by_name, sparsity, power_scale, dense_names)
    raise ValueError(f"sparsifier.distribution must be one of [{', '.join(DISTRIBUTIONS)}], got {distribution!r}")


def active_counts(shapes_by_name: Mapping[str, Sequence[int]], densities: Mapping[str, float]) -> dict[str, int]:
    """Exact number of nonzeros per layer: ``round(density * numel)``, within [0, numel]."""
    counts = {}
    for name, shape in shapes_by_name.items():
        n = _numel(shape)
        counts[name] = min(n, max(0, round(float(densities[name]) * n)))
    return counts


def random_masks(shapes: Mapping[str, Sequence[int]], densities: Mapping[str, float],
                 generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """Bool masks with exactly ``active_counts`` ones per layer, placed by a seeded shuffle.

    Layers are drawn in the mapping's order from one CPU ``generator``, so the
    same seed and layer order give the same masks on every machine.
    """
    counts = active_counts(shapes, densities)
    masks = {}
    for name, shape in shapes.items():
        n = _numel(shape)
        flat = torch.zeros(n, dtype=torch.bool)
        flat[torch.randperm(n, generator=generator)[:counts[name]]] = True
        masks[name] = flat.view(*[int(d) for d in shape])
    return masks
