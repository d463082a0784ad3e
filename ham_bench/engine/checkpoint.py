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

FORMAT = "ham-bench-checkpoint/3"  # /3 adds ``progress`` (mid-epoch position); /2 files still load
READS = ("ham-bench-checkpoint/2", FORMAT)
CHECKPOINT_NAME = "checkpoint.pt"
REQUIRED = ("epoch", "model", "optimizer", "scheduler", "sparsifier", "meters", "rng", "best_acc", "config",
            "steps_per_epoch")


class CheckpointError(ConfigError):
    """A checkpoint that cannot be used; the message is one line naming the file and why."""


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` (plus the format stamp) to ``path`` atomically."""
    atomic_io.torch_save(path, {**state, "format": FORMAT})


def load_checkpoint(path: Path, map_location="cpu", required: tuple[str, ...] = REQUIRED) -> dict[str, Any]:
    """The checkpoint at ``path``, loaded with weights_only; CheckpointError if it cannot be trusted or used.

    ``required``: the entries it must hold (all a resume needs, by default).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no checkpoint there")
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive; a cut one has no central directory
        raise CheckpointError(f"{path}: not a readable checkpoint (truncated or corrupt: not a complete "
                              f"torch.save archive)")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        reason = next((line for line in lines if "GLOBAL" in line or "Unsupported" in line), None) or \
            (lines[0] if lines else "unsafe content")
        raise CheckpointError(f"{path}: refused, it holds objects that would run code when loaded "
                              f"({reason[:160]}); it was not loaded") from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as error:
        raise CheckpointError(f"{path}: not a readable checkpoint (truncated or corrupt: "
                              f"{type(error).__name__})") from None
    if not isinstance(state, dict) or state.get("format") not in READS:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"{path}: format {found!r}, this ham-bench reads {' or '.join(map(repr, READS))} "
                              f"(written by another version or program)")
    missing = [key for key in required if key not in state]
    if missing:
        raise CheckpointError(f"{path}: not a complete checkpoint, it has no {', '.join(missing)}")
    return state
