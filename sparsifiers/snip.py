"""SNIP: Single-shot Network Pruning based on connection sensitivity (Lee, Ajanthan, Torr, ICLR 2019).

At attach, on one labelled training batch (``TrainingContext.sample_batch``,
seeded from the run's seed, drawn apart from training) and the initial
weights with every mask at 1::

    g = dL/dw                  (cross-entropy, every masked tensor)
    score = |g * w|            (= |dL/dc| at c = 1 for W_eff = c * w)
    keep the round((1 - s) * N) largest scores over all masked layers

then the mask is fixed (``sparsifiers.pai``). The reference normalises the
scores by their sum; the ranking, hence the mask, is the same, so we do not.

Choices (config keys):

- ``distribution: global`` (default, the paper and reference: one top-k over
  every conv and linear weight, first conv and classifier included);
  ``uniform`` / ``erk`` score per layer at that layer's count (RigL's
  layer-wise SNIP). ``pattern: nm`` keeps the top n of every m.
- ``batches`` (default 1, the paper's single mini-batch, here of the run's
  ``batch_size``; the paper used 100 on MNIST, 128 on CIFAR-10) and
  ``accumulate`` over several: ``gradient`` (default) sums the gradients
  before taking |g * w| (Synaptic-Flow's port), ``score`` sums |g * w| per batch.
- ``scoring_mode: eval`` (default, as both references): BatchNorm uses its
  running statistics (at init 0 and 1) and dropout is off; ``train`` uses
  batch statistics. Either way every buffer (BN running statistics) is
  snapshotted and restored around scoring, and the global RNG is untouched.
- Weights only (the TF reference also ranks biases, which at zero init all
  score 0 and are pruned). The scored weights are trained (as the PyTorch
  ports; the TF reference re-initialises after scoring): no key.
- Initialisation: the model's own (torch's defaults / the model's init),
  not the paper's variance-scaling normal.
- Under Sign-In the scored tensor is the factor w of theta = m * w; at the
  balanced start |dL/dw * w| = |dL/dtheta * theta|, the same score.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from sparsifiers.config import choice, number
from sparsifiers.pai import PruneAtInit, scoring_mode
from sparsifiers.registry import register_sparsifier


@register_sparsifier("snip")
class SNIP(PruneAtInit):
    """SNIP (Lee et al., ICLR 2019): prune at init by connection sensitivity |g * w| on one training batch."""

    name = "snip"
    needs = "a training batch (TrainingContext.sample_batch)"

    def __init__(self, batches: int = 1, accumulate: str = "gradient", scoring_mode: str = "eval", **selection):
        super().__init__(**selection)
        self.batches = int(number("batches", batches, int, low=1))
        self.accumulate = choice("accumulate", accumulate, ("gradient", "score"))
        self.scoring_mode = choice("scoring_mode", scoring_mode, ("eval", "train"))

    def score_masks(self) -> dict[str, torch.Tensor] | None:
        if self.context.sample_batch is None:
            return None
        return self.budget_masks(self.scores(), lambda size, final, density: final)

    def scores(self) -> dict[str, torch.Tensor]:
        """|g * w| per pruned layer (``accumulate`` over ``batches``), the model left as it was."""
        keys = self.prune_keys()
        if not keys:
            return {}
        tensors = [self.tensors.get(key) for key in keys]
        device = tensors[0].device
        totals = [torch.zeros_like(t) for t in tensors]
        with scoring_mode(self.model, self.scoring_mode == "train", device):
            for _ in range(self.batches):
                inputs, labels = self.context.sample_batch()
                loss = F.cross_entropy(self.model(inputs.to(device)), labels.to(device))
                for total, grad, weight in zip(totals, torch.autograd.grad(loss, tensors), tensors):
                    total.add_(grad if self.accumulate == "gradient" else (grad * weight.detach()).abs())
        if self.accumulate == "gradient":
            totals = [(total * weight.detach()).abs() for total, weight in zip(totals, tensors)]
        return dict(zip(keys, totals))
