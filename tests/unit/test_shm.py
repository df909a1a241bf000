"""shm: the shared-memory channel's protocol, both ends in this process over one file."""

from __future__ import annotations

import mmap
import os
from pathlib import Path

import pytest

from kapi_selftests.link import shm
from kapi_selftests.trace.events import RawCapture


def _guest_view(path: Path) -> shm.Channel:
    fd = os.open(path, os.O_RDWR)
    try:
        return shm.Channel(mmap.mmap(fd, shm.SIZE))
    finally:
        os.close(fd)


def test_channel_carries_manifest_tables_and_results(tmp_path: Path) -> None:
    host = shm.create_host(tmp_path / "chan")
    guest = _guest_view(tmp_path / "chan")
    assert host.manifest() is None and host.posted == host.done == 0
    guest.put_manifest(b'{"pid": 1}')
    assert host.manifest() == b'{"pid": 1}'
    host.put_table(0, b"table-0", 3)
    host.put_table(1, b"table-1!", 4)  # two in flight: slots 0 and 1
    assert guest.posted == 2
    assert guest.get_table(0) == (b"table-0", 3) and guest.get_table(1) == (b"table-1!", 4)
    guest.put_out(0, b"out-0")
    assert host.done == 1 and host.get_out(0) == b"out-0"
    host.put_table(2, b"t2", 1)  # reuses slot 0
    assert guest.get_table(2) == (b"t2", 1)
    assert not guest.stopped
    host.stop()
    assert guest.stopped
    with pytest.raises(ValueError, match="smaller batches"):
        host.put_table(3, b"x" * (shm.IN_MAX // 2 + 1), 1)


def test_wait_times_out_and_reports_a_dead_peer(tmp_path: Path) -> None:
    host = shm.create_host(tmp_path / "chan")
    with pytest.raises(TimeoutError, match="no results"):
        shm.wait_until(lambda: host.done > 0, timeout_s=0.05, what="results")
    with pytest.raises(RuntimeError, match="guest exited"):
        shm.wait_until(lambda: False, timeout_s=5, alive=lambda: "the guest exited")


def test_pack_out_round_trips_a_capture() -> None:
    raw = RawCapture(header_page="hp", header_event="he", formats={"kapi_syscall_exit": "f"},
                     pages={0: b"\1" * 4096, 1: b"\2" * 8192}, stats={0: "entries: 1\n"})
    results, tid, back = shm.unpack_out(shm.pack_out(b"results", 77, raw))
    assert (results, tid) == (b"results", 77)
    assert back == raw


def test_qemu_args_name_the_file_and_a_power_of_two_size(tmp_path: Path) -> None:
    args = shm.qemu_args(tmp_path / "f")
    assert args[0] == "-object" and f"mem-path={tmp_path / 'f'}" in args[1]
    assert shm.SIZE & (shm.SIZE - 1) == 0
    assert args[2:] == ("-device", "ivshmem-plain,memdev=kapishm")
