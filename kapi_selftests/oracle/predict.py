"""The oracle: what a ``CONFIG_KAPI_RUNTIME_CHECKS`` kernel will do and trace for a call.

:func:`predict` runs, in Python, the validation the v4 series' syscall wrapper
runs before the handler (``kapi_validate_syscall_params`` and the functions it
calls in ``kernel/api/kernel_api_spec.c``), over the values the wrapper builds
(each register cast to its C type, widened to ``s64``), and renders the
``params`` string of ``kapi_syscall_enter`` as the kernel does.
:func:`expected_spec_match` is the kernel's return check
(``kapi_validate_syscall_return``). :func:`judge` compares a call's record and
its kapi events with the prediction and returns findings, each with a one-line
explanation and the evidence.

What validation needs to know about user memory (the length of a string at an
address, as ``strnlen_user`` would measure it) comes in through the
:class:`MemoryView` protocol, supplied by the caller: the oracle never touches
memory itself and does no I/O. See ``docs/oracle.md``.
"""

from __future__ import annotations

import errno as _errno
import operator
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from kapi_selftests.arch import MASK64
from kapi_selftests.oracle.ctype import parse_ctype, to_s64
from kapi_selftests.oracle.spec import ConstraintType, ParamSpec, ParamType, ReturnCheck, Spec
from kapi_selftests.plan import CallPlan
from kapi_selftests.records import (
    ENTER,
    EXIT,
    CheckKind,
    Finding,
    FindingKind,
    Materialized,
    Prediction,
    Rejection,
    SyscallRecord,
    failures_of,
)
from kapi_selftests.trace.events import TraceEvent
from kapi_selftests.trace.pairing import pair

__all__ = ["USER_PTR_MAX", "USER_PTR_MAX_LA57", "LA57_PROBE_HINT", "user_ptr_max_from_probe",
           "PATH_MAX", "AT_FDCWD", "RESTART_CODES", "MemoryView", "UserString", "MemoryFacts",
           "predict", "render_params", "expected_spec_match", "Verdict", "judge",
           "PlanMaterializer"]

#: ``USER_PTR_MAX`` of x86-64 with 4-level paging and LAM off: ``TASK_SIZE_MAX``;
#: ``access_ok`` accepts an end address ``<=`` this.
USER_PTR_MAX = 0x00007FFFFFFFF000
#: The same with 5-level paging (LA57): 56-bit user addresses.
USER_PTR_MAX_LA57 = 0x00FFFFFFFFFFF000
#: The hint address of the paging probe: above every 4-level user address.
LA57_PROBE_HINT = 1 << 48


def user_ptr_max_from_probe(mapped: int | None) -> int:
    """``USER_PTR_MAX`` from the paging probe: where ``mmap(LA57_PROBE_HINT, ...)`` mapped.

    A 5-level kernel honours a hint above 47 bits; a 4-level one (or one booted with
    ``no5lvl``) cannot map there and gives a lower address. A probe that failed to map
    (None) means 4-level too.
    """
    if mapped is not None and mapped > USER_PTR_MAX:
        return USER_PTR_MAX_LA57
    return USER_PTR_MAX
PATH_MAX = 4096
AT_FDCWD = -100
INT_MIN, INT_MAX = -(1 << 31), (1 << 31) - 1
SIZE_MAX = MASK64
PAGE_SIZE = 4096
KAPI_MAX_PARAMS = 16
#: ``KAPI_TP_PARAMS_LEN``: the params string buffer, NUL included.
KAPI_TP_PARAMS_LEN = 256
EINVAL = 22
EINTR = 4
#: Kernel-internal restart codes a kapi exit can carry (never seen by userspace as such).
RESTART_CODES: Mapping[int, str] = {
    -512: "ERESTARTSYS", -513: "ERESTARTNOINTR", -514: "ERESTARTNOHAND",
    -516: "ERESTART_RESTARTBLOCK",
}
#: Restart codes userspace sees as EINTR when a handler ran without SA_RESTART.
_EINTR_RESTARTS = frozenset((-512, -514, -516))
_RESTARTBLOCK = -516


