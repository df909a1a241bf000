"""Turn call plans into register values, and check afterwards that a call left no trace.

Every fd, file and mapping a plan needs is made here, fresh for each call, inside
the harness's scratch directory (:class:`~kapi_selftests.guest.fds.FdPool`) and arena
(:class:`~kapi_selftests.guest.memory.Arena`). Nothing outside them is ever named:
paths are under the scratch directory, madvise addresses are arena mappings.

Side effects (check 5 of the suite: a rejected call must change nothing) are
measured with calls that have no KAPI spec (``pread64``, ``lseek``, ``ioctl``,
``fstat``), so the measuring itself is not traced as a spec'd call.
"""

from __future__ import annotations

import fcntl
import os
import stat
import struct
import termios
from dataclasses import dataclass

from kapi_selftests.arch import PAGE_SIZE
from kapi_selftests.fuzz.plan import (
    PATH_LENGTHS,
    TOP_BUFS,
    ArgPlan,
    Buf,
    BufKind,
    CallPlan,
    Fd,
    Lit,
    Path,
    PathKind,
    top_address,
)
from kapi_selftests.guest.fds import FdPool
from kapi_selftests.guest.memory import Arena
from kapi_selftests.oracle.predict import predict
from kapi_selftests.oracle.spec import Spec
from kapi_selftests.records import Materialized, Prediction

__all__ = ["Materializer", "Snapshot", "snapshot", "side_effects"]

_CANARY = bytes(range(251)) * 17  # distinctive bytes; prime length so it never lines up


