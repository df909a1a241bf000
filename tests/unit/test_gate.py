"""The gate's comparison, classification, spec diff and reports, on recorded runs.

``tests/data/gate-kapi`` is a KAPI v4 kernel (specs and formats as the reference
kernel printed them), ``gate-variant`` the same kernel with open's mode mask
widened to 0xffff (one call behaves differently), ``gate-nokapi`` a base kernel
without KAPI (generic events, no specs, no spec_match).
"""

from __future__ import annotations

import dataclasses
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from datadir import DATA

from kapi_selftests.cli import main
from kapi_selftests.gate.compare import (
    DiffClass,
    DiffKind,
    GateStatus,
    compare,
    memory_for_plan,
    unjudged,
)
from kapi_selftests.gate.record import (
    Health,
    KernelRun,
    Splat,
    load_run,
    parse_calls,
)
from kapi_selftests.gate.render import to_json, to_junit, to_markdown
from kapi_selftests.oracle.predict import predict
from kapi_selftests.oracle.spec import builtin_specs
from kapi_selftests.oracle.specdiff import SpecChangeKind, diff_specs
from kapi_selftests.report import Outcome
from kapi_selftests.report import TestResult as Result


@pytest.fixture(scope="module")
def kapi() -> KernelRun:
    return load_run(DATA / "gate-kapi", "base")


@pytest.fixture(scope="module")
def variant() -> KernelRun:
    return load_run(DATA / "gate-variant", "patched")


@pytest.fixture(scope="module")
def nokapi() -> KernelRun:
    return load_run(DATA / "gate-nokapi", "base")


def _with_call(run: KernelRun, index: int, **changes: object) -> KernelRun:
    calls = list(run.calls)
    calls[index] = dataclasses.replace(calls[index], **changes)  # type: ignore[arg-type]
    return dataclasses.replace(run, calls=tuple(calls))


# --- loading -------------------------------------------------------------------------------


def test_load_run_reads_every_part(kapi: KernelRun) -> None:
    assert kapi.specs is not None and set(kapi.specs) == {
        "sys_open", "sys_close", "sys_read", "sys_write", "sys_madvise"}
    assert set(kapi.formats) == {"kapi_syscall_enter", "kapi_syscall_exit"}
    assert not any(line.startswith("ID:") for line in kapi.formats["kapi_syscall_exit"])
    assert len(kapi.calls) == 9 and kapi.calls[1].spec_match == 0
    assert len(kapi.suite) == 4 and kapi.timing is not None
    assert kapi.health.status == 0 and not kapi.health.crashed


def test_load_run_without_kapi_has_no_specs(nokapi: KernelRun) -> None:
    assert nokapi.specs is None and nokapi.formats == {}
    assert all(c.spec_match is None for c in nokapi.calls)


def test_load_run_missing_dir_is_usage_error(tmp_path: Path) -> None:
    from kapi_selftests.errors import UsageError
    with pytest.raises(UsageError):
        load_run(tmp_path / "nope", "base")


def test_parse_calls_accepts_fuzz_rows_and_skips_torn_lines() -> None:
    rows = [json.dumps({"v": 1, "seed": 7, "shard": 2, "batch": 3, "index": 0, "n": 600,
                        "plan": {"name": "close", "args": [{"lit": -1}]}, "regs": [2**64 - 1],
                        "ret": -9, "errno": 9, "spec_match": None, "pairs": 1,
                        "findings": ["ret mismatch"]}),
            '{"seed": 7, "plan": {"name": "read"', ""]
    calls = parse_calls(rows, source="fuzz")
    assert len(calls) == 1
    c = calls[0]
    assert (c.source, c.shard, c.index, c.name) == ("fuzz", "7/2", 600, "close")
    assert c.findings == ("ret mismatch",) and c.outcome() == "EBADF"
    assert c.describe_plan() == "close(-1)"


# --- verdicts --------------------------------------------------------------------------------


def test_gate_kernel_against_itself_reports_no_difference(kapi: KernelRun) -> None:
    v = compare(kapi, dataclasses.replace(kapi, label="patched"))
    assert v.status is GateStatus.PASS and v.exit_code == 0
    assert v.differences == () and v.spec_changes == ()
    assert v.calls_compared == 9 and v.tests_compared == 4
    assert v.cost is not None and v.cost.ratio == pytest.approx(1.0)


