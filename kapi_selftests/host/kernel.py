"""Find and validate the kernel to boot: image, Kconfig, release and modules.

Owns reading kernel files on the host (bzImage setup header, ELF notes of a
vmlinux, ``.config``, ``.modinfo`` of modules). It never launches anything:
:mod:`kapi_selftests.host.qemu` builds the command line from what this finds.

Accepted ``--kernel`` paths:

- a bzImage (``HdrS`` setup header with the 64-bit load flag);
- a kernel build directory as ``make`` or ``vng --build`` leaves it
  (``arch/x86/boot/bzImage``, ``.config``, modules listed in ``modules.order``);
- an ELF ``vmlinux`` for x86-64 with a PVH entry note (``CONFIG_PVH=y``);
- a directory where a distribution package was extracted (``boot/vmlinuz-*``,
  ``boot/config-*``, ``lib/modules/<release>``), e.g. by ``dpkg -x``.
"""

from __future__ import annotations

import enum
import gzip
import hashlib
import io
import logging
import lzma
import struct
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from kapi_selftests import cache
from kapi_selftests.errors import MissingFeature, UsageError

__all__ = [
    "ImageKind",
    "KernelImage",
    "ModuleSet",
    "find_kernel",
    "read_kconfig",
    "missing_guest_options",
    "find_modules_dir",
    "package_image",
    "resolve_modules",
    "read_modinfo",
    "read_module",
    "module_file_name",
    "MODULE_COMPRESSIONS",
    "GUEST_OPTIONS",
    "pvh_vmlinux",
    "guest_modules",
]

log = logging.getLogger(__name__)

# Kconfig options the guest boot needs, with the module that provides each when
# the option is "m". Checked before booting so a kernel that cannot mount its root
# fails with the option's name instead of a silent hang.
GUEST_OPTIONS: tuple[tuple[str, str | None, str], ...] = (
    # (option, module name when =m, what needs it)
    ("CONFIG_VIRTIO_PCI", "virtio_pci", "virtio devices (9p transport)"),
    ("CONFIG_NET_9P", "9pnet", "9p root file system"),
    ("CONFIG_NET_9P_VIRTIO", "9pnet_virtio", "9p over virtio"),
    ("CONFIG_9P_FS", "9p", "9p root file system"),
    ("CONFIG_SERIAL_8250_CONSOLE", None, "serial console"),
    ("CONFIG_DEVTMPFS", None, "/dev in the guest"),
    ("CONFIG_TMPFS", None, "writable /tmp and /run in the guest"),
    ("CONFIG_TRACING", None, "tracefs (the kapi events)"),
    ("CONFIG_BLK_DEV_INITRD", None, "the initramfs that mounts the root"),
)

# Wanted but not required: without them some tests skip (logged as a warning).
WANTED_OPTIONS: tuple[tuple[str, str], ...] = (
    ("CONFIG_DEBUG_FS", "debugfs: the KAPI spec dump"),
    ("CONFIG_FTRACE_SYSCALLS", "the generic syscall events"),
    ("CONFIG_MAGIC_SYSRQ", "the crash test of tests/vm"),
)

_SETUP_MAGIC_OFF = 0x202  # "HdrS"
_BOOT_FLAG_OFF = 0x1FE  # 0xAA55
_VERSION_OFF = 0x206  # boot protocol version (u16)
_KVER_PTR_OFF = 0x20E  # kernel_version string pointer (u16), relative to 0x200
_XLOADFLAGS_OFF = 0x236  # u16, boot protocol >= 2.12
_XLF_KERNEL_64 = 1
_EM_X86_64 = 62
_PT_NOTE = 4
_SHT_NOTE = 7
_XEN_ELFNOTE_PHYS32_ENTRY = 18


class ImageKind(enum.Enum):
    BZIMAGE = "bzImage"
    PVH_VMLINUX = "vmlinux (PVH)"


@dataclass(frozen=True, slots=True)
class KernelImage:
    """A bootable kernel and what was found next to it.

    :param image: the file QEMU's ``-kernel`` gets
    :param kind: bzImage or PVH vmlinux
    :param release: ``uname -r`` of the image when it could be read, else ``""``
    :param config: its ``.config``/``config-<release>`` when found
    :param modules_dir: ``lib/modules/<release>`` or a build directory with modules
    """

    image: Path
    kind: ImageKind
    release: str = ""
    config: Path | None = None
    modules_dir: Path | None = None


