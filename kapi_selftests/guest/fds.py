"""File descriptors of every kind the harness can make, inside its own scratch directory.

Setup code, not the code under test: it uses Python's ``os`` calls (``openat``,
``pipe2``, ``socketpair``...), never the raw spec'd syscalls, and only outside
capture windows. Every fd it opens it closes; every file it creates lies under
the scratch directory.
"""

from __future__ import annotations

import fcntl
import io
import os
import socket
import sys
import tempfile
from pathlib import Path
from types import TracebackType

from kapi_selftests.plan import STD_FDS, FdKind

__all__ = ["FdPool", "max_offset", "own_std_fds", "std_fds_owned"]


_owned_std = False


def std_fds_owned() -> bool:
    """Whether :func:`own_std_fds` made fds 0-2 the harness's in this process."""
    return _owned_std


def own_std_fds() -> None:
    """Make fds 0, 1 and 2 the harness's, so calls may name them (the fd range's low edge).

    What the process reads and prints through them moves to new fds first
    (``sys.stdin``/``sys.stdout``/``sys.stderr`` follow), then ``/dev/null`` holds each
    number until a call plan asks for it (:meth:`FdPool.make` puts a scratch file
    there). For the guest, where the process and its fds 0-2 are the harness's alone.
    Idempotent.
    """
    global _owned_std
    if _owned_std:
        return

    for fd, name in ((0, "stdin"), (1, "stdout"), (2, "stderr")):
        try:
            saved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
        except OSError:
            saved = os.open("/dev/null", os.O_RDWR | os.O_CLOEXEC)
        mode = "r" if fd == 0 else "w"
        stream = io.TextIOWrapper(io.FileIO(saved, mode), line_buffering=fd != 0,
                                  errors="backslashreplace")
        setattr(sys, name, stream)
        setattr(sys, f"__{name}__", stream)
        null = os.open("/dev/null", os.O_RDWR)
        if null != fd:
            os.dup2(null, fd, inheritable=True)
            os.close(null)
    _owned_std = True


def _hold_std(fd: int) -> None:
    # keep a standard number taken (by /dev/null), so no other open() lands on it
    null = os.open("/dev/null", os.O_RDWR)
    if null != fd:
        os.dup2(null, fd, inheritable=True)
        os.close(null)


def max_offset(fd: int) -> int:
    """The largest offset ``lseek`` accepts on ``fd`` (the file system's ``s_maxbytes``)."""
    lo, hi = 0, (1 << 63) - 1
    try:
        return os.lseek(fd, hi, os.SEEK_SET)  # tmpfs and most: LLONG_MAX
    except OSError:
        pass
    while lo < hi:  # EINVAL above the limit: bisect it
        mid = (lo + hi + 1) // 2
        try:
            os.lseek(fd, mid, os.SEEK_SET)
            lo = mid
        except OSError:
            hi = mid - 1
    return lo


