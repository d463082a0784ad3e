"""Run dirs: who owns one, who may write into it, and what it holds.

A run takes its run dir with :func:`claim` before anything is written into it
(``ham_bench.hydra_callbacks.RunGuard`` does it in Hydra's ``on_run_start``,
before Hydra writes ``.hydra/``; a sweep job claims its dir when it starts).

* Ownership. The claim records whether this process created the dir (and
  which of its parents), and which entries it held before. After a user
  error, :meth:`Claim.discard` removes only what this process created: the
  dir when it made it (and the parents it made, while they are empty), else
  only the outputs of ham-bench and Hydra (``OUTPUTS``) that were not there
  before. A dir that existed before the process started is never removed:
  ``hydra.run.dir=.`` in a folder of other files leaves every one of them.
* The lock. ``.ham-bench.lock`` in the run dir, held with ``fcntl.flock`` for
  the life of the run: a second run, or a resume, of a dir that is still
  being trained is refused with one line naming the holder. The kernel
  releases the lock when its process dies (kill -9, node failure), so a
  dead run never blocks its dir. The file holds the holder's pid, host,
  start time and SLURM job id, for that message; it is written in place,
  not atomically, because it must stay the file that is locked. Where the
  filesystem has no flock (some Lustre mounts) the pid is checked instead:
  a live pid on this host holds the dir; a lock written on another host is
  taken over only by the same SLURM job (a requeue) or with ``force=true``.
* Status. :func:`run_status` says what a dir holds: ``None`` (no run), the
  status in its ``summary.json``, or ``incomplete`` (a run's files without a
  summary: still running, or killed).
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import os
import shutil
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ham_bench import atomic_io
from sparsifiers.config import ConfigError

LOCK_NAME = ".ham-bench.lock"
RECORD = ("summary.json", "checkpoint.pt", "metrics.jsonl")  # a dir holding any of these holds a run
OUTPUTS = (*RECORD, ".hydra", "masks", "wandb", LOCK_NAME)    # what a run (or Hydra for it) may create
_CLAIMS: dict[Path, "Claim"] = {}


class RunDirError(ConfigError):
    """A run dir that this run may not use (in use, or holding another run); one line saying why and what to do."""


def run_status(path: Path) -> str | None:
    """None when ``path`` holds no run; else its summary's status, or ``incomplete`` without a summary."""
    path = Path(path)
    if not any((path / name).exists() for name in RECORD):
        return None
    summary = path / "summary.json"
    if not summary.exists():
        return "incomplete"
    try:
        status = json.loads(summary.read_text()).get("status")
    except (OSError, ValueError, AttributeError):
        return "unreadable"
    return str(status or "unknown")


@dataclass
class Claim:
    """This process's hold on a run dir (see the module docstring)."""

    path: Path
    created: Path | None              # the highest dir this process made (path or a parent); None: path existed
    before: frozenset[str]            # the entries path held before the claim
    lock_fd: int | None = None
    plan: Any = None                  # what the run will do (``engine.resume.Plan``), once decided
    extra_outputs: tuple[str, ...] = field(default_factory=tuple)  # e.g. Hydra's log file, cli.log

    def release(self) -> None:
        """Give up the lock (and its file); the dir and its contents stay."""
        if self.lock_fd is not None:
            with contextlib.suppress(OSError):
                (self.path / LOCK_NAME).unlink()
            with contextlib.suppress(OSError):
                os.close(self.lock_fd)
            self.lock_fd = None
        _CLAIMS.pop(self.path, None)

    def discard(self) -> None:
        """Remove what this process created (nothing else), then release the dir."""
        if self.lock_fd is None:  # never held: someone else may be in there
            self.release()
            return
        if self.created is not None:
            shutil.rmtree(self.path, ignore_errors=True)
            parent = self.path.parent
            while self.created != self.path and parent != self.created.parent:
                try:
                    parent.rmdir()  # only while empty: another run may have started beside this one
                except OSError:
                    break
                parent = parent.parent
        else:
            for name in (*OUTPUTS, *self.extra_outputs):
                entry = self.path / name
                if name in self.before or name == LOCK_NAME or not (entry.exists() or entry.is_symlink()):
                    continue
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)
        self.release()


