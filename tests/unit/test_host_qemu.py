"""QEMU and vng argv builders, GuestConfig checks, the KVM decision (the probe's QEMU
mocked; tests/vm/test_accel_probe.py runs a real one)."""

from __future__ import annotations

import logging
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


def test_qemu_extra_args_reach_both_runners() -> None:
    cfg = _cfg(extra_qemu=("-device", "isa-debug-exit,iobase=0xf4"))
    argv = qemu.qemu_argv(cfg, "q", Accel.TCG)
    assert argv[-2:] == ["-device", "isa-debug-exit,iobase=0xf4"]
    vng = qemu.vng_argv(cfg, "true")
    assert [a for a in vng if a.startswith("--qemu-opts")] == [
        "--qemu-opts=-device", "--qemu-opts=isa-debug-exit,iobase=0xf4"]
    assert vng[-2:] == ["--exec", "true"]


def test_qemu_vng_argv_kvm_keeps_kvm() -> None:
    assert "--disable-kvm" not in qemu.vng_argv(_cfg(), "true", accel=Accel.KVM)


@pytest.fixture
def kvm_dev(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(qemu.os, "access", lambda p, m: True)
    qemu._CHOSEN.clear()


def _watching(monkeypatch: pytest.MonkeyPatch, w: qemu.ConsoleWatch) -> list[list[str]]:
    seen: list[list[str]] = []

    def watch(argv: list[str], marker: Any, deadline_s: float) -> qemu.ConsoleWatch:
        seen.append(argv)
        assert marker is qemu.KERNEL_FIRST_LINE and deadline_s <= 15
        return w

    monkeypatch.setattr(qemu, "watch_console", watch)
    return seen


def test_qemu_probe_kvm_booting_the_kernel_is_usable(monkeypatch: pytest.MonkeyPatch,
                                                     kvm_dev: None) -> None:
    argvs = _watching(monkeypatch, qemu.ConsoleWatch(True, 0.8, None, "Linux version 7.2"))
    assert qemu.probe_kvm("q", Path("/k/bzImage")) is None
    argv = argvs[0]
    assert _opt(argv, "-accel") == ["kvm"] and _opt(argv, "-kernel") == ["/k/bzImage"]
    assert "earlyprintk=serial" in _opt(argv, "-append")[0]


def test_qemu_probe_kvm_that_aborts_is_unusable(monkeypatch: pytest.MonkeyPatch,
                                                kvm_dev: None) -> None:
    _watching(monkeypatch, qemu.ConsoleWatch(
        False, 0.1, -6, "qemu-system-x86_64: error: failed to set MSR 0x10a to 0x69"))
    reason = qemu.probe_kvm("q", Path("/k"))
    assert reason is not None and "exited -6" in reason and "failed to set MSR" in reason


def test_qemu_probe_kvm_that_hangs_after_the_bios_is_unusable(
        monkeypatch: pytest.MonkeyPatch, kvm_dev: None) -> None:
    # what one machine does: SeaBIOS and the setup code print, then nothing
    _watching(monkeypatch, qemu.ConsoleWatch(False, 15.0, None,
                                             "Booting from ROM... | Probing EDD"))
    reason = qemu.probe_kvm("q", Path("/k"))
    assert reason is not None and "within 15 s" in reason and "Probing EDD" in reason


def test_qemu_probe_kvm_without_dev_kvm_starts_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(qemu.os, "access", lambda p, m: False)
    argvs = _watching(monkeypatch, qemu.ConsoleWatch(True, 0.1, None, ""))
    assert qemu.probe_kvm("q", Path("/k")) == "/dev/kvm is missing or not accessible"
    assert argvs == []


def test_qemu_kvm_verdict_is_kept_per_host_boot(monkeypatch: pytest.MonkeyPatch,
                                                tmp_path: Path) -> None:
    calls: list[str] = []
    monkeypatch.setattr(qemu, "probe_kvm", lambda q, k, a: calls.append(q) or "hangs")
    bid = tmp_path / "boot_id"
    bid.write_text("b1\n")
    first = qemu.kvm_verdict("q", Path("/k"), cache_dir=tmp_path, boot_id=bid)
    again = qemu.kvm_verdict("q", Path("/k2"), cache_dir=tmp_path, boot_id=bid)
    assert (first.reason, first.cached) == ("hangs", False)
    assert (again.reason, again.cached) == ("hangs", True)
    assert calls == ["q"]  # the second run paid nothing
    bid.write_text("b2\n")  # the host rebooted: probe again
    assert not qemu.kvm_verdict("q", Path("/k"), cache_dir=tmp_path, boot_id=bid).cached
    assert calls == ["q", "q"]
    # a working KVM is kept too (reason None)
    monkeypatch.setattr(qemu, "probe_kvm", lambda q, k, a: None)
    assert qemu.kvm_verdict("q2", Path("/k"), cache_dir=tmp_path, boot_id=bid).reason is None
    assert qemu.kvm_verdict("q2", Path("/k"), cache_dir=tmp_path, boot_id=bid).cached


def test_qemu_kvm_verdict_without_boot_id_is_not_cached(monkeypatch: pytest.MonkeyPatch,
                                                        tmp_path: Path) -> None:
    monkeypatch.setattr(qemu, "probe_kvm", lambda q, k, a: "x")
    for _ in range(2):
        v = qemu.kvm_verdict("q", Path("/k"), cache_dir=tmp_path, boot_id=tmp_path / "none")
        assert not v.cached
    assert list(tmp_path.iterdir()) == []


def test_qemu_choose_accel_falls_back_with_one_warning(monkeypatch: pytest.MonkeyPatch,
                                                       caplog: pytest.LogCaptureFixture,
                                                       kvm_dev: None) -> None:
    asked: list[Path] = []
    monkeypatch.setattr(qemu, "kvm_verdict", lambda q, k, a: asked.append(k) or
                        qemu.KvmVerdict("no kernel output with KVM within 15 s", 15.0))
    with caplog.at_level(logging.WARNING):
        assert qemu.choose_accel(_cfg(), "q") is Accel.TCG
        assert qemu.choose_accel(_cfg(), "q") is Accel.TCG  # decided once per process
    assert [r.getMessage() for r in caplog.records] == [
        "KVM unusable (no kernel output with KVM within 15 s; probed in 15.0 s); using TCG"]
    assert asked == [Path("/k/bzImage")]  # the probe boots the kernel under test
    assert qemu.choose_accel(_cfg(accel=Accel.KVM), "q") is Accel.KVM
    assert qemu.choose_accel(_cfg(accel=Accel.TCG), "q") is Accel.TCG


def test_qemu_choose_accel_takes_a_working_kvm(monkeypatch: pytest.MonkeyPatch,
                                               kvm_dev: None) -> None:
    monkeypatch.setattr(qemu, "kvm_verdict", lambda q, k, a: qemu.KvmVerdict(None, 0.9))
    assert qemu.choose_accel(_cfg(), "q") is Accel.KVM


def test_qemu_missing_binary_is_missing_feature(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(qemu.shutil, "which", lambda n: None)
    with pytest.raises(MissingFeature, match="QEMU is not installed"):
        qemu.find_qemu()


def test_qemu_argv_shares_the_project_read_only_when_given() -> None:
    shares = _opt(qemu.qemu_argv(_cfg(project=Path("/tmp/clone")), "q", Accel.TCG), "-virtfs")
    assert len(shares) == 3
    assert shares[2].startswith("local,path=/tmp/clone,mount_tag=kapiproj,")
    assert "readonly=on" in shares[2]
