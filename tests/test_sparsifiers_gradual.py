"""GMP, IMP (weight rewinding) and LRR on tiny models: schedules, exact counts, rewinds of weights and LR position."""

import math

import pytest
import torch
from torch import nn

from ham_bench.engine.step import train_step
from ham_bench.schedule import build_scheduler, lr_factor
from hook_loop import random_batches, run_epochs, sgd_for
from sparsifiers import ConfigError, TrainingContext, build_sparsifier
from sparsifiers.base import sparsity_report
from sparsifiers.imp import pruning_rounds, round_keep
from sparsifiers.masks import nm_groups
from sparsifiers.rounds import Rounds


def tiny_model(seed=0, bn=False):
    torch.manual_seed(seed)
    norm = [nn.BatchNorm2d(8)] if bn else []
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 8, 3), *norm, nn.ReLU(), nn.Flatten(),
                         nn.Linear(128, 32), nn.ReLU(), nn.Linear(32, 12))


def attached(cfg, epochs=1, steps=1, model=None):
    sparsifier = build_sparsifier(cfg)
    sparsifier.attach(tiny_model() if model is None else model, TrainingContext(epochs=epochs, steps_per_epoch=steps))
    return sparsifier


def active(sparsifier):
    return {k: int(m.sum()) for k, m in sparsifier.masks().items()}


# ---- GMP -------------------------------------------------------------------------------------------
def test_gmp_cubic_schedule_values():
    gmp = attached({"name": "gmp", "sparsity": 0.9, "begin": 0.2, "end": 0.8}, epochs=10, steps=100)
    assert (gmp.t0, gmp.t_end) == (200, 800)
    assert gmp.sparsity_at(200) == 0.0 and gmp.sparsity_at(800) == pytest.approx(0.9)
    assert gmp.sparsity_at(500) == pytest.approx(0.9 + (0.0 - 0.9) / 8) == pytest.approx(0.7875)
    assert gmp.sparsity_at(0) == 0.0 and gmp.sparsity_at(999) == pytest.approx(0.9)


def test_gmp_gale_90_schedule_makes_19_updates_ending_at_exact_counts():
    total = 128_000
    gmp = attached({"name": "gmp", "sparsity": 0.9, "begin": 40_000 / total, "end": 76_000 / total,
                    "update_every": 2_000 / total}, epochs=1, steps=total)
    updates = [t for t in range(total) if gmp.is_update_step(t)]
    assert len(updates) == 19 and updates[0] == 40_000 and updates[-1] == 76_000
    previous = None
    for t in updates:
        gmp.prune(t)
        masks = gmp.masks()
        for key, mask in masks.items():  # the cubic formula, per layer, as exact counts; monotone masks
            assert int(mask.sum()) == round((1 - gmp.sparsity_at(t)) * mask.numel()) or t == 76_000
            if previous is not None:
                assert not (mask & ~previous[key]).any()
        previous = {k: m.clone() for k, m in masks.items()}
    assert active(gmp) == {k: round(0.1 * m.numel()) for k, m in gmp.masks().items()}
    assert set(active(gmp)) == {"0.weight", "2.weight", "5.weight", "7.weight"}  # "standard": all layers


def test_gmp_forces_the_last_update_at_t_end():
    total = 128_000  # Gale's (8k, 68k, 8k) at 0.95: the grid's last update is at 64k, s(64k) = 0.9497
    gmp = attached({"name": "gmp", "sparsity": 0.95, "begin": 8_000 / total, "end": 68_000 / total,
                    "update_every": 8_000 / total}, epochs=1, steps=total)
    assert gmp.sparsity_at(64_000) == pytest.approx(0.9497, abs=1e-4)
    assert gmp.is_update_step(64_000) and gmp.is_update_step(68_000) and not gmp.is_update_step(72_000)
    gmp.prune(68_000)
    assert sparsity_report(gmp)["achieved_sparsity"] == sparsity_report(gmp)["target_sparsity"]


