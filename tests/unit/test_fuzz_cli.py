"""fuzz/merge/replay CLI: durations, merge of shards, --kernel with the guest boot faked
(a crashed guest is recorded with its console and last batch, then restarted)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest

from kapi_selftests import cli
from kapi_selftests.cmd import fuzz as fuzz_cmd
from kapi_selftests.errors import KSFT_FAIL, KSFT_PASS, KSFT_USAGE
from kapi_selftests.fuzz.campaign import write_json_atomic
from kapi_selftests.fuzz.coverage import Coverage
from kapi_selftests.fuzz.findings import Example, FindingKey, FindingStore, read_jsonl
from kapi_selftests.host import kernel, qemu, runner
from kapi_selftests.host.console import Splat, SplatKind
from kapi_selftests.oracle.spec import builtin_specs
from kapi_selftests.plan import CallPlan, Lit, plan_to_json

SPECS = builtin_specs()
PLAN = CallPlan("madvise", (Lit(1), Lit(4096), Lit(0)))


def _shard(d: Path, shard: int, calls: int, finding: bool) -> None:
    d.mkdir(parents=True)
    cov = Coverage(SPECS)
    cov.add("sys_close", None, 9)
    write_json_atomic(d / "coverage.json", cov.to_json())
    write_json_atomic(d / "state.json", {"seed": 1, "shard": shard, "batches": 1,
                                         "calls": calls, "elapsed_s": 2.0, "calls_per_s": 50.0})
    (d / "calls.jsonl").write_text(json.dumps({"shard": shard, "n": 0}) + "\n")
    store = FindingStore.load(d / "findings.jsonl")
    if finding:
        store.add([(FindingKey("ret mismatch", "madvise", "accepted"),
                    Example(PLAN, message="m", shard=shard))], f"2026-01-0{shard + 1}T00:00:00Z")


def test_parse_duration_forms() -> None:
    assert fuzz_cmd.parse_duration("8h") == 8 * 3600
    assert fuzz_cmd.parse_duration("1h30m") == 5400
    assert fuzz_cmd.parse_duration("90") == 90
    with pytest.raises(argparse.ArgumentTypeError, match="8h"):
        fuzz_cmd.parse_duration("soon")


def test_fuzz_needs_local_or_kernel(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        cli.main(["fuzz", "--calls", "10"])
    assert e.value.code == KSFT_USAGE


def test_merge_dedupes_and_adds_up(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _shard(tmp_path / "a" / "shard-0", 0, 100, True)
    _shard(tmp_path / "a" / "shard-1", 1, 50, True)
    _shard(tmp_path / "b", 2, 10, False)
    rc = cli.main(["merge", str(tmp_path / "a"), str(tmp_path / "b"), "--into",
                   str(tmp_path / "m"), "--json"])
    assert rc == KSFT_FAIL
    s = json.loads(capsys.readouterr().out)
    assert s["calls"] == 160
    (f,) = s["findings"]
    assert f["count"] == 2 and f["first_seen"] == "2026-01-01T00:00:00Z"
    merged = FindingStore.load(tmp_path / "m" / "findings.jsonl")
    assert list(merged.records.values())[0].count == 2
    assert len(read_jsonl(tmp_path / "m" / "calls.jsonl")) == 3
    cov = json.loads((tmp_path / "m" / "coverage.json").read_text())
    assert next(e for e in cov["errors"] if e["spec"] == "sys_close" and e["errno"] == 9
                )["calls"] == 3
    assert "## Spec coverage" in (tmp_path / "m" / "report.md").read_text()


def test_merge_of_clean_shards_exits_0(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                       ) -> None:
    _shard(tmp_path / "b", 0, 10, False)
    assert cli.main(["merge", str(tmp_path / "b"), "--into", str(tmp_path / "m")]) == KSFT_PASS


def test_merge_without_shards_is_a_usage_error(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["merge", str(tmp_path), "--into", str(tmp_path / "m")]) == KSFT_USAGE
    assert "no campaign shards" in capsys.readouterr().err


def test_replay_rejects_a_file_that_is_not_a_reproducer(tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]
                                                        ) -> None:
    f = tmp_path / "r.json"
    f.write_text("[]")
    assert cli.main(["replay", str(f)]) == KSFT_USAGE


def test_fuzz_kernel_records_a_crash_restarts_and_merges(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    img = tmp_path / "bzImage"
    img.write_bytes(b"x")
    monkeypatch.setattr(kernel, "find_kernel", lambda p, m=None: kernel.KernelImage(
        image=img, kind=kernel.ImageKind.BZIMAGE, release="7.2-test"))
    monkeypatch.setattr(qemu, "find_qemu", lambda arch="x86_64": "qemu")
    monkeypatch.setattr(qemu, "choose_accel", lambda cfg, q: qemu.Accel.TCG)
    argvs: list[tuple[str, ...]] = []

    def prepare(kimg: Any, cfg: qemu.GuestConfig, spec: runner.GuestSpec, **kw: Any
                ) -> tuple[qemu.GuestConfig, list[str]]:
        argvs.append(spec.argv)
        return cfg, ["qemu"]

    boots = [0]

    def boot(cfg: qemu.GuestConfig, argv: Any, **kw: Any) -> runner.GuestRun:
        boots[0] += 1
        out = cfg.out_dir
        console = out / "console.log"
        console.write_text("boot\nOops: general protection fault\n")
        if boots[0] == 1:  # the guest dies while issuing batch 0
            (out / "inflight.json").write_text(json.dumps(
                {"seed": 5, "shard": 0, "batch": 0, "plans": [plan_to_json(PLAN)]}))
            splat = Splat(SplatKind.OOPS, 2, ("Oops: general protection fault", "RIP: x"))
            return runner.GuestRun(None, (), (splat,), None, console, out,
                                   runner.BootTimings(1.0, 2.0, None, 3.0))
        write_json_atomic(out / "state.json", {"seed": 5, "shard": 0, "batches": 2,
                                               "calls": 10, "elapsed_s": 1.0,
                                               "calls_per_s": 10.0})
        (out / "status").write_text("0\n")
        return runner.GuestRun(0, (), (), None, console, out,
                               runner.BootTimings(1.0, 2.0, None, 3.0))

    monkeypatch.setattr(runner, "prepare", prepare)
    monkeypatch.setattr(runner, "boot", boot)
    out = tmp_path / "camp"
    rc = cli.main(["fuzz", "--kernel", str(img), "--calls", "10", "--seed", "5", "--out",
                   str(out), "--json", "--engine", "harness"])
    assert rc == KSFT_FAIL  # a kernel crash fails the campaign
    assert boots[0] == 2  # restarted after the crash
    assert "--guest-out" in argvs[0] and argvs[0][argvs[0].index("--seed") + 1] == "5"
    (crash,) = read_jsonl(out / "shard-0" / "crashes.jsonl")
    assert crash["summary"].startswith("oops") or "Oops" in crash["summary"]
    assert crash["batch"] == 0 and crash["excerpt"][0].startswith("Oops")
    assert Path(crash["console"]).is_file() and Path(crash["reproducer"]).is_file()
    s = json.loads(capsys.readouterr().out)
    assert s["calls"] == 10 and len(s["crashes"]) == 1
    assert (out / "report.md").is_file()


def test_guest_argv_splits_calls_over_guests() -> None:
    p = argparse.ArgumentParser()
    fuzz_cmd.add_arguments(p)
    args = p.parse_args(["--kernel", "/", "--calls", "10", "--guests", "3", "--shard", "4"])
    per = [int(a[a.index("--calls") + 1]) for a in
           (fuzz_cmd._guest_argv(args, 4 + i, 3) for i in range(3))]
    assert per == [4, 3, 3]


def test_corpus_skips_crash_reproducers(tmp_path: Path) -> None:
    from kapi_selftests.fuzz.findings import FindingKey as Key
    from kapi_selftests.fuzz.repro import Reproducer, save

    save(Reproducer(Key("ret mismatch", "madvise", "accepted"), (PLAN,)), tmp_path / "a")
    crash = tmp_path / "b" / "crash_shard0_batch3"
    crash.mkdir(parents=True)
    (crash / "repro.json").write_text(json.dumps(
        {"key": {"kind": "kernel crash", "syscall": "madvise", "where": "Oops"},
         "plans": [plan_to_json(PLAN)], "crash": True}))
    assert fuzz_cmd._corpus_plans(tmp_path) == [[PLAN]]


def test_a_guest_silent_while_shrinking_is_not_a_kernel_crash(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from kapi_selftests.fuzz.findings import CRASHES_FILE, SHRINKING_FILE

    console = tmp_path / "console.log"
    console.write_text("kapi-selftests agent: alive\n")
    run = SimpleNamespace(splats=(), killed="guest made no progress (no console output) for "
                          "180 s; killed", console=console)
    (tmp_path / SHRINKING_FILE).write_text('{"finding": "x"}')
    assert fuzz_cmd._record_guest_crash(tmp_path, 0, run, "batch") is None
    assert not (tmp_path / CRASHES_FILE).exists()
    # the same silence outside shrinking: a hang, filed as a crash
    summary = fuzz_cmd._record_guest_crash(tmp_path, 0, run, "batch")
    assert summary is not None and summary.startswith("guest hung")
    assert (tmp_path / CRASHES_FILE).is_file()
