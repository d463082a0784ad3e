"""FLOPs accounting (ham_bench.metrics: flop_counts and the FlopsMeter) by hand and on short real runs."""

import pytest
import torch
from torch import nn

from ham_bench.engine.step import StepRecord
from ham_bench.metrics.flop_counts import (HAM_FLOPS_PER_WEIGHT, inference_flops, layer_positions,
                                           rigl_average_step_flops, training_step_flops)
from ham_bench.metrics.flops import FlopsMeter, ham_covered_numel
from ham_bench.optim import HAM, SAM
from hook_loop import random_batches, run_epochs, sgd_for
from sparsifiers import build_sparsifier
from sparsifiers.base import Sparsifier, TrainingContext


def two_layer(seed=0):
    """conv 1->2, 3x3, on 1x5x5 (output 2x3x3: each weight used 9 times) -> linear 18->4 (each weight once)."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(18, 4))


INPUT = (1, 5, 5)
F_DENSE = 2 * (9 * 18 + 1 * 72)  # 468


def attached(cfg, model, epochs=2, steps_per_epoch=5):
    sparsifier = build_sparsifier(cfg) if cfg is not None else Sparsifier()
    sparsifier.attach(model, TrainingContext(epochs=epochs, steps_per_epoch=steps_per_epoch, seed=0))
    return sparsifier


def optimizer_for(model, sparsifier, sam=False, ham=False):
    """SGD momentum (the sparsifier's groups split out), optionally inside SAM and/or HAM, bound to it."""
    if sam:
        optimizer = SAM(model.parameters(), torch.optim.SGD, lr=0.05, momentum=0.9)
    else:
        optimizer = sgd_for(model, sparsifier)
    if ham:
        optimizer = HAM(optimizer, alpha=1.0, beta=0.0, implementation="foreach")
    sparsifier.bind_optimizer(optimizer)
    return optimizer


def run(model, sparsifier, optimizer, meter, epochs, steps_per_epoch, shape=INPUT, classes=4, batch=8, before=None,
        after=None):
    """Train through the step engine, feeding the meter every record; returns the meter's epoch reports."""
    rows = []

    def on_step(step, record):
        meter.on_step(record)
        if after is not None:
            after(step)

    run_epochs(model, sparsifier, optimizer, random_batches(steps_per_epoch, batch, shape, classes), epochs,
               before=before, on_step=on_step, on_epoch=lambda epoch: rows.append(meter.epoch_report(epoch)))
    return rows


def records(sparsifier, steps, passes=1, stepped=True, dense_gradient=False):
    """Step records as the engine would make them for a fixed-mask method."""
    return [StepRecord(step=s, loss=torch.zeros(()), logits=torch.zeros(1, 1), stepped=stepped, passes=passes,
                       dense_gradient=dense_gradient, masks=sparsifier.masks()) for s in range(steps)]


def test_positions_and_inference_flops_counted_by_hand():
    model = two_layer()
    sparsifier = attached(None, model)
    assert layer_positions(model, INPUT) == {"0.weight": 9, "3.weight": 1}
    with torch.no_grad():
        model[0].weight.view(-1)[:6] = 0.0   # 12 of 18 left
        model[3].weight.view(-1)[:54] = 0.0  # 18 of 72 left
    report = inference_flops(model, sparsifier, INPUT)
    assert report["inference_flops_dense"] == F_DENSE == 468
    assert report["inference_flops"] == 2 * (9 * 12 + 1 * 18) == 252
    assert report["inference_flops_fraction_of_dense"] == pytest.approx(252 / 468)
    assert report["inference_flops_per_layer"]["0.weight"] == {"flops": 216, "flops_dense": 324,
                                                               "density": pytest.approx(12 / 18)}
    assert report["inference_flops_per_layer"]["3.weight"]["density"] == pytest.approx(18 / 72)


class Tokens(nn.Module):
    """A strided grouped conv with batch norm, then a linear applied twice to 16 tokens."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, stride=2, padding=1, groups=2)
        self.norm = nn.BatchNorm2d(4)
        self.mix = nn.Linear(4, 4)

    def forward(self, x):
        tokens = self.norm(self.conv(x)).flatten(2).transpose(1, 2)  # (B, 16, 4)
        return self.mix(self.mix(tokens))


def test_positions_of_strided_grouped_conv_and_reused_token_linear_leave_the_model_untouched():
    model = Tokens().train()
    before = model.norm.running_mean.clone()
    assert layer_positions(model, (4, 8, 8)) == {"conv.weight": 16, "mix.weight": 2 * 16}
    assert model.training and model.norm.training
    assert torch.equal(model.norm.running_mean, before)
    report = inference_flops(model, None, (4, 8, 8))
    # conv: 4 out x (4 / 2 groups) x 9 x 16 positions = 1152 MACs; linear: 16 weights x 32 uses = 512 MACs
    assert report["inference_flops_dense"] == 2 * (1152 + 512)


def test_training_step_costs_by_hand():
    f_s, f_d, batch = 252, 468, 4
    assert training_step_flops(f_s, f_d, batch) == 4 * 3 * 252
    assert training_step_flops(f_s, f_d, batch, passes=2) == 2 * 4 * 3 * 252
    assert training_step_flops(f_s, f_d, batch, dense_gradient=True) == 4 * (2 * 252 + 468)
    assert training_step_flops(f_s, f_d, batch, passes=2, dense_gradient=True) == 4 * (2 * 252 + 468 + 3 * 252)
    assert training_step_flops(f_s, f_d, batch, passes=2, dense_gradient=True, optimizer_step=False,
                               ham_weights=90) == 4 * (2 * 252 + 468)
    assert training_step_flops(f_s, f_d, batch, ham_weights=90) == 4 * 3 * 252 + 9 * 90
    # RigL's average: dT ordinary steps then one update
    assert rigl_average_step_flops(100, 1000, 3) == (3 * 100 * 3 + 2 * 100 + 1000) / 4


def test_ham_reports_the_weights_it_covers():
    """HAM's own count, with its coverage rules: ndim >= min_ndim, param_filter, ham: False and alpha = beta = 0."""
    model = two_layer()
    conv, linear = model[0].weight, model[3].weight
    base = lambda groups: torch.optim.SGD(groups, lr=0.1)  # noqa: E731
    assert ham_covered_numel(HAM(base(model.parameters()))) == 18 + 72
    assert ham_covered_numel(base(model.parameters())) == 0
    assert ham_covered_numel(HAM(base(model.parameters()), min_ndim=3)) == 18
    assert ham_covered_numel(HAM(base(model.parameters()), param_filter=lambda p: p is linear)) == 72
    rest = [p for p in model.parameters() if p is not linear]
    assert ham_covered_numel(HAM(base([{"params": rest}, {"params": [linear], "ham": False}]))) == 18
    assert ham_covered_numel(HAM(base([{"params": rest}, {"params": [linear], "alpha": 0.0, "beta": 0.0}]))) == 18


def test_static_sparse_standard_accounting_with_sam_and_ham_by_hand():
    model = two_layer()
    sparsifier = attached({"name": "random", "sparsity": 0.5, "distribution": "uniform", "dense_first": False},
                          model)
    f_s = 2 * (9 * 9 + 1 * 36)  # exact counts: 9 of 18, 36 of 72
    assert f_s == 234

    def summary(passes=1, ham_weights=0, sparsifier=sparsifier, model=model):
        meter = FlopsMeter(model, sparsifier, INPUT, batch_size=4, ham_weights=ham_weights)
        for record in records(sparsifier, 10, passes=passes):
            meter.on_step(record)
        return meter.summary()

    plain = summary()
    assert plain["inference_flops"] == 234
    assert plain["train_flops"] == 10 * 4 * 3 * 234 == 28080 == plain["train_flops_measured"]
    assert plain["train_flops_per_step"] == 2808
    assert plain["train_flops_dense_reference"] == 10 * 4 * 3 * 468
    assert plain["train_flops_fraction_of_dense"] == 0.5
    assert plain["train_flops_ham"] == 0
    sam = summary(passes=2)
    assert sam["train_flops"] == 2 * 28080 and sam["train_flops_fraction_of_dense"] == 1.0
    ham = summary(ham_weights=90)
    assert ham["train_flops_ham"] == 10 * HAM_FLOPS_PER_WEIGHT * 90 == 8100
    assert ham["train_flops"] == 28080 + 8100
    dense_model = two_layer()
    dense = summary(sparsifier=attached(None, dense_model), model=dense_model)
    assert dense["train_flops"] == 10 * 4 * 3 * 468 and dense["train_flops_fraction_of_dense"] == 1.0


def test_meter_matches_standard_accounting_for_a_fixed_mask():
    model = two_layer()
    sparsifier = attached({"name": "random", "sparsity": 0.5, "distribution": "uniform", "dense_first": False},
                          model, epochs=2, steps_per_epoch=5)
    optimizer = optimizer_for(model, sparsifier, sam=True, ham=True)
    meter = FlopsMeter(model, sparsifier, INPUT, batch_size=8, ham_weights=ham_covered_numel(optimizer))
    assert meter.ham_weights == 90
    rows = run(model, sparsifier, optimizer, meter, 2, 5)
    per_step = 8 * 2 * 3 * 234 + 9 * 90
    assert [row["train_flops_epoch"] for row in rows] == [5 * per_step, 5 * per_step]
    assert rows[-1]["train_flops_measured"] == 10 * per_step
    assert rows[-1]["train_flops_measured_fraction_of_dense"] == pytest.approx(per_step / (8 * 3 * 468))
    assert rows[-1]["inference_flops"] == 234
    report = meter.summary()
    assert report["train_flops"] == report["train_flops_measured"] == 10 * per_step
    clone = FlopsMeter(model, sparsifier, INPUT, batch_size=8, ham_weights=90)
    clone.load_state_dict(meter.state_dict())
    assert clone.summary() == meter.summary()


def mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))


