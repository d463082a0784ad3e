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

from __future__ import annotations

import copy
import gzip
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset, default_collate

DATASETS = ("fashion_mnist", "cifar100", "imagenet", "fake")
EVAL_SPLITS = ("test", "val")
SPLIT_SEED = 0  # fixes the validation hold-out and the `subset` pick, independent of the run's seed

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")  # apt-get install dataset-fashion-mnist
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
FASHION_MNIST_MEAN, FASHION_MNIST_STD = (0.2860,), (0.3530,)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
               0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


class DatasetNotFoundError(FileNotFoundError):
    """Dataset files are missing; the message is one line: where we looked and how to get them."""


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


class ImageBatch(NamedTuple):
    """A batch fetched whole by :class:`InMemoryImageDataset`; unpacks as ``images, labels``."""

    images: torch.Tensor
    labels: torch.Tensor


class InMemoryImageDataset(Dataset):
    """uint8 images ``(N, C, H, W)`` and int64 labels in memory, served a batch at a time.

    ``__getitems__`` (used by DataLoader for batched fetches) gathers the batch,
    applies the optional augmentation (random crop with zero padding
    ``crop_padding`` on the uint8 image, as torchvision's RandomCrop does before
    Normalize, and a horizontal flip with probability 1/2; one gather for both),
    then normalizes with
    ``(x / 255 - mean) / std``. Random draws come from torch's global generator,
    which DataLoader seeds per worker. ``indices`` selects samples without copying.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, mean: Sequence[float], std: Sequence[float],
                 crop_padding: int = 0, flip: bool = False, indices: torch.Tensor | None = None):
        if images.dtype != torch.uint8 or images.dim() != 4 or len(images) != len(labels):
            raise ValueError(f"expected uint8 images (N, C, H, W) and N labels, got {tuple(images.shape)} "
                             f"{images.dtype} and {len(labels)} labels")
        self.images = images
        self.labels = labels.long()
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        self.crop_padding = crop_padding
        self.flip = flip
        self.indices = indices

    def __len__(self) -> int:
        return len(self.images) if self.indices is None else len(self.indices)

    def view(self, indices: torch.Tensor | None = None, augment: bool | None = None) -> "InMemoryImageDataset":
        """The same storage restricted to ``indices`` (positions in this view); ``augment=False`` drops augmentation."""
        if indices is not None and self.indices is not None:
            indices = self.indices[indices]
        elif indices is None:
            indices = self.indices
        clone = copy.copy(self)
        clone.indices = indices
        if augment is False:
            clone.crop_padding, clone.flip = 0, False
        return clone

    def __getitems__(self, positions: Sequence[int]) -> ImageBatch:
        index = torch.as_tensor(positions, dtype=torch.long)
        if self.indices is not None:
            index = self.indices[index]
        images = self.images[index]
        if self.crop_padding or self.flip:
            images = _random_crop_flip(images, self.crop_padding, self.flip)
        images = images.float().div_(255).sub_(self.mean).div_(self.std)
        return ImageBatch(images, self.labels[index])

    def __getitem__(self, position: int) -> tuple[torch.Tensor, int]:
        if not -len(self) <= position < len(self):
            raise IndexError(f"index {position} out of range for {len(self)} samples")
        images, labels = self.__getitems__([position % len(self)])
        return images[0], int(labels[0])


def _random_crop_flip(images: torch.Tensor, padding: int, flip: bool) -> torch.Tensor:
    """Per-sample random crop (original size, from the zero-padded image) and/or flip, as one gather."""
    n, c, h, w = images.shape
    if padding:
        images = F.pad(images, (padding,) * 4)
    padded_h, padded_w = h + 2 * padding, w + 2 * padding
    top = torch.randint(0, 2 * padding + 1, (n, 1, 1))
    left = torch.randint(0, 2 * padding + 1, (n, 1, 1))
    cols = torch.arange(w).expand(n, 1, w)
    if flip:
        cols = torch.where(torch.rand(n, 1, 1) < 0.5, w - 1 - cols, cols)
    pixels = (top + torch.arange(h).view(1, h, 1)) * padded_w + left + cols  # (n, h, w) offsets in one plane
    index = torch.arange(c).view(1, c, 1, 1) * (padded_h * padded_w) + pixels.unsqueeze(1)
    return images.reshape(n, -1).gather(1, index.view(n, -1)).view(n, c, h, w)


def collate_batch(batch: Any) -> Any:
    """Batches fetched whole pass through; lists of samples get torch's default collation."""
    return batch if isinstance(batch, ImageBatch) else default_collate(batch)


