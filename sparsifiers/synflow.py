"""SynFlow: iterative, data-free pruning by synaptic flow (Tanaka, Kunin, Yamins, Ganguli, NeurIPS 2020).

At attach, from the input shape alone (``TrainingContext.input_shape``)::

    every parameter and floating buffer p  ->  |p| in float64   ("linearize"; the model itself untouched)
    for k = 1 .. rounds (100):
        R = sum(f(1))          one all-ones input, eval mode
        S = |dR/dw * w|        per masked weight (pruned ones are 0 and stay pruned)
        keep the round(d ** (k / rounds) * N) largest S over all masked layers; zero the rest
    the final mask (exactly round(d * N)) goes to the real model, whose weights,
    signs and BatchNorm buffers were never touched; then a fixed mask (``sparsifiers.pai``)

The linearized network is the model evaluated by ``torch.func.functional_call``
on float64 absolute copies of its parameters and buffers, so nothing is
deep-copied and a reparameterized layer (Sign-In's theta = m * w) scores its
merged |m| * |w| through w: |dR/dw * w| = |dR/dtheta * theta|.

Choices (config keys): ``shifts: zero`` (default) sets biases and BN running
means to 0 in the linearized network, so R = 1^T (prod_l |W_l|) 1 exactly as
the paper defines it and flow is conserved layer to layer; ``abs`` is the
reference code, which takes |.| of them too: then every bias injects flow
of its own, and on an MLP with biases whole early layers can be pruned away
while the flow survives through the biases (layer collapse: 7 of 10 layers
emptied at 99 % on a 10-layer width-32 MLP, checked here). ``rounds`` 100 (the paper's ``--prune-epochs`` for
SynFlow); ``schedule: exponential`` (the reference default; ``linear``:
density 1 - (1 - d) k / rounds); ``distribution: global`` (reference
``--mask-scope global``; ``uniform`` / ``erk`` prune each layer toward its own
density), first conv and classifier pruned (``--dense-classifier False``),
biases and BN never pruned; eval mode (BN in train mode on one constant
image has zero variance). Float64 throughout (the public code ran float32,
where the products of |weights| along paths overflow or underflow with
depth). Exact counts with ties broken by the lower index (many scores are
exactly 0 once paths are cut); the reference's ``<= threshold`` can prune
more than asked. The mask does not depend on any data.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn
from torch.func import functional_call

from sparsifiers.config import choice, number
from sparsifiers.pai import PruneAtInit, scoring_mode
from sparsifiers.registry import register_sparsifier


SHIFTS = ("bias", "running_mean")  # additive terms: a layer's output is not linear in its weights with them


def linearized_state(model: nn.Module, shifts: str = "zero") -> dict[str, torch.Tensor]:
    """Float64 |p| of every parameter and floating buffer, by name (integer buffers as they are);
    ``shifts="zero"``: biases and BN running means at 0, so R = 1^T (prod |W_l|) 1 as the paper defines it."""
    def linear(name: str, t: torch.Tensor) -> torch.Tensor:
        if not t.is_floating_point():
            return t
        if shifts == "zero" and name.rsplit(".", 1)[-1] in SHIFTS:
            return torch.zeros_like(t, dtype=torch.float64)
        return t.detach().double().abs()

    state = {name: linear(name, p) for name, p in model.named_parameters()}
    state.update({name: linear(name, b) for name, b in model.named_buffers()})
    return state


def synflow_scores(model: nn.Module, state: Mapping[str, torch.Tensor], names: Mapping[str, str],
                   input_shape) -> dict[str, torch.Tensor]:
    """|dR/dw * w| of the tensors ``names`` (key -> parameter name) for R = sum(f(ones)) at ``state``."""
    leaves = {key: state[name].detach().requires_grad_() for key, name in names.items()}
    current = {**state, **{names[key]: leaf for key, leaf in leaves.items()}}
    device = next(iter(leaves.values())).device
    ones = torch.ones((1, *input_shape), dtype=torch.float64, device=device)
    flow = functional_call(model, current, (ones,)).sum()
    grads = torch.autograd.grad(flow, list(leaves.values()))
    return {key: (grad * leaf).detach().abs() for (key, leaf), grad in zip(leaves.items(), grads)}


@register_sparsifier("synflow")
class SynFlow(PruneAtInit):
    """SynFlow (Tanaka et al., NeurIPS 2020): data-free iterative pruning at init by synaptic flow, float64."""

    name = "synflow"
    needs = "the input shape (TrainingContext.input_shape)"

    def __init__(self, rounds: int = 100, schedule: str = "exponential", shifts: str = "zero", **selection):
        super().__init__(**selection)
        self.rounds = int(number("rounds", rounds, int, low=1))
        self.schedule = choice("schedule", schedule, ("exponential", "linear"))
        self.shifts = choice("shifts", shifts, ("zero", "abs"))

    def density_at(self, density: float, k: int) -> float:
        """The density kept after round ``k`` of ``rounds`` on the way to ``density``."""
        if self.schedule == "exponential":
            return density ** (k / self.rounds)
        return 1.0 - (1.0 - density) * k / self.rounds

    def score_masks(self) -> dict[str, torch.Tensor] | None:
        shape = self.context.input_shape
        keys = self.prune_keys()
        if shape is None:
            return None
        if not keys:
            return {}
        param_names = {id(p): name for name, p in self.model.named_parameters()}
        names = {key: param_names[id(self.tensors.get(key))] for key in keys}
        device = self.tensors.get(keys[0]).device
        masks: dict[str, torch.Tensor] = {}
        with scoring_mode(self.model, False, device):
            state = linearized_state(self.model, self.shifts)
            for k in range(1, self.rounds + 1):
                scores = synflow_scores(self.model, state, names, shape)
                if masks:  # pruned entries stay pruned: they rank below every live score, even a 0
                    scores = {key: torch.where(masks[key], score, -1.0) for key, score in scores.items()}

                def keep(size, final, density, k=k):
                    return final if k == self.rounds else max(final, round(self.density_at(density, k) * size))

                masks = self.budget_masks(scores, keep, index_ties=True)
                for key, mask in masks.items():
                    state[names[key]] = state[names[key]] * mask
        return {key: mask.to(self.tensors.get(key).device) for key, mask in masks.items()}
