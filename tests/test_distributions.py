"""Layer-wise densities (uniform, ERK with redistribution) and exact-count random masks."""

import math
import runpy
from pathlib import Path

import pytest
import torch
from torch import nn

from sparsifiers.distributions import active_counts, erk_densities, layer_densities, random_masks, uniform_densities

SMALL = {"conv1.weight": (16, 3, 3, 3), "conv2.weight": (32, 16, 3, 3), "conv3.weight": (64, 32, 1, 1),
         "fc.weight": (10, 64)}


def numel(shape):
    return math.prod(shape)


def sparsity_over(shapes, densities, names=None):
    names = list(shapes) if names is None else names
    total = sum(numel(shapes[n]) for n in names)
    return 1 - sum(densities[n] * numel(shapes[n]) for n in names) / total


def resnet50_shapes():
    import torchvision

    with torch.device("meta"):  # shapes only: nothing allocated or initialised
        model = torchvision.models.resnet50()
    return {f"{name}.weight": tuple(m.weight.shape) for name, m in model.named_modules()
            if isinstance(m, (nn.Conv2d, nn.Linear))}


def cifar_resnet18_shapes(num_classes=100):
    shapes, cin = {"conv1.weight": (64, 3, 3, 3)}, 64
    for stage, width in enumerate([64, 128, 256, 512]):
        for block in range(2):
            shapes[f"layer{stage + 1}.{block}.conv1.weight"] = (width, cin, 3, 3)
            shapes[f"layer{stage + 1}.{block}.conv2.weight"] = (width, width, 3, 3)
            if stage > 0 and block == 0:
                shapes[f"layer{stage + 1}.{block}.shortcut.weight"] = (width, cin, 1, 1)
            cin = width
    shapes["fc.weight"] = (num_classes, 512)
    return shapes


def test_uniform_every_masked_layer_at_target_and_dense_names_at_one():
    densities = uniform_densities(SMALL, 0.9, dense_names=["conv1.weight"])
    assert densities["conv1.weight"] == 1.0
    for name in ["conv2.weight", "conv3.weight", "fc.weight"]:
        assert densities[name] == pytest.approx(0.1)
    masked = ["conv2.weight", "conv3.weight", "fc.weight"]
    assert sparsity_over(SMALL, densities, masked) == pytest.approx(0.9, abs=1e-12)


@pytest.mark.parametrize("sparsity", [0.5, 0.8, 0.9, 0.95, 0.99])
@pytest.mark.parametrize("power_scale", [1.0, 0.5])
def test_erk_sums_to_target_over_masked_layers(sparsity, power_scale):
    densities = erk_densities(SMALL, sparsity, power_scale=power_scale)
    assert all(0.0 < d <= 1.0 for d in densities.values())
    # the budget is sum(N - floor(S N)) nonzeros: at most one weight per layer off S * N
    assert sparsity_over(SMALL, densities) == pytest.approx(sparsity, abs=len(SMALL) / sum(map(numel, SMALL.values())))


def test_erk_with_kept_dense_layers_holds_target_over_the_others():
    densities = erk_densities(SMALL, 0.9, dense_names=["conv1.weight", "fc.weight"])
    assert densities["conv1.weight"] == densities["fc.weight"] == 1.0
    masked = ["conv2.weight", "conv3.weight"]
    assert sparsity_over(SMALL, densities, masked) == pytest.approx(0.9, abs=2 / (4608 + 2048))


def test_erk_resnet50_matches_methods_reference_numbers():
    shapes = resnet50_shapes()
    assert len(shapes) == 54
    densities = erk_densities(shapes, 0.9)
    sparsity_pct = {name: 100 * (1 - d) for name, d in densities.items()}
    assert round(sparsity_pct["conv1.weight"], 1) == 58.0
    assert sparsity_pct["layer1.0.conv1.weight"] == 0.0  # forced dense by the redistribution
    assert [name for name, d in densities.items() if d == 1.0] == ["layer1.0.conv1.weight"]
    for block in range(3):
        assert round(sparsity_pct[f"layer1.{block}.conv2.weight"], 1) == 82.3
    for block in range(3):
        assert round(sparsity_pct[f"layer4.{block}.conv2.weight"], 1) == 97.9
    assert round(sparsity_pct["fc.weight"], 1) == 92.7
    counts = active_counts(shapes, densities)
    total = sum(map(numel, shapes.values()))
    assert round(1 - sum(counts.values()) / total, 4) == 0.9000
    assert round(sparsity_over(shapes, densities), 4) == 0.9000