@dataclass(frozen=True, slots=True)
class ModuleSet:
    """Modules to load in the guest, in dependency order (each after its depends)."""

    paths: tuple[Path, ...] = ()


def _read_head(path: Path, n: int) -> bytes:
    try:
        with path.open("rb") as f:
            return f.read(n)
    except OSError as e:
        raise UsageError(f"cannot read kernel {path}: {e.strerror}") from e


def _bzimage_release(head: bytes) -> str:
    (ptr,) = struct.unpack_from("<H", head, _KVER_PTR_OFF)
    off = ptr + 0x200
    if not ptr or off >= len(head):
        return ""
    raw = head[off:off + 256].split(b"\0", 1)[0].decode("ascii", "replace")
    return raw.split(" ", 1)[0]


def _check_bzimage(path: Path, head: bytes) -> str:
    """Validate a bzImage header; return its release string."""
    if len(head) < 0x240 or head[_SETUP_MAGIC_OFF:_SETUP_MAGIC_OFF + 4] != b"HdrS":
        raise UsageError(f"{path}: not a kernel image (no bzImage 'HdrS' header, not ELF)")
    (version,) = struct.unpack_from("<H", head, _VERSION_OFF)
    (xloadflags,) = struct.unpack_from("<H", head, _XLOADFLAGS_OFF)
    if version < 0x020C or not xloadflags & _XLF_KERNEL_64:
        raise UsageError(f"{path}: not an x86-64 kernel (bzImage without the 64-bit "
                         f"load flag, boot protocol {version >> 8}.{version & 0xFF})",
                         hint="build with ARCH=x86_64")
    # the protected-mode part is syssize 16-byte paragraphs after the setup sectors
    expected = ((head[_SETUP_SECTS_OFF] or 4) + 1) * 512 + \
        struct.unpack_from("<I", head, _SYSSIZE_OFF)[0] * 16
    size = path.stat().st_size
    if size < expected:
        raise UsageError(f"{path}: truncated bzImage ({size} bytes; its header says "
                         f"{expected})", hint="copy or build the kernel again")
    return _bzimage_release(head)


def _iter_notes(data: bytes) -> Iterable[tuple[bytes, int, bytes]]:
    off = 0
    while off + 12 <= len(data):
        namesz, descsz, ntype = struct.unpack_from("<III", data, off)
        off += 12
        name = data[off:off + namesz].rstrip(b"\0")
        off += (namesz + 3) & ~3
        desc = data[off:off + descsz]
        off += (descsz + 3) & ~3
        yield name, ntype, desc


def _elf_has_pvh_note(path: Path) -> bool:
    """True if the ELF64 file carries Xen's PHYS32_ENTRY note (the PVH entry point)."""
    with path.open("rb") as f:
        return _elf_stream_has_pvh_note(f)


def _elf_stream_has_pvh_note(f: BinaryIO) -> bool:
    ehdr = f.read(64)
    (phoff,) = struct.unpack_from("<Q", ehdr, 0x20)
    (shoff,) = struct.unpack_from("<Q", ehdr, 0x28)
    phentsize, phnum, shentsize, shnum = struct.unpack_from("<HHHH", ehdr, 0x36)
    regions: list[tuple[int, int]] = []
    f.seek(phoff)
    for _ in range(phnum):
        ph = f.read(phentsize)
        if len(ph) < 0x38:
            break
        (ptype,) = struct.unpack_from("<I", ph, 0)
        if ptype == _PT_NOTE:
            off, _va, _pa, filesz = struct.unpack_from("<QQQQ", ph, 8)
            regions.append((off, filesz))
    if not regions and shoff:
        f.seek(shoff)
        for _ in range(shnum):
            sh = f.read(shentsize)
            if len(sh) < 0x40:
                break
            (stype,) = struct.unpack_from("<I", sh, 4)
            if stype == _SHT_NOTE:
                off, size = struct.unpack_from("<QQ", sh, 0x18)
                regions.append((off, size))
    for off, size in regions:
        f.seek(off)
        for name, ntype, _desc in _iter_notes(f.read(min(size, 1 << 20))):
            if name == b"Xen" and ntype == _XEN_ELFNOTE_PHYS32_ENTRY:
                return True
    return False


