"""pairing: enter/exit pairs per thread, violations, edge halves, loss."""

from __future__ import annotations

import pytest
from datadir import REFERENCE as REF

from kapi_selftests.trace.capture import load_capture
from kapi_selftests.trace.events import Capture, LossGap, LossInfo, TraceEvent
from kapi_selftests.trace.pairing import PairingResult, ViolationKind, pair


def paired(c: Capture) -> PairingResult:
    """:func:`pair` of a whole capture, as ``check`` pairs it."""
    return pair(c.events, c.loss)


def enter(ts: int, name: str, tid: int = 10, cpu: int = 0) -> TraceEvent:
    return TraceEvent(ts, cpu, tid, "kapi_syscall_enter", {"name": name, "params": ""})


def exit_(ts: int, name: str, tid: int = 10, cpu: int = 0, ret: int = 0) -> TraceEvent:
    return TraceEvent(ts, cpu, tid, "kapi_syscall_exit",
                      {"name": name, "ret": ret, "spec_match": 1})


def cap(*events: TraceEvent, loss: LossInfo | None = None) -> Capture:
    return Capture(events=sorted(events, key=lambda e: e.ts_ns), loss=loss or LossInfo(0))


def kinds(vs: tuple[object, ...]) -> list[str]:
    return [v.kind.value for v in vs]  # type: ignore[attr-defined]


def test_pair_simple_pairs() -> None:
    r = paired(cap(enter(1, "sys_open"), exit_(2, "sys_open"),
                 enter(3, "sys_close"), exit_(4, "sys_close")))
    assert [(p.name, p.enter.ts_ns, p.exit.ts_ns) for p in r.pairs] == [
        ("sys_open", 1, 2), ("sys_close", 3, 4)]
    assert not r.violations and not r.edge_halves and not r.unjudged
    assert r.names == ("sys_close", "sys_open")


def test_pair_thread_migrates_mid_syscall() -> None:
    r = paired(cap(enter(1, "sys_read", cpu=0), exit_(5, "sys_read", cpu=1),
                 enter(2, "sys_write", tid=11, cpu=1), exit_(3, "sys_write", tid=11, cpu=0)))
    assert len(r.pairs) == 2 and not r.violations


def test_pair_interleaved_threads() -> None:
    r = paired(cap(enter(1, "sys_read", tid=1), enter(2, "sys_read", tid=2),
                 exit_(3, "sys_read", tid=1), exit_(4, "sys_read", tid=2)))
    assert {(p.tid, p.enter.ts_ns, p.exit.ts_ns) for p in r.pairs} == {(1, 1, 3), (2, 2, 4)}


def test_pair_toggle_halves_are_edge_halves() -> None:
    # The exit of the write that enabled the events, the enter of the one that disabled them.
    r = paired(cap(exit_(1, "sys_write", ret=2), enter(2, "sys_close"), exit_(3, "sys_close"),
                 enter(4, "sys_write")))
    assert not r.violations
    assert kinds(r.edge_halves) == ["orphan_exit", "missing_exit"]
    assert len(r.pairs) == 1


def test_pair_two_enters_in_a_row_is_double_enter() -> None:
    r = paired(cap(enter(1, "sys_open"), exit_(2, "sys_open"), enter(3, "sys_read"),
                 enter(4, "sys_close"), exit_(5, "sys_close")))
    (v,) = r.violations
    assert (v.kind, v.name, v.ts_ns, v.tid) == (ViolationKind.DOUBLE_ENTER, "sys_read", 3, 10)
    assert [e.ts_ns for e in v.evidence] == [3, 4]
    assert not r.edge_halves


def test_pair_double_enter_same_syscall() -> None:
    r = paired(cap(enter(1, "sys_read"), enter(2, "sys_read"), exit_(3, "sys_read")))
    (v,) = r.violations
    assert v.kind is ViolationKind.DOUBLE_ENTER and v.ts_ns == 1
    assert len(r.pairs) == 1


