"""SNIP and SynFlow (pruning at initialization from scores) on tiny models: the checkable facts of both papers."""

import math

import pytest
import torch
from torch import nn
from torch.func import functional_call
from torch.nn import functional as F

from sparsifiers import ConfigError, TrainingContext, build_sparsifier
from sparsifiers.synflow import linearized_state, synflow_scores


def mlp(widths=(20, 16, 12, 5), bias=True, seed=0):
    torch.manual_seed(seed)
    layers = []
    for a, b in zip(widths[:-1], widths[1:]):
        layers += [nn.Linear(a, b, bias=bias), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


def batch_source(seed=3, n=32, features=20, classes=5):
    generator = torch.Generator().manual_seed(seed)
    return lambda: (torch.randn(n, features, generator=generator), torch.randint(0, classes, (n,), generator=generator))


def attach(cfg, model, sample_batch=None, input_shape=None, seed=0):
    sparsifier = build_sparsifier(cfg)
    sparsifier.attach(model, TrainingContext(epochs=1, steps_per_epoch=1, seed=seed, input_shape=input_shape,
                                             sample_batch=sample_batch))
    return sparsifier


# ---- SNIP ------------------------------------------------------------------------------------------
def test_snip_scores_are_g_times_w_and_the_gradient_of_an_explicit_mask():
    model = mlp()
    x, y = batch_source()()
    sparsifier = build_sparsifier({"name": "snip", "sparsity": 0.8})
    sparsifier.attach(model, TrainingContext(epochs=1, steps_per_epoch=1))  # no data: unscored, dense
    assert sparsifier.masks() == {}
    sparsifier.context.sample_batch = lambda: (x, y)
    scores = sparsifier.scores()
    weights = {f"{i}.weight": model[i].weight for i in (0, 2, 4)}
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()
    # |dL/dc| at c = 1 for W_eff = c * w, by autograd through an explicit multiplicative mask
    gates = {key: torch.ones_like(w, requires_grad=True) for key, w in weights.items()}
    params = {key: gates[key] * w.detach() for key, w in weights.items()}
    loss = F.cross_entropy(functional_call(model, params, (x,)), y)
    gate_grads = dict(zip(gates, torch.autograd.grad(loss, list(gates.values()))))
    for key, w in weights.items():
        assert torch.allclose(scores[key], (w.grad * w).abs(), rtol=1e-6, atol=0)
        assert torch.allclose(scores[key], gate_grads[key].abs(), rtol=1e-6, atol=0)
    assert all(p.grad is not None for p in weights.values())  # scoring used autograd.grad, not .grad


def test_snip_keeps_exactly_round_of_the_target_and_ignores_score_and_loss_scale():
    model = mlp()
    sparsifier = attach({"name": "snip", "sparsity": 0.73}, model, batch_source())
    masks = sparsifier.masks()
    total = sum(m.numel() for m in masks.values())
    assert set(masks) == {"0.weight", "2.weight", "4.weight"}  # global: first and last layer included
    assert sum(int(m.sum()) for m in masks.values()) == round((1 - 0.73) * total)
    probe = attach({"name": "snip", "sparsity": 0.73}, mlp())  # no data: unscored, the weights unpruned
    probe.context.sample_batch = batch_source()
    scores = probe.scores()
    assert all(torch.equal(probe.budget_masks(scores, lambda size, final, density: final)[k], masks[k])
               for k in masks)
    keep = lambda size, final, density: final  # noqa: E731
    normalised = sum(float(s.sum()) for s in scores.values())
    for scaled in ({k: s / normalised for k, s in scores.items()}, {k: s * 1e3 for k, s in scores.items()}):
        assert all(torch.equal(probe.budget_masks(scaled, keep)[k], masks[k]) for k in masks)
    # a loss scaled by a positive constant scales every gradient: same ranking, same mask
    x, y = batch_source()()
    weights = [mlp()[i].weight for i in (0, 2, 4)]
    scaled_model = mlp()
    grads = torch.autograd.grad(7.0 * F.cross_entropy(scaled_model(x), y), [scaled_model[i].weight for i in (0, 2, 4)])
    loss_scaled = {f"{i}.weight": (g * w).abs().detach() for i, g, w in zip((0, 2, 4), grads, weights)}
    assert all(torch.equal(probe.budget_masks(loss_scaled, keep)[k], masks[k]) for k in masks)


def test_snip_is_seeded_restores_bn_and_leaves_the_global_rng_alone():
    def bn_model():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(20, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 5))

    a_model = bn_model()
    bn_before = {k: v.clone() for k, v in a_model[1].state_dict().items()}
    a = attach({"name": "snip", "sparsity": 0.8, "scoring_mode": "train"}, a_model, batch_source(seed=4))
    assert all(torch.equal(a_model[1].state_dict()[k], v) for k, v in bn_before.items())  # BN stats restored
    assert a_model.training
    b = attach({"name": "snip", "sparsity": 0.8, "scoring_mode": "train"}, bn_model(), batch_source(seed=4))
    c = attach({"name": "snip", "sparsity": 0.8, "scoring_mode": "train"}, bn_model(), batch_source(seed=5))
    assert all(torch.equal(a.masks()[k], b.masks()[k]) for k in a.masks())
    assert not all(torch.equal(a.masks()[k], c.masks()[k]) for k in a.masks())
    # dropout in train mode drew inside a forked RNG: the global stream is where it was
    model = bn_model()
    rng = torch.get_rng_state()
    attach({"name": "snip", "sparsity": 0.8, "scoring_mode": "train"}, model, batch_source(seed=4))
    assert torch.equal(torch.get_rng_state(), rng)