def test_erk_redistribution_hits_target_where_clamping_misses():
    shapes = cifar_resnet18_shapes(100)
    sparsity = 0.8
    sizes = {k: numel(v) for k, v in shapes.items()}
    raw = {k: sum(v) / sizes[k] for k, v in shapes.items()}
    eps = sum(n - math.floor(sparsity * n) for n in sizes.values()) / sum(raw[k] * sizes[k] for k in shapes)
    clamped = {k: min(1.0, eps * raw[k]) for k in shapes}
    assert round(sparsity_over(shapes, clamped), 3) == 0.823  # the published clamp-only miss
    assert sparsity_over(shapes, erk_densities(shapes, sparsity)) == pytest.approx(0.8, abs=1e-5)


def test_zero_sparsity_is_dense_and_bad_values_fail():
    assert set(erk_densities(SMALL, 0.0).values()) == {1.0}
    assert set(uniform_densities(SMALL, 0.0).values()) == {1.0}
    with pytest.raises(ValueError, match="sparsity must be in"):
        uniform_densities(SMALL, 1.0)
    with pytest.raises(ValueError, match="sparsifier.distribution must be one of"):
        layer_densities("gaussian", SMALL, 0.5)


def test_random_masks_exact_counts_and_seeded():
    densities = erk_densities(SMALL, 0.9)
    counts = active_counts(SMALL, densities)
    masks = random_masks(SMALL, densities, torch.Generator().manual_seed(3))
    for name, mask in masks.items():
        assert mask.dtype == torch.bool and tuple(mask.shape) == SMALL[name]
        assert int(mask.sum()) == counts[name] == round(densities[name] * numel(SMALL[name]))
    again = random_masks(SMALL, densities, torch.Generator().manual_seed(3))
    other = random_masks(SMALL, densities, torch.Generator().manual_seed(4))
    assert all(torch.equal(masks[n], again[n]) for n in SMALL)
    assert not all(torch.equal(masks[n], other[n]) for n in SMALL)


def test_uniform_masks_hit_the_target_exactly():
    shapes = {"a": (40, 10), "b": (20, 5, 2, 2)}
    masks = random_masks(shapes, uniform_densities(shapes, 0.75), torch.Generator().manual_seed(0))
    zeros = sum(int((~m).sum()) for m in masks.values())
    assert zeros == 300 + 300
    assert zeros / 800 == 0.75


def test_show_densities_prints_the_table_a_config_gives(capsys):
    show = runpy.run_path("scripts/show_densities.py", run_name="show_densities")
    assert show["main"](["model=resnet18", "sparsifier=random", "sparsifier.distribution=uniform"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line.split() for line in lines[2:-2]}
    assert len(rows) == 21
    assert rows["conv1.weight"][1:] == ["64x3x7x7", "9408", "100.00%", "9408", "kept", "dense"]
    assert rows["layer1.0.conv1.weight"][1:] == ["64x64x3x3", "36864", "10.00%", "3686"]
    assert lines[-1].startswith("target sparsity 0.9000 over the masked layers, 0.8993 over all")
    assert "first conv dense" in lines[-1]
    if not Path("configs/model/cnn.yaml").exists():
        return
    # a model with a config of its own goes through ham_bench.models.build_model
    assert show["main"](["model=cnn", "sparsifier=random", "num_classes=10", "in_channels=1", "image_size=28"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[2] for line in lines[2:-2]] == ["144", "4608", "15680"]
    assert lines[-1].startswith("target sparsity 0.9000 over the masked layers, 0.9000 over all")
