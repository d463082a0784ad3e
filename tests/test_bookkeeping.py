"""The engine's step bookkeeping (masks handed to the optimizer, sign flips counted in its kernels) against its
exact fallback and against the definition of a flip, step by step.

Tests that compile the fused kernels are marked ``slow``; the compiled kernels are shared by the whole process
(``ham_bench.optim.kernel_cache``).
"""

from __future__ import annotations

import pytest
import torch

from ham_bench.engine.bookkeeper import Bookkeeper
from ham_bench.engine.step import train_step
from ham_bench.metrics import build_meters
from ham_bench.optim import HAM, FusedOptimizer
from ham_bench.optim.bookkeeping import StepBookkeeping
from ham_bench.testing import contract_batches, contract_model
from ham_bench.optim.sam import SAM
from sparsifiers import TrainingContext, available_sparsifiers, build_sparsifier
from sparsifiers.random import RandomSparsifier
from test_topology import METHODS as TOPOLOGY_METHODS

EPOCHS, STEPS = 3, 4
METHODS = {**TOPOLOGY_METHODS,  # every registered method, in short-run settings
           "rigl_no_skip": {"name": "rigl", "sparsity": 0.8, "update_interval": 3, "skip_step_on_update": False}}
# methods whose masks the kernels may apply (not reparameterized): the kernels count their flips too
IN_KERNEL = ("dense", "random", "rigl", "rigl_no_skip", "acdc", "snip", "synflow", "gmp", "imp", "lrr", "set", "mest")

# next to no flips in 12 steps (the definition is still checked every step): STR's soft threshold keeps the
# effective signs; IMP's rounds are a step or two long here and rewind to theta_0, LRR's prune as often
QUIET = ("str", "imp", "lrr")


def context():
    """The trainer's context, data included (SNIP scores a batch, SynFlow reads the input shape)."""
    batches = contract_batches(1, seed=5)
    return TrainingContext(epochs=EPOCHS, steps_per_epoch=STEPS, seed=0, input_shape=(1, 8, 8),
                           sample_batch=lambda: batches[0])


class ReferenceFlips:
    """The definition, literally: signs after every step, compared with the signs after the step before."""

    def __init__(self, weights):
        self.previous = {key: torch.sign(w).clone() for key, w in weights.items()}

    def update(self, weights) -> list[int]:
        counts = [int(((self.previous[key] * torch.sign(w)) < 0).sum()) for key, w in weights.items()]
        self.previous = {key: torch.sign(w).clone() for key, w in weights.items()}
        return counts


def _optimizer(model, sparsifier, ham: bool, base: str, implementation: str):
    special = {id(p) for group in sparsifier.parameter_groups() for p in group["params"]}
    groups = [{"params": [p for p in model.parameters() if id(p) not in special], "weight_decay": 5e-4}]
    groups += [dict(group) for group in sparsifier.parameter_groups()]
    torch_base = {
        "sgd": lambda: torch.optim.SGD(groups, lr=0.2, momentum=0.9),
        # torch's multi-tensor Nesterov SGD (weight_decay 0) adds momentum * buf into p.grad in place
        "sgd_nesterov": lambda: torch.optim.SGD(groups, lr=0.2, momentum=0.9, nesterov=True, foreach=True),
        "adamw": lambda: torch.optim.AdamW(groups, lr=1e-2, weight_decay=1e-2),
        "sam": lambda: SAM(groups, torch.optim.SGD, rho=0.05, lr=0.2, momentum=0.9),
    }[base]()
    if ham:
        return HAM(torch_base, alpha=5.0, beta=1e-3, implementation=implementation, diagnostics=True)
    return FusedOptimizer(torch_base, implementation=implementation)


