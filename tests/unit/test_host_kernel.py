"""Kernel detection on crafted files: bzImage, PVH vmlinux, build and package dirs, modules."""

from __future__ import annotations

import concurrent.futures
import multiprocessing
from pathlib import Path

import pytest
from host_elf import COMPRESSORS, bzimage, elf64, gzip_payload, module, write_modules

from kapi_selftests.errors import MissingFeature, UsageError
from kapi_selftests.host import kernel

GOOD_CONFIG = "".join(f"{opt}=y\n" for opt, _m, _w in kernel.GUEST_OPTIONS)


def test_kernel_bzimage_release_and_kind(tmp_path: Path) -> None:
    img = tmp_path / "bzImage"
    img.write_bytes(bzimage("6.1.0-56-amd64"))
    k = kernel.find_kernel(img)
    assert k.kind is kernel.ImageKind.BZIMAGE
    assert k.release == "6.1.0-56-amd64"
    assert k.config is None and k.modules_dir is None


def test_kernel_missing_file_is_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no such kernel"):
        kernel.find_kernel(tmp_path / "nope")


def test_kernel_not_a_kernel_is_usage_error(tmp_path: Path) -> None:
    f = tmp_path / "notes.txt"
    f.write_text("hello" * 1000)
    with pytest.raises(UsageError, match="not a kernel image"):
        kernel.find_kernel(f)


def test_kernel_32bit_bzimage_is_rejected(tmp_path: Path) -> None:
    img = tmp_path / "bzImage"
    img.write_bytes(bzimage(x86_64=False))
    with pytest.raises(UsageError, match="not an x86-64 kernel"):
        kernel.find_kernel(img)


def test_kernel_vmlinux_with_pvh_note(tmp_path: Path) -> None:
    v = tmp_path / "vmlinux"
    v.write_bytes(elf64(pvh=True))
    assert kernel.find_kernel(v).kind is kernel.ImageKind.PVH_VMLINUX


def test_kernel_vmlinux_without_pvh_note_says_so(tmp_path: Path) -> None:
    v = tmp_path / "vmlinux"
    v.write_bytes(elf64(pvh=False))
    with pytest.raises(UsageError, match="no PVH entry note") as ei:
        kernel.find_kernel(v)
    assert ei.value.hint and "CONFIG_PVH" in ei.value.hint


def test_kernel_vmlinux_other_arch_is_rejected(tmp_path: Path) -> None:
    v = tmp_path / "vmlinux"
    v.write_bytes(elf64(machine=183))  # aarch64
    with pytest.raises(UsageError, match="not an x86-64 kernel"):
        kernel.find_kernel(v)


def test_kernel_build_dir_finds_bzimage_and_config(tmp_path: Path) -> None:
    (tmp_path / "arch/x86/boot").mkdir(parents=True)
    (tmp_path / "arch/x86/boot/bzImage").write_bytes(bzimage())
    (tmp_path / ".config").write_text(GOOD_CONFIG)
    k = kernel.find_kernel(tmp_path)
    assert k.image.name == "bzImage"
    assert k.config == (tmp_path / ".config").resolve()


def test_system_map_of_a_build_dir_and_of_a_package(tmp_path: Path) -> None:
    build = tmp_path / "build"
    (build / "arch/x86/boot").mkdir(parents=True)
    (build / "arch/x86/boot/bzImage").write_bytes(bzimage())
    assert kernel.find_system_map(kernel.find_kernel(build)) is None
    (build / "System.map").write_text("ffffffff81000000 T _stext\n")
    assert kernel.find_system_map(kernel.find_kernel(build)) == (build / "System.map").resolve()
    rel = "6.1.0-56-amd64"
    (tmp_path / "pkg/boot").mkdir(parents=True)
    (tmp_path / f"pkg/boot/vmlinuz-{rel}").write_bytes(bzimage(rel))
    (tmp_path / f"pkg/boot/System.map-{rel}").write_text("ffffffff81000000 T _stext\n")
    found = kernel.find_system_map(kernel.find_kernel(tmp_path / "pkg"))
    assert found is not None and found.name == f"System.map-{rel}"


