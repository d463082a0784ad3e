"""Datasets and loaders, on tiny files written here in each dataset's true on-disk format, and on the
real Fashion-MNIST that Debian's dataset-fashion-mnist installs."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from omegaconf import OmegaConf
from PIL import Image
from torchvision import transforms as T

from ham_bench import data
from ham_bench.data import sources  # noqa: F401 (data.sources, patched below)
from ham_bench.data import DatasetNotFoundError, ImageBatch, build_datasets, build_loader, read_idx

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "dataset"
FMNIST_NORMALIZE = T.Compose([T.ToTensor(), T.Normalize((0.2860,), (0.3530,))])


def dataset_config(config_name: str, /, **overrides):
    cfg = OmegaConf.load(CONFIGS / f"{config_name}.yaml")
    for key, value in overrides.items():
        cfg[key] = value
    return cfg


def write_idx(path: Path, array: np.ndarray) -> None:
    """The idx format: zero, zero, dtype code, ndim, big-endian int32 dims, big-endian data."""
    code = {np.dtype(np.uint8): 0x08, np.dtype(np.int32): 0x0C, np.dtype(np.float32): 0x0D}[array.dtype]
    payload = struct.pack(">BBBB", 0, 0, code, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    payload += array.astype(array.dtype.newbyteorder(">")).tobytes()
    with (gzip.open(path, "wb") if path.suffix == ".gz" else open(path, "wb")) as f:
        f.write(payload)


def tiny_fashion_mnist(folder: Path, n_train: int = 60, n_test: int = 12, gz: bool = True) -> dict:
    """Idx files whose pixel (0, 0) holds the sample's id, so a sample can be recognized after loading."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    arrays = {}
    for prefix, n, first_id in (("train", n_train, 0), ("t10k", n_test, 200)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        images[:, 0, 0] = np.arange(first_id, first_id + n)
        labels = (np.arange(n) % 10).astype(np.uint8)
        suffix = ".gz" if gz else ""
        write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", images)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", labels)
        arrays[prefix] = (images, labels)
    return arrays


def sample_id(image: torch.Tensor) -> int:
    """Undo Fashion-MNIST normalization at pixel (0, 0)."""
    return round(float(image[0, 0, 0] * 0.3530 + 0.2860) * 255)


def test_read_idx_round_trips_every_stored_dtype(tmp_path):
    rng = np.random.default_rng(1)
    cases = {"images-idx3-ubyte.gz": rng.integers(0, 256, (5, 4, 3), dtype=np.uint8),
             "labels-idx1-ubyte": rng.integers(0, 10, 7, dtype=np.uint8),
             "ints.idx": rng.integers(-1000, 1000, (2, 6), dtype=np.int32),
             "floats.idx.gz": rng.standard_normal((3, 2)).astype(np.float32)}
    for name, array in cases.items():
        write_idx(tmp_path / name, array)
        loaded = read_idx(tmp_path / name)
        assert loaded.shape == array.shape and loaded.numpy().dtype == array.dtype.newbyteorder("=")
        np.testing.assert_array_equal(loaded.numpy(), array)
    (tmp_path / "bad").write_bytes(b"\x01\x02\x08\x01\x00\x00\x00\x05abcde")
    with pytest.raises(ValueError, match="not an idx file"):
        read_idx(tmp_path / "bad")
    write_idx(tmp_path / "short", np.zeros((4, 2), np.uint8))
    (tmp_path / "short").write_bytes((tmp_path / "short").read_bytes()[:-1])
    with pytest.raises(ValueError, match=r"shape \(4, 2\)"):
        read_idx(tmp_path / "short")


@pytest.mark.parametrize("gz", [True, False], ids=["debian-gz", "uncompressed"])
def test_fashion_mnist_tiny_idx_files_read_back_exactly(tmp_path, gz):
    arrays = tiny_fashion_mnist(tmp_path, gz=gz)
    bundle = build_datasets(dataset_config("fashion_mnist", root=str(tmp_path)))
    assert (len(bundle.train), len(bundle.eval)) == (60, 12)
    assert (bundle.num_classes, bundle.in_channels, bundle.image_size) == (10, 1, 28)
    assert (bundle.name, bundle.eval_split_name) == ("fashion_mnist", "test")
    for split, dataset in (("train", bundle.train), ("t10k", bundle.eval)):
        images, labels = arrays[split]
        for i in (0, 7, len(images) - 1):
            image, label = dataset[i]
            expected = FMNIST_NORMALIZE(Image.fromarray(images[i]))  # torchvision's own pipeline
            assert image.shape == (1, 28, 28) and image.dtype == torch.float32
            torch.testing.assert_close(image, expected, rtol=0, atol=0)
            assert label == labels[i]


