"""The sparsifier contract as a test any method can run on itself (built-ins and plugins alike).

    from ham_bench.testing import check_sparsifier
    check_sparsifier({"_target_": "my_package.MyMethod", "sparsity": 0.8})   # in the plugin's own tests

trains a small CNN (two convs, two linears, 8x8 inputs) through the real step
engine (``ham_bench.engine.step.train_step``), attached with the context the
trainer gives (``input_shape`` and a seeded ``sample_batch`` included, so
methods that score data at attach run too), and asserts, for the method as
configured:

1. under SGD + HAM and under SAM + HAM, after every step, every entry that
   ``masks()`` marks inactive is exactly zero in the effective weights
   (masked weights stay zero however the optimizer moves the rest);
2. a ``state_dict`` round trip: a fresh instance, attached to a fresh model,
   loads the state and reports the same masks and extra metrics;
3. exact resume: a run interrupted in the middle of an epoch (model,
   optimizer, sparsifier and RNG states saved, everything rebuilt from
   scratch and loaded) ends bit for bit where the uninterrupted run ends;
4. at the end of the run the achieved sparsity over the masked layers equals
   the target (``sparsity_report``), within ``sparsity_tolerance`` (0: exact).

``epochs`` x ``steps_per_epoch`` must be long enough for the method's
schedule to act (pass settings that make it do so, e.g. a short update
interval). Each check raises AssertionError with what went wrong.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from ham_bench.engine.step import train_step
from ham_bench.optim import HAM, SAM
from sparsifiers import TrainingContext, build_sparsifier, sparsity_report


def contract_model() -> nn.Module:
    """Conv 1->4 and 4->8 (3x3) on 8x8 inputs, then linear 128->32 and 32->10: four prunable layers."""
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 8, 3), nn.ReLU(), nn.Flatten(),
                         nn.Linear(128, 32), nn.ReLU(), nn.Linear(32, 10))


def contract_batches(steps: int, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    sample = contract_sampler(seed)
    return [sample() for _ in range(steps)]


def contract_sampler(seed: int = 1) -> Callable[[], tuple[torch.Tensor, torch.Tensor]]:
    """Seeded labelled batches of 16 8x8 images, one per call (its own generator: the global RNG never moves)."""
    generator = torch.Generator().manual_seed(seed)
    return lambda: (torch.randn(16, 1, 8, 8, generator=generator), torch.randint(0, 10, (16,), generator=generator))


def contract_context(epochs: int, steps_per_epoch: int, seed: int = 0) -> TrainingContext:
    """What the trainer gives ``attach``, data included (``input_shape``, ``sample_batch``)."""
    return TrainingContext(epochs=epochs, steps_per_epoch=steps_per_epoch, seed=seed, input_shape=(1, 8, 8),
                           sample_batch=contract_sampler(seed + 100))


def _optimizer(model: nn.Module, sparsifier, kind: str):
    """SGD momentum or SAM(SGD), with the method's own parameter groups, wrapped in HAM (foreach: no compiler)."""
    special = {id(p) for group in sparsifier.parameter_groups() for p in group["params"]}
    groups = [{"params": [p for p in model.parameters() if id(p) not in special], "weight_decay": 5e-4}]
    groups += [dict(group) for group in sparsifier.parameter_groups()]
    base = (SAM(groups, torch.optim.SGD, lr=0.05, momentum=0.9, rho=0.05) if kind == "sam"
            else torch.optim.SGD(groups, lr=0.05, momentum=0.9))
    optimizer = HAM(base, alpha=5.0, beta=1e-3, implementation="foreach")
    sparsifier.bind_optimizer(optimizer)
    return optimizer


