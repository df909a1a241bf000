"""Hypothesis strategies for call plans, derived from the spec model. Pure.

One function per parameter kind, each drawing boundary values first
(``sampled_from(EDGES) | integers(...)``, simplest first, so failures shrink to
the edge that matters). :func:`call_plans` combines them per spec, couples a
buffer with the parameter that sizes it, and applies the harness's safety rules
(never an fd number the harness does not own, madvise only on its own
mappings with lengths that stay inside them unless the advice is a mere hint).
The values and the safety rule are :mod:`kapi_selftests.plan`'s, shared with the
fuzzer's generator (which needs no hypothesis). Nothing here names one of the five
v4 syscalls: any spec with an x86-64 number gets plans.
"""

from __future__ import annotations

from collections.abc import Sequence

from hypothesis import strategies as st

from kapi_selftests import arch
from kapi_selftests.errors import UsageError
from kapi_selftests.fuzz.edges import ctype_width, param_edges, param_kind, sized
from kapi_selftests.guest.fds import std_fds_owned
from kapi_selftests.oracle.spec import ConstraintType, ParamSpec, Spec
from kapi_selftests.plan import (
    FD_EDGES,
    KNOWN_VALUES,
    MADE_FDS,
    STD_FDS,
    ArgPlan,
    Buf,
    BufKind,
    CallPlan,
    Fd,
    FdKind,
    Lit,
    Path,
    PathKind,
    make_safe,
)

__all__ = [
    "KNOWN_VALUES",
    "fds",
    "paths",
    "buffers",
    "sizes",
    "mask_values",
    "range_values",
    "int_values",
    "edges_of",
    "call_plans",
]

U64 = (1 << 64) - 1
_VALID_FD_KINDS = MADE_FDS


def fds() -> st.SearchStrategy[ArgPlan]:
    """fds of every kind the harness makes, a just-closed fd, invalid numbers, and
    owned fds with bits 32-63 set (the ``unsigned int`` cast drops them).
    Shrinks towards a regular file."""
    return st.one_of(
        st.sampled_from(_VALID_FD_KINDS).map(Fd),
        st.just(Fd(FdKind.CLOSED)),
        st.sampled_from(FD_EDGES).map(Lit),
        st.builds(Fd, st.sampled_from(_VALID_FD_KINDS),
                  st.sampled_from((1, 0x7FFFFFFF, 0xFFFFFFFF))),
    )


def paths() -> st.SearchStrategy[ArgPlan]:
    """Path arguments of every kind: existing, new, missing, too long, unterminated, bad
    pointers. All inside the harness's scratch directory. Shrinks towards an existing file."""
    return st.sampled_from(tuple(PathKind)).map(Path)


def buffers(size: int) -> st.SearchStrategy[ArgPlan]:
    """Buffers for ``size`` bytes: exactly fitting before a guard page, one byte short,
    unaligned, read-only, unmapped, NULL, kernel-half. Shrinks towards a mapped buffer."""
    if size < 0:
        raise UsageError(f"buffers(size={size}): size must be >= 0")
    real = min(size, 1 << 20)
    return st.sampled_from(tuple(BufKind)).map(lambda k: Buf(k, real))


def sizes() -> st.SearchStrategy[int]:
    """Byte counts: 0, 1, a page, MAX_RW_COUNT, SSIZE_MAX, bit 63, all ones; then small
    counts, then any u64. Shrinks to 0."""
    edges = (0, 1, arch.PAGE_SIZE, arch.PAGE_SIZE + 1, arch.MAX_RW_COUNT,
             arch.MAX_RW_COUNT + 1, arch.SSIZE_MAX, 1 << 63, U64, 1 << 32, (1 << 32) + 1)
    return st.one_of(st.sampled_from(edges), st.integers(0, 3 * arch.PAGE_SIZE),
                     st.integers(0, U64))


def _bits(mask: int) -> list[int]:
    return [1 << b for b in range(64) if mask >> b & 1]


def mask_values(valid_mask: int, width: int = 32) -> st.SearchStrategy[int]:
    """Flag words for a ``mask`` constraint: 0, each valid bit, valid combinations, then
    each bit outside the mask (bit 30, 31 and 32 first), then any ``width``-bit word and
    words with bits above ``width`` (the C cast drops them). Shrinks to 0."""
    valid = _bits(valid_mask)
    invalid_first = [b for b in (1 << 30, 1 << 31, 1 << 32) if not b & valid_mask]
    invalid = invalid_first + [b for b in _bits(((1 << width) - 1) & ~valid_mask)
                               if b not in invalid_first]
    combos = st.lists(st.sampled_from(valid), max_size=6).map(lambda bs: sum(set(bs)))
    strategies: list[st.SearchStrategy[int]] = [st.just(0)]
    if valid:
        strategies += [st.sampled_from(valid), combos]
    if invalid:
        strategies.append(st.tuples(combos if valid else st.just(0), st.sampled_from(invalid))
                          .map(lambda t: t[0] | t[1]))
    strategies += [st.integers(0, (1 << width) - 1), st.integers(0, U64)]
    return st.one_of(strategies)