# --------------------------------------------------------------------------
# Memory facts
# --------------------------------------------------------------------------

class MemoryView(Protocol):
    """What the oracle may ask about the caller's user memory.

    A view may also carry ``user_ptr_max`` (an int, the kernel's ``USER_PTR_MAX`` as the
    side that laid the memory out found it): :func:`predict` and :func:`judge` take it
    when not given one.
    """

    def strnlen_user(self, addr: int, count: int) -> int | None:
        """``strnlen_user(addr, count)`` as the kernel computes it, or None if unknown.

        Kernel semantics: the string length *including* its NUL when the NUL
        lies within ``count`` readable bytes; a value greater than ``count``
        when ``count`` bytes were readable without a NUL; 0 when a fault (an
        unmapped or unreadable byte, or the end of user space) comes first.
        """
        ...


@dataclass(frozen=True, slots=True)
class UserString:
    """A fact about the bytes at ``addr``.

    :param addr: user address
    :param length: ``strlen`` from ``addr``, or None if no NUL comes before the fault
    :param readable: bytes readable from ``addr`` before a fault; None if unbounded
    """

    addr: int
    length: int | None
    readable: int | None = None


@dataclass(frozen=True, slots=True)
class MemoryFacts:
    """A :class:`MemoryView` built from explicit facts (what the harness laid out).

    :param strings: known strings and unterminated byte runs
    :param unmapped: ``[start, end)`` ranges known to fault
    :param user_ptr_max: addresses above this fault in ``strnlen_user``
    """

    strings: tuple[UserString, ...] = ()
    unmapped: tuple[tuple[int, int], ...] = ()
    user_ptr_max: int = USER_PTR_MAX

    def strnlen_user(self, addr: int, count: int) -> int | None:
        if count <= 0:
            return 0
        addr &= MASK64
        if addr > self.user_ptr_max:
            return 0
        for s in self.strings:
            if s.addr != addr:
                continue
            if s.length is not None and s.length + 1 <= count:
                if s.readable is not None and s.readable < s.length + 1:
                    return 0
                return s.length + 1
            if s.readable is None or s.readable >= count:
                return count + 1
            return 0
        for lo, hi in self.unmapped:
            if lo <= addr < hi:
                return 0
        return None


# --------------------------------------------------------------------------
# Prediction
# --------------------------------------------------------------------------


class _Undetermined(Exception):
    pass


def _access_ok(ptr: int, size: int, user_ptr_max: int) -> bool:
    # x86-64 __access_ok() for a size not known at compile time: ptr + size
    # must not wrap and must end at or below USER_PTR_MAX.
    end = (ptr + size) & MASK64
    return end <= user_ptr_max and end >= ptr


def _strnlen(memory: MemoryView | None, addr: int, count: int) -> int:
    # strnlen_user() takes a long count: a count that is <= 0 reads nothing.
    count = to_s64(count)
    if count <= 0:
        return 0
    if memory is None:
        raise _Undetermined(f"length of the string at 0x{addr:x} (no memory facts given)")
    n = memory.strnlen_user(addr, count)
    if n is None:
        raise _Undetermined(f"length of the string at 0x{addr:x} (not in the memory facts)")
    return n


def _reject(p: ParamSpec, i: int, check: CheckKind, reason: str) -> Rejection:
    return Rejection(p.name, i, check, reason)


def _check_path(p: ParamSpec, i: int, v: int, memory: MemoryView | None,
                user_ptr_max: int, check: CheckKind) -> Rejection | None:
    ptr = v & MASK64
    if ptr == 0 and p.optional:
        return None
    if ptr == 0:
        return _reject(p, i, check, "NULL path not allowed")
    if ptr > user_ptr_max:  # access_ok(path, 1): a constant size, so ptr alone
        return _reject(p, i, check, f"path pointer 0x{ptr:x} not accessible (access_ok)")
    n = _strnlen(memory, ptr, PATH_MAX + 1)
    if n == 0:
        return _reject(p, i, check, f"path at 0x{ptr:x} faults before its NUL (strnlen_user 0)")
    if n > PATH_MAX:
        return _reject(p, i, check, f"path at 0x{ptr:x} longer than PATH_MAX "
                                    f"(no NUL in {PATH_MAX} bytes)")
    return None


