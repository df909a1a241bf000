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
from kapi_selftests.link import calltable
from kapi_selftests.oracle.sideeffects import Watch, judge

needs_cc = pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None,
                              reason="no C compiler")


def _table(calls: list[tuple[int, list[int], list[tuple[int, int, int]]]]) -> bytes:
    out = b""
    for nr, regs, watches in calls:
        out += calltable.CALL.pack(nr, *(regs + [0] * 6)[:6], len(watches))
        out += b"".join(calltable.WATCH.pack(*w) for w in watches)
    return out


def _results(data: bytes, counts: list[int]) -> list[tuple[int, list[tuple[int, ...]]]]:
    out, off = [], 0
    for k in counts:
        ret, t0, t1 = calltable.RESULT.unpack_from(data, off)
        assert 0 < t0 <= t1
        off += calltable.RESULT.size
        ws = []
        for _ in range(k):
            ws.append(calltable.WATCH_RESULT.unpack_from(data, off))
            off += calltable.WATCH_RESULT.size
        out.append((ret, ws))
    assert off == len(data)
    return out


def _scenario(tmp: Path) -> tuple[bytes, list[list[Watch]], list[int], list[object]]:
    f = tmp / "file"
    f.write_bytes(b"0123456789")
    fd = os.open(f, os.O_RDWR)
    r, w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
    buf = ctypes.create_string_buffer(b"x" * 64)
    addr = ctypes.addressof(buf)
    path = ctypes.create_string_buffer(str(tmp / "new").encode())
    fpath = ctypes.create_string_buffer(str(f).encode())
    table = Watch(calltable.WATCH_FD_TABLE, 0, 0, -1)
    calls = [
        (NR["read"], [fd, addr, 4], [Watch(calltable.WATCH_FD, fd, 0, 0),
                                     Watch(calltable.WATCH_BUF, addr, 64, 1), table]),
        (NR["read"], [fd, 0, 4], [Watch(calltable.WATCH_FD, fd, 0, 0)]),  # EFAULT, nothing moves
        (NR["open"], [ctypes.addressof(path), os.O_CREAT | os.O_WRONLY, 0o600],
         [Watch(calltable.WATCH_PATH, ctypes.addressof(path), 0, 0), table]),
        (NR["close"], [2**31 - 1], []),
        # what only the suite's engine saw before: a file's bytes (same size, same
        # offset: pwrite64), through its fd and its path, and a pipe's readable bytes
        (NR["pwrite64"], [fd, addr + 4, 4, 0],  # "xxxx" over "0123"
         [Watch(calltable.WATCH_FD, fd, 0, 0),
          Watch(calltable.WATCH_PATH, ctypes.addressof(fpath), 0, 9)]),
        (NR["write"], [w, addr, 5],
         [Watch(calltable.WATCH_FD, w, 0, 0), Watch(calltable.WATCH_FD, r, 0, 9)]),
        (NR["dup"], [fd], [table]),  # a new fd: the fd table
    ]
    raw = b""
    for nr, regs, ws in calls:
        raw += calltable.CALL.pack(nr, *(regs + [0] * 6)[:6], len(ws))
        raw += b"".join(calltable.WATCH.pack(*wt[:3]) for wt in ws)
    # the ctypes buffers are returned too: the table points into them
    return raw, [c[2] for c in calls], [fd, r, w], [buf, path, fpath]


@needs_cc
def test_c_and_ctypes_executors_agree(tmp_path: Path) -> None:
    lib = cexec.load(calltable.build_library(tmp_path / "cache"))
    assert lib is not None
    got = []
    for which, executor in (("c", lib), ("ctypes", None)):
        d = tmp_path / which
        d.mkdir()
        table, ws, fds, _alive = _scenario(d)
        counts = [len(w) for w in ws]
        data, tid = cexec.run_table(executor, table, len(counts))
        assert tid == __import__("threading").get_native_id()
        res = _results(data, counts)
        dup = res[6][0]
        assert dup >= 0
        fds.append(dup)
        lines = [judge(w, [v[:calltable.NVAL] for v in vs], [v[calltable.NVAL:] for v in vs])
                 for w, (_, vs) in zip(ws, res, strict=True)]
        got.append((res, lines))
        for fd in fds:
            os.close(fd)
        assert (d / "new").exists()  # the open ran (and its fd was closed again)
    (c, c_lines), (py, py_lines) = got
    assert c == py and c_lines == py_lines  # the same numbers, so the same lines
    assert [r for r, _ in c] == [4, -errno.EFAULT, c[2][0], -errno.EBADF, 4, 5, c[6][0]]
    assert c[2][0] >= 0
    # fd watch: (open, offset, size, content hash, readable) before and after
    b, a = c[0][1][0][:5], c[0][1][0][5:]
    assert b[:3] == (1, 0, 10) and a[:3] == (1, 4, 10) and b[3] == a[3] != -1
    assert b[4] == a[4] == -1  # FIONREAD on a regular file is size - offset: not read
    assert c[1][1][0][:5] == c[1][1][0][5:]
    lowest = c[0][1][2][0]
    assert lowest >= 3 and c[0][1][2] == (lowest, *[-1] * 4, lowest, *[-1] * 4)
    # after a new fd: the lowest free number before, + 1 (it is taken now)
    assert c[6][1][0][0] == c[6][0] and c[6][1][0][5] == c[6][0] + 1
    assert c_lines == [
        ["arg0: file offset moved 0 -> 4", "arg1: buffer contents changed"],
        [],
        # the open's fd is measured before the executor closes it
        [f"fd table changed: opened [{c[2][0]}], closed []", "arg0: file created"],
        [],
        ["arg0: file changed (contents)", "arg9: file changed (contents)"],
        ["arg0: readable bytes 0 -> 5", "arg9: readable bytes 0 -> 5"],
        [f"fd table changed: opened [{c[6][0]}], closed []"],
    ]


def test_watch_counts_rejects_a_truncated_table() -> None:
    table = _table([(NR["close"], [5], [(calltable.WATCH_FD, 5, 0)])])
    assert calltable.watch_counts(table, 1) == [1]
    with pytest.raises(ValueError, match="does not hold"):
        calltable.watch_counts(table[:-8], 1)


@needs_cc
def test_the_suite_engine_hashes_with_the_executor_when_it_is_built(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The suite's engine hashes every buffer and file a rejected call names: in C when the
    # library is built (the Python loop is ~100x slower under TCG), with the same numbers.
    monkeypatch.setattr(cexec, "CACHE_DIR", tmp_path)
    data = bytes(range(256)) * 257 + b"tail"  # not a multiple of 8: both loops' ends
    buf = ctypes.create_string_buffer(data, len(data))
    monkeypatch.setattr(cexec, "_native_hash", None)
    python = cexec._hash(data)  # nothing built in tmp_path: the Python loop
    assert cexec._native_hash is False
    assert calltable.build_library(tmp_path) is not None
    monkeypatch.setattr(cexec, "_native_hash", None)
    assert cexec._hash(data) == python == cexec._hash_at(ctypes.addressof(buf), len(data))
    assert cexec._native_hash, "the built library's kx_hash_of was not taken"
    assert cexec._hash(data[:-1]) != python
