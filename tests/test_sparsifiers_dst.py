"""SET and MEST (dynamic sparse training on RigL's update path) on a tiny CNN, trained through the step engine."""

import pytest
import torch
from torch import nn

from ham_bench.testing import check_sparsifier
from hook_loop import random_batches, run_epochs, sgd_for
from sparsifiers import TrainingContext, build_sparsifier
from sparsifiers.base import sparsity_report


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 8, 3), nn.ReLU(), nn.Flatten(),
                         nn.Linear(128, 32), nn.ReLU(), nn.Linear(32, 10))


def setup(cfg, epochs=4, steps=5, seed=0):
    model = tiny_model(seed)
    sparsifier = build_sparsifier(cfg)
    sparsifier.attach(model, TrainingContext(epochs=epochs, steps_per_epoch=steps, seed=seed))
    optimizer = sgd_for(model, sparsifier, lr=0.1, weight_decay=5e-4)
    return model, sparsifier, optimizer


def train(model, sparsifier, optimizer, epochs, steps, on_step=None):
    run_epochs(model, sparsifier, optimizer, random_batches(steps, 16, (1, 8, 8), 10), epochs, on_step=on_step,
               train_acc=lambda epoch: 10.0)


def snapshot(sparsifier):
    return {k: m.clone() for k, m in sparsifier.masks().items()}


def expected_kept(old_mask, weight, n_keep):
    """The n_keep largest |w| among the active entries, computed apart (argsort, not the method's top-k)."""
    active = old_mask.flatten().nonzero().flatten()
    keep = active[weight.detach().abs().flatten()[active].argsort(descending=True)[:n_keep]]
    kept = torch.zeros(old_mask.numel(), dtype=torch.bool)
    kept[keep] = True
    return kept.view_as(old_mask)


# ---- SET ---------------------------------------------------------------------------------------------------
SET = {"name": "set", "sparsity": 0.8, "update_interval": 3, "update_end": 0.75}


def test_set_schedule_at_the_rigl_codebase_settings():
    sparsifier = build_sparsifier({"name": "set", "drop_fraction": 0.3, "update_interval": 100, "update_end": 0.8})
    sparsifier.attach(tiny_model(), TrainingContext(epochs=10, steps_per_epoch=100))
    assert [s for s in range(1000) if sparsifier.is_update_step(s)] == [100, 200, 300, 400, 500, 600, 700]
    assert sparsifier.drop_fraction_at(400) == pytest.approx(0.15)
    assert sparsifier.drop_fraction_at(800) == pytest.approx(0.0, abs=1e-12) and not sparsifier.is_update_step(800)
    assert not sparsifier.needs_dense_gradient(400) and not sparsifier.skips_optimizer_step(400)
    # the update at step 400 drops exactly floor(0.15 * n_active) of each layer, the smallest |w| among the active
    old = snapshot(sparsifier)
    weights = {k: sparsifier.tensors.get(k).detach().clone() for k in old}
    sparsifier.update_masks(400, {})
    for key, new in sparsifier.masks().items():
        n_active = int(old[key].sum())
        n_drop = int(0.15 * n_active)
        kept = expected_kept(old[key], weights[key], n_active - n_drop)
        grown = new & ~kept
        assert n_drop > 0 and int(new.sum()) == n_active
        assert torch.equal(new & kept, kept) and int(grown.sum()) == n_drop
        assert not (grown & kept).any()


def test_set_update_keeps_counts_grows_at_zero_with_fresh_state_and_runs_after_the_step():
    model, sparsifier, optimizer = setup(SET)
    counts = {k: int(m.sum()) for k, m in sparsifier.masks().items()}
    log = []
    previous = snapshot(sparsifier)

    def on_step(step, record):
        nonlocal previous
        current = snapshot(sparsifier)
        assert record.stepped and not record.dense_gradient  # no skip, no dense gradient
        assert {k: int(m.sum()) for k, m in current.items()} == counts
        changed = [k for k in current if not torch.equal(current[k], previous[k])]
        if changed:
            log.append(step)
            for key in changed:
                grown = current[key] & ~previous[key]
                weight = sparsifier.tensors.get(key)
                assert int(grown.sum()) > 0
                assert int(weight[grown].count_nonzero()) == 0  # new connections start at w = 0
                assert int(optimizer.state[weight]["momentum_buffer"][grown].count_nonzero()) == 0
                assert int(weight[~current[key]].count_nonzero()) == 0
        previous = current

    train(model, sparsifier, optimizer, 4, 5, on_step)
    assert log == [3, 6, 9, 12]  # T_end = 15 of 20 steps
    assert sparsifier.extra_metrics() == {"set_drop_fraction": 0.0, "set_updates": 4}


def test_set_growth_is_seeded_by_seed_and_step_not_the_global_rng():
    def grown_after_one_update(seed, global_seed):
        model, sparsifier, optimizer = setup({**SET, "seed": seed}, epochs=4, steps=5)
        before = snapshot(sparsifier)
        torch.manual_seed(global_seed)
        sparsifier.update_masks(3, {})
        return {k: m & ~before[k] for k, m in sparsifier.masks().items()}

    a, b, c = grown_after_one_update(1, 0), grown_after_one_update(1, 99), grown_after_one_update(2, 0)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_set_contract_checks_with_updates_inside_the_run():
    """The contract with updates every 2 steps: masked weights stay zero, round trip, exact resume (seeded growth).

    The achieved-sparsity check is left to the mask counts: a connection grown at w = 0 onto an input that is
    always zero (a dead ReLU of the contract's tiny CNN) never gets a gradient and stays exactly 0."""
    check_sparsifier({"name": "set", "sparsity": 0.9, "update_interval": 2}, check_target=False)
    model, sparsifier, optimizer = setup({"name": "set", "sparsity": 0.9, "update_interval": 2})
    train(model, sparsifier, optimizer, 4, 5)
    assert {k: int(m.sum()) for k, m in sparsifier.masks().items()} == \
        {k: c for k, c in sparsifier.target_counts().items() if k in sparsifier.masks()}


