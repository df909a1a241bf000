"""Strategies draw boundaries first, respect safety rules, and work for any spec."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kapi_selftests import arch
from kapi_selftests.errors import UsageError
from kapi_selftests.fuzz.strategies import buffers, call_plans, mask_values, sizes
from kapi_selftests.guest.fds import std_fds_owned
from kapi_selftests.oracle.spec import ParamSpec, ParamType, Spec, builtin_specs
from kapi_selftests.plan import (
    STD_FDS,
    Buf,
    BufKind,
    CallPlan,
    Fd,
    FdKind,
    Lit,
    plan_from_json,
    plan_to_json,
)

SPECS = builtin_specs()


@given(st.sampled_from(sorted(SPECS)).flatmap(lambda n: call_plans(SPECS[n])))
def test_strategies_plans_round_trip_json(plan: CallPlan) -> None:
    assert plan_from_json(plan_to_json(plan)) == plan
    assert len(plan.args) == len(SPECS["sys_" + plan.name].params)


@given(call_plans(SPECS["sys_read"]))
def test_strategies_never_name_an_fd_the_harness_does_not_own(plan: CallPlan) -> None:
    fd = plan.args[0]
    assert isinstance(fd, Fd) or isinstance(fd, Lit)
    if isinstance(fd, Lit):  # invalid after the unsigned int cast too: never 0, 1, 2, ...
        # above the largest fd table the kernel allows (sysctl_nr_open_max: INT_MAX
        # rounded down to a multiple of BITS_PER_LONG): never an open fd of anyone's
        assert (fd.value & 0xFFFFFFFF) > (arch.INT_MAX & ~63), hex(fd.value)
    if isinstance(fd, Fd) and fd.kind in STD_FDS:
        assert std_fds_owned()  # fds 0-2 only where the harness made them its own


@given(call_plans(SPECS["sys_madvise"]))
def test_strategies_madvise_stays_in_harness_mappings(plan: CallPlan) -> None:
    start, length, advice = plan.args
    assert isinstance(length, Lit) and isinstance(advice, Lit)
    adv = advice.value & 0xFFFFFFFF
    assert adv not in arch.MADV_UNSAFE
    inside = isinstance(start, Buf) and start.kind in (BufKind.MAPPED, BufKind.GUARD_TAIL) \
        and length.value <= start.size
    if not inside and adv in arch.MADV.values():
        assert adv in arch.MADV_HINTS


def test_strategies_boundaries_come_first() -> None:
    seen: set[int] = set()

    @settings(max_examples=300, derandomize=True)
    @given(sizes())
    def collect(v: int) -> None:
        seen.add(v)

    collect()
    assert {0, 1 << 63, arch.SSIZE_MAX, arch.MAX_RW_COUNT} <= seen

    bits: set[int] = set()

    @settings(max_examples=300, derandomize=True)
    @given(mask_values(0x7FFFC3))
    def collect_mask(v: int) -> None:
        bits.add(v)

    collect_mask()
    assert any(v & (1 << 30) for v in bits) and any(v & (1 << 31) for v in bits)


def test_strategies_reject_bad_arguments() -> None:
    with pytest.raises(UsageError, match="size"):
        buffers(-1)
    alien = Spec(name="sys_nosuch", params=(), ret=SPECS["sys_close"].ret)
    with pytest.raises(UsageError, match="no x86-64 syscall"):
        call_plans(alien)


@given(st.data())
def test_strategies_a_later_spec_gets_plans_from_its_spec(data: st.DataObject) -> None:
    # A spec the built-in model does not know: close's shape under another syscall name.
    getpid_like = replace(SPECS["sys_close"], name="sys_getpid",
                          params=(ParamSpec("fd", "unsigned int", ParamType.FD),))
    plan = data.draw(call_plans(getpid_like))
    assert plan.name == "getpid" and isinstance(plan.args[0], Fd | Lit)
    _ = FdKind
