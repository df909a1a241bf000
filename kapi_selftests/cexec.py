"""The batch executor: a table of raw syscalls issued back to back by a few lines of C.

Under TCG one ``ctypes`` call costs about 20 µs of guest time, more than the
syscall; a fuzzing batch therefore goes to :func:`run_table`, which hands the
whole table to ``kx_run`` in a small shared object (built with the host's C
compiler, cached by source hash, loaded with ``ctypes`` in the same process so
the harness's fds and mappings are valid in it). Without a compiler the same
table runs through :func:`kapi_selftests.syscalls.invoke` (same results, slower).

Per call ``kx_run`` records the return value and ``CLOCK_MONOTONIC`` just before
and after (the window the call's trace events lie in). For calls the host
expects to be rejected it also measures, before and after, up to three
*watches* (an fd's validity, offset and size; a buffer's hash; whether a path
exists and its size), with calls that have no KAPI spec (``fcntl``, ``lseek``,
``fstat``, ``newfstatat``): check 5, "a rejected call changed nothing". An fd a
successful ``open`` returned is closed at once with ``close_range`` (no spec, so
untraced), so a batch of thousands of opens cannot fill the fd table.

The table layout (:data:`CALL`, :data:`RESULT`) is shared with the host, which
builds tables with :mod:`struct` and never needs ``ctypes``.
"""

from __future__ import annotations

import ctypes
import fcntl
import hashlib
import logging
import os
import shutil
import struct
import subprocess
import threading
from pathlib import Path

from kapi_selftests.arch import NR

__all__ = ["CACHE_DIR", "CALL", "RESULT", "WATCH_FD", "WATCH_BUF", "WATCH_PATH", "MAX_WATCH",
           "build_library", "load", "run_table", "HASH_LIMIT"]

log = logging.getLogger(__name__)

#: where the compiled executor is kept (the guest reads it over the host root share)
CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "kapi-selftests"

MAX_WATCH = 3
WATCH_NONE, WATCH_FD, WATCH_BUF, WATCH_PATH = 0, 1, 2, 3
#: at most this many bytes of a watched buffer are hashed
HASH_LIMIT = 1 << 16
#: one call: nr, six registers, watch count, then MAX_WATCH (kind, x, len)
CALL = struct.Struct("<q6QI4x" + "I4xQQ" * MAX_WATCH)
#: one result: ret, t0, t1, tid, then before[3][3] and after[3][3]
RESULT = struct.Struct("<qqqi4x" + "q" * 18)

_SOURCE = r"""
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

struct kx_watch { uint32_t kind; uint32_t pad; uint64_t x; uint64_t len; };
struct kx_call { int64_t nr; uint64_t a[6]; uint32_t nwatch; uint32_t pad;
                 struct kx_watch w[3]; };
struct kx_result { int64_t ret, t0, t1; int32_t tid; uint32_t pad;
                   int64_t before[3][3], after[3][3]; };

static int64_t now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void measure(const struct kx_watch *w, int64_t out[3])
{
	struct stat st;
	const unsigned char *p;
	uint64_t h = 1469598103934665603ULL, i, n;

	out[0] = out[1] = out[2] = -1;
	switch (w->kind) {
	case 1: /* fd: open?, offset, size */
		out[0] = syscall(SYS_fcntl, (int)w->x, F_GETFD) >= 0;
		out[1] = syscall(SYS_lseek, (int)w->x, 0, SEEK_CUR);
		if (syscall(SYS_fstat, (int)w->x, &st) == 0)
			out[2] = st.st_size;
		break;
	case 2: /* buffer: FNV-1a of its first HASH_LIMIT bytes */
		p = (const unsigned char *)(uintptr_t)w->x;
		n = w->len < HASH_LIMIT ? w->len : HASH_LIMIT;
		for (i = 0; i < n; i++)
			h = (h ^ p[i]) * 1099511628211ULL;
		out[0] = (int64_t)h;
		break;
	case 3: /* path: exists?, size */
		out[0] = syscall(SYS_newfstatat, AT_FDCWD,
				(const char *)(uintptr_t)w->x, &st, AT_SYMLINK_NOFOLLOW) == 0;
		out[2] = out[0] ? st.st_size : -1;
		break;
	}
}

int kx_run(const struct kx_call *c, struct kx_result *r, int n)
{
	int32_t tid = syscall(SYS_gettid);
	int i, k;
	long ret;

	for (i = 0; i < n; i++) {
		for (k = 0; k < 9; k++)
			r[i].before[k / 3][k % 3] = r[i].after[k / 3][k % 3] = -1;
		for (k = 0; k < (int)c[i].nwatch && k < 3; k++)
			measure(&c[i].w[k], r[i].before[k]);
		r[i].t0 = now();
		ret = syscall(c[i].nr, c[i].a[0], c[i].a[1], c[i].a[2],
				c[i].a[3], c[i].a[4], c[i].a[5]);
		r[i].t1 = now();
		r[i].ret = ret < 0 ? -errno : ret;
		r[i].tid = tid;
		for (k = 0; k < (int)c[i].nwatch && k < 3; k++)
			measure(&c[i].w[k], r[i].after[k]);
		if (c[i].nr == OPEN_NR && ret >= 0)
			syscall(SYS_close_range, (unsigned)ret, (unsigned)ret, 0);
	}
	return n;
}
"""