class FdPool:
    """Makes fds by kind in a private scratch directory; closes them all on exit.

    :param scratch: directory for files (a private temporary one when None)
    """

    CONTENT = b"kapi-selftests\n" * 64

    def __init__(self, scratch: Path | None = None) -> None:
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if scratch is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="kapi-scratch-")
            scratch = Path(self._tmp.name)
        self.scratch = scratch
        self._open: dict[int, tuple[int, int]] = {}  # fd -> (st_dev, st_ino) at creation
        self._keep: list[socket.socket] = []
        self._sock: dict[int, tuple[int, int]] = {}  # socket fd -> (st_ino, st_dev)
        self._n = 0

    def __enter__(self) -> FdPool:
        return self

    def __exit__(self, t: type[BaseException] | None, v: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def release(self) -> None:
        """Close every fd made so far (the scratch directory stays).

        An fd the syscall under test closed may have been reused since: only a
        number that still names the file it was made for is closed.
        """
        for fd, ident in sorted(self._open.items()):
            try:
                st = os.fstat(fd)
            except OSError:
                st = None  # closed by the syscall under test
            if fd <= 2 and _owned_std:
                _hold_std(fd)  # dup2 (no spec) closes the file: a kernel that refuses
                continue       # close(0) must not stop the harness, only fail its calls
            if st is not None and (st.st_dev, st.st_ino) == ident:
                os.close(fd)
        self._open.clear()
        for s in self._keep:
            # the syscall under test may have closed the socket's own fd (a "closed" fd
            # number reused, say) and another file may have its number now: close it
            # only if it still names this socket, else just forget the number
            fd = s.fileno()
            try:
                same = fd >= 0 and (os.fstat(fd).st_ino, os.fstat(fd).st_dev) == self._sock[fd]
            except (OSError, KeyError):
                same = False
            if same:
                s.close()
            else:
                s.detach()
        self._keep.clear()
        self._sock.clear()

    def close(self) -> None:
        self.release()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def new_path(self, stem: str = "f") -> Path:
        self._n += 1
        return self.scratch / f"{stem}{self._n}"

    def _keep_socket(self, s: socket.socket) -> None:
        st = os.fstat(s.fileno())
        self._keep.append(s)
        self._sock[s.fileno()] = (st.st_ino, st.st_dev)

    def _track(self, fd: int) -> int:
        st = os.fstat(fd)
        self._open[fd] = (st.st_dev, st.st_ino)
        return fd

    def make(self, kind: FdKind) -> int:
        """A fresh fd of ``kind`` (for CLOSED: a number that is not open right now)."""
        if kind in (FdKind.REGULAR, FdKind.REGULAR_RDONLY, FdKind.REGULAR_WRONLY):
            path = self.new_path()
            path.write_bytes(self.CONTENT)
            mode = {FdKind.REGULAR: os.O_RDWR, FdKind.REGULAR_RDONLY: os.O_RDONLY,
                    FdKind.REGULAR_WRONLY: os.O_WRONLY}[kind]
            return self._track(os.open(path, mode | os.O_CLOEXEC))
        if kind is FdKind.DIRECTORY:
            return self._track(os.open(self.scratch, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))
        if kind in (FdKind.PIPE_READ, FdKind.PIPE_WRITE):
            r, w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
            self._track(r)
            self._track(w)
            if kind is FdKind.PIPE_READ:
                os.write(w, b"pipe data")
                return r
            return w
        if kind is FdKind.SOCKET:
            a, b = socket.socketpair()
            a.setblocking(False)  # shared with the dup: a large write must not block
            self._keep_socket(a)
            self._keep_socket(b)
            b.send(b"socket data")
            return self._track(os.dup(a.fileno()))
        if kind in (FdKind.DEV_NULL, FdKind.DEV_ZERO, FdKind.DEV_FULL):
            dev = {FdKind.DEV_NULL: "/dev/null", FdKind.DEV_ZERO: "/dev/zero",
                   FdKind.DEV_FULL: "/dev/full"}[kind]
            return self._track(os.open(dev, os.O_RDWR | os.O_CLOEXEC))
        if kind is FdKind.EVENTFD:
            return self._track(os.eventfd(1, os.EFD_CLOEXEC | os.EFD_NONBLOCK))
        if kind is FdKind.PIPE_BROKEN:
            r, w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
            os.close(r)  # (Python ignores SIGPIPE: a write fails with EPIPE)
            return self._track(w)
        if kind is FdKind.REGULAR_AT_MAX:
            path = self.new_path()
            path.write_bytes(self.CONTENT)
            fd = self._track(os.open(path, os.O_RDWR | os.O_CLOEXEC))
            os.lseek(fd, max_offset(fd), os.SEEK_SET)
            return fd
        if kind is FdKind.SOCKET_DGRAM:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.setblocking(False)
            self._keep_socket(s)
            return self._track(os.dup(s.fileno()))
        if kind is FdKind.O_PATH:
            path = self.new_path()
            path.write_bytes(self.CONTENT)
            return self._track(os.open(path, os.O_PATH | os.O_CLOEXEC))
        if kind in STD_FDS:
            if not _owned_std:
                raise ValueError(f"fd kind {kind.value}: fds 0-2 are not the harness's here "
                                 "(own_std_fds() first)")
            path = self.new_path()
            path.write_bytes(self.CONTENT)
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
            std = STD_FDS[kind]
            if fd != std:
                os.dup2(fd, std, inheritable=True)
                os.close(fd)
            return self._track(std)
        if kind is FdKind.CLOSED:
            # A high number the lowest-free allocation of later fds will not reuse.
            tmp = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
            fd = fcntl.fcntl(tmp, fcntl.F_DUPFD_CLOEXEC, 512 + self._n % 256)
            self._n += 1
            os.close(fd)
            os.close(tmp)
            return fd
        raise ValueError(f"unknown fd kind {kind!r}")

    def is_open(self, fd: int) -> bool:
        try:
            os.fstat(fd)
        except OSError:
            return False
        return True