def test_snip_per_layer_scope_collapse_and_training_without_data_are_errors():
    layerwise = attach({"name": "snip", "sparsity": 0.75, "distribution": "uniform", "dense_first": False}, mlp(),
                       batch_source())
    assert {k: int(m.sum()) for k, m in layerwise.masks().items()} == {"0.weight": 80, "2.weight": 48,
                                                                      "4.weight": 15}
    with pytest.raises(ConfigError, match="leaves no weight in"):
        attach({"name": "snip", "sparsity": 0.999}, mlp(widths=(20, 400, 1)), batch_source(classes=1))
    unscored = attach({"name": "snip"}, mlp())
    with pytest.raises(ConfigError, match="sparsifier=snip scores the model at attach from a training batch"):
        unscored.bind_optimizer(torch.optim.SGD(mlp().parameters(), lr=0.1))


# ---- SynFlow -----------------------------------------------------------------------------------------
def test_synflow_conservation_on_a_bias_free_relu_chain():
    model = mlp(widths=(12, 10, 8, 6, 4), bias=False).double()
    state = linearized_state(model)
    names = {f"{i}.weight": f"{i}.weight" for i in (0, 2, 4, 6)}
    scores = synflow_scores(model, state, names, (12,))
    flow = float(functional_call(model, state, (torch.ones(1, 12, dtype=torch.float64),)).sum())
    for key, score in scores.items():  # Euler: R is linear in each layer's weights
        assert float(score.sum()) == pytest.approx(flow, rel=1e-12)


def test_synflow_schedule_counts_after_rounds_1_50_100():
    model = mlp(widths=(40, 30, 20, 10))
    sparsifier = build_sparsifier({"name": "synflow", "sparsity": 0.9})
    kept = []
    original = sparsifier.budget_masks

    def recording(scores, keep, index_ties=False):
        masks = original(scores, keep, index_ties)
        kept.append(sum(int(m.sum()) for m in masks.values()))
        return masks

    sparsifier.budget_masks = recording
    sparsifier.attach(model, TrainingContext(epochs=1, steps_per_epoch=1, input_shape=(40,)))
    total = 40 * 30 + 30 * 20 + 20 * 10
    assert len(kept) == 100
    assert sparsifier.density_at(0.1, 1) == pytest.approx(0.97724, abs=1e-5)
    assert sparsifier.density_at(0.1, 50) == pytest.approx(0.31623, abs=1e-5)
    assert kept[0] == round(0.1 ** (1 / 100) * total) and kept[49] == round(0.1 ** 0.5 * total)
    assert kept[99] == round(0.1 * total) == sum(int(m.sum()) for m in sparsifier.masks().values())
    assert all(a >= b for a, b in zip(kept, kept[1:]))


def test_synflow_no_layer_collapse_at_99_percent_and_the_mask_ignores_data():
    def ten_layers():
        return mlp(widths=(32,) * 10 + (10,), seed=2)

    model = ten_layers()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    a = attach({"name": "synflow", "sparsity": 0.99}, model, batch_source(seed=1), input_shape=(32,))
    masks = a.masks()
    assert len(masks) == 10 and all(int(m.sum()) >= 1 for m in masks.values())
    # an input-output path survives: the linearized flow is still positive
    state = linearized_state(model)
    assert float(functional_call(model, state, (torch.ones(1, 32, dtype=torch.float64),)).sum()) > 0
    # the real model's weights are untouched apart from the pruned entries
    for key, value in model.state_dict().items():
        expected = before[key] * masks[key] if key in masks else before[key]
        assert torch.equal(value, expected)
    b = attach({"name": "synflow", "sparsity": 0.99}, ten_layers(), batch_source(seed=9), input_shape=(32,))
    assert all(torch.equal(masks[k], b.masks()[k]) for k in masks)
    uniform_layers = sum(1 for m in masks.values() if math.isclose(float(m.float().mean()), 0.01, abs_tol=1e-3))
    assert uniform_layers < 10  # the global budget chose its own layer-wise densities


def test_synflow_with_the_reference_abs_biases_collapses_a_biased_mlp():
    """Why ``shifts: zero`` is the default: |bias| terms carry flow past emptied layers."""
    with pytest.raises(ConfigError, match="layer collapse"):
        attach({"name": "synflow", "sparsity": 0.99, "shifts": "abs"}, mlp(widths=(32,) * 10 + (10,), seed=2),
               input_shape=(32,))
