"""Raw x86-64 syscalls through ctypes ``syscall(2)``, by number; failure is data.

Never goes through libc wrappers (glibc's ``open()`` is ``openat``): every call
is ``syscall(nr, a0..a5)`` with six 64-bit registers, and comes back as a
:class:`SyscallRecord`. Nothing here raises on a failing syscall.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading
import time

from kapi_selftests.arch import MASK64, NR
from kapi_selftests.records import SyscallRecord

__all__ = ["invoke", "sys_open", "sys_close", "sys_read", "sys_write", "sys_madvise"]

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long
_syscall.argtypes = [ctypes.c_long] + [ctypes.c_ulong] * 6


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

