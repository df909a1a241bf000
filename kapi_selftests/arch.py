"""x86-64 ABI facts as tables: syscall numbers and SYSCALL_DEFINE C parameter types.

Pure data. The C types are the ones of each syscall's SYSCALL_DEFINE in the
kernel (the wrapper casts every 64-bit register to them before KAPI validation
and tracing); :mod:`kapi_selftests.ctype` models the casts.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["SyscallABI", "SYSCALLS", "NR", "PAGE_SIZE", "PATH_MAX", "find_syscall"]

PAGE_SIZE = 4096
PATH_MAX = 4096
#: First address of the kernel half on x86-64 (4-level paging).
KERNEL_HALF = 0xFFFF800000000000
#: One past the last user address (TASK_SIZE_MAX on x86-64 4-level paging).
TASK_SIZE_MAX = 0x00007FFFFFFFF000


@dataclass(frozen=True, slots=True)
class SyscallABI:
    """One syscall's x86-64 number and SYSCALL_DEFINE parameters.

    :param name: kernel name without prefix (``open``)
    :param nr: x86-64 syscall number
    :param params: ``(c_type, name)`` per parameter, in register order
    """

    name: str
    nr: int
    params: tuple[tuple[str, str], ...]

    @property
    def spec_name(self) -> str:
        """The KAPI spec name, as the kapi events carry it (``sys_open``)."""
        return "sys_" + self.name


SYSCALLS: dict[str, SyscallABI] = {
    s.name: s
    for s in (
        SyscallABI("read", 0,
                   (("unsigned int", "fd"), ("char __user *", "buf"), ("size_t", "count"))),
        SyscallABI("write", 1,
                   (("unsigned int", "fd"), ("const char __user *", "buf"), ("size_t", "count"))),
        SyscallABI(
            "open", 2, (("const char __user *", "filename"), ("int", "flags"), ("umode_t", "mode"))
        ),
        SyscallABI("close", 3, (("unsigned int", "fd"),)),
        SyscallABI(
            "madvise", 28, (("unsigned long", "start"), ("size_t", "len_in"), ("int", "behavior"))
        ),
        # Unspec'd syscalls the harness uses itself; they must produce no kapi events.
        SyscallABI("getpid", 39, ()),
        SyscallABI("gettid", 186, ()),
        SyscallABI("writev", 20, (("unsigned long", "fd"), ("const struct iovec __user *", "vec"),
                                  ("unsigned long", "vlen"))),
    )
}

#: Syscall number by name.
NR: dict[str, int] = {s.name: s.nr for s in SYSCALLS.values()}


def find_syscall(name_or_nr: str | int) -> SyscallABI | None:
    """Look a syscall up by name (``open`` or ``sys_open``) or number."""
    if isinstance(name_or_nr, int):
        return next((s for s in SYSCALLS.values() if s.nr == name_or_nr), None)
    return SYSCALLS.get(name_or_nr.removeprefix("sys_"))
