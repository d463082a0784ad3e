"""STR, Sign-In (alone and over random / RigL / AC/DC) and PILoT on tiny models, trained through the step engine.

torch SGD + momentum, the optimizer built from ``parameter_groups`` as the
trainer does; ``on_epoch_end`` gets the epoch's real training accuracy.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from hook_loop import run_epochs
from sparsifiers import TrainingContext, build_sparsifier
from sparsifiers.base import sparsity_report
from sparsifiers.pilot import PILoT
from sparsifiers.reparameterization import balanced_factors, plain_state_dict, rebalance_
from sparsifiers.signin import SignIn
from sparsifiers.str import STR

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
STEPS = 6


class TinyCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, 8, 3, padding=1)
        self.fc1 = nn.Linear(8 * 4 * 4, 32)
        self.fc2 = nn.Linear(32, 3)

    def forward(self, x):
        x = torch.relu(self.conv1(x))
        x = nn.functional.max_pool2d(torch.relu(self.conv2(x)), 2)
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


def make_data(seed=0, n=STEPS * 16):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 8, 8, generator=g)
    y = (x[:, 0, :4].sum((1, 2)) > 0).long() + (x[:, 0, 4:].sum((1, 2)) > 2).long()
    return x, y


def optimizer_for(model, sparsifier, lr=0.05, weight_decay=5e-4):
    """SGD momentum with the sparsifier's extra groups split out of the default group (as the trainer does)."""
    extra = sparsifier.parameter_groups()
    taken = {id(p) for group in extra for p in group["params"]}
    groups = [{"params": [p for p in model.parameters() if id(p) not in taken], "weight_decay": weight_decay}]
    groups += [{k: v for k, v in group.items() if k != "ham"} for group in extra]
    return torch.optim.SGD(groups, lr=lr, momentum=0.9)


def setup(cfg, epochs=4, seed=0, lr=0.05):
    torch.manual_seed(seed)
    model = TinyCNN()
    sparsifier = build_sparsifier(cfg)
    sparsifier.attach(model, TrainingContext(epochs=epochs, steps_per_epoch=STEPS, seed=seed))
    optimizer = optimizer_for(model, sparsifier, lr=lr)
    sparsifier.bind_optimizer(optimizer)
    return model, sparsifier, optimizer


def masked_are_zero(sparsifier):
    weights = sparsifier.effective_weights()
    return all(bool((weights[key][~mask] == 0).all()) for key, mask in sparsifier.masks().items())


def train(model, sparsifier, optimizer, epochs, first_epoch=0, data=None, on_step=None, on_epoch=None):
    x, y = make_data() if data is None else data
    batches = [(x[i * 16:(i + 1) * 16], y[i * 16:(i + 1) * 16]) for i in range(STEPS)]

    def after(step, record):
        assert masked_are_zero(sparsifier), f"masked weight nonzero after step {step}"
        if on_step is not None:
            on_step(step)

    run_epochs(model, sparsifier, optimizer, batches, epochs, first_epoch=first_epoch, on_step=after,
               on_epoch=on_epoch)


def interrupted_after_two_epochs(cfg):
    """A 4-epoch run trained through, and a fresh run loaded with its state after epoch 2 (to be continued)."""
    model, sparsifier, optimizer = setup(cfg, epochs=4)
    train(model, sparsifier, optimizer, epochs=2)
    model_state, state, opt_state = copy.deepcopy((model.state_dict(), sparsifier.state_dict(), optimizer.state_dict()))
    train(model, sparsifier, optimizer, epochs=4, first_epoch=2)
    resumed, again, opt = setup(cfg, epochs=4, seed=1)
    resumed.load_state_dict(model_state)
    opt.load_state_dict(opt_state)
    again.load_state_dict(state)
    return (model, sparsifier, optimizer), (resumed, again, opt), state


def zeros_over(weights, keys):
    return sum(int((weights[k] == 0).sum()) for k in keys), sum(weights[k].numel() for k in keys)


