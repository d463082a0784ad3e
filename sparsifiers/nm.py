"""N:M fine-grained structured sparsity trained from scratch with SR-STE (Zhou et al., ICLR 2021).

Every forward, for every N:M layer, the mask is recomputed from the dense
weight W: in each group of M consecutive entries along the input dimension
(``sparsifiers.masks.nm_groups``: (O, I) row-major for linears, (O, kh, kw, I)
i.e. NHWC for convs, the GEMM reduction dimension sparse tensor cores need)
the N largest |W| are kept (ties: the lower input index), and the layer
computes with ``W_tilde = W * mask``. The backward is SR-STE's::

    dL/dW = dL/dW_tilde + decay * (1 - mask) * W     (decay = lambda_W; 0 is the plain STE)

so the optimizer (and HAM, if on) updates the dense W everywhere; pruned
entries move under the straight-through gradient and are decayed toward
zero, and masks can change every step. ``after_step`` zeroes nothing.
``effective_weights()`` is ``W * mask`` (what sparsity, sign flips, FLOPs
and the contract see), ``masks()`` is the N:M top-N of the current |W|.
The per-step mask flip rate, SR-STE's own diagnostic, is the topology
meter's ``mask_churn_fraction`` (Hamming distance between consecutive
masks, summed over the epoch, over the N:M weights); ``extra_metrics()``
adds ``nm_valid``: per N:M layer, whether every group holds at most N nonzeros.

The mask is a ``torch.nn.utils.parametrize`` parametrization
(``sparsifiers.reparameterization``): ``layer.weight`` is W_tilde for every
reader, W is ``layer.parametrizations.weight.original``.

Choices and deviations (config keys):

- ``n``, ``m``: 2:4 (default) or 4:8, etc. The sparsity is ``1 - n/m`` on the
  N:M layers, not a free key (a ``sparsity`` that disagrees is an error).
- ``decay`` (lambda_W) 2e-4, the reference's default for its convs (its
  ``SparseLinear`` ignores its decay argument; here every layer uses it).
- Layers: every conv and linear whose input dimension divides by m; the
  classifier dense (``dense_last: true``, the reference's dense ``nn.Linear``).
  ``skip_indivisible: true`` (default) keeps layers whose input dimension
  does not divide by m dense (a 3- or 1-channel stem): the reference
  sparsifies the stem with groups straddling kernel positions, numerically
  valid but no hardware N:M layout; ``false`` does that too (needs the
  layer's size to divide by m).
- Optimizer state is never reset when a mask flips: the dense W (and its
  momentum) is trained everywhere, so a flip is a change of the forward
  support, not a regrowth from zero (as the reference).
- HAM acts on the dense W: pruned entries are not exactly zero in W, so HAM's
  "zeros stay zero" has nothing to keep here; the masked forward weight is.
- FLOPs: the standard accounting costs steps at the sparse forward; SR-STE's
  weight gradient is dense (as RigL's update steps), so it undercounts that
  part of the backward.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from sparsifiers.base import Sparsifier
from sparsifiers.budget import nm_settings
from sparsifiers.config import ConfigError, flag, number
from sparsifiers.masks import nm_divisible, nm_topk_mask, nm_validity
from sparsifiers.registry import register_sparsifier


class SRSTE(torch.autograd.Function):
    """W -> W * nm_mask(|W|) forward; straight-through plus ``decay * (1 - mask) * W`` backward."""

    @staticmethod
    def forward(ctx, weight: torch.Tensor, n: int, m: int, decay: float) -> torch.Tensor:
        mask = nm_topk_mask(weight.abs(), n, m)
        ctx.save_for_backward(weight, mask)
        ctx.decay = decay
        return weight * mask

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        weight, mask = ctx.saved_tensors
        return grad + ctx.decay * mask.logical_not() * weight, None, None, None


class NMWeight(nn.Module):
    """Parametrization ``W -> W * mask`` with the N:M mask of |W| recomputed in every forward (SR-STE backward)."""

    def __init__(self, n: int, m: int, decay: float):
        super().__init__()
        self.n, self.m, self.decay = n, m, decay

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return SRSTE.apply(weight, self.n, self.m, self.decay)


@register_sparsifier("nm")
class NMSparsifier(Sparsifier):
    """N:M structured sparsity with SR-STE (Zhou et al., ICLR 2021): masks recomputed every forward, dense W trained."""

    name = "nm"
    selection_defaults = {"distribution": "uniform", "dense_first": False, "dense_last": True}
    reparameterizes_weights = True

    def __init__(self, n: int = 2, m: int = 4, decay: float = 2e-4, skip_indivisible: bool = True, **selection):
        self.n, self.m = nm_settings(n, m)
        given = selection.get("sparsity")
        if given is not None and abs(float(given) - (1.0 - self.n / self.m)) > 1e-9:
            raise ConfigError(f"sparsifier.sparsity is fixed by n:m ({self.n}:{self.m} is "
                              f"{1 - self.n / self.m:g}), got {given}")
        super().__init__(**selection)
        self.selection = dataclasses.replace(self.selection, sparsity=1.0 - self.n / self.m)
        self.decay = float(number("decay", decay, low=0.0))
        self.skip_indivisible = flag("skip_indivisible", skip_indivisible)

    # ---- set-up -----------------------------------------------------------------
    def eligible(self, shape) -> bool:
        if self.skip_indivisible:
            return nm_divisible(shape, self.m)
        return torch.Size(shape).numel() % self.m == 0

    @property
    def masked_keys(self) -> list[str]:
        """The N:M layers: selected, not kept dense, and splittable into groups of m."""
        return [key for key in super().masked_keys if self.eligible(self.layers[key.rsplit(".", 1)[0]].weight.shape)]

    def attach(self, model: nn.Module, context) -> None:
        super().attach(model, context)
        for key in self.masked_keys:
            parametrize.register_parametrization(self.layers[key.rsplit(".", 1)[0]], "weight",
                                                 NMWeight(self.n, self.m, self.decay))

    def trains_dense(self, step: int) -> bool:
        return False

    # ---- reports -----------------------------------------------------------------
    def dense_weights(self) -> dict[str, torch.Tensor]:
        """The trained dense W of every N:M layer."""
        return {key: self.layers[key.rsplit(".", 1)[0]].parametrizations.weight.original for key in self.masked_keys}

    @torch.no_grad()
    def masks(self) -> dict[str, torch.Tensor]:
        return {key: nm_topk_mask(w.abs(), self.n, self.m) for key, w in self.dense_weights().items()}

    def masked_tensors(self) -> dict[str, torch.Tensor]:
        return self.dense_weights()

    def target_densities(self) -> dict[str, float]:
        masked = set(self.masked_keys)
        return {f"{name}.weight": self.n / self.m if f"{name}.weight" in masked else 1.0 for name in self.layers}

    def extra_metrics(self) -> dict[str, Any]:
        weights = self.effective_weights()
        return {"nm_valid": nm_validity({key: weights[key] for key in self.masked_keys}, self.n, self.m)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        pass  # the masks are a function of the weights, which the model's state holds