def test_gmp_trains_to_the_exact_target_pruned_weights_keep_zero_state():
    model = tiny_model()
    gmp = build_sparsifier({"name": "gmp", "sparsity": 0.8, "begin": 0.1, "end": 0.7, "update_every": 0.1})
    gmp.attach(model, TrainingContext(epochs=4, steps_per_epoch=5))
    optimizer = sgd_for(model, gmp)
    previous, updates = {}, []

    def on_step(step, record):
        nonlocal previous
        for key, mask in gmp.masks().items():
            weight = gmp.tensors.get(key)
            assert int(weight[~mask].count_nonzero()) == 0
            assert int(optimizer.state[weight]["momentum_buffer"][~mask].count_nonzero()) == 0
            if key in previous:
                assert not (mask & ~previous[key]).any()
        if any(key not in previous or not torch.equal(m, previous[key]) for key, m in gmp.masks().items()):
            updates.append(step)
        previous = {k: m.clone() for k, m in gmp.masks().items()}

    run_epochs(model, gmp, optimizer, random_batches(5, 16, (1, 8, 8), 12), 4, on_step=on_step)
    assert updates == [2, 4, 6, 8, 10, 12, 14]  # t0 = 2, dT = 2, t_end = 14
    report = sparsity_report(gmp)
    assert report["achieved_sparsity"] == report["target_sparsity"] == pytest.approx(0.8, abs=1e-3)
    assert gmp.extra_metrics()["gmp_scheduled_sparsity"] == pytest.approx(0.8)


def test_gmp_nm_pattern_ends_2_of_4_along_the_input_dimension():
    model = tiny_model()
    gmp = build_sparsifier({"name": "gmp", "pattern": "nm", "n": 2, "m": 4, "begin": 0.0, "end": 0.5,
                            "update_every": 0.1})
    assert gmp.selection.sparsity == 0.5
    gmp.attach(model, TrainingContext(epochs=2, steps_per_epoch=5))
    optimizer = sgd_for(model, gmp)
    per_group = []
    run_epochs(model, gmp, optimizer, random_batches(5, 16, (1, 8, 8), 12), 2,
               on_step=lambda step, record: per_group.append(
                   int(nm_groups(gmp.masks()["2.weight"], 4).sum(1).max()) if gmp.masks() else 4))
    assert per_group[0] == 4 and per_group[-1] == 2 and 3 in per_group  # 4 -> 3 -> 2 kept per group
    assert set(gmp.masks()) == {"2.weight", "5.weight", "7.weight"}  # the first conv (I = 1) stays dense
    for key in gmp.masks():
        groups = nm_groups(gmp.effective_weights()[key] != 0, 4)
        assert torch.equal(groups.sum(1), torch.full((groups.shape[0],), 2))
    assert gmp.extra_metrics()["nm_valid"] == {"2.weight": True, "5.weight": True, "7.weight": True}
    report = sparsity_report(gmp)
    assert report["achieved_sparsity"] == report["target_sparsity"]


# ---- IMP / LRR ---------------------------------------------------------------------------------------
def test_imp_rounds_and_kept_counts():
    assert [pruning_rounds(s, 0.2) for s in (0.8, 0.9, 0.95)] == [8, 11, 14]
    n, final = 10_000, round(0.1 * 10_000)
    counts = [round_keep(r, 11, 0.2)(n, final, 0.1) for r in range(12)]
    expected = [n]
    for _ in range(10):
        expected.append(expected[-1] - math.ceil(0.2 * expected[-1]))
    assert counts == expected + [final] and counts[-2] > final  # the last round prunes a bit less than 20 %
    # the run-length statement: LRR at s = 0.9 with 160-epoch rounds takes 1920 epochs; IMP at k = 2 %: ~1885
    assert Rounds(1920, 12, 0.0, "lrr").length == 160
    assert Rounds(1885, 12, 0.02, "imp").length == 160


def test_imp_run_too_short_for_its_rounds_is_a_config_error():
    with pytest.raises(ConfigError, match=r"^sparsifier.sparsity=0.95 at sparsifier.prune_fraction=0.2 "
                                          r"\(14 prunings\) needs 15 rounds"):
        attached({"name": "imp", "sparsity": 0.95}, epochs=1, steps=10)


