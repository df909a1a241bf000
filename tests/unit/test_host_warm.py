"""host.warm: the caches the read-only guest reads are built on the host, once."""

from __future__ import annotations

import sys
from pathlib import Path

from kapi_selftests.host import warm


def _project(root: Path) -> Path:
    (root / "kapi_selftests").mkdir(parents=True)
    (root / "kapi_selftests" / "__init__.py").write_text("")
    (root / "kapi_selftests" / "limits.py").write_text("MAGIC = 987654321\n")
    guest = root / "tests" / "guest"
    guest.mkdir(parents=True)
    (guest / "test_x.py").write_text(
        "from hypothesis import given, strategies as st\n"
        "from kapi_selftests.limits import MAGIC\n\n"
        "@given(st.integers())\n"
        "def test_x(n):\n    assert n != MAGIC or True\n")
    return guest


def test_warm_builds_bytecode_rewritten_tests_and_constants_once(tmp_path: Path) -> None:
    proj = tmp_path / "proj"
    tests = _project(proj)
    cache = tmp_path / "cache"
    hyp = warm.warm_caches(proj, tests, sys.executable, cache)
    assert hyp is not None
    assert list((proj / "kapi_selftests" / "__pycache__").glob("limits.cpython-*.pyc"))
    assert list((tests / "__pycache__").glob("test_x.cpython-*-pytest-*.pyc"))
    consts = list((hyp / "constants").iterdir())
    assert any("987654321" in f.read_text() for f in consts)
    # unchanged sources: the stamp short-cuts the second call (no new pytest run)
    stamp = list(cache.glob("warm-*"))
    assert len(stamp) == 1
    for f in (tests / "__pycache__").iterdir():
        f.unlink()
    assert warm.warm_caches(proj, tests, sys.executable, cache) == hyp
    assert not list((tests / "__pycache__").iterdir())
    dest = tmp_path / "out" / ".hypothesis"
    warm.copy_constants(hyp, dest)
    assert sorted(p.name for p in (dest / "constants").iterdir()) == sorted(p.name for p in consts)


def test_warm_failure_is_logged_not_raised(tmp_path: Path) -> None:
    proj = tmp_path / "proj"
    tests = _project(proj)
    (tests / "test_x.py").write_text("this is not python\n")
    assert warm.warm_caches(proj, tests, sys.executable, tmp_path / "cache") is None
