"""The call table: what the host sends a guest's C executor, and the executor itself.

A table is a run of calls (:data:`CALL`: number, six registers, how many watches),
each followed by its watches (:data:`WATCH`: what check 5 measures around a call the
host expects rejected, :mod:`kapi_selftests.oracle.sideeffects`); the results are
:data:`RESULT` per call and :data:`WATCH_RESULT` per watch, then the KCOV edges
(:data:`COV_HEAD`, :data:`COV_CALL`) when coverage is on. The host packs and
unpacks these with :mod:`struct` (:mod:`kapi_selftests.fuzz.remote`); the guest runs
them (:mod:`kapi_selftests.guest.cexec`). The executor's C source lives here too and
is compiled on the host, once per source, into the cache the guest reads
(:func:`build_library`). Nothing here touches a kernel.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import struct
import subprocess
from collections.abc import Sequence
from pathlib import Path

from kapi_selftests import cache
from kapi_selftests.arch import NR

__all__ = ["CACHE_DIR", "CALL", "WATCH", "RESULT", "WATCH_RESULT", "table_size", "result_size",
           "watch_counts", "WATCH_NONE", "WATCH_FD", "WATCH_BUF", "WATCH_PATH",
           "WATCH_FD_TABLE", "MAX_WATCH", "NVAL", "HASH_LIMIT", "KCOV_PATH", "COV_WORDS",
           "MAX_COV_IDS", "COV_HEAD", "COV_CALL", "build_library", "library_path"]

log = logging.getLogger(__name__)

#: where the compiled executor is kept; a guest gets the host's in KAPI_CACHE_DIR and
#: finds the library the host built there (read-only over the root share: no compiler
#: runs under TCG)
CACHE_DIR = cache.CACHE_DIR

#: most watches of one call: one per register, and the fd table
MAX_WATCH = 7
WATCH_NONE, WATCH_FD, WATCH_BUF, WATCH_PATH, WATCH_FD_TABLE = 0, 1, 2, 3, 4
#: at most this many bytes of a watched buffer or file are hashed
HASH_LIMIT = 1 << 16
#: one measurement of a watch: NVAL numbers (-1: not measured; what each is per kind:
#: :func:`measure`)
NVAL = 5
#: a call: nr, six registers, its watch count, then that many WATCH records
CALL = struct.Struct("<q6QI4x")
#: one watch: kind, x (fd or address), length
WATCH = struct.Struct("<I4xQQ")
#: a call's result: ret, t0, t1, then per watch before[NVAL] and after[NVAL]
#: (WATCH_RESULT)
RESULT = struct.Struct("<qqq")
WATCH_RESULT = struct.Struct(f"<{2 * NVAL}q")

#: KCOV: where the kernel offers it, its trace size in 64-bit words (PCs per call + 1)
KCOV_PATH = "/sys/kernel/debug/kcov"
COV_WORDS = 256 << 10
#: most new edge ids one batch reports (the rest are counted, not listed)
MAX_COV_IDS = 256 << 10
#: a batch's coverage after its results: edge ids stored, new edges not stored, new PCs
#: stored, new PCs not stored ...
COV_HEAD = struct.Struct("<IIII")
#: ... per call: new edges, PCs traced, ids stored; then the edge ids (u32), in call
#: order; then the new PCs (their low 32 bits)
COV_CALL = struct.Struct("<III")


def table_size(nwatch: Sequence[int]) -> int:
    """Bytes of a table whose calls have ``nwatch`` watches each."""
    return CALL.size * len(nwatch) + WATCH.size * sum(nwatch)


def result_size(nwatch: Sequence[int]) -> int:
    """Bytes of the results of a table whose calls have ``nwatch`` watches each."""
    return RESULT.size * len(nwatch) + WATCH_RESULT.size * sum(nwatch)


_SOURCE = r"""
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <string.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

struct kx_watch { uint32_t kind; uint32_t pad; uint64_t x; uint64_t len; };
struct kx_call { int64_t nr; uint64_t a[6]; uint32_t nwatch; uint32_t pad;
		struct kx_watch w[]; };
struct kx_result { int64_t ret, t0, t1; int64_t m[]; /* nwatch x (before, after)[NVAL] */ };

static int64_t now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

#define KX_HASH0 1469598103934665603ULL

