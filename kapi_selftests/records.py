"""The records that cross stages: calls issued, batches, predictions, results. Pure.

What the guest issued (:class:`SyscallRecord`), a capture window's calls and raw
trace (:class:`Batch`), what the oracle predicts for a call (:class:`Prediction`,
:class:`Rejection`), what the judge found (:class:`Finding`, one :class:`CallCheck`
per call), the kernel coverage a batch reached (:class:`BatchCover`) and a batch
judged end to end (:class:`BatchResult`). Every stage speaks these; this module
imports nothing that touches the kernel (no libc, no tracefs), so the host and the
pure stages load it freely.
"""

from __future__ import annotations

import enum
import errno as _errno
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from kapi_selftests.arch import find_syscall

if TYPE_CHECKING:
    from kapi_selftests.plan import CallPlan
    from kapi_selftests.trace.events import Capture, RawCapture, TraceEvent

__all__ = ["SyscallRecord", "EventSource", "Batch", "CheckKind", "Rejection", "Prediction",
           "ENTER", "EXIT", "FindingKind", "Finding", "failures_of", "CallCheck", "BatchCover",
           "BatchResult", "Materialized"]


@dataclass(frozen=True, slots=True)
class SyscallRecord:
    """One issued syscall and what userspace saw.

    :param nr: x86-64 syscall number
    :param args: the six register values passed, as unsigned 64-bit
    :param ret: the raw return in the kernel's form: the result, or ``-errno``
    :param errno: the errno userspace saw (0 on success)
    :param tid: thread id of the caller
    :param t_ns: ``CLOCK_MONOTONIC`` just before the call
    :param t_end_ns: ``CLOCK_MONOTONIC`` just after it: the call's events lie in between
        (the trace instance runs on the ``mono`` clock)
    """

    nr: int
    args: tuple[int, int, int, int, int, int]
    ret: int
    errno: int
    tid: int
    t_ns: int = 0
    t_end_ns: int = 0

    @property
    def name(self) -> str:
        abi = find_syscall(self.nr)
        return abi.name if abi else f"syscall_{self.nr}"

    @property
    def failed(self) -> bool:
        return self.errno != 0

    def describe(self) -> str:
        """One line a kernel developer can read: ``read(0x3, 0x7f.., 0x0) = -EFAULT``."""
        abi = find_syscall(self.nr)
        n = len(abi.params) if abi and abi.params_known else 6
        args = ", ".join(hex(a) for a in self.args[:n])
        res = f"-{_errno.errorcode.get(self.errno, self.errno)}" if self.errno else str(self.ret)
        return f"{self.name}({args}) = {res}"


class EventSource(enum.Enum):
    KAPI = "kapi"  # kapi:kapi_syscall_enter/exit (CONFIG_KAPI_RUNTIME_CHECKS)
    SYSCALLS = "syscalls"  # syscalls:sys_enter_<name>/sys_exit_<name> (CONFIG_FTRACE_SYSCALLS)


@dataclass(frozen=True, slots=True)
class Batch:
    """The calls of one capture window and everything the kernel traced meanwhile."""

    records: tuple[SyscallRecord, ...]
    raw: RawCapture
    source: EventSource


@dataclass(frozen=True, slots=True)
class Materialized:
    """A plan made concrete: its registers and what each register points at."""

    plan: CallPlan
    regs: tuple[int, ...]
    fds: dict[int, int] = field(default_factory=dict)  # arg index -> fd
    bufs: dict[int, tuple[int, int]] = field(default_factory=dict)  # arg index -> (addr, size)
    paths: dict[int, bytes] = field(default_factory=dict)  # arg index -> path string

    def describe(self) -> str:
        return f"{self.plan.describe()} -> {self.plan.name}({', '.join(hex(r) for r in self.regs)})"


