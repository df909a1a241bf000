"""The per-call checks catch every kind of disagreement, on hand-made events."""

from __future__ import annotations

from kapi_selftests.oracle.checks import check_calls
from kapi_selftests.oracle.spec import builtin_specs
from kapi_selftests.records import EventSource, FindingKind, SyscallRecord
from kapi_selftests.trace.events import Capture, LossGap, LossInfo, TraceEvent

SPECS = builtin_specs()
TID = 42


def _rec(nr: int, args: tuple[int, ...], ret: int, t: int = 1000) -> SyscallRecord:
    a = tuple(args) + (0,) * (6 - len(args))
    return SyscallRecord(nr=nr, args=a, ret=ret, errno=-ret if ret < 0 else 0,  # type: ignore[arg-type]
                         tid=TID, t_ns=t, t_end_ns=t + 100)


def _kapi(name: str, args: tuple[int, ...], params: str, ret: int, sm: int,
          t: int = 1000) -> list[TraceEvent]:
    a = tuple(args) + (0,) * (6 - len(args))
    return [TraceEvent(t + 10, 0, TID, "kapi_syscall_enter",
                       {"name": name, "nargs": len(args), "args": a, "params": params}),
            TraceEvent(t + 20, 0, TID, "kapi_syscall_exit",
                       {"name": name, "ret": ret, "spec_match": sm})]


NO_LOSS = LossInfo()


def _kinds(rec: SyscallRecord, events: list[TraceEvent], loss: LossInfo = NO_LOSS,
           source: EventSource = EventSource.KAPI) -> set[FindingKind]:
    (c,) = check_calls([rec], Capture(events, loss), source, SPECS)
    return {f.kind for f in c.failures}


def test_checks_close_ebadf_matches() -> None:
    rec = _rec(3, (999,), -9)
    assert _kinds(rec, _kapi("sys_close", (999,), "fd=999", -9, 1)) == set()


def test_checks_close_rejected_fd_above_int_max() -> None:
    rec = _rec(3, (0x80000000,), -22)
    # as the real kernel traced it (boundary/trace.txt): unsigned int, printed unsigned
    ok = _kapi("sys_close", (0x80000000,), "fd=2147483648", -22, 0)
    assert _kinds(rec, ok) == set()


def test_checks_spec_match_mismatch() -> None:
    rec = _rec(3, (0x80000000,), -22)
    ev = _kapi("sys_close", (0x80000000,), "fd=2147483648", -22, 1)
    assert FindingKind.SPEC_MATCH_MISMATCH in _kinds(rec, ev)


def test_checks_args_mismatch() -> None:
    rec = _rec(3, (999,), -9)
    assert FindingKind.ARGS_MISMATCH in _kinds(rec, _kapi("sys_close", (998,), "fd=999", -9, 1))
    assert FindingKind.ARGS_MISMATCH in _kinds(rec, _kapi("sys_close", (999,), "fd=0x3e7", -9, 1))


def test_checks_ret_mismatch() -> None:
    rec = _rec(3, (999,), -9)
    assert FindingKind.RET_MISMATCH in _kinds(rec, _kapi("sys_close", (999,), "fd=999", 0, 1))


def test_checks_missing_exit_is_a_pairing_finding() -> None:
    rec = _rec(3, (999,), -9)
    assert FindingKind.PAIRING in _kinds(rec, _kapi("sys_close", (999,), "fd=999", -9, 1)[:1])


def test_checks_missing_exit_explained_by_loss_is_not_judged() -> None:
    rec = _rec(3, (999,), -9)
    loss = LossInfo(lost_events=5, gaps=(LossGap(0, 1015, 2000, 5),))
    (c,) = check_calls([rec], Capture(_kapi("sys_close", (999,), "fd=999", -9, 1)[:1], loss),
                       EventSource.KAPI, SPECS)
    assert c.ok and any("lost" in n for n in c.notes)


def test_checks_unspecd_syscall_must_not_trace_kapi_events() -> None:
    rec = _rec(39, (), 1234)
    assert FindingKind.PAIRING in _kinds(rec, _kapi("sys_getpid", (), "", 1234, 1))
    assert _kinds(rec, []) == set()


