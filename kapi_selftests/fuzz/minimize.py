"""Shrink a failing batch to a small reproducer. Pure: the predicate that re-runs calls
on a live kernel is the caller's.

Two steps, both driven by ``still_fails(plans) -> bool``:

1. :func:`ddmin` (Zeller's delta debugging) over the calls issued before the
   failing one, which always stays last: usually it fails alone, and the
   context goes in one try;
2. :func:`simplify_plans`: each argument of each remaining plan is replaced by
   simpler ones (:func:`simpler_args`: a regular file for an fd, a mapped
   buffer, an existing path, smaller literals, fewer bits) as long as the
   failure stays. The result is a fixpoint: no single simplification keeps it
   failing.

The number of predicate calls is bounded (``budget``), since each one costs a
capture window on the live kernel.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

from kapi_selftests.plan import (
    ArgPlan,
    Buf,
    BufKind,
    CallPlan,
    Fd,
    FdKind,
    Lit,
    Path,
    PathKind,
)

__all__ = ["Budget", "ddmin", "simpler_args", "simplify_plans", "minimize"]

T = TypeVar("T")
U64 = (1 << 64) - 1


class Budget:
    """Counts predicate calls; :meth:`spend` is False once ``limit`` are used or
    ``time_s`` seconds have passed since the budget was made."""

    def __init__(self, limit: int, time_s: float | None = None) -> None:
        self.limit = limit
        self.used = 0
        self.deadline = None if time_s is None else time.monotonic() + time_s

    def spend(self) -> bool:
        if self.used >= self.limit:
            return False
        if self.deadline is not None and time.monotonic() >= self.deadline:
            return False
        self.used += 1
        return True


def ddmin(items: Sequence[T], fails: Callable[[list[T]], bool],
          budget: Budget | None = None) -> list[T]:
    """A 1-minimal subsequence of ``items`` for which ``fails`` holds (order kept).

    ``fails(list(items))`` is assumed true. Tries the empty list first (the common
    case: the last call fails alone), then complements and subsets of ever finer
    partitions. Stops early when ``budget`` runs out and returns the smallest
    failing list found so far.
    """
    budget = budget or Budget(1 << 30)
    cur = list(items)
    if not cur:
        return cur
    if budget.spend() and fails([]):
        return []
    n = 2
    while len(cur) >= 2:
        chunk = len(cur) / n
        parts = [cur[int(i * chunk):int((i + 1) * chunk)] for i in range(n)]
        reduced = False
        for part in parts:
            if not budget.spend():
                return cur
            if part and fails(part):
                cur, n, reduced = part, 2, True
                break
        if not reduced:
            for i in range(n):
                comp = [x for j, p in enumerate(parts) if j != i for x in p]
                if not budget.spend():
                    return cur
                if comp and fails(comp):
                    cur, n, reduced = comp, max(n - 1, 2), True
                    break
        if not reduced:
            if n >= len(cur):
                break
            n = min(len(cur), 2 * n)
    if len(cur) == 1 and budget.spend() and fails([]):
        return []
    return cur


def _simpler_ints(v: int) -> list[int]:
    v &= U64
    out = [0, 1]
    if v.bit_length() > 1:
        out.append(1 << (v.bit_length() - 1))  # the top bit alone
    if v >> 32:
        out.append(v & 0xFFFFFFFF)  # bits above 32 dropped
    low = v & -v  # the lowest set bit alone
    out.append(low)
    out.append(v >> 1)
    seen: list[int] = []
    for x in out:
        if x != v and x not in seen and x.bit_length() <= v.bit_length():
            seen.append(x)
    return seen


def simpler_args(a: ArgPlan) -> Iterator[ArgPlan]:
    """Simpler alternatives to one argument, simplest first (never ``a`` itself)."""
    if isinstance(a, Lit):
        for v in _simpler_ints(a.value):
            yield Lit(v)
    elif isinstance(a, Fd):
        if a.high:
            yield Fd(a.kind)
        if a.kind is not FdKind.REGULAR:
            yield Fd(FdKind.REGULAR, a.high)
    elif isinstance(a, Buf):
        if a.kind is not BufKind.MAPPED:
            yield Buf(BufKind.MAPPED, a.size)
        for s in (0, 1, 4096):
            if s < a.size:
                yield Buf(a.kind, s)
    elif isinstance(a, Path):
        if a.kind is not PathKind.EXISTING:
            yield Path(PathKind.EXISTING)


@dataclass(frozen=True, slots=True)
class _Step:
    index: int
    arg: int
    new: ArgPlan


def simplify_plans(plans: Sequence[CallPlan], fails: Callable[[list[CallPlan]], bool],
                   budget: Budget | None = None) -> list[CallPlan]:
    """Replace arguments by simpler ones while ``fails`` holds, until nothing simpler fails."""
    budget = budget or Budget(1 << 30)
    cur = list(plans)
    changed = True
    while changed:
        changed = False
        for i, p in enumerate(cur):
            for j, a in enumerate(p.args):
                for alt in simpler_args(a):
                    cand = list(cur)
                    args = list(p.args)
                    args[j] = alt
                    cand[i] = CallPlan(p.name, tuple(args))
                    if not budget.spend():
                        return cur
                    if fails(cand):
                        cur, p, changed = cand, cand[i], True
                        break
    return cur


def minimize(context: Sequence[CallPlan], failing: CallPlan,
             fails: Callable[[list[CallPlan]], bool], *, budget: int = 200,
             time_s: float | None = None) -> list[CallPlan]:
    """The smallest batch ending in a simplified ``failing`` call that still ``fails``
    (the smallest found when the budget runs out).

    :param context: the calls issued before ``failing`` in its batch
    :param fails: runs a batch (its last call is the one judged) and says if it still fails
    :param budget: at most this many runs of ``fails``
    :param time_s: and no new run of it after this many seconds
    """
    b = Budget(budget, time_s)
    kept = ddmin(list(context), lambda ctx: fails([*ctx, failing]), b)
    return simplify_plans([*kept, failing], fails, b)
