"""A shared-memory channel between the host and a guest's agent (QEMU ``ivshmem-plain``).

Under TCG the output share (9p) moved a fuzzing batch's table, results and trace
pages at ~3 MB/s: a third of a campaign's time. ``ivshmem-plain`` exposes a host
file (in ``/dev/shm``) to the guest as a PCI BAR; the guest maps it through
sysfs (``resource2``; no driver), the host maps the same file: a table or a
batch's trace is then one ``memcpy`` on each side.

Layout (:data:`SIZE` bytes, a power of two as ivshmem wants):

- page 0, the header (u64 words): magic, manifest length, tables posted (host),
  results posted (guest), stop, then per slot the table length and call count,
  and the result length;
- the manifest (JSON, written once by the guest) at :data:`MAN_OFF`;
- two table slots and two result slots (batch ``n`` uses slot ``n % 2``), so the
  host can post batch ``n+1`` while the guest issues batch ``n``.

One writer per word; a writer stores the data before the counter that
publishes it (x86 keeps stores in order, and the guest's single TCG thread sees
host stores to the file in order).
"""

from __future__ import annotations

import json
import mmap
import os
import struct
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from kapi_selftests.trace.events import RawCapture

__all__ = ["SIZE", "Channel", "find_guest_device", "open_guest", "create_host", "qemu_args",
           "pack_out", "unpack_out"]

SIZE = 64 << 20
MAGIC = int.from_bytes(b"KAPISHM1", "little")
MAN_OFF, MAN_MAX = 1 << 20, 1 << 20
IN_OFF, IN_MAX = 2 << 20, 6 << 20  # two slots
OUT_OFF, OUT_MAX = 16 << 20, 24 << 20  # two slots
_W_MAGIC, _W_MAN, _W_POSTED, _W_DONE, _W_STOP = 0, 1, 2, 3, 4
_W_IN = 8  # 8, 9: slot 0 length, calls; 10, 11: slot 1
_W_OUT = 12  # 12, 13: result length per slot
IVSHMEM_VENDOR, IVSHMEM_DEVICE = "0x1af4", "0x1110"


def wait_until(ready: Callable[[], bool], *, timeout_s: float,
               alive: Callable[[], str | None] = lambda: None, what: str = "the other side",
               nap_max_s: float = 0.002) -> None:
    """Poll until ``ready()``, napping 0.2 ms at first and doubling up to ``nap_max_s``.

    A batch takes ~0.1 s: oversleeping is lost time, so the naps stay short.

    :raises TimeoutError: not ready within ``timeout_s``
    :raises RuntimeError: ``alive()`` gave a reason the other side cannot answer
    """
    t0 = time.monotonic()
    nap = 0.0002
    while not ready():
        reason = alive()
        if reason:
            raise RuntimeError(reason)
        if time.monotonic() - t0 > timeout_s:
            raise TimeoutError(f"no {what} in {timeout_s:.0f} s")
        time.sleep(nap)
        nap = min(nap * 2, nap_max_s)


