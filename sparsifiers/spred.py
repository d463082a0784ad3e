"""spred: L1 by SGD through a redundant parameterization (Ziyin & Wang, "spred: Solving L1 Penalty with SGD",
ICML 2023).

Every masked weight becomes ``w = u * v`` (two tensors of its shape) and u, v
get weight decay lambda (``weight_decay``): the penalty
``lambda / 2 (u^2 + v^2) >= lambda |u v|``, with equality at |u| = |v|, so the
minimisers are those of ``L(w) + lambda ||w||_1``, reached with plain SGD /
momentum. For a benchmark target, at the end of epoch
``floor(prune_at * epochs)`` (at least 1) the merged |u v| is projected to
exactly the target (``distribution: global``: one top-k, ``round(s * N)``
zeros; ``uniform`` / ``erk``: per-layer counts), BOTH factors are zeroed at
the pruned entries with their optimizer state, and the rest of the run
fine-tunes with that fixed mask. (0, 0) is absorbing: both gradients
(g v, g u), the decay and HAM's multiplicative step vanish there, and the
mask is re-applied after every step anyway; zeroing only v (the reference's
gradual ``prune()``) is not absorbing, since dL/dv = g u != 0.

The product is the ``parametrize`` product shared with Sign-In and PILoT
(``sparsifiers.reparameterization``): ``layer.weight`` is u * v for every
reader (evaluation, sparsity, sign flips, export's merge); the masked
tensor is the sign-carrying factor.

Choices and deviations (config keys):

- Init: ``init_gamma`` (default 1): u and v split the model's own init w0
  exactly (u v = w0) with ``v^2 - u^2 = init_gamma`` (the balanced split of
  Sign-In); weight decay then shrinks that gap (by (1 - lr lambda)^2 per step)
  toward the L1 regime |u| = |v|. ``init_gamma: 0`` is the sqrt split
  ``u = sign(w0) sqrt|w0|``, ``v = sqrt|w0|``, where the penalty equals
  lambda |w0| from the start; but SGD conserves v^2 - u^2 = 0 exactly (one
  step maps it to itself times (1 - lr lambda)^2 - lr^2 g^2), so |u| = |v|
  forever and no weight can change sign (in exact arithmetic; in floats only
  through rounding once both factors collapse near 0): when an initial sign
  is wrong the run does not reach the lasso solution (checked in the tests: error 0.69
  at gap 0, 4e-7 at gap 1 or 0.1 on the same problem). The reference's
  default draws u and v independently (their product has variance
  (2/fan_in)^2, far below the usual 2/fan_in); not offered.
- ``weight_decay`` (lambda) 1e-4: the reference fork's command-line default
  (its configs comment the key out; the per-sparsity lambdas live in an
  unpublished spreadsheet). It replaces the base weight decay for u and v
  (the merged w gets none on top).
- ``prune_at`` 0.9 with the exact projection (the same last-10 % window as
  STR's projection and PILoT's pruning); the reference's alternatives (a
  threshold on |u v| each epoch, a gradual cubic schedule zeroing only v,
  post-hoc pruning without fine-tuning) are not offered.
- ``factors_ham: true``: HAM, when on, acts on u and v like on any >= 2-D
  weight (the HAM paper lists spred without a +HAM row); false keeps HAM off them.
- Layers: every conv and linear weight, first conv and classifier included
  (the reference's flags default off). Doubles their parameters.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from sparsifiers.base import sparsity_report
from sparsifiers.config import flag, number
from sparsifiers.masked import MaskedSparsifier, MaskedTensors
from sparsifiers.registry import register_sparsifier
from sparsifiers.reparameterization import FactorTensors, add_product, epoch_at, late_event_warnings, projection_masks

log = logging.getLogger("ham_bench")


@register_sparsifier("spred")
class Spred(MaskedSparsifier):
    """spred (Ziyin & Wang, ICML 2023): weight decay on w = u * v solves L1; exact projection to the target."""

    name = "spred"
    selection_defaults = {"sparsity": 0.9, "distribution": "global"}
    distributions = ("global", "uniform", "erk")
    reparameterizes_weights = True

    def __init__(self, weight_decay: float = 1e-4, prune_at: float = 0.9, factors_ham: bool = True,
                 init_gamma: float = 1.0, **selection):
        super().__init__(**selection)
        self.init_gamma = float(number("init_gamma", init_gamma, low=0.0))
        self.weight_decay = float(number("weight_decay", weight_decay, low=0.0))
        self.prune_at = float(number("prune_at", prune_at, low=0.0, high=1.0, low_open=True))
        self.factors_ham = flag("factors_ham", factors_ham)
        self.factors: dict[str, tuple[nn.Parameter, nn.Parameter]] = {}
        self.pruned = False

    # ---- set-up -----------------------------------------------------------------
    def attach(self, model: nn.Module, context) -> None:
        super().attach(model, context)
        for key in self.masked_keys:  # (v, u) with u v = w0, v^2 - u^2 = init_gamma
            self.factors[key] = add_product(self.layers[key.rsplit(".", 1)[0]], gamma=self.init_gamma)

    def default_tensors(self) -> MaskedTensors:
        return FactorTensors(self.layers, self.factors)

    def initial_masks(self) -> dict[str, torch.Tensor]:
        return {}  # the L1 geometry sparsifies; the projection at prune_at makes it exact

    def parameter_groups(self) -> list[dict[str, Any]]:
        params = [p for pair in self.factors.values() for p in pair]
        return [{"params": params, "weight_decay": self.weight_decay, "ham": self.factors_ham}] if params else []

    # ---- per step / epoch -----------------------------------------------------------
    @torch.no_grad()
    def apply_masks(self) -> None:
        super().apply_masks()  # the sign-carrying factor
        for key, mask in self.mask_by_name.items():
            self.factors[key][0].mul_(mask)  # and the other: (0, 0) at every pruned entry

    def schedule_warnings(self) -> list[str]:
        return late_event_warnings(self.name, "prune_at", self.prune_at, self.context.epochs)

    def on_epoch_end(self, epoch: int, stats=None) -> None:
        if not self.pruned and epoch + 1 >= epoch_at(self.prune_at, self.context.epochs):
            self.project()
            report = sparsity_report(self)
            log.info("spred epoch %d: |u v| projected to sparsity %.4f (target %.4f); fine-tuning the fixed mask",
                     epoch + 1, report["achieved_sparsity"], report["target_sparsity"])

    @torch.no_grad()
    def project(self) -> None:
        """Exact-count magnitude projection of |u v|; both factors and their state zeroed where pruned."""
        masks = projection_masks(self, {key: (u * v).abs() for key, (v, u) in self.factors.items()})
        self.set_masks(masks, reset_pruned_state=True)  # FactorTensors: the state of both factors
        self.pruned = True

    # ---- reports and checkpoints ---------------------------------------------------
    @torch.no_grad()
    def extra_metrics(self) -> dict[str, Any]:
        l1 = sum(float((u * v).abs().sum(dtype=torch.float64)) for v, u in self.factors.values())
        return {"spred_pruned": self.pruned, "spred_l1_norm": l1}

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "pruned": self.pruned}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.pruned = bool(state["pruned"])
