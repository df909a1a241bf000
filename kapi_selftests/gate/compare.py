"""Compare a base and a patched kernel's runs: every difference, classified. Pure.

Inputs are two :class:`~kapi_selftests.gate.record.KernelRun` records; the
output is a :class:`GateVerdict`: the exit status (0 no regression, 1
regression, 4 could not judge), each difference with its class, the spec diff
and the runtime cost of the checks.

How a per-call difference is classified: the oracle
(:func:`kapi_selftests.oracle.predict.predict`) runs the call against each kernel's
own spec (no spec: the handler runs). A difference is *expected* when the
specs explain it -- the patched spec predicts a rejection the base did not,
and the patched kernel returned ``EINVAL``; or the base spec rejected a call
the patched spec accepts, and the base returned ``EINVAL``. Anything else a
spec'd syscall does differently is a *regression*, as is a lost enter/exit
pair, a changed or removed tracepoint field, a new suite failure and a patched
kernel that oopses, warns, panics or hangs where the base did not. A base
kernel that itself crashed makes the run unjudgeable.
"""

from __future__ import annotations

import difflib
import enum
import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from kapi_selftests.errors import KSFT_FAIL, KSFT_PASS, KSFT_SKIP
from kapi_selftests.gate.record import CallRecord, KernelRun, plan_key
from kapi_selftests.oracle.predict import MemoryFacts, UserString, predict
from kapi_selftests.oracle.reference import SpecDifference, compare_to_reference
from kapi_selftests.oracle.spec import ReturnCheck, Spec
from kapi_selftests.oracle.specdiff import SpecChange, diff_specs
from kapi_selftests.records import Prediction
from kapi_selftests.report import Outcome, TestResult

__all__ = ["GateStatus", "DiffKind", "DiffClass", "Difference", "Cost", "GateVerdict",
           "compare", "unjudged", "memory_for_plan", "retry_candidates", "spec_links"]

EINVAL = 22


class GateStatus(enum.Enum):
    PASS = "no regression"
    REGRESSION = "regression"
    UNJUDGED = "could not judge"

    @property
    def exit_code(self) -> int:
        return {GateStatus.PASS: KSFT_PASS, GateStatus.REGRESSION: KSFT_FAIL,
                GateStatus.UNJUDGED: KSFT_SKIP}[self]


class DiffKind(enum.Enum):
    SUITE = "suite"            # a test's outcome changed
    CALL = "call"              # a call's return, errno or spec_match changed
    PAIRING = "pairing"        # enter/exit pairs of a call changed
    TRACEPOINT = "tracepoint"  # a kapi event's fields changed
    HEALTH = "health"          # splat, hang, lost guest, a stage that failed
    COVERAGE = "coverage"      # calls or tests that ran on one side only


class DiffClass(enum.Enum):
    REGRESSION = "regression"
    EXPECTED = "expected"      # explained by a spec the series adds or changes
    FIXED = "fixed"            # failed on the base, passes on the patched kernel
    FLAKY = "flaky"            # failed on one kernel, passed there on a re-run
    NOTE = "note"              # worth seeing, not a verdict


@dataclass(frozen=True, slots=True)
class Difference:
    """One thing that differs between the kernels.

    :param kind: what differs
    :param cls: its classification
    :param subject: the test, call or event (``open(path:existing, 0, 0x1000)``)
    :param base: what the base kernel did
    :param patched: what the patched kernel did
    :param explanation: why it is classified so, one line
    :param evidence: more lines (registers, predictions, diff lines)
    :param spec_link: for a suite test: the spec changes of the syscalls it concerns
        (``explained by spec change sys_open (...)``); it stays what ``cls`` says
    """

    kind: DiffKind
    cls: DiffClass
    subject: str
    base: str
    patched: str
    explanation: str
    evidence: tuple[str, ...] = ()
    spec_link: str = ""


