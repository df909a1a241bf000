"""Call plans: a syscall and its arguments described abstractly, before any memory exists. Pure.

Hypothesis generates plans (``strategies``), the guest turns them into
register values (``materialize``), reproducers print them. A plan is plain,
frozen and comparable, so it shrinks, deduplicates and round-trips through
JSON.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kapi_selftests import arch
from kapi_selftests.arch import NR

__all__ = ["FdKind", "INVALID_FDS", "STD_FDS", "MADE_FDS", "BufKind", "TOP_BUFS", "top_address",
           "PathKind", "Lit", "Fd", "Buf", "Path", "ArgPlan", "CallPlan", "PATH_LENGTHS",
           "MAX_MAPPING", "REGION_SIZE", "KNOWN_VALUES", "FD_EDGES", "make_safe", "plan_to_json",
           "plan_from_json", "plan_json_text"]

#: Register values for fds that are never valid: -1, INT_MAX, INT_MAX+1, 2^32-1, huge.
INVALID_FDS = (-1 & 0xFFFFFFFF, 2**31 - 1, 2**31, 2**32 - 1, 2**63, 2**64 - 1)


class FdKind(enum.Enum):
    REGULAR = "regular"  # read-write regular file with content
    REGULAR_RDONLY = "regular_rdonly"
    REGULAR_WRONLY = "regular_wronly"
    DIRECTORY = "directory"
    PIPE_READ = "pipe_read"
    PIPE_WRITE = "pipe_write"
    SOCKET = "socket"  # one end of a unix socketpair
    DEV_NULL = "dev_null"
    DEV_ZERO = "dev_zero"
    DEV_FULL = "dev_full"
    EVENTFD = "eventfd"
    O_PATH = "o_path"
    PIPE_BROKEN = "pipe_broken"  # write end of a pipe whose read end is closed: EPIPE
    REGULAR_AT_MAX = "regular_at_max"  # offset at the file system's size limit (EFBIG/EINVAL)
    SOCKET_DGRAM = "socket_dgram"  # an unconnected UDP socket: EDESTADDRREQ, EAGAIN
    CLOSED = "closed"  # a number that was an fd a moment ago
    # fds 0, 1 and 2, made harness-owned regular files (only after own_std_fds())
    STD0 = "std0"
    STD1 = "std1"
    STD2 = "std2"


#: the standard fd kinds and their numbers
STD_FDS = {FdKind.STD0: 0, FdKind.STD1: 1, FdKind.STD2: 2}


#: the kinds of open fd a pool makes anywhere (not CLOSED, not the standard numbers)
MADE_FDS = tuple(k for k in FdKind if k is not FdKind.CLOSED and k not in STD_FDS)


class BufKind(enum.Enum):
    MAPPED = "mapped"  # read-write, page aligned, at least the size asked
    GUARD_TAIL = "guard_tail"  # read-write, exactly `size` bytes before a PROT_NONE page
    SHORT = "short"  # like GUARD_TAIL but one byte shorter than `size`: the last byte faults
    UNALIGNED = "unaligned"  # read-write, starts at page + 1
    READONLY = "readonly"  # mapped PROT_READ
    UNMAPPED = "unmapped"  # reserved PROT_NONE page
    NULL = "null"
    KERNEL = "kernel"  # kernel-half address
    # the top of the user address space (USER_PTR_MAX): the harness owns the last user page
    LAST_USER = "last_user"  # `size` bytes ending exactly at USER_PTR_MAX
    CROSS_USER = "cross_user"  # `size` bytes ending one byte past it
    NON_USER = "non_user"  # starting at USER_PTR_MAX, the first address that is not user


#: buffer kinds at the top of the user address space: a size beyond a page is cut to one
TOP_BUFS = frozenset((BufKind.LAST_USER, BufKind.CROSS_USER, BufKind.NON_USER))


class PathKind(enum.Enum):
    EXISTING = "existing"  # a regular file in the scratch dir
    NEW = "new"  # a name in the scratch dir that does not exist yet
    MISSING = "missing"  # in a directory that does not exist
    DIRECTORY = "directory"  # the scratch dir itself
    EMPTY = "empty"  # ""
    LEN_PATH_MAX_1 = "len_4095"  # strlen PATH_MAX-1 (fits with its NUL)
    LEN_PATH_MAX = "len_4096"  # strlen PATH_MAX: ENAMETOOLONG
    LEN_PATH_MAX_P1 = "len_4097"
    COMPONENT_TOO_LONG = "component_256"  # one component of NAME_MAX+1 bytes
    UNTERMINATED = "unterminated"  # no NUL before a guard page
    SYMLINK_LOOP = "symlink_loop"
    DEV_NULL = "dev_null"
    UNMAPPED = "unmapped"
    NULL = "null"
    KERNEL = "kernel"
    LEN_PATH_MAX_2 = "len_4094"  # strlen PATH_MAX-2


#: the path kinds of an exact length (strlen), ending at a guard page
PATH_LENGTHS = {PathKind.LEN_PATH_MAX_2: arch.PATH_MAX - 2,
                PathKind.LEN_PATH_MAX_1: arch.PATH_MAX - 1,
                PathKind.LEN_PATH_MAX: arch.PATH_MAX, PathKind.LEN_PATH_MAX_P1: arch.PATH_MAX + 1}


@dataclass(frozen=True, slots=True)
class Lit:
    """A literal register value (any 64-bit pattern; negative means two's complement)."""

    value: int


@dataclass(frozen=True, slots=True)
class Fd:
    """An fd of ``kind``; ``high`` goes in bits 32-63 of the register (``2^32 + fd``)."""

    kind: FdKind
    high: int = 0


@dataclass(frozen=True, slots=True)
class Buf:
    """A buffer of ``size`` bytes of ``kind``; a ``MAPPED`` one starts ``offset`` bytes
    into its first page (the alignment edges: every power of two below the page)."""

    kind: BufKind
    size: int = 4096
    offset: int = 0


@dataclass(frozen=True, slots=True)
class Path:
    kind: PathKind


ArgPlan = Lit | Fd | Buf | Path


@dataclass(frozen=True, slots=True)
class CallPlan:
    """One syscall to issue: its name and one plan per register in order."""

    name: str
    args: tuple[ArgPlan, ...]

    @property
    def nr(self) -> int:
        return NR[self.name]

    def describe(self) -> str:
        def one(a: ArgPlan) -> str:
            if isinstance(a, Lit):
                return hex(a.value) if abs(a.value) > 9 else str(a.value)
            if isinstance(a, Fd):
                return f"fd:{a.kind.value}" + (f"+{a.high:#x}<<32" if a.high else "")
            if isinstance(a, Buf):
                off = f"+{a.offset:#x}" if a.offset else ""
                return f"buf:{a.kind.value}{off}[{a.size}]"
            return f"path:{a.kind.value}"
        return f"{self.name}({', '.join(one(a) for a in self.args)})"


def top_address(b: Buf, top: int | None, fallback: Callable[[], int]) -> int:
    """Where a buffer at the top of the user address space starts: the harness's last
    user page is ``[top, top + arch.PAGE_SIZE)`` (None: not the harness's, so the call gets
    ``fallback()``, an unmapped address, rather than someone else's memory)."""
    size = min(b.size, arch.PAGE_SIZE)
    if top is None:
        return fallback()
    limit = top + arch.PAGE_SIZE
    if b.kind is BufKind.LAST_USER:
        return limit - size
    if b.kind is BufKind.CROSS_USER:
        return limit - size + 1
    return limit


# --- the harness's safety rules (shared by the hypothesis strategies and the fuzzer)

_U64 = (1 << 64) - 1
#: Largest mapping the harness makes for one buffer or madvise range.
MAX_MAPPING = 16 << 20
#: The batch engine's read-write and read-only regions (its agent's, and a batch-engine
#: C reproducer's). A buffer plan larger than this gets the whole region (as the harness
#: caps its buffers): a write(2) of 2 GiB from it copies 128 KiB and faults, instead of
#: copying megabytes per call under TCG.
REGION_SIZE = 128 << 10

#: Known values of unconstrained parameters, by (spec name, parameter name).
KNOWN_VALUES: dict[tuple[str, str], tuple[int, ...]] = {
    ("sys_madvise", "behavior"): tuple(v for v in arch.MADV.values()
                                       if v not in arch.MADV_UNSAFE),
}

#: fd register values that are never open: -1 as int and as u64, INT_MAX, INT_MAX+1,
#: 2^32-1, huge. Small numbers (0, 1, 2, 3...) are never drawn: they are the harness's own.
FD_EDGES = (_U64, 0xFFFFFFFF, arch.INT_MAX, arch.INT_MAX + 1, 1 << 63 | 0xFFFFFFFF, (1 << 32) - 2)


def make_safe(plan: CallPlan) -> CallPlan:
    """``plan``, or the same call with ``MADV_NORMAL`` where its advice is not safe.

    An madvise range longer than the harness's mapping reaches memory the harness
    does not own: that is allowed only with hint-only advice (or advice the kernel
    must refuse); advice that destroys or poisons memory is never issued.
    """
    if plan.name != "madvise":
        return plan
    start, length, advice = plan.args
    assert isinstance(length, Lit) and isinstance(advice, Lit)
    inside = isinstance(start, Buf) and start.kind in (BufKind.MAPPED, BufKind.GUARD_TAIL) \
        and length.value <= start.size
    known = (advice.value & 0xFFFFFFFF) in arch.MADV.values()
    if not inside and known and (advice.value & 0xFFFFFFFF) not in arch.MADV_HINTS:
        return CallPlan(plan.name, (start, length, Lit(arch.MADV["MADV_NORMAL"])))
    if (advice.value & 0xFFFFFFFF) in arch.MADV_UNSAFE:
        return CallPlan(plan.name, (start, length, Lit(arch.MADV["MADV_NORMAL"])))
    return plan


def plan_to_json(p: CallPlan) -> dict[str, Any]:
    def one(a: ArgPlan) -> dict[str, Any]:
        if isinstance(a, Lit):
            return {"lit": a.value}
        if isinstance(a, Fd):
            return {"fd": a.kind.value, "high": a.high}
        if isinstance(a, Buf):
            return {"buf": a.kind.value, "size": a.size,
                    **({"offset": a.offset} if a.offset else {})}
        return {"path": a.kind.value}
    return {"name": p.name, "args": [one(a) for a in p.args]}


_ARG_TEXT: dict[ArgPlan, str] = {}
_NAME_TEXT: dict[str, str] = {}


def plan_json_text(p: CallPlan) -> str:
    """``json.dumps(plan_to_json(p), separators=(",", ":"))``, with each argument's text
    made once (a campaign writes every plan it issues)."""
    parts = []
    for a in p.args:
        if type(a) is Lit:
            parts.append(f'{{"lit":{a.value}}}')  # an int's repr is its JSON
            continue
        t = _ARG_TEXT.get(a)
        if t is None:
            if len(_ARG_TEXT) > 1 << 16:
                _ARG_TEXT.clear()
            t = _ARG_TEXT[a] = json.dumps(plan_to_json(CallPlan(p.name, (a,)))["args"][0],
                                          separators=(",", ":"))
        parts.append(t)
    name = _NAME_TEXT.get(p.name)
    if name is None:
        name = _NAME_TEXT[p.name] = json.dumps(p.name)
    return f'{{"name":{name},"args":[{",".join(parts)}]}}'


def plan_from_json(d: dict[str, Any]) -> CallPlan:
    def one(a: dict[str, Any]) -> ArgPlan:
        if "lit" in a:
            return Lit(int(a["lit"]))
        if "fd" in a:
            return Fd(FdKind(a["fd"]), int(a.get("high", 0)))
        if "buf" in a:
            return Buf(BufKind(a["buf"]), int(a["size"]), int(a.get("offset", 0)))
        return Path(PathKind(a["path"]))
    return CallPlan(str(d["name"]), tuple(one(a) for a in d["args"]))