/* Fold n bytes into h, 8 at a time; chunks of a multiple of 8 fold as one run would. */
static uint64_t kx_hash(uint64_t h, const unsigned char *p, uint64_t n)
{
	uint64_t v, i;

	for (i = 0; i + 8 <= n; i += 8) {
		memcpy(&v, p + i, 8);
		h = (h ^ v) * 1099511628211ULL;
		h ^= h >> 29;
	}
	for (; i < n; i++)
		h = (h ^ p[i]) * 1099511628211ULL;
	return h;
}

/* kx_hash from its start value: the suite's engine hashes what it watches with this
 * same function (through ctypes) when the library is built. */
uint64_t kx_hash_of(const void *p, uint64_t n)
{
	return kx_hash(KX_HASH0, (const unsigned char *)p, n);
}

/* A hash of the first HASH_LIMIT bytes of the file fd is open on (pread64: no spec). */
static int64_t file_hash(int fd)
{
	unsigned char buf[4096];
	uint64_t h = KX_HASH0, off = 0;
	long got;

	while (off < HASH_LIMIT) {
		got = syscall(SYS_pread64, fd, buf, sizeof(buf), off);
		if (got < 0)
			return -1;
		if (got == 0)
			break;
		h = kx_hash(h, buf, got);
		off += got;
		if (got < (long)sizeof(buf))
			break; /* a regular file's short read: its end */
	}
	return (int64_t)h;
}

/* One watch's NVAL numbers, -1 where not measured (the Python twin is cexec.measure):
 * fd:       open?, offset (not of a pipe or socket), size, content hash (regular file),
 *           bytes readable (FIONREAD; not of a regular file: there it is size - offset)
 * buffer:   hash of its first HASH_LIMIT bytes
 * path:     exists? (not following a last symlink), -1, size, content hash (regular file)
 * fd table: before the call (before == NULL), the lowest free fd number (where the
 *           kernel would put a new fd); after it, that number if it is still free, else
 *           the number + 1 (the lowest free fd moved up) */