def test_fashion_mnist_matches_torchvision_reading_the_same_files(tmp_path):
    """torchvision's FashionMNIST reads <root>/FashionMNIST/raw/*-ubyte; so do we, with identical samples."""
    tiny_fashion_mnist(tmp_path / "FashionMNIST" / "raw", gz=False)
    ours = build_datasets(dataset_config("fashion_mnist", root=str(tmp_path)))
    for train, dataset in ((True, ours.train), (False, ours.eval)):
        reference = torchvision.datasets.FashionMNIST(str(tmp_path), train=train, transform=FMNIST_NORMALIZE)
        assert len(reference) == len(dataset)
        for i in range(len(dataset)):
            image, label = dataset[i]
            expected_image, expected_label = reference[i]
            assert torch.equal(image, expected_image) and label == expected_label


@pytest.mark.skipif(not data.DEBIAN_FASHION_MNIST.is_dir(),
                    reason="needs the real data: apt-get install dataset-fashion-mnist")
def test_real_fashion_mnist_from_the_debian_package():
    bundle = build_datasets(dataset_config("fashion_mnist"))
    assert (len(bundle.train), len(bundle.eval), bundle.num_classes) == (60000, 10000, 10)
    train_labels = next(iter(build_loader(bundle.train, 60000, shuffle=False))).labels
    eval_labels = next(iter(build_loader(bundle.eval, 10000, shuffle=False))).labels
    assert torch.bincount(train_labels).tolist() == [6000] * 10
    assert torch.bincount(eval_labels).tolist() == [1000] * 10
    images = next(iter(build_loader(bundle.train, 20000, shuffle=False))).images
    assert abs(images.mean().item()) < 0.02 and abs(images.std().item() - 1) < 0.02  # normalization constants
    assert train_labels[:10].tolist() == [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]  # the published file's first labels


def test_default_root_falls_back_to_the_data_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(data.sources, "DEBIAN_FASHION_MNIST", tmp_path / "not-installed")
    monkeypatch.setenv("HAM_BENCH_DATA", str(tmp_path / "data"))
    with pytest.raises(DatasetNotFoundError) as missing:
        build_datasets(dataset_config("fashion_mnist"))
    message = str(missing.value)
    assert "\n" not in message and isinstance(missing.value, FileNotFoundError)
    assert str(tmp_path / "not-installed") in message and str(tmp_path / "data" / "FashionMNIST") in message
    assert "apt-get install dataset-fashion-mnist" in message and "dataset.download=true" in message
    tiny_fashion_mnist(tmp_path / "data" / "FashionMNIST")
    assert len(build_datasets(dataset_config("fashion_mnist")).train) == 60


def test_missing_files_raise_one_line_saying_where_and_how(tmp_path):
    nowhere = tmp_path / "nowhere"
    expectations = {"fashion_mnist": ["apt-get install dataset-fashion-mnist", "dataset.download=true",
                                      "dataset.root="],
                    "cifar100": ["cifar-100-python/train", "dataset.download=true", "dataset.root="],
                    "imagenet": [f"{nowhere}/train/<class>/", f"{nowhere}/val/<class>/", "dataset.root="]}
    for name, phrases in expectations.items():
        with pytest.raises(DatasetNotFoundError) as missing:
            build_datasets(dataset_config(name, root=str(nowhere)))
        message = str(missing.value)
        assert "\n" not in message and str(nowhere) in message, message
        for phrase in phrases:
            assert phrase in message, (name, phrase, message)