@dataclass(frozen=True, slots=True)
class Cost:
    """The timed call mix on both kernels.

    ``ratio`` is patched / base time per call, each first divided by the same run's
    time for a syscall without a spec (when both runs timed it): two boots of one
    kernel under TCG on a busy host differ in speed by far more than the checks cost.
    """

    calls: int
    base_ns: float
    patched_ns: float
    per_syscall: tuple[tuple[str, float, float], ...] = ()
    base_ref_ns: float | None = None
    patched_ref_ns: float | None = None

    @property
    def normalised(self) -> bool:
        return bool(self.base_ref_ns and self.patched_ref_ns)

    def scale(self) -> float:
        """Factor that turns a raw patched/base ratio into a normalised one."""
        if self.base_ref_ns and self.patched_ref_ns:
            return self.base_ref_ns / self.patched_ref_ns
        return 1.0

    @property
    def raw_ratio(self) -> float:
        return self.patched_ns / self.base_ns if self.base_ns > 0 else float("inf")

    @property
    def ratio(self) -> float:
        return self.raw_ratio * self.scale()


@dataclass(frozen=True, slots=True)
class GateVerdict:
    """The gate's answer and its evidence.

    :param status: pass, regression or could not judge
    :param reasons: why (regressions summarised, or why it could not judge)
    :param differences: every difference, regressions first
    :param spec_changes: the spec diff
    :param spec_classes: each changed fact of the spec diff, classed by what it does to
        callers (:mod:`kapi_selftests.oracle.reference`, the base kernel's specs as reference)
    :param cost: runtime cost of the checks, when both kernels timed the mix
    :param calls_compared: calls matched by plan on both kernels
    :param calls_unmatched: calls only one kernel ran
    :param tests_compared: suite tests present on both kernels
    :param base: label and image of the base kernel
    :param patched: label and image of the patched kernel
    :param notes: what was missing or not compared
    :param hints: what to do next (why it could not judge: how to fix or resume)
    """

    status: GateStatus
    reasons: tuple[str, ...] = ()
    differences: tuple[Difference, ...] = ()
    spec_changes: tuple[SpecChange, ...] = ()
    spec_classes: tuple[SpecDifference, ...] = ()
    cost: Cost | None = None
    calls_compared: int = 0
    calls_unmatched: int = 0
    tests_compared: int = 0
    base: str = ""
    patched: str = ""
    notes: tuple[str, ...] = ()
    hints: tuple[str, ...] = ()

    @property
    def exit_code(self) -> int:
        return self.status.exit_code

    def count(self, cls: DiffClass) -> int:
        return sum(d.cls is cls for d in self.differences)


def unjudged(reason: str, *, base: str = "", patched: str = "",
             notes: Sequence[str] = (), hints: Sequence[str] = ()) -> GateVerdict:
    """A verdict for a run that could not be judged (series did not apply, build failed);
    ``hints`` say how to fix or resume."""
    return GateVerdict(GateStatus.UNJUDGED, (reason,), base=base, patched=patched,
                       notes=tuple(notes), hints=tuple(hints))


# --------------------------------------------------------------------------
# Suite


_BAD = (Outcome.FAIL, Outcome.ERROR)


def retry_candidates(base: KernelRun, patched: KernelRun) -> dict[str, tuple[str, ...]]:
    """Suite tests that failed on one kernel only, by the label of the kernel they failed
    on: what to re-run there before calling them a regression (or a fix)."""
    b = {r.name: r.outcome for r in base.suite}
    p = {r.name: r.outcome for r in patched.suite}
    return {
        base.label: tuple(n for n, o in b.items() if o in _BAD and p.get(n) is Outcome.PASS),
        patched.label: tuple(n for n, o in p.items() if o in _BAD and b.get(n) not in _BAD),
    }


def _retried(name: str, retries: Sequence[Sequence[TestResult]]) -> tuple[int, int | None]:
    """How often ``name`` was re-run, and the round it first passed in (None: never)."""
    ran = 0
    for n, results in enumerate(retries, 1):
        r = next((r for r in results if r.name == name), None)
        if r is None:
            continue
        ran += 1
        if r.outcome is Outcome.PASS:
            return ran, n
    return ran, None


