"""Every experiment overlay composes with the Hydra compose API, validates, and carries its recipe.

The reproduce commands of docs/reproduce.md sweep the table rows over these overlays: each row
override (sparsifier, optimizer, ham, epochs, sparsity) must compose on top of every overlay too.
"""

from functools import lru_cache
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from ham_bench.cli import CONFIG_DIR
from ham_bench.validation import validate_config

REPO = Path(__file__).resolve().parent.parent
EXPERIMENTS = sorted(p.stem for p in (Path(CONFIG_DIR) / "experiment").glob("*.yaml"))
SPARSE_ROWS = ["sparsifier=random", "sparsifier=acdc", "sparsifier=rigl", "sparsifier=str", "sparsifier=signin",
               "sparsifier=acdc_signin", "sparsifier=rigl_signin", "sparsifier=pilot"]
DENSE_ROWS = ["optimizer=sgd", "optimizer=sam"]


@lru_cache(maxsize=None)
def compose_experiment(name: str, *overrides: str, hydra: bool = False):
    """The composed config (cached: callers only read it)."""
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name="train", overrides=[f"experiment={name}", *overrides],
                       return_hydra_config=hydra)


def test_the_six_paper_experiments_exist():
    assert set(EXPERIMENTS) >= {"imagenet_dense", "imagenet_sparse", "cifar100_dense", "cifar100_sparse",
                                "fmnist_dense", "fmnist_sparse"}


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_composes_and_validates(name):
    cfg = compose_experiment(name)
    validate_config(cfg)
    OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves
    assert (cfg.sparsifier.name == "dense") == name.endswith("_dense")


@pytest.mark.parametrize("name", [n for n in EXPERIMENTS if n.endswith("_sparse")])
@pytest.mark.parametrize("row", SPARSE_ROWS)
@pytest.mark.parametrize("ham", ["off", "hyp_star"])
def test_sparse_rows_compose(name, row, ham):
    cfg = compose_experiment(name, row, "sparsifier.sparsity=0.95", f"ham={ham}", "seed=2")
    validate_config(cfg)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    assert resolved["sparsifier"]["sparsity"] == 0.95
    assert resolved["ham"]["enabled"] == (ham != "off")
    dense = compose_experiment(name.replace("_sparse", "_dense"))  # one shared recipe per scale
    for key in ("epochs", "batch_size", "label_smoothing"):
        assert cfg[key] == dense[key], key
    for key in ("schedule", "dataset", "model"):
        assert OmegaConf.to_container(cfg[key]) == OmegaConf.to_container(dense[key]), key
    for key in ("lr", "momentum", "weight_decay"):
        assert cfg.optimizer[key] == dense.optimizer[key], key


@pytest.mark.parametrize("name", [n for n in EXPERIMENTS if n.endswith("_dense")])
@pytest.mark.parametrize("row", DENSE_ROWS)
def test_dense_rows_keep_the_recipe(name, row):
    base = compose_experiment(name)
    cfg = compose_experiment(name, row, "ham=off")
    validate_config(cfg)
    assert cfg.optimizer.name == row.split("=")[1]
    for key in ("lr", "momentum", "weight_decay", "nesterov"):
        assert cfg.optimizer[key] == base.optimizer[key], key  # SAM keeps the overlay's recipe
    if cfg.optimizer.name == "sam":
        assert cfg.optimizer.rho > 0