# ---- STR ---------------------------------------------------------------------------------------
def test_str_forward_is_the_soft_threshold_of_the_raw_weight():
    model, sparsifier, _ = setup({"name": "str", "s_init": -3.0})
    assert isinstance(sparsifier, STR)
    layer = model.fc1
    raw = sparsifier.tensors.get("fc1.weight")
    assert raw is layer.parametrizations.weight.original and raw.requires_grad
    tau = torch.sigmoid(torch.tensor(-3.0))
    expected = torch.sign(raw) * torch.relu(raw.abs() - tau)
    assert torch.equal(layer.weight, expected)
    assert torch.equal(sparsifier.effective_weights()["fc1.weight"], expected.detach())
    x = torch.randn(2, 128)
    assert torch.allclose(layer(x), x @ expected.T + layer.bias)
    # every conv and linear has a threshold under distribution=global (first conv included)
    assert set(sparsifier.thresholds) == {"conv1.weight", "conv2.weight", "fc1.weight", "fc2.weight"}
    assert torch.equal(sparsifier.masks()["fc1.weight"], raw.abs() > tau)


def test_str_thresholds_are_weight_decayed_and_excluded_from_ham():
    model, sparsifier, optimizer = setup({"name": "str", "s_init": -4.0, "threshold_weight_decay": 0.1,
                                          "final_projection": False})
    (group,) = sparsifier.parameter_groups()
    thresholds = [t.s for t in sparsifier.thresholds.values()]
    assert group["ham"] is False and group["weight_decay"] == 0.1
    assert len(group["params"]) == 4 and all(p is s for p, s in zip(group["params"], thresholds))
    assert all(p.dim() == 0 for p in group["params"])
    other = {id(p) for p in optimizer.param_groups[0]["params"]}
    assert not other & {id(s) for s in thresholds}
    train(model, sparsifier, optimizer, epochs=1)
    # s is trained (by the loss and its decay toward 0): every threshold moved up from sInit
    assert all(float(s.detach()) > -4.0 for s in thresholds)


def test_str_reports_target_and_achieved_sparsity():
    model, sparsifier, optimizer = setup({"name": "str", "sparsity": 0.9, "s_init": -3.0,
                                          "threshold_weight_decay": 0.05, "final_projection": False})
    train(model, sparsifier, optimizer, epochs=2)
    metrics, report = sparsifier.extra_metrics(), sparsity_report(sparsifier)
    zeros, total = zeros_over(sparsifier.effective_weights(), sparsifier.thresholds)
    assert 0 < zeros < total
    assert report["achieved_sparsity"] == pytest.approx(zeros / total, abs=1e-12)
    assert report["target_sparsity"] == pytest.approx(0.9, abs=2e-3)
    assert metrics["str_projected"] is False
    tau = [float(torch.sigmoid(t.s.detach())) for t in sparsifier.thresholds.values()]
    assert metrics["str_threshold_mean"] == pytest.approx(sum(tau) / len(tau))


@pytest.mark.parametrize("s_init, sparsity", [(-6.0, 0.8), (-1.0, 0.3)])  # less / more sparse than the target
def test_str_final_projection_hits_the_target_exactly_and_keeps_the_mask(s_init, sparsity):
    model, sparsifier, optimizer = setup({"name": "str", "sparsity": sparsity, "s_init": s_init,
                                          "projection_at": 0.5}, epochs=4)
    keys = list(sparsifier.thresholds)
    total = sum(sparsifier.tensors.get(k).numel() for k in keys)
    seen = {}

    def on_epoch(epoch):
        zeros, _ = zeros_over(sparsifier.effective_weights(), keys)
        seen[epoch] = (sparsifier.projected, zeros, [float(t.s.detach()) for t in sparsifier.thresholds.values()],
                       {k: m.clone() for k, m in sparsifier.masks().items()})

    train(model, sparsifier, optimizer, epochs=4, on_epoch=on_epoch)
    assert sparsifier.projection_epoch == 2
    assert [seen[e][0] for e in range(4)] == [False, True, True, True]
    pruned = {k: int((~m).sum()) for k, m in seen[1][3].items()}
    assert sum(pruned.values()) == round(sparsity * total)  # exactly the target's count of masked entries
    if s_init < -5:  # STR was less sparse than the target: the projection made exactly the target
        assert seen[1][1] == round(sparsity * total)
    for epoch in (2, 3):  # fine-tuning: same mask, frozen thresholds, masked entries still zero
        assert all(torch.equal(seen[epoch][3][k], seen[1][3][k]) for k in keys)
        assert seen[epoch][2] == seen[1][2]
    assert sparsifier.extra_metrics()["str_projected"] is True
    # after the projection the forward weight is the plain masked W
    for key in keys:
        assert torch.equal(sparsifier.effective_weights()[key], sparsifier.tensors.get(key).detach())