def _check_elf(path: Path, head: bytes) -> None:
    if head[4] != 2 or struct.unpack_from("<H", head, 0x12)[0] != _EM_X86_64:
        raise UsageError(f"{path}: not an x86-64 kernel (ELF for another machine or class)")
    if not _elf_has_pvh_note(path):
        raise UsageError(f"{path}: this vmlinux has no PVH entry note, QEMU cannot boot it",
                         hint="boot arch/x86/boot/bzImage instead, or build with CONFIG_PVH=y")


def _first(paths: Iterable[Path]) -> Path | None:
    found = sorted(paths)
    return found[-1] if found else None


def _image_from_dir(d: Path) -> tuple[Path, Path | None, Path | None]:
    """(image, config, modules root) for a build dir or an extracted package dir."""
    bz = d / "arch/x86/boot/bzImage"
    if bz.is_file():
        cfg = d / ".config"
        return bz, cfg if cfg.is_file() else None, d if (d / "modules.order").is_file() else None
    vml = d / "vmlinux"
    if vml.is_file() and (d / "Makefile").is_file():
        cfg = d / ".config"
        return vml, cfg if cfg.is_file() else None, None
    img = _first((d / "boot").glob("vmlinuz-*")) or _first(d.glob("vmlinuz-*"))
    if img is None:
        img = package_image(d)
    if img is None and (d / "bzImage").is_file():
        img = d / "bzImage"
    if img is None:
        raise UsageError(f"{d}: no kernel found in this directory (looked for "
                         "arch/x86/boot/bzImage, vmlinux, boot/vmlinuz-*, "
                         "usr/lib/modules/*/vmlinuz, bzImage)")
    return img, None, None


def package_image(root: Path) -> Path | None:
    """The kernel image of a package extracted at ``root``: ``boot/vmlinuz-<release>``
    (Debian up to trixie), else ``usr/lib/modules/<release>/vmlinuz`` with ``config``
    next to it (Debian's ``linux-binary-*`` from 7.x on, Fedora); None when neither."""
    return (_first((root / "boot").glob("vmlinuz-*"))
            or _first((root / "usr/lib/modules").glob("*/vmlinuz"))
            or _first((root / "lib/modules").glob("*/vmlinuz")))


def _config_next_to(image: Path, release: str) -> Path | None:
    cands = [image.parent / ".config", image.parent / "config"]
    if release:
        cands.insert(0, image.parent / f"config-{release}")
    name = image.name
    if name.startswith("vmlinuz-"):
        cands.insert(0, image.parent / ("config-" + name[len("vmlinuz-"):]))
    return next((c for c in cands if c.is_file()), None)


def find_system_map(k: KernelImage) -> Path | None:
    """The kernel's ``System.map`` (its function addresses): in the build directory of
    ``arch/x86/boot/bzImage``, next to the image, or ``System.map-<release>`` of a
    package; None when there is none."""
    img = k.image
    cands = [img.parent / "System.map"]
    if img.parent.name == "boot" and img.parent.parent.name == "x86":
        cands.insert(0, img.parents[3] / "System.map")  # <build>/arch/x86/boot/bzImage
    if k.release:
        cands.insert(0, img.parent / f"System.map-{k.release}")
    if img.name.startswith("vmlinuz-"):
        cands.insert(0, img.parent / ("System.map-" + img.name[len("vmlinuz-"):]))
    return next((c for c in cands if c.is_file()), None)


def find_modules_dir(image: Path, release: str) -> Path | None:
    """Find ``lib/modules/<release>`` for a kernel image.

    Looks next to an extracted package (``<root>/boot/vmlinuz-R`` →
    ``<root>/lib/modules/R`` or ``<root>/usr/lib/modules/R``), then in the host's
    ``/lib/modules/<release>``.

    :return: the directory, or ``None`` when there is none (a monolithic kernel)
    """
    if image.name == "vmlinuz" and image.parent.parent.name == "modules" and (
            (image.parent / "kernel").is_dir() or (image.parent / "modules.order").is_file()):
        return image.parent  # <root>/usr/lib/modules/R/vmlinuz: the modules are beside it
    if not release:
        if image.name.startswith("vmlinuz-"):
            release = image.name[len("vmlinuz-"):]
        else:
            return None
    roots = [image.parent.parent, image.parent, Path("/")]
    for root in roots:
        for sub in ("lib/modules", "usr/lib/modules"):
            cand = root / sub / release
            if (cand / "kernel").is_dir() or (cand / "modules.order").is_file():
                return cand
    return None