def build_loader(dataset: Dataset, batch_size: int, shuffle: bool, num_workers: int = 0, seed: int = 0,
                 drop_last: bool = False, pin_memory: bool = False, sampler=None) -> DataLoader:
    """A DataLoader whose order is fixed by ``seed`` (its own ``torch.Generator``, also seeding workers).

    With a ``sampler`` (e.g. DistributedSampler) the sampler decides the order and
    ``shuffle`` is ignored. Workers are not persistent, so re-seeding
    ``loader.generator`` before an epoch fixes that epoch's order and its
    workers' augmentation.
    """
    generator = torch.Generator()
    generator.manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=bool(shuffle) and sampler is None, sampler=sampler,
                      num_workers=num_workers, generator=generator, drop_last=drop_last, pin_memory=pin_memory,
                      collate_fn=collate_batch)


def seeded_batches(dataset: Dataset, batch_size: int, seed: int):
    """A callable returning the next labelled training batch ``(inputs, labels)`` for a sparsifier's ``attach``.

    Batches follow a permutation drawn with ``seed`` by a generator of their own,
    and any augmentation runs under a forked global RNG seeded from ``seed`` and
    the call's index: drawing them never moves the global RNG (training's data
    order and noise stay those of a run without them), and every DDP rank and a
    resumed run draw the same batches. Wraps around after one pass.
    """
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))
    calls = [0]

    def sample() -> tuple[torch.Tensor, torch.Tensor]:
        start = (calls[0] * batch_size) % len(order)
        positions = order[start:start + batch_size].tolist()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed * 1_000_003 + calls[0])
            fetch = getattr(dataset, "__getitems__", None)
            batch = collate_batch(fetch(positions) if fetch else [dataset[i] for i in positions])
        calls[0] += 1
        return batch[0], batch[1]

    return sample


def read_idx(path: str | os.PathLike) -> torch.Tensor:
    """Read an idx file (the MNIST format; ``.gz`` is decompressed on the fly) into a tensor."""
    path = Path(path)
    with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an idx file (bad magic number)")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    offset = 4 + 4 * ndim
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(data) - offset != expected:
        raise ValueError(f"{path}: header says shape {shape} ({expected} bytes), file holds {len(data) - offset}")
    array = np.frombuffer(data, dtype=dtype, offset=offset).reshape(shape)
    return torch.from_numpy(array.astype(dtype.newbyteorder("="), copy=True))


def data_dir() -> Path:
    """Where datasets live by default: ``$HAM_BENCH_DATA``, else ``./data``."""
    return Path(os.environ.get("HAM_BENCH_DATA", "data"))


def build_datasets(cfg: Mapping) -> DataBundle:
    """Train and eval sets for ``cfg.name`` (see the module docstring for split and subset rules)."""
    name = cfg.get("name")
    if name not in DATASETS:
        raise ValueError(f"dataset.name must be one of {', '.join(DATASETS)} (got {name!r})")
    eval_split = cfg.get("eval_split", "test") or "test"
    if eval_split not in EVAL_SPLITS:
        raise ValueError(f"dataset.eval_split must be one of {', '.join(EVAL_SPLITS)} (got {eval_split!r})")
    val_fraction = float(cfg.get("val_fraction", 0.1) or 0.0)
    if not 0.0 <= val_fraction < 1.0 or (eval_split == "val" and val_fraction == 0.0):
        raise ValueError(f"dataset.val_fraction must be in (0, 1) when eval_split=val, [0, 1) otherwise "
                         f"(got {val_fraction})")
    subset = cfg.get("subset")
    if subset is not None and (isinstance(subset, bool) or not isinstance(subset, int) or subset < 1):
        raise ValueError(f"dataset.subset must be null or an integer >= 1 (got {subset!r})")
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


# --- Fashion-MNIST ---------------------------------------------------------------------------------


