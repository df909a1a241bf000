"""The bulk pass against the per-call judge, on real captures of a KAPI kernel.

Records are rebuilt from the captured pairs (the registers the enter carries, the
return the exit carries, the pair's time stamps as the call's window), and the
predictions are what those events say: so every call is clean, and the test is
whether the bulk pass and the per-call judge agree on every call, before and after
a byte of the capture is changed.
"""

from __future__ import annotations

import dataclasses
import random

import pytest
from datadir import REFERENCE as REF

from kapi_selftests.arch import MASK64, find_syscall
from kapi_selftests.oracle.bulk import clean_calls
from kapi_selftests.oracle.checks import check_calls
from kapi_selftests.oracle.spec import builtin_specs
from kapi_selftests.oracle.window import events_by_call
from kapi_selftests.records import (
    ENTER,
    EXIT,
    CallCheck,
    CheckKind,
    EventSource,
    FindingKind,
    Prediction,
    Rejection,
    SyscallRecord,
)
from kapi_selftests.trace.capture import read_capture_dir
from kapi_selftests.trace.events import Capture, TraceEvent
from kapi_selftests.trace.pairing import pair
from kapi_selftests.trace.ringbuf import _LazyEvents, decode

SPECS = builtin_specs()
REJECTED = Rejection("fd", 0, CheckKind.FD, "as the capture says")


def _capture(name: str) -> Capture:
    cap = decode(read_capture_dir(REF / "raw" / name), small_pages=0)
    assert cap.columns is not None
    return cap


def _calls(cap: Capture, tid: int) -> tuple[list[SyscallRecord], list[Prediction]]:
    """The pairs of ``tid``, as records and as predictions that match them."""
    records, preds = [], []
    enter: TraceEvent | None = None
    for e in cap.events:
        if e.tid != tid:
            continue
        if e.name == ENTER:
            enter = e
            continue
        if enter is None:
            continue  # an exit whose enter the buffer overwrote (overrun)
        f, x = enter.fields, e.fields
        abi = find_syscall(str(f["name"])[4:])
        assert abi is not None
        ret = int(x["ret"])  # type: ignore[call-overload]
        records.append(SyscallRecord(abi.nr, tuple(f["args"]), ret & MASK64,  # type: ignore[arg-type]
                                     -ret if ret < 0 else 0, tid, enter.ts_ns, e.ts_ns))
        preds.append(Prediction(str(f["name"]), int(f["nargs"]),  # type: ignore[call-overload]
                                tuple(f["args"]), str(f["params"]),  # type: ignore[arg-type]
                                None if x["spec_match"] else REJECTED))
        enter = None
    return records, preds


def _per_call(cap: Capture) -> Capture:
    # the same events without columns: check_calls judges every call one by one
    return Capture(tuple(cap.events), cap.loss, cap.source)


def _summary(c: CallCheck) -> tuple[object, ...]:
    return (c.record, list(c.events), [(f.kind, f.message) for f in c.findings], c.notes,
            c.summary, c.prediction)


def _judged(records: list[SyscallRecord], cap: Capture, preds: list[Prediction],
            effects: list[list[str]] | None = None) -> list[CallCheck]:
    return check_calls(records, cap, EventSource.KAPI, SPECS, predictions=preds,
                       side_effects=effects)


def _specs_of(records: list[SyscallRecord]) -> list[object]:
    return [SPECS.get(find_syscall(r.nr).spec_name) for r in records]  # type: ignore[union-attr]


def _mutated(cap: Capture, event: int, field: str, at: int = 0) -> Capture:
    """``cap`` with one byte of ``field`` of event number ``event`` changed."""
    cols = cap.columns
    assert cols is not None
    fmt = cols.formats[int(cols.type_id[event])]
    f = fmt.field(field)
    assert f is not None
    pos = int(cols.offset[event]) + f.offset + at
    if f.data_loc:
        loc = int.from_bytes(cols.blob[pos - at:pos - at + 4], "little")
        pos = int(cols.offset[event]) + (loc & 0xFFFF) + at
    blob = bytearray(cols.blob)
    blob[pos] ^= 0x01
    new = dataclasses.replace(cols, blob=bytes(blob))
    return Capture(_LazyEvents(new), cap.loss, cap.source, new, cap.cpus)


