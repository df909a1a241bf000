"""KTAP output: one guest flat, several guests nested one level (a subtest per guest),
checked against the rules of ktap.rst (tests/unit/ktap_rules.py) and, when
``KAPI_KERNEL_SRC`` names a kernel tree, parsed by that tree's
``tools/testing/kunit/kunit_parser.py`` (imported from the tree at test time)."""

from __future__ import annotations

import os
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from ktap_rules import check_ktap

from kapi_selftests.errors import KSFT_FAIL, KSFT_PASS, KSFT_SKIP
from kapi_selftests.host import runner
from kapi_selftests.report import (
    Outcome,
    exit_code,
    format_ktap,
    format_ktap_unrun,
    group,
    leaves,
    parse_ktap,
)
from kapi_selftests.report import TestResult as Result

G0 = [Result("tests/guest/test_a.py::test_one", Outcome.PASS, time_s=0.5),
      Result("tests/guest/test_a.py::test_two", Outcome.FAIL, "assert 1 == 2",
             ("E   assert 1 == 2", "tests/guest/test_a.py:9: AssertionError"), time_s=0.25),
      Result("guest0: kernel-console", Outcome.FAIL, "kernel lockdep report: WARNING: x",
             ("console: /w/guest0/console.log line 7", "[ 1.0] WARNING: x"))]
G1 = [Result("tests/guest/test_b.py::test_three", Outcome.SKIP,
             "kernel has no kapi tracepoints (build with CONFIG_KAPI_RUNTIME_CHECKS=y)"),
      Result("tests/guest/test_b.py::test_four", Outcome.PASS),
      Result("guest1: guest-watchdog", Outcome.FAIL, "guest hung: no progress for 300 s",
             ("console: /w/guest1/console.log",), timed_out=True)]
G2 = [Result("tests/guest/test_c.py::test_five", Outcome.SKIP, "needs root")]
NESTED = [group("guest0", G0), group("guest1", G1), group("guest2", G2)]
HEADER = ("kernel: /k/bzImage (7.2.13)", "guest0: boot-to-init 2.1 s")


def test_ktap_guests_nest_as_subtests_two_spaces_a_level() -> None:
    text = format_ktap(NESTED, header=HEADER)
    assert check_ktap(text) == []
    lines = text.splitlines()
    assert lines[:4] == ["KTAP version 1", f"# {HEADER[0]}", f"# {HEADER[1]}", "1..3"]
    assert lines[4:7] == ["  KTAP version 1", "  # Subtest: guest0", "  1..3"]
    assert "  ok 1 tests/guest/test_a.py::test_one" in lines
    assert "  not ok 3 guest1: guest-watchdog # TIMEOUT guest hung: no progress for 300 s" \
        in lines
    assert "not ok 1 guest0 # 2 of 3 failed" in lines
    assert "not ok 2 guest1 # 1 of 3 failed" in lines
    assert "ok 3 guest2 # SKIP all 1 skipped" in lines
    assert lines[-1] == "# Totals: pass:2 fail:3 xfail:0 xpass:0 skip:2 error:0"  # leaves


def test_ktap_one_guest_is_not_nested() -> None:
    text = format_ktap(G0, header=HEADER)
    assert check_ktap(text) == []
    assert not any(ln.startswith(" ") for ln in text.splitlines())


def test_ktap_unrun_document_is_valid() -> None:
    assert check_ktap(format_ktap_unrun("could not run: no QEMU")) == []


@pytest.mark.parametrize(("doc", "problem"), [
    # what this project wrote before: four spaces a level
    ("KTAP version 1\n1..1\n    KTAP version 1\n    # Subtest: g\n    1..1\n    ok 1 t\n"
     "ok 1 g\n", "expected 1 (two spaces a level)"),
    ("KTAP version 1\n1..2\nok 1 a\nok 3 b\n", "test number 3, expected 2"),
    ("KTAP version 1\n1..1\n  KTAP version 1\n  1..2\n  ok 1 t\nok 1 g\n", "planned 2, ran 1"),
    ("KTAP version 1\n1..1\n  KTAP version 1\n  # Subtest: g\n  1..1\n  not ok 1 t\nok 1 g\n",
     "'g' passes though a subtest failed"),
    ("KTAP version 1\n1..1\n  KTAP version 1\n  # Subtest: g\n  1..1\n  ok 1 t\nok 1 h\n",
     "subtest 'g' ends with result 'h'"),
    ("KTAP version 1\n1..1\nok 1 t # TIMEOUT 30 seconds\n", "TIMEOUT with 'ok'"),
    ("KTAP version 1\n1..1\nnot ok 1 t # HUNG\n", "unknown directive HUNG"),
    ("KTAP version 1\nok 1 t\n", "result before the plan"),
    ("TAP version 13\n1..0\n", "not the version line"),
])
def test_ktap_rules_catch_a_broken_document(doc: str, problem: str) -> None:
    assert any(problem in p for p in check_ktap(doc)), check_ktap(doc)


def test_ktap_parse_reads_the_timeout_directive() -> None:
    (r,) = parse_ktap("KTAP version 1\n1..1\nnot ok 1 guest-watchdog # TIMEOUT guest hung\n")
    assert r.outcome is Outcome.FAIL and r.timed_out and r.reason == "guest hung"