def range_values(lo: int, hi: int) -> st.SearchStrategy[int]:
    """Values around a ``range`` constraint ``[lo, hi]`` (``hi`` as the kernel stores it;
    -1 is SIZE_MAX): both edges and one step outside each, then values inside, then any
    u64. Shrinks towards ``lo``."""
    hi_u = U64 if hi == -1 else hi
    edges = sorted({lo & U64, (lo - 1) & U64, hi_u & U64, (hi_u + 1) & U64})
    return st.one_of(st.sampled_from(edges), st.integers(max(lo, 0), min(hi_u, 1 << 20)),
                     st.integers(0, U64))


def int_values(known: Sequence[int] = ()) -> st.SearchStrategy[int]:
    """An ``int`` parameter with no constraint: its known values (and their neighbours),
    0, -1, INT_MIN/INT_MAX, then bits above 32 (dropped by the cast), then any u64."""
    near = sorted({v + d for v in known for d in (-1, 0, 1)} | {0, -1, arch.INT_MAX, -(2**31)})
    strategies: list[st.SearchStrategy[int]] = []
    if known:
        strategies.append(st.sampled_from(tuple(known)))
    strategies += [st.sampled_from(tuple(v & U64 for v in near)),
                   st.sampled_from(tuple(known) or (0,)).map(lambda v: v | 1 << 32),
                   st.integers(0, U64)]
    return st.one_of(strategies)


def _scalar(spec: Spec, p: ParamSpec) -> st.SearchStrategy[int]:
    c = p.constraint
    if c is ConstraintType.MASK:
        return mask_values(p.valid_mask, ctype_width(p))
    if c is ConstraintType.RANGE:
        if p.min_value == 0 and p.max_value == -1:
            return sizes()
        return range_values(p.min_value, p.max_value)
    if c is ConstraintType.ENUM and p.enum_values:
        return int_values(p.enum_values)
    if c is ConstraintType.POWER_OF_TWO:
        return st.one_of(st.sampled_from((0, 1, 2, 3, 4096, 4097)), st.integers(0, U64))
    if c is ConstraintType.NONZERO:
        return st.one_of(st.sampled_from((0, 1)), st.integers(0, U64))
    return int_values(KNOWN_VALUES.get((spec.name, p.name), ()))


def edges_of(spec_name: str, p: ParamSpec) -> st.SearchStrategy[ArgPlan]:
    """The parameter's edges (:mod:`kapi_selftests.fuzz.edges`), in table order: a failure
    shrinks to the first edge that shows it. fds 0-2 only where they are the harness's."""
    owned = std_fds_owned()
    es = [e.arg for e in param_edges(spec_name, p)
          if owned or not (isinstance(e.arg, Fd) and e.arg.kind in STD_FDS)]
    return st.sampled_from(es)


def call_plans(spec: Spec) -> st.SearchStrategy[CallPlan]:
    """Plans for one call of ``spec``: every parameter drawn by its kind, buffers sized
    by their size parameter, address ranges kept inside harness mappings.

    :raises UsageError: the spec has no x86-64 syscall the harness knows
    """
    abi = arch.find_syscall(spec.name)
    if abi is None:
        raise UsageError(f"spec {spec.name}: no x86-64 syscall number known",
                         hint="add it to kapi_selftests/arch.py SYSCALLS")
    params = spec.params

    kinds = [param_kind(p) for p in params]
    draws: list[st.SearchStrategy[ArgPlan]] = []
    for p, kind in zip(params, kinds, strict=True):
        # its edges first, then the kind's own values
        rest: st.SearchStrategy[ArgPlan] = (
            fds() if kind == "fd" else paths() if kind == "path" else
            buffers(arch.PAGE_SIZE) if kind == "address" else _scalar(spec, p).map(Lit))
        draws.append(st.one_of(edges_of(spec.name, p), rest))

    @st.composite
    def plan(draw: st.DrawFn) -> CallPlan:
        # a buffer is sized by its size parameter; an address range (madvise start) by
        # the length parameter after it (edges.sized)
        args = [draw(d, label=p.name) for d, p in zip(draws, params, strict=True)]
        return make_safe(CallPlan(abi.name, sized(spec, args)))

    return plan()