def run(method: str, ham: bool = True, base: str = "sgd", channels_last: bool = False, fallback: bool = False,
        implementation: str = "compiled"):
    """Train EPOCHS x STEPS steps; check every step's flips against the definition and masked weights at zero."""
    torch.manual_seed(0)
    model = contract_model()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    sparsifier = method() if callable(method) else build_sparsifier(METHODS[method])
    sparsifier.attach(model, context())
    optimizer = _optimizer(model, sparsifier, ham, base, implementation)
    if fallback:  # the same kernels, but nothing handed over: the sparsifier masks, the engine counts
        optimizer.bookkeeping_params = lambda: frozenset()
    sparsifier.bind_optimizer(optimizer)
    books = []
    handed = optimizer.set_bookkeeping

    def spy(book):
        if book is not None:
            books.append((len(book.masks), len(book.flips)))
        handed(book)

    optimizer.set_bookkeeping = spy
    bookkeeper = Bookkeeper(sparsifier, optimizer)
    reference = ReferenceFlips(sparsifier.effective_weights())
    data = contract_batches(STEPS)
    flips = []
    for epoch in range(EPOCHS):
        sparsifier.on_epoch_start(epoch)
        for index, (x, y) in enumerate(data):
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            record = train_step(model, optimizer, sparsifier, x, y, epoch * STEPS + index, bookkeeper=bookkeeper)
            weights = sparsifier.effective_weights()
            assert record.sign_flips.tolist() == reference.update(weights), f"step {record.step}"
            for key, mask in sparsifier.masks().items():
                assert not bool((weights[key][~mask] != 0).any()), f"{key} masked weights moved at step {record.step}"
            assert sparsifier.masks_applied_by_optimizer == {}
            flips.append(record.sign_flips.tolist())
        sparsifier.on_epoch_end(epoch, {"train_acc": 10.0 + epoch})
    return [p.detach().clone() for p in model.parameters()], flips, books


# ---- without a compiler: the fallback, the rules -----------------------------------------------------------
def test_every_registered_method_is_checked():
    assert set(available_sparsifiers()) <= {cfg["name"] for cfg in METHODS.values()}


@pytest.mark.parametrize("method", list(METHODS))
def test_fallback_counts_the_definition_step_by_step(method):
    _, flips, books = run(method, implementation="foreach")
    assert books == []  # the foreach implementation takes nothing over
    if method not in QUIET:
        assert sum(map(sum, flips)) > 0


def plain_sgd(sparsifier):
    """``sparsifier`` attached to a fresh contract model (seed 0) and bound to torch's own SGD."""
    torch.manual_seed(0)
    model = contract_model()
    sparsifier.attach(model, TrainingContext(epochs=1, steps_per_epoch=STEPS))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    sparsifier.bind_optimizer(optimizer)
    return model, optimizer


def test_plain_torch_optimizer_gets_the_fallback():
    sparsifier = build_sparsifier(METHODS["rigl"])
    model, optimizer = plain_sgd(sparsifier)
    reference = ReferenceFlips(sparsifier.effective_weights())
    for step, (x, y) in enumerate(contract_batches(STEPS)):
        record = train_step(model, optimizer, sparsifier, x, y, step)
        assert record.sign_flips.tolist() == reference.update(sparsifier.effective_weights())
        assert record.sign_flip_keys == tuple(sparsifier.effective_weights())


class PrunesAfterStep(RandomSparsifier):
    """Changes its masks in after_step without declaring it."""

    name = "prunes_after_step"

    def after_step(self, step):
        super().after_step(step)
        if step == 1:
            self.set_masks({key: mask.roll(1) for key, mask in self.mask_by_name.items()})


def test_an_undeclared_mask_change_after_the_step_raises_and_a_declared_one_is_counted_exactly():
    def train(declared):
        sparsifier = PrunesAfterStep(sparsity=0.8)
        if declared:
            sparsifier.changes_masks_after_step = lambda step: step == 1
        model, optimizer = plain_sgd(sparsifier)
        reference = ReferenceFlips(sparsifier.effective_weights())
        for step, (x, y) in enumerate(contract_batches(STEPS)):
            record = train_step(model, optimizer, sparsifier, x, y, step)
            assert record.sign_flips.tolist() == reference.update(sparsifier.effective_weights())
        return sparsifier

    with pytest.raises(RuntimeError, match=r"after_step\(1\) changed the masks .* declare it"):
        train(declared=False)
    assert train(declared=True).masks_applied_by_optimizer == {}


def test_the_meter_adds_the_engines_counts():
    sparsifier = build_sparsifier(METHODS["random"])
    model, optimizer = plain_sgd(sparsifier)
    meters = build_meters(model, sparsifier, optimizer, input_shape=(1, 8, 8), batch_size=16, steps_per_epoch=STEPS)
    total = torch.zeros(4, dtype=torch.int64)
    for step, (x, y) in enumerate(contract_batches(STEPS)):
        record = train_step(model, optimizer, sparsifier, x, y, step)
        total += record.sign_flips
        for meter in meters:
            meter.on_step(record)
    (flips,) = [meter for meter in meters if meter.name == "sign_flips"]
    report = flips.epoch_report(0, sparsifier.effective_weights())
    assert report["sign_flips"] == int(total.sum()) > 0
    assert list(report["sign_flips_per_layer"].values()) == total.tolist()


