"""A gate verdict as Markdown (verdict first, then evidence, then the spec diff),
JSON and JUnit XML. Pure: strings in, strings out.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from typing import Any

from kapi_selftests.gate.compare import DiffClass, Difference, GateStatus, GateVerdict

__all__ = ["to_markdown", "to_json", "to_junit"]

_MAX_ROWS = 200  # per class in the Markdown tables; JSON has everything

_BADGE = {GateStatus.PASS: "PASS: no regression", GateStatus.REGRESSION: "FAIL: regression",
          GateStatus.UNJUDGED: "SKIP: could not judge"}


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _table(diffs: Sequence[Difference]) -> list[str]:
    lines = ["| kind | subject | base | patched | why |", "|---|---|---|---|---|"]
    for d in diffs[:_MAX_ROWS]:
        lines.append(f"| {d.kind.value} | `{_cell(d.subject)}` | {_cell(d.base)} | "
                     f"{_cell(d.patched)} | {_cell(d.explanation)} |")
    if len(diffs) > _MAX_ROWS:
        lines.append(f"\n... and {len(diffs) - _MAX_ROWS} more (see the JSON report)")
    return lines


def to_markdown(v: GateVerdict) -> str:
    """The report: summary verdict first, then the evidence, then the spec diff."""
    out = [f"# KAPI gate: {_BADGE[v.status]}", ""]
    out += [f"- base kernel: `{v.base}`" if v.base else "- base kernel: none (not built)",
            f"- patched kernel: `{v.patched}`" if v.patched
            else "- patched kernel: none (not built)"]
    for r in v.reasons:
        out.append(f"- **{r}**")
    for h in v.hints:
        out.append(f"- next: {h}")
    counts = ", ".join(f"{v.count(c)} {c.value}" for c in DiffClass)
    out.append(f"- differences: {counts}")
    out.append(f"- compared: {v.tests_compared} suite tests, {v.calls_compared} calls"
               + (f" ({v.calls_unmatched} ran on one kernel only)" if v.calls_unmatched else ""))
    if v.cost is not None:
        cost = v.cost
        how = (f"normalised by getpid timed in the same runs ({cost.base_ref_ns:.0f} -> "
               f"{cost.patched_ref_ns:.0f} ns); raw {cost.raw_ratio:.2f}x" if cost.normalised
               else "raw, not normalised")
        out.append(f"- runtime cost of the checks: {cost.ratio:.2f}x "
                   f"({cost.base_ns:.0f} ns -> {cost.patched_ns:.0f} ns per call, "
                   f"{cost.calls} calls; {how})")
    out.append("")
    for cls, title in ((DiffClass.REGRESSION, "Regressions"),
                       (DiffClass.EXPECTED, "Expected differences (explained by the specs)"),
                       (DiffClass.FIXED, "Fixed"),
                       (DiffClass.FLAKY, "Flaky (failed on one kernel, passed there on a "
                                         "re-run; not a regression)"),
                       (DiffClass.NOTE, "Notes")):
        diffs = [d for d in v.differences if d.cls is cls]
        if not diffs:
            continue
        out += [f"## {title} ({len(diffs)})", ""] + _table(diffs) + [""]
        if cls is DiffClass.REGRESSION:
            for d in diffs[:20]:
                if d.evidence:
                    out.append(f"<details><summary>{_cell(d.subject)}</summary>\n")
                    out += ["```"] + list(d.evidence) + ["```", "</details>", ""]
    if not v.differences and v.status is not GateStatus.UNJUDGED:
        out += ["No difference in suite results, per-call behaviour, pairing or "
                "tracepoints.", ""]
    if v.cost is not None and v.cost.per_syscall:
        k = v.cost.scale()
        out += ["## Runtime cost", "",
                "| syscall | base ns/call | patched ns/call | ratio (normalised) |",
                "|---|---|---|---|"]
        for name, b, p in v.cost.per_syscall:
            out.append(f"| {name} | {b:.0f} | {p:.0f} | "
                       f"{p / b * k if b else float('inf'):.2f} |")
        out.append("")
    out += ["## Spec diff", ""]
    if not v.spec_changes:
        out.append("No spec added, removed or changed.")
    if v.spec_classes:
        out += ["What each change does to callers (the base kernel's specs as reference):",
                ""] + [f"- **{d.cls.value}**: {d.spec} {_cell(d.change)} ({d.why})"
                       for d in v.spec_classes] + [""]
    for c in v.spec_changes:
        out.append(f"### {c.name}: {c.kind.value}")
        out += ["", "```diff"]
        sign = {"added": "+ ", "removed": "- "}.get(c.kind.value, "~ ")
        out += [sign + line for line in c.lines]
        out += ["```", ""]
    if v.notes:
        out += ["", "## Not compared", ""] + [f"- {n}" for n in v.notes]
    return "\n".join(out).rstrip() + "\n"


def _diff_json(d: Difference) -> dict[str, Any]:
    return {"kind": d.kind.value, "class": d.cls.value, "subject": d.subject,
            "base": d.base, "patched": d.patched, "explanation": d.explanation,
            "evidence": list(d.evidence), "spec_link": d.spec_link}


def to_json(v: GateVerdict) -> str:
    """Everything in the verdict, as one JSON document."""
    obj: dict[str, Any] = {
        "verdict": v.status.value, "exit_code": v.exit_code, "reasons": list(v.reasons),
        "hints": list(v.hints),
        "base": v.base, "patched": v.patched,
        "counts": {c.value: v.count(c) for c in DiffClass},
        "tests_compared": v.tests_compared, "calls_compared": v.calls_compared,
        "calls_unmatched": v.calls_unmatched,
        "differences": [_diff_json(d) for d in v.differences],
        "spec_changes": [{"name": c.name, "kind": c.kind.value, "lines": list(c.lines)}
                         for c in v.spec_changes],
        "spec_classes": [{"spec": d.spec, "class": d.cls.value, "change": d.change,
                          "why": d.why} for d in v.spec_classes],
        "cost": None if v.cost is None else {
            "calls": v.cost.calls, "base_ns_per_call": v.cost.base_ns,
            "patched_ns_per_call": v.cost.patched_ns, "ratio": v.cost.ratio,
            "raw_ratio": v.cost.raw_ratio, "base_reference_ns": v.cost.base_ref_ns,
            "patched_reference_ns": v.cost.patched_ref_ns,
            "per_syscall": {n: {"base": b, "patched": p} for n, b, p in v.cost.per_syscall}},
        "notes": list(v.notes),
    }
    return json.dumps(obj, indent=1) + "\n"


def to_junit(v: GateVerdict) -> str:
    """JUnit XML for CI: one testcase per regression (failure), expected/fixed differences
    as passing testcases, and one ``gate`` testcase carrying the verdict."""
    suite = ET.Element("testsuite", name="kapi-gate")
    cases = 0
    failures = skipped = 0
    gate = ET.SubElement(suite, "testcase", classname="kapi-gate", name="verdict")
    cases += 1
    if v.status is GateStatus.REGRESSION:
        ET.SubElement(gate, "failure", message="; ".join(v.reasons))
        failures += 1
    elif v.status is GateStatus.UNJUDGED:
        ET.SubElement(gate, "skipped", message="; ".join(v.reasons))
        skipped += 1
    for d in v.differences:
        if d.cls is DiffClass.NOTE:
            continue
        tc = ET.SubElement(suite, "testcase", classname=f"kapi-gate.{d.kind.value}",
                           name=d.subject)
        cases += 1
        if d.cls is DiffClass.REGRESSION:
            el = ET.SubElement(tc, "failure", message=d.explanation)
            el.text = "\n".join([f"base: {d.base}", f"patched: {d.patched}", *d.evidence])
            failures += 1
        else:
            out = ET.SubElement(tc, "system-out")
            out.text = f"{d.cls.value}: {d.explanation} (base: {d.base}; patched: {d.patched})"
    suite.set("tests", str(cases))
    suite.set("failures", str(failures))
    suite.set("skipped", str(skipped))
    root = ET.Element("testsuites")
    root.append(suite)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"
