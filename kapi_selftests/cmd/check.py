"""``kapi-selftests check PATH``: judge a saved trace, offline.

PATH is a text trace (what ``/sys/kernel/tracing/trace`` prints), a raw capture
directory (``cpuN.raw``, ``cpuN.stats``, ``header_page``, ``header_event``,
``<event>.format``, optional ``calls.log``) or a directory of such directories.
Every capture's events are paired; a capture the harness saved (``run --save-trace``:
``calls.log`` with each call's times, ``facts.json``, the kernel's spec dump in
``specs/`` above it) is also judged call by call with the five checks, by the same
judge (:func:`kapi_selftests.oracle.checks.check_calls`) and the same oracle as the live run.

Exit code: 1 when a violation remains that loss cannot explain; otherwise 4 when
events were lost and some halves or pairs could not be judged (or there was
nothing to judge); otherwise 0. Only :mod:`kapi_selftests.cli` exits.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kapi_selftests.arch import find_syscall
from kapi_selftests.errors import KSFT_FAIL, KSFT_PASS, KSFT_SKIP, UsageError
from kapi_selftests.oracle.calls_log import CALLS_LOG, FACTS_FILE, load_facts, parse_calls_log
from kapi_selftests.oracle.checks import check_calls
from kapi_selftests.oracle.predict import MemoryFacts, predict
from kapi_selftests.oracle.spec import builtin_specs, load_debugfs
from kapi_selftests.records import ENTER, CallCheck, EventSource, Prediction
from kapi_selftests.report import Outcome, TestResult, format_ktap
from kapi_selftests.trace.capture import find_capture_dirs, load_capture
from kapi_selftests.trace.events import Capture, FieldValue, TraceEvent
from kapi_selftests.trace.pairing import PairingResult, Violation, pair

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Add the ``check`` arguments."""
    p.add_argument("path", metavar="PATH", type=Path,
                   help="text trace file, raw capture directory, or a directory of "
                        "capture directories")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object instead of KTAP")


@dataclass(frozen=True, slots=True)
class _Checked:
    label: str
    capture: Capture
    result: PairingResult
    #: the five checks of every call of calls.log (None: no calls.log with times)
    calls: tuple[CallCheck, ...] | None = None

    @property
    def unjudged_pairs(self) -> int:
        return sum(1 for p in self.result.pairs if p.spans_loss)

    @property
    def cannot_judge(self) -> bool:
        return bool(self.result.unjudged) or self.unjudged_pairs > 0


def _load(path: Path) -> list[_Checked]:
    if not path.exists():
        raise UsageError(f"{path}: no such file or directory")
    if path.is_dir():
        dirs = find_capture_dirs(path)
        if not dirs:
            raise UsageError(f"{path}: no capture found (no cpuN.raw files here or in "
                             f"subdirectories)")
    else:
        dirs = [path]
    checked = []
    for d in dirs:
        log.info("checking %s", d)
        cap = load_capture(d)
        label = str(d.relative_to(path)) if d != path else str(path)
        checked.append(_Checked(label, cap, pair(cap.events, cap.loss), _judge_calls(d, cap)))
    return checked


def _judge_calls(d: Path, cap: Capture) -> tuple[CallCheck, ...] | None:
    # The live run's judgement again: its calls, the specs it used (the kernel's dump
    # saved above the batches, else the built-in model), the memory facts the oracle
    # read, the side effects it measured; predictions from the same oracle.
    if not (d / CALLS_LOG).is_file():
        return None
    records = parse_calls_log((d / CALLS_LOG).read_text(), origin=str(d / CALLS_LOG))
    if not records or any(r.t_end_ns == 0 for r in records):
        return None  # no times: the calls' events cannot be told apart
    facts, effects = load_facts(json.loads((d / FACTS_FILE).read_text())) \
        if (d / FACTS_FILE).is_file() else (MemoryFacts(), [[] for _ in records])
    specs_dir = next((p / "specs" for p in (d, *d.parents) if (p / "specs" / "list").is_file()),
                     None)
    specs = load_debugfs(specs_dir) if specs_dir is not None else builtin_specs()
    kapi = (d / f"{ENTER}.format").is_file() or any(e.name == ENTER for e in cap.events)
    source = EventSource.KAPI if kapi else EventSource.SYSCALLS
    preds: list[Prediction | None] = []
    for r in records:
        abi = find_syscall(r.nr)
        spec = specs.get(abi.spec_name) if abi is not None and kapi else None
        preds.append(predict(spec, r.args[:len(spec.params)], facts) if spec else None)
    return tuple(check_calls(records, cap, source, specs, memory=facts,
                             side_effects=effects if len(effects) == len(records) else None,
                             predictions=preds if kapi else None))