def direct_count(sparsifier, batch, passes=1, ham_weights=0, f_dense=2 * (512 + 128)):
    """Walk a real run: before each forward count the active weights; an update shows in ``updates_done``.

    Costs per step as the accounting defines them: ordinary steps batch * passes * 3 f (+ HAM), update
    steps (RigL skips the optimizer step: no second SAM pass, no HAM) batch * (2 f + f_D).
    """
    costs, forwards = [], []
    state = {"updates": sparsifier.updates_done}

    def before(step):
        masks = sparsifier.masks()
        forwards.append(2 * sum(int(masks[k].sum()) if k in masks else w.numel()
                                for k, w in sparsifier.effective_weights().items()))

    def after(step):
        updated = sparsifier.updates_done > state["updates"]
        state["updates"] = sparsifier.updates_done
        f = forwards[-1]
        costs.append(batch * (2 * f + f_dense) if updated else batch * passes * 3 * f + 9 * ham_weights)

    return before, after, costs, forwards


def test_rigl_paper_formula_equals_a_direct_count_over_a_real_run():
    # dT = 3 ordinary steps, then one update, all through training: the paper's setting
    model = mlp()
    sparsifier = attached({"name": "rigl", "sparsity": 0.5, "distribution": "uniform", "dense_first": False,
                           "update_interval": 4, "first_update_step": 3, "update_end": 1.0,
                           "drop_fraction": 0.3, "drop_fraction_schedule": "constant"},
                          model, epochs=3, steps_per_epoch=8)
    initial = {k: m.clone() for k, m in sparsifier.masks().items()}
    optimizer = optimizer_for(model, sparsifier)
    meter = FlopsMeter(model, sparsifier, (16,), batch_size=8)
    before, after, costs, forwards = direct_count(sparsifier, batch=8)
    run(model, sparsifier, optimizer, meter, 3, 8, shape=(16,), before=before, after=after)
    assert sparsifier.updates_done == 6  # steps 3, 7, ..., 23
    assert any(not torch.equal(initial[k], m) for k, m in sparsifier.masks().items())  # the masks moved
    f_s, f_d = 2 * (256 + 64), 2 * (512 + 128)
    assert set(forwards) == {f_s}  # RigL keeps per-layer counts
    direct = sum(costs)
    assert direct / (24 * 8) == rigl_average_step_flops(f_s, f_d, 3) == 2080
    report = meter.summary()
    assert report["train_flops_measured"] == report["train_flops"] == direct
    assert (meter.counts["dense"], meter.counts["sparse"], meter.counts["dense_gradient"]) == (0, 18, 6)


