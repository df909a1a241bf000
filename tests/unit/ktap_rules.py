"""A checker of KTAP v1 documents against the rules of the kernel's
Documentation/dev-tools/ktap.rst (test helper; written from the rules, not the kernel's code).

The rules checked:

- the document starts with the version line ``KTAP version 1``;
- every level (the document, each subtest) has a plan ``1..N`` after its version line
  (and after an optional ``# Subtest: NAME`` line) and before its first result, and
  exactly N results numbered 1, 2, ... N;
- a subtest opens with its own version line indented one level (two spaces) deeper
  than its parent's lines, all its lines are at that indentation, and it ends before
  its parent's result line, which is back at the parent's indentation and names the
  ``# Subtest:`` name when there is one;
- result lines are ``ok|not ok <n> [<description>][ # [<directive>] [<data>]]``, the
  description holds no ``#``, a directive is one of SKIP, TODO, XFAIL, TIMEOUT, ERROR,
  and TIMEOUT and ERROR come with ``not ok``;
- a parent whose subtest failed (``not ok`` without SKIP) fails too;
- every other line is a diagnostic line (``# ...``), indented at the current level or
  its parent's (this project writes no unknown lines).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

DIRECTIVES = ("SKIP", "TODO", "XFAIL", "TIMEOUT", "ERROR")
_RESULT = re.compile(r"^(ok|not ok) (\d+)(?: ([^#]*?))?\s*(?:# ?(.*))?$")
_PLAN = re.compile(r"^1\.\.(\d+)(?: # .*)?$")


@dataclass
class _Level:
    depth: int
    name: str | None = None
    plan: int | None = None
    seen: int = 0
    failed: bool = False
    children_failed: bool = False
    results: list[str] = field(default_factory=list)


def check_ktap(text: str) -> list[str]:
    """Every rule ``text`` breaks, as ``line N: what``; empty when it is valid KTAP v1."""
    lines = text.splitlines()
    problems: list[str] = []
    if not lines or lines[0] != "KTAP version 1":
        return ["line 1: not the version line 'KTAP version 1'"]
    stack = [_Level(depth=0)]
    expect_plan_or_header = True
    for no, raw in enumerate(lines[1:], 2):
        stripped = raw.lstrip(" ")
        indent = len(raw) - len(stripped)
        if "\t" in raw[:indent + 1]:
            problems.append(f"line {no}: tab in the indentation")
        if indent % 2:
            problems.append(f"line {no}: indentation of {indent} spaces is not whole levels")
        depth = indent // 2
        top = stack[-1]
        if stripped == "KTAP version 1":
            if depth != top.depth + 1:
                problems.append(f"line {no}: subtest version line at level {depth}, "
                                f"expected {top.depth + 1} (two spaces a level)")
            if top.plan is None:
                problems.append(f"line {no}: subtest before its parent's plan")
            stack.append(_Level(depth=depth))
            expect_plan_or_header = True
            continue
        if stripped.startswith("#"):
            if expect_plan_or_header and stripped.startswith("# Subtest: ") \
                    and depth == top.depth:
                top.name = stripped[len("# Subtest: "):]
            elif depth not in (top.depth, top.depth - 1):
                problems.append(f"line {no}: diagnostic at level {depth} inside level "
                                f"{top.depth}")
            continue
        m_plan = _PLAN.match(stripped)
        if m_plan:
            if depth != top.depth or top.plan is not None or top.seen:
                problems.append(f"line {no}: plan out of place")
            top.plan = int(m_plan.group(1))
            expect_plan_or_header = False
            continue
        m = _RESULT.match(stripped)
        if not m:
            problems.append(f"line {no}: neither version, plan, result nor diagnostic: {raw!r}")
            continue
        expect_plan_or_header = False
        ok, num, desc, rest = m.group(1), int(m.group(2)), (m.group(3) or ""), m.group(4)
        directive = (rest or "").split(" ", 1)[0] if rest else ""
        if directive.isupper() and directive.isalpha() and directive not in DIRECTIVES:
            problems.append(f"line {no}: unknown directive {directive}")
        if directive in ("TIMEOUT", "ERROR") and ok == "ok":
            problems.append(f"line {no}: {directive} with 'ok'")
        failed = ok == "not ok" and directive != "SKIP"
        if depth == top.depth - 1 and len(stack) > 1:
            # the result of the subtest that just ended, at its parent's level
            child = stack.pop()
            if child.plan is None:
                problems.append(f"line {no}: subtest ended without a plan")
            elif child.seen != child.plan:
                problems.append(f"line {no}: subtest planned {child.plan}, ran {child.seen}")
            if child.name is not None and desc != child.name:
                problems.append(f"line {no}: subtest '{child.name}' ends with result '{desc}'")
            if child.children_failed and not failed:
                problems.append(f"line {no}: '{desc}' passes though a subtest failed")
            top = stack[-1]
        elif depth != top.depth:
            problems.append(f"line {no}: result at level {depth} inside level {top.depth}")
            continue
        if top.plan is None:
            problems.append(f"line {no}: result before the plan")
        top.seen += 1
        if num != top.seen:
            problems.append(f"line {no}: test number {num}, expected {top.seen}")
        top.children_failed |= failed
    while len(stack) > 1:
        problems.append(f"end: subtest at level {stack.pop().depth} has no result line")
    if stack[0].plan is not None and stack[0].seen != stack[0].plan:
        problems.append(f"end: planned {stack[0].plan}, ran {stack[0].seen}")
    return problems
