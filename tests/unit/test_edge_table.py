"""The edge table: what each constraint's edges are, that both generators draw them, and
that edge coverage sees what was issued and what was not."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from kapi_selftests import arch
from kapi_selftests.fuzz import edges
from kapi_selftests.fuzz.edges import SIZED, EdgeCoverage, edge_of, edge_plans, param_edges
from kapi_selftests.fuzz.generate import PlanGenerator
from kapi_selftests.fuzz.strategies import call_plans
from kapi_selftests.oracle.predict import MemoryFacts, predict
from kapi_selftests.oracle.spec import builtin_specs
from kapi_selftests.plan import Buf, BufKind, CallPlan, Fd, FdKind, Lit, Path, PathKind

SPECS = builtin_specs()


def _args(spec: str, param: int) -> list[object]:
    return [e.arg for e in param_edges(spec, SPECS[spec].params[param])]


def test_alignment_edges_are_every_power_of_two_below_the_page_and_its_neighbours() -> None:
    offsets = {a.offset for a in _args("sys_madvise", 0)
               if isinstance(a, Buf) and a.kind is BufKind.MAPPED}
    assert offsets == {0, *(1 << k for k in range(12)), 4095, 4096, 4097}


def test_fd_edges_are_the_low_end_and_the_int_max_boundary() -> None:
    args = _args("sys_close", 0)
    assert {Fd(FdKind.STD0), Fd(FdKind.STD1), Fd(FdKind.STD2)} <= set(args)
    lits = {a.value for a in args if isinstance(a, Lit)}
    assert {arch.INT_MAX - 1, arch.INT_MAX, arch.INT_MAX + 1, 0xFFFFFFFF,
            (1 << 64) - 1} <= lits
    assert Fd(FdKind.REGULAR, 1) in args  # 2^32 + fd: the cast drops the high bits


def test_mask_edges_are_each_bit_alone_all_valid_and_the_sign_bit() -> None:
    flags = SPECS["sys_open"].params[1]
    lits = {a.value for a in _args("sys_open", 1) if isinstance(a, Lit)}
    assert {1 << b for b in range(32)} <= lits  # each bit, valid or not
    assert {0, flags.valid_mask, 1 << 31, 1 << 32} <= lits


def test_path_and_buffer_edges() -> None:
    paths = {a.kind for a in _args("sys_open", 0) if isinstance(a, Path)}
    assert {PathKind.LEN_PATH_MAX_2, PathKind.LEN_PATH_MAX_1, PathKind.LEN_PATH_MAX,
            PathKind.LEN_PATH_MAX_P1, PathKind.UNTERMINATED, PathKind.NULL} <= paths
    bufs = {a.kind for a in _args("sys_read", 1) if isinstance(a, Buf)}
    assert {BufKind.LAST_USER, BufKind.CROSS_USER, BufKind.NON_USER, BufKind.NULL,
            BufKind.UNMAPPED, BufKind.READONLY} <= bufs


def test_range_edges_include_the_c_types_extremes() -> None:
    lits = {a.value for a in _args("sys_read", 2) if isinstance(a, Lit)}
    assert {0, 1, 1 << 63, (1 << 63) - 1, (1 << 64) - 1, (1 << 64) - 2} <= lits


def test_the_sweep_sizes_buffers_by_their_count_and_names_its_edge() -> None:
    sweep = edge_plans(SPECS["sys_read"])
    assert len(sweep) == sum(len(param_edges("sys_read", p)) for p in SPECS["sys_read"].params)
    for i, _e, plan in sweep:
        assert edge_of("sys_read", SPECS["sys_read"].params[i], plan.args[i]) is not None
        buf = plan.args[1]
        assert isinstance(buf, Buf) and buf.size != SIZED
        if buf.kind in (BufKind.LAST_USER, BufKind.CROSS_USER, BufKind.NON_USER):
            assert buf.size <= arch.PAGE_SIZE
    no_std = edge_plans(SPECS["sys_close"], std_fds=False)
    assert not any(isinstance(p.args[0], Fd) and p.args[0].kind.value.startswith("std")
                   for _, _, p in no_std)


def test_edge_coverage_sees_the_sweep_complete_and_a_gap_when_one_is_left_out() -> None:
    cov = EdgeCoverage(SPECS)
    left_out = None
    for name, spec in SPECS.items():
        for i, e, plan in edge_plans(spec):
            if left_out is None and name == "sys_madvise" and e.name == "+2048":
                left_out = (name, spec.params[i].name, e.name)
                continue
            cov.add(name, plan, None)
    assert cov.missing() == [left_out]
    hit, total = cov.figure()
    assert total - hit == 1
    assert any("+2048=-" in line for line in cov.table())


def test_edge_coverage_sides_follow_the_oracle() -> None:
    spec = SPECS["sys_madvise"]
    cov = EdgeCoverage(SPECS)
    facts = MemoryFacts()
    for i, _e, plan in edge_plans(spec):
        if i != 0:
            continue
        regs = (0x10000 + (plan.args[0].offset if isinstance(plan.args[0], Buf) else 0),
                4096, 0)
        cov.add(spec.name, plan, predict(spec, regs, facts))
    c = cov.counts
    assert c[("sys_madvise", "start", "+2048", "rejected")] == 1
    assert c[("sys_madvise", "start", "aligned", "accepted")] == 1


def test_the_fuzzer_draws_edges() -> None:
    g = PlanGenerator(SPECS, seed=3, edge_rate=1.0, std_fds=True)
    plans = g.batch(0, 400)
    cov = EdgeCoverage(SPECS)
    for p in plans:
        cov.add(f"sys_{p.name}", p, None)
    hit, total = cov.figure()
    assert hit > 0.6 * total  # 400 calls, every argument an edge
    off = PlanGenerator(SPECS, seed=3, edge_rate=0.0)
    assert not any(isinstance(a, Buf) and a.offset for p in off.batch(0, 400) for a in p.args)


def test_the_strategies_draw_edges() -> None:
    seen: set[int] = set()

    @settings(max_examples=150, derandomize=True, database=None)
    @given(call_plans(SPECS["sys_madvise"]))
    def collect(plan: CallPlan) -> None:
        a = plan.args[0]
        if isinstance(a, Buf):
            seen.add(a.offset)

    collect()
    assert len(seen & {1 << k for k in range(12)}) >= 3


@given(st.sampled_from(sorted(SPECS)), st.randoms(use_true_random=False))
def test_every_edge_names_back_to_itself(name: str, rng: random.Random) -> None:
    spec = SPECS[name]
    p = rng.choice(spec.params)
    for e in param_edges(name, p):
        assert edges.edge_of(name, p, e.arg) is not None