def test_ktap_nested_results_count_their_leaves() -> None:
    assert [r.name for r in leaves(NESTED)] == [r.name for r in G0 + G1 + G2]
    assert exit_code(NESTED) == KSFT_FAIL
    assert exit_code([group("guest0", G2), group("guest1", G2)]) == KSFT_SKIP
    assert exit_code([group("guest0", G1[1:2]), group("guest1", G2)]) == KSFT_PASS
    assert NESTED[0].time_s == 0.75


def test_ktap_nested_results_are_flat_in_junit(tmp_path: Path) -> None:
    runner.write_junit(NESTED, tmp_path / "j.xml")
    cases = list(ET.parse(tmp_path / "j.xml").getroot().iter("testcase"))
    assert [c.get("name") for c in cases] == [
        "test_one", "test_two", "guest0: kernel-console", "test_three", "test_four",
        "guest1: guest-watchdog", "test_five"]
    suite = ET.parse(tmp_path / "j.xml").getroot().find("testsuite")
    assert suite is not None and suite.get("tests") == "7" and suite.get("failures") == "3"


def test_ktap_merge_groups_each_guest_and_keeps_one_guest_flat() -> None:
    merged = runner._merge([G0, G1, "guest2: could not run: boom", []])
    assert [(r.name, r.outcome) for r in merged] == [
        ("guest0", Outcome.FAIL), ("guest1", Outcome.FAIL), ("guest2", Outcome.ERROR),
        ("guest3", Outcome.SKIP)]
    assert merged[0].subtests == tuple(G0) and not merged[2].subtests
    assert check_ktap(format_ktap(merged)) == []
    assert runner._merge([G0]) == G0


# --- the kernel's own KTAP parser ----------------------------------------------------

@pytest.fixture
def kunit_parser(monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    src = os.environ.get("KAPI_KERNEL_SRC")
    if not src:
        pytest.skip("KAPI_KERNEL_SRC is not set: point it at a kernel source tree to parse "
                    "the output with its tools/testing/kunit/kunit_parser.py")
    kunit = Path(src) / "tools" / "testing" / "kunit"
    if not (kunit / "kunit_parser.py").is_file():
        pytest.skip(f"KAPI_KERNEL_SRC={src} has no tools/testing/kunit/kunit_parser.py")
    monkeypatch.syspath_prepend(str(kunit))
    for mod in ("kunit_parser", "kunit_printer"):
        monkeypatch.delitem(sys.modules, mod, raising=False)
    import kunit_parser as parser  # the tree's, found through the path set above
    yield parser
    for mod in ("kunit_parser", "kunit_printer"):
        sys.modules.pop(mod, None)


def _parse(parser: ModuleType, text: str) -> object:
    import kunit_printer
    return parser.parse_run_tests(text.splitlines(), kunit_printer.null_printer)


def test_ktap_nested_output_parses_with_the_kernels_kunit_parser(
        kunit_parser: ModuleType) -> None:
    test = _parse(kunit_parser, format_ktap(NESTED, header=HEADER))
    status = kunit_parser.TestStatus
    assert test.counts.errors == 0, test  # type: ignore[attr-defined]
    assert [t.name for t in test.subtests] == ["guest0", "guest1", "guest2"]  # type: ignore[attr-defined]
    g0, g1, g2 = test.subtests  # type: ignore[attr-defined]
    assert [t.name for t in g0.subtests] == [r.name for r in G0]
    assert (g0.status, g1.status, g2.status) == (status.FAILURE, status.FAILURE,
                                                 status.SKIPPED)
    assert g1.subtests[2].status == status.FAILURE  # TIMEOUT is a "not ok"
    c = test.counts  # type: ignore[attr-defined]
    assert (c.passed, c.failed, c.skipped, c.crashed) == (2, 3, 2, 0)
    assert test.status == status.FAILURE  # type: ignore[attr-defined]


def test_ktap_flat_output_parses_with_the_kernels_kunit_parser(
        kunit_parser: ModuleType) -> None:
    test = _parse(kunit_parser, format_ktap(G1[:2], header=HEADER))
    c = test.counts  # type: ignore[attr-defined]
    assert c.errors == 0 and (c.passed, c.skipped) == (1, 1)
    assert test.status == kunit_parser.TestStatus.SUCCESS  # type: ignore[attr-defined]


def test_ktap_kunit_parser_reports_a_missing_subtest(kunit_parser: ModuleType) -> None:
    # the parser, as used here, does report a broken document (so the passes above are
    # not vacuous): a plan that promises a test that never comes
    test = _parse(kunit_parser, "KTAP version 1\n1..2\n  KTAP version 1\n  # Subtest: g\n"
                                "  1..1\n  ok 1 t\nok 1 g\n")
    assert test.counts.errors > 0  # type: ignore[attr-defined]


def test_ktap_nested_document_parses_back_to_its_groups() -> None:
    back = parse_ktap(format_ktap(NESTED, header=HEADER))
    assert [(r.name, r.outcome) for r in back] == [(g.name, g.outcome) for g in NESTED]
    assert [(r.name, r.outcome, r.reason, r.timed_out) for r in leaves(back)] == [
        (r.name, r.outcome, r.reason, r.timed_out) for r in leaves(NESTED)]
    assert back[0].subtests[1].diagnostics == G0[1].diagnostics
    assert back[0].diagnostics == HEADER  # the header lines come before the first result
    assert parse_ktap(format_ktap(G0)) == [
        Result(r.name, r.outcome, r.reason, r.diagnostics) for r in G0]
