"""cexec: the compiled batch executor and its ctypes twin give the same results."""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
from pathlib import Path

import pytest

from kapi_selftests.arch import NR
from kapi_selftests.guest import cexec

needs_cc = pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None,
                              reason="no C compiler")


def _table(calls: list[tuple[int, list[int], list[tuple[int, int, int]]]]) -> bytes:
    out = b""
    for nr, regs, watches in calls:
        out += cexec.CALL.pack(nr, *(regs + [0] * 6)[:6], len(watches))
        out += b"".join(cexec.WATCH.pack(*w) for w in watches)
    return out


def _results(data: bytes, counts: list[int]) -> list[tuple[int, list[tuple[int, ...]]]]:
    out, off = [], 0
    for k in counts:
        ret, t0, t1 = cexec.RESULT.unpack_from(data, off)
        assert 0 < t0 <= t1
        off += cexec.RESULT.size
        ws = []
        for _ in range(k):
            ws.append(cexec.WATCH_RESULT.unpack_from(data, off))
            off += cexec.WATCH_RESULT.size
        out.append((ret, ws))
    assert off == len(data)
    return out


def _scenario(tmp: Path) -> tuple[bytes, list[int], list[int], list[object]]:
    f = tmp / "file"
    f.write_bytes(b"0123456789")
    fd = os.open(f, os.O_RDWR)
    buf = ctypes.create_string_buffer(b"x" * 64)
    addr = ctypes.addressof(buf)
    path = ctypes.create_string_buffer(str(tmp / "new").encode())
    calls = [
        (NR["read"], [fd, addr, 4], [(cexec.WATCH_FD, fd, 0), (cexec.WATCH_BUF, addr, 64)]),
        (NR["read"], [fd, 0, 4], [(cexec.WATCH_FD, fd, 0)]),  # EFAULT, nothing moves
        (NR["open"], [ctypes.addressof(path), os.O_CREAT | os.O_WRONLY, 0o600],
         [(cexec.WATCH_PATH, ctypes.addressof(path), 0)]),
        (NR["close"], [2**31 - 1], []),
    ]
    # the ctypes buffers are returned too: the table points into them
    return _table(calls), [len(c[2]) for c in calls], [fd], [buf, path]


@needs_cc
def test_c_and_ctypes_executors_agree(tmp_path: Path) -> None:
    lib = cexec.load(cexec.build_library(tmp_path / "cache"))
    assert lib is not None
    got = []
    for which, executor in (("c", lib), ("ctypes", None)):
        d = tmp_path / which
        d.mkdir()
        table, counts, fds, _alive = _scenario(d)
        data, tid = cexec.run_table(executor, table, len(counts))
        assert tid == __import__("threading").get_native_id()
        got.append(_results(data, counts))
        for fd in fds:
            os.close(fd)
        assert (d / "new").exists()  # the open ran (and its fd was closed again)
    c, py = got
    assert [r for r, _ in c] == [r for r, _ in py] == [4, -errno.EFAULT, c[2][0], -errno.EBADF]
    assert c[2][0] >= 0
    # fd watch: (open, offset, size) before and after
    assert c[0][1][0] == py[0][1][0] == (1, 0, 10, 1, 4, 10)
    assert c[1][1][0] == py[1][1][0] == (1, 4, 10, 1, 4, 10)
    # the buffer changed (read wrote 4 bytes into it): the hash differs, same in both
    assert c[0][1][1][0] != c[0][1][1][3] and c[0][1][1] == py[0][1][1]
    # the path did not exist before the open and does after
    assert c[2][1][0][0] == 0 and c[2][1][0][3] == 1 and c[2][1][0] == py[2][1][0]


def test_watch_counts_rejects_a_truncated_table() -> None:
    table = _table([(NR["close"], [5], [(cexec.WATCH_FD, 5, 0)])])
    assert cexec.watch_counts(table, 1) == [1]
    with pytest.raises(ValueError, match="does not hold"):
        cexec.watch_counts(table[:-8], 1)