def test_pair_missing_exit_in_middle_is_violation() -> None:
    # Thread 10's last event is an enter, but its CPU traced other calls afterwards:
    # not the capture's edge.
    r = paired(cap(enter(1, "sys_open"), exit_(2, "sys_open"), enter(3, "sys_read"),
                 enter(4, "sys_close", tid=11), exit_(5, "sys_close", tid=11)))
    (v,) = r.violations
    assert (v.kind, v.name, v.ts_ns, v.tid) == (ViolationKind.MISSING_EXIT, "sys_read", 3, 10)
    assert not r.edge_halves


def test_pair_missing_exit_at_end_of_its_cpu_is_edge() -> None:
    # The disabling write on cpu0; cpu1 goes on a little longer (tracing stops there later).
    r = paired(cap(enter(1, "sys_open"), exit_(2, "sys_open"), enter(3, "sys_write"),
                 enter(4, "sys_close", tid=11, cpu=1), exit_(5, "sys_close", tid=11, cpu=1)))
    assert not r.violations and kinds(r.edge_halves) == ["missing_exit"]


def test_pair_orphan_exit_first_of_thread_mid_capture_is_violation() -> None:
    r = paired(cap(enter(1, "sys_open", tid=11), exit_(2, "sys_open", tid=11),
                 exit_(3, "sys_read"), enter(4, "sys_close"), exit_(5, "sys_close")))
    (v,) = r.violations
    assert v.kind is ViolationKind.ORPHAN_EXIT and v.tid == 10 and v.ts_ns == 3


def test_pair_orphan_exit_in_middle_is_violation() -> None:
    r = paired(cap(enter(1, "sys_open"), exit_(2, "sys_open"), exit_(3, "sys_close")))
    (v,) = r.violations
    assert v.kind is ViolationKind.ORPHAN_EXIT and v.name == "sys_close" and v.ts_ns == 3


def test_pair_name_mismatch() -> None:
    r = paired(cap(enter(1, "sys_open"), exit_(2, "sys_close")))
    (v,) = r.violations
    assert v.kind is ViolationKind.NAME_MISMATCH and v.name == "sys_open"
    assert "sys_close" in v.explanation and not r.pairs


def test_pair_loss_explains_half_never_missing_exit() -> None:
    # cpu1 overwrote its oldest events: anything before its first survivor may be gone.
    loss = LossInfo(lost_events=7, gaps=(LossGap(1, None, 50, 7),))
    r = paired(cap(exit_(10, "sys_close"), enter(20, "sys_write"),
                 enter(60, "sys_open", cpu=1), exit_(61, "sys_open", cpu=1), loss=loss))
    assert not r.violations and not r.edge_halves
    assert kinds(r.unjudged) == ["orphan_exit", "double_enter"]
    assert "7 events lost on cpu1" in r.unjudged[1].explanation
    assert r.lost_events == 7 and len(r.pairs) == 1 and not r.pairs[0].spans_loss


def test_pair_violation_outside_loss_window_is_still_violation() -> None:
    loss = LossInfo(lost_events=3, gaps=(LossGap(0, None, 5, 3),))
    r = paired(cap(enter(10, "sys_read"), exit_(11, "sys_read"), enter(20, "sys_read"),
                 enter(30, "sys_read"), exit_(31, "sys_read"), loss=loss))
    assert kinds(r.violations) == ["double_enter"]


def test_pair_spanning_loss_is_flagged() -> None:
    loss = LossInfo(lost_events=3, gaps=(LossGap(1, 100, 200, 3),))
    r = paired(cap(enter(90, "sys_read"), exit_(300, "sys_read"), loss=loss))
    assert len(r.pairs) == 1 and r.pairs[0].spans_loss


def test_pair_generic_syscall_events_normalised() -> None:
    evs = (TraceEvent(1, 0, 5, "sys_enter_openat", {"__syscall_nr": 257}),
           TraceEvent(2, 0, 5, "sys_exit_openat", {"__syscall_nr": 257, "ret": 3}))
    r = paired(cap(*evs))
    assert [p.name for p in r.pairs] == ["sys_openat"]


def test_pair_kapi_and_generic_families_pair_separately() -> None:
    evs = (TraceEvent(1, 0, 5, "sys_enter_read", {}), enter(2, "sys_read", tid=5),
           exit_(3, "sys_read", tid=5), TraceEvent(4, 0, 5, "sys_exit_read", {"ret": 0}))
    r = paired(cap(*evs))
    assert len(r.pairs) == 2 and not r.violations