def _suite(base: KernelRun, patched: KernelRun
           ) -> tuple[list[Difference], int, list[str]]:
    b = {r.name: r for r in base.suite}
    p = {r.name: r for r in patched.suite}
    out: list[Difference] = []
    notes: list[str] = []
    newly_run = 0
    for name in list(dict.fromkeys([*b, *p])):
        rb, rp = b.get(name), p.get(name)
        ob = rb.outcome if rb else None
        op = rp.outcome if rp else None
        desc_b = _outcome(rb)
        desc_p = _outcome(rp)
        if op in _BAD and ob not in _BAD:
            ran, passed = _retried(name, patched.retries)
            diag = rp.diagnostics[-10:] if rp else ()
            if passed is not None:
                out.append(Difference(DiffKind.SUITE, DiffClass.FLAKY, name, desc_b,
                                      f"{desc_p}; pass on re-run {passed}",
                                      "failed on the patched kernel, passed there on a "
                                      "re-run: flaky, not a regression", diag))
            else:
                again = (f"; failed again on {ran} re-run(s)" if ran else
                         "; not re-run" if patched.retries else "")
                out.append(Difference(DiffKind.SUITE, DiffClass.REGRESSION, name, desc_b,
                                      desc_p, "new failure on the patched kernel" + again,
                                      diag))
        elif ob in _BAD and op is Outcome.PASS:
            ran, passed = _retried(name, base.retries)
            if passed is not None:
                out.append(Difference(DiffKind.SUITE, DiffClass.FLAKY, name,
                                      f"{desc_b}; pass on re-run {passed}", desc_p,
                                      "failed on the base kernel, passed there on a re-run: "
                                      "flaky, not a fix", rb.diagnostics[-10:] if rb else ()))
            else:
                again = f"; failed again there on {ran} re-run(s)" if ran else ""
                out.append(Difference(DiffKind.SUITE, DiffClass.FIXED, name, desc_b, desc_p,
                                      "failed on the base kernel, passes on the patched one"
                                      + again))
        elif ob in _BAD and op in _BAD:
            notes.append(f"{name}: fails on both kernels ({desc_b})")
        elif ob is Outcome.PASS and op in (Outcome.SKIP, None):
            out.append(Difference(DiffKind.COVERAGE, DiffClass.NOTE, name, desc_b, desc_p,
                                  "ran on the base kernel, not on the patched one"))
        elif ob in (Outcome.SKIP, None) and op is Outcome.PASS:
            newly_run += 1
    if newly_run:
        notes.append(f"{newly_run} test(s) skipped or absent on the base kernel pass on the "
                     "patched one (typically: the base has no KAPI)")
    return out, len(set(b) & set(p)), notes


# A suite test "concerns" a syscall when its name or failure line names it as a word
# (``test_open_mode``, ``kapi-06-open with ...``, ``sys_open``); in the longer
# diagnostics (tracebacks: Python's own open()/read() calls) only ``sys_<name>`` counts.
def _mentions(name: str, text: str, *, strict: bool) -> bool:
    if strict:
        return re.search(rf"(?<![A-Za-z0-9_])sys_{re.escape(name)}(?![A-Za-z0-9])",
                         text) is not None
    return re.search(rf"(?<![A-Za-z0-9])(?:sys_)?{re.escape(name)}(?![A-Za-z0-9])",
                     text, re.IGNORECASE) is not None


def _describe_change(c: SpecChange) -> str:
    if c.kind.value == "changed" and c.lines:
        more = f" (+{len(c.lines) - 2} more)" if len(c.lines) > 2 else ""
        return f"{c.name} ({'; '.join(c.lines[:2])}{more})"
    return f"{c.name} ({c.kind.value})"


def spec_links(test: TestResult | None, name: str, changes: Sequence[SpecChange]
               ) -> tuple[SpecChange, ...]:
    """The spec changes of the syscalls a suite test concerns (by its name, its
    failure line and, for ``sys_<name>`` only, its diagnostics)."""
    short = (test.reason if test else "")
    long = "\n".join(test.diagnostics) if test else ""
    out = []
    for c in changes:
        syscall = c.name.removeprefix("sys_")
        if _mentions(syscall, name + "\n" + short, strict=False) \
                or _mentions(syscall, long, strict=True):
            out.append(c)
    return tuple(out)


def _link_suite(diffs: list[Difference], patched: KernelRun, base: KernelRun,
                changes: Sequence[SpecChange]) -> list[Difference]:
    if not changes:
        return diffs
    tests = {r.name: r for r in base.suite} | {r.name: r for r in patched.suite}
    out = []
    for d in diffs:
        if d.kind is DiffKind.SUITE and d.cls in (DiffClass.REGRESSION, DiffClass.FLAKY,
                                                  DiffClass.FIXED):
            linked = spec_links(tests.get(d.subject), d.subject, changes)
            if linked:
                link = "explained by spec change " + ", ".join(map(_describe_change, linked))
                d = replace(d, spec_link=link, explanation=f"{d.explanation}; {link}")
        out.append(d)
    return out