def test_str_state_dict_round_trip_resumes_the_projected_run():
    cfg = {"name": "str", "sparsity": 0.7, "s_init": -6.0, "projection_at": 0.5}
    model, sparsifier, optimizer = setup(cfg, epochs=4)
    train(model, sparsifier, optimizer, epochs=2)
    model_state, state, opt_state = copy.deepcopy((model.state_dict(), sparsifier.state_dict(), optimizer.state_dict()))
    train(model, sparsifier, optimizer, epochs=4, first_epoch=2)

    resumed, again, opt = setup(cfg, epochs=4, seed=1)  # different init: everything must come from the states
    resumed.load_state_dict(model_state)
    opt.load_state_dict(opt_state)
    again.load_state_dict(state)
    assert again.projected and all(t.projected for t in again.thresholds.values())
    train(resumed, again, opt, epochs=4, first_epoch=2)
    for key, weight in sparsifier.effective_weights().items():
        assert torch.allclose(again.effective_weights()[key], weight, atol=1e-6)
    assert all(torch.equal(again.masks()[k], m) for k, m in sparsifier.masks().items())


# ---- Sign-In ---------------------------------------------------------------------------------------
def test_rebalance_keeps_theta_and_sets_gamma_to_one():
    g = torch.Generator().manual_seed(0)
    m = torch.rand(1000, generator=g) * 3 + 0.05
    w = torch.randn(1000, generator=g) * 2
    w[:100] = 0.0
    theta = m * w
    rebalance_(m, w)
    assert torch.allclose(m * w, theta, rtol=1e-6, atol=0)
    assert torch.allclose(m * m - w * w, torch.ones(1000), atol=1e-5)
    assert torch.equal(w[:100], torch.zeros(100)) and torch.equal(m[:100], torch.ones(100))
    assert (m > 0).all()
    m0, w0 = balanced_factors(torch.tensor([0.0, 1.0, -2.0]))
    assert torch.allclose(m0, torch.tensor([1.0, math.sqrt((1 + math.sqrt(5)) / 2), math.sqrt((1 + math.sqrt(17)) / 2)]))


def test_signin_alone_is_random_pai_with_merged_weights():
    model, sparsifier, optimizer = setup({"name": "signin", "sparsity": 0.8}, epochs=3)
    assert isinstance(sparsifier, SignIn) and sparsifier.inner.name == "random"
    masks = {k: m.clone() for k, m in sparsifier.masks().items()}
    # every layer random selects is reparameterized; ERK leaves the smallest two dense on this tiny net
    assert set(sparsifier.factors) == {"conv1.weight", "conv2.weight", "fc1.weight", "fc2.weight"}
    assert set(masks) == {"conv2.weight", "fc1.weight"}
    for key, mask in masks.items():  # theta = m * w, masked entries at m = 1, w = 0
        m, w = sparsifier.factors[key]
        layer = sparsifier.layers[key.rsplit(".", 1)[0]]
        assert isinstance(layer.parametrizations.weight.original0, nn.Parameter)
        assert sparsifier.inner.tensors.get(key) is w and sparsifier.masked_tensors()[key] is w
        assert torch.equal(layer.weight, m * w)
        assert torch.equal(w[~masks[key]], torch.zeros(int((~masks[key]).sum())))
        assert torch.equal(m[~masks[key]], torch.ones(int((~masks[key]).sum())))
    counts = {k: int(m.sum()) for k, m in masks.items()}
    rebalance, rebalanced_at, current = sparsifier.rebalance, [], {"step": 0}

    def checked_rebalance():  # theta kept to one rounding, gamma = 1 exactly where masked, 1e-5 elsewhere
        before = {k: (m * w).detach().clone() for k, (m, w) in sparsifier.factors.items()}
        rebalance()
        for key, (m, w) in sparsifier.factors.items():
            assert torch.allclose(m * w, before[key], rtol=1e-6, atol=1e-12)
            assert torch.allclose(m * m - w * w, torch.ones_like(m), atol=1e-5)
        rebalanced_at.append(current["step"])

    sparsifier.rebalance = checked_rebalance

    def on_step(step):
        current["step"] = step + 1

    def on_epoch(epoch):
        assert sparsifier.rebalances == epoch + 1

    train(model, sparsifier, optimizer, epochs=3, on_step=on_step, on_epoch=on_epoch)
    assert rebalanced_at == [STEPS - 1, 2 * STEPS - 1, 3 * STEPS - 1]  # in the after_step of each epoch's last step
    assert {k: int(m.sum()) for k, m in sparsifier.masks().items()} == counts
    assert all(torch.equal(sparsifier.masks()[k], m) for k, m in masks.items())  # PaI: fixed mask
    assert sparsifier.extra_metrics()["signin_rebalances"] == 3
    assert sparsifier.extra_metrics()["signin_gamma_mean"] < 1.0  # weight decay shrank gamma during the epoch
    # sparsity on the merged weight, and a plain model evaluates identically from the merged state dict
    zeros, total = zeros_over(sparsifier.effective_weights(), masks)
    assert zeros == total - sum(counts.values())
    plain = TinyCNN()
    plain.load_state_dict(plain_state_dict(model))
    x, _ = make_data(seed=3, n=8)
    assert torch.allclose(plain(x), model(x), atol=1e-6)
    assert sum(p.numel() for p in model.parameters()) > sum(p.numel() for p in plain.parameters())


