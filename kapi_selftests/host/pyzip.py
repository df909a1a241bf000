"""The guest's Python library as one zip in the initramfs (``zipimport``: no 9p round trips).

Under TCG every import over the 9p root costs several round trips, and every
guest boots with a cold cache: importing pytest and hypothesis took 15 s from 9p
and 9.6 s from a zip in RAM (same boot, loaded host). This module finds which
packages the in-guest runner imports (by importing them in a host subprocess with
the guest's interpreter and path) and zips their compiled ``.pyc`` files.

Whole packages go in (a package in the zip hides the on-disk copy, so a submodule
imported later must be in the zip too); packages with extension modules
(numpy...) and the project itself (read fresh from the project share) stay out.
Single modules go in only when imported; the rest are found on the normal path.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import py_compile
import shlex
import subprocess
import sys
import sysconfig
import zipfile
from collections.abc import Iterable, Sequence
from importlib.util import cache_from_source
from pathlib import Path

from kapi_selftests import cache

__all__ = ["GUEST_ZIP", "imported_files", "build_pyzip"]

log = logging.getLogger(__name__)

# Where /init binds it in the guest. The "site-packages" directory is for the tools
# that tell the user's code from libraries by path: hypothesis parses every module
# it takes for local (its AST, for constants), and a path in this zip (stdlib and
# site-packages alike) is otherwise neither under site-packages nor the stdlib.
GUEST_ZIP = "/run/site-packages/kapi-py.zip"

# What the in-guest runner imports before the first test (the suite's own modules
# are imported as well, so what they import from the standard library comes along).
_PROBE = r"""
import json, sys, importlib, pkgutil
for name in sys.argv[2:]:
    try:
        importlib.import_module(name)
    except BaseException:
        pass
try:
    import kapi_selftests
    for m in pkgutil.walk_packages(kapi_selftests.__path__, "kapi_selftests."):
        if m.name.endswith("__main__"):
            continue
        try:
            importlib.import_module(m.name)
        except BaseException:
            pass
except BaseException:
    pass
files = {n: getattr(m, "__file__", None) for n, m in list(sys.modules.items())}
json.dump({n: f for n, f in files.items() if f}, open(sys.argv[1], "w"))
"""
_ROOTS = ("pytest", "_pytest", "_pytest.terminal", "_pytest.junitxml", "_pytest.python",
          "_pytest.fixtures", "_pytest.skipping", "_pytest.runner", "pluggy", "hypothesis",
          "hypothesis.strategies", "hypothesis.stateful", "_hypothesis_pytestplugin",
          "xml.etree.ElementTree", "json", "ctypes", "threading")


def imported_files(python: str, pythonpath: Sequence[str], project: Path,
                   work: Path) -> dict[str, str]:
    """``{module: file}`` for what a guest-like interpreter imports (host subprocess)."""
    out = work / "pyzip-modules.json"
    argv = [python, "-S", "-c", _PROBE, str(out), *_ROOTS]
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": ":".join(pythonpath),
           "PYTHONDONTWRITEBYTECODE": "1", "KAPI_IN_GUEST": "1"}
    log.info("%s", shlex.join(argv[:3] + ["<probe>", *argv[4:]]))
    subprocess.run(argv, env=env, cwd=project, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, timeout=120)
    data: dict[str, str] = json.loads(out.read_text())
    return data


def _package_dir(name: str, file: str) -> Path | None:
    # the top-level package directory of a module, or None for a top-level module
    top = name.split(".")[0]
    p = Path(file)
    for parent in p.parents:
        if parent.name == top and (parent / "__init__.py").is_file():
            return parent
    return None


def _entries(mods: dict[str, str], roots: Iterable[str], project: Path
             ) -> dict[str, Path]:
    """zip name -> file for everything that goes in (``.py`` names are compiled)."""
    out: dict[str, Path] = {}
    root_list = sorted((r for r in roots if r), key=len, reverse=True)

    def rel(f: Path) -> str | None:
        for r in root_list:
            if str(f).startswith(r.rstrip("/") + "/"):
                return str(f)[len(r.rstrip("/")) + 1:]
        return None

    seen_pkgs: set[Path] = set()
    for name, file in mods.items():
        f = Path(file)
        if f.suffix != ".py" or project in f.parents:
            continue
        pkg = _package_dir(name, file)
        if pkg is None:
            r = rel(f)
            if r is not None:
                out[r] = f
            continue
        if pkg in seen_pkgs or project in pkg.parents:
            continue
        seen_pkgs.add(pkg)
        files = list(pkg.rglob("*"))
        if any(x.suffix in (".so", ".pyd") for x in files):
            continue  # extension modules cannot load from a zip: keep on disk
        for x in files:
            # a package's own test suite (ctypes.test, unittest.test) is never imported
            inner = x.relative_to(pkg).parts[:-1]
            if any(p in ("test", "tests", "__pycache__") for p in inner):
                continue
            # .py become .pyc; data files (hypothesis' vendored tld list) go in as
            # they are, for importlib.resources
            if x.is_file() and x.suffix not in (".pyc", ".pyi", ".c", ".h"):
                r = rel(x)
                if r is not None:
                    out[r] = x
    return out


def build_pyzip(cache_dir: Path, pythonpath: Sequence[str], project: Path,
                python: str = sys.executable) -> Path | None:
    """Build (or reuse) the zip for ``python``; None when it cannot be built.

    One build at a time per cache directory (guests boot from threads, runs may be
    processes): the probe's output file is shared.
    """
    with cache.locked(cache_dir / ".lock"):
        return _build_pyzip(cache_dir, pythonpath, project, python)


def _build_pyzip(cache_dir: Path, pythonpath: Sequence[str], project: Path,
                 python: str) -> Path | None:
    try:
        mods = imported_files(python, pythonpath, project, cache_dir)
    except (OSError, subprocess.SubprocessError, ValueError) as e:
        log.warning("cannot list the guest's imports (%s): no Python zip", e)
        return None
    paths = sysconfig.get_paths()
    roots = [paths["stdlib"], paths["purelib"], paths["platlib"], *pythonpath]
    entries = _entries(mods, roots, project)
    h = hashlib.sha256(sys.version.encode())
    for name in sorted(entries):
        st = entries[name].stat()
        h.update(f"{name}\0{st.st_mtime_ns}\0{st.st_size}\n".encode())
    dest = cache_dir / f"py-{h.hexdigest()[:20]}.zip"
    if dest.is_file():
        return dest
    with cache.temp_path(dest) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as z:
        for name, src in sorted(entries.items()):
            if not name.endswith(".py"):
                z.write(src, name)
                continue
            pyc = Path(cache_from_source(str(src)))
            try:
                if not pyc.is_file() or pyc.stat().st_mtime < src.stat().st_mtime:
                    data = _compile(src)
                else:
                    data = pyc.read_bytes()
            except (OSError, py_compile.PyCompileError, SyntaxError):
                continue
            z.writestr(name[:-3] + ".pyc", data)
        z.close()
        os.replace(tmp, dest)
    log.info("guest Python zip: %s (%d modules, %d bytes)", dest, len(entries),
             dest.stat().st_size)
    return dest


def _compile(src: Path) -> bytes:
    # compile to a temporary pyc (the source tree may be read-only)
    import tempfile
    with tempfile.TemporaryDirectory() as t:
        out = Path(t) / "m.pyc"
        py_compile.compile(str(src), cfile=str(out), doraise=True,
                           invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
        return out.read_bytes()
