"""Seeded, deterministic generation of call plans for fuzzing campaigns. Pure.

Hypothesis strategies are built to shrink failing tests, not to stream
millions of values from a seed: ``strategy.example()`` is not reproducible and
running one hypothesis test per call costs far more than the call. So the
campaign draws plans here, from a :class:`random.Random` keyed by
``(seed, shard, batch)``, walking the same tables the strategies in
:mod:`kapi_selftests.fuzz.strategies` use (``FD_EDGES``, the size edges, mask bits,
range edges, ``KNOWN_VALUES``) and applying the same safety rules
(``plan.make_safe``: madvise only inside harness mappings). Batch ``k``
of shard ``s`` of seed ``S`` is the same list of plans on every machine and
every kernel, given the same specs and the same coverage steering input.

Each parameter has a *valid* pool (values its validator check accepts) and
an *invalid* pool (values it rejects); these are only a bias, the oracle
classifies every call afterwards. Steering: part of each batch is aimed at
the coverage goals still missing (:class:`~kapi_selftests.fuzz.coverage.Target`):
an invalid-side goal draws that parameter from its invalid pool and the others
from their valid pools; a valid-side goal draws every parameter valid.

With KCOV (``fuzz --kcov``) a share of each batch mutates plans that reached
new kernel code (:mod:`kapi_selftests.fuzz.kcov`): then what the kernel ran does
steer generation, and a seed replays the same calls only with the same corpus.
"""

from __future__ import annotations

import errno as errno_mod
import functools
import random
from collections.abc import Callable, Mapping, Sequence

from kapi_selftests import arch
from kapi_selftests.fuzz.coverage import Side, Target
from kapi_selftests.fuzz.edges import SIZED, Edge, ctype_width, param_edges, param_kind, sized
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

__all__ = ["PlanGenerator", "SIZE_EDGES", "STEER_ATTEMPTS", "RECENT", "batch_seed"]

U64 = (1 << 64) - 1
SIZE_EDGES = (0, 1, arch.PAGE_SIZE, arch.PAGE_SIZE + 1, arch.MAX_RW_COUNT,
              arch.MAX_RW_COUNT + 1, 1 << 32, (1 << 32) + 1)
_HUGE_SIZES = (arch.SSIZE_MAX, 1 << 63, U64)
_VALID_FDS = MADE_FDS
_VALID_PATHS = (PathKind.EXISTING, PathKind.NEW, PathKind.MISSING, PathKind.DIRECTORY,
                PathKind.EMPTY, PathKind.LEN_PATH_MAX_1, PathKind.COMPONENT_TOO_LONG,
                PathKind.SYMLINK_LOOP, PathKind.DEV_NULL)
_INVALID_PATHS = (PathKind.NULL, PathKind.KERNEL, PathKind.UNMAPPED, PathKind.UNTERMINATED,
                  PathKind.LEN_PATH_MAX, PathKind.LEN_PATH_MAX_P1)
_VALID_BUFS = (BufKind.MAPPED, BufKind.GUARD_TAIL, BufKind.SHORT, BufKind.UNALIGNED,
               BufKind.READONLY, BufKind.UNMAPPED)
_INVALID_BUFS = (BufKind.NULL, BufKind.KERNEL)
_ALIGNED_BUFS = (BufKind.MAPPED, BufKind.READONLY, BufKind.UNMAPPED, BufKind.NULL)
_UNALIGNED_BUFS = (BufKind.UNALIGNED, BufKind.SHORT)
#: steered calls a goal gets before steering gives up on it (some sides cannot be hit:
#: read's count is never the rejected parameter, buf's size check comes first)
STEER_ATTEMPTS = 400
#: corpus entries (the newest) that get half of the mutations
RECENT = 64


_O_WRONLY, _O_CREAT, _O_EXCL, _O_DIRECTORY = 0o1, 0o100, 0o200, 0o200000


_Recipe = Callable[[random.Random], CallPlan]


