"""Runner and `run` CLI: results, exit codes and timeouts, with QEMU faked at the process
boundary (subprocess.Popen) and consoles taken from real boots in tests/data."""

from __future__ import annotations

import io
import os
import struct
import subprocess
from pathlib import Path
from typing import Any

import pytest
from datadir import DATA
from host_elf import bzimage
from ktap_rules import check_ktap

from kapi_selftests import cli
from kapi_selftests.errors import KSFT_FAIL, KSFT_PASS, KSFT_SKIP, LostGuest
from kapi_selftests.host import initramfs, kernel, qemu, runner
from kapi_selftests.host.console import Splat, SplatKind
from kapi_selftests.report import Outcome, exit_code
from kapi_selftests.report import TestResult as Result

CLEAN = (DATA / "console-clean-suite-6.1-tcg.txt").read_bytes()
SYSRQ = (DATA / "console-sysrq-panic-6.1-tcg.txt").read_bytes()

JUNIT = """<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest">
<testcase classname="tests.guest.test_smoke" name="test_ok" file="tests/guest/test_smoke.py"
 time="0.1"/>
<testcase classname="tests.guest.test_smoke.TestX" name="test_bad[a]"
 file="tests/guest/test_smoke.py" time="0.1"><failure message="assert 1 == 2">E assert 1 == 2
tests/guest/test_smoke.py:9: AssertionError</failure></testcase>
<testcase classname="tests.guest.test_calls" name="test_kapi" file="tests/guest/test_calls.py">
<skipped type="pytest.skip" message="kernel has no kapi tracepoints (build with X)">skip
</skipped></testcase>
</testsuite></testsuites>"""


# --- JUnit and results ----------------------------------------------------------------

def test_runner_parse_junit_names_and_messages(tmp_path: Path) -> None:
    p = tmp_path / "junit.xml"
    p.write_text(JUNIT)
    ok, bad, skip = runner.parse_junit(p)
    assert ok == Result(name="tests/guest/test_smoke.py::test_ok", outcome=Outcome.PASS,
                        time_s=0.1)
    assert bad.name == "tests/guest/test_smoke.py::TestX::test_bad[a]"
    assert bad.outcome is Outcome.FAIL and bad.reason == "assert 1 == 2"
    assert "AssertionError" in "\n".join(bad.diagnostics)
    assert skip.outcome is Outcome.SKIP
    assert skip.reason == "kernel has no kapi tracepoints (build with X)"


def test_runner_truncated_junit_is_lost_guest(tmp_path: Path) -> None:
    p = tmp_path / "junit.xml"
    p.write_text(JUNIT[:200])
    with pytest.raises(LostGuest, match="malformed JUnit"):
        runner.parse_junit(p)


def test_runner_progress_log_keeps_results_of_a_dead_guest(tmp_path: Path) -> None:
    (tmp_path / "progress.jsonl").write_text(
        '{"name": "t1", "outcome": "ok", "reason": "", "diagnostics": []}\n'
        '{"name": "t2", "outcome": "ok", "reason": "", "diagnostics": []}\n'
        '{"name": "t2", "outcome": "not ok", "reason": "teardown", "diagnostics": []}\n'
        '{"name": "t3", "outc')
    res = runner.collect_results(tmp_path)
    assert [(r.name, r.outcome) for r in res] == [("t1", Outcome.PASS), ("t2", Outcome.FAIL)]


def test_runner_write_junit_round_trips(tmp_path: Path) -> None:
    results = [Result("tests/guest/a.py::t1", Outcome.PASS),
               Result("tests/guest/a.py::t2", Outcome.FAIL, "boom", ("line1", "line2")),
               Result("kernel-console", Outcome.FAIL, "kernel panic: x")]
    runner.write_junit(results, tmp_path / "j.xml")
    back = runner.parse_junit(tmp_path / "j.xml")
    assert [(r.outcome, r.reason) for r in back] == [(r.outcome, r.reason) for r in results]