@pytest.mark.parametrize("name,tid", [("small", 69), ("threads", 74), ("overrun", 78)])
def test_bulk_agrees_with_the_per_call_judge(name: str, tid: int) -> None:
    cap = _capture(name)
    records, preds = _calls(cap, tid)
    assert records
    windows = clean_calls(records, cap, _specs_of(records), preds)  # type: ignore[arg-type]
    assert windows is not None
    bulk, ref = _judged(records, cap, preds), _judged(records, _per_call(cap), preds)
    assert [_summary(c) for c in bulk] == [_summary(c) for c in ref]
    # the reference judge finds these calls clean, and so does the bulk pass
    assert all(not c.findings for c in ref)
    assert all(w.clean for w in windows)


@pytest.mark.parametrize("field,event_name,at,kind", [
    ("args", ENTER, 0, FindingKind.ARGS_MISMATCH),
    ("args", ENTER, 47, FindingKind.ARGS_MISMATCH),
    ("nargs", ENTER, 0, FindingKind.ARGS_MISMATCH),
    ("params", ENTER, 2, FindingKind.ARGS_MISMATCH),
    ("name", ENTER, 5, FindingKind.PAIRING),
    ("name", EXIT, 5, FindingKind.PAIRING),
    ("ret", EXIT, 0, FindingKind.RET_MISMATCH),
    ("spec_match", EXIT, 0, FindingKind.SPEC_MATCH_MISMATCH),
])
def test_a_changed_byte_is_never_cleared(field: str, event_name: str, at: int,
                                         kind: FindingKind) -> None:
    cap = _capture("small")
    records, preds = _calls(cap, 69)
    names = [e.name for e in cap.events]
    for k in (names.index(event_name), len(names) - 1 - names[::-1].index(event_name)):
        bad = _mutated(cap, k, field, at)
        windows = clean_calls(records, bad, _specs_of(records), preds)  # type: ignore[arg-type]
        assert windows is not None
        hit = [i for i, w in enumerate(windows) if not w.clean]
        assert len(hit) == 1, f"changing {event_name}.{field} of event {k} left {hit}"
        bulk, ref = _judged(records, bad, preds), _judged(records, _per_call(bad), preds)
        assert [_summary(c) for c in bulk] == [_summary(c) for c in ref]
        assert kind in {f.kind for f in bulk[hit[0]].failures}


def test_side_effects_and_unlisted_errors_go_to_the_judge() -> None:
    cap = _capture("small")
    records, preds = _calls(cap, 69)
    rejected = next(i for i, p in enumerate(preds) if p.rejected)
    effects: list[list[str]] = [[] for _ in records]
    effects[rejected] = ["a file appeared"]
    bulk = _judged(records, cap, preds, effects)
    assert [_summary(c) for c in bulk] == \
        [_summary(c) for c in _judged(records, _per_call(cap), preds, effects)]
    assert {f.kind for f in bulk[rejected].failures} == {FindingKind.REJECTED_SIDE_EFFECT}
    # a spec that lists no error: every error return is drift, judged (and noted) per call
    failed = next(i for i, (p, r) in enumerate(zip(preds, records, strict=True))
                  if not p.rejected and r.errno)
    spec = SPECS[preds[failed].spec_name]
    specs = {**SPECS, spec.name: dataclasses.replace(spec, errors=())}
    windows = clean_calls(records, cap, [specs.get(find_syscall(r.nr).spec_name)  # type: ignore[union-attr]
                                         for r in records], preds)
    assert windows is not None and not windows[failed].clean
    (c,) = [c for i, c in enumerate(check_calls(records, cap, EventSource.KAPI, specs,
                                                predictions=preds)) if i == failed]
    assert {f.kind for f in c.findings} == {FindingKind.SPEC_DRIFT}


