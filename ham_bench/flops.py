"""FLOPs of sparse models and sparse training: the ONE place where the accounting is defined.

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

- ``P`` = 2 with SAM (its second forward/backward at the perturbed point),
  else 1. SAM's own elementwise work (norm, perturbation) is not counted.
- Dense-gradient steps are RigL's mask updates (``is_update_step`` of the
  sparsifier, or of ``sparsifier.inner`` under Sign-In): forward and input
  gradients stay sparse, the weight gradient is dense. With
  ``skip_step_on_update`` (RigL's default) the optimizer step, SAM's second
  pass and HAM do not run on those steps.
- HAM: ``theta * exp(clamp(-lr * (alpha * sign(theta) * g + beta)))`` is 9
  elementwise ops per covered weight (sign, 2 multiplies, add, multiply by
  -lr, 2 clamp comparisons, exp, multiply), for both variants; ``N_HAM`` =
  weights of every parameter with ndim >= 2, minus groups marked
  ``ham: False`` by the sparsifier (STR's thresholds are 0-d anyway), dense
  (HAM multiplies masked zeros too). Base-optimizer updates are not counted.
- The reparameterization's own elementwise work (STR's threshold, m * w and
  its two gradient products) is not counted.

Per method, the STANDARD accounting (closed form, ``flops_report``), with
``f_S`` the forward FLOPs of the mask state at report time (end of the run)::

    dense          3 f_D per sample per step
    static sparse  3 f_S                 (random PaI, +Sign-In)
    RigL           3 f_S on ordinary steps, 2 f_S + f_D on the U update steps the schedule has
                   (U = #{t < T_end : t >= first_update_step, (t - first) % dT == 0}). With an update
                   after every dT ordinary steps all through training this is the paper's average
                   (3 f_S dT + 2 f_S + f_D) / (dT + 1) per step (``rigl_average_step_flops``).
    AC/DC          by phase: 3 f_D on dense and decompressed steps, 3 f_S on compressed steps
    STR, PILoT,    3 f_S at the density at report time ("at its current density")
    others

and then x P and + HAM as above. The MEASURED accounting
(``TrainingFlopsMeter``) applies the same per-step formulas with ``f_S(t)``
taken at every step from the mask state that step trained with, so it is
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

from ham_bench.topology import mask_seen, mask_unchanged
from sparsifiers.base import prunable_layers

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


# ---- per-step accounting --------------------------------------------------------------------------
def _get(cfg, key: str, default=None):
    if cfg is None:
        return default
    getter = getattr(cfg, "get", None)
    return getter(key, default) if callable(getter) else getattr(cfg, key, default)


def passes_per_step(optimizer_cfg) -> int:
    """Forward/backward passes per optimizer step: 2 for SAM, else 1."""
    name = str(_get(optimizer_cfg, "name", "") or "").lower()
    return 2 if name == "sam" else 1


def ham_covered_weights(model: nn.Module, sparsifier=None, ham_cfg=None) -> int:
    """Weights HAM updates each optimizer step (0 when HAM is off): ndim >= 2, not in a ``ham: False`` group."""
    if ham_cfg is None or not _get(ham_cfg, "enabled", False):
        return 0
    excluded = set()
    if sparsifier is not None:
        for group in sparsifier.parameter_group_overrides():
            if group.get("ham", True) is False:
                excluded.update(id(p) for p in group["params"])
    return sum(p.numel() for p in model.parameters()
               if p.ndim >= 2 and p.requires_grad and id(p) not in excluded)


def method_of(sparsifier):
    """The object that owns the schedule: ``sparsifier.inner`` for wrappers (Sign-In), else the sparsifier."""
    inner = getattr(sparsifier, "inner", None)
    return inner if inner is not None else sparsifier


def is_dense_gradient_step(method, step: int) -> bool:
    """Whether ``step`` needs the dense weight gradient (RigL's mask updates)."""
    check = getattr(method, "is_update_step", None)
    return bool(check(step)) if callable(check) else False


def skips_optimizer_on_update(method) -> bool:
    return bool(getattr(method, "skip_step_on_update", False))


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


def step_counts(sparsifier, steps: int, method_name: str | None = None) -> dict[str, int]:
    """How many of the run's ``steps`` are costed at f_D, at f_S, and at f_S with a dense gradient.

    AC/DC's phases come from ``phase_at(step)`` and RigL's updates from
    ``is_update_step(step)`` of the method (``method_of``); the method name
    ``dense`` costs every step at f_D.
    """
    method = method_of(sparsifier)
    base = (method_name or getattr(sparsifier, "name", "dense")).split("+")[0]
    if base == "dense":
        return {"dense": steps, "sparse": 0, "dense_gradient": 0}
    counts = {"dense": 0, "sparse": 0, "dense_gradient": 0}
    phase_at = getattr(method, "phase_at", None)
    for step in range(steps):
        if is_dense_gradient_step(method, step):
            counts["dense_gradient"] += 1
        elif callable(phase_at) and phase_at(step) != "compressed":
            counts["dense"] += 1
        else:
            counts["sparse"] += 1
    return counts


def flops_report(model: nn.Module, sparsifier, input_shape, optimizer_cfg=None, ham_cfg=None, steps: int = 0,
                 method_name: str | None = None, batch_size: int = 1, meter: "TrainingFlopsMeter | None" = None
                 ) -> dict[str, Any]:
    """Run-level FLOPs for summary.json: inference now, standard training accounting, measured if ``meter``.

    ``steps`` is the run's number of training steps, ``batch_size`` the
    samples per step (1: FLOPs per sample). ``method_name`` picks the
    formula (default ``sparsifier.name``). Reads weights: a host sync.
    """
    positions = meter.positions if meter is not None else layer_positions(model, input_shape)
    report = inference_flops(model, sparsifier, positions=positions)
    f_d = report["inference_flops_dense"]
    f_s = training_forward_flops(positions, sparsifier, layer_weights(model, sparsifier))
    method = method_of(sparsifier)
    passes = passes_per_step(optimizer_cfg)
    ham = ham_covered_weights(model, sparsifier, ham_cfg)
    counts = step_counts(sparsifier, steps, method_name)
    skip = skips_optimizer_on_update(method)
    total = (counts["dense"] * training_step_flops(f_d, f_d, batch_size, passes, ham_weights=ham)
             + counts["sparse"] * training_step_flops(f_s, f_d, batch_size, passes, ham_weights=ham)
             + counts["dense_gradient"] * training_step_flops(f_s, f_d, batch_size, passes, dense_gradient=True,
                                                              optimizer_step=not skip, ham_weights=ham))
    optimizer_steps = steps - (counts["dense_gradient"] if skip else 0)
    reference = steps * batch_size * 3 * f_d
    report.update({
        "train_flops": total,
        "train_flops_per_step": total / steps if steps else 0.0,
        "train_flops_dense_reference": reference,
        "train_flops_fraction_of_dense": total / reference if reference else 0.0,
        "train_flops_ham": HAM_FLOPS_PER_WEIGHT * ham * optimizer_steps,
        "train_flops_formula": (f"{(method_name or getattr(sparsifier, 'name', 'dense'))}: "
                                f"{counts['dense']} steps at 3 f_D, {counts['sparse']} at 3 f_S, "
                                f"{counts['dense_gradient']} at 2 f_S + f_D; x{passes} passes (SAM); "
                                f"HAM {HAM_FLOPS_PER_WEIGHT} x {ham} weights per optimizer step; "
                                f"batch {batch_size}"),
    })
    if meter is not None:
        report.update(meter.summary())
    return report


# ---- the measured accounting, step by step ------------------------------------------------------------
class TrainingFlopsMeter:
    """Training FLOPs counted step by step from the mask state each step trained with (no host sync per step).

    ``update_after_step(step)`` once per training step, after
    ``sparsifier.after_step``; ``epoch_report()`` once per epoch, after
    ``sparsifier.on_epoch_end``. The mask state read after step t is the one
    step t + 1 trains with, so it is charged to step t + 1; ``epoch_report``
    and ``load_state_dict`` read it again, so masks changed by epoch hooks or
    restored from a checkpoint are seen. A layer's active count is
    recomputed (on the device) only when its mask tensor changed
    (``topology.mask_unchanged``): fixed masks cost nothing per step, RigL
    pays on update steps, STR (a new support tensor every call) every step.
    """

    def __init__(self, model: nn.Module, sparsifier, input_shape, optimizer_cfg=None, ham_cfg=None,
                 batch_size: int = 1):
        self.model = model
        self.sparsifier = sparsifier
        self.method = method_of(sparsifier)
        self.batch_size = int(batch_size)
        self.positions = layer_positions(model, input_shape)
        self.keys = list(self.positions)
        weights = layer_weights(model, sparsifier)
        self.numel = {key: weights[key].numel() for key in self.keys}
        self.dense_forward = sum(dense_forward_flops(self.positions, weights).values())
        self.passes = passes_per_step(optimizer_cfg)
        self.ham_weights = ham_covered_weights(model, sparsifier, ham_cfg)
        self.skip_on_update = skips_optimizer_on_update(self.method)
        device = weights[self.keys[0]].device if self.keys else torch.device("cpu")
        self._scale = torch.tensor([FLOPS_PER_MULTIPLY_ADD * self.positions[k] for k in self.keys],
                                   dtype=torch.int64, device=device)
        self._dense_counts = torch.tensor([self.numel[k] for k in self.keys], dtype=torch.int64, device=device)
        # sums over steps of f_S(t) (per sample), on the device
        self._ordinary_forward = torch.zeros((), dtype=torch.int64, device=device)
        self._update_forward = torch.zeros((), dtype=torch.int64, device=device)
        self.ordinary_steps = 0
        self.update_steps = 0
        self._reported_total = 0
        self._refresh(force=True)

    @torch.no_grad()
    def _refresh(self, force: bool = False, masks: Mapping[str, torch.Tensor] | None = None) -> None:
        """Re-read the mask state: ``self._pending`` = f_S of the masks the next step trains with."""
        if masks is None:
            masks = self.sparsifier.masks() if self.sparsifier is not None else {}
        if force:
            self._seen, self._counts = {}, {}
        changed = force
        for index, key in enumerate(self.keys):
            mask = masks.get(key)
            if mask_unchanged(self._seen.get(key), mask):
                continue
            self._seen[key] = mask_seen(mask)
            self._counts[key] = self._dense_counts[index] if mask is None else mask.sum()
            changed = True
        if changed:
            counts = torch.stack([self._counts[key] for key in self.keys]) if self.keys else self._dense_counts
            self._pending = (counts * self._scale).sum()

    @torch.no_grad()
    def update_after_step(self, step: int, masks: Mapping[str, torch.Tensor] | None = None) -> None:
        """Charge step ``step`` and read the mask state of the next. Every step; no host sync.

        ``masks``: this step's ``sparsifier.masks()`` if the caller already has it, else it is read here.
        """
        if is_dense_gradient_step(self.method, step):
            self._update_forward += self._pending
            self.update_steps += 1
        else:
            self._ordinary_forward += self._pending
            self.ordinary_steps += 1
        self._refresh(masks=masks)

    def _totals(self) -> dict[str, int]:
        ordinary, update = int(self._ordinary_forward), int(self._update_forward)
        optimizer_steps = self.ordinary_steps + (0 if self.skip_on_update else self.update_steps)
        per_sample = self.passes * 3 * ordinary + 2 * update + self.update_steps * self.dense_forward
        if not self.skip_on_update:
            per_sample += (self.passes - 1) * 3 * update
        ham = HAM_FLOPS_PER_WEIGHT * self.ham_weights * optimizer_steps
        steps = self.ordinary_steps + self.update_steps
        return {"total": self.batch_size * per_sample + ham, "ham": ham,
                "reference": steps * self.batch_size * 3 * self.dense_forward}

    @torch.no_grad()
    def epoch_report(self) -> dict[str, Any]:
        """``train_flops_epoch``, ``train_flops_measured`` (so far) and its fraction of dense, inference now."""
        self._refresh()
        totals = self._totals()
        epoch = totals["total"] - self._reported_total
        self._reported_total = totals["total"]
        inference = sum(forward_flops(self.positions, layer_weights(self.model, self.sparsifier)).values())
        return {
            "train_flops_epoch": epoch,
            "train_flops_measured": totals["total"],
            "train_flops_measured_fraction_of_dense":
                totals["total"] / totals["reference"] if totals["reference"] else 0.0,
            "inference_flops": inference,
            "inference_flops_fraction_of_dense": inference / self.dense_forward if self.dense_forward else 1.0,
        }

    def summary(self) -> dict[str, Any]:
        totals = self._totals()
        return {"train_flops_measured": totals["total"], "train_flops_measured_ham": totals["ham"],
                "train_flops_measured_fraction_of_dense":
                    totals["total"] / totals["reference"] if totals["reference"] else 0.0,
                "train_flops_measured_steps": self.ordinary_steps + self.update_steps}

    def state_dict(self) -> dict[str, int]:
        return {"ordinary_forward": int(self._ordinary_forward), "update_forward": int(self._update_forward),
                "ordinary_steps": self.ordinary_steps, "update_steps": self.update_steps,
                "reported_total": self._reported_total}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        """Restore the totals; call after the model and sparsifier are restored (it re-reads the masks)."""
        self._ordinary_forward.fill_(int(state["ordinary_forward"]))
        self._update_forward.fill_(int(state["update_forward"]))
        self.ordinary_steps = int(state["ordinary_steps"])
        self.update_steps = int(state["update_steps"])
        self._reported_total = int(state["reported_total"])
        self._refresh(force=True)