def test_runner_junit_keeps_the_guests_times(tmp_path: Path) -> None:
    p = tmp_path / "junit.xml"
    p.write_text(JUNIT)
    results = runner.parse_junit(p)
    assert [r.time_s for r in results] == [0.1, 0.1, None]  # the skipped case has no time
    console = Result("kernel-console", Outcome.FAIL, "kernel panic: x")  # host's: no time
    runner.write_junit([*results, console], tmp_path / "out.xml")
    import xml.etree.ElementTree as ET
    suite = ET.parse(tmp_path / "out.xml").getroot().find("testsuite")
    assert suite is not None and suite.get("time") == "0.200"
    assert [tc.get("time") for tc in suite.iter("testcase")] == ["0.100", "0.100", None, None]
    assert [r.time_s for r in runner.parse_junit(tmp_path / "out.xml")] == [0.1, 0.1, None,
                                                                            None]


def test_runner_junit_bad_time_is_unknown(tmp_path: Path) -> None:
    p = tmp_path / "junit.xml"
    p.write_text(JUNIT.replace('time="0.1"/>', 'time="soon"/>', 1))
    assert runner.parse_junit(p)[0].time_s is None


def test_runner_junit_drops_characters_xml_cannot_hold(tmp_path: Path) -> None:
    # a splat excerpt with the console's ANSI colour escapes and a NUL made the file
    # unparsable ("not well-formed (invalid token)")
    excerpt = ("\x1b[31m[   12.3] BUG: KFENCE: use-after-free read in f+0x1/0x2\x1b[0m",
               "[   12.3] \x00\x07tab\tkept\x0c", "bad surrogate \ud800 and \uffff")
    results = [Result("guest0: kernel-console", Outcome.FAIL,
                      "kernel KFENCE report: \x1b[1mBUG: KFENCE\x1b[0m", excerpt),
               Result("tests/guest/a.py::t\x1b", Outcome.SKIP, "no \x08reason")]
    runner.write_junit(results, tmp_path / "j.xml")
    back = runner.parse_junit(tmp_path / "j.xml")  # parses: LostGuest before the fix
    assert back[0].reason == "kernel KFENCE report: [1mBUG: KFENCE[0m"
    assert back[0].diagnostics == ("[31m[   12.3] BUG: KFENCE: use-after-free read in "
                                   "f+0x1/0x2[0m", "[   12.3] tab\tkept",
                                   "bad surrogate  and")
    assert back[1].outcome is Outcome.SKIP and back[1].reason == "no reason"
    assert (tmp_path / "j.xml").read_bytes().count(b"\x1b") == 0


def _run(**kw: Any) -> runner.GuestRun:
    base: dict[str, Any] = dict(status=0, results=(), splats=(), killed=None,
                                console=Path("/c.log"), out_dir=Path("/o"),
                                timings=runner.BootTimings(1.0, 2.0, 3.0, 4.0), returncode=0)
    base.update(kw)
    return runner.GuestRun(**base)


def test_runner_host_results_splat_fails_the_run() -> None:
    sp = Splat(SplatKind.PANIC, 5, ("[1.0] Kernel panic - not syncing: sysrq triggered crash",))
    res = runner.host_results(_run(status=None, splats=(sp,)))
    (r,) = res
    assert r.name == "kernel-console" and r.outcome is Outcome.FAIL
    assert "sysrq triggered crash" in r.reason
    assert exit_code(res) == KSFT_FAIL


def test_runner_host_results_hang_after_start_is_a_failure() -> None:
    kept = Result("t1", Outcome.PASS)
    res = runner.host_results(_run(status=None, results=(kept,), killed="no progress"))
    assert res[0] == kept  # results already written are kept
    assert res[1].name == "guest-watchdog" and res[1].outcome is Outcome.FAIL
    assert exit_code(res) == KSFT_FAIL


