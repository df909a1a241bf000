"""One judge, live and offline: a batch saved with ``--save-trace`` and judged again by
``kapi-selftests check`` gets the live run's verdict, call by call; a call made wrong in
the saved ``calls.log`` is found."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from kapi_selftests import cli
from kapi_selftests.guest.harness import Harness
from kapi_selftests.oracle.calls_log import CALLS_LOG
from kapi_selftests.plan import Buf, BufKind, CallPlan, Fd, FdKind, Lit, PathKind
from kapi_selftests.plan import Path as PathPlan

PLANS = [
    CallPlan("open", (PathPlan(PathKind.EXISTING), Lit(os.O_RDONLY), Lit(0))),
    CallPlan("open", (PathPlan(PathKind.LEN_PATH_MAX), Lit(0), Lit(0))),  # too long a path
    CallPlan("read", (Fd(FdKind.REGULAR), Buf(BufKind.MAPPED, 32), Lit(32))),
    CallPlan("write", (Fd(FdKind.DEV_NULL), Buf(BufKind.NULL, 8), Lit(8))),  # rejected: NULL
    CallPlan("madvise", (Buf(BufKind.MAPPED, 4096, 2048), Lit(4096), Lit(0))),  # unaligned
    CallPlan("close", (Fd(FdKind.REGULAR),)),
]


def test_saved_batch_is_judged_offline_as_it_was_live(any_harness: Harness, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    saved = tmp_path / "trace"
    with Harness(any_harness.source, specs=any_harness.specs, save_trace=saved) as h:
        live = h.run(PLANS)
    assert not live.failures, "\n".join(c.explain() for c in live.failures)
    batch = saved / "batch-1"
    assert (batch / CALLS_LOG).is_file() and (batch / "facts.json").is_file()

    rc = cli.main(["check", str(saved)])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert re.search(r"# 6 calls judged", out), out
    assert re.search(r"^ok \d+ calls$", out, re.M), out

    # the same call made wrong in the log: a return userspace never saw
    lines = (batch / CALLS_LOG).read_text().splitlines()
    lines[2] = re.sub(r"ret=(-?\d+)", lambda m: f"ret={int(m.group(1)) + 1}", lines[2])
    (batch / CALLS_LOG).write_text("\n".join(lines) + "\n")
    rc = cli.main(["check", str(saved)])
    out = capsys.readouterr().out
    assert rc == 1, out
    assert "not ok" in out and "ret mismatch" in out, out