def test_validation_split_is_disjoint_deterministic_and_unaugmented(tmp_path):
    tiny_fashion_mnist(tmp_path)
    cfg = dataset_config("fashion_mnist", root=str(tmp_path), eval_split="val", val_fraction=0.25, augment=True)
    bundle = build_datasets(cfg)
    assert bundle.eval_split_name == "val" and (len(bundle.train), len(bundle.eval)) == (45, 15)
    val_ids = [sample_id(bundle.eval[i][0]) for i in range(len(bundle.eval))]
    plain = build_datasets(dataset_config("fashion_mnist", root=str(tmp_path), eval_split="val", val_fraction=0.25))
    train_ids = [sample_id(plain.train[i][0]) for i in range(len(plain.train))]
    assert sorted(val_ids + train_ids) == list(range(60))  # a partition of the training file, no test sample
    again = build_datasets(cfg)
    assert [sample_id(again.eval[i][0]) for i in range(15)] == val_ids  # same hold-out every time
    for i in range(len(bundle.eval)):  # validation samples are never augmented
        assert torch.equal(bundle.eval[i][0], plain.eval[i][0])
    # the hold-out does not depend on the run's seed
    torch.manual_seed(123)
    assert [sample_id(build_datasets(cfg).eval[i][0]) for i in range(15)] == val_ids


def test_subset_keeps_a_fixed_pick_of_n_train_and_n_over_6_eval_samples(tmp_path):
    tiny_fashion_mnist(tmp_path)
    full = build_datasets(dataset_config("fashion_mnist", root=str(tmp_path)))
    small = build_datasets(dataset_config("fashion_mnist", root=str(tmp_path), subset=24))
    assert (len(small.train), len(small.eval)) == (24, 4)
    train_ids = [sample_id(small.train[i][0]) for i in range(24)]
    eval_ids = [sample_id(small.eval[i][0]) for i in range(4)]
    permutation = torch.randperm(60, generator=torch.Generator().manual_seed(data.SPLIT_SEED))
    assert train_ids == permutation[:24].tolist()
    assert eval_ids == [200 + i for i in torch.randperm(12, generator=torch.Generator().manual_seed(0))[:4].tolist()]
    assert all(sample_id(full.train[i][0]) == i for i in range(60))  # without subset: file order
    on_val = build_datasets(dataset_config("fashion_mnist", root=str(tmp_path), subset=24, eval_split="val"))
    val_ids = permutation[:6].tolist()  # val_fraction 0.1 of 60
    assert [sample_id(on_val.eval[i][0]) for i in range(len(on_val.eval))] == val_ids[:4]
    assert [sample_id(on_val.train[i][0]) for i in range(24)] == permutation[6:30].tolist()
    assert len(build_datasets(dataset_config("fashion_mnist", root=str(tmp_path), subset=5)).eval) == 1
    assert len(build_datasets(dataset_config("fashion_mnist", root=str(tmp_path), subset=10**6)).train) == 60


def reference_crop_flip(image: torch.Tensor, padding: int, top: int, left: int, flip: bool) -> torch.Tensor:
    h, w = image.shape[-2:]
    crop = F.pad(image, (padding,) * 4)[..., top:top + h, left:left + w]
    return crop.flip(-1) if flip else crop


def test_augmentation_is_a_zero_padded_crop_and_flip_of_the_original(tmp_path):
    arrays = tiny_fashion_mnist(tmp_path)
    bundle = build_datasets(dataset_config("fashion_mnist", root=str(tmp_path), augment=True))
    originals = torch.from_numpy(arrays["train"][0]).unsqueeze(1)
    offsets = [(top, left, flip) for top in range(5) for left in range(5) for flip in (False, True)]
    candidates = torch.stack([reference_crop_flip(originals, 2, *offset) for offset in offsets], 1)  # (60, 50, ...)
    torch.manual_seed(0)
    seen = torch.zeros(len(offsets), dtype=torch.bool)
    for _ in range(10):
        batch = bundle.train.__getitems__(list(range(60)))
        raw = (batch.images * 0.3530 + 0.2860) * 255
        assert torch.allclose(raw, raw.round(), atol=1e-3)
        matches = (candidates == raw.round().to(torch.uint8).unsqueeze(1)).flatten(2).all(-1)  # (60, 50)
        assert matches.any(1).all(), "every augmented sample is a crop/flip of its own original"
        seen |= matches.any(0)
    assert seen.all()  # every offset and both flips occur
    assert torch.equal(bundle.eval[0][0], FMNIST_NORMALIZE(Image.fromarray(arrays["t10k"][0][0])))  # test: plain


