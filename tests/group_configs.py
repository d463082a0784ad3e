"""A config group's option as the run sees it: composed by Hydra (options may extend others through defaults)."""

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from ham_bench.cli import CONFIG_DIR


def group_option(group: str, option: str, *overrides: str) -> dict:
    """``configs/<group>/<option>.yaml`` composed into the run config, resolved, as a plain dict."""
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"{group}={option}", *overrides])
    return OmegaConf.to_container(cfg[group], resolve=True)