def _check_user_string(p: ParamSpec, i: int, v: int, memory: MemoryView | None,
                       user_ptr_max: int) -> Rejection | None:
    ptr = v & MASK64
    ck = CheckKind.USER_STRING
    if ptr == 0 and p.optional:
        return None
    if ptr == 0:
        return _reject(p, i, ck, "NULL string not allowed")
    if ptr > user_ptr_max:
        return _reject(p, i, ck, f"string pointer 0x{ptr:x} not accessible (access_ok)")
    limit = (p.max_value + 1) & MASK64 if p.max_value > 0 else PATH_MAX + 1
    n = _strnlen(memory, ptr, limit)
    if n == 0:
        return _reject(p, i, ck, f"string at 0x{ptr:x} unreadable (strnlen_user 0)")
    length = n - 1
    if p.min_value > 0 and length < p.min_value:
        return _reject(p, i, ck, f"string too short ({length} < {p.min_value})")
    if p.max_value > 0 and length > p.max_value:
        return _reject(p, i, ck, f"string too long ({length} > {p.max_value})")
    return None


def _check_buffer(p: ParamSpec, i: int, v: int, values: Sequence[int], nparams: int,
                  user_ptr_max: int) -> Rejection | None:
    # kapi_validate_param_with_context() for KAPI_TYPE_USER_PTR.
    ptr = v & MASK64
    if ptr == 0 and p.optional:
        return None
    size = p.size
    if not p.size_param_known:
        if ptr == 0 or not _access_ok(ptr, 0, user_ptr_max):
            # Rejected whichever parameter sizes it (with the v4 multiplier of 0).
            return _reject(p, i, CheckKind.USER_PTR,
                           "NULL pointer" if ptr == 0 else
                           f"0x{ptr:x} fails access_ok (size parameter unknown)")
        negative = [j for j, x in enumerate(values) if j != i and x < 0]
        if negative:
            raise _Undetermined(f"{p.name}: which parameter sizes it is unknown, and "
                                f"parameter {negative[0]} is negative as s64")
        size = 0
    elif p.size_param is not None and p.size_param < nparams:
        count = values[p.size_param]
        if count < 0:
            return _reject(p, i, CheckKind.BUFFER_SIZE,
                           f"size determinant (param {p.size_param}) is negative ({count})")
        if p.size_multiplier > 0 and count > SIZE_MAX // p.size_multiplier:
            return _reject(p, i, CheckKind.BUFFER_SIZE,
                           f"size {count} * {p.size_multiplier} overflows size_t")
        size = (count * p.size_multiplier) & MASK64
    if ptr == 0:
        return _reject(p, i, CheckKind.USER_PTR, "NULL pointer not allowed")
    if not _access_ok(ptr, size, user_ptr_max):
        return _reject(p, i, CheckKind.USER_PTR, f"0x{ptr:x} + {size} fails access_ok")
    return None