def test_signin_merge_turns_the_model_plain():
    model, sparsifier, optimizer = setup({"name": "signin", "sparsity": 0.5}, epochs=1)
    train(model, sparsifier, optimizer, epochs=1)
    x, _ = make_data(seed=4, n=4)
    expected = model(x)
    sparsifier.merge()
    assert not any(parametrize.is_parametrized(m) for m in model.modules())
    assert isinstance(model.fc1.weight, nn.Parameter)
    assert torch.allclose(model(x), expected, atol=1e-6)
    assert set(model.state_dict()) == set(TinyCNN().state_dict())


def test_signin_growth_scores_are_the_gradient_wrt_theta():
    model, sparsifier, _ = setup({"name": "signin", "sparsity": 0.8})
    x, y = make_data(n=16)
    nn.functional.cross_entropy(model(x), y).backward()
    plain = TinyCNN()
    plain.load_state_dict(plain_state_dict(model))
    nn.functional.cross_entropy(plain(x), y).backward()
    for key, mask in sparsifier.masks().items():
        grad_theta = plain.get_parameter(key).grad
        grad_w = sparsifier.inner.tensors.get(key).grad
        assert torch.allclose(grad_w[~mask], grad_theta[~mask], rtol=1e-5, atol=1e-7)  # m = 1 there
        m = sparsifier.factors[key][0]
        assert torch.allclose(grad_w, m.detach() * grad_theta, rtol=1e-5, atol=1e-7)


def test_signin_over_rigl_keeps_counts_and_changes_masks_on_updates():
    cfg = {"name": "signin", "inner": "rigl", "sparsity": 0.8,
           "inner_kwargs": {"update_interval": 4, "distribution": "uniform", "dense_first": False}}
    model, sparsifier, optimizer = setup(cfg, epochs=3)
    assert sparsifier.name == "rigl+signin" and sparsifier.inner.update_interval == 4
    counts = {k: int(m.sum()) for k, m in sparsifier.masks().items()}
    previous = {k: m.clone() for k, m in sparsifier.masks().items()}
    changed_on = []

    def on_step(step):
        current = sparsifier.masks()
        assert {k: int(m.sum()) for k, m in current.items()} == counts
        if any(not torch.equal(current[k], previous[k]) for k in counts):
            changed_on.append(step)
        for key, mask in current.items():  # regrown entries start balanced at theta = 0
            m, w = sparsifier.factors[key]
            assert torch.equal(m[~mask], torch.ones_like(m[~mask]))
            previous[key] = mask.clone()

    train(model, sparsifier, optimizer, epochs=3, on_step=on_step)
    assert changed_on and all(step % 4 == 0 for step in changed_on)


