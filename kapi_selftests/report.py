"""Results and their formats: KTAP out, KTAP in. Pure; no I/O beyond strings.

A :class:`TestResult` is what every stage hands to the reporter; KTAP
(``Documentation/dev-tools/ktap.rst``) is what kselftest users read.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from kapi_selftests.errors import KSFT_FAIL, KSFT_PASS, KSFT_SKIP

__all__ = ["Outcome", "TestResult", "format_ktap", "format_ktap_unrun", "parse_ktap",
           "exit_code"]


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
    """

    name: str
    outcome: Outcome
    reason: str = ""
    diagnostics: tuple[str, ...] = ()
    subtests: tuple[TestResult, ...] = ()
    time_s: float | None = None


def _result_lines(results: Sequence[TestResult], indent: str) -> list[str]:
    out = [f"{indent}1..{len(results)}"]
    for n, r in enumerate(results, 1):
        if r.subtests:
            out.append(f"{indent}    KTAP version 1")
            out.append(f"{indent}    # Subtest: {r.name}")
            out.extend(_result_lines(r.subtests, indent + "    "))
        for d in r.diagnostics:
            for line in d.splitlines() or [""]:
                out.append(f"{indent}# {line}")
        name = r.name.replace("#", "_").replace("\n", " ")
        reason = r.reason.replace("\n", " ")
        if r.outcome is Outcome.PASS:
            out.append(f"{indent}ok {n} {name}")
        elif r.outcome is Outcome.SKIP:
            out.append(f"{indent}ok {n} {name} # SKIP {reason}")
        elif r.outcome is Outcome.ERROR:
            out.append(f"{indent}not ok {n} {name} # ERROR {reason}".rstrip())
        else:
            out.append(f"{indent}not ok {n} {name}" + (f" # {reason}" if reason else ""))
    return out


def _count(results: Iterable[TestResult]) -> dict[Outcome, int]:
    counts = {o: 0 for o in Outcome}
    for r in results:
        counts[r.outcome] += 1
    return counts


def format_ktap(results: Sequence[TestResult], *, header: Sequence[str] = ()) -> str:
    """Render results as a KTAP v1 document with kselftest's totals line."""
    lines = ["KTAP version 1"] + [f"# {h}" for h in header] + _result_lines(results, "")
    c = _count(results)
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
                     r"(?:#\s*(?P<directive>SKIP|TODO|ERROR)?\s*(?P<reason>.*))?$")


def parse_ktap(text: str) -> list[TestResult]:
    """Parse the top-level results of a KTAP document (subtests are folded into diagnostics).

    Unknown lines are ignored, so a console log with KTAP embedded parses too.
    """
    results: list[TestResult] = []
    diags: list[str] = []
    for line in text.splitlines():
        if line.startswith("# ") or line == "#":
            diags.append(line[2:])
            continue
        m = _RESULT.match(line)
        if not m or m.group("indent"):
            continue
        directive = (m.group("directive") or "").upper()
        reason = (m.group("reason") or "").strip()
        if m.group("ok") == "ok":
            outcome = Outcome.SKIP if directive == "SKIP" else Outcome.PASS
        else:
            outcome = Outcome.ERROR if directive == "ERROR" else Outcome.FAIL
        results.append(TestResult(name=(m.group("name") or "").strip(), outcome=outcome,
                                  reason=reason, diagnostics=tuple(diags)))
        diags = []
    return results


def exit_code(results: Sequence[TestResult]) -> int:
    """kselftest exit code: 1 if anything failed, 4 if nothing passed and something could
    not run, else 0. A run where nothing executed at all is 4, never a pass."""
    c = _count(results)
    if c[Outcome.FAIL]:
        return KSFT_FAIL
    if c[Outcome.ERROR] or not c[Outcome.PASS]:
        return KSFT_SKIP
    return KSFT_PASS
