"""Every model config builds, runs forward and backward with the right shapes, and keeps its prunable
layers plain nn.Conv2d / nn.Linear."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # timm must never reach for the Hub in tests

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from ham_bench.models import MODELS, build_model  # noqa: E402

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "model"
# (num_classes, in_channels, image_size) each config is meant for; resnet50 at a small input to stay fast
SHAPES = {"mlp": (10, 1, 28), "cnn": (10, 1, 28), "resnet18_cifar": (100, 3, 32), "resnet50": (7, 3, 64),
          "timm": (5, 3, 32)}


def model_config(name: str, **overrides):
    cfg = OmegaConf.load(CONFIGS / f"{name}.yaml")
    for key, value in overrides.items():
        cfg[key] = value
    return cfg


def assert_trains(model: nn.Module, num_classes: int, in_channels: int, image_size: int, batch: int = 2) -> None:
    torch.manual_seed(0)
    inputs = torch.randn(batch, in_channels, image_size, image_size)
    outputs = model(inputs)
    assert outputs.shape == (batch, num_classes) and torch.isfinite(outputs).all()
    nn.functional.cross_entropy(outputs, torch.arange(batch) % num_classes).backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
    assert any(parameter.grad.abs().sum() > 0 for parameter in model.parameters())


def weight_layers(model: nn.Module) -> list[nn.Module]:
    """Modules that own a weight of two or more dimensions (the ones a sparsifier prunes)."""
    return [module for module in model.modules()
            if any(p.dim() >= 2 for p in module.parameters(recurse=False))]


def test_the_model_configs_are_exactly_the_known_models():
    assert sorted(path.stem for path in CONFIGS.glob("*.yaml")) == sorted(MODELS) == sorted(SHAPES)


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_every_model_config_builds_and_trains_a_step(name):
    num_classes, in_channels, image_size = SHAPES[name]
    cfg = model_config(name)
    assert cfg.name == name
    model = build_model(cfg, num_classes, in_channels, image_size)
    assert_trains(model, num_classes, in_channels, image_size)
    if name != "timm":
        assert {type(module) for module in weight_layers(model)} <= {nn.Conv2d, nn.Linear}


def test_mlp_and_cnn_shapes():
    mlp = build_model(model_config("mlp"), 10, 1, 28)
    assert [(m.in_features, m.out_features) for m in weight_layers(mlp)] == [(784, 300), (300, 100), (100, 10)]
    cnn = build_model(model_config("cnn"), 10, 1, 28)
    convs = [m for m in cnn.modules() if isinstance(m, nn.Conv2d)]
    cfg = model_config("cnn")
    assert [c.out_channels for c in convs] == list(cfg.channels) and all(c.kernel_size == (3, 3) for c in convs)
    assert all(c.bias is None for c in convs) and sum(isinstance(m, nn.BatchNorm2d) for m in cnn.modules()) == len(convs)
    head = [m for m in cnn.modules() if isinstance(m, nn.Linear)]
    assert len(head) == 1 and head[0].in_features == cfg.channels[-1] * 7 * 7
    plain = build_model(model_config("cnn", batch_norm=False), 10, 3, 32)  # also any input shape
    assert not any(isinstance(m, nn.BatchNorm2d) for m in plain.modules())
    assert all(m.bias is not None for m in plain.modules() if isinstance(m, nn.Conv2d))
    assert_trains(plain, 10, 3, 32)
    with pytest.raises(ValueError, match="model.channels must have at most 4 blocks for 28x28"):
        build_model(model_config("cnn", channels=[8, 8, 8, 8, 8]), 10, 1, 28)


def test_resnet18_cifar_has_the_cifar_stem_and_any_input_channels():
    model = build_model(model_config("resnet18_cifar"), 100, 3, 32)
    assert (model.conv1.kernel_size, model.conv1.stride, model.conv1.in_channels) == ((3, 3), (1, 1), 3)
    assert isinstance(model.maxpool, nn.Identity)
    assert sum(p.numel() for p in model.parameters()) == 11_220_132  # the usual CIFAR ResNet-18 count
    model.eval()
    features = nn.Sequential(*list(model.children())[:-2])(torch.randn(1, 3, 32, 32))
    assert features.shape == (1, 512, 4, 4)  # 32 -> 4: stride 8 in total, none in the stem
    gray = build_model(model_config("resnet18_cifar"), 10, 1, 32)
    assert gray.conv1.in_channels == 1
    assert_trains(gray, 10, 1, 32)


def test_resnet50_is_torchvisions():
    model = build_model(model_config("resnet50"), 1000, 3, 224)
    assert sum(p.numel() for p in model.parameters()) == 25_557_032  # torchvision resnet50
    assert model.layer2[0].conv2.stride == (2, 2)  # v1.5: stride on the 3x3 conv
    zero_init = build_model(model_config("resnet50", zero_init_residual=True), 10, 1, 64)
    assert zero_init.conv1.in_channels == 1 and torch.all(zero_init.layer1[0].bn3.weight == 0)


def test_timm_models_by_name_follow_the_data_shape():
    vit = build_model(model_config("timm", timm_name="vit_tiny_patch16_224"), 10, 3, 32)
    assert vit.patch_embed.img_size == (32, 32)  # img_size passed through for models that take it
    assert_trains(vit, 10, 3, 32)
    gray = build_model(model_config("timm", timm_name="resnet18"), 10, 1, 28)
    assert gray.conv1.in_channels == 1 and gray.fc.out_features == 10
    kwargs = build_model(model_config("timm", timm_name="vit_tiny_patch16_224", kwargs={"img_size": 48, "depth": 1}),
                         10, 3, 32)
    assert kwargs.patch_embed.img_size == (48, 48)  # an explicit kwargs value wins
    with pytest.raises(ValueError, match="model.timm_name must be a timm model name"):
        build_model(model_config("timm", timm_name="no_such_net"), 10, 3, 32)


def test_unknown_model_name_lists_the_allowed_ones():
    with pytest.raises(ValueError, match=r"model.name must be one of \[mlp, cnn, resnet18_cifar, resnet50, timm\], "
                                         r"got 'vgg'"):
        build_model({"name": "vgg"}, 10, 3, 32)


def test_a_patch_grid_that_cannot_see_the_whole_image_is_refused():
    """Regression: vit_tiny_patch16_224 on 28x28 built a 1x1 grid over the top-left 16x16 pixels, silently."""
    with pytest.raises(ValueError, match=r"cuts 28x28 images into 16x16 patches: 28 is not a multiple of 16, "
                                         r"so 12 pixel rows and columns would never be seen; set "
                                         r"model.kwargs.patch_size to a divisor of 28 \(e.g. 2, 4, 7\)"):
        build_model(model_config("timm", timm_name="vit_tiny_patch16_224", kwargs={"depth": 1}), 10, 1, 28)
    fits = build_model(model_config("timm", timm_name="vit_tiny_patch16_224",
                                    kwargs={"depth": 1, "patch_size": 4}), 10, 1, 28)
    assert tuple(fits.patch_embed.grid_size) == (7, 7)
    assert fits(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