def test_gate_spec_change_reports_exactly_that_change(kapi: KernelRun,
                                                      variant: KernelRun) -> None:
    v = compare(kapi, variant)
    assert v.status is GateStatus.PASS
    assert len(v.differences) == 1
    d = v.differences[0]
    assert d.kind is DiffKind.CALL and d.cls is DiffClass.EXPECTED
    assert d.subject.startswith("open(path:existing, 0, 0x1000)")
    assert d.base.startswith("EINVAL spec_match=0") and d.patched.startswith("ret=3")
    assert "mask 0xfff" in d.explanation
    assert len(v.spec_changes) == 1
    c = v.spec_changes[0]
    assert (c.name, c.kind) == ("sys_open", SpecChangeKind.CHANGED)
    assert c.lines == ("param[2] mode: constraint mask 0xfff -> mask 0xffff",)


def test_gate_base_without_kapi_rejections_are_expected(nokapi: KernelRun,
                                                        kapi: KernelRun) -> None:
    v = compare(nokapi, dataclasses.replace(kapi, label="patched"))
    assert v.status is GateStatus.PASS
    calls = [d for d in v.differences if d.kind is DiffKind.CALL]
    assert len(calls) == 4 and all(d.cls is DiffClass.EXPECTED for d in calls)
    assert {d.subject.split(" [")[0] for d in calls} == {
        "open(path:existing, 0, 0x1000)", "open(path:existing, 0x80000000, 0)",
        "open(path:len_4096, 0, 0)", "close(-1)"}
    tps = [d for d in v.differences if d.kind is DiffKind.TRACEPOINT]
    assert len(tps) == 2 and all(d.cls is DiffClass.EXPECTED for d in tps)
    assert all(c.kind is SpecChangeKind.ADDED for c in v.spec_changes)
    assert len(v.spec_changes) == 5
    assert v.cost is not None and v.cost.ratio == pytest.approx(1.3)
    assert any("pass on the patched one" in n for n in v.notes)


def test_gate_unexplained_behaviour_change_is_regression(kapi: KernelRun) -> None:
    # read(regular fd, 16) returns 15 on the patched kernel: both specs accept it.
    patched = _with_call(dataclasses.replace(kapi, label="patched"), 4, ret=15)
    v = compare(kapi, patched)
    assert v.status is GateStatus.REGRESSION and v.exit_code == 1
    (d,) = v.differences
    assert d.cls is DiffClass.REGRESSION and d.kind is DiffKind.CALL
    assert "no spec change explains it" in d.explanation
    assert v.reasons == ("1 call regression(s)",)


def test_gate_predicted_rejection_not_seen_is_regression(nokapi: KernelRun,
                                                         kapi: KernelRun) -> None:
    # The patched spec rejects mode 0x1000, but the patched kernel ran the handler
    # and returned ENOENT: the validator did not do what its spec says.
    patched = _with_call(dataclasses.replace(kapi, label="patched"), 1, ret=-2, errno=2,
                         spec_match=1)
    v = compare(nokapi, patched)
    d = next(d for d in v.differences if d.subject.startswith("open(path:existing, 0, 0x1000)"))
    assert d.cls is DiffClass.REGRESSION
    assert "predicts rejection" in d.explanation
    assert v.status is GateStatus.REGRESSION


def test_gate_rejection_without_spec_change_is_regression(kapi: KernelRun) -> None:
    # Same specs on both sides, yet the patched kernel rejects a valid read.
    patched = _with_call(dataclasses.replace(kapi, label="patched"), 4, ret=-22, errno=22,
                         spec_match=0)
    v = compare(kapi, patched)
    (d,) = [d for d in v.differences if d.kind is DiffKind.CALL]
    assert d.cls is DiffClass.REGRESSION


def test_gate_lost_pair_is_regression(kapi: KernelRun) -> None:
    patched = _with_call(dataclasses.replace(kapi, label="patched"), 6, pairs=0)
    v = compare(kapi, patched)
    (d,) = v.differences
    assert d.kind is DiffKind.PAIRING and d.cls is DiffClass.REGRESSION


