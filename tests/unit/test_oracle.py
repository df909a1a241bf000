"""Unit tests of kapi_selftests.oracle.predict.

The centre is the reproduction of tests/data/kapi-reference/boundary: 67 real
calls at the edges of every constraint, with the events a KAPI v4 kernel
emitted. Every call's params string, rejection and spec_match must come out
exactly. Then one synthetic call per constraint type and judge() cases.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

import pytest
from datadir import REFERENCE as REF
from hypothesis import given
from hypothesis import strategies as st

from kapi_selftests.oracle.predict import (
    USER_PTR_MAX,
    MemoryFacts,
    UserString,
    expected_spec_match,
    judge,
    predict,
)
from kapi_selftests.oracle.spec import (
    ConstraintType,
    ParamFlag,
    ParamSpec,
    ParamType,
    ReturnCheck,
    ReturnSpec,
    Spec,
    builtin_specs,
)
from kapi_selftests.records import CheckKind, FindingKind, SyscallRecord
from kapi_selftests.trace.capture import load_capture

BOUNDARY = REF / "boundary"
SPECS = builtin_specs()
BY_NR = {s.nr: s for s in SPECS.values()}


# ---------------------------------------------------------------- fixtures

@dataclass(frozen=True)
class Ev:
    """A minimal event: what judge() needs (``name``, ``fields``; one thread, in order)."""

    name: str
    fields: dict[str, object]
    ts_ns: int = 0
    cpu: int = 0
    tid: int = 69


@dataclass(frozen=True)
class Call:
    label: str
    nr: int
    regs: tuple[int, int, int]
    ret: int
    errno: int

    def record(self) -> SyscallRecord:
        r = -self.errno if self.errno else self.ret
        return SyscallRecord(nr=self.nr, args=(*self.regs, 0, 0, 0), ret=r, errno=self.errno,
                             tid=69)


_ENTER = re.compile(r"kapi_syscall_enter: (\w+)\((.*)\)$")
_EXIT = re.compile(r"kapi_syscall_exit: (\w+) = (-?\d+) spec_match=(\d)$")


def parse_trace(text: str) -> list[Ev]:
    """Tiny text-trace parser for kapi events (name and params / ret and spec_match)."""
    out = []
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        if m := _ENTER.search(line):
            out.append(Ev("kapi_syscall_enter", {"name": m.group(1), "params": m.group(2)}))
        elif m := _EXIT.search(line):
            out.append(Ev("kapi_syscall_exit", {"name": m.group(1), "ret": int(m.group(2)),
                                                "spec_match": int(m.group(3))}))
    return out


def load_calls() -> list[Call]:
    rows = (BOUNDARY / "calls.tsv").read_text().splitlines()[1:]
    calls = []
    for row in rows:
        label, nr, a0, a1, a2, ret, err = row.split("\t")
        calls.append(Call(label, int(nr), (int(a0, 16), int(a1, 16), int(a2, 16)), int(ret),
                          int(err)))
    return calls


RESTART = {-512, -513, -514, -516}


def group_events(calls: list[Call], events: list[Ev]) -> list[list[Ev]]:
    """The events of each call, in order; a signal handler's write(2) pairs are skipped."""
    pairs = [events[i:i + 2] for i in range(0, len(events), 2)]
    assert all(p[0].name == "kapi_syscall_enter" and p[1].name == "kapi_syscall_exit"
               for p in pairs)
    groups: list[list[Ev]] = []
    i = 0
    for c in calls:
        name = BY_NR[c.nr].name
        group: list[Ev] = []
        while True:
            pair = pairs[i]
            i += 1
            if pair[0].fields["name"] != name:
                # the SIGALRM handler's own write(2) to the pipe
                assert pair[0].fields["name"] == "sys_write"
                assert str(pair[0].fields["params"]).startswith("fd=4,")
                continue
            group += pair
            if int(pair[1].fields["ret"]) in RESTART and c.errno != 4:
                continue  # restarted (SA_RESTART): the call continues in another pair
            break
        groups.append(group)
    assert i == len(pairs)
    return groups