static void measure(const struct kx_watch *w, int64_t out[NVAL], const int64_t *before)
{
	struct stat st;
	int fd, avail, i;

	for (i = 0; i < NVAL; i++)
		out[i] = -1;
	switch (w->kind) {
	case 1: /* fd */
		fd = (int)w->x;
		out[0] = syscall(SYS_fstat, fd, &st) == 0;
		if (!out[0])
			break;
		out[2] = st.st_size;
		if (!S_ISFIFO(st.st_mode) && !S_ISSOCK(st.st_mode))
			out[1] = syscall(SYS_lseek, fd, 0, SEEK_CUR);
		if (S_ISREG(st.st_mode))
			out[3] = file_hash(fd);
		else if (syscall(SYS_ioctl, fd, FIONREAD, &avail) == 0)
			out[4] = avail;
		break;
	case 2: /* buffer */
		out[0] = (int64_t)kx_hash(KX_HASH0, (const unsigned char *)(uintptr_t)w->x,
				w->len < HASH_LIMIT ? w->len : HASH_LIMIT);
		break;
	case 3: /* path */
		out[0] = syscall(SYS_newfstatat, AT_FDCWD,
				(const char *)(uintptr_t)w->x, &st, AT_SYMLINK_NOFOLLOW) == 0;
		if (!out[0])
			break;
		out[2] = st.st_size;
		if (!S_ISREG(st.st_mode))
			break;
		fd = syscall(SYS_openat, AT_FDCWD, (const char *)(uintptr_t)w->x,
				O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
		if (fd >= 0) {
			out[3] = file_hash(fd);
			syscall(SYS_close_range, (unsigned)fd, (unsigned)fd, 0);
		}
		break;
	case 4: /* fd table */
		if (before) {
			if (before[0] >= 0)
				out[0] = before[0] + (syscall(SYS_fcntl, (int)before[0], F_GETFD) >= 0);
			break;
		}
		/* open (openat: no spec) and close again the lowest free fd */
		fd = syscall(SYS_openat, AT_FDCWD, "/", O_PATH | O_CLOEXEC);
		if (fd >= 0) {
			out[0] = fd;
			syscall(SYS_close_range, (unsigned)fd, (unsigned)fd, 0);
		}
		break;
	}
}

/* KCOV (CONFIG_KCOV): the PCs the calling task runs in the kernel, KX_COV_WORDS - 1 at
 * most per call; an edge is a pair of consecutive PCs, hashed to 32 bits. kx_seen holds
 * the edges this thread has reported (2^KX_SEEN_BITS bits, indexed by the hash's top
 * bits), so each edge goes to the host once per agent. KCOV follows a task, so both are
 * per thread: an agent is one thread, and two agents in one process do not mix. */
#define KX_KCOV_INIT_TRACE _IOR('c', 1, unsigned long)
#define KX_KCOV_ENABLE _IO('c', 100)
#define KX_KCOV_TRACE_PC 0
#define KX_SEEN_BITS 24

static __thread uint64_t *kx_cover;
static __thread uint8_t *kx_seen, *kx_seen_pc;

/* Turn KCOV on for the calling thread (the one that runs kx_run); 0 or -errno. */
int kx_cov_open(void)
{
	void *area;
	int fd, err;

	if (kx_cover)
		return 0;
	fd = open(KX_KCOV_PATH, O_RDWR | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	if (ioctl(fd, KX_KCOV_INIT_TRACE, (unsigned long)KX_COV_WORDS))
		goto fail;
	area = mmap(NULL, KX_COV_WORDS * sizeof(uint64_t), PROT_READ | PROT_WRITE, MAP_SHARED,
			fd, 0);
	if (area == MAP_FAILED)
		goto fail;
	if (ioctl(fd, KX_KCOV_ENABLE, KX_KCOV_TRACE_PC)) {
		err = errno;
		munmap(area, KX_COV_WORDS * sizeof(uint64_t));
		close(fd);
		return -err;
	}
	kx_cover = area; /* the fd stays open: coverage lasts as long as the process */
	return 0;
fail:
	err = errno;
	close(fd);
	return -err;
}

static uint32_t kx_mix(uint64_t x)
{
	x ^= x >> 33;
	x *= 0xff51afd7ed558ccdULL;
	x ^= x >> 33;
	x *= 0xc4ceb9fe1a85ec53ULL;
	x ^= x >> 33;
	return (uint32_t)x;
}

static int kx_test_set(uint8_t *seen, uint32_t hash)
{
	uint32_t b = hash >> (32 - KX_SEEN_BITS);

	if (seen[b >> 3] & (1u << (b & 7)))
		return 1;
	seen[b >> 3] |= 1u << (b & 7);
	return 0;
}

/* Fold the n PCs of one call into kx_seen. Return how many of its edges are new; the
 * first max of them go to ids, *stored says how many. A PC never seen makes a new edge
 * (the edge into it), so only at new edges is it looked up in kx_seen_pc: the PCs new
 * to this thread go to pcs (their low 32 bits: kernel text lies in one 4-GiB window),
 * at most pcmax, *pcstored of them; *pcfresh counts them all. */
uint32_t kx_cov_edges(const uint64_t *pc, uint64_t n, uint32_t *ids, uint32_t max,
			uint32_t *stored, uint32_t *pcs, uint32_t pcmax, uint32_t *pcstored,
			uint32_t *pcfresh)
{
	uint64_t i, prev = 0;
	uint32_t id, fresh = 0, k = 0, kp = 0, fp = 0;

	if (!kx_seen)
		kx_seen = calloc((size_t)1 << (KX_SEEN_BITS - 3), 1);
	if (!kx_seen_pc)
		kx_seen_pc = calloc((size_t)1 << (KX_SEEN_BITS - 3), 1);
	if (!kx_seen || !kx_seen_pc)
		n = 0;
	for (i = 0; i < n; i++) {
		id = kx_mix(pc[i] ^ prev * 0x9e3779b97f4a7c15ULL);
		prev = pc[i];
		if (kx_test_set(kx_seen, id))
			continue;
		fresh++;
		if (k < max)
			ids[k++] = id;
		if (kx_test_set(kx_seen_pc, kx_mix(pc[i])))
			continue;
		fp++;
		if (kp < pcmax)
			pcs[kp++] = (uint32_t)pc[i];
	}
	*stored = k;
	*pcstored = kp;
	*pcfresh = fp;
	return fresh;
}

/* Issue the n calls of table; write their results; return the caller's tid. With cov
 * (KCOV on): cov[0] edge ids stored, cov[1] new edges not stored (over max_ids),
 * cov[2] new PCs stored, cov[3] new PCs not stored; then per call {new edges, PCs,
 * ids stored}; then max_ids words for the edge ids, in call order; then max_ids words
 * for the new PCs. */
int kx_run(const unsigned char *table, int n, unsigned char *results, uint32_t *cov,
		uint32_t max_ids)
{
	int32_t tid = syscall(SYS_gettid);
	uint32_t *per = cov ? cov + 4 : NULL, *ids = cov ? cov + 4 + 3 * (size_t)n : NULL;
	uint32_t *newpc = ids ? ids + max_ids : NULL;
	uint32_t used = 0, dropped = 0, pcused = 0, pcdropped = 0, st, pst, pfresh;
	const struct kx_call *c;
	struct kx_result *r;
	uint64_t pcs;
	int i, k;
	long ret;

	for (i = 0; i < n; i++) {
		c = (const struct kx_call *)table;
		r = (struct kx_result *)results;
		for (k = 0; k < (int)c->nwatch; k++)
			measure(&c->w[k], &r->m[2 * NVAL * k], NULL);
		if (per && kx_cover)
			__atomic_store_n(&kx_cover[0], 0, __ATOMIC_RELAXED);
		r->t0 = now();
		ret = syscall(c->nr, c->a[0], c->a[1], c->a[2], c->a[3], c->a[4], c->a[5]);
		r->t1 = now();
		r->ret = ret < 0 ? -errno : ret;
		if (per) { /* before the watches' own syscalls add their PCs */
			pcs = kx_cover ? __atomic_load_n(&kx_cover[0], __ATOMIC_RELAXED) : 0;
			if (pcs > KX_COV_WORDS - 1)
				pcs = KX_COV_WORDS - 1;
			per[3 * i] = kx_cov_edges(kx_cover ? kx_cover + 1 : NULL, pcs,
						ids + used, max_ids - used, &st,
						newpc + pcused, max_ids - pcused, &pst, &pfresh);
			per[3 * i + 1] = (uint32_t)pcs;
			per[3 * i + 2] = st;
			used += st;
			dropped += per[3 * i] - st;
			pcused += pst;
			pcdropped += pfresh - pst;
		}
		for (k = 0; k < (int)c->nwatch; k++)
			measure(&c->w[k], &r->m[2 * NVAL * k + NVAL], &r->m[2 * NVAL * k]);
		if (c->nr == OPEN_NR && ret >= 0)
			syscall(SYS_close_range, (unsigned)ret, (unsigned)ret, 0);
		table += sizeof(*c) + c->nwatch * sizeof(c->w[0]);
		results += sizeof(*r) + c->nwatch * 2 * NVAL * sizeof(r->m[0]);
	}
	if (cov) {
		cov[0] = used;
		cov[1] = dropped;
		cov[2] = pcused;
		cov[3] = pcdropped;
	}
	return tid;
}
"""


def _source() -> str:
    return (f"#define HASH_LIMIT {HASH_LIMIT}ULL\n#define NVAL {NVAL}\n"
            f"#define OPEN_NR {NR['open']}\n"
            f"#define KX_COV_WORDS {COV_WORDS}UL\n#define KX_KCOV_PATH \"{KCOV_PATH}\"\n"
            + _SOURCE)


def library_path(cache_dir: Path) -> Path:
    """Where :func:`build_library` keeps the executor of this source in ``cache_dir``."""
    return cache_dir / f"kx-{hashlib.sha256(_source().encode()).hexdigest()[:16]}.so"


def build_library(cache_dir: Path, cc: str | None = None) -> Path | None:
    """Compile the executor into ``cache_dir`` (once per source); None without a compiler."""
    cc = cc or os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        log.warning("no C compiler: batches run through ctypes, several times slower "
                    "(install gcc)")
        return None
    src = _source()
    out = library_path(cache_dir)
    if out.is_file():
        return out
    c_file = cache.atomic_write(out.with_suffix(".c"), src)
    with cache.temp_path(out) as tmp:
        proc = subprocess.run([cc, "-O2", "-shared", "-fPIC", "-Wall", "-Werror", "-o",
                               str(tmp), str(c_file)], capture_output=True, text=True,
                              check=False)
        if proc.returncode != 0:
            first = (proc.stderr.strip().splitlines() or ["no output"])[0]
            log.warning("the C batch executor did not compile (%s): using ctypes", first)
            return None
        os.replace(tmp, out)
    return out


def watch_counts(table: bytes, n: int) -> list[int]:
    """The watch count of each of the ``n`` calls in ``table``."""
    out: list[int] = []
    off = 0
    for _ in range(n):
        k = CALL.unpack_from(table, off)[7]
        out.append(k)
        off += CALL.size + k * WATCH.size
    if off != len(table):
        raise ValueError(f"call table of {len(table)} bytes does not hold {n} calls")
    return out
