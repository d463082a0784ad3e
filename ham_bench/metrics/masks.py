"""Mask dumps for topology studies: the masks of chosen epochs, saved as packed bits under ``masks/``.

``dump_masks_at=[10, 20]`` writes ``masks/epoch_0010.npz`` and
``masks/epoch_0020.npz`` (``ham_bench.mask_dump`` format: one bit a weight,
loads with ``allow_pickle=False``). Every masked layer is in the file; a layer
with no mask at that time (AC/DC in a dense phase) is all ones.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ham_bench.mask_dump import save_masks
from ham_bench.metrics.meter import Meter


def mask_state(sparsifier) -> dict[str, torch.Tensor]:
    """The current mask of every masked layer (all ones where ``masks()`` has none)."""
    masks = sparsifier.masks()
    weights = sparsifier.effective_weights()
    return {key: (masks[key] if key in masks else torch.ones_like(weights[key], dtype=torch.bool))
            for key in sparsifier.masked_keys}


def dump_masks(path, sparsifier, epoch: int | None = None) -> int:
    """Save the current mask state as packed bits (``.npz``); returns the file size in bytes."""
    return save_masks(path, mask_state(sparsifier), {"epoch": epoch, "sparsifier": sparsifier.name})


class MaskDumpMeter(Meter):
    """Writes the mask state at the end of the listed (1-based) epochs; reports nothing."""

    name = "mask_dumps"

    def __init__(self, sparsifier, run_dir: Path, epochs=()):
        self.sparsifier = sparsifier
        self.run_dir = Path(run_dir)
        self.epochs = set(int(e) for e in epochs)

    def epoch_report(self, epoch: int, weights) -> dict:
        if epoch + 1 in self.epochs:
            dump_masks(self.run_dir / "masks" / f"epoch_{epoch + 1:04d}.npz", self.sparsifier, epoch + 1)
        return {}