class _Run:
    """Model, method and optimizer built from scratch, the same way every time (seeded)."""

    def __init__(self, make: Callable[[], Any], epochs: int, steps_per_epoch: int, kind: str, seed: int = 0):
        torch.manual_seed(seed)
        self.model = contract_model()
        self.sparsifier = make()
        self.sparsifier.attach(self.model, contract_context(epochs, steps_per_epoch, seed))
        self.optimizer = _optimizer(self.model, self.sparsifier, kind)
        self.steps_per_epoch = steps_per_epoch
        self.data = contract_batches(steps_per_epoch)

    def train(self, start: int, stop: int, after_step: Callable[[int], None] | None = None) -> None:
        """Global steps ``[start, stop)``, with the epoch hooks at epoch boundaries."""
        for step in range(start, stop):
            epoch, index = divmod(step, self.steps_per_epoch)
            if index == 0:
                self.sparsifier.on_epoch_start(epoch)
            x, y = self.data[index]
            train_step(self.model, self.optimizer, self.sparsifier, x, y, step)
            if after_step is not None:
                after_step(step)
            if index == self.steps_per_epoch - 1:
                self.sparsifier.on_epoch_end(epoch, {"train_acc": 10.0 + epoch})

    def state(self) -> dict[str, Any]:
        return copy.deepcopy({"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                              "sparsifier": self.sparsifier.state_dict(), "rng": torch.get_rng_state()})

    def load(self, state: Mapping[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.sparsifier.load_state_dict(state["sparsifier"])
        torch.set_rng_state(state["rng"])


def _masked_entries_nonzero(sparsifier) -> list[str]:
    weights = sparsifier.effective_weights()
    return [key for key, mask in sparsifier.masks().items() if bool((weights[key][~mask] != 0).any())]


def _same(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def check_sparsifier(config: Mapping[str, Any] | Callable[[], Any], epochs: int = 4, steps_per_epoch: int = 4,
                     sparsity_tolerance: float = 0.0, check_target: bool = True) -> None:
    """Run the four contract checks (module docstring) on the method ``config`` builds (or a factory)."""
    make = config if callable(config) else (lambda: build_sparsifier(dict(config)))
    total = epochs * steps_per_epoch
    for kind in ("sgd", "sam"):
        run = _Run(make, epochs, steps_per_epoch, kind)

        def masked_stay_zero(step, run=run, kind=kind):
            bad = _masked_entries_nonzero(run.sparsifier)
            assert not bad, f"{run.sparsifier.name}: masked weights nonzero after step {step} ({kind} + HAM): {bad}"

        run.train(0, total, masked_stay_zero)
    reference = _Run(make, epochs, steps_per_epoch, "sgd")
    reference.train(0, total)
    # 2. state_dict round trip onto a fresh instance
    fresh = _Run(make, epochs, steps_per_epoch, "sgd", seed=1)
    fresh.load(reference.state())
    assert _same(fresh.sparsifier.masks(), reference.sparsifier.masks()), \
        f"{reference.sparsifier.name}: masks differ after a state_dict round trip"
    assert fresh.sparsifier.extra_metrics() == reference.sparsifier.extra_metrics(), \
        f"{reference.sparsifier.name}: extra metrics differ after a state_dict round trip"
    # 3. exact resume from the middle of an epoch
    stop = (epochs // 2) * steps_per_epoch + steps_per_epoch // 2
    first = _Run(make, epochs, steps_per_epoch, "sgd")
    first.train(0, stop)
    resumed = _Run(make, epochs, steps_per_epoch, "sgd", seed=2)
    resumed.load(first.state())
    resumed.train(stop, total)
    assert _same(resumed.model.state_dict(), reference.model.state_dict()), \
        f"{reference.sparsifier.name}: a run resumed at step {stop} does not end where the uninterrupted run ends"
    assert _same(resumed.sparsifier.masks(), reference.sparsifier.masks()), \
        f"{reference.sparsifier.name}: masks of the resumed run differ"
    # 4. the target is met at the end
    if check_target:
        report = sparsity_report(reference.sparsifier)
        assert abs(report["achieved_sparsity"] - report["target_sparsity"]) <= sparsity_tolerance, \
            (f"{reference.sparsifier.name}: achieved sparsity {report['achieved_sparsity']:.4f} over the masked "
             f"layers, target {report['target_sparsity']:.4f}")
