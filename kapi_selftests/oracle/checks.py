"""The suite's five checks for every issued call, over one decoded capture. Pure.

For each :class:`~kapi_selftests.records.SyscallRecord` the events of its
window (:mod:`kapi_selftests.oracle.window`) are judged:

1. pairing: one enter and one exit per kernel entry (restarts enter again);
2. the enter's arguments: the oracle's ``args[]``/``params`` (KAPI events) or the
   issued registers (generic syscall events, which record raw registers);
3. the exit's ``ret`` against what userspace saw (restart codes modelled);
4. ``spec_match`` against the oracle (KAPI events only);
5. no side effect of a rejected call (KAPI only: only there is a call rejected).

A batch decoded to columns goes through :mod:`kapi_selftests.oracle.bulk` first, which
clears in bulk every call traced exactly as predicted; the rest are judged here one
by one. On a kernel without the kapi events the same calls are judged against the
generic ``syscalls:sys_enter_*/sys_exit_*`` events (checks 1-3). A call whose
window a loss gap overlaps is not judged for missing events (it gets a note).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from kapi_selftests.arch import MASK64, find_syscall
from kapi_selftests.oracle.bulk import clean_calls
from kapi_selftests.oracle.predict import RESTART_CODES, MemoryView, judge
from kapi_selftests.oracle.spec import Spec
from kapi_selftests.oracle.window import events_by_call
from kapi_selftests.records import (
    ENTER,
    EXIT,
    CallCheck,
    EventSource,
    Finding,
    FindingKind,
    Prediction,
    SyscallRecord,
)
from kapi_selftests.trace.events import Capture, TraceEvent
from kapi_selftests.trace.pairing import pair

__all__ = ["check_calls"]

_EINTR = 4


def _s64(v: int) -> int:
    v &= MASK64
    return v - (1 << 64) if v >> 63 else v


def _generic(record: SyscallRecord, events: Sequence[TraceEvent]) -> list[Finding]:
    """Checks 1-3 against ``syscalls:sys_enter_<name>``/``sys_exit_<name>``."""
    abi = find_syscall(record.nr)
    name = abi.name if abi else record.name
    evidence = (record.describe(),) + tuple(f"{e.name} {dict(e.fields)}" for e in events)
    # only the call's own syscall's events: others in its window are other calls' (the
    # halves of a clock_gettime(2) that falls back from the vDSO, say)
    r = pair([e for e in events if e.name in (f"sys_enter_{name}", f"sys_exit_{name}")],
             whole=False)
    out = [Finding(FindingKind.PAIRING, v.explanation, evidence) for v in r.violations]
    pairs = [(p.enter, p.exit) for p in r.pairs]
    if not r.names:
        out.append(Finding(FindingKind.PAIRING, f"no sys_{name} events for the call", evidence))
    for enter, _ in pairs:
        if abi is None:
            break
        for i, (_, pname) in enumerate(abi.params):
            got = enter.fields.get(pname)
            if isinstance(got, int) and got & MASK64 != record.args[i]:
                out.append(Finding(FindingKind.ARGS_MISMATCH,
                                   f"sys_{name} enter: {pname}={got & MASK64:#x}, issued "
                                   f"{record.args[i]:#x}", evidence))
    for k, (_, ex) in enumerate(pairs):
        ret = ex.fields.get("ret")
        if not isinstance(ret, int):
            continue
        ret = _s64(ret)
        if k < len(pairs) - 1:
            if ret not in RESTART_CODES:
                out.append(Finding(FindingKind.PAIRING, f"sys_{name}: {len(pairs)} pairs but "
                                   f"exit {k + 1} returned {ret}, not a restart code", evidence))
            continue
        user = _s64(record.ret)
        if ret != user and not (ret in RESTART_CODES and user == -_EINTR):
            out.append(Finding(FindingKind.RET_MISMATCH,
                               f"sys_{name} exit ret {ret}, userspace saw {user}", evidence))
    return out


def check_calls(records: Sequence[SyscallRecord], capture: Capture, source: EventSource,
                specs: Mapping[str, Spec], *, memory: MemoryView | None = None,
                side_effects: Sequence[Sequence[str]] | None = None,
                strict: bool = False,
                predictions: Sequence[Prediction | None] | None = None) -> list[CallCheck]:
    """Judge every call of a batch against the batch's capture.

    :param records: the calls, in issue order
    :param capture: the decoded capture of the batch's window
    :param source: which events were captured
    :param specs: the specs by name (``sys_open``) for the KAPI checks
    :param memory: user memory facts for the oracle (the harness's arena)
    :param side_effects: per record, the changes the harness measured around it
    :param strict: spec drift fails
    :param predictions: per record, the oracle's prediction made before the call
    """
    kapi_source = source is EventSource.KAPI
    rec_specs: list[Spec | None] = []
    if kapi_source:
        for rec in records:
            abi = find_syscall(rec.nr)
            rec_specs.append(specs.get(abi.spec_name) if abi else None)
    bulk = clean_calls(records, capture, rec_specs, predictions, side_effects) \
        if kapi_source and predictions else None
    windows: Sequence[Sequence[TraceEvent]] = (
        events_by_call(records, capture.events) if bulk is None else [w.events for w in bulk])
    out: list[CallCheck] = []
    for n, (rec, evs) in enumerate(zip(records, windows, strict=True)):
        w = bulk[n] if bulk is not None else None
        if w is not None and w.clean:
            out.append(CallCheck(rec, w.events, (), (), predictions[n] if predictions else None,
                                 strict, (w.spec_match, w.pairs)))
            continue
        evs = tuple(evs)
        notes: list[str] = []
        lossy = capture.loss.explains(rec.t_ns, rec.t_end_ns)
        if kapi_source:
            spec = rec_specs[n]
            kapi = tuple(e for e in evs if e.name in (ENTER, EXIT))
            if spec is None:
                findings = [Finding(FindingKind.PAIRING, f"{rec.name} has no spec but traced "
                                    f"{len(kapi)} kapi events", (rec.describe(),))] if kapi else []
                out.append(CallCheck(rec, kapi, tuple(findings), (), None, strict))
                continue
            v = judge(spec, rec, kapi, memory=memory,
                      side_effects=side_effects[n] if side_effects else (), strict=strict,
                      prediction=predictions[n] if predictions else None)
            findings = list(v.findings)
            notes += v.notes
            pred: Prediction | None = v.prediction
        else:
            findings = _generic(rec, evs)
            pred = None
        if lossy:
            kept = [f for f in findings if f.kind is not FindingKind.PAIRING]
            if len(kept) != len(findings):
                notes.append("events lost around this call: pairing not judged")
            findings = kept
        out.append(CallCheck(rec, tuple(evs), tuple(findings), tuple(notes), pred, strict))
    return out