def test_runner_host_results_never_booted_is_lost_guest() -> None:
    with pytest.raises(LostGuest, match="never reached the initramfs") as ei:
        runner.host_results(_run(status=None, timings=runner.BootTimings(total_s=9.0),
                                 killed="timeout"))
    assert ei.value.exit_code == KSFT_SKIP


def test_runner_host_results_status_without_results_is_error() -> None:
    res = runner.host_results(_run(status=2))
    assert res[0].outcome is Outcome.ERROR and "exited 2" in res[0].reason
    assert exit_code(res) == KSFT_SKIP


def test_runner_guest_command_is_lean_and_writes_to_the_share() -> None:
    spec = runner.guest_command(python="/py/bin/python3", require_kapi=True, shard=(1, 3))
    assert spec.argv[:2] == ("/py/bin/python3", "-S")
    assert "--require-kapi" in spec.argv
    assert f"{initramfs.GUEST_OUT}/junit.xml" in spec.argv
    assert spec.argv[spec.argv.index("--shard") + 1] == "1/3"
    env = dict(spec.env)
    assert env["PYTHONPATH"].split(":")[0] == str(runner.PROJECT)
    assert env["PATH"].startswith("/py/bin:")


# --- boot() and run_guests() with QEMU faked at Popen -------------------------------------

class FakeQemu:
    """Stands in for the QEMU process: writes what a guest would into the output share."""

    def __init__(self, argv: list[str], console: bytes, files: dict[str, str],
                 hang: bool = False) -> None:
        self.argv = argv
        out = next(a.split("path=")[1].split(",")[0] for a in argv
                   if "mount_tag=kapiout" in a)
        for name, text in files.items():
            (Path(out) / name).write_text(text)
        self.returncode: int | None = None
        if hang:
            r, self._w = os.pipe()
            os.write(self._w, console)
            self.stdout: Any = os.fdopen(r, "rb")
        else:
            self._w = -1
            self.stdout = io.BytesIO(console)
            self.returncode = 0

    def poll(self) -> int | None:
        return self.returncode

    def kill(self) -> None:
        self.returncode = -9
        if self._w >= 0:
            os.close(self._w)
            self._w = -1

    def wait(self, timeout: float | None = None) -> int | None:
        return self.returncode


def _fake(monkeypatch: pytest.MonkeyPatch, console: bytes, files: dict[str, str],
          hang: bool = False) -> list[FakeQemu]:
    made: list[FakeQemu] = []

    real_popen = subprocess.Popen

    def popen(argv: list[str], **kw: Any) -> Any:
        if "qemu" not in str(argv[0]):  # not QEMU (ctypes runs ldconfig): the real thing
            return real_popen(argv, **kw)
        if qemu.PROBE_CMDLINE in argv:  # the KVM probe: it aborts, as on some machines
            p = FakeQemu(argv + ["mount_tag=kapiout,path=/tmp"], b"", {})
            r, w = os.pipe()
            os.write(w, b"error: failed to set MSR 0x10a to 0x69\n")
            os.close(w)
            p.stdout = os.fdopen(r, "rb")
            p.returncode = 134
            return p
        made.append(FakeQemu(argv, console, files, hang))
        return made[-1]

    monkeypatch.setattr(subprocess, "Popen", popen)
    monkeypatch.setattr(qemu, "find_qemu", lambda arch="x86_64": "/usr/bin/qemu-system-x86_64")
    # the probe runs (against the fake), its verdict is not kept in the user's cache
    monkeypatch.setattr(qemu, "kvm_verdict",
                        lambda q, k, a: qemu.KvmVerdict(qemu.probe_kvm(q, k, a)))
    qemu._CHOSEN.clear()
    return made


@pytest.fixture
def kernel_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "build"
    (d / "arch/x86/boot").mkdir(parents=True)
    (d / "arch/x86/boot/bzImage").write_bytes(bzimage())
    (d / ".config").write_text("".join(f"{o}=y\n" for o, _m, _w in kernel.GUEST_OPTIONS))
    bb = tmp_path / "busybox"
    bb.write_bytes(b"\x7fELF")
    monkeypatch.setattr(initramfs, "find_busybox", lambda: bb)
    monkeypatch.setattr(runner, "_guest_pyzip", lambda project: None)
    monkeypatch.setattr(os, "access", lambda p, m: True)
    monkeypatch.setattr(runner, "auto_guests", lambda cfg, accel: 1)  # one fake guest
    return d


