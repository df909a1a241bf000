"""Guest side of a fast campaign: fixed resources, call tables in, raw traces out.

The campaign's Python work (generate, materialise, predict, decode, pair,
judge) runs on the host, several times faster than in a TCG guest; the guest
only issues calls. :class:`Resources` makes, once, everything a plan can name:
one fd per :class:`~kapi_selftests.plan.FdKind` at a fixed number (a *slot*), one
large read-write region ending at a guard page (any ``MAPPED``/``GUARD_TAIL``/
``SHORT``/``UNALIGNED`` buffer of up to its size lies in it), a read-only
region, an unmapped page, and every kind of path string. Its
:meth:`~Resources.manifest` tells the host where they are, with the memory facts
the oracle needs (the bytes of every path string). Between batches
:meth:`~Resources.reset` re-makes what calls consumed (closed slots, drained
pipes, written files, created names), keeping the numbers and addresses.

:class:`Agent` runs one table per capture window (:mod:`kapi_selftests.guest.cexec`)
and hands back the results and the raw trace pages; :func:`serve_shm` does that
over shared memory (:mod:`kapi_selftests.link.shm`, the host's
:class:`~kapi_selftests.fuzz.remote.ShmLink`) and :func:`serve` over a directory (the
guest's output share, :class:`~kapi_selftests.fuzz.remote.DirLink`).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import logging
import os
import resource
import struct
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from kapi_selftests.arch import PATH_MAX
from kapi_selftests.errors import MissingFeature
from kapi_selftests.guest import cexec
from kapi_selftests.guest.executor import SPEC_SYSCALLS, find_event_source
from kapi_selftests.guest.fds import FdPool, own_std_fds, std_fds_owned
from kapi_selftests.guest.memory import Arena
from kapi_selftests.guest.tracefs import KAPI_EVENTS, TraceInstance, syscall_events
from kapi_selftests.link import shm
from kapi_selftests.link.shm import wait_until
from kapi_selftests.oracle.spec import specs_files, write_specs
from kapi_selftests.plan import MADE_FDS, PATH_LENGTHS, REGION_SIZE, STD_FDS, FdKind, PathKind
from kapi_selftests.records import EventSource
from kapi_selftests.trace.capture import write_capture_dir
from kapi_selftests.trace.events import RawCapture

__all__ = ["Resources", "Agent", "serve", "serve_shm", "NEW_NAMES", "SLOT_BASE"]

log = logging.getLogger(__name__)

#: distinct names for PathKind.NEW (the host cycles through them; unlinked per batch)
NEW_NAMES = 256
#: an agent with no table for this long stops (its host is gone)
IDLE_TIMEOUT_S = 600.0
#: fds of the resource set live at SLOT_BASE + k, far above what a batch's opens reach
SLOT_BASE = 1500
_FD_KINDS = list(MADE_FDS)


class Resources:
    """Everything a call plan can name, at addresses and fd numbers fixed for a session."""

    def __init__(self) -> None:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        base = SLOT_BASE
        if hard != resource.RLIM_INFINITY and hard < base + 64:
            base = max(hard - 64, 256)  # a low hard limit: slots just below it
        if soft < base + 64:
            resource.setrlimit(resource.RLIMIT_NOFILE, (base + 64, hard))
        self.arena = Arena()
        self.pool = FdPool()
        self.scratch = self.pool.scratch
        self.slots: dict[FdKind, int] = {k: base + i for i, k in enumerate(_FD_KINDS)}
        self.slots[FdKind.CLOSED] = base + 63
        if std_fds_owned():  # fds 0-2 are slots too (the fd range's low edge)
            self.slots.update(STD_FDS)
        ar = self.arena
        self.top = ar.top_page()
        self.rw = ar.guard_tail(REGION_SIZE)
        self.ro = ar.readonly(REGION_SIZE)
        self.unmapped = ar.unmapped()
        self.kernel = ar.kernel_address()
        sc = str(self.scratch).encode()
        self.existing = self.scratch / "existing"
        self.new = [self.scratch / f"new{i}" for i in range(NEW_NAMES)]
        loop = self.scratch / "loop"
        os.symlink(loop.name, loop)
        texts: dict[PathKind, bytes] = {
            PathKind.EXISTING: bytes(self.existing),
            PathKind.MISSING: sc + b"/nodir/file",
            PathKind.DIRECTORY: sc,
            PathKind.EMPTY: b"",
            PathKind.COMPONENT_TOO_LONG: sc + b"/" + b"n" * 256,
            PathKind.SYMLINK_LOOP: bytes(loop),
            PathKind.DEV_NULL: b"/dev/null",
        }
        self.paths: dict[PathKind, int] = {k: ar.cstring(t) for k, t in texts.items()}
        for k, n in PATH_LENGTHS.items():
            self.paths[k] = ar.path_of_len(n, base=str(self.scratch))
        self.paths[PathKind.UNTERMINATED] = ar.unterminated(sc + b"/unterminated")
        self.paths[PathKind.UNMAPPED] = self.unmapped
        self.paths[PathKind.NULL] = 0
        self.paths[PathKind.KERNEL] = self.kernel
        self.new_addrs = [ar.cstring(bytes(p)) for p in self.new]
        self.reset()

    def reset(self) -> None:
        """Re-make every slot fd and file (same numbers and paths), remove created names."""
        self._close_slots()
        self.pool.release()
        # 0, 1 and 2 first: closed with the slots, they would be where the fds made next
        # land, and a pipe end there would be closed when a scratch file is put on it
        for std in STD_FDS:
            if std in self.slots:
                self.pool.make(std)  # a fresh scratch file on 0, 1 or 2
        for k in _FD_KINDS:
            fd = self.pool.make(k)
            os.dup2(fd, self.slots[k], inheritable=False)
            os.close(fd)
        self.existing.write_bytes(FdPool.CONTENT)
        with os.scandir(self.scratch) as it:  # only the NEW names calls created
            made = [e.path for e in it if e.name.startswith("new")]
        for path in made:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    def close(self) -> None:
        self._close_slots()
        self.pool.close()
        self.arena.close()

    def _close_slots(self) -> None:
        for fd in self.slots.values():
            with contextlib.suppress(OSError):  # a call of the batch closed it
                os.close(fd)

    def manifest(self) -> dict[str, Any]:
        """Where everything is, and what the oracle may know about it (JSON)."""
        strings: dict[str, Any] = {}
        for addr in [*self.paths.values(), *self.new_addrs]:
            if addr in (0, self.unmapped, self.kernel):
                continue
            n = self.arena.strnlen(addr, PATH_MAX + 2)
            if n is None:  # no NUL before a fault: the bytes up to the guard page
                data, terminated = self._readable_bytes(addr), False
            else:
                data, terminated = self.arena.read(addr, n + 1), True  # with its NUL
            strings[str(addr)] = {"hex": data.hex(), "terminated": terminated}
        return {
            "pid": os.getpid(), "scratch": str(self.scratch),
            "fds": {k.value: fd for k, fd in self.slots.items()},
            "rw": [self.rw, REGION_SIZE], "ro": [self.ro, REGION_SIZE],
            "unmapped": self.unmapped, "kernel": self.kernel, "top": self.top,
            "paths": {k.value: a for k, a in self.paths.items()},
            "new_paths": self.new_addrs, "strings": strings,
        }

    def _readable_bytes(self, addr: int) -> bytes:
        n = 0
        while self.arena.accessible(addr, n + 1):
            n += 1
        return self.arena.read(addr, n)


class Agent:
    """Issues call tables in capture windows on the running kernel (root, tracefs).

    :param lib: the compiled executor (None: the ctypes loop)
    :param source: event source (probed when None)
    :param kcov: report each call's kernel coverage (KCOV; needs ``lib``, and a kernel
        with ``CONFIG_KCOV``); turned on for the thread that enters the agent, which
        must be the one that runs the tables
    """

    def __init__(self, lib: Path | None = None, source: EventSource | None = None, *,
                 buffer_kb: int = 16384, kcov: bool = False) -> None:
        self.source = source or find_event_source()
        self.lib = cexec.load(lib)
        self.kcov = kcov
        events = KAPI_EVENTS if self.source is EventSource.KAPI else syscall_events(SPEC_SYSCALLS)
        self.trace = TraceInstance(events, pids=[threading.get_native_id()],
                                   buffer_kb=buffer_kb)
        self.resources: Resources | None = None
        #: seconds spent per phase (reported when the agent stops)
        self.times = {"issue": 0.0, "drain": 0.0, "reset": 0.0, "io": 0.0}

    def __enter__(self) -> Agent:
        if self.kcov:  # first: a kernel without KCOV leaves nothing behind
            try:
                cexec.cov_open(self.lib)
            except OSError as e:
                raise MissingFeature(f"kernel has no KCOV ({e.strerror})" if e.errno in (
                    errno.ENOENT, errno.ENODEV) else f"KCOV: {e.strerror}",
                    hint="build the kernel with vm/kcov.config (CONFIG_KCOV=y)") from e
        self.trace.create()
        self.resources = Resources()
        return self

    def __exit__(self, t: type[BaseException] | None, v: BaseException | None,
                 tb: TracebackType | None) -> None:
        try:
            if self.resources is not None:
                self.resources.close()
        finally:
            self.trace.remove()

    def manifest(self) -> dict[str, Any]:
        assert self.resources is not None
        return {**self.resources.manifest(), "source": self.source.value,
                "executor": "c" if self.lib is not None else "ctypes", "kcov": self.kcov}

    def run(self, table: bytes, n: int) -> tuple[bytes, int, RawCapture]:
        """Issue the ``n`` calls of ``table`` in one capture window; reset the resources.

        :return: the results (``cexec`` layout), the issuing thread's id, the trace
        """
        assert self.resources is not None
        t0 = time.monotonic()
        self.trace.start()
        try:
            results, tid = cexec.run_table(self.lib, table, n, kcov=self.kcov)
        finally:
            self.trace.stop()
        t1 = time.monotonic()
        raw = self.trace.drain()
        t2 = time.monotonic()
        self.resources.reset()
        t3 = time.monotonic()
        for k, dt in (("issue", t1 - t0), ("drain", t2 - t1), ("reset", t3 - t2)):
            self.times[k] += dt
        return results, tid, raw


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def serve(agent: Agent, d: Path, *, idle_timeout_s: float = IDLE_TIMEOUT_S,
          stop: Callable[[], bool] = lambda: False) -> int:
    """Serve tables from directory ``d`` until ``d/stop`` appears; return batches run.

    Protocol (host: :class:`kapi_selftests.fuzz.remote.DirLink`): the agent writes
    ``manifest.json`` (and ``kapi/``, the debugfs specs); the host writes ``in-N.bin``
    (u64 call count, then the ``cexec`` table); the agent answers with the directory
    ``out-N/`` (``results.bin``: u64 tid, then the ``cexec`` results; and a capture
    directory), renamed into place when complete.
    """
    return _serve(agent, _DirEnd(d), idle_timeout_s, stop)


def serve_shm(agent: Agent, ch: Any, *, idle_timeout_s: float = IDLE_TIMEOUT_S,
              stop: Callable[[], bool] = lambda: False) -> int:
    """Serve tables over a :class:`kapi_selftests.link.shm.Channel` until the host stops it."""
    return _serve(agent, _ShmEnd(ch), idle_timeout_s, stop)


class _DirEnd:
    """The agent's end of a directory link."""

    #: longest nap while polling the directory (each poll is a 9p round trip)
    nap_max_s = 0.02

    def __init__(self, d: Path) -> None:
        self.d = d

    def publish(self, manifest: Mapping[str, Any]) -> None:
        # the spec dump as files, then the manifest (the host waits for it)
        self.d.mkdir(parents=True, exist_ok=True)
        write_specs(specs_files(), self.d / "kapi")
        _write_atomic(self.d / "manifest.json", json.dumps(manifest).encode())

    def posted(self, n: int) -> bool:
        return (self.d / f"in-{n}.bin").is_file()

    def stopped(self) -> bool:
        return (self.d / "stop").exists()

    def get(self, n: int) -> tuple[bytes, int]:
        data = (self.d / f"in-{n}.bin").read_bytes()
        return data[8:], int(struct.unpack_from("<Q", data)[0])

    def put_error(self, d: Mapping[str, Any]) -> None:
        self.d.mkdir(parents=True, exist_ok=True)
        _write_atomic(self.d / "manifest.json", json.dumps(d).encode())

    def put(self, n: int, results: bytes, tid: int, raw: RawCapture) -> None:
        tmp = self.d / f"out-{n}.tmp"
        write_capture_dir(raw, tmp)
        (tmp / "results.bin").write_bytes(struct.pack("<Q", tid) + results)
        os.replace(tmp, self.d / f"out-{n}")
        (self.d / f"in-{n}.bin").unlink()


