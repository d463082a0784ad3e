"""The sparsifier contract: a few hooks with documented defaults, and declared properties.

A method overrides only what it needs. The step engine (``ham_bench.engine.step``)
calls, in every training step ``step`` (0-based, ``epoch * steps_per_epoch + batch``)::

    loss.backward()
    dense = copy of the masked tensors' gradients   if needs_dense_gradient(step)
    sparsifier.mask_gradients()                     after EVERY backward (SAM does two)
    sparsifier.before_step(step, dense)             once, before the optimizer
    optimizer.step()   unless skips_optimizer_step(step)   (base optimizer, then HAM; SAM's closure
                                                    makes its second backward + mask_gradients)
    sparsifier.after_step(step)                     once, after the optimizer (re-mask, schedules)

and ``on_epoch_start(epoch)`` / ``on_epoch_end(epoch, stats)`` around each
epoch (``stats``: the epoch's training metrics, e.g. ``train_acc``). Every
step calls ``before_step`` and ``after_step``, skipped optimizer steps
included. Set-up, once: ``attach(model, context)`` (select layers, build
masks, add parameters; before the optimizer exists), ``parameter_groups()``
(optimizer settings for parameters the method adds, e.g. ``"ham": False`` to
keep HAM off them), ``bind_optimizer(optimizer)``.

What ``attach`` may read (``TrainingContext``): the run's length (``epochs``,
``steps_per_epoch``), ``seed`` and ``device``; ``input_shape``, one sample's
shape (SynFlow's data-free scoring); and ``sample_batch``, a callable that
returns the next labelled training batch ``(inputs, labels)`` on the CPU,
drawn by its own generator seeded from the run's seed, so the global RNG
never moves and every DDP rank and a resumed run draw the same batches (SNIP
scores one). Both are None in contexts without data (export, scripts that
only print densities): a method that needs them says so.

Restarts inside one run (IMP, LRR, CS): ``schedule_position(step)`` is the
position on the run's LR schedule at which optimizer step ``step`` runs
(default ``step``; the run's ``LambdaLR`` reads ``lr_factor(schedule_position(step), ...)``,
``ham_bench.schedule``), and ``rewinds_weights(step)`` is True when that
step's ``after_step`` restored weights from a snapshot, so meters that
compare consecutive steps (sign flips) restart from the restored weights
instead of counting the jump (default False).

Randomness: everything a method draws (masks, growth, batch choice) comes
from ``generator()`` (the method's seed) or ``step_generator(step, device,
salt)`` (the seed, the step and a salt such as the layer's index), never
from the global RNG.

Gradients under SAM (a convention for every method): ``before_step`` sees the
gradient of the step's first backward, at the current (unperturbed)
weights; SAM's second backward, at the perturbed point, happens inside
``optimizer.step`` and is followed only by ``mask_gradients``. So decisions
made in ``before_step`` (RigL's growth scores) use the unperturbed
gradient, while the optimizer and HAM use the perturbed one.

What other modules need to know is declared, never guessed:

- ``needs_dense_gradient(step)``: the engine copies the full gradient of the
  masked tensors before masking and hands it to ``before_step`` (RigL's
  growth); FLOPs cost that step's weight gradient dense.
- ``skips_optimizer_step(step)``: no optimizer step (RigL's update steps).
- ``trains_dense(step)``: the method trains the dense model at this step by
  design (the dense baseline, AC/DC's warm-up and decompressed phases); the
  standard FLOPs accounting costs such steps as dense.
- ``reparameterizes_weights``: layer weights are computed from other
  parameters (STR, Sign-In, PILoT); ``effective_weights()`` gives the result.
- ``unused_parameters_under_ddp``: some parameters may get no gradient in a
  step (STR after its projection): DDP must look for unused parameters.
- ``changes_masks_after_step(step)``: ``after_step(step)`` may change
  ``masks()`` (prune weights the optimizer has just updated, e.g. AC/DC's
  compression). The engine then counts that step's sign flips from signs taken
  before the optimizer step instead of inside the optimizer's kernels, which
  compare each weight before and after its update and would count a weight
  pruned afterwards. Default: where ``trains_dense`` changes between ``step``
  and ``step + 1``, and where ``rewinds_weights(step)``. A method that changes
  masks in ``after_step`` elsewhere (GMP, SET, MEST, IMP/LRR round ends) must
  say so; the engine raises if the masks handed over below change in an
  undeclared ``after_step``.
- ``schedule_warnings()``: after ``attach``, what this run's length keeps the
  method from doing (no DST update, an AC/DC phase shorter than a step, no
  fine-tuning after a projection); logged and recorded in summary.json.

Masks handed to the optimizer (the engine's bookkeeping, ``ham_bench.engine.bookkeeper``):
``optimizer_masks()`` gives the ``(tensor, mask)`` pairs an optimizer may
enforce in the method's place, in the kernel that updates the tensor anyway
(gradient masked before the update, weight masked after it; default: none).
For one step the engine sets ``masks_applied_by_optimizer`` to the keys it
hands over, each with the mask object and its version (``Tensor._version``)
the optimizer applies; ``mask_gradients`` skips those keys, so
``before_step`` sees their raw gradients (the optimizer and SAM's
perturbation still never see inactive ones), and the re-masking after the
step skips a key only while its mask is still the one the optimizer applied
(a mask changed in ``after_step`` is applied by the method).

Reports: ``masks()`` (current bool masks by ``<layer>.weight``) and
``masked_tensors()`` (the tensor each mask applies to),
``effective_weights()`` (the forward weight of every selected layer),
``target_densities()``, ``extra_metrics()`` (JSON-serialisable per-epoch
values, e.g. AC/DC's phase), and ``state_dict()`` / ``load_state_dict()``.

A sparsifier knows nothing of HAM: it sees the optimizer only through
``bind_optimizer``, and changes its state only through
``sparsifiers.optimizer_state`` (HAM/SAM share their base optimizer's state).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from sparsifiers.config import ConfigError
from sparsifiers.registry import register_sparsifier
from sparsifiers.selection import LayerSelection, prunable_layers

__all__ = ["Sparsifier", "TrainingContext", "prunable_layers", "sparsity_report"]


@dataclass
class TrainingContext:
    """What a sparsifier may need to know about the run it is attached to."""

    epochs: int
    steps_per_epoch: int
    seed: int = 0
    device: torch.device | str = "cpu"
    input_shape: tuple[int, ...] | None = None  # one sample's shape, e.g. (1, 28, 28); None: unknown
    sample_batch: Callable[[], tuple[torch.Tensor, torch.Tensor]] | None = None  # next seeded training batch

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch


@register_sparsifier("dense")
class Sparsifier:
    """No masking: the dense baseline, and the base class of every method.

    Constructor keywords are the layer selection (``sparsifiers.selection``):
    ``sparsity``, ``distribution``, ``dense_first``, ``dense_last``,
    ``power_scale``, ``seed``; None takes the method's default from
    ``selection_defaults``. ``distributions`` lists the distributions a method
    accepts (None: it ignores the key).
    """

    name = "dense"
    selection_defaults: Mapping[str, Any] = {"sparsity": 0.0, "distribution": "uniform"}
    distributions: tuple[str, ...] | None = None
    reparameterizes_weights = False
    unused_parameters_under_ddp = False
    # key -> (mask, its _version) the optimizer applies in this step (None: not handed yet); set by the engine
    masks_applied_by_optimizer: Mapping[str, tuple[torch.Tensor, int] | None] = {}

    def __init__(self, sparsity: float | None = None, distribution: str | None = None,
                 dense_first: bool | None = None, dense_last: bool | None = None,
                 power_scale: float | None = None, seed: int | None = None):
        given = {"sparsity": sparsity, "distribution": distribution, "dense_first": dense_first,
                 "dense_last": dense_last, "power_scale": power_scale, "seed": seed}
        self.selection = LayerSelection.from_settings(given, self.selection_defaults, self.distributions)
        if type(self) is Sparsifier and self.selection.sparsity != 0.0:
            raise ConfigError(f"sparsifier=dense does not mask: sparsity must be 0, got {sparsity} "
                              f"(pick a sparse method, e.g. sparsifier=random)")
        self.model: nn.Module | None = None
        self.context: TrainingContext | None = None
        self.optimizer = None
        self.layers: dict[str, nn.Module] = {}

    # ---- set-up (once) ------------------------------------------------------------
    def attach(self, model: nn.Module, context: TrainingContext) -> None:
        """Select layers (and, in subclasses, build masks). Called before the optimizer exists."""
        self.model = model
        self.context = context
        self.layers = prunable_layers(model)

    def parameter_groups(self) -> list[dict[str, Any]]:
        """Optimizer settings for parameters this method adds: ``[{"params": [...], <group keys>}]``.

        E.g. STR returns its thresholds with ``weight_decay`` set and ``ham: False``.
        """
        return []

    def bind_optimizer(self, optimizer) -> None:
        """Called once the optimizer (possibly HAM- or SAM-wrapped) exists."""
        self.optimizer = optimizer

    # ---- declared properties ---------------------------------------------------------
    def needs_dense_gradient(self, step: int) -> bool:
        return False

    def skips_optimizer_step(self, step: int) -> bool:
        return False

    def trains_dense(self, step: int) -> bool:
        return True  # no masks; MaskedSparsifier says False

    def schedule_position(self, step: int) -> int:
        """Position on the run's LR schedule at which optimizer step ``step`` runs (restarts rewind it)."""
        return step

    def schedule_warnings(self) -> list[str]:
        """After ``attach``: one line for each way this run's length keeps the method from doing what it is
        (e.g. RigL with no mask update in the run); the run logs them and summary.json records them."""
        return []

    def rewinds_weights(self, step: int) -> bool:
        """True when ``after_step(step)`` restored the weights from a snapshot (IMP's weight rewinding)."""
        return False

    def changes_masks_after_step(self, step: int) -> bool:
        """True when ``after_step(step)`` may change ``masks()`` (module docstring: the engine's flip count)."""
        return self.trains_dense(step) != self.trains_dense(step + 1) or self.rewinds_weights(step)

    # ---- per step ----------------------------------------------------------------------
    def mask_gradients(self) -> None:
        """After every backward pass."""

    def before_step(self, step: int, dense_gradients: Mapping[str, torch.Tensor] | None = None) -> None:
        """Once per step, before the optimizer; ``dense_gradients`` when ``needs_dense_gradient(step)``."""

    def after_step(self, step: int) -> None:
        """Once per step, after the optimizer step (base + HAM) or where it was skipped."""

    # ---- per epoch -----------------------------------------------------------------------
    def on_epoch_start(self, epoch: int) -> None:
        pass

    def on_epoch_end(self, epoch: int, stats: Mapping[str, float] | None = None) -> None:
        pass

    # ---- reports ---------------------------------------------------------------------------
    @property
    def masked_keys(self) -> list[str]:
        """``<layer>.weight`` of every layer this method may mask."""
        return [f"{name}.weight" for name in self.selection.masked_names(self.layers)]

    @torch.no_grad()
    def effective_weights(self) -> dict[str, torch.Tensor]:
        """The weight each selected layer uses in its forward pass (computed weights included)."""
        return {f"{name}.weight": m.weight.detach() for name, m in self.layers.items()}

    def masks(self) -> dict[str, torch.Tensor]:
        """Current bool masks of the masked layers by ``<layer>.weight`` (empty when none)."""
        return {}

    def masked_tensors(self) -> dict[str, torch.Tensor]:
        """The tensor each mask of ``masks()`` applies to (the weight, or the factor w of m * w)."""
        return {}

    def optimizer_masks(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """``(tensor, bool mask)`` by key that an optimizer may enforce in this method's place (module docstring)."""
        return {}

    def target_densities(self) -> dict[str, float]:
        """Target density per selected layer (1.0 for dense ones)."""
        return {f"{name}.weight": 1.0 for name in self.layers}

    def extra_metrics(self) -> dict[str, Any]:
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        pass

    def generator(self) -> torch.Generator:
        """A CPU generator seeded with ``seed`` (or the run's seed): masks never touch the global RNG."""
        return torch.Generator().manual_seed(self._seed())

    def step_generator(self, step: int, device: torch.device | str = "cpu", salt: int = 0) -> torch.Generator:
        """A generator on ``device`` seeded from the method's seed, ``step`` and ``salt`` (e.g. a layer's index):
        what a method draws at a step depends on nothing else, so DDP ranks and resumed runs draw the same."""
        seed = ((self._seed() * 1_000_003 + int(step)) * 10_007 + int(salt)) % (2 ** 63)
        return torch.Generator(device=device).manual_seed(seed)

    def _seed(self) -> int:
        seed = self.selection.seed if self.selection.seed is not None else (self.context.seed if self.context else 0)
        return int(seed)


def sparsity_report(sparsifier: Sparsifier, weights: Mapping[str, torch.Tensor] | None = None) -> dict[str, Any]:
    """Per-layer and global target/achieved sparsity of an attached sparsifier (reads weights: a host sync).

    ``layers``: rows ``{name, shape, params, masked, target_density, target_nonzeros, nonzeros}``.
    Global values are given over the masked layers and over all selected layers. ``weights``: the
    sparsifier's ``effective_weights()`` when the caller has them already.
    """
    weights = sparsifier.effective_weights() if weights is None else weights
    targets = sparsifier.target_densities()
    masked = set(sparsifier.masked_keys)
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
            "dense_first": sparsifier.selection.dense_first, "dense_last": sparsifier.selection.dense_last}