def find_kernel(path: Path | str, modules: Path | str | None = None) -> KernelImage:
    """Identify the kernel at ``path`` and what belongs with it.

    :param path: bzImage, build directory, PVH vmlinux or extracted package dir
    :param modules: explicit modules directory (``--modules``), else searched
    :raises UsageError: no such file, or not a bootable x86-64 kernel
    """
    p = Path(path)
    if not p.exists():
        raise UsageError(f"no such kernel: {p}")
    config: Path | None = None
    mods: Path | None = None
    if p.is_dir():
        p, config, mods = _image_from_dir(p)
    head = _read_head(p, 0x8000)
    if head[:4] == b"\x7fELF":
        _check_elf(p, head)
        kind, release = ImageKind.PVH_VMLINUX, ""
    else:
        release = _check_bzimage(p, head)
        kind = ImageKind.BZIMAGE
    if config is None:
        config = _config_next_to(p, release)
    if modules is not None:
        mods = Path(modules)
        if not mods.is_dir():
            raise UsageError(f"no such modules directory: {mods}")
    elif mods is None:
        mods = find_modules_dir(p, release)
    return KernelImage(image=p.resolve(), kind=kind, release=release,
                       config=config.resolve() if config else None,
                       modules_dir=mods.resolve() if mods else None)


_SYSSIZE_OFF = 0x1F4  # u32: the protected-mode code's size in 16-byte paragraphs
_PAYLOAD_OFF = 0x248  # u32 payload_offset, u32 payload_length (boot protocol >= 2.08)
_SETUP_SECTS_OFF = 0x1F1


_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def _decompress_payload(data: bytes) -> bytes | None:
    if data[:6] == b"\xfd7zXZ\x00":
        return lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(data)
    if data[:2] == b"\x1f\x8b":
        return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data)
    if data[:3] == b"\x5d\x00\x00":
        return lzma.LZMADecompressor(format=lzma.FORMAT_ALONE).decompress(data)
    if data[:4] == _ZSTD_MAGIC:  # CONFIG_KERNEL_ZSTD (Debian from 6.x in unstable on)
        try:
            # optional dependency: only zstd-compressed kernels and modules need it
            import zstandard
        except ImportError:
            return None
        try:
            # One frame: the build appends the vmlinux size after it, as for every payload.
            return zstandard.ZstdDecompressor().decompressobj().decompress(data)
        except zstandard.ZstdError as e:
            raise ValueError(f"zstd: {e}") from e
    return None  # lz4, lzo, bzip2: not in the standard library


def pvh_vmlinux(image: Path, cache_dir: Path) -> Path | None:
    """The ELF vmlinux inside a bzImage, when it has a PVH entry note; cached.

    QEMU boots such an ELF directly (PVH), skipping the bzImage's own
    decompression, which under TCG costs several seconds of every boot. Returns
    None when the payload's compression is not supported here or the kernel has
    no PVH note (then boot the bzImage).
    """
    data = image.read_bytes()
    key = hashlib.sha256(data).hexdigest()[:24]
    dest = cache_dir / f"vmlinux-{key}"
    if dest.is_file():
        return dest
    # one extraction at a time (the guests of a run are threads; runs may be processes)
    with cache.locked(cache_dir / f".vmlinux-{key}.lock"):
        if dest.is_file():
            return dest
        return _extract_pvh(image, data, dest)


def _extract_pvh(image: Path, data: bytes, dest: Path) -> Path | None:
    if len(data) < _PAYLOAD_OFF + 8:
        return None
    setup_sects = data[_SETUP_SECTS_OFF] or 4
    off, length = struct.unpack_from("<II", data, _PAYLOAD_OFF)
    start = (setup_sects + 1) * 512 + off
    try:
        elf = _decompress_payload(data[start:start + length])
    except (lzma.LZMAError, zlib.error, EOFError, ValueError) as e:
        log.info("cannot decompress %s (%s): booting the bzImage", image, e)
        return None
    if not elf or elf[:4] != b"\x7fELF":
        return None
    if not _elf_stream_has_pvh_note(io.BytesIO(elf)):
        log.info("%s has no PVH note (CONFIG_PVH=n): booting the bzImage", image)
        return None
    cache.atomic_write(dest, elf)
    log.info("extracted the PVH vmlinux of %s to %s", image, dest)
    return dest