def _outcome(r: TestResult | None) -> str:
    if r is None:
        return "absent"
    if r.outcome is Outcome.PASS:
        return "pass"
    label = {Outcome.FAIL: "FAIL", Outcome.ERROR: "ERROR", Outcome.SKIP: "skip"}[r.outcome]
    return f"{label}: {r.reason}" if r.reason else label


# --------------------------------------------------------------------------
# Per-call behaviour

# strlen the harness gives each path kind (what strnlen_user finds); ordinary paths
# are short scratch-directory names, and any length under PATH_MAX judges the same.
_PATH_LEN: Mapping[str, int] = {"empty": 0, "len_4095": 4095, "len_4096": 4096,
                                "len_4097": 4097}
_ORDINARY_PATH_LEN = 64
# Syscalls whose success value is a new fd (when the base kernel has no spec to say so).
_FD_RETURNING = frozenset({"open", "openat", "creat", "dup", "socket", "eventfd2"})


def memory_for_plan(plan: Mapping[str, Any], regs: Sequence[int]) -> MemoryFacts:
    """What the oracle needs to know about the strings a plan's path arguments point at.

    :param plan: the plan JSON (``{"name", "args"}``)
    :param regs: the registers the plan was materialised to
    """
    strings: list[UserString] = []
    unmapped: list[tuple[int, int]] = []
    for a, reg in zip(plan.get("args", ()), regs, strict=False):
        kind = a.get("path") if isinstance(a, Mapping) else None
        if kind is None or reg == 0:
            continue
        if kind == "unterminated":
            strings.append(UserString(reg, None, readable=16))
        elif kind == "unmapped":
            unmapped.append((reg, reg + 4096))
        elif kind != "kernel":
            strings.append(UserString(reg, _PATH_LEN.get(kind, _ORDINARY_PATH_LEN)))
    return MemoryFacts(tuple(strings), tuple(unmapped))


def _predict(specs: Mapping[str, Spec] | None, c: CallRecord) -> tuple[Prediction | None, str]:
    spec = (specs or {}).get(f"sys_{c.name}")
    if spec is None:
        return None, "no spec: the handler runs"
    pred = predict(spec, c.regs, memory_for_plan(c.plan, c.regs))
    if pred.rejection is not None:
        return pred, f"spec rejects ({pred.rejection.describe()})"
    if pred.undetermined is not None:
        return pred, f"spec outcome unknown ({pred.undetermined})"
    return pred, "spec accepts: the handler runs"


def _seen(c: CallRecord) -> str:
    sm = "" if c.spec_match is None else f" spec_match={c.spec_match}"
    pairs = "" if c.pairs is None else f" pairs={c.pairs}"
    return f"{c.outcome()}{sm}{pairs}"


