"""FLOP counts of sparse models and sparse training: the ONE place where the accounting is defined.

Units. One FLOP is one multiply or one add, so one multiply-add counts 2
(the convention behind RigL's 8.2e9 test FLOPs for ResNet-50). Only conv and
linear layers (``sparsifiers.base.prunable_layers``) are counted; biases,
normalization, activations, pooling and the loss are left out, as in the
sparse-training papers. A sparse layer is costed as if a sparse kernel
skipped its zeros; PyTorch itself still runs dense kernels.

Inference (per sample, measured on the real input shape). One forward pass
of one sample of ``input_shape`` with hooks on every conv/linear module
gives ``positions_l``: how many times each weight of layer l is used (the
output's spatial size for a conv, the leading dims for a linear; summed
over calls if a layer is called more than once). Then::

    f_D = sum_l 2 * positions_l * numel(W_l)        dense forward
    f_S = sum_l 2 * positions_l * nnz(W_eff_l)      sparse forward = dense x density, per layer

where ``nnz`` counts the exact nonzeros of the EFFECTIVE weight
(``sparsifier.effective_weights()``): the model as exported, whatever the
method (STR's soft threshold, Sign-In/PILoT's m * w, AC/DC's last phase).

Training costs the sparse STRUCTURE a method trains, i.e. the active
entries of its current mask: ``f_S(t) = sum_l 2 * positions_l * active_l(t)``
with ``active_l`` the ones in ``sparsifier.masks()[<layer>.weight]``, or
every weight of a layer that has no mask (kept-dense layers, AC/DC's dense
phases, PILoT before its pruning). STR's mask is the support of its soft
threshold, so its training cost follows its growing threshold. A weight
RigL just regrew is active at value 0 and is costed (a sparse kernel
computes it); that is the only place where f_S(t) and the inference count
can differ. Per step of ``B`` samples (a backward pass costs two forwards:
one for the input gradients, one for the weight gradients)::

    ordinary step            B * P * 3 f_S(t)
    dense-gradient step      B * (2 f_S(t) + f_D)      (+ B * (P - 1) * 3 f_S(t) if the optimizer step runs)
    HAM, per optimizer step  9 * N_HAM

- ``P`` = the step record's passes: 2 when SAM stepped (its second
  forward/backward at the perturbed point), else 1. SAM's own elementwise
  work (norm, perturbation) is not counted.
- Dense-gradient steps are the steps whose record says a dense gradient was
  taken (the sparsifier declared ``needs_dense_gradient``: RigL's mask
  updates): forward and input gradients stay sparse, the weight gradient is
  dense. Where the record says the optimizer step was skipped (RigL's
  default on those steps) SAM's second pass and HAM did not run.
- HAM: ``theta * exp(clamp(-lr * (alpha * sign(theta) * g + beta)))`` is 9
  elementwise ops per covered weight (sign, 2 multiplies, add, multiply by
  -lr, 2 clamp comparisons, exp, multiply), for both variants; ``N_HAM`` =
  the weights HAM itself reports it covers (``HAM.covered_numel()``: its
  ``min_ndim``, ``param_filter``, ``ham: False`` groups and alpha = beta = 0
  groups respected), dense (HAM multiplies masked zeros too).
  Base-optimizer updates are not counted.
- The reparameterization's own elementwise work (STR's threshold, m * w and
  its two gradient products) is not counted.

The STANDARD accounting (summary.json's ``train_flops``), with ``f_S`` the
forward FLOPs of the mask state at report time (the end of the run)::

    steps the method declares it trains dense (``trains_dense``: the dense
    baseline, AC/DC's warm-up and decompressed phases)     3 f_D per sample
    dense-gradient steps (RigL's U updates)                2 f_S + f_D
    every other step (static sparse, AC/DC compressed,
    STR and PILoT at their density at report time)         3 f_S

With an update after every dT ordinary steps all through training the RigL
rows are the paper's average (3 f_S dT + 2 f_S + f_D) / (dT + 1) per step
(``rigl_average_step_flops``). Then x P and + HAM as above, over the steps
the run made (``ham_bench.metrics.flops.FlopsMeter`` counts them from the
step records). The MEASURED accounting (``train_flops_measured``, the same
meter) applies the same per-step formulas with ``f_S(t)`` taken at every
step from the mask state that step trained with, so it is
exact for methods whose density changes (AC/DC phases, STR's threshold,
PILoT's late pruning). For constant-count methods (random, RigL) the two
agree exactly.

Fraction of dense: the run's FLOPs over dense training of the same model for
the same steps and batch, ``B * 3 f_D`` per step, no SAM, no HAM (so dense
SAM shows 2.0, and HAM's share is visible).
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from sparsifiers.selection import prunable_layers

FLOPS_PER_MULTIPLY_ADD = 2
HAM_FLOPS_PER_WEIGHT = 9


# ---- the forward pass ----------------------------------------------------------------------
@torch.no_grad()
def layer_positions(model: nn.Module, input_shape) -> dict[str, int]:
    """How many times each weight of every conv/linear layer is used in the forward pass of ONE sample.

    ``input_shape`` is one sample's shape, without the batch dimension (e.g.
    ``(1, 28, 28)``). Runs one forward pass on zeros in eval mode (no batch-norm
    statistics change, no RNG is drawn) and restores every module's mode.
    Keys are ``<layer>.weight``, like ``sparsifier.effective_weights()``.
    """
    layers = prunable_layers(model)
    positions = {f"{name}.weight": 0 for name in layers}
    handles = []
    for name, module in layers.items():
        out_dim = module.out_features if isinstance(module, nn.Linear) else module.out_channels

        def count(module, inputs, output, key=f"{name}.weight", out_dim=out_dim):
            positions[key] += output.numel() // (output.shape[0] * out_dim)

        handles.append(module.register_forward_hook(count))
    modes = {module: module.training for module in model.modules()}
    parameter = next(model.parameters())
    try:
        model.eval()
        model(torch.zeros((1, *tuple(int(d) for d in input_shape)), device=parameter.device,
                          dtype=parameter.dtype))
    finally:
        for handle in handles:
            handle.remove()
        for module, training in modes.items():
            module.training = training
    return positions


def layer_weights(model: nn.Module, sparsifier=None) -> dict[str, torch.Tensor]:
    """The effective weight of every conv/linear layer, by ``<layer>.weight`` (the sparsifier's view first)."""
    weights = dict(sparsifier.effective_weights()) if sparsifier is not None else {}
    for name, module in prunable_layers(model).items():
        if f"{name}.weight" not in weights:
            weights[f"{name}.weight"] = module.weight.detach()
    return weights


def forward_flops(positions: Mapping[str, int], weights: Mapping[str, torch.Tensor]) -> dict[str, int]:
    """Forward FLOPs of one sample per layer: 2 * positions * nonzeros of the given weights (a host sync)."""
    return {key: FLOPS_PER_MULTIPLY_ADD * count * int(torch.count_nonzero(weights[key]))
            for key, count in positions.items()}


def dense_forward_flops(positions: Mapping[str, int], weights: Mapping[str, torch.Tensor]) -> dict[str, int]:
    """f_D per layer: 2 * positions * numel."""
    return {key: FLOPS_PER_MULTIPLY_ADD * count * weights[key].numel() for key, count in positions.items()}


def active_weights(sparsifier, weights: Mapping[str, torch.Tensor]) -> dict[str, int]:
    """Active entries per layer of the current mask state (every entry where ``masks()`` has none). Syncs."""
    masks = sparsifier.masks() if sparsifier is not None else {}
    return {key: int(masks[key].sum()) if key in masks else w.numel() for key, w in weights.items()}


def training_forward_flops(positions: Mapping[str, int], sparsifier,
                           weights: Mapping[str, torch.Tensor]) -> int:
    """f_S of the current mask state, per sample (module docstring)."""
    active = active_weights(sparsifier, weights)
    return sum(FLOPS_PER_MULTIPLY_ADD * count * active[key] for key, count in positions.items())


def inference_flops(model: nn.Module, sparsifier, input_shape=None,
                    positions: Mapping[str, int] | None = None) -> dict[str, Any]:
    """Inference FLOPs of one sample: sparse (nonzeros of the effective weights) and dense, total and per layer."""
    positions = layer_positions(model, input_shape) if positions is None else positions
    weights = layer_weights(model, sparsifier)
    sparse = forward_flops(positions, weights)
    dense = dense_forward_flops(positions, weights)
    total, total_dense = sum(sparse.values()), sum(dense.values())
    return {
        "inference_flops": total,
        "inference_flops_dense": total_dense,
        "inference_flops_fraction_of_dense": total / total_dense if total_dense else 1.0,
        "inference_flops_per_layer": {key: {"flops": sparse[key], "flops_dense": dense[key],
                                            "density": sparse[key] / dense[key] if dense[key] else 1.0}
                                      for key in positions},
    }


# ---- per-step accounting -----------------------------------------------------------------------
def training_step_flops(forward: int, forward_dense: int, batch_size: int, passes: int = 1,
                        dense_gradient: bool = False, optimizer_step: bool = True, ham_weights: int = 0) -> int:
    """FLOPs of one training step (module docstring): ``forward`` is f_S(t), ``forward_dense`` f_D, per sample."""
    if dense_gradient:
        per_sample = 2 * forward + forward_dense + ((passes - 1) * 3 * forward if optimizer_step else 0)
    else:
        per_sample = passes * 3 * forward
    return batch_size * per_sample + (HAM_FLOPS_PER_WEIGHT * ham_weights if optimizer_step else 0)


def rigl_average_step_flops(forward_sparse: float, forward_dense: float, ordinary_steps: int) -> float:
    """RigL's per-step average (Evci et al. 2020, appendix): (3 f_S dT + 2 f_S + f_D) / (dT + 1), per sample."""
    dt = ordinary_steps
    return (3 * forward_sparse * dt + 2 * forward_sparse + forward_dense) / (dt + 1)
