"""The sparsifier contract (ham_bench.testing.check_sparsifier) over every sparsifier config, and the plugin example."""

from pathlib import Path

import pytest

from group_configs import group_option
from ham_bench.cli import CONFIG_DIR
from ham_bench.testing import check_sparsifier
from sparsifiers import available_sparsifiers

CONFIGS = sorted(p.stem for p in (Path(CONFIG_DIR) / "sparsifier").glob("*.yaml"))
# settings that make each schedule act within the contract's 4 x 4 steps
SHORT = {"rigl": ["sparsifier.update_interval=2"], "rigl_signin": ["sparsifier.inner.update_interval=2"],
         "acdc_imagenet": ["sparsifier.schedule_unit=fraction"], "acdc_cifar": ["sparsifier.schedule_unit=fraction"]}


def sparsifier_config(option: str) -> dict:
    settings = group_option("sparsifier", option, *SHORT.get(option, []))
    if option in ("acdc_imagenet", "acdc_cifar"):  # the papers' epoch schedules as fractions of a short run
        settings.update(dense_warmup=0.1, compressed_length=0.05, decompressed_length=0.05,
                        final_compressed_length=0.15)
    return settings


def test_every_registered_sparsifier_has_a_config():
    assert set(available_sparsifiers()) <= set(CONFIGS)


@pytest.mark.parametrize("option", CONFIGS)
def test_sparsifier_contract(option):
    check_sparsifier(sparsifier_config(option))


def test_the_contract_catches_a_method_that_lets_masked_weights_move():
    """The check is live: a method that stops re-masking fails it."""
    from sparsifiers.random import RandomSparsifier

    class Leaky(RandomSparsifier):
        name = "leaky"

        def mask_gradients(self):
            pass

        def after_step(self, step):
            pass

    with pytest.raises(AssertionError, match="masked weights nonzero after step 0"):
        check_sparsifier(lambda: Leaky(sparsity=0.8))
