"""Small crafted kernel files for the host tests: bzImage headers, ELF vmlinux, modules."""

from __future__ import annotations

import gzip
import lzma
import struct
from pathlib import Path

import zstandard

# Module compressions as CONFIG_MODULE_COMPRESS_* installs them: suffix -> compressor
# (the kernel's scripts run xz --check=crc32, zstd, gzip -9: any valid stream does here).
COMPRESSORS = {
    ".xz": lambda b: lzma.compress(b, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32),
    ".zst": lambda b: zstandard.ZstdCompressor(write_content_size=False).compress(b),
    ".gz": lambda b: gzip.compress(b, 9),
}


def bzimage(release: str = "6.1.0-test-amd64", *, x86_64: bool = True, version: int = 0x020F,
            payload: bytes = b"") -> bytes:
    """A bzImage setup header (and optional payload) as the kernel's build writes it."""
    setup_sects = 1
    buf = bytearray(0x8000)
    buf[0x1F1] = setup_sects
    struct.pack_into("<H", buf, 0x1FE, 0xAA55)
    buf[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", buf, 0x206, version)
    struct.pack_into("<H", buf, 0x20E, 0x100)  # kernel_version at 0x200 + 0x100
    s = f"{release} (builder@host) #1 SMP".encode()
    buf[0x300:0x300 + len(s) + 1] = s + b"\0"
    struct.pack_into("<H", buf, 0x236, 1 if x86_64 else 0)
    if payload:
        start = (setup_sects + 1) * 512
        struct.pack_into("<II", buf, 0x248, 0x100, len(payload))
        buf[start + 0x100:start + 0x100 + len(payload)] = payload
    return bytes(buf)


def _note(name: bytes, ntype: int, desc: bytes) -> bytes:
    n = name + b"\0"
    pad = lambda b: b + b"\0" * (-len(b) % 4)  # noqa: E731
    return struct.pack("<III", len(n), len(desc), ntype) + pad(n) + pad(desc)


def elf64(*, machine: int = 62, pvh: bool = True, sections: dict[str, bytes] | None = None
          ) -> bytes:
    """A minimal ELF64: one PT_NOTE segment (Xen PHYS32_ENTRY when ``pvh``), and the
    named sections with a section header string table."""
    notes = _note(b"Xen", 18 if pvh else 5, struct.pack("<I", 0x1000000))
    secs = dict(sections or {})
    ehdr_size, ph_size, sh_size = 64, 56, 64
    phoff = ehdr_size
    data_off = phoff + ph_size
    body = bytearray(notes)
    offsets: dict[str, tuple[int, int]] = {}
    for name, content in secs.items():
        offsets[name] = (data_off + len(body), len(content))
        body += content
    shstr = b"\0" + b"".join(n.encode() + b"\0" for n in secs) + b".shstrtab\0"
    shstr_off = data_off + len(body)
    body += shstr
    shoff = data_off + len(body)
    shnum = len(secs) + 2
    e = bytearray(b"\x7fELF" + bytes([2, 1, 1]) + b"\0" * 9)
    e += struct.pack("<HHIQQQIHHHHHH", 2, machine, 1, 0, phoff, shoff, 0, ehdr_size, ph_size,
                     1, sh_size, shnum, shnum - 1)
    ph = struct.pack("<IIQQQQQQ", 4, 4, data_off, 0, 0, len(notes), len(notes), 4)
    sh = bytearray(b"\0" * sh_size)
    name_off = 1
    for name in secs:
        off, size = offsets[name]
        sh += struct.pack("<IIQQQQIIQQ", name_off, 1, 0, 0, off, size, 0, 0, 1, 0)
        name_off += len(name) + 1
    sh += struct.pack("<IIQQQQIIQQ", name_off, 3, 0, 0, shstr_off, len(shstr), 0, 0, 1, 0)
    return bytes(e + ph + body + sh)


def module(name: str, depends: str = "") -> bytes:
    """A .ko with a .modinfo section (name=, depends=)."""
    info = f"license=GPL\0depends={depends}\0name={name}\0".encode()
    return elf64(pvh=False, sections={".modinfo": info})


def write_modules(mdir: Path, mods: dict[str, str], builtin: tuple[str, ...] = (),
                  compression: str = "") -> None:
    """``lib/modules/<release>`` with modules {path-under-kernel/: depends}; with
    ``compression`` (".xz", ".zst", ".gz") each file is ``<name>.ko<compression>``, and
    ``modules.order`` still names the ``.ko``, as a distribution's tree has it."""
    for rel, deps in mods.items():
        p = mdir / "kernel" / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        data = module(p.name.removesuffix(".ko"), deps)
        if compression:
            p = p.with_name(p.name + compression)
            data = COMPRESSORS[compression](data)
        p.write_bytes(data)
    (mdir / "modules.order").write_text("".join(f"kernel/{r}\n" for r in mods))
    (mdir / "modules.builtin").write_text("".join(f"kernel/{b}.ko\n" for b in builtin))


def gzip_payload(data: bytes) -> bytes:
    return gzip.compress(data)
