"""The parameters a timm model names in ``no_weight_decay()`` (pos_embed, cls_token) get no weight decay and, by
default, no HAM; ``ham.cover_no_weight_decay=true`` puts HAM back on them (issue 14, item 5). A real timm ViT,
built by ham-bench's own model factory for 28x28 single-channel images, and real optimizer steps."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from ham_bench.models import build_model
from ham_bench.optim import HAM, build_optimizer
from ham_bench.optim.factory import optimizer_settings
from sparsifiers.config import ConfigError

SGD = {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4}
HAM_CFG = {"enabled": True, "alpha": 20.0, "beta": 1e-3, "implementation": "foreach"}


@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(0)
    cfg = OmegaConf.create({"name": "timm", "timm_name": "vit_tiny_patch16_224", "pretrained": False,
                            "kwargs": {"patch_size": 7, "depth": 2}})
    return build_model(cfg, num_classes=10, in_channels=1, image_size=28)


def group_of(opt, param):
    return next(g for g in opt.param_groups if any(p is param for p in g["params"]))


def one_step(model, opt):
    torch.manual_seed(1)
    x, y = torch.randn(4, 1, 28, 28), torch.randint(0, 10, (4,))
    opt.zero_grad()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    opt.step()


def test_pos_embed_and_cls_token_get_neither_weight_decay_nor_ham(vit):
    assert {"pos_embed", "cls_token"} <= set(vit.no_weight_decay())
    opt = build_optimizer(vit, SGD, HAM_CFG)
    assert isinstance(opt, HAM)
    covered = {id(p) for _, _, _, params in opt._covered_by_group() for p in params}
    for param in (vit.pos_embed, vit.cls_token):
        group = group_of(opt, param)
        assert group["weight_decay"] == 0.0 and group["ham"] is False and id(param) not in covered
    assert id(vit.blocks[0].attn.qkv.weight) in covered  # the weights HAM is about keep it
    assert group_of(opt, vit.blocks[0].attn.qkv.weight)["weight_decay"] == 5e-4
    # a real step: pos_embed moves exactly by plain SGD (no decay, no HAM factor)
    before = vit.pos_embed.detach().clone()
    one_step(vit, opt)
    grad = vit.pos_embed.grad
    torch.testing.assert_close(vit.pos_embed.detach(), before - 0.05 * grad, rtol=0, atol=1e-7)


def test_cover_no_weight_decay_puts_ham_back_on_them(vit):
    opt = build_optimizer(vit, SGD, {**HAM_CFG, "cover_no_weight_decay": True})
    covered = {id(p) for _, _, _, params in opt._covered_by_group() for p in params}
    assert id(vit.pos_embed) in covered and id(vit.cls_token) in covered
    assert group_of(opt, vit.pos_embed)["weight_decay"] == 0.0


def test_without_ham_they_still_get_no_weight_decay(vit):
    opt = build_optimizer(vit, SGD, {"enabled": False})
    assert group_of(opt, vit.pos_embed)["weight_decay"] == 0.0
    assert group_of(opt, vit.blocks[0].mlp.fc1.weight)["weight_decay"] == 5e-4


def test_cover_no_weight_decay_must_be_a_bool():
    with pytest.raises(ConfigError, match=r"ham\.cover_no_weight_decay must be"):
        optimizer_settings(SGD, {**HAM_CFG, "cover_no_weight_decay": "maybe"})
