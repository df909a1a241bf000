"""The batch executor: a table of raw syscalls issued back to back by a few lines of C.

Under TCG one ``ctypes`` call costs about 20 µs of guest time, more than the
syscall; a fuzzing batch therefore goes to :func:`run_table`, which hands the
whole table to ``kx_run`` in a small shared object (built with the host's C
compiler, cached by source hash, loaded with ``ctypes`` in the same process so
the harness's fds and mappings are valid in it). Without a compiler the same
table runs through :func:`kapi_selftests.guest.syscalls.invoke` (same results, slower).

Per call ``kx_run`` records the return value and ``CLOCK_MONOTONIC`` just before
and after (the window the call's trace events lie in). For calls the host
expects to be rejected it also measures, right before and after the call, the
*watches* :mod:`kapi_selftests.oracle.sideeffects` lists for it (check 5, "a rejected call
changed nothing": what is watched and how a change is judged is defined there, once,
for both engines). :func:`measure` is the measurement of one watch, in C here and in
Python (its twin, which the suite's own engine uses too); both use only calls that
have no KAPI spec (``fcntl``, ``lseek``, ``fstat``, ``pread64``, ``ioctl``,
``newfstatat``, ``openat``, ``close_range``), so the measuring is not traced as a
spec'd call. An fd a successful ``open`` returned is closed at once with
``close_range`` (no spec, so untraced), so a batch of thousands of opens cannot fill
the fd table.

With KCOV on (:func:`cov_open`, a kernel with ``CONFIG_KCOV``) ``kx_run`` also
reads, right after each call, the program counters the call ran in the kernel,
hashes each pair of consecutive ones into a 32-bit *edge*, and reports the
edges this thread has not reported before (:data:`COV_HEAD`, :data:`COV_CALL`),
with the PCs it has not reported before (looked up only at new edges, since a
new PC makes a new edge; they name the kernel functions reached). The host keeps
the plans that reached new kernel code (:mod:`kapi_selftests.fuzz.kcov`).

The table layout (:data:`CALL`, :data:`RESULT`) is shared with the host, which
builds tables with :mod:`struct` and never needs ``ctypes``.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import logging
import os
import stat
import struct
import termios
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kapi_selftests.arch import NR
from kapi_selftests.link.calltable import (
    CACHE_DIR,
    CALL,
    HASH_LIMIT,
    KCOV_PATH,
    MAX_COV_IDS,
    NVAL,
    RESULT,
    WATCH,
    WATCH_BUF,
    WATCH_FD,
    WATCH_FD_TABLE,
    WATCH_PATH,
    WATCH_RESULT,
    library_path,
    result_size,
    watch_counts,
)

__all__ = ["measure", "load", "run_table", "cov_open", "cov_edges"]

log = logging.getLogger(__name__)

class _Lib:
    def __init__(self, path: Path) -> None:
        self.cdll = ctypes.CDLL(str(path))
        self.fn = self.cdll.kx_run
        self.fn.restype = ctypes.c_int
        self.fn.argtypes = [ctypes.c_char_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p,
                            ctypes.c_uint32]
        self.cdll.kx_cov_open.restype = ctypes.c_int
        self.cdll.kx_cov_open.argtypes = []
        fold = self.cdll.kx_cov_edges
        fold.restype = ctypes.c_uint32
        fold.argtypes = [ctypes.c_void_p, ctypes.c_uint64, ctypes.c_void_p, ctypes.c_uint32,
                         ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint32, ctypes.c_void_p,
                         ctypes.c_void_p]
        #: KCOV's per-batch output buffer (made once: a megabyte, zeroed, per batch costs
        #: more than the copy out)
        self.cov_buf: ctypes.Array[ctypes.c_uint32] | None = None


_loaded: dict[Path, _Lib] = {}


def load(path: Path | None) -> _Lib | None:
    """The executor library at ``path`` (None: use the ctypes fallback)."""
    if path is None:
        return None
    lib = _loaded.get(path)
    if lib is None:
        lib = _loaded[path] = _Lib(path)
    return lib


def _no_executor() -> OSError:
    return OSError(errno.ENOEXEC, "KCOV needs the C batch executor (no C compiler)")


def cov_open(lib: _Lib | None) -> None:
    """Turn KCOV on for the calling thread (the one that will issue the tables).

    :raise OSError: no C executor (``ENOEXEC``), or the kernel's ``kcov`` refused (its
        errno: ``ENOENT`` without ``CONFIG_KCOV`` or debugfs)
    """
    if lib is None:
        raise _no_executor()
    err = lib.cdll.kx_cov_open()
    if err < 0:
        raise OSError(-err, f"{KCOV_PATH}: {os.strerror(-err)}")


def cov_edges(lib: _Lib, pcs: Sequence[int],
              max_ids: int = 1 << 16) -> tuple[int, list[int], int, list[int]]:
    """Fold ``pcs`` (one call's trace) into this thread's seen edges and PCs, as
    ``kx_run`` does.

    :return: the count of new edges and the ids stored, the count of new PCs and their
        low 32 bits stored (at most ``max_ids`` each)
    """
    arr = (ctypes.c_uint64 * max(len(pcs), 1))(*pcs)
    ids = (ctypes.c_uint32 * max(max_ids, 1))()
    new_pcs = (ctypes.c_uint32 * max(max_ids, 1))()
    stored, pc_stored, pc_new = ctypes.c_uint32(), ctypes.c_uint32(), ctypes.c_uint32()
    new = lib.cdll.kx_cov_edges(arr, len(pcs), ids, max_ids, ctypes.byref(stored), new_pcs,
                                max_ids, ctypes.byref(pc_stored), ctypes.byref(pc_new))
    return (int(new), list(ids[:stored.value]), int(pc_new.value),
            list(new_pcs[:pc_stored.value]))


def run_table(lib: _Lib | None, table: bytes, n: int, *,
              kcov: bool = False) -> tuple[bytes, int]:
    """Issue the ``n`` calls of ``table``; return the results and the caller's tid.

    :param kcov: KCOV is on (:func:`cov_open`): the results are followed by the
        batch's coverage (:data:`COV_HEAD`, ``n`` :data:`COV_CALL`, the edge ids, the
        new PCs)
    """
    counts = watch_counts(table, n)
    if lib is not None:
        out = ctypes.create_string_buffer(result_size(counts))
        if not kcov:
            tid = lib.fn(table, n, out, None, 0)
            return out.raw, int(tid)
        head = 4 + 3 * n
        words = head + 2 * MAX_COV_IDS
        if lib.cov_buf is None or len(lib.cov_buf) < words:
            lib.cov_buf = (ctypes.c_uint32 * words)()
        tid = lib.fn(table, n, out, lib.cov_buf, MAX_COV_IDS)
        buf = lib.cov_buf
        pcs_at = ctypes.addressof(buf) + 4 * (head + MAX_COV_IDS)
        cov = ctypes.string_at(buf, 4 * (head + buf[0])) + ctypes.string_at(pcs_at, 4 * buf[2])
        return out.raw + cov, int(tid)
    if kcov:
        raise _no_executor()
    return _run_python(table, counts), threading.get_native_id()


def _run_python(table: bytes, counts: Sequence[int]) -> bytes:
    # The same loop with ctypes: for machines without a C compiler, and the reference.
    from kapi_selftests.guest.syscalls import invoke

    out = bytearray(result_size(counts))
    toff = roff = 0
    for k in counts:
        v = CALL.unpack_from(table, toff)
        nr, regs = v[0], v[1:7]
        watches = [WATCH.unpack_from(table, toff + CALL.size + j * WATCH.size)
                   for j in range(k)]
        before = [measure(*w) for w in watches]
        rec = invoke(nr, *regs)
        after = [measure(w[0], w[1], w[2], b) for w, b in zip(watches, before, strict=True)]
        RESULT.pack_into(out, roff, rec.ret, rec.t_ns, rec.t_end_ns)
        for j in range(k):
            WATCH_RESULT.pack_into(out, roff + RESULT.size + j * WATCH_RESULT.size,
                                   *before[j], *after[j])
        if nr == NR["open"] and rec.ret >= 0:
            _close(rec.ret)  # as the C loop: close_range, untraced
        toff += CALL.size + k * WATCH.size
        roff += RESULT.size + k * WATCH_RESULT.size
    return bytes(out)


_HASH0, _M64 = 1469598103934665603, (1 << 64) - 1


#: the built executor's ``kx_hash_of`` (None: not looked for yet; False: not built)
_native_hash: Any = None


def _native() -> Any:
    # The C hash when the executor library is built (the host builds it into the cache
    # the guest reads): the same numbers as the Python loop below, 100x faster, which the
    # suite's engine needs (it hashes every buffer and file a rejected call names).
    global _native_hash
    if _native_hash is None:
        path = library_path(CACHE_DIR)
        _native_hash = False
        if path.is_file():
            lib = load(path)
            if lib is not None and hasattr(lib.cdll, "kx_hash_of"):
                _native_hash = lib.cdll.kx_hash_of
                _native_hash.restype = ctypes.c_uint64
                _native_hash.argtypes = [ctypes.c_void_p, ctypes.c_uint64]
    return _native_hash


def _signed(h: int) -> int:
    return h - (1 << 64) if h >= 1 << 63 else h


def _hash_at(addr: int, n: int) -> int:
    # kx_hash of n bytes of this process's memory at addr, as a signed 64-bit number
    fn = _native()
    return _signed(fn(addr, n)) if fn else _hash(ctypes.string_at(addr, n))


def _hash(data: bytes) -> int:
    # kx_hash over data, as a signed 64-bit number
    fn = _native()
    if fn:
        return _signed(fn(data, len(data)))
    h = _HASH0
    words = len(data) // 8
    for v in struct.unpack_from(f"<{words}Q", data):
        h = ((h ^ v) * 1099511628211) & _M64
        h ^= h >> 29
    for b in data[words * 8:]:
        h = ((h ^ b) * 1099511628211) & _M64
    return _signed(h)


def _close(fd: int) -> None:
    # close_range, not close: close has a KAPI spec, and this may run in a capture window
    from kapi_selftests.guest.syscalls import invoke

    invoke(NR["close_range"], fd, fd, 0)


def _file_hash(fd: int) -> int:
    try:
        return _hash(os.pread(fd, HASH_LIMIT, 0))
    except OSError:
        return -1


def measure(kind: int, x: int, length: int,
            before: Sequence[int] | None = None) -> tuple[int, ...]:
    """One watch's :data:`NVAL` numbers, as the C executor measures them (-1: not measured).

    ``WATCH_FD``: open?, offset (not of a pipe or socket), size, content hash (regular
    file), bytes readable (``FIONREAD``; not of a regular file, where it is size -
    offset); ``WATCH_BUF``: the hash of its first :data:`HASH_LIMIT` bytes;
    ``WATCH_PATH``: exists? (not following a last symlink), -1, size, content hash
    (regular file); ``WATCH_FD_TABLE``: before the call, the lowest free fd number;
    after it (``before`` given: the numbers measured before), that number if it is
    still free, else the number + 1.
    """
    out = [-1] * NVAL
    if kind == WATCH_FD:
        fd = x & 0xFFFFFFFF
        try:
            st = os.fstat(fd)
        except OSError:
            out[0] = 0
            return tuple(out)
        out[0], out[2] = 1, st.st_size
        if not stat.S_ISFIFO(st.st_mode) and not stat.S_ISSOCK(st.st_mode):
            try:
                out[1] = os.lseek(fd, 0, os.SEEK_CUR)
            except OSError:
                pass
        if stat.S_ISREG(st.st_mode):
            out[3] = _file_hash(fd)
        else:
            try:
                out[4] = struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0" * 4))[0]
            except OSError:
                pass
    elif kind == WATCH_BUF:
        out[0] = _hash_at(x, min(length, HASH_LIMIT))
    elif kind == WATCH_PATH:
        path = ctypes.string_at(x)
        try:
            st = os.lstat(path)
        except (OSError, ValueError):
            out[0] = 0
            return tuple(out)
        out[0], out[2] = 1, st.st_size
        if stat.S_ISREG(st.st_mode):
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
            except OSError:
                return tuple(out)
            out[3] = _file_hash(fd)
            _close(fd)
    elif kind == WATCH_FD_TABLE and before is not None:
        if before[0] >= 0:
            try:
                fcntl.fcntl(before[0], fcntl.F_GETFD)
                out[0] = before[0] + 1
            except OSError:
                out[0] = before[0]
    elif kind == WATCH_FD_TABLE:
        try:
            fd = os.open("/", os.O_PATH | os.O_CLOEXEC)
        except OSError:
            return tuple(out)
        out[0] = fd
        _close(fd)
    return tuple(out)