def test_gate_new_fd_numbers_are_not_a_difference(kapi: KernelRun) -> None:
    patched = _with_call(dataclasses.replace(kapi, label="patched"), 0, ret=7)
    assert compare(kapi, patched).differences == ()


def test_gate_new_finding_on_patched_is_regression(kapi: KernelRun) -> None:
    patched = _with_call(dataclasses.replace(kapi, label="patched"), 5,
                         findings=("spec_match mismatch",))
    (d,) = compare(kapi, patched).differences
    assert d.cls is DiffClass.REGRESSION and "spec_match mismatch" in d.patched


def test_gate_changed_tracepoint_field_is_regression(kapi: KernelRun) -> None:
    fmt = dict(kapi.formats)
    fmt["kapi_syscall_exit"] = tuple(line.replace("bool spec_match", "int spec_match")
                                     for line in fmt["kapi_syscall_exit"])
    v = compare(kapi, dataclasses.replace(kapi, label="patched", formats=fmt))
    (d,) = v.differences
    assert d.kind is DiffKind.TRACEPOINT and d.cls is DiffClass.REGRESSION
    assert any(e.startswith("-") and "bool spec_match" in e for e in d.evidence)
    assert any(e.startswith("+") and "int spec_match" in e for e in d.evidence)


def test_gate_removed_tracepoint_is_regression(kapi: KernelRun) -> None:
    fmt = {"kapi_syscall_enter": kapi.formats["kapi_syscall_enter"]}
    (d,) = compare(kapi, dataclasses.replace(kapi, label="patched", formats=fmt)).differences
    assert d.subject == "kapi_syscall_exit" and d.cls is DiffClass.REGRESSION


def test_gate_new_suite_failure_is_regression_and_fix_is_listed(kapi: KernelRun) -> None:
    suite = list(kapi.suite)
    suite[1] = Result(suite[1].name, Outcome.FAIL, "ret mismatch")
    v = compare(kapi, dataclasses.replace(kapi, label="patched", suite=tuple(suite)))
    (d,) = v.differences
    assert d.kind is DiffKind.SUITE and d.cls is DiffClass.REGRESSION
    assert d.base == "pass" and d.patched == "FAIL: ret mismatch"
    back = compare(dataclasses.replace(kapi, suite=tuple(suite)),
                   dataclasses.replace(kapi, label="patched"))
    assert back.status is GateStatus.PASS
    assert [d.cls for d in back.differences] == [DiffClass.FIXED]


def test_gate_failing_on_both_is_not_a_regression(kapi: KernelRun) -> None:
    suite = list(kapi.suite)
    suite[1] = Result(suite[1].name, Outcome.FAIL, "x")
    run = dataclasses.replace(kapi, suite=tuple(suite))
    v = compare(run, dataclasses.replace(run, label="patched"))
    assert v.status is GateStatus.PASS and any("fails on both" in n for n in v.notes)


@pytest.mark.parametrize("health", [
    Health(splats=(Splat("oops", "Oops: general protection fault"),)),
    Health(splats=(Splat("WARNING", "WARNING: CPU: 0 PID: 1 at kernel/api/x.c:1"),)),
    Health(status=None, killed="guest did not finish within 900 s; killed"),
    Health(status=None, lost="guest returned no status"),
    Health(stages={"probe": 1, "suite": 0}),
])
def test_gate_patched_kernel_splat_or_hang_is_regression(kapi: KernelRun,
                                                         health: Health) -> None:
    base = dataclasses.replace(kapi, health=Health(stages={"probe": 0, "suite": 0}))
    v = compare(base, dataclasses.replace(kapi, label="patched", health=health))
    assert v.status is GateStatus.REGRESSION
    assert any(d.kind is DiffKind.HEALTH for d in v.differences)


def test_gate_same_warning_on_both_is_not_a_regression(kapi: KernelRun) -> None:
    h = Health(splats=(Splat("WARNING", "WARNING: CPU: 0 PID: 1 at mm/x.c:1 f+0x1a/0x40"),))
    hp = Health(splats=(Splat("WARNING", "WARNING: CPU: 1 PID: 97 at mm/x.c:1 f+0x1a/0x40"),))
    run = dataclasses.replace(kapi, health=h)
    assert compare(run, dataclasses.replace(run, label="patched", health=hp)).status \
        is GateStatus.PASS