def memory_from_labels(calls: list[Call]) -> MemoryFacts:
    """What each pointer of the fixture was, as the labels tell."""
    strings = []
    unmapped = []
    for c in calls:
        if c.nr != 2:  # only open() reads user memory in validation
            continue
        addr, lab = c.regs[0], c.label
        if "unterminated" in lab:
            strings.append(UserString(addr, None, readable=8))  # 8 bytes, then a guard page
        elif "unmapped" in lab:
            unmapped.append((addr, addr + 4096))
        elif "kernel-half" in lab or "NULL" in lab:
            continue  # decided before memory is read
        elif m := re.search(r"strlen (\d+)", lab):
            strings.append(UserString(addr, int(m.group(1))))
        elif "empty path" in lab:
            strings.append(UserString(addr, 0))
        elif m := re.search(r"component (\d+) bytes", lab):
            strings.append(UserString(addr, int(m.group(1)) + 1))
        else:
            strings.append(UserString(addr, 12))  # an ordinary short path
    return MemoryFacts(tuple(dict.fromkeys(strings)), tuple(unmapped))


CALLS = load_calls()
EVENTS = parse_trace((BOUNDARY / "trace.txt").read_text())
GROUPS = group_events(CALLS, EVENTS)
MEMORY = memory_from_labels(CALLS)


# ---------------------------------------------------------------- boundary

def test_boundary_fixture_has_67_calls() -> None:
    assert len(CALLS) == 67
    assert len(GROUPS) == 67


@pytest.mark.parametrize("i", range(len(CALLS)), ids=[c.label for c in CALLS])
def test_boundary_call_reproduced_exactly(i: int) -> None:
    call, group = CALLS[i], GROUPS[i]
    spec = BY_NR[call.nr]
    pred = predict(spec, call.regs, MEMORY)
    assert pred.undetermined is None
    for enter, exit_ in zip(group[::2], group[1::2], strict=True):
        assert enter.fields["params"] == pred.params
        if pred.rejection is not None:
            assert exit_.fields["ret"] == -22
            assert exit_.fields["spec_match"] == 0
        else:
            ret = int(str(exit_.fields["ret"]))
            assert exit_.fields["spec_match"] == int(expected_spec_match(spec, ret))
    verdict = judge(spec, call.record(), group, memory=MEMORY, strict=True)
    assert verdict.findings == (), [str(f) for f in verdict.findings]


def test_boundary_rejections_are_the_ones_the_kernel_made() -> None:
    rejected = [c.label for c, g in zip(CALLS, GROUPS, strict=True)
                if g[1].fields["spec_match"] == 0]
    predicted = [c.label for c in CALLS if predict(BY_NR[c.nr], c.regs, MEMORY).rejected]
    assert predicted == rejected
    assert len(rejected) == 22


@pytest.mark.parametrize(("label", "param", "check"), [
    ("open flags bit 31 (int negative)", "flags", CheckKind.MASK),
    ("open O_CREAT mode 010000 (above 07777)", "mode", CheckKind.MASK),
    ("open path strlen 4096", "filename", CheckKind.PATH),
    ("open path unterminated into guard page", "filename", CheckKind.PATH),
    ("open path NULL", "filename", CheckKind.PATH),
    ("read fd 2^31 (above INT_MAX)", "fd", CheckKind.FD),
    ("read count bit 63", "buf", CheckKind.BUFFER_SIZE),
    ("read buf kernel-half", "buf", CheckKind.USER_PTR),
    ("read buf NULL count 0", "buf", CheckKind.USER_PTR),
    ("madvise start + 1", "start", CheckKind.PAGE_ALIGNED),
    ("madvise len bit 63", "len_in", CheckKind.RANGE),
])
def test_boundary_rejection_names_param_and_check(label: str, param: str,
                                                  check: CheckKind) -> None:
    call = next(c for c in CALLS if c.label == label)
    rej = predict(BY_NR[call.nr], call.regs, MEMORY).rejection
    assert rej is not None
    assert (rej.param, rej.check) == (param, check)


