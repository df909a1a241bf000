"""Reproducers of fuzzing findings: a JSON file of plans, a pytest test and a standalone C
program. Pure rendering (plus writing the files).

Each reproducer directory ``repro/<slug>/`` holds:

* ``repro.json`` -- the plans (the failing call last), the finding key, the seed,
  shard and batch, the event source; what ``kapi-selftests replay`` reads;
* ``test_repro.py`` -- a pytest test that runs the plans through the engine that
  found them and fails while the finding is still there;
* ``repro.c`` -- a program with no dependency but libc: it makes the fds, files
  and mappings the plans name in a scratch directory of its own, creates its
  own tracefs instance, enables the events (toggling with ``writev(2)``, which
  has no KAPI spec), issues the calls with raw ``syscall()``, reads ``trace``
  back, prints expected vs got for the last call, and exits 1 while the bug is
  present (0 when fixed, 4 when it cannot run: not root, no tracefs/events).

A finding of the batch engine (``engine: batch``) replays as it was found: the
pytest test through the batch engine, whose calls share one fd per kind (a call sees
what an earlier one did to it: closed it, moved its offset) and the agent's two
128 KiB regions, and the C program with the same fds and regions (its paths are made
per call).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kapi_selftests.arch import NR, SYSCALLS
from kapi_selftests.errors import UsageError
from kapi_selftests.fuzz.findings import FindingKey
from kapi_selftests.oracle.ctype import CKind, parse_ctype
from kapi_selftests.oracle.spec import Spec
from kapi_selftests.plan import (
    REGION_SIZE,
    ArgPlan,
    Buf,
    CallPlan,
    Fd,
    Lit,
    plan_from_json,
    plan_to_json,
)

__all__ = ["Reproducer", "save", "load", "render_json", "render_pytest", "render_c",
           "REPRO_FORMAT"]

REPRO_FORMAT = 1


@dataclass(frozen=True, slots=True)
class Reproducer:
    """A finding and the plans that still show it (the failing call last).

    :param rejected: the oracle's verdict on the last call (None: not predicted)
    :param spec: the last call's spec (for the C program's expected ``params``)
    :param source: ``kapi`` or ``syscalls``: which events show the finding
    :param engine: ``harness`` or ``batch``: the engine that found it (see
        :func:`kapi_selftests.fuzz.campaign.local_harness`), and replays it
    """

    key: FindingKey
    plans: tuple[CallPlan, ...]
    message: str = ""
    evidence: tuple[str, ...] = ()
    seed: int = 0
    shard: int = 0
    batch: int = 0
    source: str = "kapi"
    rejected: bool | None = None
    spec: Spec | None = None
    engine: str = "harness"

    @property
    def replay_line(self) -> str:
        return f"kapi-selftests replay repro/{self.key.slug()}/repro.json"


def render_json(r: Reproducer) -> dict[str, Any]:
    return {"format": REPRO_FORMAT, "key": r.key.to_json(),
            "plans": [plan_to_json(p) for p in r.plans], "message": r.message,
            "evidence": list(r.evidence), "seed": r.seed, "shard": r.shard, "batch": r.batch,
            "source": r.source, "rejected": r.rejected, "engine": r.engine}


def load(path: Path) -> Reproducer:
    """Read a ``repro.json`` (or a directory holding one).

    :raises UsageError: not a reproducer file
    """
    if path.is_dir():
        path = path / "repro.json"
    try:
        d = json.loads(path.read_text())
        return Reproducer(key=FindingKey.from_json(d["key"]),
                          plans=tuple(plan_from_json(p) for p in d["plans"]),
                          message=str(d.get("message", "")),
                          evidence=tuple(d.get("evidence", ())), seed=int(d.get("seed", 0)),
                          shard=int(d.get("shard", 0)), batch=int(d.get("batch", 0)),
                          source=str(d.get("source", "kapi")), rejected=d.get("rejected"),
                          engine=str(d.get("engine", "harness")))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UsageError(f"{path}: not a kapi-selftests reproducer ({e})",
                         hint="pass a repro.json written by kapi-selftests fuzz") from e


def save(r: Reproducer, repro_dir: Path) -> list[Path]:
    """Write the three files under ``repro_dir/<slug>/``; return their paths (JSON first)."""
    d = repro_dir / r.key.slug()
    d.mkdir(parents=True, exist_ok=True)
    js = d / "repro.json"
    js.write_text(json.dumps(render_json(r), indent=1) + "\n")
    py = d / "test_repro.py"
    py.write_text(render_pytest(r))
    c = d / "repro.c"
    c.write_text(render_c(r))
    return [js, py, c]


# --- pytest -------------------------------------------------------------------------------

def render_pytest(r: Reproducer) -> str:
    plans = json.dumps([plan_to_json(p) for p in r.plans])
    return f'''"""Reproducer: {r.key.describe()}.

