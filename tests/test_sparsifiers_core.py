"""Random PaI, AC/DC, RigL and the registry on a tiny model, trained through the step engine."""

import importlib.util
import math
import shutil
import subprocess
import sys

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from group_configs import group_option
from hook_loop import run_epochs
from ham_bench.engine.step import train_step
from ham_bench.optim import SAM
from sparsifiers import available_sparsifiers, build_sparsifier
from sparsifiers.acdc import ACDCSparsifier
from sparsifiers.base import Sparsifier, TrainingContext, sparsity_report
from sparsifiers.distributions import erk_densities
from sparsifiers.rigl import RigLSparsifier

LAYERS = ["0.weight", "2.weight", "5.weight", "7.weight"]
SIZES = {"0.weight": 36, "2.weight": 288, "5.weight": 4096, "7.weight": 320}


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 8, 3), nn.ReLU(), nn.Flatten(),
                         nn.Linear(128, 32), nn.ReLU(), nn.Linear(32, 10))


def batches(count, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return [(torch.randn(16, 1, 8, 8, generator=generator), torch.randint(0, 10, (16,), generator=generator))
            for _ in range(count)]


def sgd(model, **kwargs):
    return torch.optim.SGD(model.parameters(), lr=kwargs.pop("lr", 0.1), momentum=kwargs.pop("momentum", 0.9),
                           weight_decay=kwargs.pop("weight_decay", 5e-4), **kwargs)


def setup(cfg, epochs=2, steps_per_epoch=5, seed=0, sam=False, **optimizer_kwargs):
    model = tiny_model(seed)
    sparsifier = build_sparsifier(cfg)
    sparsifier.attach(model, TrainingContext(epochs=epochs, steps_per_epoch=steps_per_epoch, seed=seed))
    if sam:
        optimizer = SAM(model.parameters(), torch.optim.SGD, lr=0.1, momentum=0.9, weight_decay=5e-4)
    else:
        optimizer = sgd(model, **optimizer_kwargs)
    sparsifier.bind_optimizer(optimizer)
    return model, sparsifier, optimizer


def train(model, sparsifier, optimizer, epochs, steps_per_epoch, on_step=None):
    """``on_step(step, stepped)`` is called after each step."""
    run_epochs(model, sparsifier, optimizer, batches(steps_per_epoch), epochs,
               on_step=(lambda step, record: on_step(step, record.stepped)) if on_step else None,
               train_acc=lambda epoch: 0.0)


def weights(model):
    return {f"{name}.weight": m.weight for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}


def momentum(optimizer, param):
    return optimizer.state[param]["momentum_buffer"]


def assert_masked_zero(model, sparsifier, optimizer=None):
    current = weights(model)
    for key, mask in sparsifier.masks().items():
        assert int(current[key][~mask].count_nonzero()) == 0, key
        if optimizer is not None and current[key] in optimizer.state:
            assert int(momentum(optimizer, current[key])[~mask].count_nonzero()) == 0, key


# ---- random PaI --------------------------------------------------------------------------
def test_random_uniform_exact_sparsity_and_masked_weights_stay_zero():
    model, sparsifier, optimizer = setup({"name": "random", "sparsity": 0.75, "distribution": "uniform",
                                          "dense_first": False})
    assert sorted(sparsifier.masks()) == LAYERS
    start = {k: m.clone() for k, m in sparsifier.masks().items()}
    for key, mask in start.items():
        assert mask.dtype == torch.bool and int(mask.sum()) == SIZES[key] // 4

    def check(step, ran):
        assert ran
        assert_masked_zero(model, sparsifier, optimizer)
        assert all(torch.equal(sparsifier.masks()[k], start[k]) for k in start)

    train(model, sparsifier, optimizer, 2, 5, check)
    report = sparsity_report(sparsifier)
    assert report["achieved_sparsity"] == report["target_sparsity"] == 0.75
    assert [row["nonzeros"] for row in report["layers"]] == [9, 72, 1024, 80]
    # the active weights did train
    assert any(float(momentum(optimizer, w).abs().sum()) > 0 for w in weights(model).values())


def test_random_erk_counts_seed_and_first_layer_convention():
    _, erk, _ = setup({"name": "random", "sparsity": 0.9})
    assert erk.selection.distribution == "erk" and erk.selection.dense_first is False
    shapes = {k: tuple(w.shape) for k, w in weights(tiny_model()).items()}
    expected = erk_densities(shapes, 0.9)
    assert erk.target_densities() == pytest.approx(expected)
    for key, mask in erk.masks().items():
        assert int(mask.sum()) == round(expected[key] * SIZES[key])
    _, same, _ = setup({"name": "random", "sparsity": 0.9})
    _, other, _ = setup({"name": "random", "sparsity": 0.9, "seed": 123})
    assert all(torch.equal(erk.masks()[k], same.masks()[k]) for k in erk.masks())
    assert not all(torch.equal(erk.masks()[k], other.masks()[k]) for k in erk.masks())
    _, uniform, _ = setup({"name": "random", "sparsity": 0.9, "distribution": "uniform"})
    assert uniform.selection.dense_first is True and "0.weight" not in uniform.masks()
    assert uniform.target_densities()["0.weight"] == 1.0


def test_masked_state_dict_round_trip():
    model, sparsifier, optimizer = setup({"name": "random", "sparsity": 0.8})
    train(model, sparsifier, optimizer, 1, 3)
    state = sparsifier.state_dict()
    _, fresh, _ = setup({"name": "random", "sparsity": 0.8, "seed": 99})
    fresh.load_state_dict(state)
    assert all(torch.equal(fresh.masks()[k], sparsifier.masks()[k]) for k in state["masks"])


# ---- RigL --------------------------------------------------------------------------------
RIGL = {"name": "rigl", "sparsity": 0.8, "update_interval": 3, "update_end": 0.75, "drop_fraction": 0.3}


def rigl_run(skip, epochs=4, steps_per_epoch=5, sam=False, **extra):
    model, sparsifier, optimizer = setup({**RIGL, "skip_step_on_update": skip, **extra}, epochs=epochs,
                                         steps_per_epoch=steps_per_epoch, sam=sam)
    counts = {k: int(m.sum()) for k, m in sparsifier.masks().items()}
    log = []
    previous = {k: m.clone() for k, m in sparsifier.masks().items()}

    def check(step, ran):
        nonlocal previous
        current = {k: m.clone() for k, m in sparsifier.masks().items()}
        changed = any(not torch.equal(current[k], previous[k]) for k in current)
        log.append((step, ran, changed))
        assert {k: int(m.sum()) for k, m in current.items()} == counts
        assert_masked_zero(model, sparsifier, optimizer)
        previous = current

    train(model, sparsifier, optimizer, epochs, steps_per_epoch, check)
    return sparsifier, log


def test_rigl_schedule_and_cosine_drop_fraction():
    _, sparsifier, _ = setup(RIGL, epochs=4, steps_per_epoch=5)
    assert sparsifier.end_step == 15
    assert [s for s in range(20) if sparsifier.is_update_step(s)] == [3, 6, 9, 12]
    assert sparsifier.drop_fraction_at(0) == pytest.approx(0.3)
    assert sparsifier.drop_fraction_at(7.5) == pytest.approx(0.15)
    assert sparsifier.drop_fraction_at(6) == pytest.approx(0.15 * (1 + math.cos(math.pi * 6 / 15)))
    constant = build_sparsifier({**RIGL, "drop_fraction_schedule": "constant"})
    constant.attach(tiny_model(), TrainingContext(epochs=4, steps_per_epoch=5))
    assert constant.drop_fraction_at(12) == 0.3


@pytest.mark.parametrize("skip", [True, False])
def test_rigl_counts_constant_masks_change_only_on_update_steps(skip):
    sparsifier, log = rigl_run(skip)
    update_steps = [3, 6, 9, 12]
    assert [step for step, _, changed in log if changed] == update_steps
    assert [step for step, ran, _ in log if not ran] == (update_steps if skip else [])
    assert sparsifier.updates_done == 4
    assert sparsifier.extra_metrics() == {"rigl_drop_fraction": 0.0, "rigl_updates": 4}


def test_rigl_under_sam_still_updates():
    _, log = rigl_run(True, sam=True)
    assert [step for step, _, changed in log if changed] == [3, 6, 9, 12]


def test_rigl_update_drops_smallest_grows_largest_dense_gradient_zero_init():
    model, sparsifier, optimizer = setup({**RIGL, "skip_step_on_update": True}, epochs=4, steps_per_epoch=5)
    data = batches(5)
    params = weights(model)
    sparsifier.on_epoch_start(0)
    for step in range(4):  # steps 0-2 normal, step 3 updates
        x, y = data[step]
        model.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()  # the gradient train_step will see, computed apart
        dense_grads = {k: params[k].grad.clone() for k in sparsifier.masks()}
        old_masks = {k: m.clone() for k, m in sparsifier.masks().items()}
        old_weights = {k: params[k].detach().clone() for k in sparsifier.masks()}
        old_momentum = {k: momentum(optimizer, params[k]).clone() for k in sparsifier.masks()} if step else None
        record = train_step(model, optimizer, sparsifier, x, y, step)
    assert not record.stepped and record.dense_gradient  # step 3 was an update step: no optimizer step
    fraction = sparsifier.drop_fraction_at(3)
    for key, new_mask in sparsifier.masks().items():
        old = old_masks[key].flatten()
        n_active = int(old.sum())
        n_drop = int(fraction * n_active)
        magnitude = old_weights[key].abs().flatten()
        active_idx = old.nonzero().flatten()
        kept = active_idx[magnitude[active_idx].argsort(descending=True)[:n_active - n_drop]]
        kept_mask = torch.zeros_like(old)
        kept_mask[kept] = True
        candidates = (~kept_mask).nonzero().flatten()
        grow = candidates[dense_grads[key].abs().flatten()[candidates].argsort(descending=True)[:n_drop]]
        expected = kept_mask.clone()
        expected[grow] = True
        assert n_drop > 0
        assert torch.equal(new_mask.flatten(), expected), key
        new_connections = new_mask & ~old_masks[key]
        survived = new_mask & old_masks[key]
        assert int(new_connections.sum()) > 0
        assert int(params[key][new_connections].count_nonzero()) == 0  # grown start at 0
        assert int(momentum(optimizer, params[key])[new_connections].count_nonzero()) == 0
        # skipped step: surviving weights and their momentum are untouched
        assert torch.equal(params[key].detach()[survived], old_weights[key][survived])
        assert torch.equal(momentum(optimizer, params[key])[survived], old_momentum[key][survived])


def test_rigl_without_skip_steps_with_masked_dense_gradient():
    model, sparsifier, optimizer = setup({**RIGL, "skip_step_on_update": False, "first_update_step": 0},
                                         epochs=4, steps_per_epoch=5)
    x, y = batches(1)[0]
    sparsifier.on_epoch_start(0)
    nn.functional.cross_entropy(model(x), y).backward()
    params = weights(model)
    dense = {k: params[k].grad.clone() for k in sparsifier.masks()}
    sparsifier.mask_gradients()
    assert sparsifier.needs_dense_gradient(0) and not sparsifier.skips_optimizer_step(0)
    sparsifier.before_step(0, dense_gradients={k: g.clone() for k, g in dense.items()})
    for key, mask in sparsifier.masks().items():
        assert torch.equal(params[key].grad, dense[key] * mask)


def test_rigl_all_reduces_scores_under_torch_distributed(tmp_path):
    import torch.distributed as dist

    plain, _ = rigl_run(True, epochs=2)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        reduced, _ = rigl_run(True, epochs=2)
    finally:
        dist.destroy_process_group()
    assert reduced.updates_done == plain.updates_done == 2  # steps 3 and 6 of 10 (T_end = 7)
    assert all(torch.equal(reduced.masks()[k], plain.masks()[k]) for k in plain.masks())


def test_rigl_state_dict_round_trip():
    sparsifier, _ = rigl_run(True, epochs=2)
    state = sparsifier.state_dict()
    _, fresh, _ = setup({**RIGL, "seed": 7}, epochs=2)
    fresh.load_state_dict(state)
    assert fresh.updates_done == sparsifier.updates_done
    assert all(torch.equal(fresh.masks()[k], sparsifier.masks()[k]) for k in state["masks"])


# ---- AC/DC -------------------------------------------------------------------------------
ACDC_EPOCHS = {"name": "acdc", "sparsity": 0.75, "schedule_unit": "epochs", "dense_warmup": 2,
               "compressed_length": 1, "decompressed_length": 1, "final_compressed_length": 2}


def test_acdc_phases_switch_at_configured_epochs_reset_momentum_and_end_compressed():
    epochs, steps = 8, 3
    model, sparsifier, optimizer = setup(ACDC_EPOCHS, epochs=epochs, steps_per_epoch=steps)
    assert sparsifier.phase_starts("epochs") == [(0.0, "dense"), (2.0, "compressed"), (3.0, "decompressed"),
                                                (4.0, "compressed"), (5.0, "decompressed"), (6.0, "compressed")]
    phases, resets = [], []
    params = list(model.parameters())
    previous_phase = sparsifier.phase

    def check(step, ran):
        nonlocal previous_phase
        if sparsifier.phase == "compressed":
            assert_masked_zero(model, sparsifier, optimizer)
            total = sum(int(m.numel()) for m in sparsifier.masks().values())
            assert sum(int(m.sum()) for m in sparsifier.masks().values()) == total // 4
        else:
            assert sparsifier.masks() == {}
        if previous_phase == "compressed" and sparsifier.phase == "decompressed":
            # decompression after this step: the optimizer is as if freshly created (biases too)
            resets.append(step)
            assert all(p not in optimizer.state for p in params)
        previous_phase = sparsifier.phase

    original_start = sparsifier.on_epoch_start

    def record(epoch):
        original_start(epoch)
        phases.append(sparsifier.phase)

    sparsifier.on_epoch_start = record
    train(model, sparsifier, optimizer, epochs, steps, check)
    assert phases == ["dense", "dense", "compressed", "decompressed", "compressed", "decompressed",
                      "compressed", "compressed"]
    assert resets == [3 * steps - 1, 5 * steps - 1]
    assert sparsifier.phase == "compressed"
    report = sparsity_report(sparsifier)
    assert report["achieved_sparsity"] == 0.75 and report["target_sparsity"] == 0.75
    assert sparsifier.extra_metrics() == {"acdc_phase": "compressed"}


def test_acdc_paper_schedules():
    imagenet = build_sparsifier(group_option("sparsifier", "acdc_imagenet"))
    imagenet.attach(tiny_model(), TrainingContext(epochs=100, steps_per_epoch=2))
    starts = imagenet.phase_starts("epochs")
    assert starts[0] == (0.0, "dense")
    assert [e for e, p in starts if p == "compressed"] == [10, 20, 30, 40, 50, 60, 70, 85]
    assert [e for e, p in starts if p == "decompressed"] == [15, 25, 35, 45, 55, 65, 75]
    cifar = build_sparsifier(group_option("sparsifier", "acdc_cifar"))
    cifar.attach(tiny_model(), TrainingContext(epochs=200, steps_per_epoch=2))
    starts = cifar.phase_starts("epochs")
    assert [e for e, p in starts if p == "compressed"] == [10, 50, 90, 130, 170]
    assert [e for e, p in starts if p == "decompressed"] == [30, 70, 110, 150]
    assert cifar.phase_at(399) == "compressed"
    # the default (fractions of the run) is the ImageNet schedule scaled to any length
    scaled = build_sparsifier(group_option("sparsifier", "acdc"))
    scaled.attach(tiny_model(), TrainingContext(epochs=100, steps_per_epoch=2))
    assert scaled.phase_starts("epochs") == starts_of(imagenet)


def starts_of(sparsifier):
    return sparsifier.phase_starts("epochs")


def test_acdc_global_magnitude_top_k_and_short_run_ends_compressed():
    model, sparsifier, optimizer = setup({"name": "acdc", "sparsity": 0.9}, epochs=1, steps_per_epoch=20)
    train(model, sparsifier, optimizer, 1, 20)
    assert sparsifier.phase == "compressed"
    masks = sparsifier.masks()
    total = sum(SIZES.values())
    assert sum(int(m.sum()) for m in masks.values()) == total - round(0.9 * total)
    report = sparsity_report(sparsifier)
    assert report["achieved_sparsity"] == report["target_sparsity"] == round(0.9 * total) / total


def test_acdc_schedule_that_does_not_fit_fails_clearly():
    sparsifier = build_sparsifier(ACDC_EPOCHS)
    with pytest.raises(ValueError, match="sparsifier.dense_warmup"):
        sparsifier.attach(tiny_model(), TrainingContext(epochs=3, steps_per_epoch=2))


def test_acdc_magnitude_selection_is_global():
    model, sparsifier, _ = setup({**ACDC_EPOCHS, "dense_warmup": 0}, epochs=8, steps_per_epoch=1)
    assert sparsifier.phase == "compressed"  # compressed from step 0
    kept, pruned = [], []
    original = tiny_model(0)
    for key, mask in sparsifier.masks().items():
        w = weights(original)[key].detach().abs()
        kept.append(w[mask])
        pruned.append(w[~mask])
    assert float(torch.cat(kept).min()) >= float(torch.cat(pruned).max())


def test_acdc_state_dict_keeps_phase():
    model, sparsifier, optimizer = setup(ACDC_EPOCHS, epochs=8, steps_per_epoch=2)
    train(model, sparsifier, optimizer, 2, 2)  # the last step enters epoch 2: compressed
    state = sparsifier.state_dict()
    assert state["phase"] == "compressed"
    _, fresh, _ = setup(ACDC_EPOCHS, epochs=8, steps_per_epoch=2)
    fresh.load_state_dict(state)
    assert fresh.phase == "compressed" and set(fresh.masks()) == set(sparsifier.masks())


# ---- registry ----------------------------------------------------------------------------
def test_registry_names_and_configs():
    names = available_sparsifiers()
    assert {"dense", "random", "acdc", "rigl"} <= set(names)
    assert type(build_sparsifier(None)) is Sparsifier
    for name, cls in [("dense", "Sparsifier"), ("random", "RandomSparsifier"), ("acdc", "ACDCSparsifier"),
                      ("acdc_imagenet", "ACDCSparsifier"), ("acdc_cifar", "ACDCSparsifier"),
                      ("rigl", "RigLSparsifier")]:
        built = build_sparsifier(group_option("sparsifier", name))
        assert type(built).__name__ == cls
    rigl = build_sparsifier(OmegaConf.create({"name": "rigl", "sparsity": 0.95, "update_interval": 50}))
    assert isinstance(rigl, RigLSparsifier) and rigl.selection.sparsity == 0.95 and rigl.update_interval == 50
    assert rigl.skip_step_on_update is True and rigl.selection.distribution == "erk"


def test_registry_errors_are_one_line_and_name_the_key():
    with pytest.raises(ValueError) as error:
        build_sparsifier({"name": "magic"})
    message = str(error.value)
    assert message.startswith("sparsifier.name must be one of [") and message.endswith("got 'magic'")
    assert "rigl" in message and "\n" not in message
    with pytest.raises(ValueError, match=r"^sparsifier.drop_fractoin is not a setting of sparsifier 'rigl'"):
        build_sparsifier({"name": "rigl", "drop_fractoin": 0.5})
    with pytest.raises(ValueError, match="sparsifier.distribution must be one of"):
        build_sparsifier({"name": "rigl", "distribution": "global"})
    with pytest.raises(ValueError, match="sparsifier=dense does not mask"):
        build_sparsifier({"name": "dense", "sparsity": 0.5})
    with pytest.raises(ValueError, match=r"^sparsifier._target_ 'nowhere.Nothing' cannot be imported"):
        build_sparsifier({"_target_": "nowhere.Nothing"})
    with pytest.raises(ValueError, match="sparsifier.bogus is not a setting"):
        build_sparsifier({"_target_": "sparsifiers.rigl.RigLSparsifier", "bogus": 1})


def test_registry_target_class_path():
    built = build_sparsifier(OmegaConf.create({"_target_": "sparsifiers.acdc.ACDCSparsifier", "name": "acdc",
                                               "sparsity": 0.8, "schedule_unit": "epochs", "dense_warmup": 1,
                                               "compressed_length": 1, "decompressed_length": 1,
                                               "final_compressed_length": 1}))
    assert isinstance(built, ACDCSparsifier) and built.selection.sparsity == 0.8
    with pytest.raises(ValueError, match="sparsifier.sparsity must be in"):
        build_sparsifier({"_target_": "sparsifiers.rigl.RigLSparsifier", "sparsity": 1.5})


def test_entry_point_plugin_installs_and_runs_without_editing_the_framework(tmp_path, monkeypatch):
    source = tmp_path / "src"
    shutil.copytree("tests/plugin_example", source, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    site = tmp_path / "site"
    # offline with the venv's setuptools; without one (Python >= 3.12 venvs), pip fetches it to build
    offline = ["--no-build-isolation", "--no-index"] if importlib.util.find_spec("setuptools") else []
    result = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", *offline, "--quiet",
                             "--disable-pip-version-check", "--target", str(site), str(source)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "magnitude_pai" not in available_sparsifiers()
    monkeypatch.syspath_prepend(str(site))
    assert "magnitude_pai" in available_sparsifiers()
    model, sparsifier, optimizer = setup({"name": "magnitude_pai", "sparsity": 0.75, "dense_first": False})
    assert type(sparsifier).__module__ == "ham_bench_example_plugin"
    original = weights(tiny_model(0))
    for key, mask in sparsifier.masks().items():  # the largest |w| of each layer were kept
        w = original[key].detach().abs()
        assert int(mask.sum()) == SIZES[key] // 4
        assert float(w[mask].min()) >= float(w[~mask].max())
    train(model, sparsifier, optimizer, 1, 3, lambda step, ran: assert_masked_zero(model, sparsifier, optimizer))
    assert sparsity_report(sparsifier)["achieved_sparsity"] == 0.75
    from ham_bench.testing import check_sparsifier

    check_sparsifier({"name": "magnitude_pai", "sparsity": 0.75})  # the built-ins' contract, on the plugin


def test_rigl_under_sam_scores_growth_with_the_unperturbed_gradient():
    """The convention (sparsifiers.base): before_step sees the first backward's gradient, at the current weights."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 12))
    x, y = torch.randn(32, 20), torch.randint(0, 12, (32,))
    sparsifier = build_sparsifier({"name": "rigl", "sparsity": 0.7, "distribution": "uniform", "dense_first": False,
                                   "first_update_step": 0, "update_interval": 1, "drop_fraction": 0.3,
                                   "drop_fraction_schedule": "constant", "skip_step_on_update": False})
    sparsifier.attach(model, TrainingContext(epochs=1, steps_per_epoch=4))
    optimizer = SAM(model.parameters(), torch.optim.SGD, lr=0.1, rho=2.0)
    sparsifier.bind_optimizer(optimizer)
    weight = model[0].weight
    mask = sparsifier.masks()["0.weight"].clone()
    # independent expectation from the gradient at the unperturbed weights
    probe = nn.Linear(20, 12)
    probe.load_state_dict(model[0].state_dict())
    nn.functional.cross_entropy(probe(x), y).backward()
    unperturbed = probe.weight.grad.abs().flatten()
    active = int(mask.sum())
    n_drop = int(0.3 * active)
    drop_score = torch.where(mask.flatten(), weight.detach().abs().flatten(), -1.0)
    kept = torch.zeros_like(mask.flatten())
    kept[torch.topk(drop_score, active - n_drop).indices] = True
    grown = torch.zeros_like(kept)
    grown[torch.topk(torch.where(kept, -1.0, unperturbed), n_drop).indices] = True

    record = train_step(model, optimizer, sparsifier, x, y, 0)
    assert record.stepped and record.passes == 2 and record.dense_gradient
    assert torch.equal(sparsifier.masks()["0.weight"].flatten(), kept | grown)


def test_rigl_docstring_states_where_growth_is_scored_under_sam():
    """Regression: the docstring claimed growth used SAM's perturbed gradient; the code uses the unperturbed one."""
    import sparsifiers.rigl as rigl

    doc = " ".join(rigl.__doc__.split())
    assert "at SAM's perturbed point when SAM runs" not in doc
    assert "under SAM, growth is scored there, not at SAM's perturbed point" in doc