def test_signin_over_acdc_ends_compressed_at_the_target():
    cfg = {"name": "signin", "inner": "acdc", "sparsity": 0.75,
           "inner_kwargs": {"schedule_unit": "epochs", "dense_warmup": 1, "compressed_length": 1,
                            "decompressed_length": 1, "final_compressed_length": 1}}
    model, sparsifier, optimizer = setup(cfg, epochs=4)
    phases = []
    train(model, sparsifier, optimizer, epochs=4, on_epoch=lambda e: phases.append(sparsifier.inner.phase))
    assert phases[-1] == "compressed" and "decompressed" in phases
    keys = list(sparsifier.factors)
    zeros, total = zeros_over(sparsifier.effective_weights(), keys)
    assert zeros == round(0.75 * total)


def test_signin_forwards_shared_keys_and_rejects_reparameterizing_inner_methods():
    sparsifier = build_sparsifier({"name": "signin", "inner": {"name": "random", "sparsity": 0.5,
                                                               "distribution": "uniform"}, "sparsity": 0.7})
    assert sparsifier.inner.selection.sparsity == 0.7 and sparsifier.selection.sparsity == 0.7
    assert sparsifier.inner.selection.distribution == "uniform" and sparsifier.selection.dense_first is True
    for inner in ("str", "pilot", "signin"):
        with pytest.raises(ValueError, match="sparsifier.inner"):
            build_sparsifier({"name": "signin", "inner": inner})
    with pytest.raises(ValueError, match="rebalance_period"):
        build_sparsifier({"name": "signin", "rebalance_period": 0})


def test_signin_step_rebalancing_and_state_dict_round_trip():
    cfg = {"name": "signin", "sparsity": 0.6, "rebalance_period": 4, "rebalance_unit": "step"}
    (model, sparsifier, optimizer), (resumed, again, opt), state = interrupted_after_two_epochs(cfg)
    assert sparsifier.rebalances == 4 * STEPS // 4 and again.rebalances == 2 * STEPS // 4
    train(resumed, again, opt, epochs=4, first_epoch=2)
    assert again.rebalances == sparsifier.rebalances
    for key, weight in sparsifier.effective_weights().items():
        assert torch.allclose(again.effective_weights()[key], weight, atol=1e-6)


# ---- PILoT ---------------------------------------------------------------------------------------
def test_pilot_alpha_follows_the_documented_rule():
    model, sparsifier, optimizer = setup({"name": "pilot", "alpha_init": 1e-3, "delta": 2.0}, epochs=6)
    assert isinstance(sparsifier, PILoT)
    group = next(g for g in optimizer.param_groups if any(p is sparsifier.factors["fc1.weight"][0]
                                                          for p in g["params"]))
    assert len(group["params"]) == 2 * len(sparsifier.factors)
    assert sparsifier.l1_norm() > sparsifier.l1_target > 0
    expected = 1e-3
    # (train acc, in the first half?) -> up only when acc rose, L1 above target and first half
    # 6 epochs: epochs 0-2 are the first half; epoch 2 fell, epoch 3 rose but in the second half
    for epoch, acc, factor in [(0, 50.0, 2.0), (1, 60.0, 2.0), (2, 55.0, 0.5), (3, 70.0, 0.5)]:
        sparsifier.on_epoch_end(epoch, {"train_acc": acc})
        expected *= factor
        assert sparsifier.alpha == pytest.approx(expected)
        assert group["weight_decay"] == pytest.approx(expected)
    # L1 below its target: the decay goes down even when accuracy rose in the first half
    model, sparsifier, optimizer = setup({"name": "pilot", "alpha_init": 1e-3, "delta": 2.0,
                                          "l1_target_ratio": 2.0}, epochs=6)
    sparsifier.on_epoch_end(0, {"train_acc": 50.0})
    assert sparsifier.alpha == pytest.approx(5e-4)
    # the rails
    model, sparsifier, optimizer = setup({"name": "pilot", "alpha_init": 1e-3, "delta": 100.0,
                                          "alpha_max": 2e-3}, epochs=6)
    sparsifier.on_epoch_end(0, {"train_acc": 50.0})
    assert sparsifier.alpha == 2e-3 and sparsifier.extra_metrics()["pilot_alpha"] == 2e-3


