"""Bool masks as packed bits, saved compressed: for topology studies and for the sparse export.

One bit per weight (``np.packbits`` of the flattened mask, C order), stored
in a ``.npz`` (``np.savez_compressed``) together with a small JSON header
that names the layers and their shapes. The file loads with
``allow_pickle=False``::

    save_masks("masks/epoch_0010.npz", masks, meta={"epoch": 10})
    masks, meta = load_masks("masks/epoch_0010.npz")   # dict[name, BoolTensor], dict

Writes are atomic (temporary file + rename), like every run output.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from ham_bench import atomic_io

FORMAT = "ham-bench-masks/1"
HEADER_KEY = "header"


def pack_bits(mask: torch.Tensor) -> np.ndarray:
    """A bool tensor as packed bits (uint8, 8 weights a byte, flattened in C order)."""
    return np.packbits(mask.detach().to("cpu", torch.bool).numpy().reshape(-1))


def unpack_bits(packed: np.ndarray, shape) -> torch.Tensor:
    """The bool tensor of ``shape`` that ``pack_bits`` packed."""
    count = math.prod(int(d) for d in shape)
    return torch.from_numpy(np.unpackbits(packed, count=count).astype(bool).reshape(tuple(shape)))


def encode_header(header: Mapping[str, Any]) -> np.ndarray:
    """JSON as a uint8 array, so an ``.npz`` needs no pickle to carry it."""
    return np.frombuffer(json.dumps(header, sort_keys=True).encode(), dtype=np.uint8)


def decode_header(array: np.ndarray) -> dict[str, Any]:
    return json.loads(array.tobytes().decode())


def write_npz(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """``np.savez_compressed`` to ``path``, atomically."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    atomic_io.write_bytes(Path(path), buffer.getvalue())


def save_masks(path, masks: Mapping[str, torch.Tensor], meta: Mapping[str, Any] | None = None) -> int:
    """Write ``masks`` (name -> bool tensor) as packed bits; returns the file size in bytes."""
    names = list(masks)
    arrays = {f"mask_{index}": pack_bits(masks[name]) for index, name in enumerate(names)}
    header = {"format": FORMAT, "names": names, "shapes": [list(masks[name].shape) for name in names],
              "meta": dict(meta or {})}
    arrays[HEADER_KEY] = encode_header(header)
    write_npz(Path(path), arrays)
    return Path(path).stat().st_size


def load_masks(path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The masks and the ``meta`` mapping ``save_masks`` wrote."""
    with np.load(Path(path), allow_pickle=False) as data:
        header = decode_header(data[HEADER_KEY])
        if header.get("format") != FORMAT:
            raise ValueError(f"{path} is not a ham-bench mask dump (format {header.get('format')!r})")
        masks = {name: unpack_bits(data[f"mask_{index}"], shape)
                 for index, (name, shape) in enumerate(zip(header["names"], header["shapes"]))}
    return masks, header["meta"]
