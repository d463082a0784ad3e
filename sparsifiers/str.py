"""STR: Soft Threshold Reparameterization (Kusupati et al., ICML 2020).

Each masked layer computes its forward weight as

    W_eff = sign(W) * relu(|W| - sigmoid(s))

with one learnable scalar ``s`` per layer (the sigmoid variant, the only one
that works per the paper). ``W`` is trained through W_eff (entries under the
threshold get no gradient); ``s`` is trained by the loss and pulled up by its
own weight decay, which is what makes the threshold grow over training.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from sparsifiers.base import sparsity_report
from sparsifiers.config import number
from sparsifiers.masked import MaskedSparsifier, MaskedTensors
from sparsifiers.registry import register_sparsifier
from sparsifiers.reparameterization import OriginalTensors, epoch_at, late_event_warnings, projection_masks

log = logging.getLogger("ham_bench")


class SoftThresholdWeight(nn.Module):
    """Parametrization ``W -> sign(W) * relu(|W| - sigmoid(s))``; identity once the layer is projected."""

    def __init__(self, s_init: float):
        super().__init__()
        self.s = nn.Parameter(torch.tensor(float(s_init)))
        self.projected = False  # a Python flag, not a buffer: no host sync in forward

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if self.projected:
            return weight
        return torch.sign(weight) * torch.relu(weight.abs() - torch.sigmoid(self.s))


@register_sparsifier("str")
class STR(MaskedSparsifier):
    """Soft Threshold Reparameterization (ICML 2020), sigmoid variant, with an optional final projection.

    Choices (all config keys, ``configs/sparsifier/str.yaml``):

    - ``s_init`` (the paper's sInit, default -50) and ``threshold_weight_decay``
      (the weight decay of the thresholds' own group, default 2e-2): a
      small-scale default. Measured on Fashion-MNIST (MLP 784-300-100-10,
      SGD lr 0.05, momentum 0.9, cosine, 5 epochs, no projection): (-50,
      2e-2) reaches 0.88 / 0.92 / 0.92 sparsity after epochs 2 / 4 / 5 at
      87.2 % test accuracy; (-10, 5e-3) stalls at 0.59, (-100, 1.5e-2) at
      0.84, (-10, 5e-2) overshoots to 0.99. At this scale the weight decay
      sets the sparsity and sInit hardly matters. The paper's settings are
      sInit -3200 with weight decay 2.25e-5 (ImageNet) and sInit -100..-200
      with weight decay >= 5e-4 (CIFAR): the achieved sparsity is set by
      (sInit, weight decay, lr schedule, run length), not by a target, so
      other runs must set both keys.
    - The thresholds ``s`` are returned by ``parameter_groups`` as
      ``{"params": [s...], "weight_decay": threshold_weight_decay, "ham": False}``:
      weight-decayed, never touched by HAM.
    - STR has no target knob; ``sparsity`` is the target the run is compared
      at. ``final_projection: true`` (default) makes the result exactly that
      sparse: at the end of epoch ``floor(projection_at * epochs)`` (at least
      1; ``projection_at`` default 0.9: the last 10 % of training fine-tunes)
      W is replaced by W_eff, the masked layers are pruned to the target by
      the scores ``|W| - sigmoid(s_l)`` (``distribution: global``, default: one
      top-k over all masked layers with exactly ``round(sparsity * N)`` zeros;
      ``uniform``/``erk``: per-layer exact counts), the thresholds are frozen
      and training continues with that fixed mask on the plain W. The score
      equals |W_eff| for surviving weights, so when STR is less sparse than
      the target this is magnitude pruning of W_eff; when it is sparser, the
      entries nearest their threshold are re-allowed, starting at 0 (until
      fine-tuning moves them they still count as zeros, so the achieved
      sparsity can then exceed the target). ``final_projection: false`` is
      plain STR: the achieved sparsity is whatever the thresholds give.
    - Layers: every conv and linear weight gets a threshold (``dense_first``
      null means masked, as for ``global``; ``dense_last`` false).
    - Target and achieved sparsity over the masked layers are logged every
      epoch (log line; the trainer's rows carry them for every method as
      ``target_sparsity_masked_layers`` / ``sparsity_masked_layers``);
      ``extra_metrics()`` adds the mean threshold sigmoid(s)
      (``str_threshold_mean``) and ``str_projected``.
    - ``masks()`` is the support of W_eff (``|W| > sigmoid(s)``) before the
      projection and the fixed mask after it.

    The soft threshold is a ``torch.nn.utils.parametrize`` parametrization
    (see ``sparsifiers.reparameterization`` for why), so ``layer.weight`` is
    W_eff for every reader and ``effective_weights()`` returns it; W is
    ``layer.parametrizations.weight.original`` (what ``tensors.get(key)`` returns)
    and s is ``layer.parametrizations.weight[0].s``.
    """

    name = "str"
    selection_defaults = {"sparsity": 0.9, "distribution": "global"}
    distributions = ("global", "uniform", "erk")
    reparameterizes_weights = True

    def __init__(self, s_init: float = -50.0, threshold_weight_decay: float = 2e-2, final_projection: bool = True,
                 projection_at: float = 0.9, **selection):
        super().__init__(**selection)
        self.s_init = float(number("s_init", s_init))
        self.threshold_weight_decay = float(number("threshold_weight_decay", threshold_weight_decay, low=0.0))
        self.final_projection = bool(final_projection)
        self.projection_at = float(number("projection_at", projection_at, low=0.0, high=1.0, low_open=True))
        self.thresholds: dict[str, SoftThresholdWeight] = {}
        self.projected = False

    @property
    def unused_parameters_under_ddp(self) -> bool:
        """After the projection the thresholds leave the forward pass (DDP must allow unused parameters)."""
        return self.final_projection

    # ---- set-up -----------------------------------------------------------------
    def attach(self, model: nn.Module, context) -> None:
        super().attach(model, context)
        for key in self.masked_keys:
            layer = self.layers[key.rsplit(".", 1)[0]]
            threshold = SoftThresholdWeight(self.s_init).to(layer.weight.device)
            parametrize.register_parametrization(layer, "weight", threshold)
            self.thresholds[key] = threshold

    def default_tensors(self) -> MaskedTensors:
        return OriginalTensors(self.layers)  # the raw W of a thresholded layer

    def initial_masks(self) -> dict[str, torch.Tensor]:
        return {}  # the soft threshold decides the support until the projection

    def parameter_groups(self) -> list[dict[str, Any]]:
        if not self.thresholds:
            return []
        return [{"params": [t.s for t in self.thresholds.values()],
                 "weight_decay": self.threshold_weight_decay, "ham": False}]

    def schedule_warnings(self) -> list[str]:
        if not self.final_projection:
            return ["str: final_projection=false: the achieved sparsity is whatever the thresholds reach "
                    f"(the target {self.selection.sparsity:g} is only reported, not enforced)"]
        return late_event_warnings(self.name, "projection_at", self.projection_at, self.context.epochs)

    @property
    def projection_epoch(self) -> int:
        """1-based epoch at whose end the projection happens."""
        return epoch_at(self.projection_at, self.context.epochs)

    # ---- per epoch ---------------------------------------------------------------
    def on_epoch_end(self, epoch: int, stats=None) -> None:
        if self.final_projection and not self.projected and epoch + 1 >= self.projection_epoch:
            self.project()
        report, metrics = sparsity_report(self), self.extra_metrics()
        log.info("STR epoch %d: target sparsity %.4f, achieved %.4f, mean threshold %.3g%s", epoch + 1,
                 report["target_sparsity"], report["achieved_sparsity"], metrics["str_threshold_mean"],
                 " (projected: fixed mask)" if self.projected else "")

    @torch.no_grad()
    def project(self) -> None:
        """W <- W_eff, exact-count magnitude pruning to the target, thresholds frozen, mask fixed."""
        scores = {key: self.tensors.get(key).abs() - torch.sigmoid(t.s) for key, t in self.thresholds.items()}
        masks = projection_masks(self, scores)
        for key, threshold in self.thresholds.items():
            weight = self.tensors.get(key)
            weight.copy_(torch.sign(weight) * torch.relu(scores[key]))
            threshold.projected = True
        self.set_masks(masks, reset_pruned_state=True)
        self.projected = True

    # ---- reports -----------------------------------------------------------------
    @torch.no_grad()
    def masks(self) -> dict[str, torch.Tensor]:
        if self.projected:
            return dict(self.mask_by_name)
        return {key: self.tensors.get(key).abs() > torch.sigmoid(t.s) for key, t in self.thresholds.items()}

    @torch.no_grad()
    def extra_metrics(self) -> dict[str, Any]:
        thresholds = [float(torch.sigmoid(t.s.detach())) for t in self.thresholds.values()]
        return {"str_threshold_mean": sum(thresholds) / len(thresholds) if thresholds else 0.0,
                "str_projected": self.projected}

    # ---- checkpoints -------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "projected": self.projected}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.projected = bool(state.get("projected", False))
        for threshold in self.thresholds.values():
            threshold.projected = self.projected
        super().load_state_dict(state)
