"""The optimizer-state policy (sparsifiers.optimizer_state): 'reset' is a fresh optimizer, for every optimizer."""

import copy

import pytest
import torch
from torch import nn

from ham_bench.optim import HAM, SAM
from sparsifiers import build_sparsifier
from sparsifiers.base import TrainingContext
from sparsifiers.optimizer_state import reset_entries, reset_state

TORCH_OPTIMIZERS = {
    "sgd": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, dampening=0.3),
    "sgd_nesterov": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True),
    "adam": lambda p: torch.optim.Adam(p, lr=0.01),
    "adamw": lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.1),
    "adamw_amsgrad": lambda p: torch.optim.AdamW(p, lr=0.01, amsgrad=True),
    "nadam": lambda p: torch.optim.NAdam(p, lr=0.01),
    "radam": lambda p: torch.optim.RAdam(p, lr=0.01),
    "adamax": lambda p: torch.optim.Adamax(p, lr=0.01),
    "adagrad": lambda p: torch.optim.Adagrad(p, lr=0.1, initial_accumulator_value=0.5),
    "adadelta": lambda p: torch.optim.Adadelta(p, lr=1.0),
    "rmsprop": lambda p: torch.optim.RMSprop(p, lr=0.01, momentum=0.9, centered=True),
    "rprop": lambda p: torch.optim.Rprop(p, lr=0.05),
    "asgd": lambda p: torch.optim.ASGD(p, lr=0.05, t0=1),
    "ham_sgd": lambda p: HAM(torch.optim.SGD(p, lr=0.1, momentum=0.9), alpha=5.0, beta=1e-3,
                             implementation="foreach"),
    "ham_adamw": lambda p: HAM(torch.optim.AdamW(p, lr=0.01), alpha=5.0, beta=1e-3, implementation="foreach"),
    "sam_sgd": lambda p: SAM(p, torch.optim.SGD, lr=0.1, momentum=0.9, rho=0.05),
}


def problem(seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [nn.Parameter(torch.randn(4, 3, generator=generator)), nn.Parameter(torch.randn(5, generator=generator))]


def loss_of(params, step):
    generator = torch.Generator().manual_seed(100 + step)
    return sum(((p - torch.randn(p.shape, generator=generator)) ** 2 * (1 + step)).sum() for p in params)


def step(optimizer, params, index):
    def closure():
        optimizer.zero_grad()
        loss = loss_of(params, index)
        loss.backward()
        return loss

    closure()
    optimizer.step(closure)


def trained(name):
    """Parameters and optimizer ``name`` after three steps."""
    params = problem()
    optimizer = TORCH_OPTIMIZERS[name](params)
    for index in range(3):
        step(optimizer, params, index)
    return params, optimizer


@pytest.mark.parametrize("name", list(TORCH_OPTIMIZERS))
def test_reset_state_makes_the_next_steps_those_of_a_fresh_optimizer(name):
    params, optimizer = trained(name)
    fresh_params = [nn.Parameter(p.detach().clone()) for p in params]
    fresh = TORCH_OPTIMIZERS[name](fresh_params)
    reset_state(optimizer)
    for index in range(3, 6):
        step(optimizer, params, index)
        step(fresh, fresh_params, index)
    for p, q in zip(params, fresh_params):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


@pytest.mark.parametrize("name", list(TORCH_OPTIMIZERS))
def test_reset_entries_gives_fresh_values_and_keeps_counters(name):
    params, optimizer = trained(name)
    weight = params[0]
    before = copy.deepcopy(optimizer.state[weight])
    keep = torch.ones_like(weight, dtype=torch.bool)
    keep[1, :] = False
    reset_entries(optimizer, weight, keep)
    # what a fresh optimizer holds after one step from these weights, for comparison of initial values
    probe = nn.Parameter(weight.detach().clone())
    fresh = TORCH_OPTIMIZERS[name]([probe])
    probe.grad = torch.zeros_like(probe)
    fresh.step(lambda: torch.zeros(()))
    for key, value in optimizer.state[weight].items():
        old = before[key]
        if torch.is_tensor(value) and value.shape == weight.shape and key not in ("step",):
            torch.testing.assert_close(value[keep], old[keep], rtol=0, atol=0)
            if name == "adagrad" and key == "sum":
                assert torch.all(value[~keep] == 0.5)
            elif name == "rprop" and key == "step_size":
                assert torch.all(value[~keep] == 0.05)
            else:
                assert int(value[~keep].count_nonzero()) == 0, key
        else:  # counters and scalars are shared by the whole tensor: unchanged
            assert (torch.equal(value, old) if torch.is_tensor(value) else value == old), key


def test_acdc_decompression_gives_adamw_a_fresh_start():
    """Regression: the reset kept Adam's step counter, so bias correction was ~1 after a decompression."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 5))
    steps_per_epoch, epochs = 4, 6
    sparsifier = build_sparsifier({"name": "acdc", "sparsity": 0.8, "schedule_unit": "epochs", "dense_warmup": 1,
                                   "compressed_length": 1, "decompressed_length": 1, "final_compressed_length": 1})
    sparsifier.attach(model, TrainingContext(epochs=epochs, steps_per_epoch=steps_per_epoch))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    sparsifier.bind_optimizer(optimizer)
    generator = torch.Generator().manual_seed(1)
    data = [(torch.randn(8, 20, generator=generator), torch.randint(0, 5, (8,), generator=generator))
            for _ in range(steps_per_epoch)]
    ratios = []
    for epoch in range(epochs):
        sparsifier.on_epoch_start(epoch)
        for index, (x, y) in enumerate(data):
            step_index = epoch * steps_per_epoch + index
            phase_before = sparsifier.phase
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            sparsifier.mask_gradients()
            if phase_before == "decompressed" and not ratios_taken(ratios, epoch):
                # the first step after a decompression against a freshly created AdamW on the same weights
                clone = copy.deepcopy(model)
                fresh = torch.optim.AdamW(clone.parameters(), lr=1e-3, weight_decay=0.0)
                for p, q in zip(model.parameters(), clone.parameters()):
                    q.grad = p.grad.clone()
                fresh.step()
                before = [p.detach().clone() for p in model.parameters()]
                sparsifier.before_step(step_index)
                optimizer.step()
                ours = sum(float((p.detach() - b).abs().sum()) for p, b in zip(model.parameters(), before))
                theirs = sum(float((q.detach() - b).abs().sum()) for q, b in zip(clone.parameters(), before))
                ratios.append((epoch, ours / theirs))
            else:
                sparsifier.before_step(step_index)
                optimizer.step()
            sparsifier.after_step(step_index)
        sparsifier.on_epoch_end(epoch, {})
    assert [epoch for epoch, _ in ratios] == [2, 4]  # the schedule's two decompressed phases
    for _, ratio in ratios:
        assert ratio == pytest.approx(1.0, rel=1e-5)


def ratios_taken(ratios, epoch):
    return any(e == epoch for e, _ in ratios)
