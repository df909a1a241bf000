"""Fixtures of the in-guest suite: the harness on the running kernel, and skip policy.

Guest tests need root and tracefs (the VM, or root on a real machine). Tests
that need the kapi tracepoints use ``kapi_harness``: on a stock kernel they skip
with the reason, or fail with ``--require-kapi``; ``generic_harness`` runs the
same calls against the generic syscall events on any kernel with
CONFIG_FTRACE_SYSCALLS.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from kapi_selftests.arch import find_syscall
from kapi_selftests.guest.executor import SPEC_SYSCALLS
from kapi_selftests.guest.harness import Harness
from kapi_selftests.guest.tracefs import (
    find_tracefs,
    missing_kapi_events,
    missing_syscall_events,
    missing_tracefs,
)
from kapi_selftests.oracle.spec import load_specs
from kapi_selftests.records import EventSource
from kapi_selftests.testing import require


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/guest" in str(item.path):
            item.add_marker(pytest.mark.guest)
            item.add_marker(pytest.mark.root)


@pytest.fixture(scope="session")
def tracefs_root() -> object:
    root = find_tracefs()
    reason = missing_tracefs(root)
    if reason:
        pytest.skip(reason)
    return root


def _save_trace(request: pytest.FixtureRequest, source: EventSource) -> Path | None:
    # `kapi-selftests run --save-trace DIR` sets KAPI_SAVE_TRACE: every batch's raw
    # capture lands in DIR/<source>-<module>/batch-N, the layout `check` reads.
    root = os.environ.get("KAPI_SAVE_TRACE")
    if not root:
        return None
    return Path(root) / f"{source.value}-{request.module.__name__.rsplit('.', 1)[-1]}"


def _traced_names() -> tuple[str, ...]:
    # The five v4 syscalls, and every other syscall the kernel specs that has generic
    # events: their generated calls are checked against those events too.
    root = find_tracefs()
    extra = {abi.name for n in load_specs()[0]
             if (abi := find_syscall(n)) is not None and abi.name not in SPEC_SYSCALLS
             and missing_syscall_events(root, (abi.name,)) is None}
    return SPEC_SYSCALLS + tuple(sorted(extra))


@pytest.fixture(scope="module")
def generic_harness(request: pytest.FixtureRequest, tracefs_root: object) -> Iterator[Harness]:
    reason = missing_syscall_events(find_tracefs(), SPEC_SYSCALLS)
    if reason:
        pytest.skip(reason)
    with Harness(EventSource.SYSCALLS, names=_traced_names(),
                 save_trace=_save_trace(request, EventSource.SYSCALLS)) as h:
        yield h


@pytest.fixture(scope="module")
def kapi_harness(request: pytest.FixtureRequest, tracefs_root: object) -> Iterator[Harness]:
    require(request.config, missing_kapi_events(find_tracefs()))
    with Harness(EventSource.KAPI, strict=os.environ.get("KAPI_STRICT_DRIFT") == "1",
                 save_trace=_save_trace(request, EventSource.KAPI)) as h:
        yield h


@pytest.fixture(params=[EventSource.KAPI, EventSource.SYSCALLS], ids=["kapi", "generic"])
def any_harness(request: pytest.FixtureRequest) -> Harness:
    """Each test twice: against the kapi events and against the generic syscall events."""
    name = "kapi_harness" if request.param is EventSource.KAPI else "generic_harness"
    h: Harness = request.getfixturevalue(name)
    return h
