"""Fetch a stock Debian kernel for the guest: resolve, ``apt-get download``, ``dpkg -x``.

Owns the kernel cache (``.cache/kernels/`` in the project): one directory per
package version as ``dpkg -x`` leaves it (``boot/vmlinuz-*``, ``boot/config-*``,
``lib/modules/<release>``; from Debian 7.x on ``usr/lib/modules/<release>/vmlinuz``
and ``config``, from the image package's ``linux-{base,binary,modules}-<release>``)
and a ``stock`` symlink to the newest. The package is
extracted, never installed. Resolving asks apt which ``linux-image-*-amd64`` the
``linux-image-amd64`` metapackage depends on, so no version number is hard-coded.
A ``suite`` (``unstable``, ``trixie``: a suite in the apt sources, pinned low so
nothing is upgraded from it) resolves and downloads from that suite (``-t``) instead
of the default candidate; its kernel gets a symlink of its own (``link``).
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
from kapi_selftests.errors import MissingFeature, UsageError
from kapi_selftests.host.kernel import package_image

__all__ = ["DEFAULT_CACHE", "resolve_stock_package", "package_parts", "fetch_stock_kernel"]

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


def _target(suite: str | None) -> list[str]:
    return ["-t", suite] if suite else []


def _depends(pkg: str, suite: str | None) -> list[str]:
    out = _run(["apt-cache", "depends", *_target(suite), pkg])
    return [line.split(":", 1)[1].strip().strip("<>") for line in map(str.strip, out.splitlines())
            if line.startswith("Depends:")]


def package_parts(pkg: str, suite: str | None = None) -> list[str]:
    """``pkg`` and the packages of the same kernel release it depends on.

    Debian's image package from 7.x on (unstable, forky) is empty but for its
    dependencies ``linux-binary-<release>`` (``boot/vmlinuz-*``), ``linux-modules-<release>``
    (``lib/modules``) and ``linux-base-<release>`` (``boot/config-*``); bookworm's has
    none and holds everything itself.
    """
    m = _IMAGE_PKG.match(pkg)
    if m is None:
        return [pkg]
    release = pkg.removeprefix("linux-image-").removesuffix("-unsigned")
    parts = [d for d in _depends(pkg, suite) if d.endswith("-" + release) and d != pkg]
    return [pkg, *dict.fromkeys(parts)]


def resolve_stock_package(meta: str = "linux-image-amd64", suite: str | None = None) -> str:
    """The versioned image package the metapackage's candidate depends on,
    e.g. ``linux-image-6.1.0-56-amd64``; with ``suite``, the candidate of that suite
    (``apt-cache depends -t SUITE``).

    :raises MissingFeature: apt knows no such package (no ``apt-get update`` yet?)
    """
    for name in _depends(meta, suite):
        if _IMAGE_PKG.match(name):
            return name
    where = f" -t {suite}" if suite else ""
    raise MissingFeature(f"apt-cache depends{where} {meta} names no linux-image-*-amd64 package",
                         hint=f"add {suite} to the apt sources (pinned low), then apt-get update"
                         if suite else "apt-get update")


def fetch_stock_kernel(cache: Path = DEFAULT_CACHE, package: str | None = None,
                       *, force: bool = False, suite: str | None = None,
                       link: str = "stock") -> Path:
    """Download and extract the stock kernel package; return its directory.

    Idempotent: an already extracted package is reused. ``cache/<link>`` points at it.
    ``suite`` resolves and downloads from that apt suite (``-t SUITE``).
    """
    if not link or "/" in link or link.startswith("."):
        raise UsageError(f"kernel cache link name {link!r}: a plain file name is needed")
    pkg = package or resolve_stock_package(suite=suite)
    with locked(cache / ".lock"):  # two setups at once extract once
        return _fetch(cache, pkg, force, suite, link)


def _fetch(cache: Path, pkg: str, force: bool, suite: str | None, link_name: str) -> Path:
    dest = cache / pkg
    link = cache / link_name
    if force and dest.exists():
        shutil.rmtree(dest)
    if package_image(dest) is None:
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache, prefix=".dl-") as tmp:
            t = Path(tmp)
            t.chmod(0o755)  # apt's _apt user must be able to write here, or apt warns
            parts = package_parts(pkg, suite)
            _run(["apt-get", "download", *_target(suite), *parts], cwd=t)
            debs = sorted(t.glob("*.deb"))
            if len(debs) != len(parts):
                raise MissingFeature(f"apt-get download {' '.join(parts)} left "
                                     f"{len(debs)} .deb files, not {len(parts)}")
            x = t / "x"
            for deb in debs:
                _run(["dpkg", "-x", str(deb), str(x)])
            if package_image(x) is None:
                raise MissingFeature(f"{', '.join(d.name for d in debs)}: no boot/vmlinuz-* "
                                     "nor usr/lib/modules/*/vmlinuz",
                                     hint="name the package that holds the image: --package")
            if dest.exists():
                shutil.rmtree(dest)
            x.rename(dest)
    if link.is_symlink() and link.resolve() == dest.resolve():
        return dest
    tmp_link = cache / f".{link_name}.{os.getpid()}"
    tmp_link.unlink(missing_ok=True)
    tmp_link.symlink_to(dest.name)
    os.replace(tmp_link, link)
    log.info("stock kernel: %s -> %s", link, dest)
    return dest
