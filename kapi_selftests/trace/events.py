"""The decoded trace's records: :class:`TraceEvent`, :class:`Capture` (events and
:class:`LossInfo`), the columnar :class:`EventColumns`, and :class:`RawCapture`, a
binary capture as read from tracefs, before decoding.

Every stage speaks these: the guest captures a :class:`RawCapture`, the decoders
(:mod:`~kapi_selftests.trace.ringbuf`, :mod:`~kapi_selftests.trace.text`) make a
:class:`Capture`, pairing and the judge read it. Loading a saved capture is
:mod:`~kapi_selftests.trace.capture`.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from kapi_selftests.trace.formats import EventFormat

__all__ = [
    "FieldValue",
    "TraceEvent",
    "EventColumns",
    "LossGap",
    "LossInfo",
    "Capture",
    "RawCapture",
    "gc_paused",
]

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

FieldValue = int | str | bytes | tuple[int, ...]


@dataclass(frozen=True, slots=True)
class TraceEvent:
    """One decoded trace event.

    :param ts_ns: time stamp in ns (trace clock; text traces have µs resolution)
    :param cpu: CPU whose buffer held it
    :param tid: ``common_pid`` (the thread id)
    :param name: event name (``kapi_syscall_enter``, ``sys_enter_openat``)
    :param fields: the event's own fields (no ``common_*``): ints, strings, int tuples
    """

    ts_ns: int
    cpu: int
    tid: int
    name: str
    fields: Mapping[str, FieldValue] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, eq=False)  # numpy arrays: compare by identity
class EventColumns:
    """Decoded records as columns (the fast path), in time stamp order.

    :param ts_ns: int64 time stamps
    :param cpu: int32 CPUs
    :param tid: int32 ``common_pid``
    :param type_id: int32 ``common_type`` (event id)
    :param offset: int64 offset of each record's data in :attr:`blob`
    :param length: int32 data length of each record
    :param blob: all pages of all CPUs, concatenated
    :param formats: event id -> format
    """

    ts_ns: npt.NDArray[np.int64]
    cpu: npt.NDArray[np.int32]
    tid: npt.NDArray[np.int32]
    type_id: npt.NDArray[np.int32]
    offset: npt.NDArray[np.int64]
    length: npt.NDArray[np.int32]
    blob: bytes
    formats: Mapping[int, EventFormat]

    def __len__(self) -> int:
        return int(self.ts_ns.shape[0])


@dataclass(frozen=True, slots=True)
class LossGap:
    """A time range in which events of one CPU may be missing from the capture.

    :param cpu: the CPU, or ``None`` when the CPU is unknown (any CPU)
    :param start_ns: gap start (exclusive); ``None``: since before the capture
    :param end_ns: gap end (exclusive); ``None``: until after the capture
    :param count: events lost in it, when known
    """

    cpu: int | None
    start_ns: int | None
    end_ns: int | None
    count: int | None = None

    def overlaps(self, lo_ns: int | None, hi_ns: int | None) -> bool:
        """Whether an event lost in this gap could lie strictly between ``lo_ns`` and
        ``hi_ns`` (``None``: unbounded)."""
        if self.end_ns is not None and lo_ns is not None and lo_ns >= self.end_ns:
            return False
        if self.start_ns is not None and hi_ns is not None and hi_ns <= self.start_ns:
            return False
        return True


@dataclass(frozen=True, slots=True)
class LossInfo:
    """What the capture lost.

    :param lost_events: events lost (overrun + dropped, or written - in buffer);
        ``None`` when the input cannot tell
    :param gaps: where (per CPU, in time) the lost events may have been
    :param per_cpu: cpu -> events lost on it, when known
    """

    lost_events: int | None = None
    gaps: tuple[LossGap, ...] = ()
    per_cpu: tuple[tuple[int, int], ...] = ()

    @property
    def lost(self) -> bool:
        """Whether any event is known (or, with page flags, suspected) to be lost."""
        return bool(self.lost_events) or bool(self.gaps)

    def explains(self, lo_ns: int | None, hi_ns: int | None) -> bool:
        """Whether a lost event could lie strictly between ``lo_ns`` and ``hi_ns``."""
        return any(g.overlaps(lo_ns, hi_ns) for g in self.gaps)


@dataclass(frozen=True, slots=True)
class Capture:
    """Decoded events of one capture, sorted by time stamp, and what was lost.

    :param events: the events (lazily built from columns for binary captures)
    :param loss: loss counters and where events may be missing
    :param source: where it came from (path), for messages
    :param columns: the columnar form, for binary captures
    :param cpus: CPUs the capture covered (whether or not they hold events)
    """

    events: Sequence[TraceEvent]
    loss: LossInfo = LossInfo()
    source: str = ""
    columns: EventColumns | None = None
    cpus: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class RawCapture:
    """Everything a binary capture needs to be decoded later, as read from tracefs.

    :param header_page: ``events/header_page``
    :param header_event: ``events/header_event``
    :param formats: event name -> its ``format`` file
    :param pages: cpu -> everything read from ``per_cpu/cpuN/trace_pipe_raw`` (whole pages)
    :param stats: cpu -> that CPU's ``stats`` file, read before draining
    :param calls_log: the harness's ``calls.log`` (one line per call), if any
    """

    header_page: str
    header_event: str
    formats: Mapping[str, str]
    pages: Mapping[int, bytes]
    stats: Mapping[int, str]
    calls_log: str | None = None


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while building many small acyclic objects.

    Building ~1M events or pairs otherwise triggers the collector over and over, each
    pass scanning everything built so far; none of these objects forms a cycle.
    """
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()
