"""The edges of every spec'd parameter: the values where a validator's decision turns. Pure.

A validator bug is most often off by one at a boundary: a range bound, a mask
bit, an alignment, the end of the user address space, the lowest fd. From each
parameter's constraint and C type this module derives its edges, once, for
every consumer: the hypothesis strategies sample them first, the fuzzer's
generator draws them for a share of every batch, and the suite's edge sweep
issues every edge of every parameter once (``tests/guest/test_edges.py``).
:class:`EdgeCoverage` says which edges a run issued and on which side the
oracle put them, so an edge never issued is a visible gap, not silence.

- range ``[lo, hi]``: lo-1, lo, lo+1, hi-1, hi, hi+1, and the C type's own extremes
  after the wrapper's cast (``unsigned int``: 0x7fffffff, 0x80000000, 0xffffffff,
  2^32+lo; ``size_t``: bit 63; ``int``: INT_MIN, -1);
- mask: 0, each valid bit alone, each invalid bit alone (bit 32 for a 32-bit type:
  the cast drops it), all valid bits, the sign bit;
- alignment (page-aligned: 4096): a buffer at every power of two below the
  alignment, at alignment-1 and alignment+1, and at the alignment itself;
- fd: 0, 1, 2 (harness-owned files, where :func:`~kapi_selftests.guest.fds.own_std_fds`
  made them so), INT_MAX-1, INT_MAX, INT_MAX+1, -1, 2^32+fd, a closed fd;
- user path: lengths PATH_MAX-2 .. PATH_MAX+1, unterminated at a guard page, NULL,
  kernel half, unmapped, empty;
- user buffer: NULL, the last user bytes (ending at USER_PTR_MAX), one byte past,
  the first non-user address, a guard page, read-only, kernel half;
- enum: each value, its neighbours, min-1, max+1; no constraint: known values, 0,
  -1, INT_MIN, INT_MAX and a value with bit 32 set.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from kapi_selftests import arch
from kapi_selftests.oracle.spec import ConstraintType, ParamSpec, ParamType, Spec
from kapi_selftests.plan import (
    KNOWN_VALUES,
    MAX_MAPPING,
    TOP_BUFS,
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
from kapi_selftests.records import Prediction

__all__ = ["Edge", "SIZED", "param_kind", "ctype_width", "param_edges", "default_arg",
           "sized", "edge_plans", "edge_of", "plan_edges", "EdgeCoverage"]

U64 = (1 << 64) - 1
#: a buffer edge's size before a plan fixes it: the count that sizes the buffer
SIZED = -1
#: a count beyond what any harness mapping holds sizes its buffer at this much: the call
#: still runs past the buffer's end, and the harness does not fill a megabyte per call
BIG_BUFFER = 64 << 10
_STD = (FdKind.STD0, FdKind.STD1, FdKind.STD2)


@dataclass(frozen=True, slots=True)
class Edge:
    """One edge of a parameter: a stable name (for coverage and reports) and the
    argument that issues it (a buffer's size :data:`SIZED` until a plan sizes it)."""

    name: str
    arg: ArgPlan


def _is_address(p: ParamSpec) -> bool:
    return p.constraint in (ConstraintType.PAGE_ALIGNED, ConstraintType.ALIGNMENT) or \
        p.type in (ParamType.PTR, ParamType.USER_PTR)


def param_kind(p: ParamSpec) -> str:
    """How a parameter is drawn: ``fd``, ``path``, ``address`` (a buffer) or ``scalar``."""
    if p.type is ParamType.FD:
        return "fd"
    if p.type is ParamType.PATH or p.constraint is ConstraintType.USER_PATH:
        return "path"
    return "address" if _is_address(p) else "scalar"


def ctype_width(p: ParamSpec) -> int:
    """Bits the wrapper's C-type cast keeps of the register."""
    return 32 if p.ctype.strip() in ("int", "unsigned int", "umode_t", "u32") else 64


def _signed(p: ParamSpec) -> bool:
    return p.ctype.strip() in ("int", "long", "loff_t", "off_t", "ssize_t")


def _dedup(edges: Iterable[Edge]) -> tuple[Edge, ...]:
    seen: set[ArgPlan] = set()
    out = []
    for e in edges:
        key = Lit(e.arg.value & U64) if isinstance(e.arg, Lit) else e.arg
        if key not in seen:
            seen.add(key)
            out.append(e)
    return tuple(out)


def _type_extremes(p: ParamSpec, lo: int) -> list[Edge]:
    w = ctype_width(p)
    if w == 32:
        out = [Edge("0x7fffffff", Lit(0x7FFFFFFF)), Edge("0x80000000", Lit(0x80000000)),
               Edge("0xffffffff", Lit(0xFFFFFFFF)),
               Edge("2^32+min", Lit(((1 << 32) + lo) & U64))]
        if _signed(p):
            out.append(Edge("-1 (64-bit)", Lit(U64)))
        return out
    return [Edge("bit 63", Lit(1 << 63)), Edge("2^63-1", Lit((1 << 63) - 1)),
            Edge("2^32", Lit(1 << 32)), Edge("2^32-1", Lit((1 << 32) - 1))]


def _range_edges(p: ParamSpec) -> list[Edge]:
    lo = p.min_value
    hi = U64 if p.max_value == -1 else p.max_value
    named = [("min-1", lo - 1), ("min", lo), ("min+1", lo + 1),
             ("max-1", hi - 1), ("max", hi), ("max+1", hi + 1)]
    return [Edge(f"{n} ({v & U64:#x})", Lit(v & U64)) for n, v in named] + \
        _type_extremes(p, lo)


def _fd_edges(p: ParamSpec) -> list[Edge]:
    lo, hi = (p.min_value, p.max_value) if p.constraint is ConstraintType.RANGE \
        else (0, arch.INT_MAX)
    out = [Edge(f"fd {n}", Fd(k)) for n, k in enumerate(_STD)]
    out += [Edge("an open fd", Fd(FdKind.REGULAR)), Edge("a closed fd", Fd(FdKind.CLOSED)),
            Edge("2^32+fd", Fd(FdKind.REGULAR, 1)), Edge("2^63+fd", Fd(FdKind.REGULAR, 1 << 31))]
    for name, v in (("min-1", lo - 1), ("max-1", hi - 1), ("max", hi), ("max+1", hi + 1)):
        if 0 <= v <= 2:
            continue  # fds 0-2 are the harness's files above, never bare numbers
        out.append(Edge(f"{name} ({v & U64:#x})", Lit(v & U64)))
    out += [Edge("-1 (32-bit)", Lit(0xFFFFFFFF)), Edge("0x80000000", Lit(0x80000000))]
    return out


def _mask_edges(p: ParamSpec) -> list[Edge]:
    w = ctype_width(p)
    valid = p.valid_mask & ((1 << w) - 1)
    out = [Edge("0", Lit(0))]
    out += [Edge(f"bit {b}", Lit(1 << b)) for b in range(w) if valid >> b & 1]
    out += [Edge(f"bit {b} (invalid)", Lit(1 << b)) for b in range(w) if not valid >> b & 1]
    if w == 32:
        out.append(Edge("bit 32 (dropped by the cast)", Lit(1 << 32)))
    out += [Edge("all valid bits", Lit(valid)), Edge("sign bit", Lit(1 << (w - 1)))]
    return out


def _alignment_edges(p: ParamSpec) -> list[Edge]:
    a = arch.PAGE_SIZE if p.constraint is ConstraintType.PAGE_ALIGNED else max(p.alignment, 1)
    offsets = [("aligned", 0)] + [(f"+{1 << k}", 1 << k) for k in range(a.bit_length() - 1)]
    offsets += [(f"+{a - 1} (align-1)", a - 1), (f"+{a} (align)", a),
                (f"+{a + 1} (align+1)", a + 1)]
    if param_kind(p) == "address":
        return [Edge(n, Buf(BufKind.MAPPED, SIZED, o)) for n, o in offsets]
    base = 1 << 20  # a plain aligned number: a multiple of any alignment up to 1 MiB
    return [Edge(n, Lit(base + o)) for n, o in offsets]


_BUFFER_EDGES = (
    ("mapped", BufKind.MAPPED), ("ending at a guard page", BufKind.GUARD_TAIL),
    ("one byte short", BufKind.SHORT), ("read-only", BufKind.READONLY),
    ("guard page", BufKind.UNMAPPED), ("NULL", BufKind.NULL), ("kernel half", BufKind.KERNEL),
    ("last user bytes", BufKind.LAST_USER), ("one byte past user", BufKind.CROSS_USER),
    ("first non-user address", BufKind.NON_USER),
)

_PATH_EDGES = (
    ("existing", PathKind.EXISTING), ("new", PathKind.NEW), ("empty", PathKind.EMPTY),
    ("length PATH_MAX-2", PathKind.LEN_PATH_MAX_2), ("length PATH_MAX-1",
                                                      PathKind.LEN_PATH_MAX_1),
    ("length PATH_MAX", PathKind.LEN_PATH_MAX), ("length PATH_MAX+1", PathKind.LEN_PATH_MAX_P1),
    ("unterminated at a guard page", PathKind.UNTERMINATED), ("NULL", PathKind.NULL),
    ("kernel half", PathKind.KERNEL), ("unmapped", PathKind.UNMAPPED),
)


def _scalar_edges(spec_name: str, p: ParamSpec) -> list[Edge]:
    c = p.constraint
    if c is ConstraintType.MASK:
        return _mask_edges(p)
    if c is ConstraintType.RANGE:
        return _range_edges(p)
    if c in (ConstraintType.PAGE_ALIGNED, ConstraintType.ALIGNMENT):
        return _alignment_edges(p)
    if c is ConstraintType.ENUM and p.enum_values:
        vals = sorted(v & U64 for v in p.enum_values)
        out = [Edge(f"value {v:#x}", Lit(v)) for v in vals]
        out += [Edge(f"near {v:#x}", Lit(v)) for v in
                sorted({(v + d) & U64 for v in vals for d in (-1, 1)} - set(vals))]
        return out
    if c is ConstraintType.POWER_OF_TWO:
        return [Edge(str(v), Lit(v)) for v in (0, 1, 2, 3, 4096, 4097, 1 << 63)]
    if c is ConstraintType.NONZERO:
        return [Edge("0", Lit(0)), Edge("1", Lit(1)), Edge("all ones", Lit(U64))]
    known = KNOWN_VALUES.get((spec_name, p.name), ())
    out = [Edge(f"known {v:#x}", Lit(v & U64)) for v in known]
    out += [Edge("0", Lit(0)), Edge("-1", Lit(U64)), Edge("INT_MAX", Lit(arch.INT_MAX)),
            Edge("INT_MIN", Lit((-(2 ** 31)) & U64)),
            Edge("bit 32 set", Lit((known[0] if known else 0) | 1 << 32))]
    return out


@functools.lru_cache(maxsize=512)
def param_edges(spec_name: str, p: ParamSpec) -> tuple[Edge, ...]:
    """Every edge of parameter ``p`` of ``spec_name``, first name winning for a value."""
    kind = param_kind(p)
    if kind == "fd":
        return _dedup(_fd_edges(p))
    if kind == "path":
        return tuple(Edge(n, Path(k)) for n, k in _PATH_EDGES)
    if kind == "address":
        if p.constraint in (ConstraintType.PAGE_ALIGNED, ConstraintType.ALIGNMENT):
            return _dedup(_alignment_edges(p) + [Edge(n, Buf(k, SIZED)) for n, k in (
                ("guard page", BufKind.UNMAPPED), ("NULL", BufKind.NULL),
                ("kernel half", BufKind.KERNEL))])
        return tuple(Edge(n, Buf(k, SIZED)) for n, k in _BUFFER_EDGES)
    return _dedup(_scalar_edges(spec_name, p))


def default_arg(spec_name: str, p: ParamSpec) -> ArgPlan:
    """A value of ``p`` its check accepts, for the other parameters of an edge's call."""
    kind = param_kind(p)
    if kind == "fd":
        return Fd(FdKind.REGULAR)
    if kind == "path":
        return Path(PathKind.EXISTING)
    if kind == "address":
        return Buf(BufKind.MAPPED, SIZED)
    c = p.constraint
    if c is ConstraintType.RANGE:
        lo = max(p.min_value, 0)
        return Lit(arch.PAGE_SIZE if lo == 0 and p.max_value == -1 else lo)
    if c is ConstraintType.ENUM and p.enum_values:
        return Lit(p.enum_values[0] & U64)
    if c in (ConstraintType.POWER_OF_TWO, ConstraintType.NONZERO):
        return Lit(1)
    known = KNOWN_VALUES.get((spec_name, p.name), ())
    return Lit(known[0] & U64 if known else 0)


def _buf_size(p: ParamSpec, i: int, regs: Mapping[int, int]) -> int:
    # A buffer is as long as the count that sizes it (its size_param, else the next
    # parameter); a count beyond what a harness mapping holds gets BIG_BUFFER.
    j = p.size_param if p.size_param is not None else i + 1
    size = regs.get(j, arch.PAGE_SIZE)
    return size if size <= min(MAX_MAPPING, 1 << 20) else BIG_BUFFER


def sized(spec: Spec, args: Sequence[ArgPlan]) -> tuple[ArgPlan, ...]:
    """``args`` with every buffer sized by its count (a top-of-user-space one within a
    page); the one place plans get their buffer sizes."""
    regs = {i: a.value for i, a in enumerate(args) if isinstance(a, Lit)}
    out = list(args)
    for i, (p, a) in enumerate(zip(spec.params, args, strict=True)):
        if isinstance(a, Buf) and param_kind(p) == "address":
            size = _buf_size(p, i, regs)
            out[i] = replace(a, size=min(size, arch.PAGE_SIZE) if a.kind in TOP_BUFS else size)
    return tuple(out)


def edge_plans(spec: Spec, *, std_fds: bool = True) -> list[tuple[int, Edge, CallPlan]]:
    """The edge sweep of ``spec``: for each parameter and each of its edges, one call with
    that edge and accepted values elsewhere (``std_fds``: fds 0-2 may be named)."""
    abi = arch.find_syscall(spec.name)
    if abi is None:
        return []
    defaults = [default_arg(spec.name, p) for p in spec.params]
    out = []
    for i, p in enumerate(spec.params):
        for e in param_edges(spec.name, p):
            if not std_fds and isinstance(e.arg, Fd) and e.arg.kind in _STD:
                continue
            args = list(defaults)
            args[i] = e.arg
            out.append((i, e, make_safe(CallPlan(abi.name, sized(spec, args)))))
    return out


def _key(a: ArgPlan) -> ArgPlan:
    if isinstance(a, Lit):
        return Lit(a.value & U64)
    if isinstance(a, Buf):
        return Buf(a.kind, SIZED, a.offset)
    return a


@functools.lru_cache(maxsize=512)
def _index(spec_name: str, p: ParamSpec) -> dict[ArgPlan, str]:
    return {_key(e.arg): e.name for e in reversed(param_edges(spec_name, p))}


def edge_of(spec_name: str, p: ParamSpec, arg: ArgPlan) -> str | None:
    """The name of the edge ``arg`` issues for ``p``, or None when it is none of them."""
    return _index(spec_name, p).get(_key(arg))


def plan_edges(spec: Spec, plan: CallPlan) -> list[str]:
    """``param edge`` for every argument of ``plan`` that is one of its parameter's edges
    (what a finding's report names: the edge that exposed it)."""
    if len(spec.params) != len(plan.args):
        return []
    return [f"{p.name} {name}" for p, a in zip(spec.params, plan.args, strict=True)
            if (name := edge_of(spec.name, p, a)) is not None]


class EdgeCoverage:
    """Which edges of which parameters were issued, on which side of validation.

    A call counts for a parameter's edge on the *accepted* side when the oracle let
    that parameter pass, on the *rejected* side when the oracle rejects the call at
    that parameter, and as *earlier* when an earlier parameter rejects it first (the
    edge was issued; its own check never ran: read's count edges above SSIZE_MAX are
    all of this kind, the buffer they size is refused first).
    """

    def __init__(self, specs: Mapping[str, Spec]) -> None:
        self.specs = dict(specs)
        self.counts: Counter[tuple[str, str, str, str]] = Counter()

    def add(self, spec_name: str, plan: CallPlan, prediction: Prediction | None) -> None:
        """Count ``plan``'s edges by the oracle's ``prediction`` of its call (None: no
        prediction, as against the generic syscall events: the edges count as issued)."""
        for k in self._keys(spec_name, plan, prediction):
            self.counts[k] += 1

    def add_many(self, calls: Iterable[tuple[str, CallPlan, Prediction | None]]) -> None:
        """:meth:`add` for a batch: equal calls are classified once."""
        for (name, plan, pred), n in Counter(calls).items():
            for k in self._keys(name, plan, pred):
                self.counts[k] += n

    def _keys(self, spec_name: str, plan: CallPlan, prediction: Prediction | None
              ) -> list[tuple[str, str, str, str]]:
        spec = self.specs.get(spec_name)
        if spec is None or len(spec.params) != len(plan.args):
            return []
        rejected_at: int | None = None
        if prediction is not None:
            if prediction.undetermined is not None:
                return []
            rej = prediction.rejection
            if rej is not None:
                if rej.index is None:
                    return []  # rejected for no parameter (the count of them)
                rejected_at = rej.index
        out = []
        for i, (p, a) in enumerate(zip(spec.params, plan.args, strict=True)):
            name = edge_of(spec_name, p, a)
            if name is not None:
                side = ("issued" if prediction is None else
                        "earlier" if rejected_at is not None and i > rejected_at else
                        "rejected" if rejected_at == i else "accepted")
                out.append((spec_name, p.name, name, side))
        return out

    def figure(self) -> tuple[int, int]:
        """(edges issued on some side, edges in all)."""
        total = sum(len(param_edges(n, p)) for n, s in self.specs.items() for p in s.params)
        return total - len(self.missing()), total

    def merge(self, other: EdgeCoverage) -> None:
        self.counts.update(other.counts)

    def to_json(self) -> list[list[Any]]:
        return [[*k, v] for k, v in sorted(self.counts.items())]

    def load_json(self, rows: Iterable[Sequence[Any]]) -> None:
        for spec, param, edge, side, n in rows:
            self.counts[(str(spec), str(param), str(edge), str(side))] += int(n)

    def missing(self, *, std_fds: bool = True) -> list[tuple[str, str, str]]:
        """(spec, parameter, edge) never issued on either side."""
        seen = {(s, p, e) for s, p, e, _side in self.counts}
        out = []
        for name, spec in sorted(self.specs.items()):
            for p in spec.params:
                for e in param_edges(name, p):
                    if not std_fds and isinstance(e.arg, Fd) and e.arg.kind in _STD:
                        continue
                    if (name, p.name, e.name) not in seen:
                        out.append((name, p.name, e.name))
        return out

    def table(self) -> list[str]:
        """One line per parameter: edges issued of all, and each edge's sides (a: accepted,
        r: rejected, e: rejected earlier, i: issued with no prediction, -: never issued)."""
        lines = []
        for name, spec in sorted(self.specs.items()):
            for p in spec.params:
                edges = param_edges(name, p)
                cells, hit = [], 0
                for e in edges:
                    a, r, b, i = (self.counts[(name, p.name, e.name, side)]
                                  for side in ("accepted", "rejected", "earlier", "issued"))
                    hit += bool(a or r or b or i)
                    mark = "".join(m for m, n in (("a", a), ("r", r), ("e", b), ("i", i)) if n)
                    cells.append(f"{e.name}={mark or '-'}")
                lines.append(f"{name}.{p.name}: {hit}/{len(edges)} edges: " + ", ".join(cells))
        return lines