def _verdict(checked: Sequence[_Checked]) -> int:
    if any(c.result.violations for c in checked):
        return KSFT_FAIL
    if any(not call.ok for c in checked for call in c.calls or ()):
        return KSFT_FAIL
    if any(c.result.lost_events and c.cannot_judge for c in checked):
        return KSFT_SKIP
    if any(c.cannot_judge for c in checked):  # loss seen only in page flags
        return KSFT_SKIP
    if not any(c.result.pairs or c.result.edge_halves for c in checked):
        return KSFT_SKIP  # nothing to judge is not a pass
    return KSFT_PASS


def _lost_total(checked: Sequence[_Checked]) -> int | None:
    known = [c.result.lost_events for c in checked if c.result.lost_events is not None]
    return sum(known) if known else None


# --------------------------------------------------------------------------- KTAP


def _loss_result(c: _Checked) -> TestResult:
    r = c.result
    if r.lost_events is None and not c.cannot_judge:
        return TestResult("loss", Outcome.PASS,
                          diagnostics=("the capture does not say whether events were lost",))
    if not r.lost_events and not c.cannot_judge:
        return TestResult("loss", Outcome.PASS)
    lost = f"{r.lost_events} events lost" if r.lost_events else "events lost"
    halves = _count(len(r.unjudged), "half pair", "half pairs")
    reason = f"{lost}; {halves} and {_count(c.unjudged_pairs, 'pair')} cannot be judged"
    return TestResult("loss", Outcome.SKIP, reason=reason,
                      diagnostics=tuple(v.explanation for v in r.unjudged))


def _capture_results(c: _Checked) -> list[TestResult]:
    r = c.result
    out: list[TestResult] = []
    for name in r.names:
        n_pairs = sum(1 for p in r.pairs if p.name == name)
        bad = [v for v in r.violations if v.name == name]
        diags = [_count(n_pairs, "pair")]
        diags += [f"edge half: {v.kind.value} tid {v.tid}: {v.explanation}"
                  for v in r.edge_halves if v.name == name]
        diags += [f"unjudged: {v.kind.value} tid {v.tid}: {v.explanation}"
                  for v in r.unjudged if v.name == name]
        diags += [f"violation: {v.kind.value} tid {v.tid}: {v.explanation}" for v in bad]
        if bad:
            out.append(TestResult(name, Outcome.FAIL, reason=_count(len(bad), "violation"),
                                  diagnostics=tuple(diags)))
        else:
            out.append(TestResult(name, Outcome.PASS, diagnostics=tuple(diags)))
    out.append(_loss_result(c))
    if c.calls is not None:
        wrong = [call for call in c.calls if not call.ok]
        lines = tuple(line for call in wrong for line in call.explain().splitlines())
        out.append(TestResult("calls", Outcome.FAIL if wrong else Outcome.PASS,
                              reason=_count(len(wrong), "call") + " judged wrong" if wrong
                              else "",
                              diagnostics=(_count(len(c.calls), "call") + " judged", *lines)))
    return out


def _summary(c: _Checked) -> str:
    r = c.result
    lost = "unknown" if r.lost_events is None else str(r.lost_events)
    return (f"{c.label}: {_count(len(r.pairs), 'pair')}, "
            f"{_count(len(r.violations), 'violation')}, "
            f"{_count(len(r.edge_halves), 'edge half', 'edge halves')}, "
            f"{len(r.unjudged)} unjudged, lost events {lost}")


