"""Turn call plans into register values, and check afterwards that a call left no trace.

Every fd, file and mapping a plan needs is made here, fresh for each call, inside
the harness's scratch directory (:class:`~kapi_selftests.guest.fds.FdPool`) and arena
(:class:`~kapi_selftests.guest.memory.Arena`). Nothing outside them is ever named:
paths are under the scratch directory, madvise addresses are arena mappings.

Side effects (check 5 of the suite: a rejected call must change nothing) are
measured here for the suite's engine, around a batch: what is watched and how a change
is judged is :mod:`kapi_selftests.oracle.sideeffects`, the definition the C executor of fuzz
campaigns shares.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from kapi_selftests.arch import PAGE_SIZE
from kapi_selftests.guest.cexec import measure
from kapi_selftests.guest.fds import FdPool
from kapi_selftests.guest.memory import Arena
from kapi_selftests.oracle.predict import predict
from kapi_selftests.oracle.sideeffects import Watch, judge, watches
from kapi_selftests.oracle.spec import Spec
from kapi_selftests.plan import (
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
    """What a call could change (check 5's watches, :mod:`kapi_selftests.oracle.sideeffects`),
    measured before it ran."""

    watches: tuple[Watch, ...]
    values: tuple[tuple[int, ...], ...]  # cexec.measure of each watch


def snapshot(m: Materialized, arena: Arena) -> Snapshot:
    """Measure everything the call could change, before it runs (outside the capture window)."""
    # The top page of user space is one page that every call of a batch naming it shares:
    # a change there cannot be told to be this call's (an accepted read before it may
    # have filled it), so it is not watched.
    top = arena.top_page_address()

    def readable(addr: int, n: int) -> bool:
        return not top <= addr < top + 2 * PAGE_SIZE and arena.accessible(addr, n)

    ws = tuple(watches(m, readable))
    return Snapshot(ws, tuple(measure(w.kind, w.x, w.length) for w in ws))


def side_effects(before: Snapshot, *, ignore_fds: frozenset[int] = frozenset()) -> list[str]:
    """What changed since ``before``: one line per change, empty when nothing did.

    :param ignore_fds: fds other calls of the same batch opened or closed (the fd
        table is per process: their changes are not this call's)
    """
    after = [measure(w.kind, w.x, w.length, b) for w, b in zip(before.watches, before.values,
                                                                strict=True)]
    return judge(before.watches, before.values, after, ignore_fds=ignore_fds)