class _ShmEnd:
    """The agent's end of a shared-memory channel."""

    nap_max_s = 0.002

    def __init__(self, ch: Any) -> None:
        self.ch = ch

    def publish(self, manifest: Mapping[str, Any]) -> None:
        # the spec dump travels in the manifest
        self.ch.put_manifest(json.dumps({**manifest, "specs_files": specs_files()}).encode())

    def posted(self, n: int) -> bool:
        return bool(self.ch.posted > n)

    def stopped(self) -> bool:
        return bool(self.ch.stopped)

    def get(self, n: int) -> tuple[bytes, int]:
        table, calls = self.ch.get_table(n)
        return table, int(calls)

    def put_error(self, d: Mapping[str, Any]) -> None:
        self.ch.put_manifest(json.dumps(d).encode())

    def put(self, n: int, results: bytes, tid: int, raw: RawCapture) -> None:

        self.ch.put_out(n, shm.pack_out(results, tid, raw))


def _await_table(end: _DirEnd | _ShmEnd, n: int) -> None:
    # a short wait: the serving loop checks stop() and the idle time in between
    with contextlib.suppress(TimeoutError):
        wait_until(lambda: end.posted(n) or end.stopped(), timeout_s=2.0,
                   nap_max_s=end.nap_max_s)


def _serve(agent: Agent, end: _DirEnd | _ShmEnd, idle_timeout_s: float,
           stop: Callable[[], bool]) -> int:
    # The manifest, then tables in order until the host stops the link, or none came
    # for idle_timeout_s.
    end.publish(agent.manifest())
    n = 0
    idle_since = time.monotonic()
    while not stop():
        if not end.posted(n):
            if end.stopped():
                break
            if time.monotonic() - idle_since > idle_timeout_s:
                log.warning("agent: no table for %.0f s: stopping", idle_timeout_s)
                break
            _await_table(end, n)
            continue
        _test_crash(n)
        t0 = time.monotonic()
        table, calls = end.get(n)
        t1 = time.monotonic()
        results, tid, raw = agent.run(table, calls)
        t2 = time.monotonic()
        end.put(n, results, tid, raw)
        agent.times["io"] += t1 - t0 + time.monotonic() - t2
        n += 1
        idle_since = time.monotonic()
    return n


