"""Generated calls of every spec'd syscall, each checked end to end (the five checks).

The syscalls are the ones the running kernel lists in debugfs (the built-in v4 model
without one), so a kernel that specs more than the five v4 syscalls gets generated
calls of every one of them, built from its spec alone, each a test by name. A syscall
that cannot be issued with generated arguments (it ends the process, signals others,
has a parameter the generator cannot lay out: :mod:`kapi_selftests.fuzz.callsafety`) skips
with the reason.

One hypothesis example is a list of calls issued in one capture window, so a
example costs one trace drain, not one per call. Against the kapi events every
check runs (args/params, ret, spec_match, no side effect on rejection);
against the generic syscall events, pairing, registers and ret.
"""

from __future__ import annotations

import pytest
from hypothesis import given, note
from hypothesis import strategies as st

from kapi_selftests import arch
from kapi_selftests.errors import KapiError
from kapi_selftests.fuzz.callsafety import missing_safe_calls
from kapi_selftests.fuzz.strategies import call_plans
from kapi_selftests.guest.harness import Harness
from kapi_selftests.oracle import reference
from kapi_selftests.oracle.spec import Spec, builtin_specs, load_debugfs, missing_kapi_specs
from kapi_selftests.records import EventSource


def _specs() -> dict[str, Spec]:
    # collected from the kernel's own list: what it specs is what gets tested
    if missing_kapi_specs() is None:
        try:
            return load_debugfs()
        except KapiError:
            pass  # the suite's spec tests say why; the model still gets its calls
    return builtin_specs()


SPECS = _specs()


def _reference() -> dict[str, Spec]:
    # The reference's spec of every syscall whose kernel spec has other rules: calls of
    # those are predicted from both, and a call they decide differently fails here too.
    if missing_kapi_specs() is not None:
        return {}
    try:
        ref, _ = reference.load_reference(reference.reference_choice(), SPECS)
    except KapiError:
        return {}  # test_reference_specs says why
    changed = {d.spec for d in reference.compare_to_reference(ref, SPECS)}
    return {n: ref[n] for n in changed if n in ref and n in SPECS}


REFERENCE = _reference()


@pytest.mark.parametrize("name", sorted(SPECS))
def test_calls_generated(any_harness: Harness, name: str) -> None:
    h = any_harness
    spec = h.specs.get(name, SPECS[name])
    if arch.find_syscall(spec.name) is None:
        pytest.skip(f"{name}: no x86-64 syscall of that name")
    reason = missing_safe_calls(spec)
    if reason is not None:
        pytest.skip(reason)
    abi = arch.find_syscall(spec.name)
    if h.source is EventSource.SYSCALLS and abi is not None and abi.name not in h.names:
        pytest.skip(f"kernel has no syscalls:sys_enter_{abi.name} event to check {name} "
                    "against (CONFIG_FTRACE_SYSCALLS)")

    h.reference = REFERENCE

    @given(st.lists(call_plans(spec), min_size=1, max_size=8))
    def check(plans: list) -> None:  # type: ignore[type-arg]
        result = h.run(plans)
        for c in result.checks:
            note(c.explain())
        bad = result.failures
        assert not bad, "\n\n".join(c.explain() for c in bad)
        assert not result.disagreements, (
            f"{name}: the reference spec decides these calls otherwise:\n"
            + "\n".join(result.disagreements))

    check()
