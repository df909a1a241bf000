"""The 29 cases of the series' C selftest, each a named test that can never shrink away.

Each case's calls are built in the harness's own memory and scratch directory
(the upstream ``/tmp`` paths move into it), issued in one capture window, and
judged twice: by the oracle against the kapi events (all five checks), and
against the exact outcome the case records for a KAPI v4 kernel. On a kernel
without the kapi events the calls still run and are checked against the
generic syscall events (pairing, registers, ret); the KAPI outcomes skip.
"""

from __future__ import annotations

import errno
import os
import signal
from collections.abc import Iterator
from contextlib import ExitStack

import pytest

from kapi_selftests.arch import NR, PAGE_SIZE
from kapi_selftests.guest.harness import Harness
from kapi_selftests.oracle.checks import check_calls
from kapi_selftests.oracle.upstream_cases import (
    UPSTREAM_CASES,
    Arg,
    ArgKind,
    CaseCall,
    FdKind,
    RetKind,
    UpstreamCase,
)
from kapi_selftests.records import Batch, EventSource, SyscallRecord
from kapi_selftests.trace.ringbuf import decode

CASES = [c for c in UPSTREAM_CASES if c.calls]
KMSG_CASE = next(c for c in UPSTREAM_CASES if c.kmsg)


class _Fds:
    """The fds the cases name, opened on first use, closed (or restored) at the end."""

    def __init__(self, stack: ExitStack) -> None:
        self.stack = stack
        self.fds: dict[FdKind, int] = {}

    def get(self, kind: FdKind) -> int:
        if kind in self.fds:
            return self.fds[kind]
        if kind is FdKind.READABLE_FILE:
            path = "/etc/hostname" if os.path.exists("/etc/hostname") else "/etc/passwd"
            fd = os.open(path, os.O_RDONLY)
        elif kind is FdKind.DEVNULL_RDONLY:
            fd = os.open("/dev/null", os.O_RDONLY)
        elif kind is FdKind.DEVNULL_WRONLY:
            fd = os.open("/dev/null", os.O_WRONLY)
        elif kind in (FdKind.PIPE_READ_WITH_DATA, FdKind.PIPE_WRITE,
                      FdKind.PIPE_READ_WRITER_CLOSED, FdKind.PIPE_WRITE_READER_CLOSED):
            r, w = os.pipe()
            if kind is FdKind.PIPE_READ_WITH_DATA:
                os.write(w, b"hello")
            if kind in (FdKind.PIPE_READ_WITH_DATA, FdKind.PIPE_READ_WRITER_CLOSED):
                fd, other = r, w
            else:
                fd, other = w, r
            if kind in (FdKind.PIPE_READ_WRITER_CLOSED, FdKind.PIPE_WRITE_READER_CLOSED):
                os.close(other)
            else:
                self.stack.callback(_close_quiet, other)
        elif kind is FdKind.CLOSED:
            fd = os.open("/dev/null", os.O_RDONLY)
            os.close(fd)
            self.fds[kind] = fd
            return fd
        else:  # STDIN_DUPED: close(0) is the call under test; put fd 0 back afterwards
            saved = os.dup(0)
            self.stack.callback(_restore_stdin, saved)
            fd = 0
        self.stack.callback(_close_quiet, fd) if fd != 0 else None
        self.fds[kind] = fd
        return fd