def test_rigl_default_schedule_with_sam_and_ham_matches_the_direct_count():
    model = mlp(1)
    sparsifier = attached({"name": "rigl", "sparsity": 0.75, "distribution": "uniform", "dense_first": False,
                           "update_interval": 5}, model, epochs=4, steps_per_epoch=6)
    optimizer = optimizer_for(model, sparsifier, sam=True, ham=True)
    meter = FlopsMeter(model, sparsifier, (16,), batch_size=8, ham_weights=ham_covered_numel(optimizer))
    before, after, costs, forwards = direct_count(sparsifier, batch=8, passes=2, ham_weights=640)
    run(model, sparsifier, optimizer, meter, 4, 6, shape=(16,), before=before, after=after)
    updates = sparsifier.updates_done
    assert updates == 3  # steps 5, 10, 15 (T_end = 18)
    f_s = 2 * (128 + 32)
    assert set(forwards) == {f_s}
    # SAM doubles the ordinary steps; skipped update steps run one pass and no HAM
    expected = (24 - updates) * (8 * 2 * 3 * f_s + 9 * 640) + updates * 8 * (2 * f_s + 2 * 640)
    assert sum(costs) == expected
    report = meter.summary()
    assert report["train_flops_measured"] == report["train_flops"] == expected
    assert report["train_flops_ham"] == 21 * 9 * 640