def test_fused_optimizers_pickle_without_their_caches():
    import pickle

    weight = torch.nn.Parameter(torch.randn(4, 3))
    for optimizer in (FusedOptimizer(torch.optim.AdamW([weight], lr=0.1)), HAM(torch.optim.SGD([weight], lr=0.1))):
        optimizer.set_bookkeeping(StepBookkeeping(masks={weight: torch.ones(4, 3, dtype=torch.bool)}))
        clone = pickle.loads(pickle.dumps(optimizer))
        assert clone._book is None and type(clone) is type(optimizer)
        assert clone.param_groups[0]["lr"] == 0.1


# ---- the fused kernels ----------------------------------------------------------------------------------------
FUSED_CASES = ([(method, ham, base, channels_last)
                for method in ("dense", "random", "rigl", "rigl_no_skip", "acdc")
                for ham in (True, False) for base in ("sgd", "adamw") for channels_last in (False, True)
                if not (channels_last and base == "adamw")]
               + [(method, ham, "sgd", False) for method in IN_KERNEL[5:] for ham in (True, False)]
               + [(method, ham, "sgd_nesterov", False) for method in ("dense", "random") for ham in (True, False)])


@pytest.mark.slow
@pytest.mark.parametrize("method, ham, base, channels_last", FUSED_CASES)
def test_kernels_do_the_bookkeeping_the_fallback_does(method, ham, base, channels_last):
    """In the kernels: every step's flips are the definition's and masked weights stay 0 (checked in ``run``);
    the weights and flips are bit for bit those of the same optimizer with the sparsifier masking and the
    engine counting (HAM: the same kernels either way; HAM off with SGD: the kernels round as torch's SGD),
    and AdamW without HAM is torch's AdamW up to float32 rounding."""
    weights, flips, books = run(method, ham, base, channels_last)
    assert books and max(n_flips for _, n_flips in books) == 4  # every tracked weight counted in a kernel
    assert any(n_masks > 0 for n_masks, _ in books) == (method != "dense")
    reference_weights, reference_flips, reference_books = run(method, ham, base, channels_last, fallback=True)
    assert reference_books == []
    if ham or base != "adamw":
        assert flips == reference_flips
        for got, expected in zip(weights, reference_weights):
            assert torch.equal(got, expected)
    else:
        for got, expected in zip(weights, reference_weights):
            torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("ham", [True, False])
@pytest.mark.parametrize("method", ["dense", "random", "rigl"])
def test_sam_bases_get_the_exact_fallback(method, ham):
    """SAM's two passes do not fit one kernel: nothing is handed over, the engine counts the definition (``run``),
    and the weights are those of the foreach implementation."""
    weights, flips, books = run(method, ham, "sam")
    assert books == []
    reference_weights, reference_flips, _ = run(method, ham, "sam", implementation="foreach")
    assert sum(map(sum, flips)) > 0
    if not ham:  # HAM off: torch's own steps either way
        assert flips == reference_flips and all(map(torch.equal, weights, reference_weights))
    else:  # HAM's compiled pass after the base vs its foreach pass: float32 rounding
        for got, expected in zip(weights, reference_weights):
            torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("method", [m for m in METHODS if m not in IN_KERNEL])
def test_reparameterized_methods_keep_the_exact_fallback_under_the_kernels(method):
    _, flips, books = run(method, ham=True)
    assert all(n_masks == 0 and n_flips == 0 for n_masks, n_flips in books)  # m * w and the like: nothing handed
    if method not in QUIET:
        assert sum(map(sum, flips)) > 0


class ChangesMasksInPlaceAfterStep(RandomSparsifier):
    """Declares, and makes, an in-place mask change in after_step (then re-masks with the standard helper)."""

    name = "in_place_after_step"

    def __init__(self):
        super().__init__(sparsity=0.8)

    def changes_masks_after_step(self, step):
        return step == 5

    def after_step(self, step):
        if step == 5:
            for mask in self.mask_by_name.values():
                mask.copy_(mask.roll(1))
        super().after_step(step)


