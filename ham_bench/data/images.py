"""In-memory image datasets served a batch at a time, with vectorized augmentation, and seeded loaders."""

from __future__ import annotations

import copy
from typing import Any, NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler, default_collate


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


class ResumableBatchSampler(BatchSampler):
    """A BatchSampler that can leave out the first batches of its next pass without loading them.

    ``skip_next(k)`` before an epoch resumed after its k-th step: the sampler still
    draws the epoch's whole order (the same draws from the same generator as an
    uninterrupted epoch), and the first k batches of indices are dropped before any
    sample is read. The count holds for every pass until ``skip_next(0)``: a
    DataLoader with workers starts passes it throws away (an iterator made and
    dropped prefetches), and each must skip alike.
    """

    def __init__(self, sampler, batch_size: int, drop_last: bool):
        super().__init__(sampler, batch_size, drop_last)
        self.skip = 0

    def skip_next(self, batches: int) -> None:
        self.skip = int(batches)

    def __iter__(self):
        skip = self.skip
        for index, batch in enumerate(super().__iter__()):
            if index >= skip:
                yield batch


def build_loader(dataset: Dataset, batch_size: int, shuffle: bool, num_workers: int = 0, seed: int = 0,
                 drop_last: bool = False, pin_memory: bool = False, sampler=None) -> DataLoader:
    """A DataLoader whose order is fixed by ``seed`` (its own ``torch.Generator``, also seeding workers).

    With a ``sampler`` (e.g. DistributedSampler) the sampler decides the order and
    ``shuffle`` is ignored. Workers are not persistent, so re-seeding
    ``loader.generator`` before an epoch fixes that epoch's order and its
    workers' augmentation. Batches come from a :class:`ResumableBatchSampler`
    over the sampler DataLoader itself would make (``RandomSampler`` on the same
    generator when shuffling), so the order is the one a plain DataLoader gives.
    """
    generator = torch.Generator()
    generator.manual_seed(seed)
    if sampler is None:
        sampler = RandomSampler(dataset, generator=generator) if shuffle else SequentialSampler(dataset)
    return DataLoader(dataset, batch_sampler=ResumableBatchSampler(sampler, batch_size, drop_last),
                      num_workers=num_workers, generator=generator, pin_memory=pin_memory, collate_fn=collate_batch)


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