def _count(n: int, one: str, many: str | None = None) -> str:
    return f"{n} {one if n == 1 else many or one + 's'}"


def _ktap(checked: Sequence[_Checked]) -> str:
    header = [f"kapi-selftests check: {_summary(c)}" for c in checked]
    if len(checked) == 1:
        return format_ktap(_capture_results(checked[0]), header=header)
    results = []
    for c in checked:
        subs = tuple(_capture_results(c))
        bad = any(s.outcome is Outcome.FAIL for s in subs)
        skip = any(s.outcome is Outcome.SKIP for s in subs)
        results.append(TestResult(c.label, Outcome.FAIL if bad else
                                  Outcome.SKIP if skip else Outcome.PASS,
                                  reason="violations" if bad else
                                  "events lost" if skip else "", subtests=subs))
    return format_ktap(results, header=header)


# --------------------------------------------------------------------------- JSON


def _json_value(v: FieldValue) -> Any:
    if isinstance(v, tuple):
        return list(v)
    if isinstance(v, bytes):
        return v.hex()
    return v


def _event_json(e: TraceEvent) -> dict[str, Any]:
    fields: Mapping[str, FieldValue] = e.fields
    return {"ts": e.ts_ns, "cpu": e.cpu, "tid": e.tid, "event": e.name,
            "fields": {k: _json_value(v) for k, v in fields.items()}}


def _violation_json(v: Violation, label: str) -> dict[str, Any]:
    us = (v.ts_ns + 500) // 1000
    return {"kind": v.kind.value, "tid": v.tid, "name": v.name, "ts": v.ts_ns,
            "time": f"{us // 1_000_000}.{us % 1_000_000:06d}", "explanation": v.explanation,
            "capture": label, "evidence": [_event_json(e) for e in v.evidence]}


def _capture_json(c: _Checked) -> dict[str, Any]:
    r = c.result
    names: dict[str, dict[str, int]] = {n: {"pairs": 0, "violations": 0} for n in r.names}
    for p in r.pairs:
        names[p.name]["pairs"] += 1
    for v in r.violations:
        names.setdefault(v.name, {"pairs": 0, "violations": 0})["violations"] += 1
    return {
        "capture": c.label,
        "events": len(c.capture.events),
        "pairs": len(r.pairs),
        "pairs_spanning_loss": c.unjudged_pairs,
        "violations": [_violation_json(v, c.label) for v in r.violations],
        "edge_halves": [_violation_json(v, c.label) for v in r.edge_halves],
        "unjudged": [_violation_json(v, c.label) for v in r.unjudged],
        "lost_events": r.lost_events,
        "syscalls": names,
    }


def _json(checked: Sequence[_Checked], code: int) -> str:
    per = [_capture_json(c) for c in checked]
    verdict = {KSFT_PASS: "pass", KSFT_FAIL: "fail"}.get(code, "skip")
    out: dict[str, Any] = {
        "verdict": verdict,
        "exit_code": code,
        "events": sum(p["events"] for p in per),
        "pairs": sum(p["pairs"] for p in per),
        "pairs_spanning_loss": sum(p["pairs_spanning_loss"] for p in per),
        "violations": [v for p in per for v in p["violations"]],
        "edge_halves": [v for p in per for v in p["edge_halves"]],
        "unjudged": [v for p in per for v in p["unjudged"]],
        "lost_events": _lost_total(checked),
        "captures": per,
    }
    return json.dumps(out, indent=2, sort_keys=False)


def run(args: argparse.Namespace) -> int:
    """Check the capture(s) at ``args.path``; print KTAP (or JSON); return the exit code."""
    checked = _load(args.path)
    code = _verdict(checked)
    sys.stdout.write(_json(checked, code) + "\n" if args.json else _ktap(checked))
    return code
