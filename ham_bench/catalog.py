"""What ham-bench offers, read from where it is defined: ``ham-bench --help`` and ``ham-bench list``.

Nothing here is a second copy: config groups and their options are the
files under ``configs/``, the run keys and their one-line descriptions are
the commented keys of ``configs/train.yaml``, sparsifiers are the registry's
names (built-ins and installed plugins) with the first line of their class
docstrings, experiments the overlays under ``configs/experiment/`` with the
first line of each file.
"""

from __future__ import annotations

import re
from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
GROUP_TEXT = {
    "dataset": "the data (Fashion-MNIST by default; CIFAR-100, ImageNet folders, fake)",
    "model": "the network",
    "optimizer": "the base optimizer (SGD, AdamW, SAM)",
    "ham": "HAM's multiplicative step after the optimizer (hyp_star, hyp, off)",
    "sparsifier": "the sparsity method",
    "schedule": "the learning-rate schedule",
    "logger": "metrics.jsonl always; wandb on request",
    "experiment": "a paper recipe overlay (experiment=<name>)",
}
SUBCOMMANDS = (
    ("ham-bench [key=value ...]", "one run (Hydra overrides; -m for a multirun sweep)"),
    ("ham-bench list", "sparsifiers (with installed plugins), optimizers, models, experiments, every group's options"),
    ("ham-bench export RUN_DIR [--eval]", "the run's sparse model as a small .npz (ham-bench export --help)"),
    ("ham-bench --hydra-help", "Hydra's own help (launchers, sweeps, output dirs)"),
)
_KEY_LINE = re.compile(r"^(\w+):\s*(.*?)\s*(?:#\s*(.*))?$")


def group_options(group: str) -> list[str]:
    folder = CONFIG_DIR / group
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def run_keys() -> list[tuple[str, str, str]]:
    """``(key, default, description)`` of every top-level key of configs/train.yaml, from its comments."""
    keys = []
    for line in (CONFIG_DIR / "train.yaml").read_text().splitlines():
        match = _KEY_LINE.match(line)
        if match and match.group(1) not in ("defaults", "hydra"):
            keys.append((match.group(1), match.group(2), match.group(3) or ""))
    return keys


def first_line(text: str | None) -> str:
    return (text or "").strip().splitlines()[0].strip() if (text or "").strip() else ""


def sparsifier_lines() -> list[tuple[str, str]]:
    from sparsifiers.registry import available_sparsifiers, sparsifier_class

    lines = []
    for name in available_sparsifiers():
        try:
            cls = sparsifier_class(name)
            lines.append((name, first_line(cls.__doc__)))
        except Exception as error:  # a broken plugin must not hide the others
            lines.append((name, f"(cannot be loaded: {type(error).__name__}: {first_line(str(error))})"))
    return lines


def option_lines(group: str) -> list[tuple[str, str]]:
    """Every option of a group with the first comment line of its file."""
    lines = []
    for name in group_options(group):
        comments = [line.lstrip("# ").strip() for line in (CONFIG_DIR / group / f"{name}.yaml")
                    .read_text().splitlines() if line.startswith("#") and not line.startswith("# @package")]
        lines.append((name, comments[0] if comments else ""))
    return lines


def _table(rows: list[tuple[str, str]], indent: str = "  ") -> str:
    width = max((len(a) for a, _ in rows), default=0)
    return "\n".join(f"{indent}{a.ljust(width)}  {b}".rstrip() for a, b in rows)


def app_help() -> str:
    """The text of ``ham-bench --help``."""
    groups = [(f"{group}=", f"{text}: {', '.join(group_options(group))}") for group, text in GROUP_TEXT.items()]
    keys = [(f"{key}={default}", text) for key, default, text in run_keys()]
    return "\n".join([
        "ham-bench: sparse training with HAM (Hyperbolic Aware Minimization), one config per run.",
        "",
        "Commands:", _table(list(SUBCOMMANDS)),
        "",
        "Config groups (pick an option with group=option; set any key with group.key=value):", _table(groups),
        "",
        "Run keys (defaults from configs/train.yaml):", _table(keys),
        "",
        "Examples:",
        "  ham-bench sparsifier=rigl sparsifier.sparsity=0.9 ham=off",
        "  ham-bench -m ham=off,hyp_star seed=0,1,2",
        "  ham-bench experiment=fmnist_sparse sparsifier=acdc",
        "  ham-bench resume=outputs/2026-12-01/12-00-00-000000",
        "",
        "A bad value prints one line naming the key and what is allowed, and exits with status 2.",
    ])


def listing() -> str:
    """The text of ``ham-bench list``."""
    configs = dict(option_lines("sparsifier"))
    methods = [(name, text if name in configs else f"{text} [no config: sparsifier=random sparsifier.name={name}]")
               for name, text in sparsifier_lines()]
    compositions = [(o, text) for o, text in configs.items() if o not in {name for name, _ in methods}]
    sections = [("Sparsifiers (sparsifier=<name>; built-ins and installed plugins):", methods),
                ("More sparsifier configs (compositions and paper schedules):", compositions)]
    sections += [(f"{group.capitalize()} ({group}=...):", option_lines(group))
                 for group in ("optimizer", "ham", "model", "dataset", "schedule", "logger", "experiment")]
    return "\n\n".join(f"{title}\n{_table(rows)}" for title, rows in sections)