def test_pilot_decay_shrinks_gamma_and_theta():
    model, sparsifier, optimizer = setup({"name": "pilot", "alpha_init": 5e-3, "alpha_max": 5e-3}, epochs=2,
                                         lr=0.1)
    # decay alone (a zero data gradient): gamma = m^2 - w^2 and |theta| both shrink
    m, w = sparsifier.factors["fc1.weight"]
    theta0, gamma0 = (m * w).detach().clone(), (m * m - w * w).detach().clone()
    for _ in range(5):
        optimizer.zero_grad()
        (0.0 * model(torch.zeros(1, 1, 8, 8)).sum()).backward()
        optimizer.step()
    assert ((m * m - w * w) < gamma0).all()
    assert ((m * w).abs() < theta0.abs() + 1e-12).all()


@pytest.mark.parametrize("prune_at", [1.0, 0.5])
def test_pilot_ends_at_exactly_the_target_sparsity(prune_at):
    model, sparsifier, optimizer = setup({"name": "pilot", "sparsity": 0.85, "prune_at": prune_at}, epochs=4)
    pruned_after = []
    train(model, sparsifier, optimizer, epochs=4, on_epoch=lambda e: pruned_after.append(sparsifier.pruned))
    assert pruned_after == ([False, False, False, True] if prune_at == 1.0 else [False, True, True, True])
    keys = list(sparsifier.factors)
    zeros, total = zeros_over(sparsifier.effective_weights(), keys)
    assert zeros == round(0.85 * total)
    assert sparsity_report(sparsifier)["achieved_sparsity"] == pytest.approx(zeros / total)
    assert sparsifier.extra_metrics()["pilot_pruned"] is True
    for key, mask in sparsifier.masks().items():
        m, w = sparsifier.factors[key]
        assert torch.equal(w[~mask], torch.zeros_like(w[~mask])) and torch.equal(m[~mask], torch.ones_like(m[~mask]))


def test_pilot_needs_its_own_optimizer_group_and_round_trips():
    model, sparsifier, _ = setup({"name": "pilot"}, epochs=2)
    with pytest.raises(ValueError, match="parameter_groups"):
        sparsifier.bind_optimizer(torch.optim.SGD(model.parameters(), lr=0.1))

    cfg = {"name": "pilot", "sparsity": 0.8, "prune_at": 0.5}
    (model, sparsifier, optimizer), (resumed, again, opt), state = interrupted_after_two_epochs(cfg)
    assert again.pruned and again.alpha == state["alpha"] and again.previous_acc == state["previous_acc"]
    assert [g["weight_decay"] for g in again.decay_groups()] == [state["alpha"]]
    train(resumed, again, opt, epochs=4, first_epoch=2)
    assert again.alpha == pytest.approx(sparsifier.alpha)
    for key, weight in sparsifier.effective_weights().items():
        assert torch.allclose(again.effective_weights()[key], weight, atol=1e-6)


def test_plain_state_dict_merges_every_reparameterization():
    for cfg in ({"name": "str", "s_init": -3.0}, {"name": "pilot"}):
        model, sparsifier, _ = setup(cfg)
        plain = TinyCNN()
        plain.load_state_dict(plain_state_dict(model))
        x, _ = make_data(seed=5, n=4)
        assert torch.allclose(plain(x), model(x), atol=1e-6)


# ---- configs ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("config, inner", [("signin", "random"), ("rigl_signin", "rigl"),
                                           ("acdc_signin", "acdc"), ("str", None), ("pilot", None)])
def test_configs_compose_and_build(config, inner):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(str(CONFIGS / "sparsifier"), version_base=None):
        cfg = compose(config, overrides=["sparsity=0.7"])
    sparsifier = build_sparsifier(cfg)
    assert sparsifier.selection.sparsity == 0.7
    if inner is not None:
        assert sparsifier.inner.name == inner and sparsifier.inner.selection.sparsity == 0.7
    torch.manual_seed(0)
    sparsifier.attach(TinyCNN(), TrainingContext(epochs=2, steps_per_epoch=STEPS))
