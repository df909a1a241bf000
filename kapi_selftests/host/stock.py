"""Fetch a stock Debian kernel for the guest: resolve, ``apt-get download``, ``dpkg -x``.

Owns the kernel cache (``.cache/kernels/`` in the project): one directory per
package version as ``dpkg -x`` leaves it (``boot/vmlinuz-*``, ``boot/config-*``,
``lib/modules/<release>``) and a ``stock`` symlink to the newest. The package is
extracted, never installed. Resolving asks apt which ``linux-image-*-amd64`` the
``linux-image-amd64`` metapackage depends on, so no version number is hard-coded.
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path

from kapi_selftests.cache import locked
from kapi_selftests.errors import MissingFeature

__all__ = ["DEFAULT_CACHE", "resolve_stock_package", "fetch_stock_kernel"]

log = logging.getLogger(__name__)

DEFAULT_CACHE = Path(__file__).resolve().parents[2] / ".cache" / "kernels"
_IMAGE_PKG = re.compile(r"^linux-image-(\d[\w.+~-]*?)-amd64(?:-unsigned)?$")


def _run(argv: list[str], cwd: Path | None = None) -> str:
    log.info("%s", shlex.join(argv))
    try:
        proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False)
    except FileNotFoundError as e:
        raise MissingFeature(f"{argv[0]} not found (a Debian host with apt is needed)") from e
    if proc.returncode != 0:
        raise MissingFeature(f"{shlex.join(argv)} failed ({proc.returncode}): "
                             + (proc.stderr.strip().splitlines() or [""])[-1],
                             hint="run apt-get update first; check the apt sources")
    return proc.stdout


def resolve_stock_package(meta: str = "linux-image-amd64") -> str:
    """The versioned image package the metapackage's candidate depends on,
    e.g. ``linux-image-6.1.0-56-amd64``.

    :raises MissingFeature: apt knows no such package (no ``apt-get update`` yet?)
    """
    out = _run(["apt-cache", "depends", meta])
    for line in out.splitlines():
        line = line.strip()
        if line.startswith("Depends:"):
            name = line.split(":", 1)[1].strip().strip("<>")
            if _IMAGE_PKG.match(name):
                return name
    raise MissingFeature(f"apt-cache depends {meta} names no linux-image-*-amd64 package",
                         hint="apt-get update")


def fetch_stock_kernel(cache: Path = DEFAULT_CACHE, package: str | None = None,
                       *, force: bool = False) -> Path:
    """Download and extract the stock kernel package; return its directory.

    Idempotent: an already extracted package is reused. ``cache/stock`` points at it.
    """
    pkg = package or resolve_stock_package()
    with locked(cache / ".lock"):  # two setups at once extract once
        return _fetch(cache, pkg, force)


def _fetch(cache: Path, pkg: str, force: bool) -> Path:
    dest = cache / pkg
    link = cache / "stock"
    if force and dest.exists():
        shutil.rmtree(dest)
    if not any((dest / "boot").glob("vmlinuz-*")):
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache, prefix=".dl-") as tmp:
            t = Path(tmp)
            t.chmod(0o755)  # apt's _apt user must be able to write here, or apt warns
            _run(["apt-get", "download", pkg], cwd=t)
            debs = sorted(t.glob("*.deb"))
            if not debs:
                raise MissingFeature(f"apt-get download {pkg} left no .deb")
            x = t / "x"
            _run(["dpkg", "-x", str(debs[0]), str(x)])
            if dest.exists():
                shutil.rmtree(dest)
            x.rename(dest)
    if link.is_symlink() and link.resolve() == dest.resolve():
        return dest
    tmp_link = cache / f".stock.{os.getpid()}"
    tmp_link.unlink(missing_ok=True)
    tmp_link.symlink_to(dest.name)
    os.replace(tmp_link, link)
    log.info("stock kernel: %s -> %s", link, dest)
    return dest
