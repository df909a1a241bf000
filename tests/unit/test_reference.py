"""The kernel's specs judged against a reference: loading, comparing, classing.

The kernels are real debugfs dumps (``tests/data/gate-real-kapi/kapi``: the KAPI v4
kernel; ``gate-real-variant``: open's mode mask widened to 0xffff) and variants of the
first made by editing one line of its dump, read back through the same loader.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest

from kapi_selftests.errors import UsageError
from kapi_selftests.oracle import reference
from kapi_selftests.oracle.reference import (
    DiffClass,
    classify,
    compare_to_reference,
    load_reference,
)
from kapi_selftests.oracle.spec import ConstraintType, Spec, builtin_specs, load_debugfs
from kapi_selftests.oracle.specdiff import diff_fields

DATA = Path(__file__).resolve().parents[1] / "data"
KAPI = DATA / "gate-real-kapi" / "kapi"
VARIANT = DATA / "gate-real-variant" / "kapi"


def _variant(tmp_path: Path, rel: str, old: str, new: str) -> Path:
    d = tmp_path / "kapi"
    shutil.copytree(KAPI, d)
    f = d / rel
    text = f.read_text()
    assert text.count(old) == 1, f"{rel}: {old!r} must occur once"
    f.write_text(text.replace(old, new))
    return d


def _diffs(d: Path) -> tuple[reference.SpecDifference, ...]:
    return compare_to_reference(builtin_specs(), load_debugfs(d))


def test_reference_identical_kernel_has_no_difference() -> None:
    kernel = load_debugfs(KAPI)
    assert compare_to_reference(builtin_specs(), kernel) == ()
    assert reference.same_rules(builtin_specs(), kernel) == tuple(sorted(kernel))


def test_reference_mask_bit_removed_is_one_stricter_result(tmp_path: Path) -> None:
    # open's flags mask without O_CLOEXEC (0o2000000 = 0x80000)
    d = _variant(tmp_path, "specs/sys_open", "valid_bits: 0x7fffc3", "valid_bits: 0x77ffc3")
    (diff,) = _diffs(d)
    assert (diff.spec, diff.cls) == ("sys_open", DiffClass.STRICTER)
    assert diff.change == "param[1] flags: constraint mask 0x7fffc3 -> mask 0x77ffc3"
    assert "0x80000 now rejected" in diff.why and diff.fails


def test_reference_real_variant_mask_widened_is_looser() -> None:
    (diff,) = _diffs(VARIANT)
    assert (diff.spec, diff.cls) == ("sys_open", DiffClass.LOOSER)
    assert "0xf000 now accepted" in diff.why and diff.fails


def test_reference_range_narrowed_is_stricter(tmp_path: Path) -> None:
    d = _variant(tmp_path, "specs/sys_close", "max: 2147483647", "max: 1023")
    (diff,) = _diffs(d)
    assert (diff.spec, diff.cls) == ("sys_close", DiffClass.STRICTER)
    assert "range [0, 2147483647] -> [0, 1023]" in diff.why


def test_reference_range_widened_is_looser(tmp_path: Path) -> None:
    d = _variant(tmp_path, "specs/sys_close", "min: 0", "min: -5")
    (diff,) = _diffs(d)
    assert diff.cls is DiffClass.LOOSER


def test_reference_constraint_dropped_is_looser(tmp_path: Path) -> None:
    d = _variant(tmp_path, "specs/sys_close",
                 "    constraints:\n      type: range\n      min: 0\n      max: 2147483647\n", "")
    (diff,) = _diffs(d)
    assert (diff.spec, diff.cls) == ("sys_close", DiffClass.LOOSER)
    assert diff.why == "constraint range dropped"


def test_reference_text_only_change_passes(tmp_path: Path) -> None:
    # close no longer lists EIO: an unlisted error still gives spec_match=1
    d = tmp_path / "kapi"
    shutil.copytree(KAPI, d)
    js = json.loads((d / "specs-json/sys_close").read_text())
    js["errors"] = [e for e in js["errors"] if e["name"] != "EIO"]
    (d / "specs-json/sys_close").write_text(json.dumps(js))
    (diff,) = _diffs(d)
    assert (diff.spec, diff.cls) == ("sys_close", DiffClass.TEXT_ONLY)
    assert diff.change == "errors removed: EIO (-5)" and not diff.fails


def test_reference_return_check_change_fails_and_says_why() -> None:
    model = builtin_specs()
    read = model["sys_read"]
    kernel = dict(model, sys_read=dataclasses.replace(
        read, ret=dataclasses.replace(read.ret, success_max=100)))
    (diff,) = compare_to_reference(model, kernel)
    assert diff.cls is DiffClass.RETURN and diff.fails
    assert "spec_match" in diff.why


def test_reference_spec_unknown_to_the_reference_is_text_only() -> None:
    model = builtin_specs()
    close = model["sys_close"]
    kernel = dict(model, sys_dup=dataclasses.replace(close, name="sys_dup", nr=32))
    (diff,) = compare_to_reference(model, kernel)
    assert (diff.spec, diff.cls, diff.change) == ("sys_dup", DiffClass.TEXT_ONLY,
                                                  "not in the reference")


def test_reference_spec_the_kernel_dropped_is_looser() -> None:
    model = builtin_specs()
    kernel = {n: s for n, s in model.items() if n != "sys_close"}
    (diff,) = compare_to_reference(model, kernel)
    assert (diff.spec, diff.cls) == ("sys_close", DiffClass.LOOSER)


@pytest.mark.parametrize(("before", "after", "cls"), [
    ({"constraint": ConstraintType.ALIGNMENT, "alignment": 8},
     {"constraint": ConstraintType.ALIGNMENT, "alignment": 16}, DiffClass.STRICTER),
    ({"constraint": ConstraintType.ALIGNMENT, "alignment": 16},
     {"constraint": ConstraintType.ALIGNMENT, "alignment": 8}, DiffClass.LOOSER),
    ({"constraint": ConstraintType.NONE},
     {"constraint": ConstraintType.NONZERO}, DiffClass.STRICTER),
    ({"constraint": ConstraintType.MASK, "valid_mask": 0b0110},
     {"constraint": ConstraintType.MASK, "valid_mask": 0b0011}, DiffClass.BOTH),
    ({"constraint": ConstraintType.RANGE, "min_value": 0, "max_value": -1},
     {"constraint": ConstraintType.RANGE, "min_value": 0, "max_value": 4096},
     DiffClass.STRICTER),
    ({"constraint": ConstraintType.USER_PTR, "size": 8},
     {"constraint": ConstraintType.USER_PTR, "size": 16}, DiffClass.STRICTER),
])
def test_reference_classes_constraint_changes_by_meaning(
        before: dict[str, object], after: dict[str, object], cls: DiffClass) -> None:
    model = builtin_specs()
    madvise = model["sys_madvise"]
    b = dataclasses.replace(madvise.params[2], **before)  # type: ignore[arg-type]
    p = dataclasses.replace(madvise.params[2], **after)  # type: ignore[arg-type]
    base = dataclasses.replace(madvise, params=(*madvise.params[:2], b))
    patched = dataclasses.replace(madvise, params=(*madvise.params[:2], p))
    (change,) = diff_fields(base, patched)
    assert classify(base, patched, change)[0] is cls


def test_reference_loads_builtin_a_saved_dump_and_refuses_the_rest(tmp_path: Path) -> None:
    kernel = load_debugfs(KAPI)
    assert load_reference("", kernel)[1] == "built-in v4 model"
    assert load_reference("builtin", {})[1] == "built-in v4 model"
    specs, what = load_reference(str(VARIANT.parent), kernel)  # a directory holding kapi/
    assert sorted(specs) == sorted(kernel) and str(VARIANT) in what
    with pytest.raises(UsageError, match="no 'list' file"):
        load_reference(str(tmp_path), kernel)
    odd = {"sys_open": dataclasses.replace(kernel["sys_open"],
                                           params=kernel["sys_open"].params[:2])}
    with pytest.raises(UsageError, match="v4 shape"):
        load_reference("", odd)


def test_reference_choice_comes_from_the_environment() -> None:
    assert reference.reference_choice({}) == ""
    assert reference.reference_choice({reference.ENV: "builtin"}) == "builtin"


def test_cli_specs_save_writes_a_dump_the_reference_loads(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from kapi_selftests.cli import main

    assert main(["specs", "--debugfs", str(KAPI), "--save", str(tmp_path / "ref")]) == 0
    assert "saved 5 specs" in capsys.readouterr().err
    specs, _ = load_reference(str(tmp_path / "ref"), {})
    assert specs == load_debugfs(KAPI)
    assert main(["specs", "--builtin", "--save", str(tmp_path / "x")]) == 2


def test_run_reference_specs_flag_reaches_the_guest_environment(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from kapi_selftests.cli import build_parser
    from kapi_selftests.host.runner import guest_env

    monkeypatch.delenv(reference.ENV, raising=False)
    args = build_parser().parse_args(["run", "--local", "--reference-specs", str(VARIANT)])
    assert args.reference_specs == str(VARIANT.resolve())
    assert (reference.ENV, str(VARIANT.resolve())) in guest_env()
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["run", "--local", "--reference-specs", str(tmp_path)])
    assert e.value.code == 2
    build_parser().parse_args(["run", "--local", "--reference-specs", "builtin"])
    assert reference.reference_choice() == "builtin"


def test_gate_classes_its_spec_changes_with_the_same_classifier() -> None:
    from kapi_selftests.gate.compare import compare
    from kapi_selftests.gate.record import load_run
    from kapi_selftests.gate.render import to_json, to_markdown

    v = compare(load_run(DATA / "gate-real-kapi", "base"),
                load_run(DATA / "gate-real-variant", "patched"))
    (d,) = v.spec_classes
    assert (d.spec, d.cls) == ("sys_open", DiffClass.LOOSER)
    assert "- **looser**: sys_open param[2] mode: constraint mask 0xfff -> mask 0xffff " \
           "(bits 0xf000 now accepted)" in to_markdown(v)
    assert json.loads(to_json(v))["spec_classes"] == [
        {"spec": "sys_open", "class": "looser",
         "change": "param[2] mode: constraint mask 0xfff -> mask 0xffff",
         "why": "bits 0xf000 now accepted"}]


def test_fuzz_campaign_reports_differences_and_fails_on_those_callers_see(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from kapi_selftests.cmd import fuzz as fuzz_cmd
    from kapi_selftests.fuzz import campaign_report

    monkeypatch.delenv(reference.ENV, raising=False)
    data = campaign_report.load_dirs([tmp_path], builtin_specs())
    fuzz_cmd._compare_with_reference(data, load_debugfs(VARIANT))
    assert data.reference == "built-in v4 model"
    assert [d.cls for d in data.spec_differences] == [DiffClass.LOOSER]
    assert fuzz_cmd._status({}, [], data.spec_differences) == 1
    assert campaign_report.summary(data)["spec_differences"][0]["class"] == "looser"
    assert "- **looser**: sys_open param[2] mode" in campaign_report.render_markdown(data)
    same = campaign_report.load_dirs([tmp_path], builtin_specs())
    fuzz_cmd._compare_with_reference(same, load_debugfs(KAPI))
    assert same.spec_differences == [] and fuzz_cmd._status({}, [], []) == 0
    none = campaign_report.load_dirs([tmp_path], builtin_specs())
    fuzz_cmd._compare_with_reference(none, None)
    assert none.reference == "" and any("not compared" in n for n in none.notes)


def test_fuzz_campaign_leaves_out_the_syscalls_it_must_not_issue() -> None:
    from kapi_selftests.fuzz.callsafety import safe_specs

    model = builtin_specs()
    kernel = dict(model, sys_exit_group=dataclasses.replace(model["sys_close"],
                                                            name="sys_exit_group", nr=231))
    assert sorted(safe_specs(kernel)) == sorted(model)


def test_reference_a_call_decided_otherwise_names_both_predictions(tmp_path: Path) -> None:
    from kapi_selftests.oracle.predict import MemoryFacts, UserString, predict
    from kapi_selftests.oracle.reference import disagreement
    from kapi_selftests.plan import CallPlan, Lit, PathKind
    from kapi_selftests.plan import Path as PathArg

    d = _variant(tmp_path, "specs/sys_open", "valid_bits: 0x7fffc3", "valid_bits: 0x77ffc3")
    kernel, ref = load_debugfs(d)["sys_open"], builtin_specs()["sys_open"]
    mem = MemoryFacts(strings=(UserString(0x10000, 5),))
    plan = CallPlan("open", (PathArg(PathKind.EXISTING), Lit(0o2000000), Lit(0)))
    cloexec = (0x10000, 0o2000000, 0)
    line = disagreement(plan, predict(kernel, cloexec, mem), predict(ref, cloexec, mem))
    assert line is not None and line.startswith("open(path:existing, 0x80000, 0): ")
    assert "the kernel's spec predicts rejected (flags: mask" in line
    assert line.endswith("the reference accepted")
    rdonly = (0x10000, 0, 0)
    assert disagreement(plan, predict(kernel, rdonly, mem), predict(ref, rdonly, mem)) is None


def test_reference_kernel_that_specs_more_syscalls_passes_with_notes() -> None:
    # the real dump of a kernel that specs lseek and dup too
    kernel = load_debugfs(DATA / "extra-specs-kapi" / "kapi")
    diffs = compare_to_reference(builtin_specs(), kernel)
    assert [(d.spec, d.cls, d.change) for d in diffs] == [
        ("sys_dup", DiffClass.TEXT_ONLY, "not in the reference"),
        ("sys_lseek", DiffClass.TEXT_ONLY, "not in the reference")]
    assert not any(d.fails for d in diffs)
    assert reference.same_rules(builtin_specs(), kernel) == tuple(sorted(builtin_specs()))
    assert load_reference("", kernel)[1] == "built-in v4 model"  # still the v4 shape


def test_fuzz_predicts_calls_from_both_and_keeps_those_decided_otherwise(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from kapi_selftests.cmd import fuzz as fuzz_cmd
    from kapi_selftests.fuzz import campaign as fuzz_mod
    from kapi_selftests.fuzz import campaign_report
    from kapi_selftests.oracle.predict import MemoryFacts, UserString, predict
    from kapi_selftests.plan import CallPlan, Lit, PathKind
    from kapi_selftests.plan import Path as PathArg
    from kapi_selftests.records import Materialized, Prediction

    monkeypatch.delenv(reference.ENV, raising=False)
    d = _variant(tmp_path, "specs/sys_open", "valid_bits: 0x7fffc3", "valid_bits: 0x77ffc3")
    kernel = load_debugfs(d)
    ref = reference.differing_reference(kernel)
    assert sorted(ref) == ["sys_open"] and ref["sys_open"] == builtin_specs()["sys_open"]
    assert reference.differing_reference(builtin_specs()) == {}  # no debugfs: no reference

    class Inner:  # the engine's materialiser: a path at 0x10000, flags and mode as given
        memory = MemoryFacts(strings=(UserString(0x10000, 5),))

        def __call__(self, plan: CallPlan) -> Materialized:
            return Materialized(plan, (0x10000, plan.args[1].value, plan.args[2].value))  # type: ignore[union-attr]

        def __init__(self) -> None:
            self.cache: dict[tuple[str, tuple[int, ...]], Prediction] = {}

        def predict(self, spec: Spec, regs: tuple[int, ...]) -> Prediction:
            # cached by spec name, as the batch engine's materialiser does
            return self.cache.setdefault((spec.name, regs), predict(spec, regs, self.memory))

    inner = Inner()
    mats = [inner(CallPlan("open", (PathArg(PathKind.EXISTING), Lit(flags), Lit(0))))
            for flags in (0, 0o2000000)]
    preds, lines = reference.predict_calls(mats, kernel, inner, ref)
    assert [p is not None and p.rejected for p in preds] == [False, True]
    assert len(lines) == 1
    assert reference.predict_calls(mats, kernel, inner, {})[1] == []  # no reference: no line
    shard = tmp_path / "shard-0"
    shard.mkdir()
    assert fuzz_mod.keep_disagreements(shard, lines, 0) == 1
    assert fuzz_mod.keep_disagreements(shard, lines * 200, 1) == 99  # examples, not a log
    data = campaign_report.load_dirs([tmp_path / "none"], builtin_specs())
    data.shard_dirs.append(shard)
    fuzz_cmd._compare_with_reference(data, kernel)
    line = data.disagreements[0]
    assert len(data.disagreements) == 100
    assert line.startswith("open(path:existing, 0x80000, 0): the kernel's spec predicts rejected")
    assert fuzz_cmd._status({}, [], [], data.disagreements) == 1