def test_kernel_empty_dir_is_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no kernel found"):
        kernel.find_kernel(tmp_path)


def test_kernel_extracted_package_dir_finds_config_and_modules(tmp_path: Path) -> None:
    rel = "6.1.0-56-amd64"
    (tmp_path / "boot").mkdir()
    (tmp_path / f"boot/vmlinuz-{rel}").write_bytes(bzimage(rel))
    (tmp_path / f"boot/config-{rel}").write_text(GOOD_CONFIG)
    write_modules(tmp_path / f"lib/modules/{rel}", {"fs/9p/9p.ko": ""})
    k = kernel.find_kernel(tmp_path)
    assert k.release == rel
    assert k.config is not None and k.config.name == f"config-{rel}"
    assert k.modules_dir == (tmp_path / f"lib/modules/{rel}").resolve()


def test_kernel_explicit_modules_dir_must_exist(tmp_path: Path) -> None:
    img = tmp_path / "bzImage"
    img.write_bytes(bzimage())
    with pytest.raises(UsageError, match="no such modules directory"):
        kernel.find_kernel(img, tmp_path / "missing")


def test_kernel_config_missing_options_are_named() -> None:
    cfg = {"CONFIG_VIRTIO_PCI": "y", "CONFIG_NET_9P": "m"}
    missing = kernel.missing_guest_options(cfg)
    assert any(m.startswith("CONFIG_9P_FS ") for m in missing)
    assert any(m.startswith("CONFIG_TRACING ") for m in missing)
    assert not any(m.startswith("CONFIG_NET_9P ") for m in missing)


def test_kernel_read_kconfig_skips_unset(tmp_path: Path) -> None:
    p = tmp_path / ".config"
    p.write_text('CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C="str"\nCONFIG_D=m\n')
    assert kernel.read_kconfig(p) == {"CONFIG_A": "y", "CONFIG_C": "str", "CONFIG_D": "m"}


def test_kernel_modules_resolved_in_dependency_order(tmp_path: Path) -> None:
    write_modules(tmp_path, {
        "fs/9p/9p.ko": "9pnet,netfs",
        "net/9p/9pnet_virtio.ko": "9pnet,virtio_ring,virtio",
        "net/9p/9pnet.ko": "",
        "fs/netfs/netfs.ko": "",
        "drivers/virtio/virtio.ko": "",
        "drivers/virtio/virtio_ring.ko": "",
    })
    mods = kernel.resolve_modules(tmp_path, ["9pnet_virtio", "9p"])
    names = [p.name for p in mods.paths]
    assert names.index("9pnet.ko") < names.index("9pnet_virtio.ko")
    assert names.index("virtio_ring.ko") < names.index("9pnet_virtio.ko")
    assert names.index("netfs.ko") < names.index("9p.ko")
    assert len(names) == len(set(names)) == 6


@pytest.mark.parametrize("suffix", sorted(COMPRESSORS))
def test_kernel_compressed_modules_resolved_and_read(tmp_path: Path, suffix: str) -> None:
    write_modules(tmp_path, {
        "fs/9p/9p.ko": "9pnet,netfs",
        "net/9p/9pnet.ko": "",
        "fs/netfs/netfs.ko": "",
    }, compression=suffix)
    names = [p.name for p in kernel.resolve_modules(tmp_path, ["9p"]).paths]
    assert names[-1] == f"9p.ko{suffix}" and len(names) == 3
    ko = tmp_path / f"kernel/fs/9p/9p.ko{suffix}"
    assert kernel.read_modinfo(ko)["depends"] == "9pnet,netfs"
    assert kernel.read_module(ko) == module("9p", "9pnet,netfs")
    assert kernel.module_file_name(ko) == "9p.ko"


