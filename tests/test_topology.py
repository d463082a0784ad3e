"""Topology metrics on hand-built masks, mask dumps, every sparsifier producing every metric in a short run,
and no host sync in a training step (engine + meters)."""

import json

import pytest
import torch
from torch import nn

from ham_bench.engine.step import train_step
from ham_bench.mask_dump import load_masks, save_masks
from ham_bench.metrics import build_meters
from ham_bench.metrics.masks import dump_masks, mask_state
from ham_bench.metrics.sign_flips import SignFlipCounter
from ham_bench.metrics.topology import TopologyMeter
from ham_bench.optim import HAM
from hook_loop import random_batches, run_epochs, sgd_for
from sparsifiers import build_sparsifier
from sparsifiers.base import TrainingContext
from sparsifiers.masked import MaskedSparsifier


class HandMasks(MaskedSparsifier):
    """Masks set by the test, on every layer."""

    name = "hand"

    def __init__(self):
        super().__init__(sparsity=0.5, distribution="uniform", dense_first=False)


def bits(*values):
    return torch.tensor(values, dtype=torch.bool)


def hand_setup():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 2, bias=False), nn.Linear(2, 2, bias=False))  # 8 + 4 weights
    sparsifier = HandMasks()
    sparsifier.attach(model, TrainingContext(epochs=1, steps_per_epoch=1))
    sparsifier.mask_by_name = {"0.weight": bits(1, 1, 0, 0, 1, 0, 0, 0).view(2, 4),
                               "1.weight": bits(1, 0, 0, 1).view(2, 2)}
    return model, sparsifier


def test_itop_churn_and_overlap_counted_by_hand():
    model, sparsifier = hand_setup()
    tracker = TopologyMeter(sparsifier)
    a = sparsifier.mask_by_name["0.weight"]
    a.copy_(bits(1, 0, 1, 0, 1, 0, 0, 0).view(2, 4))        # step 0, in place (RigL style): 2 changed
    tracker.update_after_step()
    kept = tracker.previous["1.weight"]
    tracker.update_after_step()                               # step 1: nothing changed
    assert tracker.previous["1.weight"] is kept               # unchanged masks are not even compared
    sparsifier.mask_by_name["1.weight"] = bits(0, 1, 0, 1).view(2, 2)   # step 2, a new tensor: 2 changed
    a.copy_(bits(0, 0, 1, 1, 1, 0, 0, 0).view(2, 4))        # and 2 more in layer 0
    tracker.update_after_step()
    report = tracker.epoch_report()
    assert report["mask_updates"] == 2
    assert report["mask_churn_per_layer"] == {"0.weight": 4, "1.weight": 2}
    assert report["mask_churn"] == 6 and report["mask_churn_fraction"] == 6 / 12
    # ever active: layer 0 {0,1,2,3,4} = 5 of 8, layer 1 {0,1,3} = 3 of 4
    assert report["itop_rate_per_layer"] == {"0.weight": 5 / 8, "1.weight": 3 / 4}
    assert report["itop_rate"] == 8 / 12
    # now & initial: layer 0 {4} of 3 active, layer 1 {3} of 2 active
    assert report["mask_overlap_initial_per_layer"] == {"0.weight": 1 / 3, "1.weight": 1 / 2}
    assert report["mask_overlap_initial"] == 2 / 5

    quiet = tracker.epoch_report()                            # a new epoch without changes
    assert (quiet["mask_updates"], quiet["mask_churn"], quiet["itop_rate"]) == (0, 0, 8 / 12)

    sparsifier.mask_by_name = {}                              # e.g. AC/DC decompresses: every weight active
    tracker.update_after_step()
    dense = tracker.epoch_report()
    assert dense["mask_churn_per_layer"] == {"0.weight": 8 - 3, "1.weight": 4 - 2}
    assert dense["itop_rate"] == 1.0
    assert dense["mask_overlap_initial"] == 5 / 12


def test_sign_agreement_reuses_the_flip_counters_initial_signs():
    model, sparsifier = hand_setup()
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, -2.0, 3.0, 0.0], [-1.0, 0.5, 0.0, 2.0]]))
        model[1].weight.copy_(torch.tensor([[1.0, 1.0], [-1.0, -1.0]]))
    counter = SignFlipCounter(sparsifier.effective_weights())
    assert torch.equal(counter.initial_signs("0.weight"),
                       torch.tensor([[1, -1, 1, 0], [-1, 1, 0, 1]], dtype=torch.int8))
    shared = TopologyMeter(sparsifier, counter)
    own = TopologyMeter(sparsifier)
    with torch.no_grad():
        # layer 0: nonzero at init and now at positions 0, 1, 2, 4, 7 (3 -> 0 at 2 is pruned, 0 -> 5 at 3 regrown)
        model[0].weight.copy_(torch.tensor([[2.0, 1.0, 0.0, 5.0], [-3.0, 0.5, 0.0, -2.0]]))
        model[1].weight.copy_(torch.tensor([[1.0, -1.0], [-1.0, -1.0]]))
    for tracker in (shared, own):
        report = tracker.epoch_report()
        # layer 0 active in both: 0 (+,+) 1 (-,+) 4 (-,-) 5 (+,+) 7 (+,-): 3 of 5 agree; layer 1: 3 of 4
        assert report["sign_agreement_init_per_layer"] == {"0.weight": 3 / 5, "1.weight": 3 / 4}
        assert report["sign_agreement_init"] == 6 / 9


