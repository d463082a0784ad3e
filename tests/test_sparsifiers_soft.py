"""CS (continuous sparsification) and spred (L1 through w = u * v) on tiny models: the checkable facts."""

import pytest
import torch
from torch import nn

from ham_bench.engine.step import train_step
from ham_bench.schedule import build_scheduler
from hook_loop import random_batches, run_epochs, sgd_for
from sparsifiers import TrainingContext, build_sparsifier
from sparsifiers.base import sparsity_report
from sparsifiers.cs import temperature
from sparsifiers.reparameterization import add_product


def tiny_model(seed=0, bn=True):
    torch.manual_seed(seed)
    norm = [nn.BatchNorm2d(8)] if bn else []
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 8, 3), *norm, nn.ReLU(), nn.Flatten(),
                         nn.Linear(128, 32), nn.ReLU(), nn.Linear(32, 10))


# ---- CS ----------------------------------------------------------------------------------------------
def test_cs_soft_mask_is_the_identity_at_the_start_and_beta_follows_the_schedule():
    model = tiny_model()
    raw = {n: m.weight.detach().clone() for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    cs = build_sparsifier({"name": "cs"})
    cs.attach(model, TrainingContext(epochs=4, steps_per_epoch=5))
    assert set(cs.gates) == {"0.weight", "2.weight", "6.weight"}  # the classifier stays dense
    for key in cs.gates:
        assert torch.equal(cs.effective_weights()[key], raw[key.rsplit(".", 1)[0]])  # beta = 1, s = s0 = 0
    assert temperature(0, 85, 200.0) == 1.0
    assert temperature(42, 85, 200.0) == pytest.approx(14.142, abs=1e-3)
    assert temperature(84, 85, 200.0) == pytest.approx(200.0)
    (group,) = cs.parameter_groups()
    assert group["weight_decay"] == 0.0 and group["ham"] is False
    assert [p.shape for p in group["params"]] == [raw["0"].shape, raw["2"].shape, raw["6"].shape]


def test_cs_l1_gradient_is_that_of_the_penalty_on_the_soft_mask():
    model = tiny_model()
    cs = build_sparsifier({"name": "cs", "l1": 0.5})
    cs.attach(model, TrainingContext(epochs=4, steps_per_epoch=5))
    for gate in cs.gates.values():
        gate.beta = 3.0
    x, y = random_batches(1, 8, (1, 8, 8), 10)[0]
    nn.functional.cross_entropy(model(x), y).backward()
    data_grads = {k: g.s.grad.clone() for k, g in cs.gates.items()}
    cs.mask_gradients()
    for key, gate in cs.gates.items():
        s = gate.s.detach().clone().requires_grad_()
        (penalty,) = torch.autograd.grad(0.5 * (torch.sigmoid(3.0 * s) / gate.norm).sum(), [s])
        assert torch.allclose(gate.s.grad, data_grads[key] + penalty, rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("ticket", ["positive", "topk"])
def test_cs_rounds_clamp_the_logits_and_the_ticket_rewinds_to_the_snapshot(ticket):
    epochs, steps = 4, 5
    model = tiny_model()
    cs = build_sparsifier({"name": "cs", "sparsity": 0.7, "rounds": 3, "rewind_fraction": 0.4, "ticket": ticket,
                           "l1": 1e-3})
    cs.attach(model, TrainingContext(epochs=epochs, steps_per_epoch=steps))
    optimizer = sgd_for(model, cs, lr=0.5, weight_decay=0.0)
    cfg = {"name": "cosine", "warmup_epochs": 0}
    scheduler = build_scheduler(optimizer, cfg, steps, epochs * steps, position=cs.schedule_position)
    assert cs.rounds.starts == [0, 5, 10, 15] and cs.rewind_step == 2
    data = random_batches(steps, 16, (1, 8, 8), 10)
    seen = {}
    for step in range(epochs * steps):
        if step == cs.rewind_step:
            seen["snapshot"] = {k: v.clone() for k, v in model.state_dict().items() if not k.endswith(".s")}
        train_step(model, optimizer, cs, *data[step % steps], step)
        scheduler.step()
        if cs.rounds.ends_round(step):
            logits = {k: g.s.detach().clone() for k, g in cs.gates.items()}
            if cs.round < 3:  # s <- min(beta s, s0) between search rounds, not before the ticket
                assert max(float(s.max()) for s in logits.values()) <= cs.s0
            else:
                assert max(float(s.max()) for s in logits.values()) > cs.s0
            assert optimizer.param_groups[0]["lr"] == pytest.approx(0.5)  # the schedule restarts
            if cs.round == 3:  # the ticket was cut after this step
                if ticket == "positive":
                    assert all(torch.equal(cs.masks()[k], s > 0) for k, s in logits.items())
                state = model.state_dict()
                for key, value in seen["snapshot"].items():  # weights and BN buffers of the snapshot, masked
                    mask = cs.masks().get(key.replace("parametrizations.", "").replace(".original", ""))
                    assert torch.equal(state[key], value if mask is None else value * mask), key
                assert not optimizer.state  # a fresh optimizer for the ticket
    assert cs.extra_metrics()["cs_ticket"] is True
    for key, mask in cs.masks().items():  # the ticket forward: w * mask / sigmoid(s0), the logits out of it
        assert torch.equal(cs.effective_weights()[key], cs.tensors.get(key).detach() * 2.0)
        assert int(cs.effective_weights()[key][~mask].count_nonzero()) == 0
    report = sparsity_report(cs)
    if ticket == "topk":
        assert report["achieved_sparsity"] == report["target_sparsity"] == pytest.approx(0.7, abs=1e-3)


# ---- spred ---------------------------------------------------------------------------------------------
def test_spred_sqrt_split_reproduces_the_weight_and_its_l1_penalty():
    torch.manual_seed(0)
    layer = nn.Linear(30, 20).double()
    w0 = layer.weight.detach().clone()
    v, u = add_product(layer, gamma=0.0)  # (m, w) = (v, u): v = sqrt|w0|, u = sign(w0) sqrt|w0|
    assert torch.allclose(u * v, w0, rtol=1e-15, atol=0) and torch.equal(torch.sign(u), torch.sign(w0))
    lam = 3e-3
    assert torch.allclose(lam / 2 * (u * u + v * v), lam * w0.abs(), rtol=1e-15, atol=0)
    assert torch.allclose(layer.weight, w0, rtol=1e-15, atol=0)


def test_spred_both_factors_at_zero_are_absorbing_one_is_not():
    def step_once(zero_both):
        torch.manual_seed(1)
        layer = nn.Linear(6, 4)
        v, u = add_product(layer, gamma=0.0)
        with torch.no_grad():
            u[:, :3] = 0
            if zero_both:
                v[:, :3] = 0
        optimizer = torch.optim.SGD([u, v, layer.bias], lr=0.1, momentum=0.9, weight_decay=1e-2)
        for _ in range(2):
            optimizer.zero_grad()
            layer(torch.randn(8, 6)).pow(2).sum().backward()
            optimizer.step()
        return layer.weight.detach()[:, :3]

    assert int(step_once(zero_both=True).count_nonzero()) == 0
    assert int(step_once(zero_both=False).count_nonzero()) > 0


def lasso_cd(X, y, lam, sweeps=5000):
    """Coordinate descent for (1 / 2n) ||X w - y||^2 + lam ||w||_1."""
    n, p = X.shape
    w = torch.zeros(p, dtype=X.dtype)
    norms = (X * X).sum(0) / n
    for _ in range(sweeps):
        for j in range(p):
            residual = y - X @ w + X[:, j] * w[j]
            rho = float(X[:, j] @ residual) / n
            w[j] = torch.sign(torch.tensor(rho)) * max(abs(rho) - lam, 0.0) / float(norms[j])
    return w


def lasso_problem():
    generator = torch.Generator().manual_seed(0)
    n, p = 15, 30
    X = torch.randn(n, p, generator=generator, dtype=torch.float64)
    truth = torch.zeros(p, dtype=torch.float64)
    truth[:4] = torch.tensor([2.0, -1.5, 1.0, -0.8], dtype=torch.float64)
    start = 0.1 * torch.randn(1, p, generator=generator, dtype=torch.float64)
    return X, X @ truth, start


def spred_regression(init_gamma, lam=0.1, steps=20000):
    """Full-batch SGD on spred's (u, v) of a linear model, built and grouped by the sparsifier itself."""
    X, y, start = lasso_problem()
    model = nn.Sequential(nn.Linear(X.shape[1], 1, bias=False)).double()
    with torch.no_grad():
        model[0].weight.copy_(start)
    spred = build_sparsifier({"name": "spred", "weight_decay": lam, "init_gamma": init_gamma, "sparsity": 0.5})
    spred.attach(model, TrainingContext(epochs=1, steps_per_epoch=1))
    optimizer = sgd_for(model, spred, lr=0.05, momentum=0.0)  # lambda / 2 (u^2 + v^2) >= lambda |u v|
    for _ in range(steps):
        optimizer.zero_grad()
        (0.5 * (model(X).squeeze(1) - y).pow(2).mean()).backward()
        optimizer.step()
    v, u = spred.factors["0.weight"]
    return model[0].weight.detach().squeeze(0), (v * v - u * u).detach()


def test_spred_sgd_with_weight_decay_finds_the_lasso_solution():
    X, y, _ = lasso_problem()
    lasso = lasso_cd(X, y, 0.1, sweeps=300)
    found, _ = spred_regression(init_gamma=1.0)
    support = lasso.abs() > 1e-8
    assert 0 < int(support.sum()) < X.shape[1]
    assert torch.equal(found.abs() > 1e-3, support)
    assert torch.equal(torch.sign(found[support]), torch.sign(lasso[support]))
    assert torch.allclose(found, lasso, atol=1e-5)


def test_spred_sqrt_split_keeps_u_and_v_equal_and_misses_the_lasso_solution():
    """init_gamma = 0: SGD conserves v^2 - u^2 = 0, so u v keeps its initial sign (up to rounding)."""
    X, y, _ = lasso_problem()
    found, gap = spred_regression(init_gamma=0.0)
    assert float(gap.abs().max()) < 1e-12
    assert (found - lasso_cd(X, y, 0.1, sweeps=300)).abs().max() > 0.1


def test_spred_projects_to_the_exact_target_with_both_factors_zero():
    model = tiny_model(bn=False)
    spred = build_sparsifier({"name": "spred", "sparsity": 0.8, "prune_at": 0.5, "weight_decay": 1e-3})
    spred.attach(model, TrainingContext(epochs=4, steps_per_epoch=5))
    (group,) = spred.parameter_groups()
    assert group["weight_decay"] == 1e-3 and group["ham"] is True and len(group["params"]) == 8
    optimizer = sgd_for(model, spred)
    pruned_after = []
    run_epochs(model, spred, optimizer, random_batches(5, 16, (1, 8, 8), 10), 4,
               on_epoch=lambda epoch: pruned_after.append(spred.pruned))
    assert pruned_after == [False, True, True, True]
    report = sparsity_report(spred)
    assert report["achieved_sparsity"] == report["target_sparsity"] == pytest.approx(0.8, abs=1e-3)
    for key, mask in spred.masks().items():
        v, u = spred.factors[key]
        assert int(u[~mask].count_nonzero()) == 0 and int(v[~mask].count_nonzero()) == 0
        for factor in (u, v):
            assert int(optimizer.state[factor]["momentum_buffer"][~mask].count_nonzero()) == 0


def test_cs_ticket_that_empties_a_layer_is_an_error_at_the_epoch_end():
    from sparsifiers import ConfigError

    cs = build_sparsifier({"name": "cs", "ticket": "positive"})
    cs.attach(tiny_model(), TrainingContext(epochs=4, steps_per_epoch=5))
    with torch.no_grad():
        for key, gate in cs.gates.items():
            gate.s.fill_(-1.0 if key == "2.weight" else 1.0)
    cs.cut_ticket()  # inside a step: no check there (it would read the device)
    with pytest.raises(ConfigError, match=r"leaves no weight in 2.weight \(cs: layer collapse\)"):
        cs.on_epoch_end(0)