def test_gate_base_crash_cannot_be_judged(kapi: KernelRun) -> None:
    base = dataclasses.replace(kapi, health=Health(splats=(Splat("panic", "Kernel panic"),)))
    v = compare(base, dataclasses.replace(kapi, label="patched"))
    assert v.status is GateStatus.UNJUDGED and v.exit_code == 4
    assert "base kernel itself crashed" in v.reasons[0]


def test_gate_nothing_ran_cannot_be_judged() -> None:
    v = compare(KernelRun("base"), KernelRun("patched"))
    assert v.status is GateStatus.UNJUDGED and "nothing to compare" in v.reasons[0]


def test_gate_patched_probe_recorded_nothing_is_regression(kapi: KernelRun) -> None:
    v = compare(kapi, dataclasses.replace(kapi, label="patched", calls=()))
    assert v.status is GateStatus.REGRESSION
    assert any(d.kind is DiffKind.COVERAGE and d.cls is DiffClass.REGRESSION
               for d in v.differences)


def test_gate_unmatched_calls_are_counted_not_judged(kapi: KernelRun) -> None:
    patched = dataclasses.replace(kapi, label="patched", calls=kapi.calls[:-2])
    v = compare(kapi, patched)
    assert v.status is GateStatus.PASS and v.calls_unmatched == 2 and v.calls_compared == 7


def test_unjudged_carries_reason() -> None:
    v = unjudged("build: patch 3/11 'x' did not apply: fs/open.c: @@ -1 +1 @@")
    assert v.exit_code == 4 and "did not apply" in to_markdown(v)


# --- oracle inputs ----------------------------------------------------------------------------


def test_memory_for_plan_paths_judge_as_the_kernel_does() -> None:
    spec = builtin_specs()["sys_open"]

    def rejected(kind: str) -> bool:
        plan = {"name": "open", "args": [{"path": kind}, {"lit": 0}, {"lit": 0}]}
        regs = (0x7F0000001000, 0, 0)
        return predict(spec, regs, memory_for_plan(plan, regs)).rejected

    assert not rejected("existing") and not rejected("len_4095") and not rejected("empty")
    assert rejected("len_4096") and rejected("unterminated") and rejected("unmapped")


# --- spec diff --------------------------------------------------------------------------------


def test_diff_specs_errors_and_return(kapi: KernelRun) -> None:
    assert kapi.specs is not None
    old = kapi.specs["sys_read"]
    new = dataclasses.replace(old, errors=old.errors[1:],
                              ret=dataclasses.replace(old.ret, success_max=100))
    (c,) = diff_specs({"sys_read": old}, {"sys_read": new})
    assert c.kind is SpecChangeKind.CHANGED
    assert any(line.startswith("errors removed: EBADF (-9)") for line in c.lines)
    assert any(line.startswith("return: success") for line in c.lines)
    assert diff_specs({"sys_read": old}, {})[0].kind is SpecChangeKind.REMOVED


# --- reports ----------------------------------------------------------------------------------


def test_markdown_verdict_first_then_evidence_then_spec_diff(kapi: KernelRun,
                                                             variant: KernelRun) -> None:
    md = to_markdown(compare(kapi, variant))
    assert md.startswith("# KAPI gate: PASS: no regression")
    assert md.index("## Expected differences") < md.index("## Spec diff")
    assert "~ param[2] mode: constraint mask 0xfff -> mask 0xffff" in md


def test_json_and_junit_carry_every_difference(kapi: KernelRun) -> None:
    patched = _with_call(dataclasses.replace(kapi, label="patched"), 4, ret=15)
    v = compare(kapi, patched)
    obj = json.loads(to_json(v))
    assert obj["verdict"] == "regression" and obj["exit_code"] == 1
    assert obj["counts"]["regression"] == 1 and len(obj["differences"]) == 1
    root = ET.fromstring(to_junit(v).split("?>", 1)[1])
    suite = root.find("testsuite")
    assert suite is not None and suite.get("failures") == "2"  # the verdict and the call


# --- CLI --------------------------------------------------------------------------------------


