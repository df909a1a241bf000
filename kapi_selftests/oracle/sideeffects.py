"""Check 5, defined once: what a call the validator rejected must leave as it was.

A call the KAPI validator rejects returns -EINVAL without running its handler, so it
must change nothing. Both engines judge that from the same *watches* (:func:`watches`:
what to measure for a materialised call) and the same judgement (:func:`judge`:
before/after measurements to finding lines, one wording):

- the suite's engine (:class:`~kapi_selftests.guest.harness.Harness`, through
  :func:`kapi_selftests.guest.materialize.snapshot` and
  :func:`~kapi_selftests.guest.materialize.side_effects`) measures them in Python
  (:func:`kapi_selftests.guest.cexec.measure`) before and after the whole batch, outside the
  capture window;
- the batch engine of fuzz campaigns (:class:`~kapi_selftests.fuzz.remote.RemoteHarness`,
  the guest's :mod:`~kapi_selftests.guest.agent`) sends them in the call table, and the C
  executor (:mod:`kapi_selftests.guest.cexec`) measures them right before and after the call
  itself, inside the capture window, with the same numbers (``tests/unit/test_cexec.py``).

What is watched for a call predicted to be rejected, argument by argument:

- an fd the materialiser made: whether it is open, its file offset, its file's size
  and a hash of the file's first :data:`~kapi_selftests.link.calltable.HASH_LIMIT` bytes (a
  regular file), and the bytes readable from it (``FIONREAD``: a pipe, a socket; of a
  regular file that is size - offset, already watched);
- a buffer (non-empty, and readable, as the engine's ``readable`` says): a hash of its
  first ``HASH_LIMIT`` bytes;
- a path string (non-empty) the materialiser made: whether it names anything (not
  following a last symlink), its size and a hash of its content (a regular file);

and, for the call as a whole, the fd table: the lowest free fd number, where the
kernel puts a new fd, so a rejected call that left an fd open takes it. (An fd the
call names and closed shows on that fd's own watch; the closing of an fd it does not
name is not watched, nor a second new fd: the number after the lowest free one is not
measured, as it would cost the C executor two more calls per measurement.)

Where the engines differ, it is in when they measure, not what: the suite's engine
measures around a batch, so it ignores the fds other calls of the batch opened or
closed (``ignore_fds``), and does not watch the one top page of user space every
call naming it shares; the C executor measures around each call and needs neither.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, NamedTuple

from kapi_selftests.link import calltable

if TYPE_CHECKING:
    from kapi_selftests.records import Materialized

__all__ = ["Watch", "watches", "judge"]


class Watch(NamedTuple):
    """One thing to measure before and after a call (the fields of a ``calltable.WATCH``)."""

    kind: int  # calltable.WATCH_FD, WATCH_BUF, WATCH_PATH or WATCH_FD_TABLE
    x: int  # the fd, or the buffer's or path string's address (0: the fd table)
    length: int  # bytes of the buffer hashed (0 for the others)
    arg: int  # the argument it is on (-1: the fd table)


def watches(m: Materialized, readable: Callable[[int, int], bool]) -> list[Watch]:
    """What a call predicted to be rejected could change, in argument order, then the
    fd table.

    :param readable: whether ``(addr, size)`` may be read by the measuring
    """
    out: list[Watch] = []
    for i in range(len(m.regs)):
        if i in m.fds:
            out.append(Watch(calltable.WATCH_FD, m.fds[i], 0, i))
        elif i in m.bufs:
            addr, size = m.bufs[i]
            n = min(size, calltable.HASH_LIMIT)
            if n > 0 and readable(addr, n):
                out.append(Watch(calltable.WATCH_BUF, addr, n, i))
        elif m.paths.get(i):
            out.append(Watch(calltable.WATCH_PATH, m.regs[i], 0, i))
    out.append(Watch(calltable.WATCH_FD_TABLE, 0, 0, -1))
    return out


def judge(ws: Sequence[Watch], before: Sequence[Sequence[int]],
          after: Sequence[Sequence[int]], *,
          ignore_fds: frozenset[int] = frozenset()) -> list[str]:
    """What changed between the two measurements of ``ws``: one line per change.

    :param ignore_fds: fds other calls measured within the same window opened or
        closed (the fd table is per process: their changes are not this call's)
    """
    opened: set[int] = set()
    closed: set[int] = set()
    out: list[str] = []
    for w, b, a in zip(ws, before, after, strict=True):
        i = w.arg
        if w.kind == calltable.WATCH_FD:
            if b[0] != a[0]:  # opened or closed: its other numbers go with it
                if w.x not in ignore_fds:
                    (opened if a[0] == 1 else closed).add(w.x)
                continue
            if b[1] != a[1]:
                out.append(f"arg{i}: file offset moved {b[1]} -> {a[1]}")
            if b[2] != a[2]:
                out.append(f"arg{i}: file changed (size {b[2]} -> {a[2]})")
            elif b[3] != a[3]:
                out.append(f"arg{i}: file changed (contents)")
            if b[4] != a[4]:
                out.append(f"arg{i}: readable bytes {b[4]} -> {a[4]}")
        elif w.kind == calltable.WATCH_BUF:
            if b[0] != a[0]:
                out.append(f"arg{i}: buffer contents changed")
        elif w.kind == calltable.WATCH_PATH:
            if b[0] != a[0]:
                out.append(f"arg{i}: file {'created' if a[0] == 1 else 'removed'}")
            elif b[2] != a[2]:
                out.append(f"arg{i}: file changed (size {b[2]} -> {a[2]})")
            elif b[3] != a[3]:
                out.append(f"arg{i}: file changed (contents)")
        elif w.kind == calltable.WATCH_FD_TABLE and 0 <= b[0] < a[0] and b[0] not in ignore_fds:
            # The lowest free fd is taken now. (When another call of the window took it,
            # whether this call opened one is not known.)
            opened.add(b[0])
    if opened or closed:
        out.insert(0, f"fd table changed: opened {sorted(opened)}, closed {sorted(closed)}")
    return out
