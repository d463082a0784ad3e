"""Atomic file writes: write to a temporary file in the same folder, then rename.

A reader (or a crash) never sees a half-written metrics file, summary,
checkpoint, table or figure: it sees the previous version or the new one.
Every writer of ham-bench goes through here: the training loop's (JSON,
JSONL, checkpoints) and the analysis side's (markdown, CSV, PNG).

Files are created with ``mkstemp``'s private mode (0600) unless ``mode`` is
given; the analysis outputs, meant to be read by others, pass ``READABLE``.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

READABLE = 0o644


def _atomic_write(path: Path, write, mode: int | None = None) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: Path, text: str, mode: int | None = None) -> None:
    _atomic_write(path, lambda handle: handle.write(text.encode()), mode)


def write_json(path: Path, obj: Any, mode: int | None = None) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n", mode)


def write_jsonl(path: Path, rows: list[dict]) -> None:
    write_text(path, "".join(json.dumps(row, sort_keys=True) + "\n" for row in rows))


def write_csv(path: Path, header: list[str], rows: list[list], mode: int | None = READABLE) -> None:
    """A CSV file (the csv module's dialect: quoted where needed, CRLF line ends)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    write_text(path, buffer.getvalue(), mode)


def savefig(path: Path, figure, mode: int | None = READABLE, **kwargs) -> None:
    """A matplotlib figure, rendered into memory first (``figure.savefig`` on a buffer)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format=kwargs.pop("format", Path(path).suffix.lstrip(".") or "png"), **kwargs)
    _atomic_write(path, lambda handle: handle.write(buffer.getvalue()), mode)


def read_jsonl(path: Path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def read_jsonl_or_exit(path: Path) -> list[dict]:
    """``read_jsonl`` for a command line: a line that is not JSON ends the program with one line."""
    try:
        return read_jsonl(path)
    except ValueError as error:
        raise SystemExit(f"error: {path}: not a JSON-lines file ({error})") from None


def torch_save(path: Path, obj: Any) -> None:
    import torch

    _atomic_write(path, lambda handle: torch.save(obj, handle))