class Channel:
    """The shared region, with the protocol's reads and writes (both sides)."""

    def __init__(self, mm: mmap.mmap) -> None:
        self.mm = mm

    def word(self, i: int) -> int:
        return int(struct.unpack_from("<Q", self.mm, 8 * i)[0])

    def set_word(self, i: int, v: int) -> None:
        struct.pack_into("<Q", self.mm, 8 * i, v)

    # --- guest side --------------------------------------------------------------------

    def put_manifest(self, data: bytes) -> None:
        if len(data) > MAN_MAX:
            raise ValueError(f"manifest of {len(data)} bytes exceeds {MAN_MAX}")
        self.mm[MAN_OFF:MAN_OFF + len(data)] = data
        self.set_word(_W_MAN, len(data))

    def get_table(self, n: int) -> tuple[bytes, int]:
        k = n % 2
        length, calls = self.word(_W_IN + 2 * k), self.word(_W_IN + 2 * k + 1)
        off = IN_OFF + k * (IN_MAX // 2)
        return bytes(self.mm[off:off + length]), calls

    def _fill_slot(self, base: int, size: int, n: int, data: bytes, what: str) -> None:
        # batch n uses slot n % 2 of the area at base (two slots of size // 2)
        if len(data) > size // 2:
            raise ValueError(f"{what} of {len(data)} bytes exceeds {size // 2}: "
                             "use smaller batches")
        off = base + (n % 2) * (size // 2)
        self.mm[off:off + len(data)] = data

    def put_out(self, n: int, data: bytes) -> None:
        self._fill_slot(OUT_OFF, OUT_MAX, n, data, "batch output")
        self.set_word(_W_OUT + n % 2, len(data))
        self.set_word(_W_DONE, n + 1)

    # --- host side ---------------------------------------------------------------------

    def manifest(self) -> bytes | None:
        n = self.word(_W_MAN)
        return bytes(self.mm[MAN_OFF:MAN_OFF + n]) if n else None

    def put_table(self, n: int, table: bytes, calls: int) -> None:
        self._fill_slot(IN_OFF, IN_MAX, n, table, "table")
        k = n % 2
        self.set_word(_W_IN + 2 * k, len(table))
        self.set_word(_W_IN + 2 * k + 1, calls)
        self.set_word(_W_POSTED, n + 1)

    def get_out(self, n: int) -> bytes:
        k = n % 2
        off = OUT_OFF + k * (OUT_MAX // 2)
        return bytes(self.mm[off:off + self.word(_W_OUT + k)])

    @property
    def posted(self) -> int:
        return self.word(_W_POSTED)

    @property
    def done(self) -> int:
        return self.word(_W_DONE)

    @property
    def stopped(self) -> bool:
        return self.word(_W_STOP) != 0

    def stop(self) -> None:
        self.set_word(_W_STOP, 1)

    def close(self) -> None:
        self.mm.close()


def find_guest_device(root: Path = Path("/sys/bus/pci/devices")) -> Path | None:
    """The sysfs directory of the ivshmem-plain device, if this machine has one."""
    if not root.is_dir():
        return None
    for dev in sorted(root.iterdir()):
        try:
            if (dev / "vendor").read_text().strip() == IVSHMEM_VENDOR and \
                    (dev / "device").read_text().strip() == IVSHMEM_DEVICE:
                return dev
        except OSError:
            continue
    return None


def open_guest(dev: Path) -> Channel:
    """Map the device's shared memory (BAR 2) and check the host initialised it."""
    try:
        (dev / "enable").write_text("1")  # memory decoding on (no driver does it)
    except OSError:
        pass
    fd = os.open(dev / "resource2", os.O_RDWR | os.O_SYNC)
    try:
        mm = mmap.mmap(fd, SIZE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    finally:
        os.close(fd)
    ch = Channel(mm)
    if ch.word(_W_MAGIC) != MAGIC:
        raise RuntimeError(f"{dev}/resource2: no kapi-selftests channel (magic "
                           f"{ch.word(_W_MAGIC):#x})")
    return ch


def create_host(path: Path) -> Channel:
    """Create (or reset) the shared file at ``path`` and map it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.ftruncate(fd, SIZE)
        mm = mmap.mmap(fd, SIZE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    finally:
        os.close(fd)
    ch = Channel(mm)
    ch.set_word(_W_MAGIC, MAGIC)
    return ch


def qemu_args(path: Path) -> tuple[str, ...]:
    """QEMU arguments that give the guest ``path`` as an ivshmem-plain device."""
    return ("-object", f"memory-backend-file,id=kapishm,mem-path={path},size={SIZE},share=on",
            "-device", "ivshmem-plain,memdev=kapishm")


def pack_out(results: bytes, tid: int, raw: RawCapture) -> bytes:
    """A batch's results and raw capture as one block (see :func:`unpack_out`)."""
    cpus = sorted(raw.pages)
    meta = json.dumps({"tid": tid, "results": len(results), "header_page": raw.header_page,
                       "header_event": raw.header_event, "formats": dict(raw.formats),
                       "stats": {str(c): s for c, s in raw.stats.items()},
                       "pages": [[c, len(raw.pages[c])] for c in cpus]}).encode()
    return b"".join([struct.pack("<I", len(meta)), meta, results,
                     *(raw.pages[c] for c in cpus)])


def unpack_out(data: bytes) -> tuple[bytes, int, RawCapture]:
    """The results, issuing tid and raw capture that :func:`pack_out` packed."""
    (n,) = struct.unpack_from("<I", data)
    meta: Mapping[str, Any] = json.loads(data[4:4 + n])
    off = 4 + n
    results = data[off:off + meta["results"]]
    off += meta["results"]
    pages: dict[int, bytes] = {}
    for cpu, length in meta["pages"]:
        pages[int(cpu)] = data[off:off + length]
        off += length
    raw = RawCapture(header_page=meta["header_page"], header_event=meta["header_event"],
                     formats=meta["formats"], pages=pages,
                     stats={int(c): s for c, s in meta["stats"].items()})
    return results, int(meta["tid"]), raw
