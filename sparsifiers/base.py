"""The small interface every sparsifier implements, and the shared mask machinery.

The trainer only talks to this interface; it never asks which method runs.
Call order inside one training step (see ``ham_bench.trainer``)::

    loss.backward()
    sparsifier.mask_gradients()          # after EVERY backward (SAM does two)
    run = sparsifier.before_step(step)   # once per step; False skips the optimizer step (RigL)
    if run: optimizer.step()             # base optimizer, then HAM
    sparsifier.after_step(step)          # re-apply masks, schedules, regrowth

and once per epoch ``on_epoch_start(epoch)`` / ``on_epoch_end(epoch, stats)``;
``extra_metrics()`` (optional to call) returns per-epoch values worth logging,
e.g. AC/DC's phase or RigL's drop fraction.
``step`` is the 0-based global step (``epoch * steps_per_epoch + batch``),
the same value in ``before_step`` and ``after_step``; ``epoch`` is 0-based.
Every step of the run calls both hooks, skipped optimizer steps included.
``mask_gradients`` gets no step: a method that must treat the next step's
gradients specially (RigL) remembers the next step in ``after_step`` and
``on_epoch_start``.

Gradients under SAM (a convention for every method): ``before_step`` sees
the gradient of the step's first backward, at the current (unperturbed)
weights; SAM's second backward, at the perturbed point, happens inside
``optimizer.step`` and is followed only by ``mask_gradients``. So decisions
made in ``before_step`` (RigL's growth scores) use the unperturbed
gradient, while the optimizer and HAM use the perturbed one.

A sparsifier knows nothing of HAM: it sees the optimizer only through
``bind_optimizer`` (to reset or zero optimizer state, e.g. AC/DC's momentum
reset or RigL's zero-init of regrown weights). ``optimizer.state`` and
``optimizer.param_groups`` of ham_bench's HAM/SAM wrappers are the base
optimizer's own objects, so the same code works for every optimizer.

Layer selection (shared by all methods): the ``weight`` of every Conv*d and
Linear module, in ``model.named_modules()`` order. ``dense_first`` /
``dense_last`` keep the first conv / last linear dense; such layers stay in
the reports (density 1.0) but are never masked. ``dense_first=None`` (the
default) means "the convention of the distribution": dense for ``uniform``,
masked for ``erk`` and ``global`` (methods.md).

Sparsity convention: ``sparsity`` is the target fraction of zeros over the
masked layers, i.e. the selected layers minus the kept-dense first/last ones
(RigL's ``custom_sparsity_map`` convention). Layers that ERK itself makes
dense stay in that count. ``sparsity_report`` gives target and achieved
sparsity both over the masked layers and over all selected layers.

Weight access in masked methods (the Sign-In contract): a ``MaskedSparsifier``
reads and writes weights and gradients ONLY through ``self.weight(key)`` and
``self.weight(key).grad``, and touches a layer's optimizer state only
through ``self.zero_state(key, keep)`` (AC/DC's decompression resets the
state of every optimizer parameter, whatever tensors they are). A wrapper
such as Sign-In overrides these two to redirect masking, scoring and state
resets to its own tensors, and so composes with random, acdc and rigl
without their code knowing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from sparsifiers.distributions import active_counts, layer_densities, random_masks
from sparsifiers.optimizer_state import reset_entries
from sparsifiers.registry import register_sparsifier

PRUNABLE_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


@dataclass
class TrainingContext:
    """What a sparsifier may need to know about the run it is attached to."""

    epochs: int
    steps_per_epoch: int
    seed: int = 0
    device: torch.device | str = "cpu"

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch


def config_number(key: str, value, kind=float):
    """``kind(value)``, or a one-line ValueError naming ``sparsifier.<key>`` (bools are not numbers)."""
    try:
        if isinstance(value, bool):
            raise TypeError
        if kind is int and float(value) != int(float(value)):
            raise ValueError
        return kind(float(value)) if kind is int else kind(value)
    except (TypeError, ValueError):
        raise ValueError(f"sparsifier.{key} must be {'an integer' if kind is int else 'a number'}, "
                         f"got {value!r}") from None


def prunable_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Conv and linear modules by qualified name, in definition order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, PRUNABLE_TYPES)}


@register_sparsifier("dense")
class Sparsifier:
    """Base class and the ``dense`` method: no masking at all.

    Subclasses override a few hooks. ``sparsity`` is the target fraction of
    zeros over the masked layers (see the module docstring for the
    convention); ``seed`` (None: the run's seed) fixes random masks.
    """

    name = "dense"
    distributions: tuple[str, ...] | None = None  # a subclass that uses ``distribution`` lists what it accepts

    def __init__(self, sparsity: float = 0.0, distribution: str = "uniform", dense_first: bool | None = None,
                 dense_last: bool = False, power_scale: float = 1.0, seed: int | None = None):
        sparsity = config_number("sparsity", sparsity)
        power_scale = config_number("power_scale", power_scale)
        if not 0.0 <= sparsity < 1.0:
            raise ValueError(f"sparsifier.sparsity must be in [0, 1), got {sparsity}")
        if type(self) is Sparsifier and sparsity != 0.0:
            raise ValueError(f"sparsifier=dense does not mask: sparsity must be 0, got {sparsity} "
                             f"(pick a sparse method, e.g. sparsifier=random)")
        if self.distributions is not None and distribution not in self.distributions:
            raise ValueError(f"sparsifier.distribution must be one of [{', '.join(self.distributions)}], "
                             f"got {distribution!r}")
        if power_scale <= 0:
            raise ValueError(f"sparsifier.power_scale must be > 0, got {power_scale}")
        self.sparsity = float(sparsity)
        self.distribution = distribution
        self.dense_first = (distribution == "uniform") if dense_first is None else bool(dense_first)
        self.dense_last = bool(dense_last)
        self.power_scale = float(power_scale)
        self.seed = seed
        self.model: nn.Module | None = None
        self.context: TrainingContext | None = None
        self.optimizer = None
        self.layers: dict[str, nn.Module] = {}

    # ---- set-up -----------------------------------------------------------------
    def attach(self, model: nn.Module, context: TrainingContext) -> None:
        """Select layers and build masks. Called once, before the optimizer exists."""
        self.model = model
        self.context = context
        self.layers = prunable_layers(model)

    def masked_layer_names(self) -> list[str]:
        """Names of the selected layers that may be masked (first/last excluded as configured)."""
        names = list(self.layers)
        convs = [n for n in names if not isinstance(self.layers[n], nn.Linear)]
        linears = [n for n in names if isinstance(self.layers[n], nn.Linear)]
        excluded = set()
        if self.dense_first and convs:
            excluded.add(convs[0])
        elif self.dense_first and not convs and linears:
            excluded.add(linears[0])
        if self.dense_last and linears:
            excluded.add(linears[-1])
        return [n for n in names if n not in excluded]

    def parameter_group_overrides(self) -> list[dict[str, Any]]:
        """Extra optimizer settings for parameters this method adds.

        Each entry is ``{"params": [...], <group keys>}``; e.g. STR returns its
        thresholds with ``weight_decay`` set and ``ham: False``.
        """
        return []

    def bind_optimizer(self, optimizer) -> None:
        """Called once the optimizer (possibly HAM- or SAM-wrapped) exists."""
        self.optimizer = optimizer

    def generator(self) -> torch.Generator:
        """A CPU generator seeded with ``seed`` (or the run's seed): masks never touch the global RNG."""
        seed = self.seed if self.seed is not None else (self.context.seed if self.context else 0)
        return torch.Generator().manual_seed(int(seed))

    # ---- per step ----------------------------------------------------------------
    def mask_gradients(self) -> None:
        """Called after every backward pass."""

    def before_step(self, step: int) -> bool:
        """Called once per step before the optimizer; return False to skip its step."""
        return True

    def after_step(self, step: int) -> None:
        """Called after the optimizer step (base + HAM)."""

    # ---- per epoch ---------------------------------------------------------------
    def on_epoch_start(self, epoch: int) -> None:
        pass

    def on_epoch_end(self, epoch: int, stats: dict[str, float] | None = None) -> None:
        """``stats`` carries the epoch's training metrics (e.g. ``train_acc``)."""

    # ---- reports -----------------------------------------------------------------
    def effective_weights(self) -> dict[str, torch.Tensor]:
        """The weight each selected layer uses in its forward pass, by ``<layer>.weight``.

        Reports (sparsity, sign flips) read these, so methods whose weight is
        computed (STR's soft threshold, Sign-In's m*w) are measured like the rest.
        """
        return {f"{name}.weight": m.weight.detach() for name, m in self.layers.items()}

    def masks(self) -> dict[str, torch.Tensor]:
        """Current bool masks of the masked layers by ``<layer>.weight`` (empty when none)."""
        return {}

    def target_densities(self) -> dict[str, float]:
        """Target density per selected layer (1.0 for dense ones)."""
        return {f"{name}.weight": 1.0 for name in self.layers}

    def extra_metrics(self) -> dict[str, Any]:
        """Optional per-epoch values worth logging (e.g. AC/DC's phase); JSON-serialisable."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class MaskedSparsifier(Sparsifier):
    """Shared machinery for methods that keep explicit bool masks on layer weights.

    Masks live in ``self.mask_by_name`` keyed ``<layer>.weight``, only for
    layers that are actually masked (kept-dense and density-1 layers have
    none). Gradients of masked entries are zeroed after every backward and
    weights re-masked after every optimizer step (after HAM too), so masked
    weights stay exactly zero. All weight, gradient and optimizer-state access
    goes through ``weight(key)`` and ``zero_state(key, keep)`` (see the
    module docstring: Sign-In overrides them).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.mask_by_name: dict[str, torch.Tensor] = {}
        self.target_density_by_name: dict[str, float] = {}
        self.masking_enabled = True

    # ---- the redirectable access points ----------------------------------------
    def weight(self, key: str) -> torch.Tensor:
        """The tensor masked and scored for ``key`` (``<layer>.weight``)."""
        return self.layers[key.rsplit(".", 1)[0]].weight

    def zero_state(self, key: str, keep: torch.Tensor | None = None) -> None:
        """Fresh optimizer state for ``key``'s weight where ``keep`` is False (``optimizer_state.reset_entries``)."""
        reset_entries(self.optimizer, self.weight(key), keep)

    # ---- helpers for subclasses ------------------------------------------------
    def layer_shapes(self) -> dict[str, tuple[int, ...]]:
        """Shapes of every selected layer's weight, by ``<layer>.weight``."""
        return {f"{name}.weight": tuple(self.weight(f"{name}.weight").shape) for name in self.layers}

    def dense_keys(self) -> list[str]:
        """Selected layers kept dense by ``dense_first`` / ``dense_last``."""
        masked = set(self.masked_layer_names())
        return [f"{name}.weight" for name in self.layers if name not in masked]

    def compute_target_densities(self, distribution: str | None = None) -> dict[str, float]:
        """Per-layer target densities from ``distribution`` (default: the configured one)."""
        self.target_density_by_name = layer_densities(
            distribution or self.distribution, self.layer_shapes(), self.sparsity, self.power_scale,
            dense_names=self.dense_keys())
        return self.target_density_by_name

    def draw_random_masks(self) -> None:
        """Exact-count random masks at the target densities (layers at density 1 get none)."""
        shapes = self.layer_shapes()
        drawn = random_masks(shapes, self.target_density_by_name, self.generator())
        self.mask_by_name = {key: mask.to(self.weight(key).device) for key, mask in drawn.items()
                             if self.target_density_by_name[key] < 1.0}

    def target_counts(self) -> dict[str, int]:
        """Exact nonzeros per selected layer at the target densities."""
        return active_counts(self.layer_shapes(), self.target_density_by_name)

    # ---- hooks ---------------------------------------------------------------------
    @torch.no_grad()
    def apply_masks(self) -> None:
        if not self.masking_enabled:
            return
        for key, mask in self.mask_by_name.items():
            self.weight(key).mul_(mask)

    @torch.no_grad()
    def mask_gradients(self) -> None:
        if not self.masking_enabled:
            return
        for key, mask in self.mask_by_name.items():
            grad = self.weight(key).grad
            if grad is not None:
                grad.mul_(mask)

    def after_step(self, step: int) -> None:
        self.apply_masks()

    def masks(self) -> dict[str, torch.Tensor]:
        return dict(self.mask_by_name) if self.masking_enabled else {}

    def target_densities(self) -> dict[str, float]:
        if not self.target_density_by_name:
            return super().target_densities()
        return dict(self.target_density_by_name)

    def state_dict(self) -> dict[str, Any]:
        return {"masks": {k: v.clone() for k, v in self.mask_by_name.items()},
                "masking_enabled": self.masking_enabled}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "masks" in state:
            self.mask_by_name = {key: mask.to(self.weight(key).device, torch.bool)
                                 for key, mask in state["masks"].items()}
        self.masking_enabled = state.get("masking_enabled", True)
        self.apply_masks()


def sparsity_report(sparsifier: Sparsifier, weights: dict[str, torch.Tensor] | None = None) -> dict[str, Any]:
    """Per-layer and global target/achieved sparsity of an attached sparsifier (reads weights: a host sync).

    ``layers``: rows ``{name, shape, params, masked, target_density, target_nonzeros, nonzeros}``.
    Global values are given over the masked layers and over all selected layers. ``weights``: the
    sparsifier's ``effective_weights()`` when the caller has them already.
    """
    weights = sparsifier.effective_weights() if weights is None else weights
    targets = sparsifier.target_densities()
    masked = {f"{name}.weight" for name in sparsifier.masked_layer_names()}
    rows = []
    for key, w in weights.items():
        params = w.numel()
        density = float(targets.get(key, 1.0))
        rows.append({"name": key, "shape": tuple(w.shape), "params": params, "masked": key in masked,
                     "target_density": density, "target_nonzeros": min(params, round(density * params)),
                     "nonzeros": int(torch.count_nonzero(w))})

    def over(selected):
        total = sum(r["params"] for r in selected)
        if not total:
            return 0.0, 0.0
        return (1 - sum(r["target_nonzeros"] for r in selected) / total,
                1 - sum(r["nonzeros"] for r in selected) / total)

    target_masked, achieved_masked = over([r for r in rows if r["masked"]])
    target_all, achieved_all = over(rows)
    return {"layers": rows, "target_sparsity": target_masked, "achieved_sparsity": achieved_masked,
            "target_sparsity_all_layers": target_all, "achieved_sparsity_all_layers": achieved_all,
            "dense_first": sparsifier.dense_first, "dense_last": sparsifier.dense_last}