def _fashion_mnist_dirs(root: Path) -> list[Path]:
    """Accepted layouts: the idx files in ``root`` itself (Debian's), or torchvision's ``raw/`` folders."""
    return [root, root / "raw", root / "FashionMNIST" / "raw"]


def _find_fashion_mnist(root: Path) -> dict[str, Path] | None:
    for folder in _fashion_mnist_dirs(root):
        found = {}
        for stem in (*FASHION_MNIST_FILES["train"], *FASHION_MNIST_FILES["test"]):
            for candidate in (folder / stem, folder / f"{stem}.gz"):  # uncompressed first: faster to read
                if candidate.is_file():
                    found[stem] = candidate
                    break
        if len(found) == 4:
            return found
    return None


def _download_fashion_mnist(root: Path) -> None:
    """The four .gz files from torchvision's mirrors, md5-checked, into ``root`` (read as they are)."""
    from urllib.error import URLError

    from torchvision.datasets import FashionMNIST
    from torchvision.datasets.utils import download_url

    for filename, md5 in FashionMNIST.resources:
        errors = []
        for mirror in FashionMNIST.mirrors:
            try:
                download_url(f"{mirror}{filename}", str(root), filename=filename, md5=md5)
                break
            except (RuntimeError, URLError, OSError) as exc:
                errors.append(f"{mirror}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
        else:
            raise DatasetNotFoundError(
                f"Fashion-MNIST download into {root} failed ({'; '.join(errors)}); "
                "apt-get install dataset-fashion-mnist, or set dataset.root=<dir with the idx files>")


def _fashion_mnist(cfg: Mapping):
    if cfg.get("root"):
        roots = [Path(cfg.get("root"))]
    else:  # Debian's package first, then the data dir
        roots = [DEBIAN_FASHION_MNIST, data_dir() / "FashionMNIST"]
    files = next((found for found in map(_find_fashion_mnist, roots) if found), None)
    if files is None and cfg.get("download", False):
        _download_fashion_mnist(roots[-1])
        files = _find_fashion_mnist(roots[-1])
    if files is None:
        looked = ", ".join(str(folder) for root in roots for folder in _fashion_mnist_dirs(root))
        raise DatasetNotFoundError(
            f"Fashion-MNIST not found: looked for train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], "
            f"t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz] in {looked}; get them with "
            "`apt-get install dataset-fashion-mnist`, or set dataset.download=true, "
            "or dataset.root=<dir with the idx files>")
    splits = {}
    for split, (image_stem, label_stem) in FASHION_MNIST_FILES.items():
        images, labels = read_idx(files[image_stem]), read_idx(files[label_stem])
        if images.dim() != 3 or labels.dim() != 1 or len(images) != len(labels):
            raise ValueError(f"Fashion-MNIST {split} files disagree: images {tuple(images.shape)}, "
                             f"labels {tuple(labels.shape)} ({files[image_stem]})")
        splits[split] = (images.unsqueeze(1), labels)
    augment = bool(cfg.get("augment", False))
    train = InMemoryImageDataset(*splits["train"], FASHION_MNIST_MEAN, FASHION_MNIST_STD,
                                 crop_padding=2 if augment else 0, flip=augment)
    test = InMemoryImageDataset(*splits["test"], FASHION_MNIST_MEAN, FASHION_MNIST_STD)
    return train, train.view(augment=False), test, dict(num_classes=10, in_channels=1, image_size=28)


# --- CIFAR-100 -------------------------------------------------------------------------------------


def _read_cifar_pickle(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    with open(path, "rb") as f:
        entry = pickle.load(f, encoding="latin1")
    entry = {key.decode() if isinstance(key, bytes) else key: value for key, value in entry.items()}
    images = np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
    labels = np.asarray(entry["fine_labels"], dtype=np.int64)
    return torch.from_numpy(images.copy()), torch.from_numpy(labels)


def _cifar100(cfg: Mapping):
    root = Path(cfg.get("root") or data_dir())
    candidates = [root / "cifar-100-python", root]
    folder = next((c for c in candidates if (c / "train").is_file() and (c / "test").is_file()), None)
    if folder is None and cfg.get("download", False):
        from urllib.error import URLError

        from torchvision.datasets import CIFAR100

        try:
            CIFAR100(str(root), train=True, download=True)  # the md5-checked archive, extracted into root
        except (RuntimeError, URLError, OSError) as exc:
            raise DatasetNotFoundError(f"CIFAR-100 download into {root} failed ({str(exc).splitlines()[0]}); "
                                       "set dataset.root=<dir containing cifar-100-python/>") from None
        folder = root / "cifar-100-python"
    if folder is None:
        raise DatasetNotFoundError(
            f"CIFAR-100 not found: looked for the python-version pickles cifar-100-python/train and "
            f"cifar-100-python/test in {root}; set dataset.download=true (torchvision fetches ~170 MB into "
            f"{root}), or dataset.root=<dir containing cifar-100-python/>")
    augment = bool(cfg.get("augment", True))
    train = InMemoryImageDataset(*_read_cifar_pickle(folder / "train"), CIFAR100_MEAN, CIFAR100_STD,
                                 crop_padding=4 if augment else 0, flip=augment)
    test = InMemoryImageDataset(*_read_cifar_pickle(folder / "test"), CIFAR100_MEAN, CIFAR100_STD)
    return train, train.view(augment=False), test, dict(num_classes=100, in_channels=3, image_size=32)


# --- ImageNet (ImageFolder) ------------------------------------------------------------------------


def imagenet_transforms(image_size: int = 224, augment: bool = True):
    """(train, eval) transforms: RandomResizedCrop + flip / resize to size*256/224 + center crop; ImageNet normalize."""
    from torchvision import transforms as T

    normalize = T.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    evaluation = T.Compose([T.Resize(round(image_size * 256 / 224)), T.CenterCrop(image_size), T.ToTensor(),
                            normalize])
    if not augment:
        return evaluation, evaluation
    train = T.Compose([T.RandomResizedCrop(image_size), T.RandomHorizontalFlip(), T.ToTensor(), normalize])
    return train, evaluation


def _imagenet(cfg: Mapping):
    from torchvision.datasets import ImageFolder

    root = Path(cfg.get("root") or data_dir() / "imagenet")
    image_size = int(cfg.get("image_size", 224))
    train_transform, eval_transform = imagenet_transforms(image_size, bool(cfg.get("augment", True)))
    how = (f"expected ImageFolder layout {root}/train/<class>/<image> and {root}/val/<class>/<image> "
           "(the same class folders in both; sort the flat ILSVRC2012 val images into them first); "
           "ImageNet cannot be downloaded automatically, set dataset.root=<dir with train/ and val/>")
    if not (root / "train").is_dir() or not (root / "val").is_dir():
        raise DatasetNotFoundError(f"ImageNet not found: {how}")
    try:
        train = ImageFolder(str(root / "train"), transform=train_transform)
        test = ImageFolder(str(root / "val"), transform=eval_transform)
    except FileNotFoundError as exc:
        raise DatasetNotFoundError(f"ImageNet incomplete ({str(exc).splitlines()[0]}): {how}") from None
    if train.classes != test.classes:
        raise DatasetNotFoundError(f"ImageNet train/ has {len(train.classes)} classes and val/ has "
                                   f"{len(test.classes)}, or their names differ: {how}")
    train_eval_view = copy.copy(train)
    train_eval_view.transform = eval_transform
    return train, train_eval_view, test, dict(num_classes=len(train.classes), in_channels=3, image_size=image_size)


# --- FakeData ---------------------------------------------------------------------------------------


def _fake(cfg: Mapping):
    """torchvision FakeData: train uses per-index seeds [0, N), test [N, N + max(1, N // 6)); labels are random."""
    from torchvision import transforms as T
    from torchvision.datasets import FakeData

    num_samples, image_size = int(cfg.get("num_samples", 512)), int(cfg.get("image_size", 32))
    num_classes, in_channels = int(cfg.get("num_classes", 10)), int(cfg.get("in_channels", 3))
    transform = T.Compose([T.ToTensor(), T.Normalize((0.5,) * in_channels, (0.25,) * in_channels)])
    shape = (in_channels, image_size, image_size)
    train = FakeData(num_samples, shape, num_classes, transform=transform)
    test = FakeData(max(1, num_samples // 6), shape, num_classes, transform=transform, random_offset=num_samples)
    return train, train, test, dict(num_classes=num_classes, in_channels=in_channels, image_size=image_size)