def test_cli_gate_compare_writes_reports(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    code = main(["gate", "--compare", str(DATA / "gate-kapi"), str(DATA / "gate-variant"),
                 "--out", str(out), "--junit", str(tmp_path / "j.xml")])
    assert code == 0
    stdout = capsys.readouterr().out
    assert stdout.startswith("# KAPI gate: PASS")
    assert (out / "gate.md").read_text() == stdout
    assert json.loads((out / "gate.json").read_text())["counts"]["expected"] == 1
    assert (tmp_path / "j.xml").is_file()


@pytest.mark.parametrize("argv,msg", [
    (["gate"], "nothing to compare"),
    (["gate", "--kernel", "/"], "--kernel needs --base-kernel"),
    (["gate", "--src", "/"], "not a kernel source tree"),
])
def test_cli_gate_usage_errors(argv: list[str], msg: str,
                               capsys: pytest.CaptureFixture[str]) -> None:
    try:
        code = main(argv)
    except SystemExit as e:  # argparse type= errors
        code = int(e.code or 0)
    assert code == 2
    assert msg in capsys.readouterr().err


def test_cli_gate_build_failure_is_unjudged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    from kapi_selftests.errors import BuildError
    from kapi_selftests.host import gate_run

    def fail(*a: object, **k: object) -> None:
        raise BuildError("patch 2/11 'kernel/api: x' did not apply: Makefile: @@ -1 +1 @@",
                         hint="to resume: ... git -C W am --continue, then run the same gate "
                              "command again")

    monkeypatch.setattr(gate_run, "build_pair", fail)
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "Makefile").write_text("")
    (tree / "Kconfig").write_text("")
    mbox = tmp_path / "s.mbox"
    mbox.write_text("From x\n")
    code = main(["gate", "--src", str(tree), "--series", str(mbox), "--out",
                 str(tmp_path / "out")])
    assert code == 4
    out = capsys.readouterr().out
    assert "could not judge" in out and "did not apply" in out
    assert "- next: to resume: ... git -C W am --continue" in out
    assert "- base kernel: none (not built)" in out  # not an empty `` pair
    assert '"hints": [' in (tmp_path / "out" / "gate.json").read_text()


# --- real runs --------------------------------------------------------------------------------
# gate-real-kapi / gate-real-variant: what `gate --base-kernel kapi --kernel kapi-variant`
# recorded on the KAPI v4 kernel and on the same tree with open's mode mask widened to
# S_IFMT | S_IALLUGO (prose of the spec dumps elided).


def test_real_runs_variant_reports_exactly_the_mode_mask_change() -> None:
    base = load_run(DATA / "gate-real-kapi", "base")
    patched = load_run(DATA / "gate-real-variant", "patched")
    v = compare(base, patched)
    assert v.status is GateStatus.PASS and v.calls_compared == 300
    assert [(c.name, c.lines) for c in v.spec_changes] == [
        ("sys_open", ("param[2] mode: constraint mask 0xfff -> mask 0xffff",))]
    assert v.differences
    for d in v.differences:
        assert (d.kind, d.cls) == (DiffKind.CALL, DiffClass.EXPECTED)
        assert d.subject.startswith("open(") and d.base.startswith("EINVAL spec_match=0")
        assert "mode: mask" in d.explanation and "outside mask 0xfff" in d.explanation


def test_real_run_against_itself_reports_nothing() -> None:
    run = load_run(DATA / "gate-real-kapi", "base")
    v = compare(run, dataclasses.replace(run, label="patched"))
    assert v.status is GateStatus.PASS and v.differences == () and v.spec_changes == ()


def test_cost_is_normalised_by_the_reference_syscall(kapi: KernelRun) -> None:
    # The same kernel booted on a host twice as busy: everything, the reference included,
    # takes twice as long; the checks cost nothing more.
    from kapi_selftests.gate.record import Timing
    tb = Timing(1000, 5000.0, {"read": 4000.0}, reference_ns=3000.0)
    tp = Timing(1000, 10000.0, {"read": 8000.0}, reference_ns=6000.0)
    v = compare(dataclasses.replace(kapi, timing=tb),
                dataclasses.replace(kapi, label="patched", timing=tp))
    assert v.cost is not None and v.cost.normalised
    assert v.cost.raw_ratio == pytest.approx(2.0) and v.cost.ratio == pytest.approx(1.0)
    md = to_markdown(v)
    assert "1.00x" in md and "raw 2.00x" in md and "| read | 4000 | 8000 | 1.00 |" in md