def write_cifar100(root: Path, n_train: int = 40, n_test: int = 10) -> dict:
    """cifar-100-python/{train,test,meta}: pickles (protocol 2, str keys) as in the official archive."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(2)
    arrays = {}
    for split, n in (("train", n_train), ("test", n_test)):
        entry = {"filenames": [f"img_{i}.png" for i in range(n)], "batch_label": f"{split} batch",
                 "fine_labels": rng.integers(0, 100, n).tolist(), "coarse_labels": rng.integers(0, 20, n).tolist(),
                 "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8)}
        with open(folder / split, "wb") as f:
            pickle.dump(entry, f, protocol=2)
        arrays[split] = entry
    with open(folder / "meta", "wb") as f:
        pickle.dump({"fine_label_names": [f"class_{i}" for i in range(100)],
                     "coarse_label_names": [f"super_{i}" for i in range(20)]}, f, protocol=2)
    return arrays


def test_cifar100_pickles_read_through_the_config(tmp_path):
    arrays = write_cifar100(tmp_path)
    bundle = build_datasets(dataset_config("cifar100", root=str(tmp_path), augment=False))
    assert (len(bundle.train), len(bundle.eval)) == (40, 10)
    assert (bundle.num_classes, bundle.in_channels, bundle.image_size) == (100, 3, 32)
    normalize = T.Compose([T.ToTensor(), T.Normalize(data.CIFAR100_MEAN, data.CIFAR100_STD)])
    for split, dataset in (("train", bundle.train), ("test", bundle.eval)):
        for i in (0, 5, len(dataset) - 1):
            image, label = dataset[i]
            hwc = arrays[split]["data"][i].reshape(3, 32, 32).transpose(1, 2, 0)  # as torchvision's CIFAR100
            torch.testing.assert_close(image, normalize(Image.fromarray(hwc)), rtol=0, atol=0)
            assert label == arrays[split]["fine_labels"][i]
    augmented = build_datasets(dataset_config("cifar100", root=str(tmp_path)))  # config default: augment
    assert augmented.train.crop_padding == 4 and augmented.train.flip
    batch = next(iter(build_loader(augmented.train, 16, shuffle=True)))
    assert batch.images.shape == (16, 3, 32, 32) and batch.labels.dtype == torch.long


def write_image_folder(root: Path, classes=("cat", "dog", "emu"), per_class: int = 3) -> None:
    rng = np.random.default_rng(3)
    for split in ("train", "val"):
        for name in classes:
            (root / split / name).mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, (40 + i, 52, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{name}_{i}.JPEG", quality=90)


def test_imagenet_image_folder_of_real_jpegs(tmp_path):
    write_image_folder(tmp_path)
    bundle = build_datasets(dataset_config("imagenet", root=str(tmp_path), image_size=32))
    assert (len(bundle.train), len(bundle.eval), bundle.num_classes) == (9, 9, 3)
    assert (bundle.in_channels, bundle.image_size) == (3, 32)
    assert bundle.eval.classes == ["cat", "dog", "emu"]
    expected = T.Compose([T.Resize(37), T.CenterCrop(32), T.ToTensor(),
                          T.Normalize(data.IMAGENET_MEAN, data.IMAGENET_STD)])
    with Image.open(tmp_path / "val" / "dog" / "dog_1.JPEG") as jpeg:
        reference = expected(jpeg.convert("RGB"))
    image, label = bundle.eval[4]
    assert label == 1 and torch.equal(image, reference)
    images, labels = next(iter(build_loader(bundle.train, 9, shuffle=True, seed=0)))
    assert images.shape == (9, 3, 32, 32) and sorted(labels.tolist()) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    held_out = build_datasets(dataset_config("imagenet", root=str(tmp_path), image_size=32, eval_split="val",
                                             val_fraction=0.34))
    assert (len(held_out.train), len(held_out.eval)) == (6, 3)
    assert torch.equal(held_out.eval[0][0], held_out.eval[0][0])  # the eval transform: deterministic


def test_imagenet_flat_val_folder_says_how_to_fix_it(tmp_path):
    write_image_folder(tmp_path)
    for jpeg in (tmp_path / "val").glob("*/*.JPEG"):
        jpeg.rename(tmp_path / "val" / jpeg.name)
    for folder in (tmp_path / "val").iterdir():
        if folder.is_dir():
            folder.rmdir()
    with pytest.raises(DatasetNotFoundError) as missing:
        build_datasets(dataset_config("imagenet", root=str(tmp_path)))
    assert "\n" not in str(missing.value) and "sort the flat ILSVRC2012 val images" in str(missing.value)


def test_fake_data_shapes_and_disjoint_splits():
    bundle = build_datasets(dataset_config("fake", num_samples=60, image_size=16, in_channels=1, num_classes=4))
    assert (len(bundle.train), len(bundle.eval)) == (60, 10)
    assert (bundle.num_classes, bundle.in_channels, bundle.image_size) == (4, 1, 16)
    image, label = bundle.train[3]
    assert image.shape == (1, 16, 16) and 0 <= label < 4
    assert torch.equal(image, bundle.train[3][0])  # generated from the index: deterministic
    train_images = torch.stack([bundle.train[i][0] for i in range(60)])
    eval_images = torch.stack([bundle.eval[j][0] for j in range(10)])
    assert not (train_images.unsqueeze(1) == eval_images.unsqueeze(0)).flatten(2).all(-1).any()
    batch = next(iter(build_loader(bundle.train, 8, shuffle=True)))
    assert batch[0].shape == (8, 1, 16, 16) and batch[1].shape == (8,)


def loader_ids(loader) -> list[int]:
    return [sample_id(image) for images, _ in loader for image in images]


def test_loader_order_is_fixed_by_its_seed(tmp_path):
    tiny_fashion_mnist(tmp_path)
    train = build_datasets(dataset_config("fashion_mnist", root=str(tmp_path))).train
    first = loader_ids(build_loader(train, 16, shuffle=True, seed=5))
    assert loader_ids(build_loader(train, 16, shuffle=True, seed=5)) == first
    assert sorted(first) == list(range(60)) and first != list(range(60))
    assert loader_ids(build_loader(train, 16, shuffle=True, seed=6)) != first
    assert loader_ids(build_loader(train, 16, shuffle=False)) == list(range(60))
    loader = build_loader(train, 16, shuffle=True, seed=5, drop_last=True)
    assert len(loader) == 3 and len(loader_ids(loader)) == 48
    batch = next(iter(loader))
    assert isinstance(batch, ImageBatch) and batch.images.shape == (16, 1, 28, 28) and batch.labels.dtype == torch.long
    # re-seeding the loader's generator (what the trainer does each epoch) replays that epoch
    loader.generator.manual_seed(11)
    epoch = loader_ids(loader)
    loader.generator.manual_seed(11)
    assert loader_ids(loader) == epoch
    sampler = torch.utils.data.SequentialSampler(range(10))
    assert loader_ids(build_loader(train, 4, shuffle=True, sampler=sampler)) == list(range(10))


def test_loader_workers_reproduce_augmented_batches(tmp_path):
    tiny_fashion_mnist(tmp_path)
    train = build_datasets(dataset_config("fashion_mnist", root=str(tmp_path), augment=True)).train

    def epoch(seed):
        return torch.cat([images for images, _ in build_loader(train, 20, shuffle=True, num_workers=2, seed=seed)])

    first = epoch(3)
    assert torch.equal(epoch(3), first) and not torch.equal(epoch(4), first)


def test_bad_values_name_the_key():
    cases = {"name": ("mnist", r"dataset.name must be one of \[fashion_mnist, cifar100, imagenet, fake\]"),
             "eval_split": ("train", r"dataset.eval_split must be one of \[test, val\]"),
             "val_fraction": (1.0, "dataset.val_fraction must be in"),
             "subset": (0, "dataset.subset must be an integer >= 1"),
             "subsett": (5, "dataset.subsett is not a setting of dataset=fake")}
    for key, (value, message) in cases.items():
        with pytest.raises(ValueError, match=message):
            build_datasets(dataset_config("fake", **{key: value}))
    with pytest.raises(ValueError, match="dataset.val_fraction"):
        build_datasets(dataset_config("fake", eval_split="val", val_fraction=0.0))


def test_every_dataset_config_has_the_shared_keys():
    shared = {"name", "root", "download", "augment", "val_fraction", "eval_split", "subset"}
    names = sorted(path.stem for path in CONFIGS.glob("*.yaml"))
    assert names == ["cifar100", "fake", "fashion_mnist", "imagenet"]
    for name in names:
        cfg = OmegaConf.load(CONFIGS / f"{name}.yaml")
        assert shared <= set(cfg.keys()) and cfg.name == name and cfg.eval_split == "test" and cfg.subset is None