def _close_quiet(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


def _restore_stdin(saved: int) -> None:
    os.dup2(saved, 0)
    os.close(saved)


def _regs(h: Harness, fds: _Fds, call: CaseCall) -> tuple[int, ...]:
    scratch = str(h.pool.scratch)
    out = []
    for a in call.args:
        out.append(_reg(h, fds, a, scratch))
    return tuple(out)


def _reg(h: Harness, fds: _Fds, a: Arg, scratch: str) -> int:
    if a.kind is ArgKind.VALUE:
        assert isinstance(a.value, int)
        return a.value
    if a.kind is ArgKind.FD:
        assert isinstance(a.value, FdKind)
        return fds.get(a.value)
    if a.kind is ArgKind.PATH:
        assert isinstance(a.value, str)
        path = a.value.replace("/tmp/", scratch + "/", 1)  # destructive cases stay in scratch
        return h.arena.cstring(path)
    if a.kind is ArgKind.LONG_PATH:
        assert isinstance(a.value, int)
        return h.arena.cstring(b"/" + b"A" * (a.value - 1))
    if a.kind is ArgKind.BUFFER:
        assert isinstance(a.value, int)
        return h.arena.buffer(max(a.value, PAGE_SIZE))
    if a.kind is ArgKind.BYTES:
        assert isinstance(a.value, bytes)
        return h.arena.buffer(len(a.value), a.value)
    if a.kind is ArgKind.ADDRESS:
        assert isinstance(a.value, int)
        return a.value
    return 0


def _outcome_mismatch(call: CaseCall, rec: SyscallRecord) -> str | None:
    e = call.expect
    if e.errno:
        ok = rec.errno == e.errno
    elif e.kind is RetKind.FD or e.kind is RetKind.NONNEGATIVE:
        ok = rec.ret >= 0
    else:
        ok = rec.ret == e.ret
    if ok:
        return None
    want = f"-{errno.errorcode[e.errno]}" if e.errno else (
        ">= 0" if e.kind is not RetKind.EXACT else str(e.ret))
    return f"{rec.describe()}: expected {want} on a KAPI v4 kernel"


@pytest.fixture
def sigpipe_seen() -> Iterator[list[int]]:
    seen: list[int] = []
    old = signal.signal(signal.SIGPIPE, lambda s, f: seen.append(s))
    yield seen
    signal.signal(signal.SIGPIPE, old)


def _issue(h: Harness, case: UpstreamCase) -> Batch:
    with ExitStack() as stack:
        fds = _Fds(stack)
        calls = [(NR[c.syscall], _regs(h, fds, c)) for c in case.calls]
        batch = h.executor.run(calls)
        for rec in batch.records:  # fds the case's own open() calls returned
            if rec.name == "open" and rec.ret > 2:
                _close_quiet(rec.ret)
    return batch


@pytest.mark.parametrize("case", CASES, ids=[f"{c.number:02d}-{c.name}" for c in CASES])
def test_upstream(any_harness: Harness, case: UpstreamCase, sigpipe_seen: list[int]) -> None:
    h = any_harness
    batch = _issue(h, case)
    capture = decode(batch.raw)
    checks = check_calls(batch.records, capture, batch.source, h.specs, memory=h.arena)
    bad = [c.explain() for c in checks if not c.ok]
    assert not bad, "\n\n".join(bad)
    if batch.source is EventSource.SYSCALLS:
        return  # the exact outcomes below are those of a KAPI kernel
    wrong = [m for c, r in zip(case.calls, batch.records, strict=True)
             if (m := _outcome_mismatch(c, r))]
    assert not wrong, "\n".join(wrong)
    for c, chk in zip(case.calls, checks, strict=True):
        exits = [e for e in chk.events if e.name == "kapi_syscall_exit"]
        assert exits and bool(exits[-1].fields["spec_match"]) == c.expect.spec_match, \
            chk.explain()
        if c.expect.rejected:
            p = chk.prediction
            assert p is not None and p.rejection is not None \
                and p.rejection.param == c.expect.rejected, chk.explain()
    if "SIGPIPE" in case.setup:
        assert sigpipe_seen, "the write to a closed pipe raised no SIGPIPE"


def test_upstream_29_dmesg_has_validator_warnings(kapi_harness: Harness) -> None:
    """After the rejected cases ran, the kernel log holds the validator's warnings."""
    for case in CASES:
        if case.number in (5, 6, 7, 8):
            _issue(kapi_harness, case)
    if not os.path.exists("/dev/kmsg"):
        pytest.skip("no /dev/kmsg (a kernel without CONFIG_PRINTK, or no devtmpfs)")
    fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)  # any other failure fails
    text = []
    try:
        while True:
            try:
                text.append(os.read(fd, 8192).decode(errors="replace"))
            except BlockingIOError:
                break
    finally:
        os.close(fd)
    log = "".join(text)
    for needle, count in KMSG_CASE.kmsg:
        assert log.count(needle) >= count, f"{needle!r} seen {log.count(needle)}x, want {count}"