def test_calls_of_several_threads_are_judged_one_by_one() -> None:
    cap = _capture("threads")
    a, pa = _calls(cap, 73)
    b, pb = _calls(cap, 74)
    records, preds = a[:50] + b[:50], pa[:50] + pb[:50]
    assert clean_calls(records, cap, _specs_of(records), preds) is None  # type: ignore[arg-type]
    checks = _judged(records, cap, preds)
    assert [_summary(c) for c in checks] == [_summary(c) for c in _judged(records,
                                                                        _per_call(cap), preds)]
    assert all(c.ok for c in checks)


def _cut(records: list[SyscallRecord], how: str) -> list[SyscallRecord]:
    """The calls' windows moved: around their own pair, wider, short of either half."""
    rnd = random.Random(how)
    out = []
    for i, r in enumerate(records):
        nxt = records[i + 1].t_end_ns if i + 1 < len(records) else r.t_end_ns
        t, end = {"exact": (r.t_ns, r.t_end_ns), "wide": (r.t_ns, nxt),
                  "no_exit": (r.t_ns, r.t_end_ns - 1), "no_enter": (r.t_ns + 1, r.t_end_ns),
                  "shifted": (r.t_ns + rnd.randrange(-5000, 5000),
                              r.t_end_ns + rnd.randrange(-5000, 5000))}[how]
        out.append(dataclasses.replace(r, t_ns=t, t_end_ns=max(t, end)))
    return out


@pytest.mark.parametrize("how", ["exact", "wide", "no_exit", "no_enter", "shifted"])
@pytest.mark.parametrize("name,tid", [("small", 69), ("threads", 73), ("threads", 74),
                                      ("overrun", 78)])
def test_bulk_pairing_is_the_plain_pairing(name: str, tid: int, how: str) -> None:
    # The bulk pass's "exactly the call's own enter and exit" is the fast path of
    # pairing.pair: on every window of a real capture the two say the same.
    cap = _capture(name)
    own, preds = _calls(cap, tid)
    records = _cut(own, how)
    cleared = _bulk_pairs_as_pair(cap, own, records, preds)  # both answers are exercised
    assert cleared == len(records) if how == "exact" else 0 <= cleared < len(records)


def test_bulk_pairing_of_a_retyped_event_is_the_plain_pairing() -> None:
    # An exit recorded under the enter's event id: two enters in a row, never one pair.
    cap = _capture("small")
    own, preds = _calls(cap, 69)
    cols = cap.columns
    assert cols is not None
    enter_id = next(i for i, f in cols.formats.items() if f.name == ENTER)
    exits = [i for i, e in enumerate(cap.events) if e.name == EXIT]
    typ = cols.type_id.copy()
    typ[[exits[0], exits[-1]]] = enter_id
    new = dataclasses.replace(cols, type_id=typ)
    bad = Capture(_LazyEvents(new), cap.loss, cap.source, new, cap.cpus)
    assert _bulk_pairs_as_pair(bad, own, own, preds) == len(own) - 2


def _bulk_pairs_as_pair(cap: Capture, own: list[SyscallRecord], records: list[SyscallRecord],
                        preds: list[Prediction]) -> int:
    """Check that each window the bulk pass clears is one pair, the call's own and
    nothing else, by pairing.pair, and the converse; return how many it cleared."""
    windows = clean_calls(records, cap, _specs_of(records), preds)  # type: ignore[arg-type]
    assert windows is not None
    plain = events_by_call(records, cap.events)
    for r, w, evs in zip(own, windows, plain, strict=True):
        assert list(w.events) == list(evs)
        got = pair(evs, whole=False)
        alone = len(evs) == 2 and not got.violations and len(got.pairs) == 1
        assert w.clean == (alone and got.pairs[0].enter.ts_ns == r.t_ns), (r, evs)
        assert w.pairs == (len(got.pairs) if w.clean else 0)
    bulk, ref = _judged(records, cap, preds), _judged(records, _per_call(cap), preds)
    assert [_summary(c) for c in bulk] == [_summary(c) for c in ref]
    return sum(w.clean for w in windows)
