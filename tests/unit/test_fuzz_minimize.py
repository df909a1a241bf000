"""The minimiser on synthetic predicates: delta debugging, then argument simplification."""

from __future__ import annotations

import time

from kapi_selftests.fuzz.minimize import Budget, ddmin, minimize, simpler_args, simplify_plans
from kapi_selftests.plan import Buf, BufKind, CallPlan, Fd, FdKind, Lit, Path, PathKind


def test_ddmin_finds_the_two_items_that_matter() -> None:
    items = list(range(40))
    calls: list[int] = []

    def fails(xs: list[int]) -> bool:
        calls.append(1)
        return 7 in xs and 31 in xs

    assert ddmin(items, fails) == [7, 31]


def test_ddmin_returns_empty_when_the_context_does_not_matter() -> None:
    n = [0]

    def fails(xs: list[int]) -> bool:
        n[0] += 1
        return True

    assert ddmin(list(range(100)), fails) == []
    assert n[0] == 1  # one try: the empty context


def test_ddmin_keeps_order() -> None:
    assert ddmin(list("abcdefgh"), lambda xs: "".join(xs).find("c") < "".join(xs).find("g")
                 and "c" in xs and "g" in xs) == ["c", "g"]


def test_ddmin_stops_when_the_budget_runs_out() -> None:
    b = Budget(3)
    out = ddmin(list(range(64)), lambda xs: 5 in xs, b)
    assert 5 in out and b.used == 3


def test_simpler_args_are_simpler_and_never_the_same() -> None:
    for a in (Lit(0xDEADBEEF00000001), Fd(FdKind.SOCKET, 1), Buf(BufKind.KERNEL, 4096),
              Path(PathKind.NULL)):
        alts = list(simpler_args(a))
        assert alts and a not in alts
    assert list(simpler_args(Lit(0))) == [Lit(1)] or list(simpler_args(Lit(0))) == []
    assert list(simpler_args(Path(PathKind.EXISTING))) == []


def test_simplify_plans_reaches_a_fixpoint_that_still_fails() -> None:
    # fails while the count has bit 40 set and the fd is any fd
    p = CallPlan("read", (Fd(FdKind.SOCKET, 0xFFFFFFFF), Buf(BufKind.UNALIGNED, 4096),
                          Lit((1 << 40) | 0x1234)))

    def fails(ps: list[CallPlan]) -> bool:
        c = ps[-1].args[2]
        return isinstance(c, Lit) and bool(c.value >> 40 & 1)

    out = simplify_plans([p], fails)
    assert out[-1] == CallPlan("read", (Fd(FdKind.REGULAR), Buf(BufKind.MAPPED, 0),
                                        Lit(1 << 40)))


def test_minimize_drops_context_and_simplifies_the_failing_call() -> None:
    ctx = [CallPlan("close", (Fd(FdKind.PIPE_READ),)) for _ in range(10)]
    bad = CallPlan("madvise", (Buf(BufKind.UNALIGNED, 4096), Lit(4096), Lit(4)))
    runs = [0]

    def fails(ps: list[CallPlan]) -> bool:
        runs[0] += 1
        s = ps[-1].args[0]
        return isinstance(s, Buf) and s.kind is BufKind.UNALIGNED

    out = minimize(ctx, bad, fails, budget=50)
    assert len(out) == 1 and out[0].args[0] == Buf(BufKind.UNALIGNED, 0)
    assert out[0].args[1:] == (Lit(0), Lit(0))
    assert runs[0] <= 50


def test_minimize_stops_at_its_time_limit() -> None:
    # a kernel where every call fails and each run is slow: shrinking gives up on time,
    # with the smallest batch found so far
    ctx = [CallPlan("close", (Fd(FdKind.PIPE_READ),)) for _ in range(40)]
    bad = CallPlan("read", (Fd(FdKind.REGULAR), Buf(BufKind.MAPPED, 64), Lit(64)))
    runs = [0]

    def fails(ps: list[CallPlan]) -> bool:
        runs[0] += 1
        time.sleep(0.05)
        return True

    t0 = time.monotonic()
    out = minimize(ctx, bad, fails, budget=10_000, time_s=0.5)
    assert time.monotonic() - t0 < 1.5
    assert 3 <= runs[0] <= 20
    assert out[-1].name == "read" and len(out) <= len(ctx) + 1


def test_budget_time_limit() -> None:
    b = Budget(100, time_s=0.0)
    assert not b.spend()
    assert Budget(100).spend() and Budget(100, time_s=60).spend()