class CheckKind(enum.Enum):
    """The validator check that rejected a call (one per kernel check)."""

    PARAM_COUNT = "param_count"  # wrapper arity != spec param_count
    FD = "fd"  # KAPI_TYPE_FD: int range, negative fd
    USER_PTR = "user_ptr"  # KAPI_TYPE_USER_PTR: NULL, access_ok
    BUFFER_SIZE = "buffer_size"  # size from another parameter: negative or overflowing
    PATH = "path"  # KAPI_TYPE_PATH or constraint user_path: NULL, access_ok, strnlen_user
    RANGE = "range"
    MASK = "mask"
    ENUM = "enum"
    ALIGNMENT = "alignment"
    POWER_OF_TWO = "power_of_two"
    PAGE_ALIGNED = "page_aligned"
    NONZERO = "nonzero"
    USER_STRING = "user_string"
    USER_PTR_CONSTRAINT = "user_ptr_constraint"
    CUSTOM = "custom"


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why parameter validation rejects a call (-EINVAL, handler skipped, spec_match=0).

    :param param: parameter name (None for a parameter-count mismatch)
    :param index: parameter index
    :param check: which check failed
    :param reason: one line, with the value the kernel saw
    """

    param: str | None
    index: int | None
    check: CheckKind
    reason: str

    def describe(self) -> str:
        where = f"{self.param}: " if self.param is not None else ""
        return f"{where}{self.check.value}: {self.reason}"


@dataclass(frozen=True, slots=True)
class Prediction:
    """What the kernel will trace on entry and decide before the handler.

    :param spec_name: the spec (and event) name
    :param nargs: ``nargs`` of ``kapi_syscall_enter`` (the SYSCALL_DEFINE arity)
    :param args: the six ``u64 args[]`` of ``kapi_syscall_enter``
    :param params: the ``params`` string of ``kapi_syscall_enter``
    :param rejection: why validation rejects the call, or None if it accepts it
    :param undetermined: why acceptance cannot be predicted (then ``rejection`` is None)
    """

    spec_name: str
    nargs: int
    args: tuple[int, int, int, int, int, int]
    params: str
    rejection: Rejection | None
    undetermined: str | None = None

    @property
    def rejected(self) -> bool:
        return self.rejection is not None

    @property
    def accepted(self) -> bool:
        return self.rejection is None and self.undetermined is None


#: the kapi tracepoints' event names
ENTER = "kapi_syscall_enter"
EXIT = "kapi_syscall_exit"


class FindingKind(enum.Enum):
    """Kinds of disagreement between the oracle, the trace and userspace."""

    PAIRING = "pairing violation"
    ARGS_MISMATCH = "args/params mismatch"
    RET_MISMATCH = "ret mismatch"
    SPEC_MATCH_MISMATCH = "spec_match mismatch"
    REJECTED_SIDE_EFFECT = "rejected call had a side effect"
    SPEC_DRIFT = "spec drift"


@dataclass(frozen=True, slots=True)
class Finding:
    """One disagreement: its kind, a one-line explanation and the evidence lines."""

    kind: FindingKind
    message: str
    evidence: tuple[str, ...] = ()

    def __str__(self) -> str:
        return f"{self.kind.value}: {self.message}"


def failures_of(findings: Sequence[Finding], strict: bool) -> tuple[Finding, ...]:
    """The findings that fail a call: all but spec drift, which fails only in strict mode."""
    if not findings:
        return ()
    return tuple(f for f in findings if f.kind is not FindingKind.SPEC_DRIFT or strict)


@dataclass(frozen=True, slots=True)
class CallCheck:
    """One call, its events and what the checks found.

    :param traced: :attr:`summary`, when the checker already knows it (else it is read
        from ``events``)
    """

    record: SyscallRecord
    events: Sequence[TraceEvent]
    findings: tuple[Finding, ...] = ()
    notes: tuple[str, ...] = ()
    prediction: Prediction | None = None
    strict: bool = False
    traced: tuple[int | None, int] | None = None

    @property
    def failures(self) -> tuple[Finding, ...]:
        """Findings that fail the call (spec drift only in strict mode)."""
        return failures_of(self.findings, self.strict)

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def summary(self) -> tuple[int | None, int]:
        """The last kapi exit's ``spec_match`` (None: no kapi exit) and the number of
        enter/exit pairs (kapi or generic), as ``calls.jsonl`` records them."""
        if self.traced is not None:
            return self.traced
        enters = exits = 0
        last_exit = None
        for e in self.events:
            name = e.name
            if name == EXIT or name.startswith("sys_exit_"):
                exits += 1
                last_exit = e
            elif name == ENTER or name.startswith("sys_enter_"):
                enters += 1
        spec_match: int | None = None
        if last_exit is not None and last_exit.name == EXIT:
            v = last_exit.fields.get("spec_match")
            spec_match = int(v) if isinstance(v, int) else None
        return spec_match, min(enters, exits)

    def explain(self) -> str:
        """The call, its events, the oracle's reasoning and the findings, for a failure."""
        lines = [f"call: {self.record.describe()}  (tid {self.record.tid})"]
        if self.prediction is not None:
            p = self.prediction
            lines.append("oracle: " + (f"rejects: {p.rejection.describe()}" if p.rejection
                                       else "accepts (handler runs)")
                         + f"; params {p.params!r}")
        lines += [f"event: {e.name} {dict(e.fields)}" for e in self.events]
        lines += [f"{f.kind.value}: {f.message}" for f in self.findings]
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class BatchCover:
    """One batch's kernel coverage, per call in issue order.

    :param new: edges new to the guest
    :param pcs: program counters the call ran in the kernel
    :param ids: the new edges' ids (fewer than ``new`` when the batch overflowed)
    :param new_pcs: the batch's PCs new to the guest (low 32 bits), for the whole batch
    """

    new: tuple[int, ...]
    pcs: tuple[int, ...]
    ids: tuple[tuple[int, ...], ...]
    dropped: int = 0
    new_pcs: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class BatchResult:
    """A batch run end to end."""

    plans: tuple[CallPlan, ...]
    materialized: tuple[Materialized, ...]
    batch: Batch
    capture: Capture
    checks: tuple[CallCheck, ...]
    #: the calls' kernel coverage (the batch engine with KCOV on)
    kcov: BatchCover | None = None
    #: calls the reference spec predicts otherwise than the kernel's (both predictions)
    disagreements: tuple[str, ...] = ()
    #: per call, the kernel spec's prediction made before it ran (None: no spec), whatever
    #: the event source (with kapi events the checks carry the same one)
    predictions: tuple[Prediction | None, ...] = ()

    @property
    def failures(self) -> list[CallCheck]:
        return [c for c in self.checks if not c.ok]

