"""Warm, on the host, the caches a guest reads but cannot write.

The guest sees the project over a read-only 9p share and runs Python about 20x
slower than the host (TCG). Three caches that Python, pytest and hypothesis keep
next to the sources would be rebuilt on every boot:

- the bytecode of the project's modules (``__pycache__/*.pyc``; this machine sets
  PYTHONDONTWRITEBYTECODE, so nothing else writes them),
- pytest's assertion-rewritten test modules and conftests
  (``__pycache__/*-pytest-<version>.pyc``), read by pytest even where it cannot write,
- hypothesis's cache of the constants in the project's modules
  (``.hypothesis/constants/``, parsed from every local module's AST at collection).

One ``pytest --collect-only`` of the in-guest suite in a host subprocess, with byte
code writing on, builds all three, exactly as the guest's own pytest would (no
private API). It is redone only when a source file changed (a stamp keyed by the
sources' names, sizes and mtimes). Measured in a TCG guest: ~5 s less from boot to
the first test (bench/README.md). A failure costs only that time: the guest builds
what it needs itself.
"""

from __future__ import annotations

import compileall
import hashlib
import logging
import os
import shutil
import subprocess
from pathlib import Path

from kapi_selftests import cache

__all__ = ["warm_caches", "copy_constants"]

log = logging.getLogger(__name__)


def _key(project: Path, python: str) -> str:
    h = hashlib.sha256(python.encode())
    for top in ("kapi_selftests", "tests/guest", "conftest.py", "pyproject.toml"):
        p = project / top
        files = sorted(p.rglob("*.py")) if p.is_dir() else [p]
        for f in files:
            try:
                st = f.stat()
            except OSError:
                continue
            h.update(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:20]


def warm_caches(project: Path, tests: Path, python: str, cache_dir: Path) -> Path | None:
    """Build the three caches for ``tests`` of ``project``; return hypothesis's directory.

    :returns: the hypothesis storage directory holding ``constants/``, or None when
        the caches could not be built (logged; the guest then builds them itself)
    """
    with cache.locked(cache_dir / ".warm.lock"):  # one warming at a time, across processes
        return _warm(project, tests, python, cache_dir)


def _warm(project: Path, tests: Path, python: str, cache_dir: Path) -> Path | None:
    key = _key(project, python)
    hyp = cache_dir / "hypothesis"
    stamp = cache_dir / f"warm-{key}"
    if stamp.exists():
        return hyp
    # quiet=2: not even errors (stdout carries the KTAP report); a file that does not
    # compile is simply compiled again by the guest
    compileall.compile_dir(str(project / "kapi_selftests"), quiet=2, workers=1)
    # (KAPI_KERNEL would make the collection boot a guest: see host.pytest_plugin)
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONDONTWRITEBYTECODE", "PYTHONPYCACHEPREFIX", "KAPI_KERNEL")}
    env.update(HYPOTHESIS_STORAGE_DIRECTORY=str(hyp), PYTEST_DISABLE_PLUGIN_AUTOLOAD="1")
    argv = [python, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
            "-p", "_hypothesis_pytestplugin", str(tests)]
    try:
        proc = subprocess.run(argv, cwd=project, env=env, capture_output=True, text=True,
                              timeout=300, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        log.warning("could not warm the guest's caches (%s): the guest builds them itself", e)
        return None
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-1:] or ["no output"]
        log.warning("could not warm the guest's caches (pytest --collect-only exited %d: %s)",
                    proc.returncode, tail[0])
        return None
    for old in cache_dir.glob("warm-*"):
        old.unlink(missing_ok=True)
    stamp.touch()
    return hyp


def copy_constants(hyp: Path | None, dest: Path) -> None:
    """Copy hypothesis's constants cache into ``dest`` (the guest's ``.hypothesis``)."""
    if hyp is None or not (hyp / "constants").is_dir():
        return
    shutil.copytree(hyp / "constants", dest / "constants", dirs_exist_ok=True)