def test_boundary_args_match_raw_capture() -> None:
    cap = load_capture(BOUNDARY)
    enters = [e for e in cap.events if e.name == "kapi_syscall_enter"]
    assert len(enters) == 70
    i = 0
    for call, group in zip(CALLS, GROUPS, strict=True):
        pred = predict(BY_NR[call.nr], call.regs, MEMORY)
        for _ in group[::2]:
            while enters[i].fields["params"] != group[0].fields["params"]:
                i += 1  # the handler's write
            assert tuple(enters[i].fields["args"]) == pred.args
            assert enters[i].fields["nargs"] == pred.nargs
            i += 1


def test_boundary_judge_with_raw_events_has_no_findings() -> None:
    cap = load_capture(BOUNDARY)
    raw = [e for e in cap.events if e.name.startswith("kapi_")]
    groups = group_events(CALLS, [Ev(e.name, dict(e.fields)) for e in raw])
    for call, group in zip(CALLS, groups, strict=True):
        v = judge(BY_NR[call.nr], call.record(), group, memory=MEMORY)
        assert v.findings == (), (call.label, [str(f) for f in v.findings])


# ---------------------------------------------------------------- args and params

def test_predict_fd_unsigned_int_cast_drops_high_bits() -> None:
    p = predict(SPECS["sys_read"], (0x100000009, 0x7F0000000000, 16))
    assert p.args[:3] == (9, 0x7F0000000000, 16)
    assert p.params == "fd=9, buf=0x7f0000000000, count=0x10"
    assert p.rejection is None


def test_predict_int_flags_sign_extend_in_args_and_params() -> None:
    mem = MemoryFacts((UserString(0x1000, 3),))
    p = predict(SPECS["sys_open"], (0x1000, 0x80000000, 0), mem)
    assert p.args[1] == 0xFFFFFFFF80000000
    assert p.params == "filename=0x1000, flags=-2147483648, mode=0x0"


def test_predict_umode_t_truncates_to_16_bits() -> None:
    mem = MemoryFacts((UserString(0x1000, 3),))
    p = predict(SPECS["sys_open"], (0x1000, 0x41, 0xFFFFFFFF000101A4), mem)
    assert p.args[2] == 0x1A4
    assert p.rejection is None


def test_predict_madvise_behavior_minus_one_prints_decimal() -> None:
    p = predict(SPECS["sys_madvise"], (0x7F0000000000, 0x1000, 2**64 - 1))
    assert p.params.endswith("behavior=-1")
    assert p.args[2] == 2**64 - 1


def test_predict_params_cut_at_255_chars() -> None:
    params = tuple(ParamSpec("p" * 60 + str(i), "unsigned long", ParamType.UINT)
                   for i in range(6))
    spec = Spec("sys_wide", params, ReturnSpec(), nargs=6)
    p = predict(spec, (2**64 - 1,) * 6)
    assert len(p.params) == 255


def test_predict_extra_args_named_arg_and_param_count_rejects() -> None:
    spec = replace(SPECS["sys_close"], nargs=2)
    p = predict(spec, (3, 7))
    assert p.params == "fd=3, arg=0x7"
    assert p.rejection is not None and p.rejection.check is CheckKind.PARAM_COUNT


# ---------------------------------------------------------------- each constraint type

def one(ctype: str, ptype: ParamType, constraint: ConstraintType, **kw: object) -> Spec:
    p = ParamSpec("x", ctype, ptype, ParamFlag(int(str(kw.pop("flags", 1)))), constraint,
                  **kw)  # type: ignore[arg-type]
    return Spec("sys_test", (p,), ReturnSpec(), nargs=1)


def rejected(spec: Spec, reg: int, memory: MemoryFacts | None = None) -> bool:
    p = predict(spec, (reg,), memory)
    assert p.undetermined is None
    return p.rejected


