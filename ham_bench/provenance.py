"""Where a result came from: code version, packages, hardware and the command, for summary.json.

Bitwise equality of two runs holds only for the same code, packages, hardware
(CPU model and torch's CPU capability, or GPU), thread count and command; a
result records all of them so a difference can be traced. Nothing here
touches the device or costs more than a few milliseconds.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("ham-bench", "torch", "torchvision", "hydra-core", "omegaconf", "numpy", "timm", "wandb")


def _git(*args: str) -> str | None:
    try:
        result = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _program() -> list[str]:
    """How the command was started: ``ham-bench`` (the console script), ``python -m ham_bench`` or the script."""
    name = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python"
    if name == "__main__.py":
        return [Path(sys.executable).name, "-m", Path(sys.argv[0]).resolve().parent.name]
    return [name]


def provenance(device: torch.device | str | None = None) -> dict:
    """The facts that decide whether a rerun reproduces this run bit for bit."""
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no") if commit else None
    device = torch.device(device) if device is not None else torch.device("cpu")
    facts = {
        "git_commit": commit,
        "git_dirty": bool(status) if status is not None else None,
        "packages": {name: _version(name) for name in PACKAGES},
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model(),
        "cpu_model": cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "hostname": platform.node(),
        "command": [*_program(), *sys.argv[1:]],
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
    }
    return facts
