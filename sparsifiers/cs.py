"""CS: Continuous Sparsification (Savarese, Silva & Maire, "Winning the Lottery with ...", NeurIPS 2020).

Every masked weight w gets a logit s (initial value s0) and, while searching,
the layer computes with a soft mask::

    W_eff = w * sigmoid(beta * s) / sigmoid(s0)       (= w exactly at beta = 1, s = s0 = 0)
    loss  = CE + l1 * sum(sigmoid(beta * s) / sigmoid(s0))

The run (``sparsifiers.rounds``, equal rounds, the LR schedule restarted in
each: ``schedule_position``) is ``rounds`` search rounds and one ticket
round. In every search round the temperature rises per step from 1 to
``beta_final``: ``beta = beta_final ** (q / (L - 1))`` at step q of a round
of L steps (the reference raises it per epoch, e ** (e / (E - 1))); at the
end of every search round but the last ``s <- min(beta * s, s0)`` and beta
restarts at 1 (the reference does not clamp after the last round: with
s0 = 0 the ticket ``s > 0`` would be empty). Weights and BN
buffers are snapshotted ``rewind_fraction`` into the first round (the
reference's epoch 2 of 85). After the last search round the ticket is cut
from the logits, the weights and buffers are rewound to the snapshot, the
optimizer state is reset (the reference's fresh SGD) and the ticket trains
``w * mask / sigmoid(s0)`` with a fixed exact mask: masked gradients,
re-masked weights, the logits out of the forward.

The L1 term's gradient ``l1 * beta * sigmoid'(beta s) / sigmoid(s0)`` is added
to the logits' gradients in ``mask_gradients`` (after every backward, SAM's
second included), because the step engine owns the loss; it does not touch
the weights' gradients, exactly as a term of the loss would.

Choices and deviations (config keys):

- ``ticket: topk`` (default): the top logits at the budget's exact counts
  so the run ends at exactly the target; ``positive``: the paper's
  ``1{s > 0}``, whose sparsity is whatever s0, l1 and the rounds give
  (logged as achieved next to the target). The budget defaults to per layer
  (``distribution: uniform``, every layer but the classifier at the target):
  the logits' scale differs by layer (each moves with its layer's gradient
  scale and is multiplied by beta at every round end), so one global top-k
  (``distribution: global``, the analogue of ``s > 0`` over all layers) can
  empty a layer; it emptied the first conv of the Fashion-MNIST CNN in a
  2-epoch run. A ticket that empties a layer is a ConfigError (raised at
  the end of the epoch it was cut in: the check reads the device).
- ``round_end_scale: temperature`` (default): ``s <- min(beta * s, s0)``, as
  the reference's ``prune(temp)`` reads; ``one``: ``min(s, s0)``, what its
  ``main.py`` runs (it resets the temperature first), which revives slightly
  negative logits at the next round's beta = 1.
- ``ticket_scale: true`` keeps the reference's ``1 / sigmoid(s0)`` factor in
  the ticket (2 for s0 = 0; harmless with BN after the conv, not without).
- Defaults: the only public recipe (CIFAR-10, 3 rounds + ticket of 85 epochs
  each): s0 = 0, l1 = 1e-8, beta_final = 200, rewind at epoch 2 of 85.
- The logits are one optimizer group with ``weight_decay: 0`` and
  ``ham: False`` (4-D like conv weights, so excluded explicitly); they share
  the run's optimizer and LR (the reference: a second SGD at the same LR,
  no decay). Both carry their state across search rounds, as the reference.
- Layers: every conv and linear but the classifier (``dense_last: true``;
  the reference also keeps its 1x1 shortcuts dense, which cannot be told
  apart generically).
- During search the soft mask reaches exact zeros only by float underflow:
  ``masks()`` is empty until the ticket; sparsity is the ticket's.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from sparsifiers.budget import BudgetedPruning
from sparsifiers.config import choice, flag, number
from sparsifiers.masked import MaskedTensors
from sparsifiers.optimizer_state import reset_state
from sparsifiers.registry import register_sparsifier
from sparsifiers.reparameterization import OriginalTensors
from sparsifiers.rounds import Rounds, WeightSnapshot


def temperature(step_in_round: int, round_length: int, beta_final: float) -> float:
    """beta at step q of a round of L steps: beta_final ** (q / (L - 1)), 1 at the start."""
    return beta_final ** (step_in_round / (round_length - 1)) if round_length > 1 else beta_final


class SoftMaskWeight(nn.Module):
    """Parametrization ``w -> w * sigmoid(beta * s) / sigmoid(s0)``; ``w * scale`` once the ticket is fixed."""

    def __init__(self, shape, s0: float, device):
        super().__init__()
        self.s = nn.Parameter(torch.full(tuple(shape), float(s0), device=device))
        self.norm = 1.0 / (1.0 + math.exp(-s0))  # sigmoid(s0), a Python float: no sync in forward
        self.beta = 1.0
        self.ticket_scale: float | None = None  # set when the ticket is cut

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if self.ticket_scale is not None:
            return weight * self.ticket_scale
        return weight * (torch.sigmoid(self.beta * self.s) / self.norm)


@register_sparsifier("cs")
class ContinuousSparsification(BudgetedPruning):
    """Continuous Sparsification (Savarese et al., NeurIPS 2020): soft masks annealed by temperature, then a ticket."""

    name = "cs"
    selection_defaults = {"sparsity": 0.9, "distribution": "uniform", "dense_first": False, "dense_last": True}
    reparameterizes_weights = True
    unused_parameters_under_ddp = True  # the logits leave the forward at the ticket

    def __init__(self, rounds: int = 3, s0: float = 0.0, l1: float = 1e-8, beta_final: float = 200.0,
                 rewind_fraction: float = 2 / 85, ticket: str = "topk", round_end_scale: str = "temperature",
                 ticket_scale: bool = True, **budget):
        super().__init__(**budget)
        self.search_rounds = int(number("rounds", rounds, int, low=1))
        self.s0 = float(number("s0", s0))
        self.l1 = float(number("l1", l1, low=0.0))
        self.beta_final = float(number("beta_final", beta_final, low=1.0))
        self.rewind_fraction = float(number("rewind_fraction", rewind_fraction, low=0.0, high=1.0, high_open=True))
        self.ticket = choice("ticket", ticket, ("topk", "positive"))
        self.round_end_scale = choice("round_end_scale", round_end_scale, ("temperature", "one"))
        self.ticket_scale = flag("ticket_scale", ticket_scale)
        self.gates: dict[str, SoftMaskWeight] = {}
        self.rounds: Rounds | None = None
        self.snapshot: WeightSnapshot | None = None
        self.rewind_step = 0
        self.round = 0
        self.next_step = 0
        self.ticket_unchecked = False

    # ---- set-up -----------------------------------------------------------------
    def attach(self, model: nn.Module, context) -> None:
        super().attach(model, context)
        for key in self.masked_keys:
            layer = self.layers[key.rsplit(".", 1)[0]]
            gate = SoftMaskWeight(layer.weight.shape, self.s0, layer.weight.device)
            parametrize.register_parametrization(layer, "weight", gate)
            self.gates[key] = gate
        self.rounds = Rounds(context.total_steps, self.search_rounds + 1, 0.0,
                             f"sparsifier.rounds={self.search_rounds} (+ the ticket round)")
        self.rewind_step = round(self.rewind_fraction * self.rounds.length)
        self.snapshot = WeightSnapshot(model, exclude=[gate.s for gate in self.gates.values()])
        if self.rewind_step == 0:
            self.snapshot.take()
        self._set_beta(0)

    def default_tensors(self) -> MaskedTensors:
        return OriginalTensors(self.layers)

    def initial_masks(self) -> dict[str, torch.Tensor]:
        return {}  # soft masks until the ticket

    def parameter_groups(self) -> list[dict[str, Any]]:
        logits = [gate.s for gate in self.gates.values()]
        return [{"params": logits, "weight_decay": 0.0, "ham": False}] if logits else []

    # ---- schedule ------------------------------------------------------------------
    @property
    def searching(self) -> bool:
        return self.round < self.search_rounds

    def schedule_position(self, step: int) -> int:
        return self.rounds.schedule_position(step)

    def trains_dense(self, step: int) -> bool:
        return self.rounds.round_of(step) < self.search_rounds

    def _set_beta(self, step: int) -> None:
        r = self.rounds.round_of(min(step, self.rounds.total - 1))
        ends = self.rounds.starts[1:] + [self.rounds.total]
        beta = temperature(step - self.rounds.starts[r], ends[r] - self.rounds.starts[r], self.beta_final)
        for gate in self.gates.values():
            gate.beta = beta if r < self.search_rounds else 1.0

    # ---- per step ----------------------------------------------------------------
    @torch.no_grad()
    def mask_gradients(self) -> None:
        super().mask_gradients()
        if not (self.searching and self.l1):
            return
        for gate in self.gates.values():  # d/ds of l1 * sum(sigmoid(beta s) / sigmoid(s0))
            if gate.s.grad is not None:
                soft = torch.sigmoid(gate.beta * gate.s)
                gate.s.grad.add_(soft * (1.0 - soft), alpha=self.l1 * gate.beta / gate.norm)

    def after_step(self, step: int) -> None:
        self.apply_masks()
        if self.rewind_step and step + 1 == self.rewind_step:
            self.snapshot.take()
        if self.rounds.ends_round(step):
            self._end_round()
        self.next_step = step + 1
        self._set_beta(step + 1)

    @torch.no_grad()
    def _end_round(self) -> None:
        self.round += 1
        if not self.searching:  # after the last search round the ticket reads the logits as they are
            self.cut_ticket()
            return
        for gate in self.gates.values():
            scale = gate.beta if self.round_end_scale == "temperature" else 1.0
            gate.s.mul_(scale).clamp_(max=self.s0)

    @torch.no_grad()
    def cut_ticket(self) -> None:
        """The mask from the logits, weights and buffers back to the snapshot, a fresh optimizer, a fixed mask."""
        logits = {key: gate.s.detach() for key, gate in self.gates.items()}
        if self.ticket == "positive":
            masks = {key: s > 0 for key, s in logits.items()}
        else:
            masks = self.budget_masks(logits, lambda size, final, density: final)
        self.ticket_unchecked = True  # the layer-collapse check reads the device: at the epoch's end
        self.snapshot.restore()
        for gate in self.gates.values():
            gate.ticket_scale = 1.0 / gate.norm if self.ticket_scale else 1.0
        self.set_masks(masks, reset_pruned_state=True)
        reset_state(self.optimizer)

    def on_epoch_end(self, epoch: int, stats=None) -> None:
        if self.ticket_unchecked:
            self.check_no_empty_layer(self.mask_by_name)
            self.ticket_unchecked = False

    # ---- reports and checkpoints -------------------------------------------------------
    @torch.no_grad()
    def extra_metrics(self) -> dict[str, Any]:
        positive = sum(int((gate.s > 0).sum()) for gate in self.gates.values())
        total = sum(gate.s.numel() for gate in self.gates.values())
        return {"cs_round": self.round, "cs_ticket": not self.searching,
                "cs_beta": next(iter(self.gates.values())).beta if self.gates else 1.0,
                "cs_positive_logits": positive / total if total else 0.0, **self.pattern_metrics()}

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "round": self.round, "next_step": self.next_step,
                "snapshot": self.snapshot.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.round = int(state["round"])
        self.next_step = int(state["next_step"])
        self.snapshot.load_state_dict(state["snapshot"])
        for gate in self.gates.values():
            gate.ticket_scale = None if self.searching else (1.0 / gate.norm if self.ticket_scale else 1.0)
        self._set_beta(self.next_step)
