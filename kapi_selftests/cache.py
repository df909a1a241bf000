"""The per-user cache (``~/.cache/kapi-selftests``) and safe writes into it.

Several writers meet here: the guests of one ``run`` are threads of one process, and
two ``kapi-selftests`` commands may run at once. Every cache entry is therefore
written under a name no other writer uses (:func:`atomic_write`) and moved into place
with ``os.replace``, and work that must happen once (extracting a vmlinux, building a
zip) runs under an advisory lock (:func:`locked`), which serialises threads and
processes alike (``flock`` locks belong to the open file, not the process).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["CACHE_DIR", "atomic_write", "locked", "temp_path"]

#: KAPI_CACHE_DIR, else ``$XDG_CACHE_HOME/kapi-selftests`` (``~/.cache/kapi-selftests``);
#: a guest is handed the host's in KAPI_CACHE_DIR.
CACHE_DIR = Path(os.environ.get("KAPI_CACHE_DIR") or Path(
    os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "kapi-selftests")


@contextlib.contextmanager
def temp_path(dest: Path) -> Iterator[Path]:
    """A fresh name beside ``dest``, no other writer's, to build an entry in; the caller
    moves it into place (``os.replace(tmp, dest)``), and whatever is left is removed
    when the block ends.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write(dest: Path, data: bytes | str) -> Path:
    """Write ``data`` to ``dest`` so that no reader ever sees a partial file."""
    with temp_path(dest) as tmp:
        if isinstance(data, str):
            tmp.write_text(data)
        else:
            tmp.write_bytes(data)
        os.replace(tmp, dest)
    return dest


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if needed) for the block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
