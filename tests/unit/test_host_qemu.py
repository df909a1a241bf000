"""QEMU and vng argv builders, GuestConfig checks, the KVM probe (subprocess mocked)."""

from __future__ import annotations

import io
import logging
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from kapi_selftests.errors import MissingFeature, UsageError
from kapi_selftests.host import qemu
from kapi_selftests.host.qemu import Accel, GuestConfig


def _cfg(**kw: Any) -> GuestConfig:
    return GuestConfig(kernel=Path("/k/bzImage"), initrd=Path("/o/initramfs.cpio"),
                       out_dir=Path("/o"), **kw)


def _opt(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == flag]


def test_qemu_argv_tcg_is_single_threaded() -> None:
    argv = qemu.qemu_argv(_cfg(), "/usr/bin/qemu-system-x86_64", Accel.TCG)
    assert argv[0] == "/usr/bin/qemu-system-x86_64"
    assert _opt(argv, "-accel") == ["tcg,thread=single"]
    assert "-enable-kvm" not in argv
    assert "-no-reboot" in argv


def test_qemu_argv_kvm_uses_host_cpu() -> None:
    argv = qemu.qemu_argv(_cfg(), "qemu", Accel.KVM)
    assert _opt(argv, "-accel") == ["kvm"]
    assert _opt(argv, "-cpu") == ["host"]


def test_qemu_argv_shares_root_read_only_and_output_writable() -> None:
    root, out = _opt(qemu.qemu_argv(_cfg(), "q", Accel.TCG), "-virtfs")
    assert root.startswith("local,path=/,mount_tag=hostroot,")
    assert "readonly=on" in root and "multidevs=remap" in root
    assert "path=/o," in out and "readonly" not in out and "multidevs=remap" in out


def test_qemu_argv_resources_kernel_and_cmdline() -> None:
    argv = qemu.qemu_argv(_cfg(memory_mb=1024, cpus=2, append=("foo=1", "bar")), "q",
                          Accel.TCG)
    assert _opt(argv, "-m") == ["1024"] and _opt(argv, "-smp") == ["2"]
    assert _opt(argv, "-kernel") == ["/k/bzImage"]
    assert _opt(argv, "-initrd") == ["/o/initramfs.cpio"]
    (cmdline,) = _opt(argv, "-append")
    assert cmdline.startswith("console=ttyS0 panic=-1 oops=panic")
    assert cmdline.endswith("foo=1 bar")


def test_qemu_argv_needs_resolved_accel() -> None:
    with pytest.raises(ValueError):
        qemu.qemu_argv(_cfg(), "q", Accel.AUTO)


@pytest.mark.parametrize("kw", [{"memory_mb": 64}, {"cpus": 0}, {"timeout_s": 0},
                                {"arch": "riscv64"}])
def test_qemu_config_rejects_bad_values(kw: dict[str, Any]) -> None:
    with pytest.raises(UsageError):
        _cfg(**kw)


def test_qemu_config_from_env_then_flags_win() -> None:
    cfg = qemu.config_from_env(_cfg(), {"KAPI_MEMORY_MB": "512", "KAPI_CPUS": "2"})
    assert (cfg.memory_mb, cfg.cpus, cfg.timeout_s) == (512, 2, 900)
    with pytest.raises(UsageError, match="KAPI_CPUS"):
        qemu.config_from_env(_cfg(), {"KAPI_CPUS": "two"})


def test_qemu_vng_argv() -> None:
    argv = qemu.vng_argv(_cfg(memory_mb=1024, append=("x=1",)), "echo hi", vng="/bin/vng",
                         accel=Accel.TCG, project=Path("/proj"))
    assert argv[:3] == ["/bin/vng", "--run", "/k/bzImage"]
    assert "--disable-kvm" in argv
    assert _opt(argv, "--memory") == ["1024M"]
    assert _opt(argv, "--rwdir") == ["/o", "/proj"]
    assert "x=1" in _opt(argv, "--append") and "console=ttyS0" not in _opt(argv, "--append")
    assert argv[-2:] == ["--exec", "echo hi"]


def test_qemu_vng_argv_kvm_keeps_kvm() -> None:
    assert "--disable-kvm" not in qemu.vng_argv(_cfg(), "true", accel=Accel.KVM)