def train_with_schedule(sparsifier, model, epochs, steps, watch):
    """train_step + the run's LambdaLR driven by schedule_position; ``watch(step, lr_next)`` after each step."""
    sparsifier.attach(model, TrainingContext(epochs=epochs, steps_per_epoch=steps))
    optimizer = sgd_for(model, sparsifier, lr=0.1, weight_decay=5e-4)
    cfg = {"name": "cosine", "warmup_epochs": 0}
    scheduler = build_scheduler(optimizer, cfg, steps, epochs * steps, position=sparsifier.schedule_position)
    data = random_batches(steps, 16, (1, 8, 8), 12)
    for step in range(epochs * steps):
        watch(step, "before", optimizer)
        train_step(model, optimizer, sparsifier, *data[step % steps], step)
        scheduler.step()
        watch(step, "after", optimizer)
    return cfg


def test_imp_rewinds_weights_buffers_and_lr_position_at_round_boundaries():
    model = tiny_model(bn=True)
    imp = build_sparsifier({"name": "imp", "sparsity": 0.5, "rewind_fraction": 0.25})  # R = 4: 5 rounds
    seen = {"theta_k": None, "boundaries": []}

    def watch(step, when, optimizer):
        rounds = imp.rounds
        if when == "before" and step == rounds.rewind:  # the weights at the start of step k = theta_k
            seen["theta_k"] = {k: v.clone() for k, v in model.state_dict().items()}
        if when == "after" and rounds.ends_round(step):
            assert imp.rewinds_weights(step)
            seen["boundaries"].append(step)
            state = model.state_dict()
            for key, value in seen["theta_k"].items():
                mask = imp.masks().get(key)
                expected = value if mask is None else value * mask
                assert torch.equal(state[key], expected), key  # bitwise, BN buffers included
            assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * lr_factor(
                rounds.rewind * rounds.total // rounds.length, {"name": "cosine"}, 5, rounds.total))
            assert not optimizer.state  # round_optimizer_state: reset
        elif when == "after":
            assert not imp.rewinds_weights(step)

    train_with_schedule(imp, model, 8, 5, watch)
    assert imp.rounds.rewind == 2 and imp.rounds.length == 10  # 40 = L (1 + 4 (1 - 0.25))
    assert seen["boundaries"] == [s - 1 for s in imp.rounds.starts[1:]]
    assert imp.extra_metrics()["imp_round"] == 4 and imp.extra_metrics()["imp_rounds"] == 5
    report = sparsity_report(imp)
    assert report["achieved_sparsity"] == report["target_sparsity"] == pytest.approx(0.5, abs=1e-3)


def test_lrr_keeps_the_weights_and_rewinds_only_the_lr_to_the_peak():
    model = tiny_model()
    lrr = build_sparsifier({"name": "lrr", "sparsity": 0.5})
    seen = {"boundaries": 0}

    def watch(step, when, optimizer):
        if when == "before":
            return
        if lrr.rounds.ends_round(step):
            seen["boundaries"] += 1
            assert not lrr.rewinds_weights(step)
            assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1)  # k = 0, no warm-up: the peak LR
            for key, mask in lrr.masks().items():  # unmasked weights are the trained ones
                weight = lrr.tensors.get(key)
                assert torch.equal(weight[mask], seen["trained"][key][mask])

    original_after_step = lrr.after_step

    def after_step(step):  # capture the weights the optimizer left, right before the boundary prunes
        seen["trained"] = {k: lrr.tensors.get(k).detach().clone() for k in lrr.masked_keys}
        original_after_step(step)

    lrr.after_step = after_step
    train_with_schedule(lrr, model, 5, 5, watch)
    assert seen["boundaries"] == 4
    assert lrr.rounds.rewind == 0 and lrr.rounds.starts == [0, 5, 10, 15, 20]
    assert sparsity_report(lrr)["achieved_sparsity"] == sparsity_report(lrr)["target_sparsity"]