def _main(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    rc = cli.main(args)
    out, err = capsys.readouterr()
    return rc, out, err


def test_run_kernel_all_pass_exits_0(kernel_dir: Path, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str],
                                     caplog: pytest.LogCaptureFixture) -> None:
    junit = JUNIT.replace('<failure message="assert 1 == 2">', "<x>").replace(
        "AssertionError</failure>", "</x>")
    made = _fake(monkeypatch, CLEAN, {"status": "0\n", "junit.xml": junit})
    rc, out, err = _main(["run", "--kernel", str(kernel_dir), "--junit", str(tmp_path / "j.xml"),
                          "--work-dir", str(tmp_path / "w")], capsys)
    assert rc == KSFT_PASS, out + err
    assert out.startswith("KTAP version 1\n")
    assert "ok 1 tests/guest/test_smoke.py::test_ok" in out
    assert "# SKIP kernel has no kapi tracepoints" in out
    assert (tmp_path / "j.xml").is_file()
    assert any("KVM unusable" in r.getMessage() and "using TCG" in r.getMessage()
               for r in caplog.records)
    argv = made[0].argv
    assert "tcg,thread=single" in argv


def test_run_kernel_guest_failure_exits_1(kernel_dir: Path, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    _fake(monkeypatch, CLEAN, {"status": "1\n", "junit.xml": JUNIT})
    rc, out, _ = _main(["run", "--kernel", str(kernel_dir), "--work-dir", str(tmp_path)], capsys)
    assert rc == KSFT_FAIL
    assert "not ok 2 tests/guest/test_smoke.py::TestX::test_bad[a] # assert 1 == 2" in out


def test_run_kernel_crash_console_exits_1_with_excerpt(kernel_dir: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]
                                                       ) -> None:
    _fake(monkeypatch, SYSRQ, {})
    rc, out, _ = _main(["run", "--kernel", str(kernel_dir), "--work-dir", str(tmp_path)], capsys)
    assert rc == KSFT_FAIL
    assert "not ok 1 kernel-console # kernel panic: Kernel panic - not syncing: sysrq" in out
    assert "sysrq_handle_crash" in out  # the excerpt, as KTAP diagnostics


