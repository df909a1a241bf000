"""The edge sweep: every edge of every spec'd parameter (:mod:`kapi_selftests.fuzz.edges`),
issued once with accepted values elsewhere and judged by the five checks.

Generated calls find a validator's off-by-one by themselves here: an alignment
checked too loosely (a start 2048 bytes into a page), a range that turns at the
wrong fd (fd 0, where the guest owns fds 0-2), a user pointer range that ends one
byte early or late. Each failure names the edge that showed it; the test then
fails on edge coverage too, so an edge the harness could not issue is visible,
never silence. The per-parameter coverage table is printed (``-rP`` shows it).
"""

from __future__ import annotations

import pytest

from kapi_selftests.fuzz.edges import EdgeCoverage, edge_plans
from kapi_selftests.guest.fds import std_fds_owned
from kapi_selftests.guest.harness import Harness
from kapi_selftests.oracle.spec import builtin_specs

SPECS = builtin_specs()
#: calls per capture window
_CHUNK = 24


@pytest.mark.parametrize("name", sorted(SPECS))
def test_every_edge_of_every_parameter(any_harness: Harness, name: str) -> None:
    h = any_harness
    spec = h.specs.get(name, SPECS[name])
    owned = std_fds_owned()
    sweep = edge_plans(spec, std_fds=owned)
    assert sweep, f"{name}: no edges (no x86-64 number?)"
    cov = EdgeCoverage({name: spec})
    failures: list[str] = []
    for k in range(0, len(sweep), _CHUNK):
        chunk = sweep[k:k + _CHUNK]
        result = h.run([plan for _i, _e, plan in chunk])
        assert len(result.checks) == len(chunk)
        for (i, edge, plan), check in zip(chunk, result.checks, strict=True):
            cov.add(name, plan, check.prediction)
            if not check.ok:
                failures.append(f"{name}.{spec.params[i].name} edge '{edge.name}' "
                                f"({plan.describe()}):\n{check.explain()}")
    print("\n".join(cov.table()))
    assert not failures, f"{len(failures)} edge(s) judged wrong:\n\n" + "\n\n".join(failures)
    missing = cov.missing(std_fds=owned)
    assert not missing, f"edges never issued: {missing}"
    if not owned:
        pytest.skip("fds 0-2 are not the harness's here (only in the guest): their edges "
                    "were not issued; every other edge was")


def test_the_top_user_page_shared_by_a_batch_is_no_side_effect(any_harness: Harness) -> None:
    # an accepted read fills the harness's last user page; a later call of the same batch,
    # rejected for its fd, names a buffer on that page: the change is not the rejected
    # call's (found by a generated batch through virtme-ng)
    from kapi_selftests.plan import Buf, BufKind, CallPlan, Fd, FdKind, Lit

    plans = [CallPlan("read", (Fd(FdKind.DEV_ZERO), Buf(BufKind.LAST_USER, 4096), Lit(4096))),
             CallPlan("read", (Lit(0xFFFFFFFF), Buf(BufKind.LAST_USER, 3191), Lit(3191)))]
    result = any_harness.run(plans)
    assert not result.failures, "\n".join(c.explain() for c in result.failures)
