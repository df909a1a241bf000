"""The KVM probe's watch on a real QEMU: a guest that prints nothing is abandoned within
the deadline; one that prints the marker is seen at once.

The guests are tiny multiboot payloads written here (a few bytes of 32-bit code: write
a line to the serial port, or not, then halt for ever), booted under TCG, so the test
runs on any host with QEMU. The probe itself boots with KVM; everything else about it
(argv, marker, deadline, kill) is what runs here.
"""

from __future__ import annotations

import re
import shutil
import struct
import time
from pathlib import Path

import pytest

from kapi_selftests.host import qemu

pytestmark = [
    pytest.mark.vm,
    pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None,
                       reason="qemu-system-x86_64 not installed (apt-get install "
                              "qemu-system-x86)"),
]

_LOAD = 0x100000
_MAGIC, _FLAGS = 0x1BADB002, 0x00010000  # flags: the load addresses below are valid


def multiboot_payload(message: bytes) -> bytes:
    """A multiboot image that writes ``message`` to COM1, then halts for ever."""
    header = struct.pack("<8I", _MAGIC, _FLAGS, (-(_MAGIC + _FLAGS)) & 0xFFFFFFFF,
                         _LOAD, _LOAD, 0, 0, _LOAD + 32)
    code = b""
    for byte in message:
        code += b"\x66\xba\xf8\x03" + bytes([0xB0, byte]) + b"\xee"  # mov dx,0x3f8; mov al,b; out
    code += b"\xfa\xf4\xeb\xfd"  # cli; hlt; jmp back to hlt
    return header + code


def _payload(tmp_path: Path, message: bytes) -> Path:
    p = tmp_path / "payload.mb"
    p.write_bytes(multiboot_payload(message))
    return p


def test_probe_gives_up_on_a_silent_guest_within_the_deadline(tmp_path: Path) -> None:
    qemu_bin = qemu.find_qemu()
    argv = qemu.probe_argv(qemu_bin, _payload(tmp_path, b""), qemu.Accel.TCG)
    t0 = time.monotonic()
    w = qemu.watch_console(argv, qemu.KERNEL_FIRST_LINE, 3.0)
    took = time.monotonic() - t0
    assert not w.seen
    assert w.returncode is None  # still running at the deadline: killed
    assert 3.0 <= took < 6.0, took


def test_probe_sees_a_guest_that_prints_the_marker(tmp_path: Path) -> None:
    qemu_bin = qemu.find_qemu()
    argv = qemu.probe_argv(qemu_bin, _payload(tmp_path, b"Linux version 0 (probe)\r\n"),
                           qemu.Accel.TCG)
    w = qemu.watch_console(argv, qemu.KERNEL_FIRST_LINE, 20.0)
    assert w.seen, w.tail
    assert w.elapsed_s < 20.0


def test_probe_reports_a_qemu_that_exits(tmp_path: Path) -> None:
    # no such file: QEMU exits at once with its own error, which the watch keeps
    argv = qemu.probe_argv(qemu.find_qemu(), tmp_path / "missing", qemu.Accel.TCG)
    w = qemu.watch_console(argv, re.compile(rb"never"), 20.0)
    assert not w.seen and w.returncode not in (None, 0)
    assert "missing" in w.tail and w.elapsed_s < 20.0