def read_kconfig(path: Path) -> dict[str, str]:
    """Parse a ``.config``: ``{"CONFIG_X": "y" | "m" | value}``; unset options are absent."""
    out: dict[str, str] = {}
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("CONFIG_") and "=" in line:
            k, v = line.split("=", 1)
            out[k] = v.strip('"')
    return out


def missing_guest_options(kconfig: Mapping[str, str]) -> list[str]:
    """Options the guest boot needs that this config lacks, each with what needs it."""
    return [f"{opt} ({why})" for opt, _mod, why in GUEST_OPTIONS
            if kconfig.get(opt) not in ("y", "m")]


def required_module_names(kconfig: Mapping[str, str] | None) -> list[str]:
    """Modules to load for the guest boot: those of :data:`GUEST_OPTIONS` that are ``=m``.

    Without a config (a bare bzImage) nothing is known to be modular: return the
    full list and let :func:`resolve_modules` drop the built-in ones.
    """
    names = [mod for opt, mod, _ in GUEST_OPTIONS if mod is not None
             and (kconfig is None or kconfig.get(opt) == "m")]
    return names


def _norm(name: str) -> str:
    return name.replace("-", "_")


# Compressed modules as CONFIG_MODULE_COMPRESS_{XZ,ZSTD,GZIP} install them (Debian
# from trixie on ships .ko.xz, Fedora .ko.xz, Arch .ko.zst): the suffix and its name.
MODULE_COMPRESSIONS: tuple[tuple[str, str], ...] = ((".xz", "xz"), (".zst", "zstd"),
                                                    (".gz", "gzip"))


def module_file_name(path: Path) -> str:
    """The plain ``.ko`` file name of a module file, compressed or not
    (``9pnet_virtio.ko.xz`` -> ``9pnet_virtio.ko``)."""
    name = path.name
    for suffix, _what in MODULE_COMPRESSIONS:
        if name.endswith(".ko" + suffix):
            return name.removesuffix(suffix)
    return name


def _module_name(path: Path) -> str:
    return _norm(module_file_name(path).removesuffix(".ko"))


def _elf_section(data: bytes, wanted: bytes) -> bytes | None:
    if data[:4] != b"\x7fELF" or data[4] != 2:
        return None
    (shoff,) = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    def sh(i: int) -> tuple[int, int, int]:
        base = shoff + i * shentsize
        (nameoff,) = struct.unpack_from("<I", data, base)
        off, size = struct.unpack_from("<QQ", data, base + 0x18)
        return nameoff, off, size
    _n, stroff, _s = sh(shstrndx)
    for i in range(shnum):
        nameoff, off, size = sh(i)
        name = data[stroff + nameoff:].split(b"\0", 1)[0]
        if name == wanted:
            return data[off:off + size]
    return None


def _zstd_decompress(data: bytes) -> bytes:
    try:
        # optional dependency: only zstd-compressed kernels and modules need it
        import zstandard
    except ImportError as e:  # a declared dependency; only a broken install lacks it
        raise MissingFeature("reading .ko.zst modules needs the zstandard package",
                             hint="pip install zstandard") from e
    # Frame by frame through decompressobj, not decompress(): a frame need not record
    # its size, and a truncated one must be an error, not fewer bytes.
    out: list[bytes] = []
    rest = data
    try:
        while rest:
            obj = zstandard.ZstdDecompressor().decompressobj()
            out.append(obj.decompress(rest))
            if not obj.eof:
                raise ValueError("truncated zstd frame")
            rest = obj.unused_data
    except zstandard.ZstdError as e:
        raise ValueError(str(e)) from e
    return b"".join(out)


def read_module(path: Path) -> bytes:
    """The module's ELF bytes: ``path`` read and, for ``.ko.xz``, ``.ko.zst`` and
    ``.ko.gz``, decompressed (busybox ``insmod`` and the ``.modinfo`` reader need the
    plain ELF).

    :raises MissingFeature: the file is not valid data of the compression its name says
    """
    data = path.read_bytes()
    what = next((w for sfx, w in MODULE_COMPRESSIONS if path.name.endswith(".ko" + sfx)), None)
    if what is None:
        return data
    try:
        # The one-shot functions, as they raise on a truncated stream.
        if what == "xz":
            return lzma.decompress(data, format=lzma.FORMAT_XZ)
        if what == "gzip":
            return gzip.decompress(data)
        return _zstd_decompress(data)
    except (lzma.LZMAError, OSError, EOFError, zlib.error, ValueError) as e:
        raise MissingFeature(f"module {path}: not valid {what} data ({e})",
                             hint="check the modules tree (a truncated download?)") from e


