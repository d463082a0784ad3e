"""Checkpoints: written atomically, read once, loaded without running code, stamped with a format version.

A checkpoint is a dict of tensors and plain Python values (numbers, strings,
lists, dicts, None): the model, optimizer (HAM/SAM included), scheduler,
sparsifier and meter states, the RNG state, the run's resolved config and
``format``. It is read with ``torch.load(weights_only=True)``, which
refuses anything that would need pickle to run code, so a checkpoint passed
between colleagues cannot execute anything; a file that is not a checkpoint
of this format (an older ham-bench, another program, a truncated or
corrupt file) is refused with one line (``CheckpointError``).
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from ham_bench import atomic_io
from sparsifiers.config import ConfigError

FORMAT = "ham-bench-checkpoint/2"
CHECKPOINT_NAME = "checkpoint.pt"


class CheckpointError(ConfigError):
    """A checkpoint that cannot be used; the message is one line naming the file and why."""


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` (plus the format stamp) to ``path`` atomically."""
    atomic_io.torch_save(path, {**state, "format": FORMAT})


def load_checkpoint(path: Path, map_location="cpu") -> dict[str, Any]:
    """The checkpoint at ``path``, loaded with weights_only; CheckpointError if it cannot be trusted or used."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no checkpoint there")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else "unsafe content"
        raise CheckpointError(f"{path}: refused, it holds objects that would run code when loaded "
                              f"({reason[:160]})") from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as error:
        raise CheckpointError(f"{path}: not a readable checkpoint (truncated or corrupt: "
                              f"{type(error).__name__})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"{path}: format {found!r}, this ham-bench reads {FORMAT!r} "
                              f"(written by another version or program)")
    return state