def _validate_param(p: ParamSpec, i: int, v: int, values: Sequence[int], nparams: int,
                    memory: MemoryView | None, user_ptr_max: int) -> Rejection | None:
    """One parameter, as kapi_validate_param_with_context() then kapi_validate_param()."""
    u = v & MASK64
    if p.type is ParamType.USER_PTR:
        if u == 0 and p.optional:
            return None  # the context check returns early: no constraint is checked
        r = _check_buffer(p, i, v, values, nparams, user_ptr_max)
        if r is not None:
            return r
    # kapi_validate_param()
    if p.type is ParamType.FD and not p.optional:
        if v < INT_MIN or v > INT_MAX:
            return _reject(p, i, CheckKind.FD, f"file descriptor {v} out of int range")
        if v < 0 and v != AT_FDCWD:
            return _reject(p, i, CheckKind.FD, f"invalid file descriptor {v}")
    if p.type is ParamType.USER_PTR:
        if u == 0 and p.optional:
            return None
        if u == 0:
            return _reject(p, i, CheckKind.USER_PTR, "NULL pointer not allowed")
        if not _access_ok(u, p.size, user_ptr_max):
            return _reject(p, i, CheckKind.USER_PTR, f"0x{u:x} + {p.size} fails access_ok")
    if p.type is ParamType.PATH:
        r = _check_path(p, i, v, memory, user_ptr_max, CheckKind.PATH)
        if r is not None:
            return r
    c = p.constraint
    if c in (ConstraintType.NONE, ConstraintType.BUFFER):
        return None
    if c is ConstraintType.RANGE:
        # A negative max is SIZE_MAX (or another unsigned bound) stored in an s64:
        # the kernel then checks only the minimum.
        if p.max_value >= 0:
            if v < p.min_value or v > p.max_value:
                return _reject(p, i, CheckKind.RANGE,
                               f"value {v} out of range [{p.min_value}, {p.max_value}]")
        elif v < p.min_value:
            return _reject(p, i, CheckKind.RANGE, f"value {v} below minimum {p.min_value} "
                           f"(max {p.max_value} < 0: no upper bound)")
        return None
    if c is ConstraintType.MASK:
        bad = u & ~p.valid_mask & MASK64
        if bad:
            return _reject(p, i, CheckKind.MASK, f"value 0x{u:x} has bits 0x{bad:x} outside "
                                                 f"mask 0x{p.valid_mask:x}")
        return None
    if c is ConstraintType.ENUM:
        if p.enum_values is None:
            raise _Undetermined(f"{p.name}: enum values not known")
        if not p.enum_values or v in p.enum_values:
            return None
        return _reject(p, i, CheckKind.ENUM, f"value {v} not in the enumeration")
    if c is ConstraintType.ALIGNMENT:
        a = p.alignment
        if a == 0:
            return _reject(p, i, CheckKind.ALIGNMENT, "alignment constraint with alignment 0")
        if a & (a - 1):
            return _reject(p, i, CheckKind.ALIGNMENT, f"alignment {a} is not a power of two")
        if u & (a - 1):
            return _reject(p, i, CheckKind.ALIGNMENT, f"value 0x{u:x} not aligned to {a}")
        return None
    if c is ConstraintType.POWER_OF_TWO:
        # s64 arithmetic wraps: S64_MIN passes (its v & (v - 1) is 0).
        if u == 0 or (u & ((u - 1) & MASK64)):
            return _reject(p, i, CheckKind.POWER_OF_TWO, f"value {v} is not a power of two")
        return None
    if c is ConstraintType.PAGE_ALIGNED:
        if u & (PAGE_SIZE - 1):
            return _reject(p, i, CheckKind.PAGE_ALIGNED, f"value 0x{u:x} not page-aligned")
        return None
    if c is ConstraintType.NONZERO:
        if v == 0:
            return _reject(p, i, CheckKind.NONZERO, "value must be non-zero")
        return None
    if c is ConstraintType.USER_STRING:
        return _check_user_string(p, i, v, memory, user_ptr_max)
    if c is ConstraintType.USER_PATH:
        return _check_path(p, i, v, memory, user_ptr_max, CheckKind.PATH)
    if c is ConstraintType.USER_PTR:
        if u == 0 and p.optional:
            return None
        if u == 0:
            return _reject(p, i, CheckKind.USER_PTR_CONSTRAINT, "NULL pointer not allowed")
        if p.size == 0:
            return _reject(p, i, CheckKind.USER_PTR_CONSTRAINT,
                           "size not specified for user pointer validation")
        if not _access_ok(u, p.size, user_ptr_max):
            return _reject(p, i, CheckKind.USER_PTR_CONSTRAINT,
                           f"0x{u:x} not accessible for {p.size} bytes")
        return None
    if c is ConstraintType.CUSTOM:
        raise _Undetermined(f"{p.name}: custom validator (a kernel function)")
    return None


