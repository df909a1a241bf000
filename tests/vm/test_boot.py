"""Real boots from the host: the stock kernel runs a guest test, a crash and a hang are caught.

The kernel comes from ``--kernel``, else ``KAPI_KERNEL``, else ``.cache/kernels/stock``
(``vm/get-stock-kernel`` fetches it); without one, or without QEMU, these skip
with the reason. Each test boots one TCG guest (10-30 s).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from kapi_selftests.errors import KSFT_FAIL
from kapi_selftests.host import kernel, qemu, runner
from kapi_selftests.host.console import SplatKind
from kapi_selftests.report import Outcome, exit_code

pytestmark = [pytest.mark.vm]

def _run(k: kernel.KernelImage, tmp_path: Path, argv: tuple[str, ...] | None = None,
         runner_name: str = "qemu", **cfg: int
         ) -> tuple[list, runner.GuestRun]:  # type: ignore[type-arg]
    config = qemu.GuestConfig(kernel=k.image, timeout_s=cfg.pop("timeout_s", 240), **cfg)
    req = runner.SuiteRequest(kernel=k, config=config, work_dir=tmp_path, keyword="smoke",
                              guests=1, runner=runner_name)
    spec = None if argv is None else runner.GuestSpec(argv=argv, env=runner.guest_env())
    results, runs = runner.run_guests(req, spec_for=(lambda i, n: spec) if spec else None)
    return results, runs[0]


@pytest.mark.parametrize("runner_name", ["qemu", "vng"])
def test_boot_stock_kernel_runs_guest_test(vm_kernel: kernel.KernelImage, tmp_path: Path,
                                           runner_name: str) -> None:
    if runner_name == "vng":
        if shutil.which("vng") is None:
            pytest.skip("virtme-ng not installed (pip install 'kapi-selftests[vng]')")
        if not runner.udev_running():
            pytest.skip("--runner vng needs udev running (/lib/systemd/systemd-udevd --daemon)")
    results, run = _run(vm_kernel, tmp_path, runner_name=runner_name)
    by_name = {r.name: r for r in results}
    smoke = by_name.get("tests/guest/test_smoke.py::test_smoke_tracefs_mounted")
    assert smoke is not None, f"guest test missing; results: {results}; console: {run.console}"
    assert smoke.outcome is Outcome.PASS, smoke
    assert run.status == 0
    assert not run.splats
    assert run.timings.first_test_s is not None
    if runner_name == "qemu":  # our /init prints its marker; vng's own init does not
        assert run.timings.init_s is not None
    kapi = by_name["tests/guest/test_smoke.py::test_smoke_kapi_events_present"]
    if kapi.outcome is Outcome.SKIP:
        assert kapi.reason.startswith("kernel has no kapi tracepoints")


def test_boot_sysrq_crash_is_reported_with_excerpt(vm_kernel: kernel.KernelImage,
                                                   tmp_path: Path) -> None:
    results, run = _run(vm_kernel, tmp_path,
                        ("/bin/sh", "-c", "echo c > /proc/sysrq-trigger; sleep 60"))
    assert run.status is None  # the guest died before it could write one
    crash = [r for r in results if r.name == "kernel-console"]
    assert crash, f"no crash result; console: {run.console}"
    assert any(s.kind in (SplatKind.PANIC, SplatKind.OOPS, SplatKind.BUG) for s in run.splats)
    text = "\n".join(d for r in crash for d in r.diagnostics)
    assert "sysrq" in text.lower()
    assert all(r.outcome is Outcome.FAIL for r in crash)
    assert exit_code(results) == KSFT_FAIL


def test_boot_hung_guest_is_killed_by_timeout(vm_kernel: kernel.KernelImage,
                                              tmp_path: Path) -> None:
    results, run = _run(vm_kernel, tmp_path, ("/bin/sh", "-c", "sleep 600"),
                        progress_timeout_s=15)
    assert run.killed is not None and "no progress" in run.killed
    assert run.timings.total_s < 120
    hang = [r for r in results if r.name == "guest-watchdog"]
    assert hang and hang[0].outcome is Outcome.FAIL
    assert exit_code(results) == KSFT_FAIL


def test_fuzz_batch_engine_restarts_after_a_real_crash(
        vm_kernel: kernel.KernelImage, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    # The agent crashes the guest kernel (sysrq c) just before its second batch, once;
    # the campaign records the crash with its console excerpt and the batches in
    # flight, boots a new guest, skips the crashed batch and finishes its budget.
    import json

    from kapi_selftests import cli
    from kapi_selftests.fuzz.findings import read_jsonl

    monkeypatch.setenv("KAPI_TEST_CRASH_AT_BATCH", "1")
    out = tmp_path / "camp"
    rc = cli.main(["fuzz", "--kernel", str(vm_kernel.image), "--calls", "3000",
                   "--batch-size", "1000", "--seed", "4", "--out", str(out), "--json",
                   "--no-minimize"])
    summary = json.loads(capsys.readouterr().out)
    assert rc == KSFT_FAIL  # a kernel crash fails the campaign
    (crash,) = read_jsonl(out / "shard-0" / "crashes.jsonl")
    assert "sysrq" in "\n".join(crash["excerpt"]).lower(), crash["excerpt"]
    assert crash["batch"] == 1 and len(crash["last_plans"]) >= 1000
    from kapi_selftests.fuzz.repro import load
    r = load(Path(crash["reproducer"]))  # replays the batches in flight, as they ran
    assert r.engine == "batch" and r.key.kind == "kernel crash" and len(r.plans) >= 1000
    state = json.loads((out / "shard-0" / "state.json").read_text())
    assert state["skipped_batches"] == [1]
    assert summary["calls"] == 3000 and summary["findings"] == []
    assert (out / "shard-0" / ".kapi-test-crashed").exists()  # the first guest did crash