def _source() -> str:
    return (f"#define HASH_LIMIT {HASH_LIMIT}ULL\n#define OPEN_NR {NR['open']}\n"
            + _SOURCE)


def build_library(cache_dir: Path, cc: str | None = None) -> Path | None:
    """Compile the executor into ``cache_dir`` (once per source); None without a compiler."""
    cc = cc or os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        log.warning("no C compiler: batches run through ctypes, several times slower "
                    "(install gcc)")
        return None
    src = _source()
    out = cache_dir / f"kx-{hashlib.sha256(src.encode()).hexdigest()[:16]}.so"
    if out.is_file():
        return out
    cache_dir.mkdir(parents=True, exist_ok=True)
    c_file = out.with_suffix(".c")
    c_file.write_text(src)
    tmp = out.with_name(f"{out.name}.{os.getpid()}.{threading.get_native_id()}")
    proc = subprocess.run([cc, "-O2", "-shared", "-fPIC", "-Wall", "-Werror", "-o", str(tmp),
                           str(c_file)], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        first = (proc.stderr.strip().splitlines() or ["no output"])[0]
        log.warning("the C batch executor did not compile (%s): using ctypes", first)
        return None
    os.replace(tmp, out)
    return out


class _Lib:
    def __init__(self, path: Path) -> None:
        self.cdll = ctypes.CDLL(str(path))
        self.fn = self.cdll.kx_run
        self.fn.restype = ctypes.c_int
        self.fn.argtypes = [ctypes.c_char_p, ctypes.c_void_p, ctypes.c_int]


_loaded: dict[Path, _Lib] = {}


def load(path: Path | None) -> _Lib | None:
    """The executor library at ``path`` (None: use the ctypes fallback)."""
    if path is None:
        return None
    lib = _loaded.get(path)
    if lib is None:
        lib = _loaded[path] = _Lib(path)
    return lib


def run_table(lib: _Lib | None, table: bytes) -> bytes:
    """Issue every call of ``table`` (``CALL`` records); return the ``RESULT`` records."""
    n = len(table) // CALL.size
    if lib is not None:
        out = ctypes.create_string_buffer(RESULT.size * n)
        lib.fn(table, out, n)
        return out.raw
    return _run_python(table, n)


def _run_python(table: bytes, n: int) -> bytes:
    # The same loop with ctypes: for machines without a C compiler, and the reference.
    from kapi_selftests.syscalls import invoke

    out = bytearray(RESULT.size * n)
    tid = threading.get_native_id()
    for i in range(n):
        v = CALL.unpack_from(table, i * CALL.size)
        nr, regs, nwatch = v[0], v[1:7], v[7]
        watches = [v[8 + 3 * k:11 + 3 * k] for k in range(min(nwatch, MAX_WATCH))]
        before = [_measure(*w) for w in watches]
        rec = invoke(nr, *regs)
        after = [_measure(*w) for w in watches]
        flat_b = [x for m in before for x in m] + [-1] * (9 - 3 * len(before))
        flat_a = [x for m in after for x in m] + [-1] * (9 - 3 * len(after))
        RESULT.pack_into(out, i * RESULT.size, rec.ret, rec.t_ns, rec.t_end_ns, tid,
                         *flat_b, *flat_a)
        if nr == NR["open"] and rec.ret >= 0:
            os.close(rec.ret)
    return bytes(out)


def _measure(kind: int, x: int, length: int) -> tuple[int, int, int]:
    if kind == WATCH_FD:
        fd = x & 0xFFFFFFFF
        try:
            fcntl.fcntl(fd, fcntl.F_GETFD)
            ok = 1
        except OSError:
            ok = 0
        try:
            off = os.lseek(fd, 0, os.SEEK_CUR)
        except OSError:
            off = -1
        try:
            size = os.fstat(fd).st_size
        except OSError:
            size = -1
        return ok, off, size
    if kind == WATCH_BUF:
        h = 1469598103934665603
        for b in ctypes.string_at(x, min(length, HASH_LIMIT)):
            h = ((h ^ b) * 1099511628211) & 0xFFFFFFFFFFFFFFFF
        return h - (1 << 64) if h >= 1 << 63 else h, -1, -1
    if kind == WATCH_PATH:
        try:
            st = os.lstat(ctypes.string_at(x))
            return 1, -1, st.st_size
        except OSError:
            return 0, -1, -1
    return -1, -1, -1
