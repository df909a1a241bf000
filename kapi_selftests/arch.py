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


_BY_NR: dict[int, SyscallABI] = {s.nr: s for s in SYSCALLS.values()}


def find_syscall(name_or_nr: str | int) -> SyscallABI | None:
    """Look a syscall up by name (``open`` or ``sys_open``) or number."""
    if isinstance(name_or_nr, int):
        return _BY_NR.get(name_or_nr)
    return SYSCALLS.get(name_or_nr.removeprefix("sys_"))


# -- argument values the strategies draw from (x86-64 uapi) -----------------------------

#: ``O_*`` open flags, one bit each (x86-64 asm-generic/fcntl.h).
O_FLAGS: dict[str, int] = {
    "O_WRONLY": 0o1, "O_RDWR": 0o2, "O_CREAT": 0o100, "O_EXCL": 0o200, "O_NOCTTY": 0o400,
    "O_TRUNC": 0o1000, "O_APPEND": 0o2000, "O_NONBLOCK": 0o4000, "O_DSYNC": 0o10000,
    "FASYNC": 0o20000, "O_DIRECT": 0o40000, "O_LARGEFILE": 0o100000,
    "O_DIRECTORY": 0o200000, "O_NOFOLLOW": 0o400000, "O_NOATIME": 0o1000000,
    "O_CLOEXEC": 0o2000000, "__O_SYNC": 0o4000000, "O_PATH": 0o10000000,
    "__O_TMPFILE": 0o20000000,
}
O_TMPFILE = O_FLAGS["__O_TMPFILE"] | O_FLAGS["O_DIRECTORY"]

#: ``MADV_*`` advice values (uapi asm-generic/mman-common.h).
MADV: dict[str, int] = {
    "MADV_NORMAL": 0, "MADV_RANDOM": 1, "MADV_SEQUENTIAL": 2, "MADV_WILLNEED": 3,
    "MADV_DONTNEED": 4, "MADV_FREE": 8, "MADV_REMOVE": 9, "MADV_DONTFORK": 10,
    "MADV_DOFORK": 11, "MADV_MERGEABLE": 12, "MADV_UNMERGEABLE": 13, "MADV_HUGEPAGE": 14,
    "MADV_NOHUGEPAGE": 15, "MADV_DONTDUMP": 16, "MADV_DODUMP": 17, "MADV_WIPEONFORK": 18,
    "MADV_KEEPONFORK": 19, "MADV_COLD": 20, "MADV_PAGEOUT": 21, "MADV_POPULATE_READ": 22,
    "MADV_POPULATE_WRITE": 23, "MADV_DONTNEED_LOCKED": 24, "MADV_COLLAPSE": 25,
    "MADV_HWPOISON": 100, "MADV_SOFT_OFFLINE": 101, "MADV_GUARD_INSTALL": 102,
    "MADV_GUARD_REMOVE": 103,
}
#: Advice the harness never issues where the kernel would act on it: poisoning or
#: offlining pages hurts the machine, guard regions make the harness's own reads fault.
MADV_UNSAFE = frozenset({100, 101, 102})
#: Advice that only changes hints, harmless on any range (used with lengths that run
#: past the harness's own mappings).
MADV_HINTS = frozenset({0, 1, 2, 3, 16, 17})

INT_MAX = 2**31 - 1
SSIZE_MAX = 2**63 - 1
#: The kernel's cap on one read/write: INT_MAX rounded down to a page.
MAX_RW_COUNT = INT_MAX & ~(PAGE_SIZE - 1)