def _rw(name: str, fd: FdKind, buf: BufKind = BufKind.MAPPED,
        counts: tuple[int, ...] = (1, 64, arch.PAGE_SIZE)) -> _Recipe:
    def recipe(rng: random.Random) -> CallPlan:
        n = rng.choice(counts)
        return CallPlan(name, (Fd(fd), Buf(buf, n), Lit(n)))
    return recipe


def _open(path: PathKind, flags: int) -> _Recipe:
    return lambda rng: CallPlan("open", (Path(path), Lit(flags), Lit(0o600)))


#: Calls aimed at one listed error each, with the harness's own fds and paths only:
#: (spec, errno name) -> recipe. A fixed share of every batch (``error_rate``) is drawn
#: from here whether or not the error was seen yet: what the kernel returned never
#: steers generation, so a seed gives the same calls on every kernel (the gate compares
#: them). Errors that need conditions a scratch directory cannot make (quotas, ETXTBSY,
#: read-only mounts, signals) have no recipe; nor has write's EFBIG: on tmpfs the size
#: limit is LLONG_MAX, where pos + count overflows first (EINVAL; the REGULAR_AT_MAX fd
#: kind still exercises that edge).
ERROR_RECIPES: dict[tuple[str, str], _Recipe] = {
    ("sys_write", "EPIPE"): _rw("write", FdKind.PIPE_BROKEN),
    ("sys_write", "EDESTADDRREQ"): _rw("write", FdKind.SOCKET_DGRAM),
    ("sys_write", "ENOSPC"): _rw("write", FdKind.DEV_FULL),
    ("sys_write", "EBADF"): _rw("write", FdKind.REGULAR_RDONLY),
    ("sys_write", "EINVAL"): _rw("write", FdKind.EVENTFD, counts=(1, 4)),
    ("sys_write", "EFAULT"): _rw("write", FdKind.REGULAR, BufKind.UNMAPPED),
    ("sys_read", "EISDIR"): _rw("read", FdKind.DIRECTORY),
    ("sys_read", "EAGAIN"): _rw("read", FdKind.SOCKET_DGRAM),
    ("sys_read", "EINVAL"): _rw("read", FdKind.EVENTFD, counts=(1, 4)),
    ("sys_read", "EBADF"): _rw("read", FdKind.REGULAR_WRONLY),
    ("sys_read", "EFAULT"): _rw("read", FdKind.REGULAR, BufKind.UNMAPPED),
    ("sys_open", "EEXIST"): _open(PathKind.EXISTING, _O_CREAT | _O_EXCL | _O_WRONLY),
    ("sys_open", "EISDIR"): _open(PathKind.DIRECTORY, _O_WRONLY),
    ("sys_open", "ENOTDIR"): _open(PathKind.EXISTING, _O_DIRECTORY),
    ("sys_open", "ENOENT"): _open(PathKind.MISSING, 0),
    ("sys_open", "ELOOP"): _open(PathKind.SYMLINK_LOOP, 0),
    ("sys_open", "ENAMETOOLONG"): _open(PathKind.COMPONENT_TOO_LONG, 0),
    ("sys_close", "EBADF"): lambda rng: CallPlan("close", (Fd(FdKind.CLOSED),)),
}


def batch_seed(seed: int, shard: int, batch: int) -> str:
    """The string a batch's :class:`random.Random` is seeded with (stable across Pythons)."""
    return f"kapi-fuzz:{seed}:{shard}:{batch}"


@functools.lru_cache(maxsize=256)
def _bits(mask: int, width: int = 64) -> tuple[int, ...]:
    return tuple(1 << b for b in range(width) if mask >> b & 1)


@functools.lru_cache(maxsize=256)
def _bad_bits(mask: int, width: int) -> tuple[int, ...]:
    # single bits outside the mask, the int-sign and 32-bit boundaries first
    return tuple(b for b in (1 << 30, 1 << 31, 1 << 32) if not b & mask) + \
        _bits(((1 << width) - 1) & ~mask, width)


