"""A tiny ``fuzz --local`` campaign on the running kernel: exit code, files, coverage, no
finding on a correct kernel, and the same seed gives the same calls."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kapi_selftests import cli
from kapi_selftests.arch import find_syscall
from kapi_selftests.fuzz.callsafety import safe_specs
from kapi_selftests.fuzz.findings import read_jsonl
from kapi_selftests.guest.executor import SPEC_SYSCALLS
from kapi_selftests.guest.tracefs import find_tracefs, missing_syscall_events
from kapi_selftests.oracle.spec import load_specs


@pytest.fixture
def campaign(tracefs_root: object, tmp_path: Path, capsys: pytest.CaptureFixture[str]
             ) -> tuple[int, Path, dict[str, object]]:
    reason = missing_syscall_events(find_tracefs(), SPEC_SYSCALLS)
    if reason:
        pytest.skip(reason)
    out = tmp_path / "camp"
    rc = cli.main(["fuzz", "--local", "--calls", "300", "--batch-size", "100", "--seed", "3",
                   "--out", str(out), "--json"])
    summary = json.loads(capsys.readouterr().out)
    return rc, out, summary


def test_fuzz_local_campaign_passes_on_a_correct_kernel(
        campaign: tuple[int, Path, dict[str, object]]) -> None:
    rc, out, summary = campaign
    assert summary["findings"] == [], summary["findings"]
    assert summary["crashes"] == []
    assert rc == 0
    assert summary["calls"] == 300


def test_fuzz_local_writes_its_files(campaign: tuple[int, Path, dict[str, object]]) -> None:
    _, out, _ = campaign
    for name in ("calls.jsonl", "coverage.json", "state.json", "report.md", "summary.json"):
        assert (out / name).is_file(), name
    rows = read_jsonl(out / "calls.jsonl")
    assert len(rows) == 300
    # every syscall the kernel specs and the harness may issue gets calls
    expected = {abi.name for n in safe_specs(load_specs()[0])
                if (abi := find_syscall(n)) is not None}
    assert {r["plan"]["name"] for r in rows} == expected
    assert all(r["pairs"] >= 1 for r in rows)  # every call was traced
    assert "## Spec coverage" in (out / "report.md").read_text()


def test_fuzz_local_reports_a_coverage_figure(
        campaign: tuple[int, Path, dict[str, object]]) -> None:
    _, _, summary = campaign
    cov = summary["coverage"]
    assert isinstance(cov, dict)
    assert cov["sides_total"] > 0 and cov["errors_total"] > 0
    assert cov["sides_hit"] >= cov["sides_total"] * 0.8  # steering reaches most sides
    assert 0.0 < cov["ratio"] <= 1.0


def test_fuzz_local_same_seed_same_calls(campaign: tuple[int, Path, dict[str, object]],
                                         tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                         ) -> None:
    _, out, _ = campaign
    again = tmp_path / "again"
    cli.main(["fuzz", "--local", "--calls", "100", "--batch-size", "100", "--seed", "3",
              "--out", str(again)])
    capsys.readouterr()
    first = [r["plan"] for r in read_jsonl(out / "calls.jsonl")][:100]
    assert [r["plan"] for r in read_jsonl(again / "calls.jsonl")] == first


def test_fuzz_local_both_engines_agree(tracefs_root: object, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    # The batch engine (agent + host-side judging) and the harness engine issue the
    # same first batch for a seed, and both find nothing on a correct kernel.
    reason = missing_syscall_events(find_tracefs(), SPEC_SYSCALLS)
    if reason:
        pytest.skip(reason)
    rows = {}
    for engine in ("batch", "harness"):
        out = tmp_path / engine
        rc = cli.main(["fuzz", "--local", "--engine", engine, "--calls", "100", "--batch-size",
                       "100", "--seed", "9", "--out", str(out), "--json"])
        summary = json.loads(capsys.readouterr().out)
        assert rc == 0 and summary["findings"] == [], (engine, summary["findings"])
        rows[engine] = read_jsonl(out / "calls.jsonl")
    assert [r["plan"] for r in rows["batch"]] == [r["plan"] for r in rows["harness"]]
    # (errnos may differ: in the batch engine the calls of a batch share one fd per
    # kind, so a read at EOF or on an fd an earlier call closed behaves accordingly)
    assert all(r["pairs"] >= 1 for r in rows["batch"])


def test_replay_follows_the_engine_that_found_the_finding(tracefs_root: object) -> None:
    # In the batch engine the calls share one fd per kind: a read after a close of the
    # same kind sees the closed fd. The harness engine gives every call fresh fds.
    from kapi_selftests.fuzz.campaign import replay_plans
    from kapi_selftests.fuzz.findings import FindingKey
    from kapi_selftests.plan import Buf, BufKind, CallPlan, Fd, FdKind, Lit

    reason = missing_syscall_events(find_tracefs(), SPEC_SYSCALLS)
    if reason:
        pytest.skip(reason)
    plans = [CallPlan("close", (Fd(FdKind.REGULAR),)),
             CallPlan("read", (Fd(FdKind.REGULAR), Buf(BufKind.MAPPED, 16), Lit(16)))]
    key = FindingKey("ret mismatch", "read", "accepted")  # not on a correct kernel
    calls = {}
    for engine in ("batch", "harness"):
        failing, explain = replay_plans(plans, key, engine=engine)
        assert not failing, explain
        calls[engine] = explain.splitlines()[0]
    assert calls["batch"].startswith("call: read(") and ") = -EBADF " in calls["batch"], calls
    assert calls["harness"].startswith("call: read(") and "EBADF" not in calls["harness"], calls


@pytest.mark.parametrize("engine", ["batch", "harness"])
def test_c_reproducer_issues_the_calls_as_its_engine_does(tracefs_root: object, tmp_path: Path,
                                                         engine: str) -> None:
    # The C program of a reproducer sees what the engine that found it saw: for the
    # batch engine one fd per kind (a read after a close of the same kind: EBADF) and
    # its agent's 128 KiB region (a 1 MiB read into the region's tail stops at its end).
    import errno
    import os
    import shutil
    import subprocess

    from kapi_selftests.fuzz.campaign import replay_plans
    from kapi_selftests.fuzz.findings import FindingKey
    from kapi_selftests.fuzz.repro import Reproducer, render_c
    from kapi_selftests.oracle.spec import builtin_specs
    from kapi_selftests.plan import Buf, BufKind, CallPlan, Fd, FdKind, Lit

    if os.environ.get("KAPI_IN_GUEST"):
        pytest.skip("compiles C: run on the host as root (gcc under TCG takes tens of seconds)")
    if shutil.which("gcc") is None:
        pytest.skip("gcc not installed")
    reason = missing_syscall_events(find_tracefs(), SPEC_SYSCALLS)
    if reason:
        pytest.skip(reason)
    key = FindingKey("ret mismatch", "read", "accepted")  # not on a correct kernel
    sequences = (
        [CallPlan("close", (Fd(FdKind.REGULAR),)),
         CallPlan("read", (Fd(FdKind.REGULAR), Buf(BufKind.MAPPED, 16), Lit(16)))],
        [CallPlan("read", (Fd(FdKind.DEV_ZERO), Buf(BufKind.GUARD_TAIL, 1 << 20),
                           Lit(1 << 20)))])
    seen = []
    for n, plans in enumerate(sequences):
        r = Reproducer(key, tuple(plans), "test", source="syscalls",
                       spec=builtin_specs()["sys_read"], engine=engine)
        src, exe = tmp_path / f"r{n}.c", tmp_path / f"r{n}"
        src.write_text(render_c(r))
        subprocess.run(["gcc", "-O2", "-o", str(exe), str(src)], check=True)
        out = subprocess.run([str(exe)], capture_output=True, text=True)
        assert out.returncode in (0, 1), out.stdout + out.stderr
        # "call: read(...) = RET (errno E)" against the engine's own replay
        ret, err = out.stdout.splitlines()[0].rsplit(" = ", 1)[1].split(" (errno ")
        c_result = f"-{errno.errorcode[int(err[:-1])]}" if int(err[:-1]) else ret
        _, explain = replay_plans(plans, key, engine=engine)
        assert f") = {c_result} " in explain.splitlines()[0], (out.stdout, explain)
        seen.append(c_result)
    assert seen == (["-EBADF", "131072"] if engine == "batch" else ["16", "1048576"])