@pytest.mark.slow
def test_a_mask_changed_in_place_after_the_kernels_applied_it_is_applied_by_the_method():
    _, flips, books = run(ChangesMasksInPlaceAfterStep)  # checks zeros and the definition every step
    assert books and sum(map(sum, flips)) > 0


@pytest.mark.slow
def test_a_handed_param_the_kernels_cannot_take_gets_the_torch_fallback():
    """float64 weights: no kernel takes them, the optimizer masks and counts them itself (bookkeeping.around)."""
    torch.manual_seed(0)
    weight = torch.nn.Parameter(torch.randn(8, 6, dtype=torch.float64))
    mask = torch.rand(8, 6) > 0.5
    with torch.no_grad():
        weight.mul_(mask)
    optimizer = HAM(torch.optim.SGD([weight], lr=0.5, momentum=0.9), alpha=1.0, implementation="compiled")
    assert optimizer.bookkeeping_params() == frozenset()  # no gradient yet, and float64 anyway
    weight.grad = torch.randn_like(weight)
    before = torch.sign(weight.detach()).clone()
    slot = torch.zeros(1, dtype=torch.int64)
    optimizer.set_bookkeeping(StepBookkeeping(masks={weight: mask}, flips={weight: slot}))
    optimizer.step()
    assert not bool((weight[~mask] != 0).any())
    assert int(slot) == int(((before * torch.sign(weight.detach())) < 0).sum()) > 0


@pytest.mark.slow
@pytest.mark.parametrize("ham", [True, False])
def test_fused_steps_do_not_sync_with_the_host(monkeypatch, ham):
    """The whole step with the kernels doing the bookkeeping, and every meter's on_step, syncs never."""
    from test_topology import HostSync, no_host_sync

    torch.manual_seed(0)
    model = contract_model()
    sparsifier = build_sparsifier(METHODS["rigl"])
    sparsifier.attach(model, TrainingContext(epochs=EPOCHS, steps_per_epoch=STEPS, seed=0))
    optimizer = _optimizer(model, sparsifier, ham, "sgd", "compiled")
    sparsifier.bind_optimizer(optimizer)
    meters = build_meters(model, sparsifier, optimizer, input_shape=(1, 8, 8), batch_size=16, steps_per_epoch=STEPS,
                          log_every=1000)
    bookkeeper = Bookkeeper(sparsifier, optimizer)
    data = contract_batches(STEPS)
    train_step(model, optimizer, sparsifier, *data[0], 0, bookkeeper=bookkeeper)  # compiles the kernels
    for step in range(1, 2 * STEPS):
        with monkeypatch.context() as patch:
            no_host_sync(patch)
            with pytest.raises(HostSync):
                bool(torch.ones(()) > 0)
            record = train_step(model, optimizer, sparsifier, *data[step % STEPS], step, bookkeeper=bookkeeper)
            for meter in meters:
                if meter.name != "ham":  # HamMeter reads the diagnostics every log_every steps, by design
                    meter.on_step(record)


@pytest.mark.parametrize("implementation", ["foreach", "auto"])
def test_a_book_handed_to_a_sam_base_masks_both_passes_and_counts(implementation):
    """The engine hands SAM nothing, but anyone may: the closure's (perturbed) gradients are masked too."""
    torch.manual_seed(0)
    weight = torch.nn.Parameter(torch.randn(8, 6))
    mask = torch.rand(8, 6) > 0.5
    with torch.no_grad():
        weight.mul_(mask)
    x = torch.randn(6, 5)

    def closure():
        loss = (weight @ x).square().sum()
        loss.backward()
        return loss

    optimizer = FusedOptimizer(SAM([weight], torch.optim.SGD, rho=0.05, lr=0.05, momentum=0.9),
                               implementation=implementation)
    slot = torch.zeros(1, dtype=torch.int64)
    for _ in range(3):
        optimizer.zero_grad()
        closure()
        before = torch.sign(weight.detach()).clone()
        counted = int(slot)
        optimizer.set_bookkeeping(StepBookkeeping(masks={weight: mask}, flips={weight: slot}))
        optimizer.step(closure)
        assert not bool((weight[~mask] != 0).any())
        assert int(slot) - counted == int(((before * torch.sign(weight.detach())) < 0).sum())
    assert int(slot) > 0