def test_pair_mixed_families_toggle_halves_are_edges() -> None:
    # Both families enabled by one write: its kapi exit comes before its generic exit.
    evs = (exit_(1, "sys_write"), TraceEvent(2, 0, 10, "sys_exit_write", {"ret": 2}),
           TraceEvent(3, 0, 10, "sys_enter_close", {}), enter(4, "sys_close"),
           exit_(5, "sys_close"), TraceEvent(6, 0, 10, "sys_exit_close", {"ret": 0}),
           TraceEvent(7, 0, 10, "sys_enter_write", {}), enter(8, "sys_write"))
    r = paired(cap(*evs))
    assert not r.violations and len(r.edge_halves) == 4 and len(r.pairs) == 2


def test_pair_exit_group_has_no_exit() -> None:
    evs = (TraceEvent(1, 0, 5, "sys_enter_exit_group", {}),
           TraceEvent(2, 0, 6, "sys_enter_read", {}), TraceEvent(3, 0, 6, "sys_exit_read", {}))
    r = paired(cap(*evs))
    assert not r.violations and not r.edge_halves and len(r.pairs) == 1


def test_pair_child_returns_from_clone_without_enter() -> None:
    evs = (TraceEvent(1, 0, 5, "sys_enter_clone", {}), TraceEvent(2, 0, 5, "sys_exit_clone",
                                                                    {"ret": 6}),
           TraceEvent(3, 1, 6, "sys_exit_clone", {"ret": 0}),
           TraceEvent(4, 1, 6, "sys_enter_read", {}), TraceEvent(5, 1, 6, "sys_exit_read", {}))
    r = paired(cap(*evs))
    assert not r.violations and not r.edge_halves and len(r.pairs) == 2


def test_pair_text_tie_across_cpus_is_reordered() -> None:
    # µs time stamps: the exit on cpu1 and the next enter on cpu0 share a time stamp
    # and sort enter-first; the pairing must not call that a double enter.
    evs = [enter(1, "sys_read", cpu=1), enter(5, "sys_close", cpu=0), exit_(5, "sys_read", cpu=1),
           exit_(6, "sys_close", cpu=0)]
    r = paired(Capture(events=evs, loss=LossInfo(0)))
    assert not r.violations and len(r.pairs) == 2


def test_pair_ignores_other_events() -> None:
    r = paired(cap(TraceEvent(1, 0, 1, "sched_switch", {"text": "x"}), enter(2, "sys_read"),
                 exit_(3, "sys_read")))
    assert len(r.pairs) == 1 and r.names == ("sys_read",)


@pytest.mark.parametrize("path,pairs", [
    ("boot-evidence/trace-phase2-isolated.txt", 18), ("raw/small", 55),
    ("raw/threads", 14483), ("boundary", 70)])
def test_pair_reference_all_match(path: str, pairs: int) -> None:
    r = paired(load_capture(REF / path))
    assert len(r.pairs) == pairs
    assert not r.violations and not r.edge_halves and not r.unjudged


@pytest.mark.parametrize("path", ["boot-evidence/trace-phase1-global.txt",
                                  "boot-evidence/trace-phase3-busybox.txt"])
def test_pair_reference_toggle_halves(path: str) -> None:
    r = paired(load_capture(REF / path))
    assert not r.violations
    assert kinds(r.edge_halves) == ["orphan_exit", "missing_exit"]
    assert all(v.name == "sys_write" and v.tid == 1 for v in r.edge_halves)


@pytest.mark.parametrize("path", ["raw/overrun", "raw/overrun/trace.txt"])
def test_pair_reference_overrun_unjudged(path: str) -> None:
    r = paired(load_capture(REF / path))
    assert not r.violations and not r.edge_halves
    assert kinds(r.unjudged) == ["orphan_exit", "double_enter"]
    assert r.lost_events == 14356


# ------------------------------------------------------------ one call's window