def test_constraint_range_bounds() -> None:
    s = one("int", ParamType.INT, ConstraintType.RANGE, min_value=-5, max_value=10)
    assert not rejected(s, 10) and not rejected(s, 2**64 - 5)
    assert rejected(s, 11) and rejected(s, 2**64 - 6)


def test_constraint_range_negative_max_checks_only_min() -> None:
    s = one("size_t", ParamType.UINT, ConstraintType.RANGE, min_value=0, max_value=-1)
    assert not rejected(s, 2**63 - 1)
    assert rejected(s, 2**63)


def test_constraint_mask_on_sign_extended_value() -> None:
    s = one("int", ParamType.INT, ConstraintType.MASK, valid_mask=0x7FFFFFFF)
    assert not rejected(s, 0x7FFFFFFF) and not rejected(s, 0x100000000)
    assert rejected(s, 0x80000000)


def test_constraint_enum() -> None:
    s = one("int", ParamType.INT, ConstraintType.ENUM, enum_values=(0, 4, -1))
    assert not rejected(s, 4) and not rejected(s, 0xFFFFFFFF)
    assert rejected(s, 5)
    assert not rejected(one("int", ParamType.INT, ConstraintType.ENUM, enum_values=()), 5)


def test_constraint_enum_unknown_values_is_undetermined() -> None:
    s = one("int", ParamType.INT, ConstraintType.ENUM, enum_values=None)
    p = predict(s, (5,))
    assert p.undetermined and not p.rejected and not p.accepted


def test_constraint_alignment() -> None:
    s = one("unsigned long", ParamType.UINT, ConstraintType.ALIGNMENT, alignment=8)
    assert not rejected(s, 16) and rejected(s, 12)
    assert rejected(one("long", ParamType.INT, ConstraintType.ALIGNMENT, alignment=0), 0)
    assert rejected(one("long", ParamType.INT, ConstraintType.ALIGNMENT, alignment=6), 0)


def test_constraint_power_of_two_with_s64_wrap() -> None:
    s = one("long", ParamType.INT, ConstraintType.POWER_OF_TWO)
    assert not rejected(s, 4096) and rejected(s, 0) and rejected(s, 6)
    assert not rejected(s, 2**63)  # S64_MIN: v & (v - 1) wraps to 0
    assert rejected(s, 2**64 - 2)


def test_constraint_page_aligned() -> None:
    s = one("unsigned long", ParamType.UINT, ConstraintType.PAGE_ALIGNED)
    assert not rejected(s, 0x7000) and rejected(s, 0x7800)


def test_constraint_nonzero_after_cast() -> None:
    s = one("unsigned int", ParamType.UINT, ConstraintType.NONZERO)
    assert rejected(s, 0x100000000) and not rejected(s, 1)


def test_constraint_user_string_lengths() -> None:
    s = one("const char __user *", ParamType.PTR, ConstraintType.USER_STRING,
            min_value=2, max_value=8)
    mem = MemoryFacts((UserString(0x1000, 1), UserString(0x2000, 8), UserString(0x3000, 9),
                       UserString(0x4000, None, readable=3)))
    assert rejected(s, 0x1000, mem)
    assert not rejected(s, 0x2000, mem)
    assert rejected(s, 0x3000, mem)
    assert rejected(s, 0x4000, mem)
    assert rejected(s, 0, mem)
    assert rejected(s, 0xFFFF888000000000, mem)


def test_constraint_user_string_optional_null() -> None:
    s = one("const char __user *", ParamType.PTR, ConstraintType.USER_STRING,
            flags=ParamFlag.IN | ParamFlag.OPTIONAL)
    assert not rejected(s, 0)


def test_constraint_user_path_strnlen_limits() -> None:
    s = one("const char __user *", ParamType.PTR, ConstraintType.USER_PATH)
    mem = MemoryFacts((UserString(0x1000, 4095), UserString(0x2000, 4096),
                       UserString(0x3000, None, readable=100)), ((0x9000, 0xA000),))
    assert not rejected(s, 0x1000, mem)
    assert rejected(s, 0x2000, mem)
    assert rejected(s, 0x3000, mem)
    assert rejected(s, 0x9000, mem)
    assert rejected(s, 0, mem)