def claimed(path: Path) -> Claim | None:
    """The claim this process holds on ``path``, if any."""
    return _CLAIMS.get(Path(os.path.abspath(path)))


def claim(path: Path, force: bool = False, extra_outputs: tuple[str, ...] = ()) -> Claim:
    """Create ``path`` if needed and lock it for this run; RunDirError if another live run holds it."""
    path = Path(os.path.abspath(path))
    if path in _CLAIMS:
        return _CLAIMS[path]
    created = None
    if not path.exists():
        created = path
        while not created.parent.exists():
            created = created.parent
    before = frozenset(entry.name for entry in path.iterdir()) if path.is_dir() else frozenset()
    if path.exists() and not path.is_dir():
        raise RunDirError(f"the run dir {path} is a file; point hydra.run.dir at a folder")
    path.mkdir(parents=True, exist_ok=True)
    result = Claim(path, created, before, extra_outputs=tuple(extra_outputs))
    result.lock_fd = _lock(path, force)
    _CLAIMS[path] = result
    atomic_io.remove_orphans(path, RECORD)  # temporary files of writes killed half-way (nobody else writes here)
    atomic_io.remove_orphans(path / "masks", ("*",))
    return result


def clear_record(path: Path) -> None:
    """Delete the run that ``path`` holds (``force=true``), so nothing of it is mistaken for the new run's."""
    for name in RECORD:
        (Path(path) / name).unlink(missing_ok=True)
    shutil.rmtree(Path(path) / "masks", ignore_errors=True)


def ensure_free(path: Path) -> None:
    """RunDirError if a live run holds ``path``'s lock now (nothing is created or kept)."""
    lock_path = Path(path) / LOCK_NAME
    if not lock_path.exists():
        return
    fd = os.open(lock_path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        raise _refuse(Path(path), _read_holder(fd)) from None
    except OSError:
        pass  # no flock here: the run's own claim checks the pid
    finally:
        os.close(fd)


# ---- the lock ---------------------------------------------------------------------------------
def _holder_info() -> dict[str, Any]:
    return {"pid": os.getpid(), "host": socket.gethostname(),
            "started": datetime.datetime.now().isoformat(timespec="seconds"),
            "slurm_job_id": os.environ.get("SLURM_JOB_ID")}


def _read_holder(fd: int) -> dict[str, Any]:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        holder = json.loads(os.read(fd, 4096).decode() or "{}")
        return holder if isinstance(holder, dict) else {}
    except (OSError, ValueError):
        return {}


def _describe(holder: dict[str, Any]) -> str:
    if not holder.get("pid"):
        return "another run"
    text = f"process {holder['pid']} on {holder.get('host', '?')}"
    return text + (f" (started {holder['started']})" if holder.get("started") else "")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _refuse(path: Path, holder: dict[str, Any], hint: str = "wait for it to end (or stop it)") -> RunDirError:
    return RunDirError(f"{path} is in use by {_describe(holder)}, a run or resume of that dir; {hint} and try again")


def _write_holder(fd: int) -> None:
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, json.dumps(_holder_info()).encode())


def _lock(path: Path, force: bool) -> int:
    lock_path = path / LOCK_NAME
    while True:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise _refuse(path, holder) from None
        except OSError as error:
            if error.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                os.close(fd)
                raise
            _check_without_flock(path, _read_holder(fd), force)
            _write_holder(fd)
            return fd
        try:  # the holder we waited on may have removed the file: lock the file that is there now
            same = os.path.samestat(os.fstat(fd), os.stat(lock_path))
        except FileNotFoundError:
            same = False
        if same:
            _write_holder(fd)
            return fd
        os.close(fd)


def _check_without_flock(path: Path, holder: dict[str, Any], force: bool) -> None:
    """The lock file's holder, judged by its pid and host where flock is not available."""
    pid = holder.get("pid")
    if not pid or pid == os.getpid() or force:
        return
    if holder.get("host") == socket.gethostname():
        if _pid_alive(int(pid)):
            raise _refuse(path, holder)
        return
    if holder.get("slurm_job_id") and holder.get("slurm_job_id") == os.environ.get("SLURM_JOB_ID"):
        return  # the same SLURM job, requeued
    raise _refuse(path, holder, "this filesystem cannot tell whether it still runs: if it does not, force=true "
                                "takes the dir; else wait for it to end")