def test_cli_gate_series_takes_several_files(tmp_path: Path) -> None:
    from kapi_selftests.cli import build_parser
    a, b = tmp_path / "1.mbox", tmp_path / "2.mbox"
    a.write_text("From x\n")
    b.write_text("From x\n")
    (tmp_path / "Makefile").write_text("")
    (tmp_path / "Kconfig").write_text("")
    args = build_parser().parse_args(["gate", "--src", str(tmp_path), "--series", str(a),
                                      str(b), "--series", str(a)])
    assert args.series == [a, b, a]


def test_gate_stage_failing_on_the_base_cannot_be_judged(kapi: KernelRun) -> None:
    # what the stage should have issued on the base was never compared: no PASS
    # (a real run: the base's fuzz stage died after 50 of 200 calls, reported as a note)
    for patched_rc in (0, 1):
        base = dataclasses.replace(kapi, health=Health(stages={"probe": 1, "suite": 1}))
        patched = dataclasses.replace(kapi, label="patched",
                                      health=Health(stages={"probe": patched_rc, "suite": 1}))
        v = compare(base, patched)
        assert v.status is GateStatus.UNJUDGED and v.exit_code == 4
        assert any("probe stage failed on the base kernel" in r for r in v.reasons)
        assert "base: the probe stage exited 1 (see its console log)" in v.notes


def test_gate_calls_whose_fds_diverged_are_not_compared(kapi: KernelRun) -> None:
    # read(fd:closed) got fd 5 on one kernel, fd 9 on the other (the base had more fds
    # open, so the "closed" number was reused): not the same call, not a regression.
    patched = _with_call(dataclasses.replace(kapi, label="patched"), 5, regs=(9, 0, 16),
                         ret=16, errno=0)
    v = compare(kapi, patched)
    assert v.status is GateStatus.PASS and v.differences == ()
    assert v.calls_compared == 8
    assert any("fd arguments were different fds" in n and "read(fd:closed" in n
               for n in v.notes)


def test_real_runs_unpatched_base_against_kapi_every_difference_is_a_new_rejection() -> None:
    # gate-real-base: the same 7.2.13 tree without the series (no specs, no kapi events),
    # same config; every call that behaves differently is one the KAPI specs now reject.
    base = load_run(DATA / "gate-real-base", "base")
    patched = load_run(DATA / "gate-real-kapi", "patched")
    assert base.specs is None and base.formats == {}
    v = compare(base, patched)
    assert v.status is GateStatus.PASS and v.calls_compared == 300
    assert {c.kind for c in v.spec_changes} == {SpecChangeKind.ADDED}
    assert len(v.spec_changes) == 5
    calls = [d for d in v.differences if d.kind is DiffKind.CALL]
    assert len(calls) == 89
    assert all(d.cls is DiffClass.EXPECTED and d.patched.startswith("EINVAL spec_match=0")
               and "the patched spec rejects it" in d.explanation for d in calls)
    assert [d.subject for d in v.differences if d.kind is DiffKind.TRACEPOINT] == [
        "kapi_syscall_enter", "kapi_syscall_exit"]


def test_gate_fuzz_closed_fd_difference_is_a_note(kapi: KernelRun) -> None:
    calls = list(kapi.calls)
    calls[5] = dataclasses.replace(calls[5], source="fuzz")
    base = dataclasses.replace(kapi, calls=tuple(calls))
    calls[5] = dataclasses.replace(calls[5], ret=16, errno=0)  # the number was reused
    v = compare(base, dataclasses.replace(kapi, label="patched", calls=tuple(calls)))
    (d,) = v.differences
    assert d.cls is DiffClass.NOTE and v.status is GateStatus.PASS


@pytest.mark.parametrize(("kind", "crashed"), [
    ("KFENCE report", True), ("sleeping in atomic context", True), ("BUG", True),
    ("lockdep report", False), ("suspicious RCU usage", False), ("refcount_t warning", False),
])
def test_gate_health_kfence_and_sleeping_in_atomic_are_crashes(kind: str, crashed: bool) -> None:
    # both were found as "BUG" before they had kinds of their own: still a crash
    assert Health(splats=(Splat(kind, "kernel " + kind),)).crashed is crashed