def test_state_round_trip_and_mask_dump():
    model, sparsifier = hand_setup()
    tracker = TopologyMeter(sparsifier)
    sparsifier.mask_by_name["0.weight"].copy_(bits(0, 1, 1, 0, 1, 0, 0, 0).view(2, 4))
    tracker.update_after_step()
    clone = TopologyMeter(sparsifier)
    clone.load_state_dict(tracker.state_dict())
    assert clone.epoch_report() == tracker.epoch_report()


def test_mask_dump_is_packed_bits_and_round_trips(tmp_path):
    model, sparsifier = hand_setup()
    path = tmp_path / "masks" / "epoch_0001.npz"
    dump_masks(path, sparsifier, epoch=1)
    masks, meta = load_masks(path)
    assert meta == {"epoch": 1, "sparsifier": "hand"}
    assert all(torch.equal(masks[k], v) for k, v in mask_state(sparsifier).items())
    generator = torch.Generator().manual_seed(0)
    big = {"w": torch.rand(1000, 1000, generator=generator) < 0.1}
    size = save_masks(tmp_path / "big.npz", big)
    assert size < 1_000_000 / 8 + 1024  # at most a bit a weight (deflate shrinks a 10% mask further)
    assert torch.equal(load_masks(tmp_path / "big.npz")[0]["w"], big["w"])


# ---- every sparsifier, every metric, in a short run ----------------------------------------------------------
METHODS = {
    "dense": {"name": "dense"},
    "random": {"name": "random", "sparsity": 0.8},
    "acdc": {"name": "acdc", "sparsity": 0.8, "dense_warmup": 0.25, "compressed_length": 0.125,
             "decompressed_length": 0.125, "final_compressed_length": 0.25},
    "rigl": {"name": "rigl", "sparsity": 0.8, "update_interval": 3},
    "str": {"name": "str", "sparsity": 0.8, "s_init": -3.0, "projection_at": 0.5},
    "signin": {"name": "signin", "sparsity": 0.8},
    "rigl+signin": {"name": "signin", "inner": "rigl", "sparsity": 0.8, "inner_kwargs": {"update_interval": 3}},
    "pilot": {"name": "pilot", "sparsity": 0.8, "prune_at": 0.5},
    "snip": {"name": "snip", "sparsity": 0.8},
    "synflow": {"name": "synflow", "sparsity": 0.8, "rounds": 10},
    "gmp": {"name": "gmp", "sparsity": 0.8, "begin": 0.1, "end": 0.6, "update_every": 0.1},
    "imp": {"name": "imp", "sparsity": 0.8},
    "lrr": {"name": "lrr", "sparsity": 0.8},
    "set": {"name": "set", "sparsity": 0.8, "update_interval": 3},
    "mest": {"name": "mest", "sparsity": 0.8, "update_every": 0.15},
    "cs": {"name": "cs", "sparsity": 0.8},
    "spred": {"name": "spred", "sparsity": 0.8, "prune_at": 0.5},
    "nm": {"name": "nm"},
}
CONSTANT_COUNTS = ("random", "signin", "rigl", "rigl+signin", "snip", "synflow", "set", "nm", "cs")
DENSE_FIRST = ("acdc", "pilot", "gmp", "imp", "lrr", "cs", "spred")  # every weight active in a dense phase


def context(epochs, steps):
    """The trainer's context, data included (SNIP scores a batch, SynFlow reads the input shape)."""
    batches = random_batches(1, 16, (1, 8, 8), 10, seed=5)
    return TrainingContext(epochs=epochs, steps_per_epoch=steps, seed=0, input_shape=(1, 8, 8),
                           sample_batch=lambda: batches[0])
ROW_KEYS = {"itop_rate", "itop_rate_per_layer", "mask_updates", "mask_churn", "mask_churn_fraction",
            "mask_churn_per_layer", "mask_overlap_initial", "mask_overlap_initial_per_layer", "sign_agreement_init",
            "sign_agreement_init_per_layer", "train_flops_epoch", "train_flops_measured",
            "train_flops_measured_fraction_of_dense", "inference_flops", "inference_flops_fraction_of_dense"}


def small_cnn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 8, 3), nn.ReLU(), nn.Flatten(),
                         nn.Linear(128, 32), nn.ReLU(), nn.Linear(32, 10))


