"""Events are attributed to calls by tid and time window."""

from __future__ import annotations

from kapi_selftests.oracle.window import events_by_call
from kapi_selftests.records import SyscallRecord
from kapi_selftests.trace.events import TraceEvent


def _rec(tid: int, t0: int, t1: int) -> SyscallRecord:
    return SyscallRecord(nr=3, args=(0,) * 6, ret=0, errno=0, tid=tid, t_ns=t0, t_end_ns=t1)


def _ev(tid: int, ts: int) -> TraceEvent:
    return TraceEvent(ts, 0, tid, "x", {})


def test_window_by_tid_and_time() -> None:
    recs = [_rec(1, 10, 20), _rec(2, 10, 20), _rec(1, 30, 40)]
    evs = [_ev(1, 35), _ev(2, 15), _ev(1, 15), _ev(1, 25), _ev(1, 20), _ev(3, 15)]
    got = events_by_call(recs, evs)
    assert [[e.ts_ns for e in g] for g in got] == [[15, 20], [15], [35]]
    assert got[1][0].tid == 2


def test_window_no_events_for_tid() -> None:
    assert events_by_call([_rec(9, 0, 100)], [_ev(1, 5)]) == [()]
