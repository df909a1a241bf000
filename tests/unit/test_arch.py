"""The x86-64 syscall table, and specs of syscalls the built-in model does not know."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given

from kapi_selftests import arch
from kapi_selftests.fuzz.callsafety import DENIED, missing_safe_calls
from kapi_selftests.fuzz.strategies import call_plans
from kapi_selftests.oracle.predict import predict
from kapi_selftests.oracle.spec import ParamSpec, ParamType, Spec, load_debugfs
from kapi_selftests.plan import CallPlan, Fd, Lit

KAPI = Path(__file__).resolve().parents[1] / "data" / "gate-real-kapi" / "kapi"

# the debugfs dump of the KAPI kernel with lseek and dup spec'd as well (a real capture,
# its prose elided)
EXTRA = Path(__file__).resolve().parents[1] / "data" / "extra-specs-kapi" / "kapi"


def test_arch_knows_every_x86_64_syscall_by_number() -> None:
    assert len(arch.X86_64_NR) > 360
    assert len(set(arch.X86_64_NR.values())) == len(arch.X86_64_NR)  # one name per number
    assert (arch.NR["lseek"], arch.NR["dup"], arch.NR["exit_group"], arch.NR["openat2"]) == \
        (8, 32, 231, 437)
    for name, nr in arch.X86_64_NR.items():
        abi = arch.find_syscall(nr)
        assert abi is not None and abi.name == name and arch.find_syscall(f"sys_{name}") is abi


def test_arch_table_names_are_the_syscall_define_names() -> None:
    # what KAPI specs and the syscall events carry; the table's own name is an alias
    stat = arch.find_syscall("stat")
    assert stat is not None and stat.name == "newstat" and stat.nr == 4
    assert arch.find_syscall("sys_newstat") is stat
    assert arch.find_syscall("nosuch") is None


def test_arch_keeps_the_parameters_it_knows() -> None:
    read = arch.find_syscall("read")
    lseek = arch.find_syscall("lseek")
    assert read is not None and read.params_known and len(read.params) == 3
    assert lseek is not None and not lseek.params_known and lseek.params == ()


def test_arch_a_spec_known_by_number_only_takes_its_arity_and_types_from_itself() -> None:
    specs = load_debugfs(EXTRA)
    lseek, dup = specs["sys_lseek"], specs["sys_dup"]
    assert dup.nr == 32 and dup.syscall_nargs == 1 and dup.ctypes() == ("unsigned int",)
    assert lseek.nr == 8 and lseek.syscall_nargs == 3
    assert lseek.ctypes() == ("unsigned int", "off_t", "unsigned int")
    assert not any("syscall number" in u for u in lseek.unknowns)
    # whence 5 is outside the spec's range; fd 3, offset 0, whence 0 is accepted
    assert predict(lseek, (3, 0, 5)).rejected
    assert not predict(lseek, (3, 0, 0)).rejected


@pytest.fixture(scope="module")
def extra_specs() -> dict[str, Spec]:
    return load_debugfs(EXTRA)


def test_arch_a_spec_known_by_number_only_gets_generated_calls(
        extra_specs: dict[str, Spec]) -> None:
    @given(call_plans(extra_specs["sys_lseek"]))
    def check(plan: CallPlan) -> None:
        assert plan.name == "lseek" and plan.nr == 8 and len(plan.args) == 3
        assert isinstance(plan.args[0], Fd | Lit)

    check()


def test_callsafety_denies_process_killers_by_name_and_passes_the_rest() -> None:
    specs = load_debugfs(KAPI)
    assert all(missing_safe_calls(s) is None for s in load_debugfs(EXTRA).values())
    for name in ("exit", "exit_group", "kill", "reboot", "munmap"):
        assert name in DENIED and name in arch.X86_64_NR
    close = specs["sys_close"]
    reason = missing_safe_calls(replace(close, name="sys_exit_group"))
    assert reason is not None and "ends the calling process" in reason
    fn = ParamSpec("handler", "void *", ParamType.FUNC_PTR)
    reason = missing_safe_calls(replace(close, name="sys_dup", params=(fn,)))
    assert reason is not None and "handler is func_ptr" in reason