def test_constraint_user_path_unknown_memory_is_undetermined() -> None:
    s = one("const char __user *", ParamType.PTR, ConstraintType.USER_PATH)
    p = predict(s, (0x5000,), MemoryFacts())
    assert p.undetermined is not None and "0x5000" in p.undetermined
    assert predict(s, (0,)).rejected  # NULL needs no memory facts


def test_constraint_user_ptr_needs_size() -> None:
    s = one("void __user *", ParamType.PTR, ConstraintType.USER_PTR)
    assert rejected(s, 0x1000)  # size 0: "size not specified"
    s = one("void __user *", ParamType.PTR, ConstraintType.USER_PTR, size=16)
    assert not rejected(s, 0x1000)
    assert rejected(s, USER_PTR_MAX - 8)
    assert rejected(s, 0)


def test_constraint_buffer_access_ok_with_zero_multiplier() -> None:
    spec = SPECS["sys_write"]
    assert not predict(spec, (1, USER_PTR_MAX, 2**63 - 1)).rejected
    assert predict(spec, (1, USER_PTR_MAX + 1, 0)).rejected


def test_constraint_buffer_with_multiplier_checks_whole_range() -> None:
    buf = ParamSpec("buf", "void __user *", ParamType.USER_PTR, ParamFlag.IN,
                    ConstraintType.BUFFER, size_param=1, size_multiplier=16)
    cnt = ParamSpec("n", "unsigned long", ParamType.UINT)
    spec = Spec("sys_vec", (buf, cnt), ReturnSpec(), nargs=2)
    assert not predict(spec, (0x1000, 4)).rejected
    r = predict(spec, (USER_PTR_MAX - 32, 4)).rejection
    assert r is not None and r.check is CheckKind.USER_PTR
    r = predict(spec, (0x1000, 2**62)).rejection
    assert r is not None and r.check is CheckKind.BUFFER_SIZE


def test_constraint_buffer_unknown_size_param() -> None:
    spec = SPECS["sys_read"]
    p0 = spec.params[1]
    spec = replace(spec, params=(spec.params[0], replace(p0, size_param=None,
                                                         size_param_known=False),
                                 spec.params[2]))
    assert not predict(spec, (3, 0x1000, 16)).rejected
    assert predict(spec, (3, 0, 16)).rejected
    assert predict(spec, (3, 0x1000, 2**63)).undetermined


def test_optional_user_ptr_null_skips_every_check() -> None:
    spec = SPECS["sys_read"]
    buf = replace(spec.params[1], flags=ParamFlag.OUT | ParamFlag.OPTIONAL)
    spec = replace(spec, params=(spec.params[0], buf, spec.params[2]))
    assert not predict(spec, (3, 0, 0)).rejected


def test_fd_optional_skips_fd_check_but_not_range() -> None:
    s = one("int", ParamType.FD, ConstraintType.NONE, flags=ParamFlag.IN | ParamFlag.OPTIONAL)
    assert not rejected(s, 2**64 - 5)
    s = one("int", ParamType.FD, ConstraintType.NONE)
    assert rejected(s, 2**64 - 5)
    assert not rejected(s, 2**64 - 100)  # AT_FDCWD


def test_constraint_custom_is_undetermined() -> None:
    p = predict(one("int", ParamType.INT, ConstraintType.CUSTOM), (1,))
    assert p.undetermined


def test_non_syscall_spec_ignores_failures() -> None:
    s = replace(one("int", ParamType.INT, ConstraintType.NONZERO), name="kmalloc")
    assert not predict(s, (0,)).rejected


# ---------------------------------------------------------------- return check