def test_checks_events_outside_the_window_belong_to_no_call() -> None:
    rec = _rec(3, (999,), -9, t=1000)
    late = _kapi("sys_close", (999,), "fd=999", -9, 1, t=5000)
    assert FindingKind.PAIRING in _kinds(rec, late)


def _generic(name: str, fields: dict[str, int], ret: int, t: int = 1000) -> list[TraceEvent]:
    return [TraceEvent(t + 10, 0, TID, f"sys_enter_{name}", dict(fields)),
            TraceEvent(t + 20, 0, TID, f"sys_exit_{name}", {"ret": ret})]


def test_checks_generic_events_registers_and_ret() -> None:
    rec = _rec(0, (1 << 32 | 3, 0x1000, 5), -9)
    good = _generic("read", {"fd": 1 << 32 | 3, "buf": 0x1000, "count": 5}, -9)
    assert _kinds(rec, good, source=EventSource.SYSCALLS) == set()
    bad_arg = _generic("read", {"fd": 3, "buf": 0x1000, "count": 5}, -9)
    assert _kinds(rec, bad_arg, source=EventSource.SYSCALLS) == {FindingKind.ARGS_MISMATCH}
    bad_ret = _generic("read", {"fd": 1 << 32 | 3, "buf": 0x1000, "count": 5}, 0)
    assert _kinds(rec, bad_ret, source=EventSource.SYSCALLS) == {FindingKind.RET_MISMATCH}


def test_checks_generic_restart_pairs() -> None:
    rec = _rec(0, (3, 0x1000, 1), 1)
    f = {"fd": 3, "buf": 0x1000, "count": 1}
    evs = _generic("read", f, -512) + _generic("read", f, 1, t=1050)
    assert _kinds(rec, evs, source=EventSource.SYSCALLS) == set()
    eintr = _rec(0, (3, 0x1000, 1), -4)
    assert _kinds(eintr, _generic("read", f, -512), source=EventSource.SYSCALLS) == set()
    wrong = _generic("read", f, -9) + _generic("read", f, 1, t=1050)
    assert FindingKind.PAIRING in _kinds(rec, wrong, source=EventSource.SYSCALLS)


def test_checks_generic_halves_are_pairing_findings() -> None:
    rec = _rec(0, (3, 0x1000, 1), 1)
    f = {"fd": 3, "buf": 0x1000, "count": 1}
    enter, exit_ = _generic("read", f, 1)
    for evs in ([enter], [exit_], [enter, enter, exit_], [enter, exit_, exit_]):
        assert FindingKind.PAIRING in _kinds(rec, evs, source=EventSource.SYSCALLS), evs
    assert FindingKind.PAIRING in _kinds(rec, [], source=EventSource.SYSCALLS)


def test_checks_generic_other_calls_halves_are_not_the_calls() -> None:
    # a clock_gettime(2) out of the vDSO around the call: its exit opens the window,
    # its enter closes it
    rec = _rec(0, (3, 0x1000, 1), 1)
    around = [TraceEvent(1001, 0, TID, "sys_exit_clock_gettime", {"ret": 0}),
              *_generic("read", {"fd": 3, "buf": 0x1000, "count": 1}, 1),
              TraceEvent(1099, 0, TID, "sys_enter_clock_gettime", {})]
    assert _kinds(rec, around, source=EventSource.SYSCALLS) == set()


def test_checks_kapi_halves_and_intruders_are_pairing_findings() -> None:
    rec = _rec(3, (999,), -9)
    enter, exit_ = _kapi("sys_close", (999,), "fd=999", -9, 1)
    w_enter, w_exit = (TraceEvent(1015, 0, TID, e.name, e.fields)  # inside the close
                       for e in _kapi("sys_write", (1, 0, 0), "", 0, 1))
    for evs in ([exit_], [enter, enter, exit_], [enter, w_enter, exit_],
                [enter, w_exit, exit_], [w_enter, exit_]):
        assert FindingKind.PAIRING in _kinds(rec, evs), evs
    # another call's whole pair after the call's own (a signal handler's) is not its
    later = _kapi("sys_write", (1, 0, 0), "", 0, 1, t=1030)
    assert _kinds(rec, [enter, exit_, *later]) == set()