# ---- MEST --------------------------------------------------------------------------------------------------
MEST = {"name": "mest", "sparsity": 0.8, "update_every": 0.1, "stage_starts": [0.4, 0.7]}


def test_mest_schedule_scales_to_the_run_and_forces_a_last_stage_update():
    _, sparsifier, _ = setup(MEST, epochs=4, steps=5)  # 20 steps: every 2, last stage from step 14
    assert sorted(sparsifier.positions) == [2, 4, 6, 8, 10, 12, 14, 16, 18]
    assert [sparsifier.stage_at(p) for p in (0, 7, 8, 13, 14)] == [0, 0, 1, 1, 2]
    _, short, _ = setup({**MEST, "update_every": 0.5}, epochs=4, steps=5)
    assert sorted(short.positions) == [10, 14]  # the periodic one and the start of the last stage
    with pytest.raises(ValueError, match=r"^sparsifier.grow_offsets needs one offset per stage"):
        build_sparsifier({"name": "mest", "grow_offsets": [0.05, 0.02, 0.01]})


@pytest.mark.parametrize("offsets", [{"prune_offsets": [0.02, 0.01, 0.0], "grow_offsets": [0.0, 0.0, 0.0]},
                                     {"prune_offsets": [0.0, 0.0, 0.0], "grow_offsets": [0.05, 0.025, 0.0]}],
                         ids=["EM", "EM&S"])
def test_mest_counts_per_stage_pruned_inside_the_active_set_and_exact_target(offsets):
    cfg = {**MEST, **offsets}
    model, sparsifier, optimizer = setup(cfg, epochs=4, steps=5)
    densities = sparsifier.target_density_by_name
    assert set(sparsifier.masks()) == {"2.weight", "5.weight"}  # uniform: first conv and classifier dense

    def expect_counts(position):
        stage = sparsifier.stage_at(position)
        return {k: round((densities[k] + cfg["grow_offsets"][stage]) * m.numel())
                for k, m in sparsifier.masks().items()}

    assert {k: int(m.sum()) for k, m in sparsifier.masks().items()} == expect_counts(0)  # the update at step 0
    previous = snapshot(sparsifier)
    changes = []

    def on_step(step, record):
        nonlocal previous
        current = snapshot(sparsifier)
        if step + 1 in sparsifier.positions:
            assert {k: int(m.sum()) for k, m in current.items()} == expect_counts(step + 1)
            stage = sparsifier.stage_at(step + 1)
            for key, mask in current.items():  # pruning kept n_keep of the active; the rest was grown
                n_keep = round((densities[key] - cfg["prune_offsets"][stage]) * mask.numel())
                assert int((mask & previous[key]).sum()) >= n_keep
                assert int((mask & ~previous[key]).sum()) <= int(mask.sum()) - n_keep
        if any(not torch.equal(current[k], previous[k]) for k in current):
            changes.append(step)
        previous = current

    train(model, sparsifier, optimizer, 4, 5, on_step)
    assert changes and max(changes) <= 13  # last stage (from step 14): prune-to = grow-to = target, no changes after
    report = sparsity_report(sparsifier)
    assert report["achieved_sparsity"] == report["target_sparsity"] or cfg["grow_offsets"][0] == 0.0
    assert {k: int(m.sum()) for k, m in sparsifier.masks().items()} == \
        {k: round(densities[k] * m.numel()) for k, m in sparsifier.masks().items()}
    metrics = sparsifier.extra_metrics()
    assert metrics["mest_stage"] == 2 and metrics["mest_updates"] == 1 + len(sparsifier.positions)
    if cfg["grow_offsets"][0]:  # EM&S trains denser than its target between updates
        assert metrics["mest_train_density_mean"] > 0.2


def test_mest_prune_step_without_the_gradient_term_is_per_layer_magnitude_top_k():
    model, sparsifier, optimizer = setup({**MEST, "prune_offsets": [0.05, 0.0, 0.0], "grow_offsets": [0, 0, 0]})
    old = snapshot(sparsifier)
    weights = {k: sparsifier.tensors.get(k).detach().clone() for k in old}
    sparsifier.update_masks(2, {})
    for key, new in sparsifier.masks().items():
        n_keep = round((sparsifier.target_density_by_name[key] - 0.05) * new.numel())
        assert torch.equal(new & old[key] & expected_kept(old[key], weights[key], n_keep),
                           expected_kept(old[key], weights[key], n_keep))
        assert int((new & ~expected_kept(old[key], weights[key], n_keep)).sum()) == int(new.sum()) - n_keep
    # with lambda > 0 the score adds lambda * |g| of the step's sparse gradient
    model, sparsifier, optimizer = setup({**MEST, "gradient_weight": 10.0})
    key = "5.weight"
    weight = sparsifier.tensors.get(key)
    weight.grad = torch.randn_like(weight)
    expected = weight.detach().abs().flatten() + 10.0 * weight.grad.abs().flatten()
    assert torch.equal(sparsifier.drop_scores(key, weight), expected)
