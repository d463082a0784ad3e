"""The determinism claim is precise wherever results are committed: bitwise equality only on the same hardware
and thread count, with the measured rerun spread on another machine (issue 14, item 10)."""

from __future__ import annotations

import pytest

from sweep_fixtures import REPO

MEASURED = ("AMD EPYC", "Intel Xeon", "+0.10", "+0.20", "1-2 %")


def _text(path) -> str:
    return " ".join(path.read_text().split())


@pytest.mark.parametrize("name", sorted(p.parent.name for p in (REPO / "results").glob("*/README.md")))
def test_every_results_readme_states_when_reruns_are_bitwise_equal(name):
    text = _text(REPO / "results" / name / "README.md")
    assert "bit for bit only on the same hardware and thread count" in text
    assert all(fact in text for fact in MEASURED), name
    assert 'docs/reproduce.md, "What a rerun reproduces"' in text
    assert "deterministic per seed)" not in text  # the unqualified claim


def test_the_shared_section_names_what_decides_equality():
    text = _text(REPO / "docs" / "reproduce.md")
    section = text[text.index("## What a rerun reproduces"):text.index("## Interrupted and failed runs")]
    assert "bit for bit only on the same hardware and thread count" in section
    assert all(fact in section for fact in MEASURED)
    for fact in ("git commit", "CPU model", "torch's CPU capability", "thread count", "command line"):
        assert fact in section
