"""Smoke test of the in-guest environment: tracefs is there, and the kapi events (or why not).

Placeholder written with the host runner (issue 4); the lead extends it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kapi_selftests.testing import require

pytestmark = [pytest.mark.guest, pytest.mark.root]

_TRACEFS = (Path("/sys/kernel/tracing"), Path("/sys/kernel/debug/tracing"))


def _tracefs() -> Path | None:
    return next((p for p in _TRACEFS if (p / "trace").is_file()), None)


def test_smoke_tracefs_mounted() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (tracefs is root-only)")
    assert _tracefs() is not None, \
        "tracefs not mounted (mount -t tracefs nodev /sys/kernel/tracing)"


def test_smoke_kapi_events_present(request: pytest.FixtureRequest) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (tracefs is root-only)")
    root = _tracefs()
    reason = None
    if root is None:
        reason = "tracefs not mounted (mount -t tracefs nodev /sys/kernel/tracing)"
    elif not (root / "events/kapi/kapi_syscall_enter").is_dir():
        reason = "kernel has no kapi tracepoints (build with CONFIG_KAPI_RUNTIME_CHECKS=y)"
    require(request.config, reason)
    assert root is not None
    assert (root / "events/kapi/kapi_syscall_exit/format").is_file()