def test_expected_spec_match_fd_above_int_max() -> None:
    spec = SPECS["sys_open"]
    assert expected_spec_match(spec, 3)
    assert not expected_spec_match(spec, 2**31)
    assert expected_spec_match(spec, -9999)  # an unlisted error still matches


def test_expected_spec_match_errors_always_match() -> None:
    for spec in SPECS.values():
        assert expected_spec_match(spec, -4095)
    assert expected_spec_match(SPECS["sys_close"], 7)  # exact 0 miss: error path, matches
    custom = replace(SPECS["sys_read"], ret=ReturnSpec(check=ReturnCheck.CUSTOM))
    assert expected_spec_match(custom, -1)


# ---------------------------------------------------------------- judge

def _pair(name: str, params: str, ret: int, sm: int) -> list[Ev]:
    return [Ev("kapi_syscall_enter", {"name": name, "params": params}),
            Ev("kapi_syscall_exit", {"name": name, "ret": ret, "spec_match": sm})]


def _rec(nr: int, regs: tuple[int, ...], ret: int) -> SyscallRecord:
    return SyscallRecord(nr=nr, args=(*regs, *(0,) * (6 - len(regs))),  # type: ignore[arg-type]
                         ret=ret, errno=-ret if ret < 0 else 0, tid=1)


def test_judge_spec_match_mismatch_on_wrong_rejection() -> None:
    rec = _rec(3, (0x80000000,), -22)
    v = judge(SPECS["sys_close"], rec, _pair("sys_close", "fd=2147483648", -22, 1))
    assert [f.kind for f in v.findings] == [FindingKind.SPEC_MATCH_MISMATCH]


def test_judge_kernel_rejects_what_oracle_accepts() -> None:
    rec = _rec(3, (5,), -22)
    v = judge(SPECS["sys_close"], rec, _pair("sys_close", "fd=5", -22, 0))
    assert [f.kind for f in v.findings] == [FindingKind.SPEC_MATCH_MISMATCH]
    assert "rejected" in v.findings[0].message


def test_judge_params_mismatch() -> None:
    rec = _rec(3, (5,), 0)
    v = judge(SPECS["sys_close"], rec, _pair("sys_close", "fd=6", 0, 1))
    assert [f.kind for f in v.findings] == [FindingKind.ARGS_MISMATCH]


def test_judge_args_mismatch() -> None:
    rec = _rec(3, (0x100000005,), 0)
    ev = _pair("sys_close", "fd=5", 0, 1)
    ev[0] = Ev(ev[0].name, {**ev[0].fields, "args": (0x100000005, 0, 0, 0, 0, 0), "nargs": 1})
    v = judge(SPECS["sys_close"], rec, ev)
    assert [f.kind for f in v.findings] == [FindingKind.ARGS_MISMATCH]
    assert "args[0]" in v.findings[0].message


def test_judge_ret_mismatch_trace_vs_userspace() -> None:
    rec = _rec(3, (5,), -9)
    v = judge(SPECS["sys_close"], rec, _pair("sys_close", "fd=5", 0, 1))
    assert [f.kind for f in v.findings] == [FindingKind.RET_MISMATCH]


def test_judge_restart_code_seen_as_eintr() -> None:
    rec = _rec(0, (3, 0x7F0000000000, 1), -4)
    v = judge(SPECS["sys_read"], rec, _pair("sys_read", "fd=3, buf=0x7f0000000000, count=0x1",
                                            -512, 1))
    assert v.findings == ()


def test_judge_restart_not_allowed_for_other_codes() -> None:
    rec = _rec(0, (3, 0x7F0000000000, 1), 1)
    ev = (_pair("sys_read", "fd=3, buf=0x7f0000000000, count=0x1", -11, 1)
          + _pair("sys_read", "fd=3, buf=0x7f0000000000, count=0x1", 1, 1))
    v = judge(SPECS["sys_read"], rec, ev)
    assert FindingKind.PAIRING in [f.kind for f in v.findings]