@pytest.mark.parametrize("name, model, dataset, lr, batch, epochs", [
    ("imagenet_dense", "resnet50", "imagenet", 0.256, 256, 100),
    ("imagenet_sparse", "resnet50", "imagenet", 0.256, 256, 100),
    ("cifar100_dense", "resnet18_cifar", "cifar100", 0.1, 256, 160),
    ("cifar100_sparse", "resnet18_cifar", "cifar100", 0.1, 256, 160),
])
def test_paper_scale_recipes(name, model, dataset, lr, batch, epochs):
    cfg = compose_experiment(name)
    assert (cfg.model.name, cfg.dataset.name, cfg.optimizer.lr, cfg.batch_size, cfg.epochs) == (
        model, dataset, lr, batch, epochs)
    if name.startswith("imagenet"):
        assert (cfg.optimizer.momentum, cfg.optimizer.weight_decay, cfg.schedule.warmup_epochs) == (0.875, 3.05e-5, 5)
        assert (cfg.ham.alpha, cfg.ham.beta) == (200.0, 1e-3)
    else:
        assert (cfg.optimizer.momentum, cfg.optimizer.weight_decay) == (0.9, 1e-3)
        assert cfg.ham.beta == 1.6e-2


@pytest.mark.parametrize("name", ["fmnist_dense", "fmnist_sparse"])
def test_fmnist_ham_is_the_small_scale_choice(name):
    cfg = compose_experiment(name)
    assert (cfg.dataset.name, cfg.model.name) == ("fashion_mnist", "cnn")
    assert cfg.ham.alpha < 200  # alpha = 200 diverges at this scale (issue 6)
    val = compose_experiment(name, "dataset.eval_split=val")
    validate_config(val)
    assert val.dataset.eval_split == "val"


def test_fmnist_dense_and_sparse_share_the_chosen_ham_pair():
    dense, sparse = compose_experiment("fmnist_dense"), compose_experiment("fmnist_sparse")
    assert (dense.ham.alpha, dense.ham.beta) == (sparse.ham.alpha, sparse.ham.beta)
    for name in ("fmnist_dense", "fmnist_sparse"):
        text = (Path(CONFIG_DIR) / "experiment" / f"{name}.yaml").read_text()
        assert "HAM_ALPHA" in text and "HAM_BETA" in text  # the marked keys the sweep's choice goes into


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_sweeps_land_in_one_folder_per_experiment(name):
    from hydra.core.hydra_config import HydraConfig

    cfg = compose_experiment(name, hydra=True)
    HydraConfig.instance().set_config(cfg)  # what hydra.main does before it resolves the run dirs
    assert f"multirun/{name}/" in cfg.hydra.sweep.dir
    assert f"outputs/{name}/" in cfg.hydra.run.dir


def test_experiment_is_a_defaults_list_group_and_the_plain_run_dir_is_by_date():
    from hydra.core.hydra_config import HydraConfig

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        plain = compose(config_name="train", return_hydra_config=True)
        overlay = compose(config_name="train", overrides=["experiment=fmnist_sparse", "sparsifier=rigl"])
    HydraConfig.instance().set_config(plain)
    assert plain.hydra.run.dir.split("/")[1][:2] == "20"  # outputs/<date>/<time>
    assert overlay.epochs == 3 and overlay.sparsifier.name == "rigl"  # the command line wins over the overlay


@pytest.mark.parametrize("launcher, target", [("slurm", "SlurmLauncher"), ("local_parallel", "JoblibLauncher")])
def test_launcher_configs_compose(launcher, target):
    cfg = compose_experiment("fmnist_sparse", f"hydra/launcher={launcher}", hydra=True)
    assert cfg.hydra.launcher._target_.endswith(target)
    if launcher == "slurm":
        assert (cfg.hydra.launcher.nodes, cfg.hydra.launcher.gpus_per_node) == (1, 1)
        cfg = compose_experiment("imagenet_dense", "hydra/launcher=slurm", "hydra.launcher.partition=gpu",
                                 "hydra.launcher.timeout_min=600", hydra=True)
        assert (cfg.hydra.launcher.partition, cfg.hydra.launcher.timeout_min) == ("gpu", 600)
    else:
        assert cfg.hydra.launcher.n_jobs == 2


def test_reproduce_doc_commands_name_existing_experiments():
    text = (REPO / "docs" / "reproduce.md").read_text()
    for name in EXPERIMENTS:
        assert f"experiment={name}" in text, name
