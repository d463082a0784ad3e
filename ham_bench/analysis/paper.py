"""The published numbers printed beside ours (``make_tables.py --paper NAME``).

They live in ``scripts/paper_numbers.yaml``, transcribed from ``docs/paper_numbers.md`` (the
papers' tables, their sources and settings); ``tests/test_make_tables.py`` checks the two agree.
"""

from __future__ import annotations

from pathlib import Path

import yaml

PAPER_NUMBERS = Path(__file__).resolve().parents[2] / "scripts" / "paper_numbers.yaml"


def paper_names() -> list[str]:
    """The names ``--paper`` accepts, e.g. ``imagenet_sparse``."""
    return sorted(yaml.safe_load(PAPER_NUMBERS.read_text()))


def load_paper_numbers(names: list[str]) -> dict:
    """``["imagenet_sparse"]`` -> {"sparse": {...}}; the table kind is the name's suffix."""
    data = yaml.safe_load(PAPER_NUMBERS.read_text())
    out = {}
    for name in names:
        if name not in data:
            raise SystemExit(f"error: --paper must be one of {', '.join(sorted(data))}, got {name!r}")
        kind = "dense" if name.endswith("_dense") else "sparse"
        out[kind] = data[name]
    return out


def format_paper(value) -> str:
    """``[mean, std]`` as ``mean ± std`` (``mean`` alone without a published std; ``—`` if absent)."""
    if not value:
        return "—"
    mean, std = value
    return f"{mean:.2f}" + (f" ± {std:.2f}" if std is not None else "")
