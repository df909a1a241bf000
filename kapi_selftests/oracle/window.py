"""Which traced events belong to which issued call: time windows per thread. Pure.

Every :class:`~kapi_selftests.records.SyscallRecord` carries the
``CLOCK_MONOTONIC`` instants just before and after the call, and the trace
instance runs on the ``mono`` clock, so the kernel's events of a call are the
events of the caller's tid inside ``[t_ns, t_end_ns]``. Events of the same
thread outside every window (the interpreter's own I/O) belong to no call.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Protocol, TypeVar

from kapi_selftests.records import SyscallRecord

__all__ = ["Timed", "events_by_call"]


class Timed(Protocol):
    @property
    def ts_ns(self) -> int: ...

    @property
    def tid(self) -> int: ...


E = TypeVar("E", bound=Timed)


def events_by_call(records: Sequence[SyscallRecord],
                   events: Iterable[E]) -> list[tuple[E, ...]]:
    """For each record (same order), the events of its tid inside its time window.

    :param records: issued calls, each with ``t_ns``/``t_end_ns`` set
    :param events: decoded events, any order
    :return: one tuple of events per record, in timestamp order
    """
    per_tid: dict[int, list[E]] = defaultdict(list)
    for e in events:
        per_tid[e.tid].append(e)
    stamps: dict[int, list[int]] = {}
    for tid, evs in per_tid.items():
        evs.sort(key=lambda e: e.ts_ns)
        stamps[tid] = [e.ts_ns for e in evs]
    out: list[tuple[E, ...]] = []
    for r in records:
        ts = stamps.get(r.tid)
        if ts is None:
            out.append(())
            continue
        lo = bisect.bisect_left(ts, r.t_ns)
        hi = bisect.bisect_right(ts, r.t_end_ns)
        out.append(tuple(per_tid[r.tid][lo:hi]))
    return out
