"""Train and eval sets for a run: the split rules shared by every dataset (see ``ham_bench.data``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch
from torch.utils.data import Dataset, Subset

from ham_bench.data.images import InMemoryImageDataset
from sparsifiers.config import ConfigError, choice, flag, number
from ham_bench.data.sources import _cifar100, _fake, _fashion_mnist, _imagenet

DATASETS = ("fashion_mnist", "cifar100", "imagenet", "fake")
EVAL_SPLITS = ("test", "val")
SPLIT_SEED = 0  # fixes the validation hold-out and the `subset` pick, independent of the run's seed


@dataclass
class DataBundle:
    """What a run needs to know about its data."""

    train: Dataset
    eval: Dataset
    num_classes: int
    in_channels: int
    image_size: int
    name: str
    eval_split_name: str  # "test" or "val"


COMMON_KEYS = ("name", "root", "download", "augment", "val_fraction", "eval_split", "subset")
EXTRA_KEYS = {"imagenet": ("image_size",), "fake": ("num_samples", "image_size", "in_channels", "num_classes")}


def dataset_settings(cfg: Mapping) -> dict:
    """The ``dataset`` config checked (ConfigError naming the key) and with defaults filled in."""
    name = choice("name", cfg.get("name"), DATASETS, where="dataset")
    allowed = COMMON_KEYS + EXTRA_KEYS.get(name, ())
    unknown = sorted(set(cfg) - set(allowed))
    if unknown:
        raise ConfigError(f"dataset.{unknown[0]} is not a setting of dataset={name}; allowed: {', '.join(allowed)}")
    eval_split = choice("eval_split", cfg.get("eval_split") or "test", EVAL_SPLITS, where="dataset")
    val_fraction = number("val_fraction", cfg.get("val_fraction", 0.1) or 0.0, low=0.0, high=1.0, high_open=True,
                          low_open=eval_split == "val", where="dataset")
    subset = cfg.get("subset")
    if subset is not None:
        subset = number("subset", subset, int, low=1, where="dataset")
    root = cfg.get("root")
    if root is not None and not isinstance(root, str):
        raise ConfigError(f"dataset.root must be a path or null, got {root!r}")
    settings = {"name": name, "root": root, "eval_split": eval_split, "val_fraction": val_fraction,
                "subset": subset, "download": flag("download", cfg.get("download", False), where="dataset"),
                "augment": flag("augment", cfg.get("augment", name in ("cifar100", "imagenet")), where="dataset")}
    limits = {"image_size": 8, "num_samples": 1, "in_channels": 1, "num_classes": 2}
    for key in EXTRA_KEYS.get(name, ()):
        if key in cfg:
            settings[key] = number(key, cfg[key], int, low=limits[key], where="dataset")
    return settings


def build_datasets(cfg: Mapping) -> DataBundle:
    """Train and eval sets for ``cfg.name`` (see the module docstring for split and subset rules)."""
    cfg = dataset_settings(cfg)
    name, eval_split, val_fraction, subset = cfg["name"], cfg["eval_split"], cfg["val_fraction"], cfg["subset"]
    builder = {"fashion_mnist": _fashion_mnist, "cifar100": _cifar100, "imagenet": _imagenet, "fake": _fake}[name]
    train, train_eval_view, test, meta = builder(cfg)
    if eval_split == "val":
        permutation = _fixed_permutation(len(train))
        n_val = min(max(1, round(val_fraction * len(train))), len(train) - 1)
        train_indices, eval_indices = permutation[n_val:], permutation[:n_val]
        eval_set_base = train_eval_view
    else:
        train_indices = None if subset is None else _fixed_permutation(len(train))
        eval_indices = None if subset is None else _fixed_permutation(len(test))
        eval_set_base = test
    if subset is not None:
        train_indices = train_indices[:subset]
        eval_indices = eval_indices[:max(1, subset // 6)]
    return DataBundle(train=_select(train, train_indices), eval=_select(eval_set_base, eval_indices),
                      name=name, eval_split_name=eval_split, **meta)


def _fixed_permutation(n: int) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(SPLIT_SEED))


def _select(dataset: Dataset, indices: torch.Tensor | None) -> Dataset:
    if indices is None:
        return dataset
    if isinstance(dataset, InMemoryImageDataset):
        return dataset.view(indices)
    return Subset(dataset, indices.tolist())