def read_modinfo(path: Path) -> dict[str, str]:
    """The ``.modinfo`` section of a module as ``{key: value}`` (first value of each key)."""
    sec = _elf_section(read_module(path), b".modinfo")
    out: dict[str, str] = {}
    for entry in (sec or b"").split(b"\0"):
        if b"=" in entry:
            k, v = entry.decode("utf-8", "replace").split("=", 1)
            out.setdefault(k, v)
    return out


def _index_modules(mdir: Path) -> tuple[dict[str, Path], set[str]]:
    """Map module name -> file, and the set of built-in module names."""
    index: dict[str, Path] = {}
    order = mdir / "modules.order"
    if order.is_file() and not (mdir / "kernel").is_dir():
        # A build tree: modules.order lists paths relative to the tree (.ko or .o).
        for line in order.read_text().split():
            ko = mdir / (line.removesuffix(".o") + ".ko" if line.endswith(".o") else line)
            ko = ko if ko.is_file() else mdir / line.removeprefix("kernel/")
            if ko.is_file():
                index[_module_name(ko)] = ko
    else:
        for ko in mdir.rglob("*.ko*"):
            index.setdefault(_module_name(ko), ko)
    builtin: set[str] = set()
    bl = mdir / "modules.builtin"
    if bl.is_file():
        builtin = {_module_name(Path(x)) for x in bl.read_text().split()}
    return index, builtin


def resolve_modules(mdir: Path, names: Iterable[str]) -> ModuleSet:
    """Modules ``names`` and their ``depends=``, ordered so each loads after its deps.

    Names built into the kernel (``modules.builtin``) are skipped.

    :raises MissingFeature: a needed module is neither in ``mdir`` nor built in
    """
    index, builtin = _index_modules(mdir)
    ordered: list[Path] = []
    seen: set[str] = set()

    def visit(name: str, chain: tuple[str, ...]) -> None:
        name = _norm(name)
        if name in seen or name in builtin:
            return
        seen.add(name)
        path = index.get(name)
        if path is None:
            raise MissingFeature(f"module {name} (needed by {' <- '.join(chain) or 'the guest'})"
                                 f" not found in {mdir}",
                                 hint="pass --modules DIR with the kernel's lib/modules/<release>")
        deps = read_modinfo(path).get("depends", "")
        for dep in filter(None, deps.split(",")):
            visit(dep, (name, *chain))
        ordered.append(path)

    for n in names:
        visit(n, ())
    return ModuleSet(paths=tuple(ordered))


def guest_modules(kernel: KernelImage) -> ModuleSet:
    """Check the kernel's config and find the modules its guest boot needs.

    :raises MissingFeature: options missing from the config, or modules not found
    """
    kconfig = read_kconfig(kernel.config) if kernel.config else None
    if kconfig is not None:
        missing = missing_guest_options(kconfig)
        if missing:
            raise MissingFeature(f"kernel {kernel.image} lacks what the guest needs: "
                                 + ", ".join(missing),
                                 hint=f"enable them in {kernel.config} (see vm/kapi.config)")
        for opt, why in WANTED_OPTIONS:
            if kconfig.get(opt) not in ("y", "m"):
                log.warning("kernel config lacks %s (%s): those tests will skip", opt, why)
    names = required_module_names(kconfig)
    if kernel.modules_dir is None:
        if kconfig is not None and names:
            raise MissingFeature(f"kernel {kernel.image} is modular ({', '.join(names)} =m) "
                                 "but no modules directory was found",
                                 hint="pass --modules DIR (lib/modules/<release>)")
        return ModuleSet()
    if kconfig is None:
        # No config: load only the ones that exist as modules; the rest must be built in.
        index, _builtin = _index_modules(kernel.modules_dir)
        names = [n for n in names if n in index]
    mods = resolve_modules(kernel.modules_dir, names)
    log.info("guest modules: %s", " ".join(p.name for p in mods.paths) or "(none)")
    return mods
