"""Datasets and loaders: Fashion-MNIST, CIFAR-100, ImageNet (ImageFolder) and FakeData.

``build_datasets(cfg)`` returns a :class:`DataBundle` (train set, eval set and
their shape); ``build_loader`` wraps one set in a seeded ``DataLoader``.

Choices, shared by every dataset:

* ``eval_split: test`` evaluates on the official test split (ImageNet: ``val/``)
  and trains on the *whole* training split, the protocol behind published
  numbers. ``eval_split: val`` holds out ``val_fraction`` of the training split
  as validation and trains on the rest. The hold-out is a permutation with the
  fixed seed ``SPLIT_SEED`` (not the run's seed), so every run, seed and sweep
  sees the same validation samples; they get the eval transform (no
  augmentation).
* ``subset: N`` (for fast tests) keeps the first N samples of the training
  split in a fixed permutation (seed ``SPLIT_SEED``; with ``eval_split: val`` the
  permutation that carved out validation) and the first ``max(1, N // 6)`` of
  the eval split, likewise permuted. A fixed random pick rather than the first
  N in file order, because ImageFolder lists files class by class.
* Fashion-MNIST and CIFAR-100 are parsed straight from their files (idx,
  gzipped or not; CIFAR-100 python pickles) into uint8 tensors held in memory.
  Batches are fetched whole (``__getitems__``), augmented with vectorized
  tensor ops and normalized per batch (the same arithmetic as ToTensor +
  Normalize): no PIL and no per-sample Python work, at a quarter of the memory
  of a pre-normalized float copy. torchvision is used for downloading, and
  for ImageNet (ImageFolder + the standard transforms) and FakeData.
"""

from ham_bench.data.datasets import DATASETS, EVAL_SPLITS, SPLIT_SEED, DataBundle, build_datasets, dataset_settings
from ham_bench.data.images import ImageBatch, InMemoryImageDataset, build_loader, collate_batch, seeded_batches
from ham_bench.data.sources import (CIFAR100_MEAN, CIFAR100_STD, DEBIAN_FASHION_MNIST, FASHION_MNIST_FILES,
                                    FASHION_MNIST_MEAN, FASHION_MNIST_STD, IMAGENET_MEAN, IMAGENET_STD,
                                    DatasetNotFoundError, data_dir, imagenet_transforms, read_idx)

__all__ = ["CIFAR100_MEAN", "CIFAR100_STD", "DATASETS", "DEBIAN_FASHION_MNIST", "EVAL_SPLITS", "FASHION_MNIST_FILES",
           "FASHION_MNIST_MEAN", "FASHION_MNIST_STD", "IMAGENET_MEAN", "IMAGENET_STD", "SPLIT_SEED", "DataBundle",
           "DatasetNotFoundError", "ImageBatch", "InMemoryImageDataset", "build_datasets", "build_loader",
           "collate_batch", "data_dir", "dataset_settings", "seeded_batches", "imagenet_transforms", "read_idx"]
