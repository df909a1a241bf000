"""Issue batches of raw syscalls inside one capture window of a private trace instance.

The hot path is a plain loop of :func:`kapi_selftests.guest.syscalls.invoke` between
``tracing_on`` 1 and 0; the trace is drained once per batch, as raw ring-buffer
pages, and decoded/judged elsewhere (on the host when there is one). No pytest,
no decoding and no judging happen per call.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from kapi_selftests.guest.syscalls import invoke
from kapi_selftests.guest.tracefs import (
    KAPI_EVENTS,
    TraceInstance,
    find_tracefs,
    missing_kapi_events,
    syscall_events,
)
from kapi_selftests.records import Batch, EventSource, SyscallRecord

if TYPE_CHECKING:
    pass

__all__ = ["Executor", "find_event_source", "SPEC_SYSCALLS"]

#: The syscalls the v4 series specs (the generic-event fallback traces these).
SPEC_SYSCALLS = ("open", "read", "write", "close", "madvise")


def find_event_source(root: Path | None = None) -> EventSource:
    """KAPI when the kapi tracepoints exist, else the generic syscall events."""
    root = root or find_tracefs()
    return EventSource.SYSCALLS if missing_kapi_events(root) else EventSource.KAPI


class Executor:
    """Owns a trace instance and issues batches of calls inside its capture window.

    :param source: which events to capture (found by probing when None)
    :param names: syscalls to trace with the generic events
    :param buffer_kb: per-CPU ring-buffer size; a batch must fit in it
    """

    def __init__(self, source: EventSource | None = None, *,
                 names: Sequence[str] = SPEC_SYSCALLS, buffer_kb: int = 8192,
                 root: Path | None = None) -> None:
        self.source = source or find_event_source(root)
        events = KAPI_EVENTS if self.source is EventSource.KAPI else syscall_events(names)
        self.trace = TraceInstance(events, pids=[threading.get_native_id()],
                                   buffer_kb=buffer_kb, root=root)

    def __enter__(self) -> Executor:
        self.trace.create()
        return self

    def __exit__(self, t: type[BaseException] | None, v: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.trace.remove()

    def run(self, calls: Iterable[tuple[int, Sequence[int]]]) -> Batch:
        """Issue ``(nr, args)`` calls back to back in one capture window."""
        calls = list(calls)  # materialise before the window opens
        self.trace.start()
        try:
            records = tuple(invoke(nr, *args) for nr, args in calls)
        finally:
            self.trace.stop()
        return Batch(records, self.trace.drain(), self.source)

    def run_fn(self, fn: Callable[[], Sequence[SyscallRecord]]) -> Batch:
        """Run ``fn`` (which issues calls itself, e.g. from threads) in one capture window."""
        self.trace.start()
        try:
            records = tuple(fn())
        finally:
            self.trace.stop()
        return Batch(records, self.trace.drain(), self.source)

