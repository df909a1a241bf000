"""Results and their formats: KTAP out, KTAP in. Pure; no I/O beyond strings.

A :class:`TestResult` is what every stage hands to the reporter; KTAP
(``Documentation/dev-tools/ktap.rst``) is what kselftest users read. A result may
group others (``subtests``: one per guest of a run): KTAP nests them, indented two
spaces a level, each group opening with its own version line, a ``# Subtest:`` line
(as KUnit writes it) and a plan; counts, exit codes, JUnit and pytest items see the
leaves (:func:`leaves`).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from kapi_selftests.errors import KSFT_FAIL, KSFT_PASS, KSFT_SKIP

__all__ = ["Outcome", "TestResult", "format_ktap", "format_ktap_unrun", "parse_ktap",
           "exit_code", "leaves", "group"]


class Outcome(enum.Enum):
    PASS = "ok"  # kernel behaved as the spec says
    FAIL = "not ok"  # kernel disagreed with the spec: a finding
    SKIP = "skip"  # could not be tested here; reason required
    ERROR = "error"  # harness or guest problem; never reported as a kernel bug


@dataclass(frozen=True, slots=True)
class TestResult:
    """One test's outcome.

    :param name: test name (no ``#`` and no newline)
    :param outcome: the outcome
    :param reason: one line: skip reason, failure summary or error
    :param diagnostics: lines printed as KTAP ``# `` comments before the result line
    :param subtests: nested results (KTAP subtests)
    :param time_s: how long it ran (pytest's setup, call and teardown), None when unknown
    :param timed_out: a FAIL because it ran out of time (a hung guest): KTAP's
        ``# TIMEOUT`` directive
    """

    name: str
    outcome: Outcome
    reason: str = ""
    diagnostics: tuple[str, ...] = ()
    subtests: tuple[TestResult, ...] = ()
    time_s: float | None = None
    timed_out: bool = False


def leaves(results: Iterable[TestResult]) -> list[TestResult]:
    """The results that are tests (no subtests), depth first: a group stands for its
    subtests, which carry their own unique names."""
    out: list[TestResult] = []
    for r in results:
        out.extend(leaves(r.subtests) if r.subtests else (r,))
    return out


def group(name: str, subtests: Sequence[TestResult]) -> TestResult:
    """A result grouping ``subtests`` under ``name`` (one guest's results), its outcome
    bubbled up as ``ktap.rst`` says: it fails when a subtest fails (an error when one
    could not run and none failed), passes when one passed, else is skipped."""
    c = _count(leaves(subtests))
    n = sum(c.values())
    if c[Outcome.FAIL]:
        outcome, reason = Outcome.FAIL, f"{c[Outcome.FAIL]} of {n} failed"
    elif c[Outcome.ERROR]:
        outcome, reason = Outcome.ERROR, f"{c[Outcome.ERROR]} of {n} could not run"
    elif c[Outcome.PASS]:
        outcome, reason = Outcome.PASS, ""
    else:
        outcome, reason = Outcome.SKIP, f"all {n} skipped"
    times = [r.time_s for r in leaves(subtests) if r.time_s is not None]
    return TestResult(name=name, outcome=outcome, reason=reason, subtests=tuple(subtests),
                      time_s=sum(times) if times else None)


_INDENT = "  "  # ktap.rst, "Nested tests": one level of indentation is two spaces


def _result_lines(results: Sequence[TestResult], indent: str) -> list[str]:
    out = [f"{indent}1..{len(results)}"]
    for n, r in enumerate(results, 1):
        name = r.name.replace("#", "_").replace("\n", " ")
        if r.subtests:
            # the subtest's lines are indented from its version line to its last result;
            # the parent's own diagnostics and result line are not
            out.append(f"{indent}{_INDENT}KTAP version 1")
            out.append(f"{indent}{_INDENT}# Subtest: {name}")
            out.extend(_result_lines(r.subtests, indent + _INDENT))
        for d in r.diagnostics:
            for line in d.splitlines() or [""]:
                out.append(f"{indent}# {line}")
        reason = r.reason.replace("\n", " ")
        if r.outcome is Outcome.PASS:
            out.append(f"{indent}ok {n} {name}")
        elif r.outcome is Outcome.SKIP:
            out.append(f"{indent}ok {n} {name} # SKIP {reason}")
        elif r.outcome is Outcome.ERROR:
            out.append(f"{indent}not ok {n} {name} # ERROR {reason}".rstrip())
        elif r.timed_out:
            out.append(f"{indent}not ok {n} {name} # TIMEOUT {reason}".rstrip())
        else:
            out.append(f"{indent}not ok {n} {name}" + (f" # {reason}" if reason else ""))
    return out


def _count(results: Iterable[TestResult]) -> dict[Outcome, int]:
    counts = {o: 0 for o in Outcome}
    for r in results:
        counts[r.outcome] += 1
    return counts


def format_ktap(results: Sequence[TestResult], *, header: Sequence[str] = ()) -> str:
    """Render results as a KTAP v1 document with kselftest's totals line (of the
    leaves: a group of subtests is not a test of its own)."""
    lines = ["KTAP version 1"] + [f"# {h}" for h in header] + _result_lines(results, "")
    c = _count(leaves(results))
    lines.append(f"# Totals: pass:{c[Outcome.PASS]} fail:{c[Outcome.FAIL]} "
                 f"xfail:0 xpass:0 skip:{c[Outcome.SKIP]} error:{c[Outcome.ERROR]}")
    return "\n".join(lines) + "\n"


def format_ktap_unrun(reason: str, *, header: Sequence[str] = ()) -> str:
    """A KTAP document for a run where nothing could run: an empty plan skipped with
    ``reason`` (as kselftest's ``ksft_exit_skip`` reports it), so CI shows why.
    """
    reason = " ".join(reason.split())
    return "\n".join(["KTAP version 1", *(f"# {h}" for h in header),
                      f"1..0 # SKIP {reason}"]) + "\n"


_RESULT = re.compile(r"^(?P<indent>\s*)(?P<ok>ok|not ok) (?P<n>\d+)(?: (?P<name>[^#]*?))?\s*"
                     r"(?:#\s*(?P<directive>SKIP|TODO|ERROR|TIMEOUT|XFAIL)?\s*"
                     r"(?P<reason>.*))?$")


def parse_ktap(text: str) -> list[TestResult]:
    """Parse a KTAP document: its top-level results, each with the results of its nested
    subtest document (an indented ``KTAP version`` line opens one) as ``subtests``.

    Unknown lines are ignored, so a console log with KTAP embedded parses too.
    """
    # one entry per open level: its indentation, its results, the diagnostics waiting
    # for its next result
    levels: list[tuple[int, list[TestResult], list[str]]] = [(0, [], [])]
    for line in text.splitlines():
        body = line.lstrip(" ")
        indent = len(line) - len(body)
        if body.startswith("KTAP version ") and indent > levels[-1][0]:
            levels.append((indent, [], []))
            continue
        if body.startswith("# ") or body == "#":
            if not body.startswith("# Subtest: "):
                levels[-1][2].append(body[2:])
            continue
        m = _RESULT.match(body)
        if not m or indent > levels[-1][0]:
            continue
        subtests: tuple[TestResult, ...] = ()
        while len(levels) > 1 and indent < levels[-1][0]:
            subtests = tuple(levels.pop()[1])  # the subtest that this result ends
        _indent, results, diags = levels[-1]
        directive = (m.group("directive") or "").upper()
        reason = (m.group("reason") or "").strip()
        if m.group("ok") == "ok":
            outcome = Outcome.SKIP if directive == "SKIP" else Outcome.PASS
        else:
            outcome = Outcome.ERROR if directive == "ERROR" else Outcome.FAIL
        results.append(TestResult(name=(m.group("name") or "").strip(), outcome=outcome,
                                  reason=reason, diagnostics=tuple(diags), subtests=subtests,
                                  timed_out=outcome is Outcome.FAIL and directive == "TIMEOUT"))
        diags.clear()
    return levels[0][1]


def exit_code(results: Sequence[TestResult]) -> int:
    """kselftest exit code: 1 if anything failed, 4 if nothing passed and something could
    not run, else 0. A run where nothing executed at all is 4, never a pass. Counts the
    leaves (:func:`leaves`)."""
    c = _count(leaves(results))
    if c[Outcome.FAIL]:
        return KSFT_FAIL
    if c[Outcome.ERROR] or not c[Outcome.PASS]:
        return KSFT_SKIP
    return KSFT_PASS