def test_judge_missing_exit_and_no_events() -> None:
    rec = _rec(3, (5,), 0)
    v = judge(SPECS["sys_close"], rec, _pair("sys_close", "fd=5", 0, 1)[:1])
    assert [f.kind for f in v.findings] == [FindingKind.PAIRING]
    v = judge(SPECS["sys_close"], rec, [])
    assert [f.kind for f in v.findings] == [FindingKind.PAIRING]
    v = judge(SPECS["sys_close"], rec, _pair("sys_close", "fd=5", 0, 1)[1:])
    assert FindingKind.PAIRING in [f.kind for f in v.findings]


def test_judge_rejected_call_with_side_effect() -> None:
    mem = MemoryFacts((UserString(0x1000, 5),))
    rec = _rec(2, (0x1000, 0x41, 0x1000), -22)
    ev = _pair("sys_open", "filename=0x1000, flags=65, mode=0x1000", -22, 0)
    v = judge(SPECS["sys_open"], rec, ev, memory=mem, side_effects=("created /tmp/x",))
    assert [f.kind for f in v.findings] == [FindingKind.REJECTED_SIDE_EFFECT]
    rec = _rec(2, (0x1000, 0x41, 0x1000), 7)
    v = judge(SPECS["sys_open"], rec, ev, memory=mem)
    assert FindingKind.REJECTED_SIDE_EFFECT in [f.kind for f in v.findings]


def test_judge_spec_drift_reported_not_failed_unless_strict() -> None:
    rec = _rec(3, (5,), -13)
    ev = _pair("sys_close", "fd=5", -13, 1)
    v = judge(SPECS["sys_close"], rec, ev)
    assert [f.kind for f in v.findings] == [FindingKind.SPEC_DRIFT]
    assert v.ok and "EACCES" in v.findings[0].message
    assert not judge(SPECS["sys_close"], rec, ev, strict=True).ok


def test_judge_evidence_names_call_and_events() -> None:
    rec = _rec(3, (5,), -9)
    v = judge(SPECS["sys_close"], rec, _pair("sys_close", "fd=5", 0, 1))
    ev = v.findings[0].evidence
    assert ev[0].startswith("close(0x5")
    assert any("kapi_syscall_exit: sys_close = 0 spec_match=1" in e for e in ev)


def test_judge_undetermined_notes_and_no_false_alarm() -> None:
    rec = _rec(2, (0x5000, 0, 0), -22)
    v = judge(SPECS["sys_open"], rec, _pair("sys_open", "filename=0x5000, flags=0, mode=0x0",
                                            -22, 0))
    assert v.findings == ()
    assert v.notes and "0x5000" in v.notes[0]


# ---------------------------------------------------------------- upstream C selftest cases

def _regs_and_memory(call: object) -> tuple[tuple[int, ...], MemoryFacts]:
    from kapi_selftests.oracle.upstream_cases import ArgKind, CaseCall, FdKind

    assert isinstance(call, CaseCall)
    regs: list[int] = []
    strings: list[UserString] = []
    for n, a in enumerate(call.args):
        addr = 0x10000000 + n * 0x100000
        if a.kind is ArgKind.VALUE:
            assert isinstance(a.value, int)
            regs.append(a.value & (2**64 - 1))
        elif a.kind is ArgKind.FD:
            regs.append(0 if a.value is FdKind.STDIN_DUPED else 5)
        elif a.kind is ArgKind.PATH:
            assert isinstance(a.value, str)
            strings.append(UserString(addr, len(a.value)))
            regs.append(addr)
        elif a.kind is ArgKind.LONG_PATH:
            assert isinstance(a.value, int)
            strings.append(UserString(addr, a.value))
            regs.append(addr)
        elif a.kind in (ArgKind.BUFFER, ArgKind.BYTES):
            regs.append(addr)
        elif a.kind is ArgKind.ADDRESS:
            assert isinstance(a.value, int)
            regs.append(a.value)
        else:
            regs.append(0)
    return tuple(regs), MemoryFacts(tuple(strings))