def test_acdc_by_phase_standard_and_measured():
    model = two_layer()
    cfg = {"name": "acdc", "sparsity": 0.75, "dense_warmup": 0.2, "compressed_length": 0.15,
           "decompressed_length": 0.15, "final_compressed_length": 0.25}
    sparsifier = attached(cfg, model, epochs=4, steps_per_epoch=5)
    optimizer = optimizer_for(model, sparsifier)
    meter = FlopsMeter(model, sparsifier, INPUT, batch_size=8)
    phases, forwards = [], []

    def before(step):
        phases.append(sparsifier.phase)
        masks = sparsifier.masks()
        active = {k: int(masks[k].sum()) if k in masks else w.numel()
                  for k, w in sparsifier.effective_weights().items()}
        forwards.append(2 * (9 * active["0.weight"] + 1 * active["3.weight"]))

    run(model, sparsifier, optimizer, meter, 4, 5, before=before)
    # warm-up 4 steps, one cycle (compressed 3, decompressed 3), the rest decompressed (5), final 5
    assert phases == ["dense"] * 4 + ["compressed"] * 3 + ["decompressed"] * 8 + ["compressed"] * 5
    assert all(f == F_DENSE for f, p in zip(forwards, phases) if p != "compressed")
    assert all(f < F_DENSE for f, p in zip(forwards, phases) if p == "compressed")
    report = meter.summary()
    assert report["train_flops_measured"] == sum(8 * 3 * f for f in forwards)
    assert (meter.counts["dense"], meter.counts["sparse"], meter.counts["dense_gradient"]) == (12, 8, 0)
    f_s = forwards[-1]  # the final phase's mask
    assert report["train_flops"] == 8 * 3 * (12 * F_DENSE + 8 * f_s)
    assert 0.25 < report["train_flops_fraction_of_dense"] < 1.0
