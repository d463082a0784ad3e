"""Which new methods compose with Sign-In (the contract over each composition) and which are refused."""

import pytest
import torch
from torch import nn

from ham_bench.testing import check_sparsifier
from sparsifiers import ConfigError, TrainingContext, build_sparsifier

INNER = {"snip": {}, "synflow": {"rounds": 10}, "gmp": {"update_every": 0.1}, "imp": {}, "lrr": {}, "set": {},
         "mest": {}}


@pytest.mark.parametrize("inner", list(INNER))
def test_masked_methods_compose_with_sign_in_under_the_contract(inner):
    check_sparsifier({"name": "signin", "inner": inner, "sparsity": 0.8, "inner_kwargs": INNER[inner]})


@pytest.mark.parametrize("inner", ["cs", "spred", "nm", "str", "pilot"])
def test_methods_that_reparameterize_their_weights_are_refused_by_sign_in(inner):
    with pytest.raises(ConfigError, match=rf"^sparsifier.inner='{inner}' reparameterizes its weights itself"):
        build_sparsifier({"name": "signin", "inner": inner})


def test_sign_in_passes_the_inner_lr_position_and_rewinds_through():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 3))
    composed = build_sparsifier({"name": "signin", "inner": "imp", "sparsity": 0.5})
    composed.attach(model, TrainingContext(epochs=5, steps_per_epoch=4))
    rounds = composed.inner.rounds
    assert [composed.schedule_position(s) for s in range(20)] == [rounds.schedule_position(s) for s in range(20)]
    assert [s for s in range(20) if composed.rewinds_weights(s)] == [s - 1 for s in rounds.starts[1:]]
    assert composed.name == "imp+signin"


def test_the_command_line_composition_builds():
    from hydra import compose, initialize_config_dir

    from ham_bench.cli import CONFIG_DIR

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=["sparsifier=signin", "sparsifier.inner=gmp",
                                                      "sparsifier.sparsity=0.8"])
    composed = build_sparsifier(cfg.sparsifier)
    assert composed.name == "gmp+signin" and composed.inner.selection.sparsity == 0.8
