"""Pruning at initialization from scores (SNIP, SynFlow): one exact-count mask made at attach, then fixed.

A subclass computes ``score_masks()`` from what the context gives
(``TrainingContext.sample_batch`` for SNIP, ``input_shape`` for SynFlow)
through the budget (``sparsifiers.budget``: global by default, per layer,
or N:M). Afterwards the method is a static mask: gradients masked after
every backward, weights re-masked after every step, no optimizer state to
touch (the mask exists before the first step). A layer left empty is an
error (layer collapse); the per-layer densities are logged.

Without the data it needs (``export`` rebuilding a trained model, whose
masks come from its checkpoint) the method attaches unscored: no masks until
``load_state_dict``; binding an optimizer to an unscored method, i.e.
training it, raises a one-line ConfigError instead of training dense.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import torch
from torch import nn

from sparsifiers.budget import BudgetedPruning
from sparsifiers.config import ConfigError

log = logging.getLogger("ham_bench")


class PruneAtInit(BudgetedPruning):
    """A fixed mask from scores computed once at attach (``score_masks``; None: the context lacks the data)."""

    needs = "data"  # what score_masks reads from the context, for the error message

    def __init__(self, **selection):
        super().__init__(**selection)
        self.scored = False

    def score_masks(self) -> dict[str, torch.Tensor] | None:
        raise NotImplementedError

    def initial_masks(self) -> dict[str, torch.Tensor]:
        masks = self.score_masks()
        if masks is None:
            return {}
        self.check_no_empty_layer(masks)
        self.scored = True
        log.info("%s: per-layer density %s", self.name,
                 ", ".join(f"{key} {float(mask.float().mean()):.4f}" for key, mask in masks.items()))
        return masks

    def bind_optimizer(self, optimizer) -> None:
        if not self.scored and not self.mask_by_name:
            raise ConfigError(f"sparsifier={self.name} scores the model at attach from {self.needs}, which this "
                              f"run's TrainingContext does not give; it would train dense")
        super().bind_optimizer(optimizer)

    def load_state_dict(self, state: Mapping) -> None:
        super().load_state_dict(state)
        self.scored = True

    def extra_metrics(self) -> dict:
        return self.pattern_metrics()


@contextmanager
def scoring_mode(model: nn.Module, train: bool, device: torch.device) -> Iterator[None]:
    """Score in ``train`` or eval mode, then restore the mode, every buffer (BN running statistics) and the RNG."""
    training = model.training
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    devices = [device] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices), torch.enable_grad():
            model.train(train)
            yield
    finally:
        model.train(training)
        with torch.no_grad():
            for buffer, saved in buffers:
                buffer.copy_(saved)
