"""The 29 cases of the series' C selftest (``tools/testing/selftests/kapi``), as data.

Each case names the upstream test, the calls it makes in terms the harness can
build (which fd, which buffer, which path), and what a ``CONFIG_KAPI_RUNTIME_CHECKS``
kernel does with them according to ``kernel/api/kernel_api_spec.c`` (the
upstream C test often accepts several errnos; ``upstream_accepts`` keeps that
for reference, ``expect`` is exact). The in-guest suite runs each case as a
named example and judges it with :mod:`kapi_selftests.oracle.predict`.

Pure data: no I/O.
"""

from __future__ import annotations

import enum
import errno
from dataclasses import dataclass

__all__ = ["ArgKind", "FdKind", "RetKind", "Arg", "Expect", "CaseCall", "UpstreamCase",
           "UPSTREAM_CASES", "O_RDONLY", "O_WRONLY", "O_CREAT", "O_EXCL", "O_DIRECTORY",
           "O_CLOEXEC"]

O_RDONLY, O_WRONLY = 0, 1
O_CREAT, O_EXCL = 0o100, 0o200
O_DIRECTORY, O_CLOEXEC = 0o200000, 0o2000000


class FdKind(enum.Enum):
    """File descriptors the cases need (the harness opens them in setup)."""

    READABLE_FILE = "readable_file"  # /etc/hostname, else /etc/passwd, O_RDONLY
    DEVNULL_RDONLY = "devnull_rdonly"
    DEVNULL_WRONLY = "devnull_wronly"
    PIPE_READ_WITH_DATA = "pipe_read_with_data"  # read end, "hello" queued
    PIPE_WRITE = "pipe_write"  # write end, reader open
    PIPE_READ_WRITER_CLOSED = "pipe_read_writer_closed"
    PIPE_WRITE_READER_CLOSED = "pipe_write_reader_closed"  # SIGPIPE caught by a handler
    CLOSED = "closed"  # opened on /dev/null, then closed
    STDIN_DUPED = "stdin_duped"  # fd 0, after dup(0) so it can be restored


class ArgKind(enum.Enum):
    """How to build one register value."""

    VALUE = "value"  # a literal register value (value: int; negative = two's complement)
    FD = "fd"  # an fd of kind ``value`` (FdKind)
    PATH = "path"  # a NUL-terminated path string (value: str)
    LONG_PATH = "long_path"  # "/" then "A"s, strlen ``value``, NUL-terminated
    BUFFER = "buffer"  # a writable buffer of ``value`` bytes
    BYTES = "bytes"  # a buffer holding ``value`` (bytes; no NUL added)
    ADDRESS = "address"  # a literal user address, not mapped (value: int)
    NULL = "null"  # 0


class RetKind(enum.Enum):
    """How to compare the return value."""

    EXACT = "exact"  # ret == Expect.ret (or -errno)
    FD = "fd"  # a new fd (>= 0)
    NONNEGATIVE = "nonnegative"  # >= 0 (bytes read from a file of unknown size)


@dataclass(frozen=True, slots=True)
class Arg:
    kind: ArgKind
    value: int | str | bytes | FdKind | None = None


@dataclass(frozen=True, slots=True)
class Expect:
    """The outcome on a KAPI v4 kernel.

    :param kind: how to compare the return value
    :param ret: the value for EXACT (ignored when ``errno`` is set)
    :param errno: errno userspace sees (0 for success)
    :param spec_match: ``spec_match`` of the exit event
    :param rejected: the parameter validation rejects (None: the handler runs)
    :param upstream_accepts: errno names the C test accepts (it is looser)
    """

    kind: RetKind = RetKind.EXACT
    ret: int = 0
    errno: int = 0
    spec_match: bool = True
    rejected: str | None = None
    upstream_accepts: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class CaseCall:
    syscall: str
    args: tuple[Arg, ...]
    expect: Expect


@dataclass(frozen=True, slots=True)
class UpstreamCase:
    """One upstream test.

    :param number: its number in the C test's plan (1-29)
    :param name: its TAP description
    :param calls: the calls, in order (the judged ones)
    :param setup: what to prepare first, in words
    :param note: where the upstream comment and the kernel code differ, if they do
    :param kmsg: for the dmesg case: (substring, minimum count) of validator warnings
    :param needs_kapi: the upstream test skips it without KAPI runtime checks
    """

    number: int
    name: str
    calls: tuple[CaseCall, ...]
    setup: str = ""
    note: str = ""
    kmsg: tuple[tuple[str, int], ...] = ()
    needs_kapi: bool = False


def _v(x: int) -> Arg:
    return Arg(ArgKind.VALUE, x)


def _fd(k: FdKind) -> Arg:
    return Arg(ArgKind.FD, k)


def _path(p: str) -> Arg:
    return Arg(ArgKind.PATH, p)