def _classify_call(base: KernelRun, patched: KernelRun, b: CallRecord, p: CallRecord
                   ) -> Difference | None:
    ret_diff = (b.ret, b.errno) != (p.ret, p.errno) and not _both_new_fds(base, b, p)
    sm_diff = (b.spec_match is not None and p.spec_match is not None
               and b.spec_match != p.spec_match)
    if not ret_diff and not sm_diff:
        return None
    pb, why_b = _predict(base.specs, b)
    pp, why_p = _predict(patched.specs, p)
    rej_b = pb is not None and pb.rejected
    rej_p = pp is not None and pp.rejected
    evidence = (f"regs base {', '.join(hex(r) for r in b.regs)}; "
                f"patched {', '.join(hex(r) for r in p.regs)}",
                f"base: {why_b}", f"patched: {why_p}")
    subject = f"{p.describe_plan()} [{p.source} {p.shard}#{p.index}]"
    if rej_p and not rej_b:
        if p.errno == EINVAL and p.spec_match != 1:
            return Difference(DiffKind.CALL, DiffClass.EXPECTED, subject, _seen(b), _seen(p),
                              f"the patched spec rejects it ({_rejection(pp)}); the base "
                              "kernel ran the handler", evidence)
        return Difference(DiffKind.CALL, DiffClass.REGRESSION, subject, _seen(b), _seen(p),
                          f"the patched spec predicts rejection ({_rejection(pp)}) but the "
                          "patched kernel did not return EINVAL", evidence)
    if rej_b and not rej_p:
        if b.errno == EINVAL and (pp is None or pp.undetermined is None):
            return Difference(DiffKind.CALL, DiffClass.EXPECTED, subject, _seen(b), _seen(p),
                              f"the base spec rejected it ({_rejection(pb)}); the patched "
                              "spec accepts it and the handler ran", evidence)
        return Difference(DiffKind.CALL, DiffClass.REGRESSION, subject, _seen(b), _seen(p),
                          f"the base spec rejected it ({_rejection(pb)}) but the base kernel "
                          "did not return EINVAL, and the patched kernel behaves differently",
                          evidence)
    if rej_b and rej_p:
        why = "both specs reject it, yet the kernels behave differently"
    elif pb is None and pp is None:
        why = "neither kernel has a spec for it, yet it behaves differently"
    else:
        why = "no spec change explains it: both kernels ran the handler"
    if (pb and pb.undetermined) or (pp and pp.undetermined):
        why += " (the oracle could not decide acceptance)"
    if p.source != "probe" and any(isinstance(a, Mapping) and a.get("fd") == "closed"
                                   for a in p.plan.get("args", ())):
        # In a window of many calls, a "closed" fd number is free when the plan is
        # materialised, but an open earlier in the window that only one kernel allowed
        # may take it before the call runs: the two calls did not see the same fd table.
        return Difference(DiffKind.CALL, DiffClass.NOTE, subject, _seen(b), _seen(p),
                          "not judged: a 'closed' fd in a multi-call window may have been "
                          "reused by an open only one kernel allowed", evidence)
    return Difference(DiffKind.CALL, DiffClass.REGRESSION, subject, _seen(b), _seen(p),
                      why, evidence)


def _fds_diverged(b: CallRecord, p: CallRecord) -> bool:
    # An fd argument is a fresh fd (or, for "closed", a number just freed) whose number
    # depends on what the calls before it left open. Equal numbers: the same state on
    # both kernels. Different numbers: a "closed" fd may have been reused by an open
    # that only one kernel allowed, and the two calls are not the same call any more.
    for i, a in enumerate(b.plan.get("args", ())):
        if isinstance(a, Mapping) and "fd" in a and i < len(b.regs) and i < len(p.regs) \
                and b.regs[i] != p.regs[i]:
            return True
    return False


def _both_new_fds(base: KernelRun, b: CallRecord, p: CallRecord) -> bool:
    # Two successful calls that return a new fd: the number depends on which fds the
    # calls before it left open, not on this call.
    if b.errno or p.errno or b.ret < 0 or p.ret < 0:
        return False
    spec = (base.specs or {}).get(f"sys_{b.name}")
    return b.name in _FD_RETURNING or (spec is not None and spec.ret.check is ReturnCheck.FD)


def _rejection(pred: Prediction | None) -> str:
    return pred.rejection.describe() if pred is not None and pred.rejection else "?"