def test_kernel_zstd_module_of_several_frames(tmp_path: Path) -> None:
    plain = module("9p", "netfs")
    ko = tmp_path / "9p.ko.zst"
    ko.write_bytes(COMPRESSORS[".zst"](plain[:100]) + COMPRESSORS[".zst"](plain[100:]))
    assert kernel.read_module(ko) == plain


@pytest.mark.parametrize("suffix,what", [(".xz", "xz"), (".zst", "zstd"), (".gz", "gzip")])
@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_kernel_damaged_compressed_module_is_one_clear_error(
        tmp_path: Path, suffix: str, what: str, damage: str) -> None:
    data = COMPRESSORS[suffix](module("9p"))
    ko = tmp_path / f"9p.ko{suffix}"
    ko.write_bytes(data[:len(data) // 2] if damage == "truncated" else b"not compressed" * 8)
    with pytest.raises(MissingFeature, match=rf"module .*9p\.ko\{suffix}: not valid {what} data"):
        kernel.read_modinfo(ko)


def test_kernel_usr_lib_modules_package_layout(tmp_path: Path) -> None:
    # Debian's 7.x packages: linux-binary-R has usr/lib/modules/R/vmlinuz, linux-base-R
    # its config beside it, linux-modules-R the .ko.xz files; no boot/ at all.
    rel = "7.2.13+deb14-amd64"
    mdir = tmp_path / f"usr/lib/modules/{rel}"
    write_modules(mdir, {"fs/9p/9p.ko": "netfs", "fs/netfs/netfs.ko": ""}, compression=".xz")
    (mdir / "vmlinuz").write_bytes(bzimage(rel))
    (mdir / "config").write_text(GOOD_CONFIG.replace("CONFIG_9P_FS=y", "CONFIG_9P_FS=m"))
    k = kernel.find_kernel(tmp_path)
    assert k.image == (mdir / "vmlinuz").resolve() and k.release == rel
    assert k.config == (mdir / "config").resolve()
    assert k.modules_dir == mdir.resolve()
    assert [p.name for p in kernel.guest_modules(k).paths] == ["netfs.ko.xz", "9p.ko.xz"]


def test_kernel_builtin_modules_are_not_loaded(tmp_path: Path) -> None:
    write_modules(tmp_path, {"fs/9p/9p.ko": "netfs"}, builtin=("fs/netfs/netfs",))
    assert [p.name for p in kernel.resolve_modules(tmp_path, ["9p"]).paths] == ["9p.ko"]


def test_kernel_missing_module_names_the_chain(tmp_path: Path) -> None:
    write_modules(tmp_path, {"fs/9p/9p.ko": "netfs"})
    with pytest.raises(MissingFeature, match=r"module netfs \(needed by 9p\)"):
        kernel.resolve_modules(tmp_path, ["9p"])


def test_kernel_guest_modules_only_for_modular_options(tmp_path: Path) -> None:
    rel = "6.1.0-m"
    (tmp_path / "boot").mkdir()
    (tmp_path / f"boot/vmlinuz-{rel}").write_bytes(bzimage(rel))
    cfg = GOOD_CONFIG.replace("CONFIG_9P_FS=y", "CONFIG_9P_FS=m")
    (tmp_path / f"boot/config-{rel}").write_text(cfg)
    write_modules(tmp_path / f"lib/modules/{rel}", {"fs/9p/9p.ko": "", "net/9p/9pnet.ko": ""})
    mods = kernel.guest_modules(kernel.find_kernel(tmp_path))
    assert [p.name for p in mods.paths] == ["9p.ko"]


def test_kernel_lacking_9p_is_reported_before_boot(tmp_path: Path) -> None:
    (tmp_path / "arch/x86/boot").mkdir(parents=True)
    (tmp_path / "arch/x86/boot/bzImage").write_bytes(bzimage())
    (tmp_path / ".config").write_text(GOOD_CONFIG.replace("CONFIG_9P_FS=y\n", ""))
    with pytest.raises(MissingFeature, match="CONFIG_9P_FS"):
        kernel.guest_modules(kernel.find_kernel(tmp_path))


def test_kernel_modular_without_modules_dir_says_so(tmp_path: Path) -> None:
    (tmp_path / "arch/x86/boot").mkdir(parents=True)
    (tmp_path / "arch/x86/boot/bzImage").write_bytes(bzimage("9.9.9-nowhere"))
    (tmp_path / ".config").write_text(GOOD_CONFIG.replace("CONFIG_9P_FS=y", "CONFIG_9P_FS=m"))
    with pytest.raises(MissingFeature, match="--modules|no modules directory"):
        kernel.guest_modules(kernel.find_kernel(tmp_path))


def test_kernel_pvh_vmlinux_extracted_from_gzip_bzimage(tmp_path: Path) -> None:
    img = tmp_path / "bzImage"
    inner = elf64(pvh=True)
    img.write_bytes(bzimage(payload=gzip_payload(inner)))
    out = kernel.pvh_vmlinux(img, tmp_path / "cache")
    assert out is not None and out.read_bytes() == inner
    assert kernel.pvh_vmlinux(img, tmp_path / "cache") == out  # cached


def test_kernel_pvh_vmlinux_extracted_from_zstd_bzimage(tmp_path: Path) -> None:
    # CONFIG_KERNEL_ZSTD (Debian unstable's kernel): one frame, then the size trailer.
    img = tmp_path / "bzImage"
    inner = elf64(pvh=True)
    payload = COMPRESSORS[".zst"](inner) + len(inner).to_bytes(4, "little")
    img.write_bytes(bzimage(payload=payload))
    out = kernel.pvh_vmlinux(img, tmp_path / "cache")
    assert out is not None and out.read_bytes() == inner


def test_kernel_pvh_vmlinux_of_a_broken_zstd_payload_is_none(tmp_path: Path) -> None:
    img = tmp_path / "bzImage"
    img.write_bytes(bzimage(payload=b"\x28\xb5\x2f\xfd" + b"\xff" * 64))
    assert kernel.pvh_vmlinux(img, tmp_path / "cache") is None  # boots the bzImage


def _extract(img: Path, cache: Path) -> tuple[str, bytes]:
    out = kernel.pvh_vmlinux(img, cache)
    assert out is not None
    return str(out), out.read_bytes()


def test_kernel_pvh_vmlinux_many_extractions_at_once(tmp_path: Path) -> None:
    # the guests of one run (threads) and other runs (processes) booting a kernel the
    # cache has not seen: each gets the whole vmlinux, and no temporary file is left
    img = tmp_path / "bzImage"
    inner = elf64(pvh=True) + bytes(range(256)) * 16384  # 4 MiB: writes take a while
    img.write_bytes(bzimage(payload=gzip_payload(inner)))
    cache = tmp_path / "cache"
    ctx = multiprocessing.get_context("fork")
    with concurrent.futures.ThreadPoolExecutor(8) as threads, \
            concurrent.futures.ProcessPoolExecutor(4, mp_context=ctx) as procs:
        futs = [threads.submit(_extract, img, cache) for _ in range(8)]
        futs += [procs.submit(_extract, img, cache) for _ in range(4)]
        got = [f.result() for f in futs]
    assert {path for path, _ in got} == {str(cache / Path(got[0][0]).name)}
    assert all(data == inner for _, data in got)
    assert sorted(p.name for p in cache.iterdir() if not p.name.endswith(".lock")) == [
        Path(got[0][0]).name]


def test_kernel_pvh_vmlinux_none_without_note(tmp_path: Path) -> None:
    img = tmp_path / "bzImage"
    img.write_bytes(bzimage(payload=gzip_payload(elf64(pvh=False))))
    assert kernel.pvh_vmlinux(img, tmp_path / "cache") is None
    assert not list((tmp_path / "cache").glob("vmlinux-*"))