_EINVAL = errno.EINVAL
_OK = Expect()


def _err(e: int, *, rejected: str | None = None, accepts: tuple[str, ...] = ()) -> Expect:
    return Expect(RetKind.EXACT, -e, e, spec_match=rejected is None, rejected=rejected,
                  upstream_accepts=accepts or (errno.errorcode[e],))


_OPEN_READABLE = CaseCall("open", (_path("/etc/hostname"), _v(O_RDONLY), _v(0)),
                          Expect(RetKind.FD))

UPSTREAM_CASES: tuple[UpstreamCase, ...] = (
    UpstreamCase(1, "open valid file", (_OPEN_READABLE,),
                 note="falls back to /etc/passwd when /etc/hostname is missing"),
    UpstreamCase(2, "read from valid fd",
                 (CaseCall("read", (_fd(FdKind.READABLE_FILE), Arg(ArgKind.BUFFER, 256), _v(256)),
                           Expect(RetKind.NONNEGATIVE)),)),
    UpstreamCase(3, "write to /dev/null",
                 (CaseCall("write", (_fd(FdKind.DEVNULL_WRONLY), Arg(ArgKind.BYTES, b"hello"),
                                     _v(5)), Expect(ret=5)),)),
    UpstreamCase(4, "close valid fd",
                 (CaseCall("close", (_fd(FdKind.READABLE_FILE),), _OK),)),
    UpstreamCase(5, "open with invalid flags returns EINVAL",
                 (CaseCall("open", (_path("/dev/null"), _v(0x10000000), _v(0)),
                           _err(_EINVAL, rejected="flags")),), needs_kapi=True),
    UpstreamCase(6, "open with invalid mode returns EINVAL",
                 (CaseCall("open", (_path("/tmp/kapi_test_mode"),
                                    _v(O_CREAT | O_WRONLY | O_EXCL), _v(0xFFFF)),
                           _err(_EINVAL, rejected="mode")),),
                 setup="/tmp/kapi_test_mode must not exist; after the call it still must not",
                 needs_kapi=True),
    UpstreamCase(7, "open with NULL path returns EINVAL",
                 (CaseCall("open", (Arg(ArgKind.NULL), _v(O_RDONLY), _v(0)),
                           _err(_EINVAL, rejected="filename", accepts=("EINVAL", "EFAULT"))),),
                 note="upstream also accepts EFAULT (in case the kernel faults first); with "
                      "runtime checks the validator always runs first: EINVAL"),
    UpstreamCase(8, "open with flag bit 30 (0x40000000) returns EINVAL",
                 (CaseCall("open", (_path("/dev/null"), _v(0x40000000), _v(0)),
                           _err(_EINVAL, rejected="flags")),), needs_kapi=True),
    UpstreamCase(9, "read with fd=-1 returns error",
                 (CaseCall("read", (_v(-1), Arg(ArgKind.BUFFER, 16), _v(16)),
                           _err(_EINVAL, rejected="fd", accepts=("EBADF", "EINVAL"))),),
                 note="the comment says negative fds are rejected; in fact the unsigned int "
                      "cast makes -1 4294967295, rejected as above INT_MAX"),
    UpstreamCase(10, "read with count=0 returns 0",
                 (CaseCall("read", (_fd(FdKind.DEVNULL_RDONLY), Arg(ArgKind.BUFFER, 1), _v(0)),
                           _OK),)),
    UpstreamCase(11, "write with count=0 returns 0",
                 (CaseCall("write", (_fd(FdKind.DEVNULL_WRONLY), Arg(ArgKind.BYTES, b"x\0"),
                                     _v(0)), _OK),)),
    UpstreamCase(12, "open with path > PATH_MAX returns ENAMETOOLONG/EINVAL",
                 (CaseCall("open", (Arg(ArgKind.LONG_PATH, 4096 + 255), _v(O_RDONLY), _v(0)),
                           _err(_EINVAL, rejected="filename",
                                accepts=("ENAMETOOLONG", "EINVAL"))),)),
    UpstreamCase(13, "read with unmapped buffer returns EFAULT/EINVAL",
                 (CaseCall("read", (_fd(FdKind.PIPE_READ_WITH_DATA),
                                    Arg(ArgKind.ADDRESS, 0xDEAD0000), _v(16)),
                           _err(errno.EFAULT, accepts=("EFAULT", "EINVAL"))),),
                 note="access_ok() passes for any user address: the handler faults (EFAULT)"),
    UpstreamCase(14, "write with unmapped buffer returns EFAULT/EINVAL",
                 (CaseCall("write", (_fd(FdKind.PIPE_WRITE), Arg(ArgKind.ADDRESS, 0xDEAD0000),
                                     _v(16)),
                           _err(errno.EFAULT, accepts=("EFAULT", "EINVAL"))),)),
    UpstreamCase(15, "close already-closed fd returns EBADF",
                 (CaseCall("close", (_fd(FdKind.CLOSED),), _err(errno.EBADF)),)),
    UpstreamCase(16, "open /dev/null with O_RDONLY|O_CLOEXEC succeeds",
                 (CaseCall("open", (_path("/dev/null"), _v(O_RDONLY | O_CLOEXEC), _v(0)),
                           Expect(RetKind.FD)),)),
    UpstreamCase(17, "write 0 bytes to /dev/null returns 0",
                 (CaseCall("write", (_fd(FdKind.DEVNULL_WRONLY), Arg(ArgKind.BYTES, b"\0"),
                                     _v(0)), _OK),)),
    UpstreamCase(18, "read from write-only fd returns EBADF",
                 (CaseCall("read", (_fd(FdKind.DEVNULL_WRONLY), Arg(ArgKind.BUFFER, 16), _v(16)),
                           _err(errno.EBADF)),)),
    UpstreamCase(19, "write to read-only fd returns EBADF",
                 (CaseCall("write", (_fd(FdKind.DEVNULL_RDONLY), Arg(ArgKind.BYTES, b"hello"),
                                     _v(5)), _err(errno.EBADF)),)),
    UpstreamCase(20, "close fd 9999 returns EBADF",
                 (CaseCall("close", (_v(9999),), _err(errno.EBADF)),)),
    UpstreamCase(21, "read from closed pipe returns 0 (EOF)",
                 (CaseCall("read", (_fd(FdKind.PIPE_READ_WRITER_CLOSED), Arg(ArgKind.BUFFER, 16),
                                    _v(16)), _OK),)),
    UpstreamCase(22, "write to closed pipe returns EPIPE + SIGPIPE",
                 (CaseCall("write", (_fd(FdKind.PIPE_WRITE_READER_CLOSED),
                                     Arg(ArgKind.BYTES, b"hello"), _v(5)),
                           _err(errno.EPIPE)),),
                 setup="install a SIGPIPE handler; it must have run after the call"),
    UpstreamCase(23, "open O_DIRECTORY on regular file returns ENOTDIR",
                 (CaseCall("open", (_path("/dev/null"), _v(O_RDONLY | O_DIRECTORY), _v(0)),
                           _err(errno.ENOTDIR)),),
                 note="/dev/null is a character device, not a regular file; ENOTDIR all the "
                      "same"),
    UpstreamCase(24, "open nonexistent file without O_CREAT returns ENOENT",
                 (CaseCall("open", (_path("/tmp/kapi_nonexistent_file_12345"), _v(O_RDONLY),
                                    _v(0)), _err(errno.ENOENT)),)),
    UpstreamCase(25, "close stdin (fd 0) succeeds",
                 (CaseCall("close", (_fd(FdKind.STDIN_DUPED),), _OK),),
                 setup="dup(0) first and dup2() it back afterwards"),
    UpstreamCase(26, "read after close returns EBADF",
                 (CaseCall("read", (_fd(FdKind.CLOSED), Arg(ArgKind.BUFFER, 16), _v(16)),
                           _err(errno.EBADF)),)),
    UpstreamCase(27, "write with large count handled correctly",
                 (CaseCall("write", (_fd(FdKind.DEVNULL_WRONLY), Arg(ArgKind.BUFFER, 64),
                                     _v(0x7FFFF000)), Expect(ret=0x7FFFF000)),),
                 note="upstream expects KAPI may check the buffer against count (EFAULT/EINVAL);"
                      " the v4 validator checks access_ok(buf, count * 0): the call is accepted"
                      " and /dev/null takes all 0x7ffff000 bytes"),
    UpstreamCase(28, "normal syscall path (open/read/write/close) works",
                 (_OPEN_READABLE,
                  CaseCall("read", (_fd(FdKind.READABLE_FILE), Arg(ArgKind.BUFFER, 128),
                                    _v(128)), Expect(RetKind.NONNEGATIVE)),
                  CaseCall("open", (_path("/dev/null"), _v(O_WRONLY), _v(0)),
                           Expect(RetKind.FD)),
                  CaseCall("write", (_fd(FdKind.DEVNULL_WRONLY), Arg(ArgKind.BYTES, b"test"),
                                     _v(4)), Expect(ret=4)),
                  CaseCall("close", (_fd(FdKind.READABLE_FILE),), _OK),
                  CaseCall("close", (_fd(FdKind.DEVNULL_WRONLY),), _OK))),
    UpstreamCase(29, "dmesg contains expected KAPI warnings", (),
                 kmsg=(("contains invalid bits", 2), ("NULL path not allowed", 1)),
                 note="cases 5, 6, 8 log 'contains invalid bits', case 7 'NULL path not "
                      "allowed'; the messages are rate-limited"),
)
