"""Raw x86-64 syscalls through ctypes ``syscall(2)``, by number; failure is data.

Never goes through libc wrappers (glibc's ``open()`` is ``openat``): every call
is ``syscall(nr, a0..a5)`` with six 64-bit registers, and comes back as a
:class:`SyscallRecord`. Nothing here raises on a failing syscall.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno as _errno
import os
import threading
import time
from dataclasses import dataclass

from kapi_selftests.arch import NR, find_syscall

__all__ = ["SyscallRecord", "invoke", "sys_open", "sys_close", "sys_read", "sys_write",
           "sys_madvise", "MASK64"]

MASK64 = (1 << 64) - 1

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long
_syscall.argtypes = [ctypes.c_long] + [ctypes.c_ulong] * 6


@dataclass(frozen=True, slots=True)
class SyscallRecord:
    """One issued syscall and what userspace saw.

    :param nr: x86-64 syscall number
    :param args: the six register values passed, as unsigned 64-bit
    :param ret: the raw return in the kernel's form: the result, or ``-errno``
    :param errno: the errno userspace saw (0 on success)
    :param tid: thread id of the caller
    :param t_ns: ``CLOCK_MONOTONIC`` just before the call
    :param t_end_ns: ``CLOCK_MONOTONIC`` just after it: the call's events lie in between
        (the trace instance runs on the ``mono`` clock)
    """

    nr: int
    args: tuple[int, int, int, int, int, int]
    ret: int
    errno: int
    tid: int
    t_ns: int = 0
    t_end_ns: int = 0

    @property
    def name(self) -> str:
        abi = find_syscall(self.nr)
        return abi.name if abi else f"syscall_{self.nr}"

    @property
    def failed(self) -> bool:
        return self.errno != 0

    def describe(self) -> str:
        """One line a kernel developer can read: ``read(0x3, 0x7f.., 0x0) = -EFAULT``."""
        abi = find_syscall(self.nr)
        n = len(abi.params) if abi and abi.params_known else 6
        args = ", ".join(hex(a) for a in self.args[:n])
        res = f"-{_errno.errorcode.get(self.errno, self.errno)}" if self.errno else str(self.ret)
        return f"{self.name}({args}) = {res}"


def invoke(nr: int, *args: int) -> SyscallRecord:
    """Issue syscall ``nr`` with up to six register values; never raises on failure.

    Negative Python ints are passed in two's complement, so ``-1`` is
    ``0xffffffffffffffff`` in the register, as C would pass it.
    """
    if len(args) > 6:
        raise ValueError(f"syscall takes at most 6 arguments, got {len(args)}")
    regs = tuple(a & MASK64 for a in args) + (0,) * (6 - len(args))
    tid = threading.get_native_id()
    t_ns = time.monotonic_ns()
    ctypes.set_errno(0)
    ret = _syscall(nr, *regs)
    t_end_ns = time.monotonic_ns()
    err = ctypes.get_errno() if ret == -1 else 0
    return SyscallRecord(nr=nr, args=regs, ret=-err if err else ret,  # type: ignore[arg-type]
                         errno=err, tid=tid, t_ns=t_ns, t_end_ns=t_end_ns)


def _ptr(buf: int | bytes | ctypes.Array[ctypes.c_char] | None) -> int:
    if buf is None:
        return 0
    if isinstance(buf, int):
        return buf
    if isinstance(buf, bytes):
        raise TypeError("pass a ctypes buffer or an address, not bytes (it may move)")
    return ctypes.addressof(buf)


def sys_open(filename: int | ctypes.Array[ctypes.c_char], flags: int = os.O_RDONLY,
             mode: int = 0) -> SyscallRecord:
    """``open(2)`` by number (2), not glibc's openat-based wrapper."""
    return invoke(NR["open"], _ptr(filename), flags, mode)


def sys_close(fd: int) -> SyscallRecord:
    return invoke(NR["close"], fd)


def sys_read(fd: int, buf: int | ctypes.Array[ctypes.c_char] | None, count: int) -> SyscallRecord:
    return invoke(NR["read"], fd, _ptr(buf), count)


def sys_write(fd: int, buf: int | ctypes.Array[ctypes.c_char] | None,
              count: int) -> SyscallRecord:
    return invoke(NR["write"], fd, _ptr(buf), count)


def sys_madvise(start: int, length: int, advice: int) -> SyscallRecord:
    return invoke(NR["madvise"], start, length, advice)

