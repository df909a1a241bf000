"""Enter/exit pairs per thread, and what does not pair: violations, edge halves, unjudged.

Pure: takes a decoded :class:`~kapi_selftests.trace.events.Capture`, never reads files or
tracefs, and judges nothing about arguments or return values (that is the oracle's job).
The one pairing of the suite: :func:`pair` serves a whole capture (``check``) and one
call's window (the oracle's judge, the generic checks); the bulk pass's columnar test
of "exactly one pair" is its fast path, held equal to it by the unit tests. Pure: takes
decoded events, never reads files or tracefs, and judges nothing about arguments or
return values (that is the oracle's job).

Each thread's syscall events are walked in time stamp order across CPUs (a thread
can migrate in the middle of a syscall). A half pair is classified, in this order:

1. *unjudged* when events lost from the buffer could lie between it and its
   neighbour on the same thread (:meth:`~kapi_selftests.trace.events.LossInfo.explains`):
   loss explains it, so it is never reported as a kernel violation;
2. an *edge half* when it sits at the capture's edge: an exit that is the first
   event of its thread *and* the first syscall event of its CPU (its enter ran
   before tracing started: the ``write(2)`` that enabled the events), or an enter
   that is the last event of its thread *and* the last syscall event of its CPU
   (still running when tracing stopped: the ``write(2)`` that disabled them);
3. otherwise a *violation*. Being a thread's first or last event is not enough: a
   thread whose last event is an enter while its CPU went on tracing other calls
   lost that exit in the middle of the capture. (The price: a thread that blocked
   in a syscall across the start or the end of the capture, while its CPU ran
   other traced syscalls, is reported too; the trace cannot tell the two apart.)

In a call's window (``whole=False``) there is no edge and no new thread: every half
that loss does not explain is a violation.

Kinds: ``missing_exit`` (an enter with no exit, not at the edge), ``orphan_exit``
(an exit with no enter before it), ``name_mismatch`` (the exit of another syscall
than the one entered), ``double_enter`` (two enters in a row on one thread: the
first has no exit).

kapi events (``kapi:kapi_syscall_enter/exit``) and the generic syscall events
(``syscalls:sys_enter_<name>``/``sys_exit_<name>``) are paired separately, so a
capture holding both pairs each family on its own (edges too); both name calls
``sys_<name>``. An enter of exit/exit_group has no exit (:data:`NO_RETURN`), and a
new task's first event may be the exit of its parent's fork/clone
(:data:`CHILD_RETURNS`): neither is reported.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass

from kapi_selftests.trace.events import LossInfo, TraceEvent, gc_paused

__all__ = [
    "ViolationKind",
    "Pair",
    "Violation",
    "PairingResult",
    "pair",
    "syscall_of",
    "NO_RETURN",
    "CHILD_RETURNS",
]

#: Syscalls whose enter has no exit event (the task is gone).
NO_RETURN = frozenset({"sys_exit", "sys_exit_group"})
#: Syscalls a new thread or process returns from without having entered them: its
#: first event is their exit (ret 0), the enter is its parent's.
CHILD_RETURNS = frozenset({"sys_clone", "sys_clone3", "sys_fork", "sys_vfork"})


class ViolationKind(enum.Enum):
    MISSING_EXIT = "missing_exit"  # enter with no exit, not at the capture's edge
    ORPHAN_EXIT = "orphan_exit"  # exit with no enter before it on the thread
    NAME_MISMATCH = "name_mismatch"  # exit of another syscall than the open enter
    DOUBLE_ENTER = "double_enter"  # two enters in a row on one thread


@dataclass(frozen=True, slots=True)
class Pair:
    """A matched enter/exit pair of one thread.

    :param tid: the thread
    :param name: spec name (``sys_open``)
    :param enter: the enter event
    :param exit: the exit event
    :param spans_loss: events were lost between enter and exit, so the two may
        belong to different calls; do not judge arguments against the return value
    """

    tid: int
    name: str
    enter: TraceEvent
    exit: TraceEvent
    spans_loss: bool = False


@dataclass(frozen=True, slots=True)
class Violation:
    """A half pair (or mismatched pair) and its evidence.

    :param kind: what is wrong
    :param tid: the thread
    :param name: spec name of the call concerned (``sys_open``)
    :param ts_ns: time stamp of the event at fault
    :param evidence: the events involved, oldest first
    :param explanation: one line saying why it is (or is not) a kernel violation
    """

    kind: ViolationKind
    tid: int
    name: str
    ts_ns: int
    evidence: tuple[TraceEvent, ...]
    explanation: str

    @property
    def enter(self) -> TraceEvent | None:
        """The enter that found no exit (``None`` for an orphan exit)."""
        return None if self.kind is ViolationKind.ORPHAN_EXIT else self.evidence[0]

    def of(self, name: str) -> bool:
        """Whether a half of a ``name`` call is at fault: the enter without exit, or the
        exit without enter (a name mismatch has one of each)."""
        if self.name == name:
            return True
        if self.kind is not ViolationKind.NAME_MISMATCH:
            return False
        sc = syscall_of(self.evidence[1])
        return sc is not None and sc[2] == name


@dataclass(frozen=True, slots=True)
class PairingResult:
    """Everything :func:`pair` found.

    :param pairs: matched pairs, in enter time stamp order
    :param violations: half pairs that neither loss nor the capture's edges explain
    :param edge_halves: halves at a thread's edge of the capture (not violations)
    :param unjudged: halves that lost events may explain (not violations)
    :param lost_events: events the buffer lost, ``None`` when the capture cannot tell
    :param names: every syscall name seen, sorted
    """

    pairs: tuple[Pair, ...]
    violations: tuple[Violation, ...]
    edge_halves: tuple[Violation, ...]
    unjudged: tuple[Violation, ...]
    lost_events: int | None
    names: tuple[str, ...] = ()


_ENTER, _EXIT = True, False
_NO_LOSS = LossInfo()


def syscall_of(ev: TraceEvent) -> tuple[str, bool, str] | None:
    """``(family, is_enter, spec name)`` of a syscall event, or ``None`` for other events.

    ``family`` is ``"kapi"`` or ``"syscalls"``; the name is ``sys_<name>`` for both.
    """
    n = ev.name
    if n == "kapi_syscall_enter" or n == "kapi_syscall_exit":
        name = ev.fields.get("name")
        if not isinstance(name, str) or not name:
            return None
        return "kapi", n == "kapi_syscall_enter", name
    if n.startswith("sys_enter_"):
        return "syscalls", _ENTER, "sys_" + n[len("sys_enter_"):]
    if n.startswith("sys_exit_"):
        return "syscalls", _EXIT, "sys_" + n[len("sys_exit_"):]
    return None


_Item = tuple[TraceEvent, bool, str]


def _fix_ties(seq: list[_Item]) -> None:
    # Text traces have µs time stamps: an exit and the next enter of a thread that
    # migrated can tie across CPUs and sort either way. Swap such a tie when the
    # other order is the one that pairs.
    open_name: str | None = None
    k = 0
    while k < len(seq):
        ev, is_enter, name = seq[k]
        if k + 1 < len(seq):
            nxt = seq[k + 1]
            if nxt[0].ts_ns == ev.ts_ns and nxt[0].cpu != ev.cpu and nxt[1] != is_enter:
                if (open_name is None and not is_enter) or \
                        (open_name is not None and is_enter and nxt[2] == open_name):
                    seq[k], seq[k + 1] = nxt, seq[k]
                    ev, is_enter, name = seq[k]
        if is_enter:
            open_name = name
        elif open_name is not None:
            open_name = None
        k += 1


def _fmt_ts(ts_ns: int) -> str:
    # As the text trace prints it: seconds with µs, rounded (ns2usecs()).
    us = (ts_ns + 500) // 1000
    return f"{us // 1_000_000}.{us % 1_000_000:06d}"


def _loss_reason(loss: LossInfo, lo: int | None, hi: int | None) -> str:
    for g in loss.gaps:
        if g.overlaps(lo, hi):
            where = f"cpu{g.cpu}" if g.cpu is not None else "a CPU"
            when = (f"before {_fmt_ts(g.end_ns)}" if g.start_ns is None and g.end_ns is not None
                    else f"after {_fmt_ts(g.start_ns)}" if g.end_ns is None and
                    g.start_ns is not None
                    else f"between {_fmt_ts(g.start_ns)} and {_fmt_ts(g.end_ns)}"
                    if g.start_ns is not None and g.end_ns is not None else "at any time")
            count = f"{g.count} " if g.count is not None else ""
            return f"{count}events lost on {where} {when} may hold the other half"
    return "events were lost"


def pair(events: Iterable[TraceEvent], loss: LossInfo | None = None, *,
         whole: bool = True) -> PairingResult:
    """Pair each thread's syscall enter and exit events; say what did not pair.

    :param events: decoded events in time stamp order (events that are not syscall
        enters or exits are skipped)
    :param loss: what the capture lost (``None``: nothing known lost)
    :param whole: the events are a whole capture, so a half at its edge or a new
        thread's return from fork/clone is not a violation; ``False`` for one call's
        window, where every half is
    :return: pairs, violations, edge halves and unjudged halves
    """
    if not whole:  # a call's window: a few events, nothing for the collector to pause for
        return _pair(events, loss or _NO_LOSS, whole)
    with gc_paused():
        return _pair(events, loss or _NO_LOSS, whole)


def _pair(events: Iterable[TraceEvent], loss: LossInfo, whole: bool) -> PairingResult:
    seqs: dict[tuple[int, str], list[_Item]] = {}
    names: set[str] = set()
    # The first and last syscall event of each (family, CPU): the capture's edges.
    first_on: dict[tuple[str, int], int] = {}
    last_on: dict[tuple[str, int], int] = {}
    for ev in events:
        sc = syscall_of(ev)
        if sc is None:
            continue
        family, is_enter, name = sc
        names.add(name)
        seqs.setdefault((ev.tid, family), []).append((ev, is_enter, name))
        if whole:
            first_on.setdefault((family, ev.cpu), ev.ts_ns)
            last_on[(family, ev.cpu)] = ev.ts_ns

    pairs: list[Pair] = []
    violations: list[Violation] = []
    edges: list[Violation] = []
    unjudged: list[Violation] = []

    def judge(kind: ViolationKind, tid: int, name: str, at: TraceEvent,
              evidence: Iterable[TraceEvent], lo: int | None, hi: int | None, edge: bool,
              what: str) -> None:
        ev_t = tuple(evidence)
        if loss.gaps and loss.explains(lo, hi):
            unjudged.append(Violation(kind, tid, name, at.ts_ns, ev_t,
                                      f"{what}: {_loss_reason(loss, lo, hi)}"))
        elif edge:
            edges.append(Violation(kind, tid, name, at.ts_ns, ev_t,
                                   f"{what}: at the capture's edge (cpu{at.cpu})"))
        else:
            violations.append(Violation(kind, tid, name, at.ts_ns, ev_t, what))

    for (tid, family), seq in seqs.items():
        _fix_ties(seq)
        open_ev: TraceEvent | None = None
        open_name = ""
        prev: TraceEvent | None = None
        for ev, is_enter, name in seq:
            if is_enter:
                if open_ev is not None and open_name not in NO_RETURN:
                    judge(ViolationKind.DOUBLE_ENTER, tid, open_name, open_ev, (open_ev, ev),
                          open_ev.ts_ns, ev.ts_ns, False,
                          f"{open_name} entered at {_fmt_ts(open_ev.ts_ns)}, then {name} "
                          f"entered at {_fmt_ts(ev.ts_ns)} with no exit between")
                open_ev, open_name = ev, name
            elif open_ev is None and prev is None and whole and name in CHILD_RETURNS:
                pass  # a new task's first event: the return from its parent's fork/clone
            elif open_ev is None:
                leading = whole and prev is None and ev.ts_ns <= first_on[(family, ev.cpu)]
                judge(ViolationKind.ORPHAN_EXIT, tid, name, ev,
                      (prev, ev) if prev is not None else (ev,),
                      prev.ts_ns if prev is not None else None, ev.ts_ns, leading,
                      f"{name} exit at {_fmt_ts(ev.ts_ns)} has no enter"
                      + (f" after the thread's event at {_fmt_ts(prev.ts_ns)}"
                         if prev is not None else
                         "" if leading or not whole else
                         f" (the thread's first event, but cpu{ev.cpu} traced syscalls "
                         f"before it)"))
            elif open_name != name:
                judge(ViolationKind.NAME_MISMATCH, tid, open_name, ev, (open_ev, ev),
                      open_ev.ts_ns, ev.ts_ns, False,
                      f"{open_name} entered at {_fmt_ts(open_ev.ts_ns)} but the next exit "
                      f"is {name} at {_fmt_ts(ev.ts_ns)}")
                open_ev = None
            else:
                spans = bool(loss.gaps) and loss.explains(open_ev.ts_ns, ev.ts_ns)
                pairs.append(Pair(tid, name, open_ev, ev, spans))
                open_ev = None
            prev = ev
        if open_ev is not None and open_name not in NO_RETURN:
            trailing = whole and open_ev.ts_ns >= last_on[(family, open_ev.cpu)]
            judge(ViolationKind.MISSING_EXIT, tid, open_name, open_ev, (open_ev,),
                  open_ev.ts_ns, None, trailing,
                  f"{open_name} entered at {_fmt_ts(open_ev.ts_ns)} has no exit"
                  + ("" if trailing or not whole else
                     f" (the thread's last event, but cpu{open_ev.cpu} traced syscalls "
                     f"after it)"))

    if len(seqs) > 1:
        pairs.sort(key=lambda p: (p.enter.ts_ns, p.tid))

    def order(v: Violation) -> tuple[int, int]:
        return v.ts_ns, v.tid

    return PairingResult(
        pairs=tuple(pairs),
        violations=tuple(sorted(violations, key=order)) if violations else (),
        edge_halves=tuple(sorted(edges, key=order)) if edges else (),
        unjudged=tuple(sorted(unjudged, key=order)) if unjudged else (),
        lost_events=loss.lost_events,
        names=tuple(sorted(names)),
    )