class Materializer:
    """Makes the memory, fds and files a plan names, owned by ``arena`` and ``pool``."""

    def __init__(self, arena: Arena, pool: FdPool) -> None:
        self.arena = arena
        self.pool = pool
        self._existing: bytes | None = None

    @property
    def memory(self) -> Arena:
        """What the oracle may ask about the memory plans point at."""
        return self.arena

    def predict(self, spec: Spec, regs: tuple[int, ...]) -> Prediction:
        """The oracle's prediction, while the memory the registers name is live."""
        return predict(spec, regs, self.arena)

    def __call__(self, plan: CallPlan) -> Materialized:
        m = Materialized(plan, ())
        regs = tuple(self._one(i, a, m) for i, a in enumerate(plan.args))
        return Materialized(plan, regs, m.fds, m.bufs, m.paths)

    def _one(self, i: int, a: ArgPlan, m: Materialized) -> int:
        if isinstance(a, Lit):
            return a.value & 0xFFFFFFFFFFFFFFFF
        if isinstance(a, Fd):
            fd = self.pool.make(a.kind)
            m.fds[i] = fd
            return (fd + (a.high << 32)) & 0xFFFFFFFFFFFFFFFF
        if isinstance(a, Buf):
            addr = self._buf(a)
            m.bufs[i] = (addr, min(a.size, PAGE_SIZE) if a.kind in TOP_BUFS else a.size)
            return addr
        addr, text = self._path(a)
        if text is not None:
            m.paths[i] = text
        return addr

    def _buf(self, b: Buf) -> int:
        ar, size = self.arena, b.size
        fill = (_CANARY * (size // len(_CANARY) + 1))[:size] if 0 < size <= 1 << 20 else b""
        if b.kind is BufKind.MAPPED:
            off = b.offset
            return ar.buffer(size + off, b"\0" * off + fill) + off if off else \
                ar.buffer(size, fill)
        if b.kind in TOP_BUFS:
            top = ar.top_page()
            addr = top_address(b, top, ar.unmapped)
            if top is not None and b.kind is BufKind.LAST_USER and fill:
                ar.write(addr, fill[:min(size, PAGE_SIZE)])
            return addr
        if b.kind is BufKind.GUARD_TAIL:
            return ar.guard_tail(size, fill)
        if b.kind is BufKind.SHORT:
            return ar.guard_tail(max(size - 1, 0), fill[: max(size - 1, 0)])
        if b.kind is BufKind.UNALIGNED:
            return ar.buffer(size + 1, b"\0" + fill) + 1
        if b.kind is BufKind.READONLY:
            return ar.readonly(size, fill)
        if b.kind is BufKind.UNMAPPED:
            return ar.unmapped()
        if b.kind is BufKind.NULL:
            return 0
        return ar.kernel_address()

    def _path(self, p: Path) -> tuple[int, bytes | None]:
        ar, pool, k = self.arena, self.pool, p.kind
        scratch = str(pool.scratch).encode()
        if k is PathKind.NULL:
            return 0, None
        if k is PathKind.KERNEL:
            return ar.kernel_address(), None
        if k is PathKind.UNMAPPED:
            return ar.unmapped(), None
        if k is PathKind.UNTERMINATED:
            return ar.unterminated(scratch + b"/unterminated"), None
        if k in PATH_LENGTHS:
            n = PATH_LENGTHS[k]
            addr = ar.path_of_len(n, base=str(pool.scratch))
            return addr, ar.read(addr, n)
        if k is PathKind.EXISTING:
            path = pool.new_path()
            path.write_bytes(FdPool.CONTENT)
            text = bytes(path)
        elif k is PathKind.NEW:
            text = bytes(pool.new_path("new"))
        elif k is PathKind.MISSING:
            text = bytes(pool.new_path("nodir")) + b"/file"
        elif k is PathKind.DIRECTORY:
            text = scratch
        elif k is PathKind.EMPTY:
            text = b""
        elif k is PathKind.COMPONENT_TOO_LONG:
            text = scratch + b"/" + b"n" * 256
        elif k is PathKind.SYMLINK_LOOP:
            link = pool.new_path("loop")
            if not os.path.lexists(link):
                os.symlink(link.name, link)  # points at itself: ELOOP
            text = bytes(link)
        else:  # DEV_NULL
            text = b"/dev/null"
        return ar.cstring(text), text


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What a call could change, read before it ran."""

    fd_table: frozenset[int]  # which of the call's own fds are open
    bufs: dict[int, bytes]
    files: dict[int, bytes | None]  # arg index -> content of the file an fd or path names
    offsets: dict[int, int]
    pending: dict[int, int]  # arg index -> bytes readable from a pipe/socket fd


def _content(path: bytes) -> bytes | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return b""
        return os.pread(fd, 1 << 20, 0)
    finally:
        os.close(fd)


def _fd_content(fd: int) -> bytes | None:
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None
        return os.pread(fd, 1 << 20, 0)
    except OSError:
        return None


def _pending(fd: int) -> int | None:
    try:
        buf = fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0")
    except OSError:
        return None
    return int(struct.unpack("i", buf)[0])


def snapshot(m: Materialized, pool: FdPool, arena: Arena) -> Snapshot:
    """Read everything the call could change, before it runs (outside the capture window)."""
    # The top page of user space is one page that every call of a batch naming it shares:
    # a change there cannot be told to be this call's (an accepted read before it may
    # have filled it), so it is not watched.
    top = arena.top_page_address()
    bufs = {i: arena.read(a, min(s, 1 << 16)) for i, (a, s) in m.bufs.items()
            if s > 0 and not top <= a < top + 2 * PAGE_SIZE
            and arena.accessible(a, min(s, 1 << 16))}
    files: dict[int, bytes | None] = {i: _content(p) for i, p in m.paths.items() if p}
    offsets: dict[int, int] = {}
    pending: dict[int, int] = {}
    for i, fd in m.fds.items():
        files[i] = _fd_content(fd)
        try:
            offsets[i] = os.lseek(fd, 0, os.SEEK_CUR)
        except OSError:
            pass
        n = _pending(fd)
        if n is not None:
            pending[i] = n
    # Only the fds the call names: the interpreter opens and closes fds of its own
    # (finalizers, the hypothesis database) at any moment, so the whole table is noise.
    table = frozenset(fd for fd in m.fds.values() if pool.is_open(fd))
    return Snapshot(table, bufs, files, offsets, pending)


def side_effects(m: Materialized, before: Snapshot, pool: FdPool, arena: Arena, *,
                 ignore_fds: frozenset[int] = frozenset()) -> list[str]:
    """What changed since ``before``: one line per change, empty when nothing did.

    :param ignore_fds: fds other calls of the same batch opened or closed (the fd
        table is per process: their changes are not this call's)
    """
    after = snapshot(m, pool, arena)
    out: list[str] = []
    if after.fd_table - ignore_fds != before.fd_table - ignore_fds:
        added = sorted(after.fd_table - before.fd_table - ignore_fds)
        gone = sorted(before.fd_table - after.fd_table - ignore_fds)
        out.append(f"fd table changed: opened {added}, closed {gone}")
    for i, data in before.bufs.items():
        if after.bufs.get(i) != data:
            out.append(f"arg{i}: buffer contents changed")
    for i, content in before.files.items():
        if after.files.get(i) != content:
            what = "created" if content is None else "changed"
            out.append(f"arg{i}: file {what}")
    for i, off in before.offsets.items():
        if after.offsets.get(i) != off:
            out.append(f"arg{i}: file offset moved {off} -> {after.offsets.get(i)}")
    for i, n in before.pending.items():
        if after.pending.get(i) != n:
            out.append(f"arg{i}: readable bytes {n} -> {after.pending.get(i)}")
    return out

