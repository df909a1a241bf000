"""The five checks for a whole batch at once, over a columnar capture. Pure.

A fuzzing batch is thousands of calls on one thread, nearly all traced exactly as
the oracle predicted: one ``kapi_syscall_enter`` and one ``kapi_syscall_exit`` in
the call's time window, the enter carrying the predicted ``name``, ``nargs``,
``args[]`` and ``params``, the exit the return userspace saw (``-EINVAL`` for a
rejected call) and the predicted ``spec_match``. :func:`clean_calls` finds those
calls with array operations on the capture's columns and a short loop over plain
values: no event is decoded into Python objects, nothing is rendered.

It only ever says "this call is clean". Every call it cannot clear (an
unpredicted one, a window with other events, a restart code, an unlisted error, a
side effect, any difference at all) is left to
:func:`kapi_selftests.oracle.checks.check_calls`' per-call judge, which stays the
reference: a call is cleared here only where that judge would find nothing.
reference: a call is cleared here only where that judge would find nothing. Its
pairing (the window is exactly one enter and then one exit of the call's syscall)
is the fast path of :func:`kapi_selftests.trace.pairing.pair` on the window, held equal to
it on the reference captures by ``tests/unit/test_bulk.py``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, overload

from kapi_selftests.oracle.ctype import to_s64
from kapi_selftests.oracle.predict import RESTART_CODES, expected_spec_match
from kapi_selftests.oracle.spec import Spec
from kapi_selftests.records import ENTER, EXIT, Prediction

if TYPE_CHECKING:
    from kapi_selftests.records import SyscallRecord
    from kapi_selftests.trace.events import Capture, EventColumns, TraceEvent
    from kapi_selftests.trace.formats import EventFormat

__all__ = ["Window", "WindowEvents", "clean_calls"]

_EINVAL = -22


class WindowEvents(Sequence["TraceEvent"]):
    """A call's events, decoded from the capture only when someone looks at them."""

    __slots__ = ("_events", "_idx")

    def __init__(self, events: Sequence[TraceEvent], idx: tuple[int, ...]) -> None:
        self._events = events
        self._idx = idx

    def __len__(self) -> int:
        return len(self._idx)

    @overload
    def __getitem__(self, i: int) -> TraceEvent: ...

    @overload
    def __getitem__(self, i: slice) -> list[TraceEvent]: ...

    def __getitem__(self, i: int | slice) -> TraceEvent | list[TraceEvent]:
        if isinstance(i, slice):
            return [self._events[j] for j in self._idx[i]]
        return self._events[self._idx[i]]

    def __iter__(self) -> Iterator[TraceEvent]:
        return (self._events[j] for j in self._idx)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Sequence) and not isinstance(other, str | bytes):
            return list(self) == list(other)
        return NotImplemented

    def __hash__(self) -> int:
        return hash(tuple(self))

    def __repr__(self) -> str:
        return f"WindowEvents({list(self)!r})"


@dataclass(frozen=True, slots=True)
class Window:
    """A call's events and whether the bulk pass cleared it.

    :param events: the call's events (of its thread, inside its time window)
    :param clean: exactly the predicted events and return: nothing to judge
    :param spec_match: a clean call's exit ``spec_match`` (None: no kapi events)
    """

    events: WindowEvents
    clean: bool = False
    spec_match: int | None = None

    @property
    def pairs(self) -> int:
        return 0 if self.spec_match is None else 1


@dataclass(frozen=True, slots=True)
class _Layout:
    # byte offsets of the fields the bulk pass reads, from the events' format files
    enter_id: int
    exit_id: int
    enter_name: tuple[int, int]  # (offset of the __data_loc word, rel_loc base)
    params: tuple[int, int]
    nargs: int
    args: int
    exit_name: tuple[int, int]
    ret: int
    spec_match: int


def _layout(formats: Mapping[int, EventFormat]) -> _Layout | None:
    by_name = {f.name: f for f in formats.values()}
    enter, leave = by_name.get(ENTER), by_name.get(EXIT)
    if enter is None or leave is None:
        return None

    def loc(fmt: EventFormat, name: str) -> tuple[int, int] | None:
        f = fmt.field(name)
        if f is None or not f.data_loc or f.size != 4:
            return None
        return f.offset, (f.offset + f.size if f.rel_loc else 0)

    def fixed(fmt: EventFormat, name: str, size: int, array_len: int | None = None) -> int | None:
        f = fmt.field(name)
        if f is None or f.data_loc or f.size != size or f.array_len != array_len:
            return None
        return f.offset

    parts = (loc(enter, "name"), loc(enter, "params"), fixed(enter, "nargs", 4),
             fixed(enter, "args", 48, 6), loc(leave, "name"), fixed(leave, "ret", 8),
             fixed(leave, "spec_match", 1))
    if any(p is None for p in parts):
        return None  # not the layout the series traces: leave every call to the judge
    return _Layout(enter.id, leave.id, *parts)  # type: ignore[arg-type]