def render_params(spec: Spec, args: Sequence[int], nargs: int) -> str:
    """The ``params`` string of ``kapi_syscall_enter``: ``name=value, ...``.

    INT and FD parameters print as signed decimal, everything else as hex of
    the 64-bit value; arguments past the spec's parameters are named ``arg``;
    the result is cut to ``KAPI_TP_PARAMS_LEN - 1`` characters.
    """
    names = _shape(spec).names
    parts = []
    for i in range(min(nargs, 6)):
        a = args[i] & MASK64 if i < len(args) else 0
        name, dec = names[i] if i < len(names) else ("arg", False)
        parts.append(f"{name}={to_s64(a)}" if dec else f"{name}=0x{a:x}")
    return ", ".join(parts)[: KAPI_TP_PARAMS_LEN - 1]


@dataclass(frozen=True, slots=True)
class _Shape:
    spec: Spec
    casts: tuple[Any, ...]  # the C type of each register the wrapper passes (parsed)
    names: tuple[tuple[str, bool], ...]  # (name, printed in decimal) per parameter


_SHAPES: dict[int, _Shape] = {}


def _shape(spec: Spec) -> _Shape:
    # What predict and render_params derive from a spec alone, once per spec object.
    hit = _SHAPES.get(id(spec))
    if hit is None or hit.spec is not spec:
        ctypes = spec.ctypes()
        casts = tuple(parse_ctype(ctypes[i] if i < len(ctypes) else "long")
                      for i in range(max(spec.syscall_nargs, 0)))
        names = tuple((p.name, p.type.decimal_in_trace) for p in spec.params[:6])
        hit = _SHAPES[id(spec)] = _Shape(spec, casts, names)
    return hit


def _user_ptr_max(memory: MemoryView | None, given: int | None) -> int:
    if given is not None:
        return given
    found = getattr(memory, "user_ptr_max", None)
    return found if isinstance(found, int) else USER_PTR_MAX


def predict(spec: Spec, regs: Sequence[int], memory: MemoryView | None = None, *,
            user_ptr_max: int | None = None) -> Prediction:
    """Predict the entry event and the validation verdict for one call.

    :param spec: the syscall's spec
    :param regs: the registers passed (``rdi, rsi, rdx, r10, r8, r9``); missing ones are 0
    :param memory: facts about user memory (only path and string checks read it)
    :param user_ptr_max: the kernel's ``USER_PTR_MAX`` (differs with 5-level paging or LAM);
        None: ``memory.user_ptr_max`` when it has one, else 4-level paging's
    :return: the ``args[]``, ``params`` and rejection the kernel will produce
    """
    user_ptr_max = _user_ptr_max(memory, user_ptr_max)
    shape = _shape(spec)
    nargs = spec.syscall_nargs
    padded = tuple(r & MASK64 for r in regs) + (0,) * (6 - min(len(regs), 6))
    # the s64 __params[] the wrapper passes
    values = [to_s64(shape.casts[i].cast(padded[i])) for i in range(nargs)]
    stored = [v & MASK64 for v in values[:6]] + [0] * (6 - min(nargs, 6))
    args = (stored[0], stored[1], stored[2], stored[3], stored[4], stored[5])
    params = render_params(spec, args, nargs)
    rejection: Rejection | None = None
    undetermined: str | None = None
    if nargs != len(spec.params):
        rejection = Rejection(None, None, CheckKind.PARAM_COUNT,
                              f"spec has {len(spec.params)} parameters, the wrapper passes {nargs}")
    else:
        try:
            for i, p in enumerate(spec.params[:KAPI_MAX_PARAMS]):
                r = _validate_param(p, i, values[i], values, nargs, memory, user_ptr_max)
                if r is not None and spec.name.startswith("sys_"):
                    rejection = r
                    break
        except _Undetermined as e:
            undetermined = str(e)
    return Prediction(spec.name, nargs, args, params, rejection, undetermined)


def expected_spec_match(spec: Spec, ret: int) -> bool:
    """``spec_match`` of the exit event of an accepted call that returned ``ret``.

    Follows ``kapi_validate_return_value()``: a value the check calls success
    matches (for an FD check only if it fits an int); a value it calls an
    error matches too, listed in the spec or not. So only an FD return above
    ``INT_MAX`` gives 0. A spec without a return section always matches.
    """
    ret = to_s64(ret)
    r = spec.ret
    if not r.defined:
        return True
    if r.check is ReturnCheck.FD and ret >= 0:
        return ret <= INT_MAX
    return True


