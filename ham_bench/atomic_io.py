"""Atomic file writes: write to a temporary file in the same folder, then rename.

A reader (or a crash) never sees a half-written metrics file, summary,
checkpoint, table or figure: it sees the previous version or the new one.
Every writer of ham-bench goes through here: the training loop's (JSON,
JSONL, checkpoints) and the analysis side's (markdown, CSV, PNG).

Choices:

* Permissions: a file is given the mode ``open()`` would give it,
  ``0o666 & ~umask`` (``mkstemp`` alone makes it private, 0600, which hid
  results from collaborators on a shared filesystem); ``mode`` overrides it.
* The content is produced in memory first (``torch.save`` and ``savefig`` into
  a buffer), so a failing write is a plain ``OSError`` naming its cause
  (``[Errno 28] No space left on device``), not an error of the serializer,
  and the previous file is untouched.
* A write killed half-way (kill -9, node failure) leaves its temporary file,
  ``.<name>.<random>.tmp``; :func:`remove_orphans` deletes those of given names
  (a run does it for its own files when it takes its run dir).
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

TEMP_SUFFIX = ".tmp"


class WriteError(OSError):
    """A file that could not be written; one line naming it and the cause. Its previous version is intact."""

    def __init__(self, path: Path, error: OSError):
        super().__init__(error.errno, error.strerror or str(error), str(path))
        previous = "keeps its previous version" if Path(path).exists() else "was not created"
        self.message = f"cannot write {path}: {error.strerror or error} (errno {error.errno}); the file {previous}"

    def __str__(self) -> str:
        return self.message


def _umask() -> int:
    """The process umask, read without changing it where Linux tells it (else set and restored at once)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def default_mode() -> int:
    """The mode a new file gets from ``open()``: 0o666 without the umask's bits."""
    return 0o666 & ~_umask()


def _atomic_write(path: Path, write, mode: int | None = None) -> None:
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, default_mode() if mode is None else mode)
        os.replace(tmp, path)
    except BaseException as error:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(error, OSError) and not isinstance(error, WriteError):
            raise WriteError(path, error) from None
        raise


def write_bytes(path: Path, data: bytes, mode: int | None = None) -> None:
    _atomic_write(path, lambda handle: handle.write(data), mode)


def write_text(path: Path, text: str, mode: int | None = None) -> None:
    write_bytes(path, text.encode(), mode)


def write_json(path: Path, obj: Any, mode: int | None = None) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n", mode)


def write_jsonl(path: Path, rows: list[dict]) -> None:
    write_text(path, "".join(json.dumps(row, sort_keys=True) + "\n" for row in rows))


def write_csv(path: Path, header: list[str], rows: list[list], mode: int | None = None) -> None:
    """A CSV file (the csv module's dialect: quoted where needed, CRLF line ends)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    write_text(path, buffer.getvalue(), mode)


def savefig(path: Path, figure, mode: int | None = None, **kwargs) -> None:
    """A matplotlib figure, rendered into memory first (``figure.savefig`` on a buffer)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format=kwargs.pop("format", Path(path).suffix.lstrip(".") or "png"), **kwargs)
    write_bytes(path, buffer.getvalue(), mode)


def torch_save(path: Path, obj: Any) -> None:
    """``torch.save`` into memory, then written atomically (a full disk is an OSError saying so)."""
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write_bytes(path, buffer.getbuffer())


def remove_orphans(folder: Path, names) -> list[Path]:
    """Delete the temporary files that killed writes of ``names`` left in ``folder``; returns them."""
    removed = []
    for name in names:
        for orphan in Path(folder).glob(f".{name}.*{TEMP_SUFFIX}"):
            orphan.unlink(missing_ok=True)
            removed.append(orphan)
    return removed


def read_jsonl(path: Path) -> list[dict]:
    """The rows of a JSON-lines file ([] when absent); ValueError naming the file and line otherwise."""
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as error:
            raise ValueError(f"{path}: not a JSON-lines file (line {number}: {error})") from None
        if not isinstance(row, dict):
            raise ValueError(f"{path}: not a JSON-lines file (line {number} is not an object)")
        rows.append(row)
    return rows


def read_jsonl_or_exit(path: Path) -> list[dict]:
    """``read_jsonl`` for a command line: a line that is not JSON ends the program with one line."""
    try:
        return read_jsonl(path)
    except ValueError as error:
        raise SystemExit(f"error: {error}") from None