def _calls(base: KernelRun, patched: KernelRun) -> tuple[list[Difference], int, int,
                                                         list[str]]:
    def group(calls: Sequence[CallRecord]) -> dict[tuple[str, str, str], list[CallRecord]]:
        g: dict[tuple[str, str, str], list[CallRecord]] = defaultdict(list)
        for c in sorted(calls, key=lambda c: (c.source, c.shard, c.index)):
            g[(c.source, c.shard, plan_key(c.plan))].append(c)
        return g

    gb, gp = group(base.calls), group(patched.calls)
    out: list[Difference] = []
    notes: list[str] = []
    diverged: list[str] = []
    compared = unmatched = 0
    for key in list(dict.fromkeys([*gb, *gp])):
        lb, lp = gb.get(key, []), gp.get(key, [])
        unmatched += abs(len(lb) - len(lp))
        for b, p in zip(lb, lp, strict=False):
            if _fds_diverged(b, p):
                diverged.append(f"{p.describe_plan()} [{p.source} {p.shard}#{p.index}]")
                continue
            compared += 1
            d = _classify_call(base, patched, b, p)
            if d is not None:
                out.append(d)
            new_findings = sorted(set(p.findings) - set(b.findings))
            if new_findings and p.source == "probe":
                # (fuzz rows are judged against the built-in model, not each kernel's spec)
                out.append(Difference(
                    DiffKind.CALL, DiffClass.REGRESSION,
                    f"{p.describe_plan()} [{p.source} {p.shard}#{p.index}]",
                    ", ".join(b.findings) or "no finding", ", ".join(new_findings),
                    "the suite's checks fail this call on the patched kernel only"))
            if b.pairs is not None and p.pairs is not None and p.pairs < b.pairs:
                out.append(Difference(
                    DiffKind.PAIRING, DiffClass.REGRESSION,
                    f"{p.describe_plan()} [{p.source} {p.shard}#{p.index}]",
                    f"{b.pairs} enter/exit pair(s)", f"{p.pairs} pair(s)",
                    "an enter/exit pair was lost on the patched kernel"))
    for source in sorted({c.source for c in base.calls} | {c.source for c in patched.calls}):
        nb = sum(c.source == source for c in base.calls)
        np_ = sum(c.source == source for c in patched.calls)
        if nb and not np_:
            out.append(Difference(DiffKind.COVERAGE, DiffClass.REGRESSION, f"{source} calls",
                                  f"{nb} calls recorded", "none recorded",
                                  f"the {source} run recorded nothing on the patched kernel"))
        elif np_ and not nb:
            notes.append(f"{source}: {np_} calls on the patched kernel, none on the base: "
                         "not compared")
    if diverged:
        notes.append(f"{len(diverged)} call(s) not compared: their fd arguments were different "
                     "fds on the two kernels (earlier calls of the same capture window left "
                     "different fds open), e.g. " + "; ".join(diverged[:3]))
    if unmatched:
        notes.append(f"{unmatched} call(s) recorded on one kernel only (not recorded on the "
                     "other, or generation diverged): not compared")
    return out, compared, unmatched, notes


# --------------------------------------------------------------------------
# Tracepoints, health, cost


def _tracepoints(base: KernelRun, patched: KernelRun) -> list[Difference]:
    out: list[Difference] = []
    for ev in sorted(set(base.formats) | set(patched.formats)):
        fb, fp = base.formats.get(ev), patched.formats.get(ev)
        if fb is None and fp is not None:
            out.append(Difference(DiffKind.TRACEPOINT, DiffClass.EXPECTED, ev, "absent",
                                  "present", "the series adds this tracepoint"))
        elif fp is None and fb is not None:
            out.append(Difference(DiffKind.TRACEPOINT, DiffClass.REGRESSION, ev, "present",
                                  "absent", "a tracepoint the base kernel had is gone"))
        elif fb != fp and fb is not None and fp is not None:
            diff = tuple(ln for ln in difflib.unified_diff(list(fb), list(fp), "base",
                                                            "patched", lineterm="", n=0)
                         if not ln.startswith(("---", "+++", "@@")))
            out.append(Difference(DiffKind.TRACEPOINT, DiffClass.REGRESSION, ev,
                                  "format as before", "format changed",
                                  "a tracepoint's fields changed", diff))
    return out


def _stage_notes(base: KernelRun, patched: KernelRun) -> list[str]:
    out: list[str] = []
    for run in (base, patched):
        for stage, rc in run.health.stages.items():
            if stage != "suite" and rc != 0:
                out.append(f"{run.label}: the {stage} stage exited {rc} (see its console log)")
    return out


