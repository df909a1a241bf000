"""The initramfs: newc cpio layout, /init script text, static busybox check."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from host_elf import COMPRESSORS, elf64, module

from kapi_selftests.errors import MissingFeature
from kapi_selftests.host import initramfs
from kapi_selftests.host.initramfs import CpioWriter, GuestInit, render_init, write_initramfs


def _parse_newc(data: bytes) -> dict[str, tuple[int, bytes]]:
    out: dict[str, tuple[int, bytes]] = {}
    off = 0
    while True:
        assert data[off:off + 6] == b"070701", f"bad magic at {off}"
        fields = [int(data[off + 6 + 8 * i: off + 14 + 8 * i], 16) for i in range(13)]
        mode, filesize, namesize = fields[1], fields[6], fields[11]
        name = data[off + 110: off + 110 + namesize - 1].decode()
        off += 110 + namesize
        off += -off % 4
        body = data[off: off + filesize]
        off += filesize
        off += -off % 4
        if name == "TRAILER!!!":
            return out
        out[name] = (mode, body)


def test_initramfs_cpio_round_trips() -> None:
    w = CpioWriter()
    w.dir("bin")
    w.file("bin/x", b"abc", 0o755)
    w.file("odd", b"12345")
    files = _parse_newc(w.getvalue())
    assert files["bin/x"] == (0o100755, b"abc")
    assert files["odd"][1] == b"12345"
    assert files["bin"][0] == 0o040755


def test_initramfs_holds_init_busybox_and_ordered_modules(tmp_path: Path) -> None:
    bb = tmp_path / "busybox"
    bb.write_bytes(elf64(pvh=False))
    mods = []
    for name in ("virtio", "9pnet", "9p"):
        p = tmp_path / f"{name}.ko"
        p.write_bytes(module(name))
        mods.append(p)
    out = write_initramfs(tmp_path / "i.cpio", GuestInit(argv=("python3", "-c", "pass")),
                          mods, busybox=bb)
    files = _parse_newc(out.read_bytes())
    assert files["init"][0] & 0o777 == 0o755
    assert files["bin/busybox"][1] == bb.read_bytes()
    assert sorted(n for n in files if n.startswith("modules/")) == [
        "modules/000-virtio.ko", "modules/001-9pnet.ko", "modules/002-9p.ko"]


@pytest.mark.parametrize("suffix", sorted(COMPRESSORS))
def test_initramfs_packs_compressed_modules_as_plain_ko(tmp_path: Path, suffix: str) -> None:
    # busybox insmod loads only a plain ELF, and /init loads /modules/*.ko.
    bb = tmp_path / "busybox"
    bb.write_bytes(elf64(pvh=False))
    mods = []
    for name in ("9pnet", "9p"):
        p = tmp_path / f"{name}.ko{suffix}"
        p.write_bytes(COMPRESSORS[suffix](module(name)))
        mods.append(p)
    out = write_initramfs(tmp_path / "i.cpio", GuestInit(argv=("true",)), mods, busybox=bb)
    files = _parse_newc(out.read_bytes())
    assert files["modules/000-9pnet.ko"][1] == module("9pnet")
    assert files["modules/001-9p.ko"][1] == module("9p")
    assert not any(n.endswith(suffix) for n in files)


def test_initramfs_init_mounts_root_ro_with_loose_cache_and_writes_status() -> None:
    text = render_init(GuestInit(argv=("python3", "-m", "x", "a b")), n_modules=2)
    assert text.startswith("#!/bin/busybox sh\n")
    assert "insmod" in text
    assert "ro,cache=loose" in text and f" {initramfs.ROOT_TAG} " in text
    assert "mount -t tracefs" in text and "mount -t debugfs" in text
    assert f"echo $? > $R{initramfs.GUEST_OUT}/status" in text
    assert "poweroff -f" in text
    assert "'a b'" in text  # argv quoted, not split


def test_initramfs_init_env_is_explicit() -> None:
    text = render_init(GuestInit(argv=("true",), env=(("PYTHONPATH", "/p q"),)), 0)
    assert "env -i" in text and "PYTHONPATH=/p q" in text.replace("'\"'\"'", "'")


def test_initramfs_dynamic_busybox_is_refused(tmp_path: Path) -> None:
    ls = shutil.which("ls")
    assert ls is not None
    assert not initramfs._is_static_elf(Path(ls))


def test_initramfs_no_static_busybox_is_missing_feature(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(initramfs, "_is_static_elf", lambda p: False)
    with pytest.raises(MissingFeature, match="busybox"):
        initramfs.find_busybox()


def test_initramfs_init_mounts_the_project_at_its_own_path() -> None:
    text = render_init(GuestInit(argv=("true",), project="/tmp/a clone"), 0)
    assert "kapiproj $R'/tmp/a clone'" in text
    # after the tmpfs on /tmp, which would hide a project under /tmp
    assert text.index("kapiproj") > text.index("mount -t tmpfs -o mode=1777 tmpfs $R/$d")