def _test_crash(n: int) -> None:
    # Test hook (tests/vm): KAPI_TEST_CRASH_AT_BATCH=N crashes the kernel, once (a marker
    # in the working directory, the guest's output share), before batch N runs.
    at = os.environ.get("KAPI_TEST_CRASH_AT_BATCH")
    marker = Path(".kapi-test-crashed")
    if at is None or int(at) != n or marker.exists():
        return
    marker.touch()
    os.sync()
    Path("/proc/sysrq-trigger").write_text("c")


def main(argv: list[str] | None = None) -> int:
    """Guest entry: ``agent --dir D [--lib SO] [--source kapi|syscalls]``; serve until stopped."""

    p = argparse.ArgumentParser(prog="kapi-selftests agent", description=main.__doc__)
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--dir", type=Path, help="serve over this directory (the output share)")
    where.add_argument("--shm", action="store_true",
                       help="serve over the ivshmem-plain shared memory (kapi_selftests.link.shm)")
    p.add_argument("--lib", type=Path, help="the compiled batch executor (default: ctypes)")
    p.add_argument("--source", choices=[s.value for s in EventSource])
    p.add_argument("--heartbeat-s", type=float, default=10.0)
    p.add_argument("--kcov", action="store_true",
                   help="report each call's kernel coverage (CONFIG_KCOV)")
    a = p.parse_args(argv)
    if os.environ.get("KAPI_IN_GUEST") == "1":
        own_std_fds()  # the guest's agent alone uses fds 0-2: calls may name them
    logging.basicConfig(level=logging.WARNING, format="agent: %(message)s")
    lib = a.lib if a.lib is not None and a.lib.is_file() else None
    if a.lib is not None and lib is None:
        log.warning("%s not readable here: using ctypes", a.lib)
    try:
        end: _DirEnd | _ShmEnd
        if a.shm:
            dev = shm.find_guest_device()
            if dev is None:
                raise RuntimeError("no ivshmem-plain device (start QEMU with "
                                   "kapi_selftests.link.shm.qemu_args)")
            end = _ShmEnd(shm.open_guest(dev))
        else:
            end = _DirEnd(a.dir)
    except Exception as e:  # one line for the host's log, never a bare traceback
        print(f"kapi-selftests agent: error: {type(e).__name__}: {e}", file=sys.stderr)
        return 4
    try:
        with Agent(lib, EventSource(a.source) if a.source else None, kcov=a.kcov) as ag:
            last = [time.monotonic()]

            def beat() -> bool:
                # the host's watchdog wants console output now and then
                if time.monotonic() - last[0] >= a.heartbeat_s:
                    print("kapi-selftests agent: alive", file=sys.stderr, flush=True)
                    last[0] = time.monotonic()
                return False

            count = _serve(ag, end, IDLE_TIMEOUT_S, beat)
    except Exception as e:  # one line for the host's log, never a bare traceback
        print(f"kapi-selftests agent: error: {type(e).__name__}: {e}", file=sys.stderr)
        # and the same line where the host waits for the manifest (it says what to do)
        with contextlib.suppress(Exception):
            end.put_error({"error": str(e), "hint": getattr(e, "hint", None),
                           "missing": isinstance(e, MissingFeature)})
        return 4
    times = ", ".join(f"{k} {v:.2f} s" for k, v in ag.times.items())
    print(f"kapi-selftests agent: served {count} batches ({times})", file=sys.stderr)
    return 0
