"""Dataset files: Fashion-MNIST (idx), CIFAR-100 (python pickles), ImageNet (ImageFolder) and FakeData.

Each reader returns ``(train, train_eval_view, test, meta)``: the training set,
the same samples without augmentation (for a validation hold-out), the test
set and ``meta`` (``num_classes``, ``in_channels``, ``image_size``).
Missing files raise :class:`DatasetNotFoundError` with one line saying where
we looked and how to get them.
"""

from __future__ import annotations

import copy
import gzip
import os
import pickle
from pathlib import Path
from typing import Mapping

import numpy as np
import torch

from ham_bench.data.images import InMemoryImageDataset

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
