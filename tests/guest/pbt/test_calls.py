"""Generated calls of every spec'd syscall, each checked end to end (the five checks).

One hypothesis example is a list of calls issued in one capture window, so a
example costs one trace drain, not one per call. Against the kapi events every
check runs (args/params, ret, spec_match, no side effect on rejection);
against the generic syscall events, pairing, registers and ret.
"""

from __future__ import annotations

import pytest
from hypothesis import given, note
from hypothesis import strategies as st

from kapi_selftests.harness import Harness
from kapi_selftests.spec import builtin_specs
from kapi_selftests.strategies import call_plans

SPECS = builtin_specs()


@pytest.mark.parametrize("name", sorted(SPECS))
def test_calls_generated(any_harness: Harness, name: str) -> None:
    h = any_harness
    spec = h.specs.get(name, SPECS[name])

    @given(st.lists(call_plans(spec), min_size=1, max_size=8))
    def check(plans: list) -> None:  # type: ignore[type-arg]
        result = h.run(plans)
        for c in result.checks:
            note(c.explain())
        bad = result.failures
        assert not bad, "\n\n".join(c.explain() for c in bad)

    check()