class _FakeProc:
    """A QEMU that either greets on QMP (KVM works) or aborts (stderr, exit 134)."""

    def __init__(self, greets: bool, err: str = "") -> None:
        r, w = os.pipe()
        if greets:
            os.write(w, b'{"QMP": {"version": {}}}\r\n{"return": {}}\r\n'
                        b'{"return": "RAX=0000000000000000 RBX=0 RIP=000000000000fff0"}\r\n')
        else:
            os.close(w)
            w = -1
        self._w = w
        self.stdout = os.fdopen(r, "rb")
        self.stderr = io.BytesIO(err.encode())
        self.stdin = io.BytesIO()
        self.returncode: int | None = None if greets else 134
        self.killed = False

    def poll(self) -> int | None:
        return self.returncode

    def kill(self) -> None:
        self.killed = True
        self.returncode = -9
        if self._w >= 0:
            os.close(self._w)
            self._w = -1

    def wait(self) -> int | None:
        return self.returncode


@pytest.fixture
def kvm_dev(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(qemu.os, "access", lambda p, m: True)
    qemu.probe_accel.cache_clear()


def test_qemu_probe_kvm_that_aborts_is_unusable(monkeypatch: pytest.MonkeyPatch,
                                                kvm_dev: None) -> None:
    monkeypatch.setattr(subprocess, "Popen", lambda *a, **k: _FakeProc(
        False, "qemu-system-x86_64: error: failed to set MSR 0x10a to 0x69\n"))
    reason = qemu.probe_accel("qemu-x")
    assert reason is not None and "failed to set MSR" in reason


def test_qemu_probe_kvm_that_dumps_registers_is_usable(monkeypatch: pytest.MonkeyPatch,
                                             kvm_dev: None) -> None:
    procs: list[_FakeProc] = []
    monkeypatch.setattr(subprocess, "Popen",
                        lambda *a, **k: procs.append(_FakeProc(True)) or procs[-1])
    assert qemu.probe_accel("qemu-y") is None
    assert procs[0].killed
    assert b"info registers" in procs[0].stdin.getvalue()


def test_qemu_probe_kvm_that_greets_then_aborts_is_unusable(
        monkeypatch: pytest.MonkeyPatch, kvm_dev: None) -> None:
    # what these machines do: the QMP greeting, then the MSR abort at the vCPU reset
    class GreetThenAbort(_FakeProc):
        def __init__(self) -> None:
            super().__init__(False, "error: failed to set MSR 0x10a to 0x69\n")
            r, w = os.pipe()
            os.write(w, b'{"QMP": {"version": {}}}\r\n')
            os.close(w)
            self.stdout = os.fdopen(r, "rb")

    monkeypatch.setattr(subprocess, "Popen", lambda *a, **k: GreetThenAbort())
    reason = qemu.probe_accel("qemu-w")
    assert reason is not None and "failed to set MSR" in reason


def test_qemu_probe_kvm_slow_to_start_is_not_taken_for_working(
        monkeypatch: pytest.MonkeyPatch, kvm_dev: None) -> None:
    # alive but silent (a loaded host): no greeting within the timeout -> not usable
    class Silent(_FakeProc):
        def __init__(self) -> None:
            super().__init__(True)
            self.stdout = os.fdopen(os.pipe()[0], "rb")

    monkeypatch.setattr(subprocess, "Popen", lambda *a, **k: Silent())
    reason = qemu.probe_accel("qemu-z", "x86_64", 0.2)
    assert reason is not None and "did not come up" in reason


def test_qemu_choose_accel_falls_back_with_one_warning(monkeypatch: pytest.MonkeyPatch,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(qemu, "probe_accel", lambda q, a: "no /dev/kvm")
    with caplog.at_level(logging.WARNING):
        assert qemu.choose_accel(_cfg(), "q") is Accel.TCG
    assert [r.getMessage() for r in caplog.records] == ["KVM unusable (no /dev/kvm); using TCG"]
    assert qemu.choose_accel(_cfg(accel=Accel.KVM), "q") is Accel.KVM


def test_qemu_missing_binary_is_missing_feature(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(qemu.shutil, "which", lambda n: None)
    with pytest.raises(MissingFeature, match="QEMU is not installed"):
        qemu.find_qemu()


def test_qemu_argv_shares_the_project_read_only_when_given() -> None:
    shares = _opt(qemu.qemu_argv(_cfg(project=Path("/tmp/clone")), "q", Accel.TCG), "-virtfs")
    assert len(shares) == 3
    assert shares[2].startswith("local,path=/tmp/clone,mount_tag=kapiproj,")
    assert "readonly=on" in shares[2]