def test_run_kernel_no_status_is_lost_guest_exit_4(kernel_dir: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    _fake(monkeypatch, b"SeaBIOS\n", {})
    junit = tmp_path / "j.xml"
    rc, out, err = _main(["run", "--kernel", str(kernel_dir), "--work-dir", str(tmp_path),
                          "--junit", str(junit), "--ktap", str(tmp_path / "k.txt")], capsys)
    assert rc == KSFT_SKIP
    assert "guest returned no status" in err and "never reached the initramfs" in err
    # every guest lost: still a KTAP document and a JUnit file saying why
    assert out.startswith("KTAP version 1\n# kernel: ")
    last = out.splitlines()[-1]
    assert last.startswith("1..0 # SKIP could not run: guest returned no status")
    assert (tmp_path / "k.txt").read_text() == out
    (case,) = runner.parse_junit(junit)
    assert case.outcome is Outcome.ERROR and "never reached the initramfs" in case.reason


def test_run_kernel_internal_error_is_one_line_and_exit_4(
        kernel_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    # the first run's failure: a truncated cache file read back while being written
    _fake(monkeypatch, CLEAN, {"status": "0\n"})

    def broken(image: Path, cache_dir: Path) -> Path:
        raise struct.error("unpack_from requires a buffer of at least 40 bytes")

    monkeypatch.setattr(kernel, "pvh_vmlinux", broken)
    junit = tmp_path / "j.xml"
    rc, out, err = _main(["run", "--kernel", str(kernel_dir), "--work-dir", str(tmp_path),
                          "--junit", str(junit)], capsys)
    assert rc == KSFT_SKIP
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("kapi-selftests: error:")]
    assert len(lines) == 1, err
    assert "could not run: internal error in prepare (kapi_selftests/host/runner.py:" in lines[0]
    assert lines[0].endswith("struct.error: unpack_from requires a buffer of at least 40 bytes")
    assert out.splitlines()[-1].startswith("1..0 # SKIP could not run: ")
    assert runner.parse_junit(junit)[0].outcome is Outcome.ERROR


def test_run_kernel_internal_error_on_one_guest_keeps_the_others(
        kernel_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    junit = JUNIT.replace('<failure message="assert 1 == 2">', "<x>").replace(
        "AssertionError</failure>", "</x>")
    _fake(monkeypatch, CLEAN, {"status": "0\n", "junit.xml": junit})
    real_boot = runner.boot

    def boot(cfg: qemu.GuestConfig, argv: list[str], **kw: Any) -> runner.GuestRun:
        if cfg.out_dir.name == "guest1":
            raise KeyError("console")
        return real_boot(cfg, argv, **kw)

    monkeypatch.setattr(runner, "boot", boot)
    rc, out, err = _main(["run", "--kernel", str(kernel_dir), "--work-dir", str(tmp_path),
                          "--guests", "2"], capsys)
    assert rc == KSFT_SKIP  # something could not run: never a pass
    assert "ok 1 tests/guest/test_smoke.py::test_ok" in out  # guest0's results are there
    assert "# ERROR guest1: could not run: internal error in _boot_guest (kapi_selftests" in out
    assert "KeyError: 'console'" in out and "Traceback" not in err


def test_cli_internal_error_is_one_line_exit_4_and_traceback_on_request(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        tmp_path: Path) -> None:
    def find_kernel(path: Any, modules: Any = None) -> Any:
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(kernel, "find_kernel", find_kernel)
    monkeypatch.delenv("KAPI_DEBUG", raising=False)
    rc, out, err = _main(["run", "--kernel", str(tmp_path)], capsys)
    assert rc == KSFT_SKIP and out == ""
    first, hint = err.strip().splitlines()
    # the step is the innermost function of the package the error went through
    assert first.startswith("kapi-selftests: internal error in run_kernel "
                            "(kapi_selftests/cmd/run.py:")
    assert first.endswith("ZeroDivisionError: division by zero")
    assert "KAPI_DEBUG=1" in hint
    monkeypatch.setenv("KAPI_DEBUG", "1")
    rc, _, err = _main(["run", "--kernel", str(tmp_path)], capsys)
    assert rc == KSFT_SKIP and "Traceback (most recent call last)" in err


def test_run_kernel_hung_guest_is_killed(kernel_dir: Path, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    console = f"{initramfs.INIT_MARKER}\n{initramfs.START_MARKER}\n".encode()
    made = _fake(monkeypatch, console, {}, hang=True)
    rc, out, _ = _main(["run", "--kernel", str(kernel_dir), "--work-dir", str(tmp_path),
                        "--progress-timeout-s", "1"], capsys)
    assert rc == KSFT_FAIL
    assert made[0].returncode == -9
    assert "not ok 1 guest-watchdog # TIMEOUT guest hung: guest made no progress" in out


def test_run_kernel_dry_run_prints_the_command(kernel_dir: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    made = _fake(monkeypatch, b"", {})
    rc, out, _ = _main(["run", "--kernel", str(kernel_dir), "--dry-run", "--accel", "tcg",
                        "--memory-mb", "512", "--append", "foo=1 'b c'",
                        "--work-dir", str(tmp_path)], capsys)
    assert rc == 0 and not made
    assert out.startswith("/usr/bin/qemu-system-x86_64 -M pc -accel tcg,thread=single")
    assert "-m 512" in out and "foo=1 'b c'" not in out and "foo=1 b c" in out
    assert (tmp_path / "initramfs.cpio").is_file()


def test_run_kernel_qemu_arg_is_passed_as_given(kernel_dir: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    _fake(monkeypatch, b"", {})
    rc, out, _ = _main(["run", "--kernel", str(kernel_dir), "--dry-run", "--accel", "tcg",
                        "--qemu-arg=-device", "--qemu-arg", "pvpanic",
                        "--work-dir", str(tmp_path)], capsys)
    assert rc == 0 and out.rstrip().endswith("-device pvpanic")


def test_run_kernel_vng_without_udev_says_how_to_start_it(
        kernel_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(runner.shutil, "which", lambda n: f"/usr/bin/{n}")
    monkeypatch.setattr(runner, "udev_running", lambda: False)
    rc, out, err = _main(["run", "--kernel", str(kernel_dir), "--runner", "vng", "--accel",
                          "tcg", "--work-dir", str(tmp_path)], capsys)
    assert rc == KSFT_SKIP
    assert "--runner vng needs udev running" in err and "systemd-udevd --daemon" in err
    assert out.splitlines()[-1].startswith("1..0 # SKIP could not run: --runner vng needs udev")


def test_udev_running_reads_proc(tmp_path: Path) -> None:
    (tmp_path / "1").mkdir()
    (tmp_path / "1/comm").write_text("init\n")
    assert not runner.udev_running(tmp_path)
    (tmp_path / "77").mkdir()
    (tmp_path / "77/comm").write_text("systemd-udevd\n")
    assert runner.udev_running(tmp_path)


def test_run_without_kernel_or_local_is_usage_error(monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("KAPI_KERNEL", raising=False)
    rc, _, err = _main(["run"], capsys)
    assert rc == 2 and "--kernel PATH or --local" in err


def test_run_kernel_from_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                             capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("KAPI_KERNEL", str(tmp_path / "none"))
    rc, _, err = _main(["run"], capsys)
    assert rc == 2 and "no such kernel" in err


@pytest.mark.parametrize("args", [["run", "--kernel", "/no/such/kernel"],
                                  ["run", "--local", "--kernel", "/"],
                                  ["run", "--local", "--cpus", "0"]])
def test_run_usage_errors_exit_2(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as ei:
        cli.main(args)
    assert ei.value.code == 2


def test_run_not_a_kernel_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "README"
    f.write_text("x" * 4096)
    rc, _, err = _main(["run", "--kernel", str(f)], capsys)
    assert rc == 2 and "not a kernel image" in err


def test_run_qemu_missing_exits_4(kernel_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(qemu.shutil, "which", lambda n: None)
    rc, _, err = _main(["run", "--kernel", str(kernel_dir), "--accel", "tcg"], capsys)
    assert rc == KSFT_SKIP and "QEMU is not installed" in err


# --- run --local ----------------------------------------------------------------------

@pytest.fixture
def as_root(monkeypatch: pytest.MonkeyPatch) -> None:
    # run --local refuses a user other than root before anything else (test_bad_inputs);
    # these tests are about what it does next, on suites that need no privilege
    monkeypatch.setattr("os.geteuid", lambda: 0)


def _suite(tmp_path: Path, body: str) -> Path:
    d = tmp_path / "guest"
    d.mkdir()
    # a module name of its own: the in-process pytest runs share sys.modules
    mod = "test_" + "".join(c if c.isalnum() else "_" for c in tmp_path.name)
    (d / f"{mod}.py").write_text("import pytest\n" + body)
    return d


@pytest.mark.parametrize(("body", "rc"), [
    ("def test_a():\n    pass\n", KSFT_PASS),
    ("def test_a():\n    assert 1 == 2\n", KSFT_FAIL),
    ("def test_a():\n    pytest.skip('kernel has no kapi tracepoints')\n", KSFT_SKIP),
])
def test_run_local_exit_codes(tmp_path: Path, body: str, rc: int,
                              capsys: pytest.CaptureFixture[str], as_root: None) -> None:
    tests = _suite(tmp_path, body)
    code, out, _ = _main(["run", "--local", "--tests", str(tests), "--junit",
                          str(tmp_path / "j.xml"), "--ktap", str(tmp_path / "k.txt"),
                          "--progress", str(tmp_path / "p.jsonl")], capsys)
    assert code == rc
    assert out.startswith("KTAP version 1\n")  # stdout carries only the report
    assert (tmp_path / "k.txt").read_text() == out
    assert (tmp_path / "j.xml").is_file() and (tmp_path / "p.jsonl").is_file()


def test_run_local_failure_message_in_ktap(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], as_root: None) -> None:
    tests = _suite(tmp_path, "def test_a():\n    assert 1 == 2, 'values differ'\n")
    _code, out, _ = _main(["run", "--local", "--tests", str(tests)], capsys)
    assert "not ok 1 " in out and "values differ" in out


def test_run_local_runs_the_pbt_directory_in_a_second_session(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], as_root: None) -> None:
    # the first session records whether pbt/'s module was imported; pbt/ fails once
    pbt_mod = "test_pbt_" + "".join(c if c.isalnum() else "_" for c in tmp_path.name)
    tests = _suite(tmp_path, "import sys\n"
                   "def test_first():\n"
                   f"    open({str(tmp_path / 'seen')!r}, 'w').write("
                   f"'pbt' if {pbt_mod!r} in sys.modules else 'alone')\n")
    pbt = tests / "pbt"
    pbt.mkdir()
    (pbt / f"{pbt_mod}.py").write_text(
        "def test_second():\n    pass\n\ndef test_third():\n    assert 0, 'pbt fails'\n")
    code, out, _ = _main(["run", "--local", "--tests", str(tests), "--junit",
                          str(tmp_path / "j.xml")], capsys)
    assert code == KSFT_FAIL
    assert (tmp_path / "seen").read_text() == "alone"  # pbt/ was not collected with it
    assert "1..3" in out and "ok 1 " in out and "ok 2 " in out and "not ok 3 " in out
    from kapi_selftests.host.runner import parse_junit
    junit = parse_junit(tmp_path / "j.xml")  # both sessions in one file, parts gone
    assert [r.name.rsplit("::", 1)[1] for r in junit] == ["test_first", "test_second",
                                                          "test_third"]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("j.")) == ["j.xml"]


def test_run_local_missing_tests_dir_says_so(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], as_root: None) -> None:
    rc, _, err = _main(["run", "--local", "--tests", str(tmp_path / "nope")], capsys)
    assert rc == KSFT_SKIP and "in-guest tests not found" in err


def test_run_local_shard_splits_the_suite(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], as_root: None) -> None:
    tests = _suite(tmp_path, "".join(f"def test_{i}():\n    pass\n" for i in range(5)))
    outs: list[str] = []
    for i in range(2):
        _code, out, _ = _main(["run", "--local", "--tests", str(tests), "--shard", f"{i}/2"],
                              capsys)
        outs.append(out)
    assert "1..3" in outs[0] and "1..2" in outs[1]



def test_run_kernel_guests_each_get_a_scratch_dir_and_a_shard(kernel_dir: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]
                                                              ) -> None:
    made = _fake(monkeypatch, CLEAN, {"status": "0\n", "junit.xml": JUNIT.replace(
        '<failure message="assert 1 == 2">', "<x>").replace("AssertionError</failure>", "</x>")})
    rc, out, _ = _main(["run", "--kernel", str(kernel_dir), "--guests", "2",
                        "--work-dir", str(tmp_path / "w"), "--junit",
                        str(tmp_path / "w" / "j.xml")], capsys)
    assert rc == KSFT_PASS
    assert len(made) == 2
    outs = {next(a for a in m.argv if "mount_tag=kapiout" in a) for m in made}
    assert len(outs) == 2  # one scratch directory each
    inits = [(tmp_path / "w" / f"guest{i}" / "initramfs.cpio").read_bytes() for i in range(2)]
    assert b"--shard 0/2" in inits[0] and b"--shard 1/2" in inits[1]
    # one subtest per guest, each with its shard's 3 results; totals of the tests
    assert check_ktap(out) == []
    assert "  KTAP version 1\n  # Subtest: guest0\n  1..3\n" in out
    assert "\nok 1 guest0\n" in out and "\nok 2 guest1\n" in out
    assert "# Totals: pass:4 fail:0 xfail:0 xpass:0 skip:2 error:0" in out
    junit = runner.parse_junit(tmp_path / "w" / "j.xml")  # the leaves, not the guests
    assert len(junit) == 6 and not any(r.name.startswith("guest") for r in junit)


@pytest.mark.parametrize(("accel", "cpus", "cores", "free_mb", "n"), [
    (qemu.Accel.TCG, 1, 2, 24_000, 2),  # this project's machines: one guest per core
    (qemu.Accel.TCG, 4, 2, 24_000, 2),  # TCG thread=single: one core whatever the vCPUs
    (qemu.Accel.KVM, 2, 8, 24_000, 4),  # KVM: each guest keeps its vCPUs' cores busy
    (qemu.Accel.KVM, 2, 2, 24_000, 1),
    (qemu.Accel.TCG, 1, 64, 1_000_000, runner.MAX_AUTO_GUESTS),
    (qemu.Accel.TCG, 1, 8, 5_000, 2),  # as many as the free memory holds
    (qemu.Accel.TCG, 1, 8, 100, 1),  # at least one
])
def test_auto_guests_one_per_busy_core_within_memory(accel: qemu.Accel, cpus: int, cores: int,
                                                     free_mb: int, n: int) -> None:
    cfg = qemu.GuestConfig(kernel=Path("bzImage"), cpus=cpus)
    assert runner.auto_guests(cfg, accel, cores=cores, free_mb=free_mb) == n


def test_run_kernel_guests_auto_and_console_pick_the_count(
        kernel_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    asked: list[int | None] = []

    def run_guests(req: runner.SuiteRequest, **kw: Any) -> Any:
        asked.append(req.guests)
        raise LostGuest("stop here")

    monkeypatch.setattr(runner, "run_guests", run_guests)
    for extra in ([], ["--guests", "auto"], ["--guests", "3"], ["--console"],
                  ["--console", "--guests", "2"]):
        _main(["run", "--kernel", str(kernel_dir), "--work-dir", str(tmp_path), *extra], capsys)
    assert asked == [None, None, 3, 1, 2]
    for bad in ("0", "many"):
        with pytest.raises(SystemExit) as ei:
            cli.main(["run", "--kernel", str(kernel_dir), "--guests", bad])
        assert ei.value.code == 2 and "--guests" in capsys.readouterr().err


def test_run_kernel_kvm_dying_before_the_kernel_retries_with_tcg(
        kernel_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    made = _fake(monkeypatch, CLEAN, {"status": "0\n", "junit.xml": JUNIT.replace(
        '<failure message="assert 1 == 2">', "<x>").replace("AssertionError</failure>", "</x>")})
    fake_popen = subprocess.Popen
    monkeypatch.setattr(qemu, "kvm_verdict", lambda q, k, a: qemu.KvmVerdict(None))  # "KVM works"

    def popen(argv: list[str], **kw: Any) -> Any:
        p = fake_popen(argv, **kw)
        if "kvm" in argv:  # aborts at the vCPU reset: no console, SIGABRT
            p.stdout = io.BytesIO(b"")
            p.returncode = -6
        return p

    monkeypatch.setattr(subprocess, "Popen", popen)
    rc, out, _ = _main(["run", "--kernel", str(kernel_dir), "--work-dir", str(tmp_path)], capsys)
    assert rc == KSFT_PASS, out
    assert [("kvm" in m.argv) for m in made] == [True, False]