Found by kapi-selftests fuzz (seed {r.seed}, shard {r.shard}, batch {r.batch}):
{r.message}
Needs root and tracefs; fails while the kernel still shows the finding.
"""

import json

import pytest

from kapi_selftests.records import EventSource
from kapi_selftests.fuzz.findings import FindingKey
from kapi_selftests.fuzz.campaign import replay_plans
from kapi_selftests.plan import plan_from_json
from kapi_selftests.guest.tracefs import find_tracefs, missing_kapi_events, missing_tracefs

PLANS = [plan_from_json(p) for p in json.loads({plans!r})]
KEY = FindingKey({r.key.kind!r}, {r.key.syscall!r}, {r.key.where!r})
SOURCE = EventSource({r.source!r})
ENGINE = {r.engine!r}  # the engine that found it: "batch" calls share one fd per kind


def test_repro() -> None:
    reason = missing_tracefs(find_tracefs())
    if reason is None and SOURCE is EventSource.KAPI:
        reason = missing_kapi_events(find_tracefs())
    if reason:
        pytest.skip(reason)
    failing, explain = replay_plans(PLANS, KEY, SOURCE, engine=ENGINE)
    assert not failing, explain
'''


# --- C ------------------------------------------------------------------------------------

_C_PRELUDE = r'''#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#define UNUSED __attribute__((unused))

static char scratch[] = "/tmp/kapi-repro-XXXXXX";
static char instance[256];
static int counter;
static const char CONTENT[] = "kapi-selftests\n";

static void die(const char *what)
{
	perror(what);
	exit(2);
}

static size_t page(void)
{
	return (size_t)sysconf(_SC_PAGESIZE);
}

static size_t round_up(size_t n)
{
	size_t p = page();
	return n ? (n + p - 1) / p * p : p;
}

static char *map(size_t n, int prot)
{
	void *p = mmap(NULL, n, prot, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED)
		die("mmap");
	return p;
}

static void fill(char *p, size_t n)
{
	for (size_t i = 0; i < n; i++)
		p[i] = (char)(i % 251);
}

static char *new_path(const char *stem)
{
	char *p = malloc(PATH_MAX);
	if (!p)
		die("malloc");
	snprintf(p, PATH_MAX, "%s/%s%d", scratch, stem, ++counter);
	return p;
}

static char *file_with_content(void)
{
	char *p = new_path("f");
	int fd = open(p, O_CREAT | O_WRONLY | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0)
		die("open scratch file");
	for (int i = 0; i < 64; i++)
		if (write(fd, CONTENT, sizeof(CONTENT) - 1) < 0)
			die("write scratch file");
	close(fd);
	return p;
}

/* A buffer of n bytes ending exactly at a PROT_NONE guard page. */
static char *guard_tail(size_t n)
{
	size_t len = round_up(n);
	char *p = map(len + page(), PROT_READ | PROT_WRITE);
	if (mprotect(p + len, page(), PROT_NONE))
		die("mprotect");
	fill(p + len - n, n);
	return p + len - n;
}

/* The top of the user address space: the last user page is ours (mapped once), a buffer
 * of n bytes (at most a page) ends at its end, one byte past it, or starts past it. */
static unsigned long top_of(const char *kind, size_t n)
{
	static char *top;
	unsigned long limit = 0x7ffffffff000UL; /* TASK_SIZE_MAX, 4-level paging */

	if (!top) {
		top = mmap((void *)(limit - page()), page(), PROT_READ | PROT_WRITE,
			MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
		if (top == MAP_FAILED)
			die("mmap of the last user page");
	}
	if (n > page())
		n = page();
	if (!strcmp(kind, "last_user"))
		return limit - n;
	if (!strcmp(kind, "cross_user"))
		return limit - n + 1;
	return limit;
}

static UNUSED unsigned long buf_of(const char *kind, size_t n)
{
	char *p;

	if (!strcmp(kind, "mapped")) {
		p = map(round_up(n), PROT_READ | PROT_WRITE);
		fill(p, n);
		return (unsigned long)p;
	}
	if (!strcmp(kind, "guard_tail"))
		return (unsigned long)guard_tail(n);
	if (!strcmp(kind, "short"))
		return (unsigned long)guard_tail(n ? n - 1 : 0);
	if (!strcmp(kind, "unaligned")) {
		p = map(round_up(n + 1), PROT_READ | PROT_WRITE);
		fill(p + 1, n);
		return (unsigned long)(p + 1);
	}
	if (!strcmp(kind, "readonly")) {
		p = map(round_up(n), PROT_READ | PROT_WRITE);
		fill(p, n);
		if (mprotect(p, round_up(n), PROT_READ))
			die("mprotect");
		return (unsigned long)p;
	}
	if (!strcmp(kind, "unmapped"))
		return (unsigned long)map(page(), PROT_NONE);
	if (!strcmp(kind, "null"))
		return 0;
	if (!strcmp(kind, "last_user") || !strcmp(kind, "cross_user") ||
		!strcmp(kind, "non_user"))
		return top_of(kind, n);
	return 0xffff800000001000UL; /* kernel half */
}

/* The batch engine's buffers: its agent's REGION-byte read-write region ending at a guard
 * page and its read-only region, shared by the calls; a buffer is placed in them as the
 * host places it (a larger one is the whole region: the call runs past its end). */
static UNUSED unsigned long shared_buf_of(const char *kind, size_t n)
{
	static char *rw, *ro;
	size_t k;

	if (!rw) {
		rw = guard_tail(REGION);
		ro = map(REGION, PROT_READ | PROT_WRITE);
		if (mprotect(ro, REGION, PROT_READ))
			die("mprotect");
	}
	if (!strcmp(kind, "mapped"))
		return (unsigned long)rw;
	if (!strcmp(kind, "guard_tail"))
		return (unsigned long)(rw + REGION - (n < REGION ? n : REGION));
	if (!strcmp(kind, "short")) {
		k = n ? n - 1 : 0;
		return (unsigned long)(rw + REGION - (k < REGION ? k : REGION));
	}
	if (!strcmp(kind, "unaligned"))
		return (unsigned long)(rw + 1);
	if (!strcmp(kind, "readonly"))
		return (unsigned long)ro;
	return buf_of(kind, n); /* unmapped, NULL, kernel half: as for any call */
}

static unsigned long cstring(const char *s)
{
	size_t n = strlen(s) + 1;
	char *p = map(round_up(n), PROT_READ | PROT_WRITE);
	memcpy(p, s, n);
	return (unsigned long)p;
}

/* A NUL-terminated path of exactly len bytes whose NUL is the last byte before a guard page. */
static unsigned long path_of_len(size_t len)
{
	char *body = calloc(1, len + 1);
	size_t n;

	if (!body)
		die("calloc");
	strcpy(body, scratch);
	n = strlen(body);
	while (n < len) {
		size_t room = len - n, comp = room - 1 < 200 ? room - 1 : 200;
		body[n++] = '/';
		for (size_t i = 0; i < comp; i++)
			body[n++] = 'x';
	}
	char *p = guard_tail(len + 1);
	memcpy(p, body, len + 1);
	free(body);
	return (unsigned long)p;
}

static UNUSED unsigned long path_of(const char *kind)
{
	char buf[PATH_MAX + 300];

	if (!strcmp(kind, "existing"))
		return cstring(file_with_content());
	if (!strcmp(kind, "new"))
		return cstring(new_path("new"));
	if (!strcmp(kind, "missing")) {
		snprintf(buf, sizeof(buf), "%s/file", new_path("nodir"));
		return cstring(buf);
	}
	if (!strcmp(kind, "directory"))
		return cstring(scratch);
	if (!strcmp(kind, "empty"))
		return cstring("");
	if (!strcmp(kind, "len_4094"))
		return path_of_len(PATH_MAX - 2);
	if (!strcmp(kind, "len_4095"))
		return path_of_len(PATH_MAX - 1);
	if (!strcmp(kind, "len_4096"))
		return path_of_len(PATH_MAX);
	if (!strcmp(kind, "len_4097"))
		return path_of_len(PATH_MAX + 1);
	if (!strcmp(kind, "component_256")) {
		snprintf(buf, sizeof(buf), "%s/", scratch);
		memset(buf + strlen(buf), 'n', 256);
		buf[strlen(scratch) + 1 + 256] = 0;
		return cstring(buf);
	}
	if (!strcmp(kind, "unterminated")) {
		snprintf(buf, sizeof(buf), "%s/unterminated", scratch);
		char *p = guard_tail(strlen(buf));
		memcpy(p, buf, strlen(buf)); /* no NUL: the guard page follows */
		return (unsigned long)p;
	}
	if (!strcmp(kind, "symlink_loop")) {
		char *link = new_path("loop");
		if (symlink(strrchr(link, '/') + 1, link))
			die("symlink");
		return cstring(link);
	}
	if (!strcmp(kind, "dev_null"))
		return cstring("/dev/null");
	if (!strcmp(kind, "unmapped"))
		return (unsigned long)map(page(), PROT_NONE);
	if (!strcmp(kind, "null"))
		return 0;
	return 0xffff800000001000UL;
}

static UNUSED int fd_of(const char *kind)
{
	int p[2], fd;

	if (!strcmp(kind, "regular"))
		return open(file_with_content(), O_RDWR | O_CLOEXEC);
	if (!strcmp(kind, "regular_rdonly"))
		return open(file_with_content(), O_RDONLY | O_CLOEXEC);
	if (!strcmp(kind, "regular_wronly"))
		return open(file_with_content(), O_WRONLY | O_CLOEXEC);
	if (!strcmp(kind, "directory"))
		return open(scratch, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (!strcmp(kind, "pipe_read") || !strcmp(kind, "pipe_write")) {
		if (pipe2(p, O_CLOEXEC | O_NONBLOCK))
			die("pipe2");
		if (kind[5] == 'r') {
			if (write(p[1], "pipe data", 9) != 9)
				die("write pipe");
			return p[0];
		}
		return p[1];
	}
	if (!strcmp(kind, "socket")) {
		if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, p))
			die("socketpair");
		if (send(p[1], "socket data", 11, 0) != 11)
			die("send");
		return p[0];
	}
	if (!strcmp(kind, "dev_null"))
		return open("/dev/null", O_RDWR | O_CLOEXEC);
	if (!strcmp(kind, "dev_zero"))
		return open("/dev/zero", O_RDWR | O_CLOEXEC);
	if (!strcmp(kind, "dev_full"))
		return open("/dev/full", O_RDWR | O_CLOEXEC);
	if (!strcmp(kind, "eventfd"))
		return eventfd(1, EFD_CLOEXEC | EFD_NONBLOCK);
	if (!strcmp(kind, "o_path"))
		return open(file_with_content(), O_PATH | O_CLOEXEC);
	if (!strcmp(kind, "pipe_broken")) {
		if (pipe2(p, O_CLOEXEC | O_NONBLOCK))
			die("pipe2");
		close(p[0]); /* main() ignores SIGPIPE: a write fails with EPIPE */
		return p[1];
	}
	if (!strcmp(kind, "regular_at_max")) {
		long long lo = 0, hi = LLONG_MAX, mid;

		fd = open(file_with_content(), O_RDWR | O_CLOEXEC);
		if (fd < 0 || lseek(fd, hi, SEEK_SET) == hi)
			return fd;
		while (lo < hi) { /* EINVAL above the file system's limit: bisect it */
			mid = lo + (hi - lo + 1) / 2;
			if (lseek(fd, mid, SEEK_SET) == mid)
				lo = mid;
			else
				hi = mid - 1;
		}
		lseek(fd, lo, SEEK_SET);
		return fd;
	}
	if (!strcmp(kind, "socket_dgram"))
		return socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (!strncmp(kind, "std", 3)) { /* std0..std2: a scratch file on fd 0, 1 or 2 */
		int std = kind[3] - '0';

		fd = open(file_with_content(), O_RDWR);
		if (fd < 0 || (fd != std && dup2(fd, std) != std))
			die("dup2 onto a standard fd");
		if (fd != std)
			close(fd);
		return std;
	}
	/* closed: a number that was an fd a moment ago */
	fd = fcntl(0, F_DUPFD_CLOEXEC, 512 + counter++);
	if (fd < 0)
		die("F_DUPFD");
	close(fd);
	return fd;
}

/* The batch engine's calls share one fd per kind: made once, then handed out again. */
static UNUSED int shared_fd_of(const char *kind)
{
	static const char *kinds[64];
	static int fds[64], n;

	for (int i = 0; i < n; i++)
		if (!strcmp(kinds[i], kind))
			return fds[i];
	if (n == 64)
		return fd_of(kind);
	kinds[n] = kind;
	return fds[n++] = fd_of(kind);
}

/* writev(2) has no KAPI spec: toggling tracefs files with it leaves no half pairs. */
static int tfs(const char *file, const char *val)
{
	char path[512];
	struct iovec iov = { (void *)val, strlen(val) };
	int fd, ok;

	snprintf(path, sizeof(path), "%s/%s", instance, file);
	fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	ok = writev(fd, &iov, 1) == (ssize_t)iov.iov_len;
	close(fd);
	return ok ? 0 : -1;
}

static char *read_trace(void)
{
	char path[512];
	size_t cap = 1 << 16, len = 0;
	char *buf = malloc(cap);
	ssize_t n;
	int fd;

	snprintf(path, sizeof(path), "%s/trace", instance);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0 || !buf)
		die("open trace");
	while ((n = read(fd, buf + len, cap - len - 1)) > 0) {
		len += (size_t)n;
		if (cap - len < 4096) {
			cap *= 2;
			buf = realloc(buf, cap);
			if (!buf)
				die("realloc");
		}
	}
	close(fd);
	buf[len] = 0;
	return buf;
}

/* The last line of trace containing needle, or NULL; *count gets how many lines do. */
static const char *last_line(const char *trace, const char *needle, int *count)
{
	const char *p = trace, *last = NULL;

	*count = 0;
	while ((p = strstr(p, needle))) {
		const char *bol = p;
		while (bol > trace && bol[-1] != '\n')
			bol--;
		if (*bol != '#') {
			last = p;
			(*count)++;
		}
		p += strlen(needle);
	}
	return last;
}

static int bad;

static void expect(const char *what, const char *expected, const char *got)
{
	int ok = !strcmp(expected, got);
	printf("%-12s expected %-40s got %s%s\n", what, expected, got, ok ? "" : "   <-- MISMATCH");
	if (!ok)
		bad = 1;
}
'''


def _c_str(s: str) -> str:
    return json.dumps(s)  # a JSON string is a valid C string literal for ASCII text


def _c_arg(a: ArgPlan, cname: str, shared: bool = False) -> list[str]:
    # shared: the batch engine's resources (one fd per kind, its agent's two regions)
    if isinstance(a, Lit):
        return [f"\t{cname} = {a.value & ((1 << 64) - 1):#x}UL;"]
    if isinstance(a, Fd):
        fd_of = "shared_fd_of" if shared else "fd_of"
        line = f"\t{cname} = (unsigned long)(unsigned int){fd_of}({_c_str(a.kind.value)})"
        if a.high:
            line += f" + ((unsigned long){a.high:#x}UL << 32)"
        return [line + ";"]
    if isinstance(a, Buf):
        buf_of = "shared_buf_of" if shared else "buf_of"
        if a.offset:  # a mapped buffer that starts a.offset bytes into its page
            return [f"\t{cname} = {buf_of}({_c_str(a.kind.value)}, {a.size + a.offset}UL)"
                    f" + {a.offset}UL;"]
        return [f"\t{cname} = {buf_of}({_c_str(a.kind.value)}, {a.size}UL);"]
    return [f"\t{cname} = path_of({_c_str(a.kind.value)});"]


def _c_param_expr(ctype: str, reg: str) -> tuple[str, str]:
    """(printf conversion, C expression) rendering ``reg`` as kapi_syscall_enter does."""
    t = parse_ctype(ctype)
    if t.kind is CKind.POINTER:
        return "0x%llx", f"(unsigned long long){reg}"
    if t.kind is CKind.BOOL:
        return "0x%llx", f"(unsigned long long)({reg} != 0)"
    bits = t.bits
    if t.kind is CKind.SIGNED:
        v = f"(long long)(int{bits}_t){reg}"
    else:
        v = f"(long long)(uint{bits}_t){reg}"
    return "%lld", v


def _params_code(spec: Spec | None, nargs: int) -> tuple[str, list[str]]:
    if spec is None:
        return "", []
    ctypes = spec.ctypes()
    fmt: list[str] = []
    exprs: list[str] = []
    for i in range(min(nargs, 6)):
        name = spec.params[i].name if i < len(spec.params) else "arg"
        dec = spec.params[i].type.decimal_in_trace if i < len(spec.params) else False
        conv, expr = _c_param_expr(ctypes[i] if i < len(ctypes) else "long", f"a{i}")
        if not dec:
            conv, expr = "0x%llx", f"(unsigned long long){expr}"
        fmt.append(f"{name}={conv}")
        exprs.append(expr)
    return ", ".join(fmt), exprs


def render_c(r: Reproducer) -> str:
    """The standalone C program (see the module docstring). Compiles with ``gcc -Wall``."""
    if not r.plans:
        raise UsageError(f"reproducer {r.key.describe()}: no plans")
    last = r.plans[-1]
    kapi = r.source == "kapi"
    names = sorted({p.name for p in r.plans})
    lines = [f"/* Reproducer: {r.key.describe()}",
             f" * found by kapi-selftests fuzz: seed {r.seed}, shard {r.shard}, batch {r.batch}",
             f" * {r.message}".replace("*/", "* /"),
             *([" * Found by the batch engine: the calls share one fd per kind and two regions."]
               if r.engine == "batch" else []),
             " * Build: gcc -Wall -O2 -o repro repro.c; run as root.",
             " * Exit: 1 the finding is still there, 0 fixed, 2 setup failed,",
             " *       4 cannot run here (not root, no tracefs, no events). */",
             f"#define REGION ((size_t){REGION_SIZE}) /* the batch engine's region size */",
             _C_PRELUDE]
    lines += ["int main(void)", "{"]
    for i in range(len(r.plans)):
        lines.append(f"\tunsigned long c{i}[6] = {{0}};")
    lines += [f"\tlong ret[{len(r.plans)}];", f"\tint err[{len(r.plans)}];",
              "\tchar want[512], got[512], *trace;", "\tconst char *line;",
              "\tint n_enter = 0, n_exit = 0;", "",
              "\tsignal(SIGPIPE, SIG_IGN);  /* a broken pipe is an errno to check */",
              "\tif (!mkdtemp(scratch))", "\t\tdie(\"mkdtemp\");",
              "\tsnprintf(instance, sizeof(instance), "
              "\"/sys/kernel/tracing/instances/kapi-repro-%d\", getpid());",
              "\tif (mkdir(instance, 0700)) {",
              "\t\tperror(instance);",
              "\t\treturn 4;", "\t}",
              "\ttfs(\"tracing_on\", \"0\");",
              "\tsnprintf(want, sizeof(want), \"%d\", getpid());",
              "\tif (tfs(\"set_event_pid\", want))", "\t\tgoto skip;"]
    if kapi:
        lines += ["\tif (tfs(\"events/kapi/enable\", \"1\"))", "\t\tgoto skip;"]
    else:
        for n in names:
            lines += [f"\tif (tfs(\"events/syscalls/sys_enter_{n}/enable\", \"1\") ||",
                      f"\t    tfs(\"events/syscalls/sys_exit_{n}/enable\", \"1\"))",
                      "\t\tgoto skip;"]
    lines.append("")
    for i, p in enumerate(r.plans):
        lines.append(f"\t/* {p.describe()} */")
        for j, a in enumerate(p.args):
            lines += _c_arg(a, f"c{i}[{j}]", shared=r.engine == "batch")
    lines += ["", "\ttfs(\"tracing_on\", \"1\");"]
    for i, p in enumerate(r.plans):
        lines += ["\terrno = 0;",
                  f"\tret[{i}] = syscall({NR[p.name]}, c{i}[0], c{i}[1], c{i}[2], c{i}[3], "
                  f"c{i}[4], c{i}[5]); /* {p.name} */",
                  f"\terr[{i}] = ret[{i}] == -1 ? errno : 0;"]
    lines += ["\ttfs(\"tracing_on\", \"0\");", "\ttrace = read_trace();", ""]
    k = len(r.plans) - 1
    lines += [f"\tlong user = err[{k}] ? -err[{k}] : ret[{k}];",
              f"\tprintf(\"call: {last.describe()} = %ld (errno %d)\\n\", ret[{k}], err[{k}]);"]
    if kapi:
        nargs = len(SYSCALLS[last.name].params)
        fmt, exprs = _params_code(r.spec, nargs)
        lines += ["\tline = last_line(trace, \"kapi_syscall_enter: \", &n_enter);",
                  "\tline = last_line(trace, \"kapi_syscall_exit: \", &n_exit);",
                  "\tsnprintf(want, sizeof(want), \"%d\", n_enter);",
                  "\tsnprintf(got, sizeof(got), \"%d\", n_exit);",
                  "\texpect(\"exits\", want, got);",
                  f"\tsnprintf(want, sizeof(want), \"sys_{last.name} = %ld\", user);",
                  "\tif (line) {",
                  "\t\tconst char *sp = strstr(line, \" spec_match=\");",
                  "\t\tint len = sp ? (int)(sp - (line + 19)) : (int)strcspn(line + 19, \"\\n\");",
                  "\t\tsnprintf(got, sizeof(got), \"%.*s\", len, line + 19);",
                  "\t} else {",
                  "\t\tsnprintf(got, sizeof(got), \"(none)\");",
                  "\t}",
                  "\texpect(\"exit\", want, got);"]
        if r.rejected is not None:
            want_sm = "0" if r.rejected else "1"
            lines += [f"\tsnprintf(want, sizeof(want), \"{want_sm}\");",
                      "\tsnprintf(got, sizeof(got), \"%s\", line && strstr(line, \"spec_match=\")"
                      " ? strstr(line, \"spec_match=\") + 11 : \"(none)\");",
                      "\tgot[strcspn(got, \"\\n\")] = 0;",
                      "\texpect(\"spec_match\", want, got);"]
        if fmt:
            regs = ", ".join(f"a{i} = c{k}[{i}]" for i in range(nargs))
            lines += ["\t{", f"\t\tunsigned long {regs};",
                      f"\t\tsnprintf(want, sizeof(want), \"sys_{last.name}({fmt})\", "
                      f"{', '.join(exprs)});",
                      "\t}",
                      "\tline = last_line(trace, \"kapi_syscall_enter: \", &n_enter);",
                      "\tsnprintf(got, sizeof(got), \"%s\", line ? line + 20 : \"(none)\");",
                      "\tgot[strcspn(got, \"\\n\")] = 0;",
                      "\texpect(\"enter\", want, got);"]
    else:
        n = last.name
        lines += [f"\tline = last_line(trace, \": sys_{n}(\", &n_enter);",
                  f"\tline = last_line(trace, \": sys_{n} -> \", &n_exit);",
                  "\tsnprintf(want, sizeof(want), \"%d\", n_enter);",
                  "\tsnprintf(got, sizeof(got), \"%d\", n_exit);",
                  "\texpect(\"exits\", want, got);",
                  "\tsnprintf(want, sizeof(want), \"0x%lx\", (unsigned long)user);",
                  "\tsnprintf(got, sizeof(got), \"%s\", line && strstr(line, \"-> \") ? "
                  "strstr(line, \"-> \") + 3 : \"(none)\");",
                  "\tgot[strcspn(got, \"\\n\")] = 0;",
                  "\texpect(\"exit ret\", want, got);"]
    lines += ["\tif (bad)", "\t\tprintf(\"--- trace ---\\n%s\", trace);",
              "\tprintf(\"%s\\n\", bad ? \"still failing\" : \"fixed\");",
              "\ttfs(\"events/enable\", \"0\");", "\trmdir(instance);",
              "\treturn bad;", "skip:",
              "\tfprintf(stderr, \"cannot enable the events in %s\\n\", instance);",
              "\trmdir(instance);", "\treturn 4;", "}", ""]
    return "\n".join(lines)