@pytest.mark.parametrize("method", list(METHODS))
def test_every_sparsifier_produces_every_metric(method):
    cfg = METHODS[method]
    epochs, steps = 4, 4
    model = small_cnn()
    sparsifier = build_sparsifier(cfg)
    sparsifier.attach(model, context(epochs, steps))
    optimizer = HAM(sgd_for(model, sparsifier), alpha=1.0, beta=0.0, implementation="foreach")
    sparsifier.bind_optimizer(optimizer)
    meters = build_meters(model, sparsifier, optimizer, input_shape=(1, 8, 8), batch_size=16, steps_per_epoch=steps)
    rows = []

    def on_step(step, record):
        for meter in meters:
            meter.on_step(record)

    def epoch_end(epoch):
        weights = sparsifier.effective_weights()
        row = {}
        for meter in meters:
            row.update(meter.epoch_report(epoch, weights))
        rows.append(json.loads(json.dumps(row)))  # JSON-serialisable, as metrics.jsonl needs

    run_epochs(model, sparsifier, optimizer, random_batches(steps, 16, (1, 8, 8), 10), epochs, on_step=on_step,
               on_epoch=epoch_end, train_acc=lambda epoch: 10.0 + epoch)
    assert ROW_KEYS <= set(rows[-1])
    last = rows[-1]
    masked = set(sparsifier.masked_keys)
    assert set(last["itop_rate_per_layer"]) == masked
    assert 0.0 < last["inference_flops_fraction_of_dense"] <= 1.0
    assert 0.0 < last["sign_agreement_init"] <= 1.0
    assert all(0.0 <= last["itop_rate_per_layer"][k] <= 1.0 for k in masked)
    assert sum(row["train_flops_epoch"] for row in rows) == last["train_flops_measured"]
    if method == "dense":
        assert last["itop_rate"] == 1.0 and last["train_flops_measured_fraction_of_dense"] > 1.0  # HAM's share
        return
    assert last["inference_flops_fraction_of_dense"] < 0.6  # ends sparse
    assert last["itop_rate"] >= 0.2
    if method in ("rigl", "rigl+signin"):
        assert sum(row["mask_updates"] for row in rows) >= 3 and last["itop_rate"] > 0.2
        assert sum(row["mask_churn"] for row in rows) > 0 and last["mask_overlap_initial"] < 1.0
    if method in ("random", "signin", "snip", "synflow"):
        assert last["itop_rate"] == pytest.approx(0.2, abs=0.01) and last["mask_overlap_initial"] == 1.0
        assert sum(row["mask_updates"] for row in rows) == 0
    if method in DENSE_FIRST:
        assert last["itop_rate"] == 1.0  # dense phases first: every weight was active
    if method in ("set", "mest", "nm", "gmp", "imp", "lrr", "cs", "spred"):
        assert sum(row["mask_churn"] for row in rows) > 0
    if method == "str":
        assert 0.25 < last["itop_rate"] < 1.0  # the initial threshold already cuts small weights
    if method in ("acdc", "pilot", "str"):
        assert sum(row["mask_churn"] for row in rows) > 0
    (flops,) = [meter for meter in meters if meter.name == "flops"]
    report = flops.summary()
    assert report["train_flops_measured"] == last["train_flops_measured"]
    if method in CONSTANT_COUNTS:  # constant counts (CS: dense search, then its fixed ticket): the two agree
        assert report["train_flops"] == report["train_flops_measured"]
    elif method == "acdc":  # by phase; compressed phases at the final mask's cost (global top-k may shift it)
        assert report["train_flops"] == pytest.approx(report["train_flops_measured"], rel=0.05)
    else:
        assert report["train_flops"] < report["train_flops_measured"]  # the density fell during the run


class HostSync(AssertionError):
    pass


def no_host_sync(monkeypatch):
    """Make every tensor -> Python conversion raise (what would stall a GPU step)."""
    def refuse(*args, **kwargs):
        raise HostSync("host sync in a per-step hook")

    for name in ("item", "tolist", "cpu", "numpy", "__bool__", "__int__", "__float__", "__index__"):
        monkeypatch.setattr(torch.Tensor, name, refuse)


@pytest.mark.parametrize("method", ["rigl", "str", "acdc", "rigl+signin", "pilot", "gmp", "imp", "lrr", "set",
                                    "mest", "cs", "spred", "nm"])
def test_a_training_step_and_the_meters_do_not_sync_with_the_host(monkeypatch, method):
    """The whole step (engine, sparsifier hooks, SGD) and every meter's on_step, with host syncs made to raise."""
    cfg = METHODS[method]
    model = small_cnn()
    sparsifier = build_sparsifier(cfg)
    sparsifier.attach(model, context(3, 4))
    optimizer = sgd_for(model, sparsifier)
    meters = build_meters(model, sparsifier, optimizer, input_shape=(1, 8, 8), batch_size=16, steps_per_epoch=4)
    (topology,) = [meter for meter in meters if meter.name == "topology"]
    data = random_batches(1, 16, (1, 8, 8), 10) * 4
    for epoch in range(3):
        sparsifier.on_epoch_start(epoch)
        for index, (x, y) in enumerate(data):
            with monkeypatch.context() as patch:
                no_host_sync(patch)
                with pytest.raises(HostSync):
                    bool(torch.ones(()) > 0)  # the guard is live
                record = train_step(model, optimizer, sparsifier, x, y, epoch * 4 + index)
                for meter in meters:
                    meter.on_step(record)
        sparsifier.on_epoch_end(epoch, {"train_acc": 10.0 + epoch})
    report = topology.epoch_report()
    assert report["mask_churn"] > 0  # masks did change inside the checked steps