def _is_success(spec: Spec, ret: int) -> bool | None:
    r = spec.ret
    if r.check is ReturnCheck.EXACT:
        return ret == r.success_value
    if r.check is ReturnCheck.RANGE:
        return r.success_min <= ret <= r.success_max
    if r.check is ReturnCheck.FD:
        return ret >= 0
    if r.check is ReturnCheck.ERROR_CHECK:
        return None if r.error_values is None else ret not in r.error_values
    return None


# --------------------------------------------------------------------------
# Judging a call against its events
# --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Verdict:
    """The judgement of one call.

    :param prediction: what the oracle expected
    :param findings: every disagreement found
    :param notes: what could not be judged and why
    :param strict: spec drift counts as a failure
    """

    prediction: Prediction
    findings: tuple[Finding, ...] = ()
    notes: tuple[str, ...] = ()
    strict: bool = False

    @property
    def failures(self) -> tuple[Finding, ...]:
        """Findings that fail the call (spec drift only in strict mode)."""
        return failures_of(self.findings, self.strict)

    @property
    def ok(self) -> bool:
        return not self.failures


def _errname(code: int) -> str:
    c = -code
    if code in RESTART_CODES:
        return RESTART_CODES[code]
    return "-" + _errno.errorcode.get(c, str(c)) if c > 0 else str(code)


def _render_event(e: TraceEvent) -> str:
    f: Mapping[str, object] = e.fields
    if e.name == ENTER:
        args = f.get("args")
        hexargs = ",".join(hex(int(a)) for a in args) if isinstance(args, Iterable) else "?"
        return (f"{ENTER}: {f.get('name')}({f.get('params')}) "
                f"nargs={f.get('nargs')} args=[{hexargs}]")
    if e.name == EXIT:
        return f"{EXIT}: {f.get('name')} = {f.get('ret')} spec_match={_int(f.get('spec_match'))}"
    return f"{e.name}: {dict(f)}"


_ERROR_CODES: dict[int, tuple[Spec, frozenset[int]]] = {}


def _error_codes(spec: Spec) -> frozenset[int]:
    # Spec.error_codes, once per spec object (judge asks for every call)
    hit = _ERROR_CODES.get(id(spec))
    if hit is None or hit[0] is not spec:
        hit = _ERROR_CODES[id(spec)] = (spec, spec.error_codes)
    return hit[1]


def _int(v: object) -> int:
    # Decoders may hand out bools, numpy integers or strings of digits.
    if type(v) is int:  # the common case, first
        return v
    if isinstance(v, str):
        return int(v, 0)
    try:
        return operator.index(v)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"not an integer field: {v!r}") from None


@dataclass(slots=True)
class _Pair:
    enter: TraceEvent
    exit: TraceEvent | None


def _own_pairs(spec: Spec, events: Sequence[TraceEvent], out: list[Finding],
               evidence: Callable[[], tuple[str, ...]]) -> list[_Pair]:
    # The call's kapi pairs and enters without exit, in order, by the one pairing; each
    # half of spec's call (another call's event inside an open one makes one) is a
    # finding. Other calls' pairs and halves (a signal handler's write between
    # restarted pairs) are not the call's.
    kapi = [e for e in events if e.name in (ENTER, EXIT)]
    r = pair(kapi, whole=False)
    mine = [_Pair(p.enter, p.exit) for p in r.pairs if p.name == spec.name]
    for v in r.violations:
        if v.of(spec.name):
            out.append(Finding(FindingKind.PAIRING, v.explanation, evidence()))
            if v.name == spec.name and v.enter is not None:
                mine.append(_Pair(v.enter, None))
    at = {id(e): i for i, e in enumerate(kapi)}
    return sorted(mine, key=lambda p: at[id(p.enter)])


def _args_of(e: TraceEvent) -> tuple[int, ...] | None:
    a = e.fields.get("args")
    if type(a) is tuple:  # the decoders' form: ints
        try:
            return tuple([x & MASK64 for x in a])
        except TypeError:
            pass
    if not isinstance(a, Iterable) or isinstance(a, str | bytes):
        return None
    return tuple(_int(x) & MASK64 for x in a)