def _health(base: KernelRun, patched: KernelRun) -> tuple[list[Difference], list[str]]:
    out: list[Difference] = []
    reasons: list[str] = []
    hb, hp = base.health, patched.health
    if hb.crashed:
        reasons.append(f"the base kernel itself crashed or was lost: {hb.describe()}")
        return out, reasons
    if hp.lost or hp.killed:
        out.append(Difference(DiffKind.HEALTH, DiffClass.REGRESSION, "guest", hb.describe(),
                              hp.describe(), "the patched kernel hung or never came back "
                              "where the base did not"))
    for stage, rc in hp.stages.items():
        if stage == "suite":
            continue  # its failures are compared test by test
        if rc != 0 and hb.stages.get(stage) == 0:
            out.append(Difference(DiffKind.HEALTH, DiffClass.REGRESSION, f"{stage} stage",
                                  "exit 0", f"exit {rc}",
                                  f"the {stage} stage failed on the patched kernel only"))
    for stage, rc in hb.stages.items():
        # A stage that failed on the base left calls that were never compared: a PASS
        # would claim more than was checked (found by a real gate run: a fuzz stage that
        # died after 50 of 200 calls on the base was only a note).
        if stage != "suite" and rc != 0:
            reasons.append(f"the {stage} stage failed on the base kernel (exit {rc}): what it "
                           "should have issued there was not compared (see the base's "
                           "console log)")
    seen = {(s.kind, _splat_site(s.summary)) for s in hb.splats}
    for s in hp.splats:
        if (s.kind, _splat_site(s.summary)) in seen:
            continue
        out.append(Difference(DiffKind.HEALTH, DiffClass.REGRESSION, f"kernel {s.kind}",
                              "none", s.summary,
                              f"the patched kernel reported a {s.kind} the base did not"))
    return out, reasons


_VOLATILE = re.compile(r"CPU: \d+|PID: \d+|\+0x[0-9a-f]+/0x[0-9a-f]+|0x[0-9a-f]{6,}|"
                       r"\b[0-9a-f]{12,}\b|\[[ \d.]+\]")


def _splat_site(summary: str) -> str:
    # The same report on two boots differs in PIDs, CPUs, addresses and offsets.
    return " ".join(_VOLATILE.sub("", summary).split())


def _cost(base: KernelRun, patched: KernelRun) -> Cost | None:
    tb, tp = base.timing, patched.timing
    if tb is None or tp is None:
        return None
    per = tuple((name, tb.per_syscall[name], tp.per_syscall[name])
                for name in sorted(set(tb.per_syscall) & set(tp.per_syscall)))
    return Cost(min(tb.calls, tp.calls), tb.ns_per_call, tp.ns_per_call, per,
                tb.reference_ns, tp.reference_ns)


_ORDER = {DiffClass.REGRESSION: 0, DiffClass.EXPECTED: 1, DiffClass.FIXED: 2,
          DiffClass.FLAKY: 3, DiffClass.NOTE: 4}


def compare(base: KernelRun, patched: KernelRun) -> GateVerdict:
    """Every difference between the two runs, classified, and the verdict."""
    diffs: list[Difference] = []
    notes = [f"base: {n}" for n in base.notes] + [f"patched: {n}" for n in patched.notes]
    health, reasons = _health(base, patched)
    diffs += health
    notes += _stage_notes(base, patched)
    suite, tests_compared, suite_notes = _suite(base, patched)
    diffs += suite
    notes += suite_notes
    calls, compared, unmatched, call_notes = _calls(base, patched)
    diffs += calls
    notes += call_notes
    diffs += _tracepoints(base, patched)
    spec_changes = diff_specs(base.specs, patched.specs)
    diffs = _link_suite(diffs, patched, base, spec_changes)
    if not reasons and not base.suite and not patched.suite and not compared:
        reasons.append("nothing to compare: no suite results and no calls on either kernel")
    diffs.sort(key=lambda d: _ORDER[d.cls])
    regressions = [d for d in diffs if d.cls is DiffClass.REGRESSION]
    if reasons:
        status = GateStatus.UNJUDGED
    elif regressions:
        status = GateStatus.REGRESSION
        by_kind: dict[str, int] = defaultdict(int)
        for d in regressions:
            by_kind[d.kind.value] += 1
        reasons = [f"{n} {kind} regression(s)" for kind, n in by_kind.items()]
    else:
        status = GateStatus.PASS
    return GateVerdict(status=status, reasons=tuple(reasons), differences=tuple(diffs),
                       spec_changes=spec_changes,
                       spec_classes=(compare_to_reference(base.specs, patched.specs)
                                     if base.specs is not None and patched.specs is not None
                                     else ()),
                       cost=_cost(base, patched), calls_compared=compared,
                       calls_unmatched=unmatched, tests_compared=tests_compared,
                       base=base.image or base.label, patched=patched.image or patched.label,
                       notes=tuple(notes))