@functools.lru_cache(maxsize=256)
def _near(values: tuple[int, ...]) -> tuple[int, ...]:
    # neighbours of enum values that are not values themselves
    return tuple(sorted({(v + d) & U64 for v in values for d in (-1, 1)}
                        - {v & U64 for v in values}))


def _lists(spec: Spec, errname: str) -> bool:
    code = getattr(errno_mod, errname, None)
    return code is not None and any(abs(e.code) == code for e in spec.errors)


class PlanGenerator:
    """Draws batches of plans for ``specs`` (those with an x86-64 number) from a seed.

    :param specs: the spec model
    :param seed: campaign seed
    :param shard: shard number (disjoint random streams per shard)
    :param invalid_rate: chance an unsteered parameter comes from its invalid pool
    :param steer_rate: share of calls aimed at missing coverage goals
    :param error_rate: share of calls drawn from :data:`ERROR_RECIPES` (listed errors)
    :param edge_rate: chance an unsteered parameter is one of its edges
        (:func:`kapi_selftests.fuzz.edges.param_edges`), the values where validators err
    :param std_fds: fds 0-2 are the harness's where the calls run (the guest's agent):
        their edges may be drawn
    """

    def __init__(self, specs: Mapping[str, Spec], seed: int, shard: int = 0, *,
                 invalid_rate: float = 0.3, steer_rate: float = 0.5,
                 error_rate: float = 0.05, edge_rate: float = 0.25,
                 std_fds: bool = False) -> None:
        self.specs = {n: s for n, s in sorted(specs.items())
                      if arch.find_syscall(n) is not None and s.params}
        self.seed = seed
        self.shard = shard
        self.invalid_rate = invalid_rate
        self.steer_rate = steer_rate
        self.error_rate = error_rate
        self.edge_rate = edge_rate
        self.std_fds = std_fds
        self._kinds: dict[str, list[str]] = {}
        self._edges: dict[tuple[str, int], tuple[Edge, ...]] = {}
        # recipes for the listed errors of the specs in the model (sorted: deterministic)
        self._recipes = [(spec, ERROR_RECIPES[(spec, name)])
                         for spec, name in sorted(ERROR_RECIPES)
                         if spec in self.specs and _lists(self.specs[spec], name)]

    def batch(self, index: int, n: int, missing: Sequence[Target] = (),
              attempts: dict[Target, int] | None = None, corpus: Sequence[CallPlan] = (),
              mutate_rate: float = 0.5, costs: Sequence[int] = ()) -> list[CallPlan]:
        """Batch ``index``: ``n`` plans, part of them aimed at the ``missing`` goals.

        :param attempts: steered calls per goal so far, updated here; a goal that had
            :data:`STEER_ATTEMPTS` is no longer aimed at
        :param corpus: plans that reached new kernel code (KCOV): a ``mutate_rate``
            share of the calls are copies of them changed by :meth:`mutate`, half of those of
            the newest :data:`RECENT` entries (a rate of 0 draws exactly the plans a
            campaign without KCOV draws: the unguided baseline)
        :param costs: each corpus entry's cost (kernel PCs it ran): of two entries drawn,
            the cheaper is mutated, so slow calls do not take over a campaign
        """
        rng = random.Random(batch_seed(self.seed, self.shard, index))
        tries = attempts if attempts is not None else {}
        goals = [t for t in missing if t.spec in self.specs
                 and tries.get(t, 0) < STEER_ATTEMPTS]
        names = list(self.specs)
        out: list[CallPlan] = []
        recipes = self._recipes
        cost = costs if len(costs) == len(corpus) else [0] * len(corpus)
        first_recent = max(len(corpus) - RECENT, 0)
        for _ in range(n):
            if recipes and rng.random() < self.error_rate:
                _, recipe = rng.choice(recipes)
                out.append(make_safe(recipe(rng)))
            elif corpus and mutate_rate > 0 and rng.random() < mutate_rate:
                lo = first_recent if rng.random() < 0.5 else 0
                i, j = rng.randrange(lo, len(corpus)), rng.randrange(lo, len(corpus))
                out.append(self.mutate(rng, corpus[j if cost[j] < cost[i] else i]))
            elif goals and rng.random() < self.steer_rate:
                t = rng.choice(goals)
                tries[t] = tries.get(t, 0) + 1
                out.append(self.plan(rng, self.specs[t.spec], t))
            else:
                out.append(self.plan(rng, self.specs[rng.choice(names)]))
        return out

    def plan(self, rng: random.Random, spec: Spec, target: Target | None = None) -> CallPlan:
        """One plan for ``spec``; aimed at ``target`` when given."""
        abi = arch.find_syscall(spec.name)
        assert abi is not None

        def mode(p: ParamSpec) -> bool | None:
            # True: valid pool, False: invalid pool, None: either (random mix)
            if target is None:
                return None
            if target.side is Side.INVALID and target.param == p.name:
                return False
            return True

        kinds = self._kinds_of(spec)
        args: list[ArgPlan] = []
        for i, p in enumerate(spec.params):
            if target is None and rng.random() < self.edge_rate:
                args.append(rng.choice(self._edges_of(spec, i)).arg)
                continue
            valid = self._valid(rng, mode(p))
            if kinds[i] == "scalar":
                args.append(Lit(self._scalar(rng, spec, p, valid)))
            else:
                args.append(self._draw(rng, p, kinds[i], valid))
        return make_safe(CallPlan(abi.name, sized(spec, args)))

    def _edges_of(self, spec: Spec, i: int) -> tuple[Edge, ...]:
        key = (spec.name, i)
        es = self._edges.get(key)
        if es is None:
            es = param_edges(spec.name, spec.params[i])
            if not self.std_fds:
                es = tuple(e for e in es if not (isinstance(e.arg, Fd)
                                                 and e.arg.kind in STD_FDS)) or es
            self._edges[key] = es
        return es

    def _kinds_of(self, spec: Spec) -> list[str]:
        kinds = self._kinds.get(spec.name)
        if kinds is None:
            kinds = self._kinds[spec.name] = [param_kind(p) for p in spec.params]
        return kinds

    def _draw(self, rng: random.Random, p: ParamSpec, kind: str, valid: bool) -> ArgPlan:
        # a parameter's fd, path or buffer (sized later, by its count) from its valid or
        # invalid pool
        if kind == "fd":
            return self._fd(rng, valid)
        if kind == "path":
            return Path(rng.choice(_VALID_PATHS if valid else _INVALID_PATHS))
        return Buf(self._buf_kind(rng, p, valid), SIZED)

    def mutate(self, rng: random.Random, plan: CallPlan) -> CallPlan:
        """``plan`` with one argument (sometimes two) drawn again or nudged.

        A scalar gets a bit flipped, a small step, a value from its valid or invalid
        pool, or a random one; an fd, path or buffer is drawn again from either pool
        (a buffer keeps its size). Buffers stay sized by their count, as :meth:`plan`
        sizes them, and the harness's safety rules hold (``make_safe``).
        """
        abi = arch.find_syscall(plan.name)
        spec = self.specs.get(abi.spec_name) if abi is not None else None
        if spec is None or len(spec.params) != len(plan.args):
            return plan
        kinds = self._kinds_of(spec)
        args = list(plan.args)
        for _ in range(1 if rng.random() < 0.75 else 2):
            i = rng.randrange(len(args))
            p, a = spec.params[i], args[i]
            valid = rng.random() >= 0.5
            if rng.random() < self.edge_rate:
                args[i] = rng.choice(self._edges_of(spec, i)).arg
            elif kinds[i] == "scalar":
                old = a.value if isinstance(a, Lit) else 0
                args[i] = Lit(self._nudge(rng, spec, p, old, valid))
            else:  # a buffer is sized again below: the count may change after it
                args[i] = self._draw(rng, p, kinds[i], valid)
        return make_safe(CallPlan(plan.name, sized(spec, args)))

    def _nudge(self, rng: random.Random, spec: Spec, p: ParamSpec, old: int,
               valid: bool) -> int:
        width = ctype_width(p)
        r = rng.random()
        if r < 0.3:
            return (old ^ 1 << rng.randrange(width)) & U64
        if r < 0.5:
            return (old + rng.choice((-1, 1, -8, 8, arch.PAGE_SIZE, -arch.PAGE_SIZE))) & U64
        if r < 0.9:
            return self._scalar(rng, spec, p, valid)
        return rng.getrandbits(width)

    def _valid(self, rng: random.Random, forced: bool | None) -> bool:
        if forced is not None:
            return forced
        return rng.random() >= self.invalid_rate

    @staticmethod
    def _fd(rng: random.Random, valid: bool) -> ArgPlan:
        if not valid:
            return Lit(rng.choice(FD_EDGES))
        r = rng.random()
        if r < 0.1:
            return Fd(FdKind.CLOSED)  # passes validation; EBADF from the handler
        if r < 0.2:  # bits 32-63 set: the unsigned int cast drops them
            return Fd(rng.choice(_VALID_FDS), rng.choice((1, 0x7FFFFFFF, 0xFFFFFFFF)))
        return Fd(rng.choice(_VALID_FDS))

    @staticmethod
    def _buf_kind(rng: random.Random, p: ParamSpec, valid: bool) -> BufKind:
        if p.constraint in (ConstraintType.PAGE_ALIGNED, ConstraintType.ALIGNMENT):
            return rng.choice(_ALIGNED_BUFS if valid else _UNALIGNED_BUFS)
        return rng.choice(_VALID_BUFS if valid else _INVALID_BUFS)

    @staticmethod
    def _scalar(rng: random.Random, spec: Spec, p: ParamSpec, valid: bool) -> int:
        c = p.constraint
        width = ctype_width(p)
        if c is ConstraintType.MASK:
            good = _bits(p.valid_mask, width)
            combo = sum(set(rng.sample(good, rng.randint(0, min(len(good), 6))))) if good else 0
            if valid:
                return rng.choice((0, rng.choice(good) if good else 0, combo))
            bad = _bad_bits(p.valid_mask, width)
            r = rng.random()
            if bad and r < 0.7:
                return combo | rng.choice(bad)
            return rng.getrandbits(width) if r < 0.85 else rng.getrandbits(64)
        if c is ConstraintType.RANGE:
            if p.min_value == 0 and p.max_value == -1:  # a size_t count: never out of range
                if valid or rng.random() < 0.5:
                    r = rng.random()
                    return rng.choice(SIZE_EDGES) if r < 0.5 else rng.randint(0, 3 * arch.PAGE_SIZE)
                return rng.choice(_HUGE_SIZES) if rng.random() < 0.7 else rng.getrandbits(64)
            lo, hi = p.min_value, U64 if p.max_value == -1 else p.max_value
            if valid:
                return rng.choice((lo & U64, hi & U64, rng.randint(max(lo, 0), max(lo, 0, min(
                    hi, 1 << 20)))))
            return rng.choice(((lo - 1) & U64, (hi + 1) & U64, rng.getrandbits(64)))
        if c is ConstraintType.ENUM and p.enum_values:
            if valid:
                return rng.choice(p.enum_values) & U64
            near = _near(tuple(p.enum_values))
            return rng.choice(near) if near and rng.random() < 0.7 else rng.getrandbits(64)
        if c is ConstraintType.POWER_OF_TWO:
            return rng.choice((1, 2, 4096)) if valid else rng.choice((0, 3, 4097))
        if c is ConstraintType.NONZERO:
            return rng.choice((1, rng.getrandbits(64) | 1)) if valid else 0
        known = KNOWN_VALUES.get((spec.name, p.name), ())
        r = rng.random()
        if known and r < 0.7:
            return rng.choice(known) & U64
        if r < 0.9:
            return rng.choice((0, U64, arch.INT_MAX, (-(2 ** 31)) & U64,
                               (rng.choice(known) if known else 0) | 1 << 32))
        return rng.getrandbits(64)