def _userspace_consistent(trace_ret: int, user_ret: int) -> bool:
    if trace_ret == user_ret:
        return True
    if trace_ret == _RESTARTBLOCK:
        return True  # restarted through restart_syscall(2): another syscall, no kapi pair
    return trace_ret in _EINTR_RESTARTS and user_ret == -EINTR


def judge(spec: Spec, record: SyscallRecord, events: Sequence[TraceEvent], *,
          memory: MemoryView | None = None, side_effects: Sequence[str] = (),
          strict: bool = False, user_ptr_max: int | None = None,
          prediction: Prediction | None = None) -> Verdict:
    """Judge one issued call against its kapi events.

    :param spec: the spec of the syscall called
    :param record: the call as issued and what userspace saw
    :param events: that call's events (its thread's, in its time window), in time
        stamp order; only kapi ones count (a call the kernel restarted has several
        pairs; other calls' pairs between them are ignored)
    :param memory: facts about user memory the call's pointers refer to
    :param side_effects: changes the harness observed that the call caused
        (a created file, a new fd); a rejected call must have none
    :param strict: count spec drift (an unlisted error) as a failure
    :param prediction: :func:`predict` of this call made before it ran (while its memory
        was as the kernel validated it); computed here when None
    :return: the prediction, the findings and what could not be judged
    """
    pred = prediction or predict(spec, record.args, memory, user_ptr_max=user_ptr_max)
    findings: list[Finding] = []
    notes: list[str] = []
    rendered: list[tuple[str, ...]] = []

    def evidence() -> tuple[str, ...]:  # built once, and only for a finding
        if not rendered:
            rendered.append((record.describe(),) + tuple(
                _render_event(e) for e in events if e.name in (ENTER, EXIT)))
        return rendered[0]
    if pred.undetermined:
        notes.append(f"validation outcome not predicted: {pred.undetermined}")
    pairs = _own_pairs(spec, events, findings, evidence)
    if not pairs:
        findings.append(Finding(FindingKind.PAIRING,
                                f"no kapi events for a call of spec'd {spec.name}", evidence()))
        return Verdict(pred, tuple(findings), tuple(notes), strict)

    # Entry: every pair (a restarted call re-enters with the same registers).
    for n, pr in enumerate(pairs):
        f: Mapping[str, object] = pr.enter.fields
        got_args = _args_of(pr.enter)
        diffs = []
        if got_args is not None and got_args != pred.args:
            bad = [i for i in range(6) if i >= len(got_args) or got_args[i] != pred.args[i]]
            diffs.append("args[" + ",".join(map(str, bad)) + "] = "
                         + ", ".join(hex(got_args[i]) if i < len(got_args) else "?"
                                     for i in bad)
                         + " (expected " + ", ".join(hex(pred.args[i]) for i in bad) + ")")
        if "params" in f and str(f.get("params")) != pred.params:
            diffs.append(f"params {f.get('params')!r} (expected {pred.params!r})")
        if "nargs" in f and _int(f.get("nargs")) != pred.nargs:
            diffs.append(f"nargs {f.get('nargs')} (expected {pred.nargs})")
        if diffs:
            which = f" (pair {n + 1})" if len(pairs) > 1 else ""
            findings.append(Finding(FindingKind.ARGS_MISMATCH,
                                    f"{spec.name} enter{which}: " + "; ".join(diffs), evidence()))

    complete = [p for p in pairs if p.exit is not None]
    # Restarts: every pair but the last must end in a restart code.
    for pr in complete[:-1]:
        assert pr.exit is not None
        r = to_s64(_int(pr.exit.fields.get("ret")))
        if r not in RESTART_CODES:
            findings.append(Finding(FindingKind.PAIRING,
                                    f"{spec.name}: {len(pairs)} pairs for one call, but an "
                                    f"earlier exit returned {r}, not a restart code", evidence()))
    if not complete:
        return Verdict(pred, tuple(findings), tuple(notes), strict)
    last = complete[-1].exit
    assert last is not None
    trace_ret = to_s64(_int(last.fields.get("ret")))
    user_ret = to_s64(record.ret)

    if pred.rejection is not None:
        rej = pred.rejection.describe()
        if len(pairs) > 1:
            findings.append(Finding(FindingKind.PAIRING, f"{spec.name}: rejected call "
                                    f"({rej}) traced {len(pairs)} pairs", evidence()))
        for pr in complete:
            assert pr.exit is not None
            r = to_s64(_int(pr.exit.fields.get("ret")))
            sm = bool(_int(pr.exit.fields.get("spec_match")))
            if r != -EINVAL:
                findings.append(Finding(FindingKind.RET_MISMATCH,
                                        f"exit ret {r}, expected -22 (validator rejects {rej})",
                                        evidence()))
            if sm:
                findings.append(Finding(FindingKind.SPEC_MATCH_MISMATCH,
                                        f"spec_match=1, expected 0 (validator rejects {rej})",
                                        evidence()))
        if user_ret != -EINVAL:
            findings.append(Finding(FindingKind.RET_MISMATCH,
                                    f"userspace saw {_describe_ret(user_ret)}, expected -EINVAL "
                                    f"(validator rejects {rej})", evidence()))
        if side_effects:
            findings.append(Finding(FindingKind.REJECTED_SIDE_EFFECT,
                                    f"rejected call ({rej}) changed state: "
                                    + "; ".join(side_effects), evidence()))
        elif user_ret >= 0:
            findings.append(Finding(FindingKind.REJECTED_SIDE_EFFECT,
                                    f"rejected call ({rej}) returned {user_ret}: "
                                    "the handler ran", evidence()))
        return Verdict(pred, tuple(findings), tuple(notes), strict)

    # Accepted (or undetermined): the handler ran; check the return side.
    if trace_ret == _RESTARTBLOCK and user_ret != -EINTR:
        notes.append("exit -ERESTART_RESTARTBLOCK: the call went on in restart_syscall(2), "
                     "whose result userspace saw; not compared")
    if not _userspace_consistent(trace_ret, user_ret):
        findings.append(Finding(FindingKind.RET_MISMATCH,
                                f"exit ret {_describe_ret(trace_ret)} but userspace saw "
                                f"{_describe_ret(user_ret)}", evidence()))
    for pr in complete:
        assert pr.exit is not None
        r = to_s64(_int(pr.exit.fields.get("ret")))
        sm = bool(_int(pr.exit.fields.get("spec_match")))
        want = expected_spec_match(spec, r)
        if pred.undetermined and not sm and r == -EINVAL:
            notes.append("exit looks like a validator rejection; not checked")
            continue
        if sm != want:
            why = ("the validator rejected a call the oracle accepts"
                   if not sm and r == -EINVAL else
                   f"the return check of {spec.ret.describe()} gives {int(want)} for {r}")
            findings.append(Finding(FindingKind.SPEC_MATCH_MISMATCH,
                                    f"{spec.name} = {r} spec_match={int(sm)}, expected "
                                    f"{int(want)}: {why}", evidence()))
    looks_rejected = trace_ret == -EINVAL and not _int(last.fields.get("spec_match"))
    if -4095 <= trace_ret < 0 and pred.accepted and not looks_rejected:
        listed = _error_codes(spec)
        ok = trace_ret in listed or (trace_ret in _EINTR_RESTARTS and -EINTR in listed)
        if not ok:
            findings.append(Finding(FindingKind.SPEC_DRIFT,
                                    f"{spec.name} returned {_errname(trace_ret)}, which its spec "
                                    "does not list", evidence()))
    return Verdict(pred, tuple(findings), tuple(notes), strict)


def _describe_ret(ret: int) -> str:
    if -4095 <= ret < 0:
        return f"{ret} ({_errname(ret)})"
    return str(ret)


class PlanMaterializer(Protocol):
    """Anything that makes plans concrete and can answer the oracle about its memory."""

    @property
    def memory(self) -> Any: ...

    def __call__(self, plan: CallPlan) -> Materialized: ...

    def predict(self, spec: Spec, regs: tuple[int, ...]) -> Prediction:
        """The oracle's prediction for registers this materialiser made."""
        ...