def clean_calls(records: Sequence[SyscallRecord], capture: Capture,
                specs: Sequence[Spec | None],
                predictions: Sequence[Prediction | None],
                side_effects: Sequence[Sequence[str]] | None = None) -> list[Window] | None:
    """Each record's :class:`Window`, clean when its events are exactly the predicted ones.

    :param records: the calls, in issue order, all of one thread
    :param capture: their capture, decoded to columns (``capture.columns``)
    :param specs: per record: the spec of its syscall (None: not spec'd)
    :param predictions: per record: the oracle's prediction made before the call
    :param side_effects: per record: the changes measured around it
    :return: per record, its window; None when the capture has no columns, the records
        are of several threads or the events' layout is not the series' (judge every
        call one by one)
    """
    # numpy loads in a second or so: only the columnar paths (KCOV, bulk decode) pay it
    import numpy as np

    n = len(records)
    cols: EventColumns | None = capture.columns
    if cols is None or n == 0:
        return None
    lay = _layout(cols.formats)
    tids = {r.tid for r in records}
    if lay is None or len(tids) != 1:
        return None
    out: list[Window | None] = [None] * n
    sel = np.flatnonzero(cols.tid == tids.pop())
    ts = cols.ts_ns[sel]
    lo = np.searchsorted(ts, np.fromiter((r.t_ns for r in records), np.int64, n), "left")
    hi = np.searchsorted(ts, np.fromiter((r.t_end_ns for r in records), np.int64, n), "right")
    # candidates: spec'd, predicted, exactly an enter then an exit in the window
    predicted = np.fromiter((p is not None and p.undetermined is None and s is not None
                             for p, s in zip(predictions, specs, strict=True)), bool, n)
    two = predicted & (hi - lo == 2)
    cand = np.flatnonzero(two)
    e = sel[lo[cand]] if len(cand) else np.zeros(0, np.int64)
    x = sel[np.minimum(lo[cand] + 1, len(sel) - 1)] if len(cand) else e
    typ = cols.type_id
    ok = (typ[e] == lay.enter_id) & (typ[x] == lay.exit_id)
    cand, e, x = cand[ok], e[ok], x[ok]
    blob = np.frombuffer(cols.blob, np.uint8)
    eoff = cols.offset[e]
    xoff = cols.offset[x]

    def gather(offs: np.ndarray, at: int, size: int, dtype: str) -> np.ndarray:
        return blob[offs[:, None] + (at + np.arange(size))].copy().view(dtype)

    args = gather(eoff, lay.args, 48, "<u8")
    pred_args = np.array([predictions[i].args for i in cand.tolist()],
                         np.uint64).reshape(-1, 6)
    args_ok = (args == pred_args).all(axis=1)
    nargs = gather(eoff, lay.nargs, 4, "<i4")[:, 0].tolist()
    rets = gather(xoff, lay.ret, 8, "<i8")[:, 0].tolist()
    sms = blob[xoff + lay.spec_match].tolist()
    eloc = gather(eoff, lay.enter_name[0], 4, "<u4")[:, 0].tolist()
    ploc = gather(eoff, lay.params[0], 4, "<u4")[:, 0].tolist()
    xloc = gather(xoff, lay.exit_name[0], 4, "<u4")[:, 0].tolist()
    elen = cols.length[e].tolist()
    xlen = cols.length[x].tolist()
    raw = cols.blob
    events = capture.events
    match_cache: dict[tuple[str, int], bool] = {}
    listed_cache: dict[str, frozenset[int]] = {}

    def text(off: int, length: int, word: int, base: int) -> bytes | None:
        start = off + (word & 0xFFFF) + base
        end = start + (word >> 16)
        return raw[start:end] if end <= off + length else None

    for k, (i, ei, xi, eo, xo, aok) in enumerate(zip(
            cand.tolist(), e.tolist(), x.tolist(), eoff.tolist(), xoff.tolist(),
            args_ok.tolist(), strict=True)):
        pred = predictions[i]
        spec = specs[i]
        rec = records[i]
        assert pred is not None and spec is not None
        if not aok or nargs[k] != pred.nargs:
            continue
        name = spec.name.encode() + b"\0"
        if text(eo, elen[k], eloc[k], lay.enter_name[1]) != name \
                or text(xo, xlen[k], xloc[k], lay.exit_name[1]) != name \
                or text(eo, elen[k], ploc[k], lay.params[1]) != pred.params.encode() + b"\0":
            continue
        r, sm, user = rets[k], sms[k] != 0, to_s64(rec.ret)
        if r in RESTART_CODES or r != user:
            continue
        if pred.rejection is not None:
            if r != _EINVAL or sm or (side_effects and side_effects[i]):
                continue
        else:
            want = match_cache.get((spec.name, r))
            if want is None:
                want = match_cache[(spec.name, r)] = expected_spec_match(spec, r)
            if sm != want:
                continue
            if -4095 <= r < 0:  # an error return must be listed (else: spec drift)
                listed = listed_cache.get(spec.name)
                if listed is None:
                    listed = listed_cache[spec.name] = spec.error_codes
                if r not in listed:
                    continue
        out[i] = Window(WindowEvents(events, (ei, xi)), True, int(sm))
    sel_list = sel.tolist()
    for i, (a, b) in enumerate(zip(lo.tolist(), hi.tolist(), strict=True)):
        if out[i] is None:
            # an unspec'd call with nothing traced in its window is clean too
            out[i] = Window(WindowEvents(events, tuple(sel_list[a:b])),
                            a == b and specs[i] is None)
    return out  # type: ignore[return-value]
