"""ptrace witness: a traced child issues the calls; the tracer's view of each syscall.

With python-ptrace the parent stops the child at every syscall entry and exit
and reads its registers: ``orig_rax`` and ``rdi, rsi, rdx, r10, r8, r9`` at
entry, ``rax`` at exit. That independent view must agree with the
tracepoints. Guest side (needs ptrace permission and fork).
"""

from __future__ import annotations

import ctypes
import os
import signal
from collections.abc import Sequence
from dataclasses import dataclass

from kapi_selftests.arch import MASK64
from kapi_selftests.guest.syscalls import invoke

__all__ = ["WitnessedCall", "run_witnessed"]

_PTRACE_TRACEME = 0


@dataclass(frozen=True, slots=True)
class WitnessedCall:
    """One syscall as the tracer saw it."""

    pid: int
    nr: int
    args: tuple[int, int, int, int, int, int]
    ret: int  # rax at exit, as s64 (the kernel's raw return, restart codes included)


def _child(calls: Sequence[tuple[int, Sequence[int]]]) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    try:
        if libc.ptrace(_PTRACE_TRACEME, 0, None, None) != 0:
            os._exit(3)
        os.kill(os.getpid(), signal.SIGSTOP)
        for nr, args in calls:
            invoke(nr, *args)
    finally:
        os._exit(0)


def run_witnessed(calls: Sequence[tuple[int, Sequence[int]]],
                  nrs: frozenset[int]) -> tuple[int, list[WitnessedCall]]:
    """Fork a child that issues ``calls`` under ptrace; return its pid and the
    syscalls with a number in ``nrs`` as the tracer saw them, in order."""
    from ptrace.debugger import ProcessExit, PtraceDebugger  # imported late: optional, slow

    pid = os.fork()
    if pid == 0:
        _child(calls)
    dbg = PtraceDebugger()
    seen: list[WitnessedCall] = []
    try:
        proc = dbg.addProcess(pid, is_attached=True)  # waits for the child's SIGSTOP
        entry: WitnessedCall | None = None
        while True:
            proc.syscall()
            try:
                dbg.waitSyscall(proc)
            except ProcessExit:
                break
            regs = proc.getregs()
            if entry is None:
                args = (regs.rdi, regs.rsi, regs.rdx, regs.r10, regs.r8, regs.r9)
                entry = WitnessedCall(pid, int(regs.orig_rax),
                                      tuple(int(a) & MASK64 for a in args), 0)  # type: ignore[arg-type]
            else:
                rax = int(regs.rax) & MASK64
                ret = rax - (1 << 64) if rax >> 63 else rax
                if entry.nr in nrs:
                    seen.append(WitnessedCall(pid, entry.nr, entry.args, ret))
                entry = None
    finally:
        dbg.quit()
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass
    return pid, seen
