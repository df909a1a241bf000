"""What a new user's mistakes get from ``kapi-selftests run``: one clear line on stderr
(and at most a hint), the kselftest exit code, and never a traceback. Kernels are
crafted files (tests/unit/host_elf.py); QEMU is never started.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path

import pytest
from host_elf import bzimage, write_modules

from kapi_selftests import cli
from kapi_selftests.errors import KSFT_SKIP, KSFT_USAGE
from kapi_selftests.host import initramfs, kernel, qemu

GOOD_CONFIG = "".join(f"{opt}=y\n" for opt, _m, _w in kernel.GUEST_OPTIONS)


def _build_dir(tmp: Path, config: str = GOOD_CONFIG, image: bytes | None = None) -> Path:
    (tmp / "build/arch/x86/boot").mkdir(parents=True)
    (tmp / "build/arch/x86/boot/bzImage").write_bytes(image if image is not None else bzimage())
    (tmp / "build/.config").write_text(config)
    return tmp / "build"


def _missing(tmp: Path) -> Path:
    return tmp / "no-such-kernel"


def _not_x86_64(tmp: Path) -> Path:
    (tmp / "bzImage").write_bytes(bzimage(x86_64=False))
    return tmp / "bzImage"


def _not_a_kernel(tmp: Path) -> Path:
    (tmp / "notes.txt").write_text("hello\n" * 1000)
    return tmp / "notes.txt"


def _truncated(tmp: Path) -> Path:
    img = bytearray(bzimage())
    struct.pack_into("<I", img, 0x1F4, 0x80000)  # the header promises 8 MiB: 32 KiB are here
    (tmp / "bzImage").write_bytes(bytes(img))
    return tmp / "bzImage"


def _no_9p(tmp: Path) -> Path:
    return _build_dir(tmp, GOOD_CONFIG.replace("CONFIG_NET_9P=y\n", "")
                      .replace("CONFIG_VIRTIO_PCI=y\n", ""))


def _empty_dir(tmp: Path) -> Path:
    (tmp / "empty").mkdir()
    return tmp / "empty"


def _modules_missing(tmp: Path) -> Path:
    rel = "6.1.0-99-amd64"
    (tmp / "pkg/boot").mkdir(parents=True)
    (tmp / f"pkg/boot/vmlinuz-{rel}").write_bytes(bzimage(rel))
    (tmp / f"pkg/boot/config-{rel}").write_text(GOOD_CONFIG.replace("CONFIG_9P_FS=y",
                                                                    "CONFIG_9P_FS=m"))
    write_modules(tmp / f"pkg/lib/modules/{rel}", {"net/9p/9pnet.ko": ""})  # 9p.ko missing
    return tmp / "pkg"


CASES: dict[str, tuple[Callable[[Path], Path], int, str]] = {
    "missing path": (_missing, KSFT_USAGE, "no such file or directory"),
    "not a kernel": (_not_a_kernel, KSFT_USAGE, "not a kernel image"),
    "not x86-64": (_not_x86_64, KSFT_USAGE, "not an x86-64 kernel"),
    "truncated bzImage": (_truncated, KSFT_USAGE, "truncated bzImage"),
    "config without 9p/virtio": (_no_9p, KSFT_SKIP, "CONFIG_VIRTIO_PCI"),
    "directory without an image": (_empty_dir, KSFT_USAGE, "no kernel found"),
    "modules missing": (_modules_missing, KSFT_SKIP, "9p"),
}


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        rc = cli.main(argv)
    except SystemExit as e:  # argparse's own usage errors
        rc = int(e.code or 0)
    out, err = capsys.readouterr()
    return rc, out, err


def _one_error_line(err: str, needle: str) -> None:
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith(
        ("hint:", "usage:", " "))]
    errors = [ln for ln in lines if "error" in ln]
    assert len(errors) == 1, err
    assert needle in errors[0], err


@pytest.mark.parametrize("case", list(CASES))
def test_bad_kernel_gets_one_line_and_its_exit_code(case: str, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    make, code, needle = CASES[case]
    bb = tmp_path / "busybox"
    bb.write_bytes(b"\x7fELF")
    monkeypatch.setattr(initramfs, "find_busybox", lambda: bb)
    monkeypatch.setattr(qemu, "find_qemu", lambda arch="x86_64": "/usr/bin/qemu-system-x86_64")
    monkeypatch.setattr(qemu, "watch_console", _no_qemu)  # never reached: fail if it is
    rc, _out, err = _run(["run", "--kernel", str(make(tmp_path)), "--accel", "tcg",
                          "--work-dir", str(tmp_path / "w")], capsys)
    assert rc == code, err
    _one_error_line(err, needle)


def _no_qemu(*a: object) -> None:
    raise AssertionError("a bad kernel must be refused before QEMU starts")


def test_qemu_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                      capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(qemu.shutil, "which", lambda n: None)
    rc, out, err = _run(["run", "--kernel", str(_build_dir(tmp_path)), "--accel", "tcg"],
                        capsys)
    assert rc == KSFT_SKIP
    _one_error_line(err, "qemu-system-x86_64 not found: QEMU is not installed")
    assert "hint: apt-get install qemu-system-x86" in err
    assert out.splitlines()[-1].startswith("1..0 # SKIP could not run: ")


def test_not_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                  capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    rc, _out, err = _run(["run", "--local"], capsys)
    assert rc == KSFT_SKIP
    _one_error_line(err, "run --local needs root")
    rc, _out, err = _run(["fuzz", "--local", "--calls", "10", "--out", str(tmp_path)], capsys)
    assert rc == KSFT_SKIP
    _one_error_line(err, "root")
