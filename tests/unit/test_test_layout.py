"""The test tree collects as one: pytest's rootdir imports refuse two test modules of
one basename (``import file mismatch``), which broke a clean clone's CI twice."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def test_test_module_basenames_are_unique_across_the_tree() -> None:
    names = Counter(p.name for p in TESTS.rglob("test_*.py"))
    assert not [n for n, k in names.items() if k > 1], names.most_common(3)