def test_upstream_cases_are_29_and_numbered() -> None:
    from kapi_selftests.oracle.upstream_cases import UPSTREAM_CASES

    assert [c.number for c in UPSTREAM_CASES] == list(range(1, 30))
    assert len({c.name for c in UPSTREAM_CASES}) == 29


def test_upstream_cases_agree_with_the_oracle() -> None:
    from kapi_selftests.oracle.upstream_cases import UPSTREAM_CASES, RetKind

    for case in UPSTREAM_CASES:
        for call in case.calls:
            spec = SPECS["sys_" + call.syscall]
            regs, mem = _regs_and_memory(call)
            pred = predict(spec, regs, mem)
            assert pred.undetermined is None, case.name
            got = pred.rejection.param if pred.rejection else None
            assert got == call.expect.rejected, case.name
            if got is None:
                ret = 3 if call.expect.kind is not RetKind.EXACT else (
                    -call.expect.errno if call.expect.errno else call.expect.ret)
                assert expected_spec_match(spec, ret) == call.expect.spec_match, case.name
                if call.expect.errno:
                    assert -call.expect.errno in spec.error_codes, case.name
            else:
                assert not call.expect.spec_match and call.expect.errno == 22


# ---------------------------------------------------------------- properties

_REG = st.sampled_from((0, 1, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**63 - 1, 2**63,
                        2**64 - 1, USER_PTR_MAX, 0xFFFF888000000000)) | st.integers(0, 2**64 - 1)


class _AnyMemory:
    """Every address holds a short string."""

    def strnlen_user(self, addr: int, count: int) -> int | None:
        return min(5, count + 1)


@pytest.mark.parametrize("name", sorted(SPECS))
@given(regs=st.tuples(_REG, _REG, _REG))
def test_predict_params_string_encodes_args(name: str, regs: tuple[int, int, int]) -> None:
    spec = SPECS[name]
    p = predict(spec, regs, _AnyMemory())
    assert p.undetermined is None
    assert p.nargs == len(spec.params)
    assert p.args[p.nargs:] == (0,) * (6 - p.nargs)
    for i, item in enumerate(p.params.split(", ")):
        key, val = item.split("=")
        assert key == spec.params[i].name
        assert int(val, 0) & (2**64 - 1) == p.args[i]


def test_memory_facts_strnlen_semantics() -> None:
    m = MemoryFacts((UserString(0x1000, 3), UserString(0x2000, None, readable=10),
                     UserString(0x3000, None)), ((0x5000, 0x6000),))
    assert m.strnlen_user(0x1000, 100) == 4
    assert m.strnlen_user(0x1000, 3) == 4  # no NUL within 3 bytes: count + 1
    assert m.strnlen_user(0x2000, 100) == 0  # faults first
    assert m.strnlen_user(0x2000, 5) == 6
    assert m.strnlen_user(0x3000, 4097) == 4098
    assert m.strnlen_user(0x5800, 10) == 0
    assert m.strnlen_user(0x7000, 10) is None
    assert m.strnlen_user(0xFFFF888000000000, 10) == 0
    assert m.strnlen_user(0x1000, 0) == 0


def test_judge_restart_block_continues_elsewhere() -> None:
    rec = _rec(3, (5,), 0)
    v = judge(SPECS["sys_close"], rec, _pair("sys_close", "fd=5", -516, 1))
    assert v.findings == () or [f.kind for f in v.findings] == [FindingKind.SPEC_DRIFT]
    assert any("restart_syscall" in n for n in v.notes)
    rec = _rec(3, (5,), -513)
    v = judge(SPECS["sys_close"], rec, _pair("sys_close", "fd=5", -513, 1))
    assert FindingKind.RET_MISMATCH not in [f.kind for f in v.findings]
    rec = _rec(3, (5,), 0)
    v = judge(SPECS["sys_close"], rec, _pair("sys_close", "fd=5", -513, 1))
    assert [f.kind for f in v.findings][0] is FindingKind.RET_MISMATCH
