"""ptrace witness: a traced child issues generated calls; the tracer's view of every
spec'd syscall (entry registers, exit return) must agree with the tracepoints."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kapi_selftests.arch import MASK64
from kapi_selftests.fuzz.strategies import call_plans
from kapi_selftests.guest.harness import Harness
from kapi_selftests.guest.witness import run_witnessed
from kapi_selftests.oracle.predict import predict
from kapi_selftests.oracle.spec import builtin_specs
from kapi_selftests.records import EventSource
from kapi_selftests.trace.events import TraceEvent
from kapi_selftests.trace.pairing import pair
from kapi_selftests.trace.ringbuf import decode

SPECS = builtin_specs()
NRS = frozenset(s.nr for s in SPECS.values() if s.nr is not None)


def _pairs(events: list[TraceEvent], source: EventSource) -> list[tuple[TraceEvent, TraceEvent]]:
    """The spec'd calls' pairs of the source's family, by the suite's one pairing."""
    kapi = source is EventSource.KAPI
    mine = [e for e in events if e.name.startswith("kapi_syscall_") == kapi]
    return [(p.enter, p.exit) for p in pair(mine).pairs if p.name in SPECS]


@settings(max_examples=5)
@given(plans=st.lists(st.sampled_from(sorted(SPECS)).flatmap(lambda n: call_plans(SPECS[n])),
                      min_size=1, max_size=6))
def test_witness_ptrace_agrees_with_tracepoints(any_harness: Harness, plans: list) -> None:  # type: ignore[type-arg]
    h = any_harness
    mats = [h.materialize(p) for p in plans]
    seen: list = []  # type: ignore[type-arg]

    def run() -> list:  # type: ignore[type-arg]
        seen.append(run_witnessed([(m.plan.nr, m.regs) for m in mats], NRS))
        return []

    try:
        batch = h.executor.run_fn(run)
    finally:
        h.pool.release()
    (pid, witnessed), = seen
    events = [e for e in decode(batch.raw).events if e.tid == pid]
    pairs = _pairs(events, batch.source)
    assert len(pairs) == len(witnessed), (
        f"tracer saw {len(witnessed)} spec'd syscalls, tracepoints {len(pairs)} pairs")
    by_nr = {s.nr: s for s in SPECS.values()}
    for (enter, exit_), w in zip(pairs, witnessed, strict=True):
        spec = by_nr[w.nr]
        if batch.source is EventSource.KAPI:
            assert enter.fields["name"] == spec.name
            want = predict(spec, w.args, h.arena).args
            got = tuple(int(a) & MASK64 for a in enter.fields["args"])  # type: ignore[union-attr]
            assert got == want, (spec.name, got, want)
        else:
            assert enter.name == f"sys_enter_{spec.name[4:]}"
            for i, (_, pname) in enumerate(spec.params and
                                           [(p.ctype, p.name) for p in spec.params]):
                assert int(enter.fields[pname]) & MASK64 == w.args[i]  # type: ignore[arg-type]
        assert exit_.fields["ret"] == w.ret, (spec.name, exit_.fields, w)


pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
