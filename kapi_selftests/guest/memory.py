"""Harness-owned user memory for syscall arguments: every mapping is ours and released.

An :class:`Arena` hands out addresses with a known shape: page-aligned buffers,
buffers that end at a ``PROT_NONE`` guard page, read-only pages, addresses that
are certainly unmapped, NULL, kernel-half addresses, strings that run into a
guard page without a NUL, and paths of an exact length. It must not touch
memory it did not map; closing the arena unmaps everything it mapped.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
from dataclasses import dataclass
from types import TracebackType

from kapi_selftests.arch import KERNEL_HALF, PAGE_SIZE, PATH_MAX
from kapi_selftests.oracle.predict import LA57_PROBE_HINT, user_ptr_max_from_probe

__all__ = ["Arena", "Region", "PAGE_SIZE", "PATH_MAX", "page_round_up", "find_user_ptr_max"]

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                       ctypes.c_int, ctypes.c_long]
_libc.munmap.restype = ctypes.c_int
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.mprotect.restype = ctypes.c_int
_libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]

_MAP_FAILED = ctypes.c_void_p(-1).value
_MAP_FIXED_NOREPLACE = 0x100000
PROT_NONE, PROT_READ, PROT_WRITE = 0, 1, 2


_USER_PTR_MAX: list[int] = []  # found once per process


def find_user_ptr_max() -> int:
    """The running kernel's ``USER_PTR_MAX``, found by behaviour, once per process.

    Maps one page with a hint above every 4-level user address: a 5-level paging kernel
    (QEMU's ``-cpu max`` offers LA57) maps it there, a 4-level one (or ``no5lvl``) does
    not. The page is unmapped again. :func:`kapi_selftests.oracle.predict.user_ptr_max_from_probe`
    reads the answer.
    """

    if not _USER_PTR_MAX:
        addr = _libc.mmap(LA57_PROBE_HINT, PAGE_SIZE, PROT_READ,
                          mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0)
        mapped = None if addr is None or addr == _MAP_FAILED else int(addr)
        if mapped is not None:
            _libc.munmap(mapped, PAGE_SIZE)
        _USER_PTR_MAX.append(user_ptr_max_from_probe(mapped))
    return _USER_PTR_MAX[0]


def page_round_up(n: int) -> int:
    return (n + PAGE_SIZE - 1) // PAGE_SIZE * PAGE_SIZE


@dataclass(frozen=True, slots=True)
class Region:
    """A mapping the arena owns: ``[addr, addr + length)``, with its protection when mapped
    (guard pages and read-only pages change it later; :meth:`Arena.accessible` knows)."""

    addr: int
    length: int
    prot: int

    @property
    def end(self) -> int:
        return self.addr + self.length


class Arena:
    """Owner of every user mapping the harness passes to syscalls.

    Use as a context manager; :meth:`close` unmaps all regions. Addresses are
    plain ints, ready to go in a register.
    """

    def __init__(self) -> None:
        #: the kernel's USER_PTR_MAX (the oracle reads it from the arena it is given)
        self.user_ptr_max = find_user_ptr_max()
        self._regions: list[Region] = []
        self._prot: dict[int, int] = {}  # page address -> protection, for every page we own
        self._closed = False

    def __enter__(self) -> Arena:
        return self

    def __exit__(self, t: type[BaseException] | None, v: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def release(self) -> None:
        """Unmap everything mapped so far; the arena stays usable."""
        for r in self._regions:
            _libc.munmap(r.addr, r.length)
        self._regions.clear()
        self._prot.clear()

    def close(self) -> None:
        self.release()
        self._closed = True

    @property
    def regions(self) -> tuple[Region, ...]:
        return tuple(self._regions)

    def _map(self, length: int, prot: int) -> int:
        if self._closed:
            raise RuntimeError("arena is closed")
        length = page_round_up(max(length, 1))
        addr = _libc.mmap(None, length, prot, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0)
        if addr is None or addr == _MAP_FAILED:
            raise MemoryError(f"mmap of {length} bytes failed, errno {ctypes.get_errno()}")
        self._regions.append(Region(addr, length, prot))
        for page in range(addr, addr + length, PAGE_SIZE):
            self._prot[page] = prot
        return int(addr)

    def _protect(self, addr: int, length: int, prot: int) -> None:
        if _libc.mprotect(addr, length, prot) != 0:
            raise OSError(ctypes.get_errno(), f"mprotect({addr:#x}, {length}) failed")
        for page in range(addr, addr + length, PAGE_SIZE):
            self._prot[page] = prot

    # -- buffers -------------------------------------------------------------------------

    def buffer(self, size: int, fill: bytes = b"") -> int:
        """A page-aligned read-write buffer of at least ``size`` bytes, optionally pre-filled.

        A ``PROT_NONE`` page follows it, so a kernel that runs past the end faults
        instead of scribbling over the interpreter's memory.
        """
        length = page_round_up(max(size, 1))
        addr = self._map(length + PAGE_SIZE, PROT_READ | PROT_WRITE)
        self._protect(addr + length, PAGE_SIZE, PROT_NONE)
        if fill:
            ctypes.memmove(addr, fill, len(fill))
        return addr

    def guard_tail(self, size: int, fill: bytes = b"") -> int:
        """A read-write buffer whose last byte is the last byte before a ``PROT_NONE`` page.

        ``size`` bytes are usable; byte ``size`` faults.
        """
        data_len = page_round_up(max(size, 1))
        base = self._map(data_len + PAGE_SIZE, PROT_READ | PROT_WRITE)
        self._protect(base + data_len, PAGE_SIZE, PROT_NONE)
        addr = base + data_len - size
        if fill:
            ctypes.memmove(addr, fill[:size], min(len(fill), size))
        return addr

    def readonly(self, size: int, fill: bytes = b"") -> int:
        """A page-aligned read-only buffer (the kernel faults writing to it)."""
        addr = self.buffer(size, fill)
        self._protect(addr, page_round_up(max(size, 1)), PROT_READ)
        return addr

    def top_page_address(self) -> int:
        """Where the last page of the user address space starts (``USER_PTR_MAX`` less a
        page: with 5-level paging, higher)."""
        # one past the last user byte (0x7ffffffff000) or the last byte itself: its page
        return (self.user_ptr_max - 1) & ~(PAGE_SIZE - 1)

    def top_page(self) -> int | None:
        """The last page of the user address space (:meth:`top_page_address`), mapped
        read-write for the harness; None when something else holds it (then no call
        may use it)."""
        addr = self.top_page_address()
        if addr in self._prot:
            return addr
        if self._closed:
            raise RuntimeError("arena is closed")
        got = _libc.mmap(addr, PAGE_SIZE, PROT_READ | PROT_WRITE,
                         mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | _MAP_FIXED_NOREPLACE, -1, 0)
        if got is None or got == _MAP_FAILED or got != addr:
            if got not in (None, _MAP_FAILED):
                _libc.munmap(got, PAGE_SIZE)  # an old kernel took it as a hint
            return None
        self._regions.append(Region(addr, PAGE_SIZE, PROT_READ | PROT_WRITE))
        self._prot[addr] = PROT_READ | PROT_WRITE
        return addr

    def unmapped(self) -> int:
        """A user address that is certainly not mapped: a page we mapped and unmapped.

        The page stays reserved as ``PROT_NONE`` so nothing else lands there; any
        access faults exactly like an unmapped page (``EFAULT``).
        """
        addr = self._map(PAGE_SIZE, PROT_NONE)
        return addr

    @staticmethod
    def null() -> int:
        return 0

    @staticmethod
    def kernel_address() -> int:
        """An address in the kernel half: access_ok() refuses it."""
        return KERNEL_HALF + 0x1000

    def unterminated(self, text: bytes) -> int:
        """A string with no NUL that runs straight into a guard page."""
        if b"\0" in text:
            raise ValueError("unterminated() text must not contain NUL")
        return self.guard_tail(len(text), fill=text)

    def cstring(self, text: bytes | str) -> int:
        """A NUL-terminated string in its own mapping."""
        data = text.encode() if isinstance(text, str) else text
        return self.buffer(len(data) + 1, fill=data + b"\0")

    def path_of_len(self, length: int, base: str = "/tmp") -> int:
        """A NUL-terminated path of exactly ``length`` bytes (strlen), ending at a guard page.

        Made of ``base`` followed by ``/x`` components under PATH_MAX - 1 (so only the
        total length matters); the NUL is the last byte before the guard page.
        """
        if length < len(base) + 2:
            raise ValueError(f"length {length} too short for base {base!r}")
        body = base.encode()
        while len(body) < length:
            room = length - len(body)
            comp = min(room - 1, 200)
            body += b"/" + b"x" * comp if comp > 0 else b"/"
        body = body[:length]
        assert len(body) == length
        return self.guard_tail(length + 1, fill=body + b"\0")

    # -- what the kernel will find at an address (the oracle's view of user memory) ---------

    def accessible(self, addr: int, n: int, *, write: bool = False) -> bool:
        """Whether the kernel can read (or write) all of ``[addr, addr+n)`` without a fault.

        Only memory of this arena is known; any other address counts as inaccessible,
        so callers must pass arena addresses, NULL or kernel-half addresses only.
        """
        if n <= 0:
            return True
        need = PROT_WRITE if write else PROT_READ
        first = addr - addr % PAGE_SIZE
        for page in range(first, addr + n, PAGE_SIZE):
            if not self._prot.get(page, PROT_NONE) & need:
                return False
        return True

    def strnlen(self, addr: int, maxlen: int) -> int | None:
        """Length of the NUL-terminated string at ``addr``, like ``strnlen_user`` sees it.

        :return: the length without the NUL when a NUL comes within ``maxlen`` bytes;
            ``maxlen`` when none does but ``maxlen`` bytes are readable;
            None when reading faults first
        """
        for i in range(maxlen):
            a = addr + i
            if a % PAGE_SIZE == 0 or i == 0:
                if not self.accessible(a, 1):
                    return None
            if ctypes.string_at(a, 1) == b"\0":
                return i
        return maxlen

    def strnlen_user(self, addr: int, count: int) -> int | None:
        """``strnlen_user(addr, count)`` with the kernel's result convention (the
        oracle's :class:`~kapi_selftests.oracle.predict.MemoryView`): length including the NUL,
        ``count + 1`` when ``count`` bytes hold no NUL, 0 when a fault comes first."""
        if count <= 0:
            return 0
        n = self.strnlen(addr, count)
        if n is None:
            return 0
        return n + 1 if n < count else count + 1

    def read(self, addr: int, n: int) -> bytes:
        """Read ``n`` bytes of our own memory (for side-effect checks)."""
        return ctypes.string_at(addr, n)

    def write(self, addr: int, data: bytes) -> None:
        ctypes.memmove(addr, data, len(data))

