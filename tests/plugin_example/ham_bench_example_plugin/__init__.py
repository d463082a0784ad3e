"""Example plugin: keep the largest-|w| weights of each layer at initialization, then train with that fixed mask.

Only the public core is used: subclass ``MaskedSparsifier`` and override
``initial_masks``; the layer selection (sparsity, distribution, first/last
layer), gradient masking, re-masking after every step, reports and
checkpoints come from the base class.
"""

from __future__ import annotations

from sparsifiers import MaskedSparsifier, layer_topk_masks


class MagnitudePaI(MaskedSparsifier):
    """Layer-wise magnitude pruning at initialization with uniform (default) or ERK densities."""

    name = "magnitude_pai"
    selection_defaults = {"sparsity": 0.9, "distribution": "uniform"}

    def initial_masks(self):
        counts = self.target_counts()
        scores = {key: self.tensors.get(key).abs() for key, density in self.target_density_by_name.items()
                  if density < 1.0}
        return layer_topk_masks(scores, counts)