def test_window_enter_without_exit_is_a_violation() -> None:
    # At a capture's end the same half is an edge half; in a call's window it is not.
    evs = [enter(1, "sys_read"), exit_(2, "sys_read"), enter(3, "sys_close")]
    assert kinds(paired(cap(*evs)).edge_halves) == ["missing_exit"]
    r = pair(evs, whole=False)
    assert kinds(r.violations) == ["missing_exit"] and not r.edge_halves
    assert r.violations[0].enter is evs[2] and len(r.pairs) == 1


def test_window_exit_without_enter_is_a_violation() -> None:
    evs = [exit_(1, "sys_write"), enter(2, "sys_read"), exit_(3, "sys_read")]
    assert kinds(paired(cap(*evs)).edge_halves) == ["orphan_exit"]
    (v,) = pair(evs, whole=False).violations
    assert v.kind is ViolationKind.ORPHAN_EXIT and v.enter is None and v.of("sys_write")


def test_window_child_return_is_a_violation() -> None:
    # A new thread's first event may be its fork's exit; a call's window has no new thread.
    evs = [TraceEvent(1, 0, 6, "sys_exit_clone", {"ret": 0})]
    assert not paired(cap(*evs)).violations
    assert kinds(pair(evs, whole=False).violations) == ["orphan_exit"]


def test_window_interleaved_threads_pair_per_thread() -> None:
    # tid 1 and tid 2 interleave on two CPUs; tid 1 enters twice without an exit between.
    evs = [enter(1, "sys_read", tid=1, cpu=0), enter(2, "sys_read", tid=2, cpu=1),
           enter(3, "sys_close", tid=1, cpu=0), exit_(4, "sys_read", tid=2, cpu=1),
           exit_(5, "sys_close", tid=1, cpu=0)]
    r = pair(evs, whole=False)
    assert [(p.tid, p.name) for p in r.pairs] == [(2, "sys_read"), (1, "sys_close")]
    (v,) = r.violations
    assert (v.kind, v.tid, v.name) == (ViolationKind.DOUBLE_ENTER, 1, "sys_read")


def test_window_name_mismatch_is_a_half_of_both_calls() -> None:
    evs = [enter(1, "sys_write"), exit_(2, "sys_read")]
    (v,) = pair(evs, whole=False).violations
    assert v.kind is ViolationKind.NAME_MISMATCH and v.enter is evs[0]
    assert v.of("sys_write") and v.of("sys_read") and not v.of("sys_close")


def test_window_loss_still_explains_halves() -> None:
    loss = LossInfo(lost_events=2, gaps=(LossGap(0, 1, 9, 2),))
    r = pair([enter(1, "sys_read"), enter(10, "sys_read"), exit_(11, "sys_read")], loss,
             whole=False)
    assert not r.violations and kinds(r.unjudged) == ["double_enter"]


def test_window_tie_across_cpus_is_reordered() -> None:
    evs = [enter(1, "sys_read", cpu=1), enter(5, "sys_close", cpu=0), exit_(5, "sys_read", cpu=1),
           exit_(6, "sys_close", cpu=0)]
    r = pair(evs, whole=False)
    assert not r.violations and [p.name for p in r.pairs] == ["sys_read", "sys_close"]


def test_window_exit_group_needs_no_exit() -> None:
    r = pair([TraceEvent(1, 0, 5, "sys_enter_exit_group", {})], whole=False)
    assert not r.violations and not r.pairs


@pytest.mark.parametrize("path", ["raw/small", "raw/threads", "boundary"])
def test_reference_windows_of_every_pair_pair_alone(path: str) -> None:
    # Each pair of a real capture, cut out as a call's window, is one pair and nothing
    # else; its enter alone, or its exit alone, is a violation of that call.
    c = load_capture(REF / path)
    whole = paired(c)
    assert whole.pairs
    for p in whole.pairs[::7]:
        (q,) = pair([p.enter, p.exit], whole=False).pairs
        assert (q.enter, q.exit, q.name) == (p.enter, p.exit, p.name)
        for half, kind in (([p.enter], "missing_exit"), ([p.exit], "orphan_exit")):
            r = pair(half, whole=False)
            assert kinds(r.violations) == [kind] and r.violations[0].of(p.name)
