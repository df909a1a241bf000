"""The gate's suite re-runs (flaky vs. new failures) and the links from suite failures to
the spec diff, on recorded results.

The suite results are those of the recorded full-suite gate of the KAPI v4 kernel
(base) against the variant with open's mode mask widened to 0xffff (patched), see
docs/gate.md: three tests failed on the base kernel only (they pass when re-run: the
flaky in-guest tests) and the series' own selftest case for the mode mask failed on the
variant only. Specs and calls come from ``tests/data/gate-real-{kapi,variant}``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path

import pytest
from _pytest.mark.expression import Expression
from datadir import DATA

from kapi_selftests.gate.compare import (
    DiffClass,
    DiffKind,
    GateStatus,
    compare,
    retry_candidates,
    spec_links,
)
from kapi_selftests.gate.record import KernelRun, load_run
from kapi_selftests.gate.render import to_json, to_junit, to_markdown
from kapi_selftests.host import gate_run
from kapi_selftests.oracle.specdiff import SpecChange, SpecChangeKind
from kapi_selftests.report import Outcome, format_ktap
from kapi_selftests.report import TestResult as Result

# The 87 tests of the recorded full-suite gate (kapi vs variant, docs/gate.md), by module.
_TESTS = {
    "tests/guest/pbt/test_calls.py": (
        'test_calls_generated[kapi-sys_close]',
        'test_calls_generated[kapi-sys_madvise]',
        'test_calls_generated[kapi-sys_open]',
        'test_calls_generated[kapi-sys_read]',
        'test_calls_generated[kapi-sys_write]',
        'test_calls_generated[generic-sys_close]',
        'test_calls_generated[generic-sys_madvise]',
        'test_calls_generated[generic-sys_open]',
        'test_calls_generated[generic-sys_read]',
        'test_calls_generated[generic-sys_write]',
    ),
    "tests/guest/test_capture.py": (
        'test_capture_each_call_is_one_pair_with_its_args_and_ret[kapi]',
        'test_capture_each_call_is_one_pair_with_its_args_and_ret[generic]',
        'test_capture_threads_pair_by_tid[kapi]',
        'test_capture_threads_pair_by_tid[generic]',
        'test_capture_instance_removed_on_error',
        'test_capture_loss_is_counted_never_a_false_missing_exit',
    ),
    "tests/guest/test_fuzz_local.py": (
        'test_fuzz_local_campaign_passes_on_a_correct_kernel',
        'test_fuzz_local_writes_its_files',
        'test_fuzz_local_reports_a_coverage_figure',
        'test_fuzz_local_same_seed_same_calls',
    ),
    "tests/guest/test_signals.py": (
        'test_signal_interrupted_read[kapi-no_restart]',
        'test_signal_interrupted_read[kapi-sa_restart]',
        'test_signal_interrupted_read[generic-no_restart]',
        'test_signal_interrupted_read[generic-sa_restart]',
    ),
    "tests/guest/test_smoke.py": (
        'test_smoke_tracefs_mounted',
        'test_smoke_kapi_events_present',
    ),
    "tests/guest/pbt/test_stateful.py": (
        'test_stateful_file_model[kapi]',
        'test_stateful_file_model[generic]',
    ),
    "tests/guest/test_upstream.py": (
        'test_upstream[kapi-01-open valid file]',
        'test_upstream[kapi-02-read from valid fd]',
        'test_upstream[kapi-03-write to /dev/null]',
        'test_upstream[kapi-04-close valid fd]',
        'test_upstream[kapi-05-open with invalid flags returns EINVAL]',
        'test_upstream[kapi-06-open with invalid mode returns EINVAL]',
        'test_upstream[kapi-07-open with NULL path returns EINVAL]',
        'test_upstream[kapi-08-open with flag bit 30 (0x40000000) returns EINVAL]',
        'test_upstream[kapi-09-read with fd=-1 returns error]',
        'test_upstream[kapi-10-read with count=0 returns 0]',
        'test_upstream[kapi-11-write with count=0 returns 0]',
        'test_upstream[kapi-12-open with path > PATH_MAX returns ENAMETOOLONG/EINVAL]',
        'test_upstream[kapi-13-read with unmapped buffer returns EFAULT/EINVAL]',
        'test_upstream[kapi-14-write with unmapped buffer returns EFAULT/EINVAL]',
        'test_upstream[kapi-15-close already-closed fd returns EBADF]',
        'test_upstream[kapi-16-open /dev/null with O_RDONLY|O_CLOEXEC succeeds]',
        'test_upstream[kapi-17-write 0 bytes to /dev/null returns 0]',
        'test_upstream[kapi-18-read from write-only fd returns EBADF]',
        'test_upstream[kapi-19-write to read-only fd returns EBADF]',
        'test_upstream[kapi-20-close fd 9999 returns EBADF]',
        'test_upstream[kapi-21-read from closed pipe returns 0 (EOF)]',
        'test_upstream[kapi-22-write to closed pipe returns EPIPE + SIGPIPE]',
        'test_upstream[kapi-23-open O_DIRECTORY on regular file returns ENOTDIR]',
        'test_upstream[kapi-24-open nonexistent file without O_CREAT returns ENOENT]',
        'test_upstream[kapi-25-close stdin (fd 0) succeeds]',
        'test_upstream[kapi-26-read after close returns EBADF]',
        'test_upstream[kapi-27-write with large count handled correctly]',
        'test_upstream[kapi-28-normal syscall path (open/read/write/close) works]',
        'test_upstream[generic-01-open valid file]',
        'test_upstream[generic-02-read from valid fd]',
        'test_upstream[generic-03-write to /dev/null]',
        'test_upstream[generic-04-close valid fd]',
        'test_upstream[generic-05-open with invalid flags returns EINVAL]',
        'test_upstream[generic-06-open with invalid mode returns EINVAL]',
        'test_upstream[generic-07-open with NULL path returns EINVAL]',
        'test_upstream[generic-08-open with flag bit 30 (0x40000000) returns EINVAL]',
        'test_upstream[generic-09-read with fd=-1 returns error]',
        'test_upstream[generic-10-read with count=0 returns 0]',
        'test_upstream[generic-11-write with count=0 returns 0]',
        'test_upstream[generic-12-open with path > PATH_MAX returns ENAMETOOLONG/EINVAL]',
        'test_upstream[generic-13-read with unmapped buffer returns EFAULT/EINVAL]',
        'test_upstream[generic-14-write with unmapped buffer returns EFAULT/EINVAL]',
        'test_upstream[generic-15-close already-closed fd returns EBADF]',
        'test_upstream[generic-16-open /dev/null with O_RDONLY|O_CLOEXEC succeeds]',
        'test_upstream[generic-17-write 0 bytes to /dev/null returns 0]',
        'test_upstream[generic-18-read from write-only fd returns EBADF]',
        'test_upstream[generic-19-write to read-only fd returns EBADF]',
        'test_upstream[generic-20-close fd 9999 returns EBADF]',
        'test_upstream[generic-21-read from closed pipe returns 0 (EOF)]',
        'test_upstream[generic-22-write to closed pipe returns EPIPE + SIGPIPE]',
        'test_upstream[generic-23-open O_DIRECTORY on regular file returns ENOTDIR]',
        'test_upstream[generic-24-open nonexistent file without O_CREAT returns ENOENT]',
        'test_upstream[generic-25-close stdin (fd 0) succeeds]',
        'test_upstream[generic-26-read after close returns EBADF]',
        'test_upstream[generic-27-write with large count handled correctly]',
        'test_upstream[generic-28-normal syscall path (open/read/write/close) works]',
        'test_upstream_29_dmesg_has_validator_warnings',
    ),
    "tests/guest/pbt/test_witness.py": (
        'test_witness_ptrace_agrees_with_tracepoints[kapi]',
        'test_witness_ptrace_agrees_with_tracepoints[generic]',
    ),
}
_NAMES = [f"{m}::{t}" for m, ts in _TESTS.items() for t in ts]

# Their failures as recorded (reason lines verbatim, diagnostics cut to the assertion).

# Their failures as recorded (reason lines verbatim but for the cut fuzz summary).
CLOSE = "tests/guest/pbt/test_calls.py::test_calls_generated[kapi-sys_close]"
OPEN = "tests/guest/pbt/test_calls.py::test_calls_generated[kapi-sys_open]"
FUZZ = "tests/guest/test_fuzz_local.py::test_fuzz_local_campaign_passes_on_a_correct_kernel"
MODE = "tests/guest/test_upstream.py::test_upstream[kapi-06-open with invalid mode returns EINVAL]"
_FAILED: dict[str, dict[str, tuple[str, tuple[str, ...]]]] = {
    "base": {
        CLOSE: ("AssertionError: call: close(0xffffffffffffffff) = -EINVAL  (tid 90)",
                ("E       AssertionError: call: close(0xffffffffffffffff) = -EINVAL  (tid 90)",
                 "E         oracle: rejects: fd: fd: file descriptor 4294967295 out of int "
                 "range; params 'fd=4294967295'")),
        OPEN: ("AssertionError: call: open(0x7fdcc8ed5fff, 0x0, 0x0) = -EINVAL  (tid 90)",
               ("E         oracle: rejects: filename: path: path at 0x7fdcc8ed5fff longer than "
                "PATH_MAX (no NUL in 4096 bytes)",)),
        FUZZ: ("AssertionError: [{'batch': 0, 'count': 11, 'key': {'kind': 'rejected call had "
               "a side effect', 'syscall': 'open', 'where': 'mode:mask'}, ...}, ...]",
               ('>       assert summary["findings"] == [], summary["findings"]',)),
    },
    "patched": {
        MODE: ("AssertionError: open(0x7f81d836f000, 0xc1, 0xffff) = 13: expected -EINVAL on "
               "a KAPI v4 kernel",
               ('>       assert not wrong, "\\n".join(wrong)',
                "E       AssertionError: open(0x7f81d836f000, 0xc1, 0xffff) = 13: expected "
                "-EINVAL on a KAPI v4 kernel")),
    },
}


def _suite(side: str) -> tuple[Result, ...]:
    failed = _FAILED[side]
    return tuple(Result(n, Outcome.FAIL, failed[n][0], failed[n][1]) if n in failed
                 else Result(n, Outcome.PASS) for n in _NAMES)


def _rerun(results: Mapping[str, Outcome]) -> tuple[Result, ...]:
    return tuple(Result(n, o, "" if o is Outcome.PASS else "failed again")
                 for n, o in results.items())


@pytest.fixture(scope="module")
def runs() -> tuple[KernelRun, KernelRun]:
    base = load_run(DATA / "gate-real-kapi", "base")
    patched = load_run(DATA / "gate-real-variant", "patched")
    return (dataclasses.replace(base, suite=_suite("base")),
            dataclasses.replace(patched, suite=_suite("patched")))


def _suite_diffs(v: object) -> dict[str, tuple[DiffClass, str]]:
    return {d.subject: (d.cls, d.explanation) for d in v.differences  # type: ignore[attr-defined]
            if d.kind is DiffKind.SUITE}


# --- which tests are re-run, and where --------------------------------------------------------


def test_retry_candidates_are_the_one_sided_failures_on_the_kernel_they_failed_on(
        runs: tuple[KernelRun, KernelRun]) -> None:
    assert retry_candidates(*runs) == {"base": (CLOSE, OPEN, FUZZ), "patched": (MODE,)}


def test_failure_on_both_kernels_or_skip_on_the_base_is_not_re_run(
        runs: tuple[KernelRun, KernelRun]) -> None:
    base, patched = runs
    both = Result(MODE, Outcome.FAIL, "x")
    skipped = Result(CLOSE, Outcome.SKIP, "kernel has no kapi tracepoints")
    base = dataclasses.replace(base, suite=(both, skipped))
    patched = dataclasses.replace(patched, suite=(both, Result(CLOSE, Outcome.FAIL, "y")))
    assert retry_candidates(base, patched) == {"base": (), "patched": (CLOSE,)}


# --- classification ------------------------------------------------------------------------


def test_without_re_runs_one_sided_failures_are_regressions_and_fixes(
        runs: tuple[KernelRun, KernelRun]) -> None:
    v = compare(*runs)
    got = _suite_diffs(v)
    assert got[MODE][0] is DiffClass.REGRESSION
    assert {got[n][0] for n in (CLOSE, OPEN, FUZZ)} == {DiffClass.FIXED}
    assert v.status is GateStatus.REGRESSION


def test_re_runs_separate_flaky_tests_from_the_real_new_failure(
        runs: tuple[KernelRun, KernelRun]) -> None:
    base, patched = runs
    # what the re-runs would bring back: the three base failures pass on the base kernel,
    # the mode-mask case fails again on the variant (twice)
    base = dataclasses.replace(base, retries=(
        _rerun({CLOSE: Outcome.PASS, OPEN: Outcome.FAIL, FUZZ: Outcome.PASS}),
        _rerun({OPEN: Outcome.PASS})))
    patched = dataclasses.replace(patched, retries=(_rerun({MODE: Outcome.FAIL}),
                                                    _rerun({MODE: Outcome.FAIL})))
    v = compare(base, patched)
    got = _suite_diffs(v)
    assert {n: c for n, (c, _) in got.items()} == {
        MODE: DiffClass.REGRESSION, CLOSE: DiffClass.FLAKY, OPEN: DiffClass.FLAKY,
        FUZZ: DiffClass.FLAKY}
    assert "failed again on 2 re-run(s)" in got[MODE][1]
    assert "passed there on a re-run: flaky, not a fix" in got[CLOSE][1]
    d_open = next(d for d in v.differences if d.subject == OPEN)
    assert d_open.base.endswith("pass on re-run 2")
    assert v.status is GateStatus.REGRESSION and v.reasons == ("1 suite regression(s)",)
    assert v.count(DiffClass.FLAKY) == 3 and v.count(DiffClass.FIXED) == 0


def test_a_new_failure_that_passes_on_a_re_run_is_flaky_not_a_regression(
        runs: tuple[KernelRun, KernelRun]) -> None:
    base, patched = runs
    patched = dataclasses.replace(patched, retries=(_rerun({MODE: Outcome.PASS}),))
    base = dataclasses.replace(base, suite=_suite("patched"),
                               retries=())  # only the patched kernel failed it
    base = dataclasses.replace(base, suite=tuple(
        Result(r.name, Outcome.PASS) for r in base.suite))
    v = compare(base, patched)
    (d,) = [d for d in v.differences if d.kind is DiffKind.SUITE]
    assert (d.subject, d.cls) == (MODE, DiffClass.FLAKY)
    assert "flaky, not a regression" in d.explanation and d.patched.endswith("re-run 1")
    assert v.status is GateStatus.PASS and v.exit_code == 0
    md = to_markdown(v)
    assert "## Flaky (failed on one kernel, passed there on a re-run; not a regression) (1)" \
        in md and "## Regressions" not in md
    junit = to_junit(v)
    assert 'failures="0"' in junit


def test_a_re_run_that_brought_nothing_back_is_not_a_pass(
        runs: tuple[KernelRun, KernelRun]) -> None:
    base, patched = runs
    patched = dataclasses.replace(patched, retries=((),))  # the re-run guest was lost
    got = _suite_diffs(compare(base, patched))
    assert got[MODE][0] is DiffClass.REGRESSION and "not re-run" in got[MODE][1]


def test_load_run_reads_the_re_run_rounds_in_order(tmp_path: Path) -> None:
    run = tmp_path / "patched"
    run.mkdir()
    (run / "suite.ktap").write_text(format_ktap(list(_suite("patched"))))
    for n, outcome in ((10, Outcome.PASS), (2, Outcome.FAIL), (1, Outcome.FAIL)):
        (run / f"suite-retry-{n}.ktap").write_text(format_ktap([Result(MODE, outcome, "r")]))
    loaded = load_run(run, "patched")
    assert [r[0].outcome for r in loaded.retries] == [Outcome.FAIL, Outcome.FAIL, Outcome.PASS]


# --- links to the spec diff ----------------------------------------------------------------


def test_new_failure_is_linked_to_the_spec_change_of_its_syscall(
        runs: tuple[KernelRun, KernelRun]) -> None:
    v = compare(*runs)
    d = next(d for d in v.differences if d.subject == MODE)
    assert d.cls is DiffClass.REGRESSION  # still a regression: the test is in the suite
    link = ("explained by spec change sys_open (param[2] mode: constraint mask 0xfff -> "
            "mask 0xffff)")
    assert d.spec_link == link and d.explanation.endswith("; " + link)
    assert link in to_markdown(v)
    js = json.loads(to_json(v))
    assert next(x for x in js["differences"] if x["subject"] == MODE)["spec_link"] == link
    # tests about syscalls whose spec did not change are not linked
    assert next(d for d in v.differences if d.subject == CLOSE).spec_link == ""


def _change(name: str) -> SpecChange:
    return SpecChange(name, SpecChangeKind.CHANGED, ("param[0] x: constraint a -> b",))


@pytest.mark.parametrize(("test", "reason", "diagnostics", "linked"), [
    ("t.py::test_upstream[kapi-06-open with invalid mode returns EINVAL]", "", (), True),
    ("t.py::test_calls_generated[kapi-sys_open]", "", (), True),
    ("t.py::test_open_mode", "", (), True),
    ("t.py::test_x", "AssertionError: open(0x7f, 0xc1, 0xffff) = 13", (), True),
    ("t.py::test_x", "", ("E  sys_open param mode rejected",), True),
    # Python's own open() in a traceback says nothing about the syscall under test
    ("t.py::test_x", "", (">   with open(path) as f:",), False),
    ("t.py::test_reopen_and_openat", "", (), False),
    ("t.py::test_calls_generated[kapi-sys_close]", "", (), False),
])
def test_spec_link_heuristics(test: str, reason: str, diagnostics: tuple[str, ...],
                              linked: bool) -> None:
    r = Result(test, Outcome.FAIL, reason, diagnostics)
    changes = (_change("sys_open"), _change("sys_madvise"))
    assert [c.name for c in spec_links(r, test, changes)] == (["sys_open"] if linked else [])


def test_added_spec_link_names_the_addition(runs: tuple[KernelRun, KernelRun]) -> None:
    base, patched = runs
    no_kapi = dataclasses.replace(base, specs=None)
    d = next(d for d in compare(no_kapi, patched).differences if d.subject == MODE)
    assert "explained by spec change sys_open (added)" in d.explanation


# --- the guest re-run: pytest -k built from node ids ---------------------------------------


class _Names:
    """pytest's -k matcher over one item: its own name and its parents' (module, dirs)."""

    def __init__(self, nodeid: str) -> None:
        path, item = nodeid.split("::", 1)
        self.names = [item.lower(), *(p.lower() for p in path.split("/"))]

    def __call__(self, sub: str) -> bool:
        return any(sub.lower() in n for n in self.names)


def _selected(expr: str) -> list[str]:
    compiled = Expression.compile(expr)
    return [n for n in _NAMES if compiled.evaluate(_Names(n))]


@pytest.mark.parametrize("name", _NAMES)
def test_retry_keyword_selects_the_node_id(name: str) -> None:
    chosen = _selected(gate_run.retry_keyword([name]))
    assert name in chosen and len(chosen) <= 2, chosen


def test_retry_keyword_several_tests_and_operators_in_ids() -> None:
    expr = gate_run.retry_keyword([MODE, CLOSE, MODE])
    assert set(_selected(expr)) == {MODE, CLOSE}
    # "and"/"or"/"not" inside a parameter id must not become operators
    odd = "tests/guest/t.py::test_x[read or write and not close]"
    assert gate_run.retry_keyword([odd]) == "(test_x[read and write and close])"


def test_rerun_tests_boots_the_kernel_with_the_selection_and_keeps_only_those(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from kapi_selftests.host import kernel, runner

    seen: dict[str, object] = {}

    def fake_run_guests(req: runner.SuiteRequest, *, echo: object = None,
                        spec_for: object = None) -> tuple[object, list[object]]:
        spec = spec_for(0, 1)  # type: ignore[operator]
        seen["argv"] = spec.argv
        seen["work"] = req.work_dir
        results = (Result(MODE, Outcome.PASS), Result(MODE.replace("06", "05"), Outcome.PASS))
        run = type("Run", (), {"results": results, "splats": ()})()
        return None, [run]

    monkeypatch.setattr(runner, "run_guests", fake_run_guests)
    monkeypatch.setattr(kernel, "find_kernel", lambda p: kernel.KernelImage(
        image=Path(p), kind=kernel.ImageKind.BZIMAGE, release="7.2.13"))
    cfg = gate_run.GateRunConfig(out=tmp_path)
    got = gate_run.rerun_tests("patched", tmp_path / "bzImage", [MODE], cfg, 1)
    assert [r.name for r in got] == [MODE]
    argv = list(seen["argv"])  # type: ignore[call-overload]
    assert "--local" in argv and argv[argv.index("-k") + 1] == gate_run.retry_keyword([MODE])
    assert seen["work"] == tmp_path / "patched" / "retry-1"
    ktap = (tmp_path / "patched" / "guest" / "suite-retry-1.ktap").read_text()
    assert f"ok 1 {MODE}" in ktap and "kapi-05" not in ktap


def test_retry_keyword_selects_exactly_those_tests_in_the_real_guest_suite() -> None:
    # pytest's own collection of tests/guest, as the in-guest runner will do with -k
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    wanted = [MODE, CLOSE, "tests/guest/test_upstream.py::test_upstream[kapi-08-open with "
                           "flag bit 30 (0x40000000) returns EINVAL]"]
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
         "tests/guest", "-k", gate_run.retry_keyword(wanted)],
        cwd=root, capture_output=True, text=True, check=False)
    collected = [ln for ln in proc.stdout.splitlines() if "::" in ln]
    assert sorted(collected) == sorted(wanted), proc.stdout + proc.stderr
