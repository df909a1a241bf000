"""Own a private tracefs instance: find/mount tracefs, enable events, filter pids, drain.

The harness never touches the global buffer, ``set_event`` or ``tracing_on``:
it creates ``instances/kapi-selftests-<pid>-<n>``, configures it, and removes it
on exit, error or Ctrl-C. Events are toggled with ``writev(2)``, which has no
KAPI spec, so toggling leaves no half pairs in the capture. The instance uses
the ``mono`` trace clock, so event timestamps compare with
``time.monotonic_ns()`` taken around each call.

This module only moves bytes; decoding is :mod:`kapi_selftests.trace.ringbuf`.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import itertools
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from kapi_selftests.errors import MissingFeature, TraceError
from kapi_selftests.trace.events import RawCapture

if TYPE_CHECKING:
    from kapi_selftests.trace.events import RawCapture

__all__ = [
    "KAPI_EVENTS",
    "TraceInstance",
    "find_tracefs",
    "mount_tracefs",
    "missing_tracefs",
    "missing_kapi_events",
    "missing_syscall_events",
    "syscall_events",
]

log = logging.getLogger(__name__)

KAPI_EVENTS = (("kapi", "kapi_syscall_enter"), ("kapi", "kapi_syscall_exit"))
_CANDIDATES = (Path("/sys/kernel/tracing"), Path("/sys/kernel/debug/tracing"))
_counter = itertools.count()


def find_tracefs() -> Path | None:
    """The tracefs mount point, or None when tracefs is not mounted."""
    for p in _CANDIDATES:
        if (p / "instances").is_dir() and (p / "events").is_dir():
            return p
    try:
        with open("/proc/mounts") as f:
            for line in f:
                parts = line.split()
                if len(parts) > 2 and parts[2] == "tracefs":
                    return Path(parts[1])
    except OSError:
        pass
    return None


def mount_tracefs(target: Path = _CANDIDATES[0]) -> Path:
    """Mount tracefs at ``target`` (needs root) and return it.

    :raises MissingFeature: not root, or the kernel has no tracefs (CONFIG_TRACING)
    """
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    if libc.mount(b"nodev", str(target).encode(), b"tracefs", 0, None) != 0:
        e = ctypes.get_errno()
        raise MissingFeature(
            f"cannot mount tracefs at {target}: {os.strerror(e)}",
            hint="run as root on a kernel with CONFIG_TRACING=y",
        )
    return target


def missing_tracefs(root: Path | None) -> str | None:
    """Skip reason when tracefs cannot be used by us, else None."""
    if os.geteuid() != 0:
        return "not root (tracefs instances need root; run the guest suite as root or in the VM)"
    if root is None:
        return "tracefs not mounted (mount -t tracefs nodev /sys/kernel/tracing)"
    if not (root / "instances").is_dir():
        return f"{root} has no instances/ directory (kernel too old for trace instances)"
    return None


def missing_kapi_events(root: Path | None) -> str | None:
    """Skip reason when the kapi tracepoints are absent, else None."""
    reason = missing_tracefs(root)
    if reason:
        return reason
    assert root is not None
    if not (root / "events/kapi/kapi_syscall_enter").is_dir():
        return "kernel has no kapi tracepoints (build with CONFIG_KAPI_RUNTIME_CHECKS=y)"
    return None


def syscall_events(names: Iterable[str]) -> tuple[tuple[str, str], ...]:
    """The generic ``syscalls:sys_enter_<name>``/``sys_exit_<name>`` events of ``names``."""
    out: list[tuple[str, str]] = []
    for n in names:
        n = n.removeprefix("sys_")
        out += [("syscalls", f"sys_enter_{n}"), ("syscalls", f"sys_exit_{n}")]
    return tuple(out)


def missing_syscall_events(root: Path | None, names: Iterable[str] = ("read",)) -> str | None:
    """Skip reason when the generic syscall events are absent (CONFIG_FTRACE_SYSCALLS)."""
    reason = missing_tracefs(root)
    if reason:
        return reason
    assert root is not None
    for system, event in syscall_events(names):
        if not (root / "events" / system / event).is_dir():
            return f"kernel has no {system}:{event} event (build with CONFIG_FTRACE_SYSCALLS=y)"
    return None


def _writev(path: Path, data: str) -> None:
    # writev(2) has no KAPI spec: toggling events with it leaves no half pairs.
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC)
    try:
        os.writev(fd, [data.encode()])
    except OSError as e:
        raise TraceError(f"writing {data!r} to {path} failed: {e.strerror}") from e
    finally:
        os.close(fd)


def _readv_all(path: Path, nonblock: bool = False, chunk: int = 1 << 16) -> bytes:
    # readv(2), not read(2): reading the buffer must not add kapi sys_read events.
    flags = os.O_RDONLY | os.O_CLOEXEC | (os.O_NONBLOCK if nonblock else 0)
    fd = os.open(path, flags)
    parts: list[bytes] = []
    try:
        buf = bytearray(chunk)
        while True:
            try:
                n = os.readv(fd, [buf])
            except BlockingIOError:
                break
            if n <= 0:
                break
            parts.append(bytes(buf[:n]))
    finally:
        os.close(fd)
    return b"".join(parts)


def _ensure_std_fds() -> None:
    # With fd 0, 1 or 2 closed (CI without stdin), our own fds would take those
    # numbers, and a test that closes "stdin" would close the tracing_on fd.
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open("/dev/null", os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)


class TraceInstance:
    """A private tracefs instance, configured and removed by this object.

    :param events: ``(system, event)`` pairs to enable, e.g. :data:`KAPI_EVENTS`
    :param pids: tids to trace (``set_event_pid``); threads they create are followed
    :param buffer_kb: per-CPU ring-buffer size
    :param root: tracefs mount point (found or mounted when None)
    """

    def __init__(self, events: Sequence[tuple[str, str]], *, pids: Sequence[int] = (),
                 buffer_kb: int = 4096, root: Path | None = None) -> None:
        self.root = root or find_tracefs() or mount_tracefs()
        reason = missing_tracefs(self.root)
        if reason:
            raise MissingFeature(reason)
        for system, event in events:
            if not (self.root / "events" / system / event).is_dir():
                raise MissingFeature(f"no trace event {system}:{event} in {self.root}/events")
        self.events = tuple(events)
        self.pids = tuple(pids)
        self.buffer_kb = buffer_kb
        self.name = f"kapi-selftests-{os.getpid()}-{next(_counter)}"
        self.path = self.root / "instances" / self.name
        self._created = False
        self._on_fd = -1

    # -- life cycle ----------------------------------------------------------------------

    def __enter__(self) -> TraceInstance:
        self.create()
        return self

    def __exit__(self, t: type[BaseException] | None, v: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.remove()

    def create(self) -> None:
        _ensure_std_fds()
        try:
            self.path.mkdir()
        except OSError as e:
            raise MissingFeature(f"cannot create trace instance {self.path}: {e.strerror}") from e
        self._created = True
        try:
            _writev(self.path / "tracing_on", "0")
            _writev(self.path / "buffer_size_kb", str(self.buffer_kb))
            if (self.path / "trace_clock").exists():
                _writev(self.path / "trace_clock", "mono")
            if self.pids:
                _writev(self.path / "options/event-fork", "1")
                _writev(self.path / "set_event_pid", " ".join(map(str, self.pids)))
            for system, event in self.events:
                _writev(self.path / "events" / system / event / "enable", "1")
            # Kept open: closing it inside a capture window would trace a sys_close.
            self._on_fd = os.open(self.path / "tracing_on", os.O_WRONLY | os.O_CLOEXEC)
        except BaseException:
            self.remove()
            raise
        log.info("trace instance %s: events %s, pids %s", self.path,
                 ",".join(f"{s}:{e}" for s, e in self.events), self.pids or "all")

    def remove(self) -> None:
        """Disable everything and remove the instance; safe to call twice."""
        if not self._created:
            return
        if self._on_fd >= 0:
            os.close(self._on_fd)
            self._on_fd = -1
        try:
            _writev(self.path / "tracing_on", "0")
            for system, event in self.events:
                _writev(self.path / "events" / system / event / "enable", "0")
        except (OSError, TraceError) as e:
            log.warning("disabling %s: %s", self.path, e)
        for attempt in range(50):
            try:
                self.path.rmdir()
                break
            except OSError as e:
                if e.errno != errno.EBUSY or attempt == 49:
                    log.warning("could not remove trace instance %s: %s", self.path, e)
                    break
                os.sched_yield()
        self._created = False

    # -- tracing -------------------------------------------------------------------------

    def start(self) -> None:
        os.writev(self._on_fd, [b"1"])

    def stop(self) -> None:
        os.writev(self._on_fd, [b"0"])

    def clear(self) -> None:
        """Empty the buffer (and reset its loss counters)."""
        _writev(self.path / "trace", "")

    def cpus(self) -> list[int]:
        return sorted(int(p.name[3:]) for p in (self.path / "per_cpu").glob("cpu*"))

    def drain(self) -> RawCapture:
        """Stop tracing and read everything out: stats first, then the raw pages.

        The buffer is consumed; a following capture starts empty.
        """

        self.stop()
        stats = {c: _readv_all(self.path / f"per_cpu/cpu{c}/stats").decode() for c in self.cpus()}
        pages = {c: _readv_all(self.path / f"per_cpu/cpu{c}/trace_pipe_raw", nonblock=True,
                               chunk=4096)
                 for c in self.cpus()}
        formats = {event: _readv_all(self.root / "events" / system / event / "format").decode()
                   for system, event in self.events}
        return RawCapture(
            header_page=_readv_all(self.root / "events/header_page").decode(),
            header_event=_readv_all(self.root / "events/header_event").decode(),
            formats=formats,
            pages=pages,
            stats=stats,
        )
