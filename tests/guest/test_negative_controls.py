"""Negative controls: each of the five checks, seen to fail on real events.

Every other real-kernel test expects "nothing found"; a judge that never finds
anything would pass them all. Here a real batch runs on the running kernel and
its real capture is judged again with one thing deliberately wrong — a call that
was never made, a prediction from other registers, a return userspace did not
see, a spec that no longer allows a flag the call used, a side effect measured on
a rejected call — and each check must raise its finding, which the bulk pass
(``bulk.clean_calls``) must not clear.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path as FsPath

import pytest

from kapi_selftests.fuzz import remote
from kapi_selftests.guest import agent
from kapi_selftests.guest.harness import Harness
from kapi_selftests.link import calltable
from kapi_selftests.oracle.bulk import clean_calls
from kapi_selftests.oracle.checks import check_calls
from kapi_selftests.oracle.predict import predict
from kapi_selftests.oracle.spec import Spec
from kapi_selftests.plan import Buf, BufKind, CallPlan, Fd, FdKind, Lit, Path, PathKind
from kapi_selftests.records import BatchResult, CallCheck, EventSource, FindingKind, Prediction
from kapi_selftests.trace.ringbuf import decode

_O_CLOEXEC = 0o2000000
#: a clean batch of accepted calls, and one the validator rejects (a flag outside the mask)
PLANS = (
    CallPlan("open", (Path(PathKind.EXISTING), Lit(os.O_RDONLY | _O_CLOEXEC), Lit(0))),
    CallPlan("read", (Fd(FdKind.REGULAR), Buf(BufKind.MAPPED, 64), Lit(64))),
    CallPlan("write", (Fd(FdKind.DEV_NULL), Buf(BufKind.MAPPED, 16), Lit(16))),
    CallPlan("open", (Path(PathKind.NEW), Lit(os.O_CREAT | os.O_WRONLY | 1 << 30), Lit(0o600))),
    CallPlan("close", (Fd(FdKind.REGULAR),)),
)
_OPEN_CLOEXEC, _READ, _WRITE, _REJECTED, _CLOSE = range(5)


@pytest.fixture(scope="module")
def real(kapi_harness: Harness) -> tuple[Harness, BatchResult, list[Prediction | None]]:
    """The batch, run and judged once: it must be clean as issued (else the controls
    below prove nothing)."""
    h = kapi_harness
    result = h.run(list(PLANS))
    assert not result.failures, "\n".join(c.explain() for c in result.failures)
    preds = [c.prediction for c in result.checks]
    assert all(p is not None for p in preds)
    assert preds[_REJECTED] is not None and preds[_REJECTED].rejected
    assert not any(p.rejected for i, p in enumerate(preds) if i != _REJECTED and p)
    return h, result, preds


def _judge(h: Harness, result: BatchResult, preds: list[Prediction | None], *,
           records: list | None = None,  # type: ignore[type-arg]
           effects: list[list[str]] | None = None,
           specs: dict[str, Spec] | None = None) -> tuple[list[CallCheck], list[bool]]:
    recs = list(result.batch.records) if records is None else records
    fx = effects if effects is not None else [[] for _ in recs]
    sp = specs if specs is not None else h.specs
    # decoded to columns, as a campaign's large captures are: the bulk pass runs on them
    capture = decode(result.batch.raw, small_pages=0)
    checks = check_calls(recs, capture, EventSource.KAPI, sp, memory=h.arena,
                         side_effects=fx, predictions=preds)
    rec_specs = [sp.get(f"sys_{_name(r.nr)}") for r in recs]
    windows = clean_calls(recs, capture, rec_specs, preds, fx)
    assert windows is not None, "the bulk pass declined the capture"
    return checks, [w.clean for w in windows]


def _name(nr: int) -> str:
    from kapi_selftests.arch import find_syscall

    abi = find_syscall(nr)
    return abi.name if abi else "?"


def _kinds(c: CallCheck) -> set[FindingKind]:
    return {f.kind for f in c.failures}


def test_control_the_unchanged_batch_is_clean(real: tuple) -> None:  # type: ignore[type-arg]
    h, result, preds = real
    checks, clean = _judge(h, result, preds)
    assert all(c.ok for c in checks)
    assert all(clean), f"the bulk pass should clear a batch traced exactly as predicted: {clean}"


def test_check1_a_call_with_no_events_is_a_pairing_violation(real: tuple) -> None:  # type: ignore[type-arg]
    h, result, preds = real
    recs = list(result.batch.records)
    ghost = dataclasses.replace(recs[_READ], t_ns=recs[_READ].t_end_ns + 1,
                                t_end_ns=recs[_READ].t_end_ns + 2)  # never issued: no events
    recs.insert(_READ + 1, ghost)
    checks, clean = _judge(h, result, [*preds[:_READ + 1], preds[_READ], *preds[_READ + 1:]],
                           records=recs)
    assert FindingKind.PAIRING in _kinds(checks[_READ + 1]), checks[_READ + 1].explain()
    assert not clean[_READ + 1]


def test_check2_args_other_than_predicted_are_a_mismatch(real: tuple) -> None:  # type: ignore[type-arg]
    h, result, preds = real
    rec = result.batch.records[_READ]
    spec = h.specs["sys_read"]
    wrong = list(rec.args[:3])
    wrong[2] += 1  # the oracle believes count was one more
    altered = list(preds)
    altered[_READ] = predict(spec, tuple(wrong), h.arena)
    checks, clean = _judge(h, result, altered)
    assert FindingKind.ARGS_MISMATCH in _kinds(checks[_READ]), checks[_READ].explain()
    assert not clean[_READ]


def test_check3_a_return_userspace_did_not_see_is_a_mismatch(real: tuple) -> None:  # type: ignore[type-arg]
    h, result, preds = real
    recs = list(result.batch.records)
    recs[_WRITE] = dataclasses.replace(recs[_WRITE], ret=recs[_WRITE].ret - 1)
    checks, clean = _judge(h, result, preds, records=recs)
    assert FindingKind.RET_MISMATCH in _kinds(checks[_WRITE]), checks[_WRITE].explain()
    assert not clean[_WRITE]


def test_check4_a_spec_without_the_flag_predicts_another_spec_match(real: tuple) -> None:  # type: ignore[type-arg]
    h, result, preds = real
    spec = h.specs["sys_open"]
    flags = spec.params[1]
    narrowed = dataclasses.replace(spec, params=(
        spec.params[0], dataclasses.replace(flags, valid_mask=flags.valid_mask & ~_O_CLOEXEC),
        *spec.params[2:]))
    specs = {**h.specs, "sys_open": narrowed}
    rec = result.batch.records[_OPEN_CLOEXEC]
    altered = list(preds)
    altered[_OPEN_CLOEXEC] = predict(narrowed, rec.args[:3], h.arena)
    assert altered[_OPEN_CLOEXEC] is not None and altered[_OPEN_CLOEXEC].rejected
    checks, clean = _judge(h, result, altered, specs=specs)
    kinds = _kinds(checks[_OPEN_CLOEXEC])
    assert kinds & {FindingKind.SPEC_MATCH_MISMATCH, FindingKind.RET_MISMATCH}, \
        checks[_OPEN_CLOEXEC].explain()
    assert not clean[_OPEN_CLOEXEC]


def test_check5_a_side_effect_of_a_rejected_call_is_a_finding(real: tuple) -> None:  # type: ignore[type-arg]
    h, result, preds = real
    effects = [[] for _ in PLANS]
    effects[_REJECTED] = ["file created: new1 (the rejected open must not create it)"]
    checks, clean = _judge(h, result, preds, effects=effects)
    assert FindingKind.REJECTED_SIDE_EFFECT in _kinds(checks[_REJECTED]), \
        checks[_REJECTED].explain()
    assert not clean[_REJECTED]
    others = [c for i, c in enumerate(checks) if i != _REJECTED]
    assert all(c.ok for c in others)


# Check 5 with real side effects, in both engines: a spec narrowed so that the oracle
# believes the validator rejects two calls the kernel runs. Their real effects, a
# pipe's readable bytes and a new fd, are what the batch engine's C executor did not
# measure before (the first only the suite's engine saw, the second neither); both
# engines must now see them, in the same words.
_PIPE_WRITE, _OPEN_FD = range(2)
SIDE_EFFECT_PLANS = (
    CallPlan("write", (Fd(FdKind.PIPE_WRITE), Buf(BufKind.MAPPED, 16), Lit(16))),
    CallPlan("open", (Path(PathKind.EXISTING), Lit(os.O_RDONLY | _O_CLOEXEC), Lit(0))),
)


def _narrowed(specs: dict[str, Spec]) -> dict[str, Spec]:
    # write: count at most 8 (the plan writes 16); open: O_CLOEXEC outside the mask
    w, o = specs["sys_write"], specs["sys_open"]
    count, flags = w.params[2], o.params[1]
    return {**specs,
            "sys_write": dataclasses.replace(w, params=(
                *w.params[:2], dataclasses.replace(count, max_value=8), *w.params[3:])),
            "sys_open": dataclasses.replace(o, params=(
                o.params[0], dataclasses.replace(flags, valid_mask=flags.valid_mask & ~_O_CLOEXEC),
                *o.params[2:]))}


def _assert_both_side_effects(result: BatchResult) -> None:
    seen = []
    for c in result.checks:
        assert c.prediction is not None and c.prediction.rejected, c.explain()
        assert c.record.ret >= 0, c.explain()  # the kernel ran it
        seen.append(" | ".join(f.message for f in c.failures
                               if f.kind is FindingKind.REJECTED_SIDE_EFFECT))
    # the fd the open returned was open when the call was measured
    fd = result.checks[_OPEN_FD].record.ret
    assert seen[_PIPE_WRITE].endswith("changed state: arg0: readable bytes 0 -> 16"), seen
    assert seen[_OPEN_FD].endswith(f"changed state: fd table changed: opened [{fd}], "
                                   "closed []"), seen


def test_check5_real_side_effects_are_seen_by_the_batch_engine(kapi_harness: Harness,
                                                               tmp_path: FsPath) -> None:
    specs = _narrowed(kapi_harness.specs)
    # the host built the executor into the cache it hands the guest; else build it here
    lib = calltable.build_library(calltable.CACHE_DIR) or calltable.build_library(tmp_path)
    assert lib is not None, "no C batch executor: this test is about it"
    with agent.Agent(lib, EventSource.KAPI) as ag, \
            remote.RemoteHarness(remote.LocalLink(ag), specs) as h:
        result = h.run(list(SIDE_EFFECT_PLANS))
    _assert_both_side_effects(result)


def test_check5_real_side_effects_are_seen_by_the_suite_engine(kapi_harness: Harness,
                                                               monkeypatch: pytest.MonkeyPatch
                                                               ) -> None:
    h = kapi_harness
    monkeypatch.setattr(h, "specs", _narrowed(h.specs))
    _assert_both_side_effects(h.run(list(SIDE_EFFECT_PLANS)))


# --- the same controls against the generic syscall events (checks 1-3, any kernel) ---

@pytest.fixture(scope="module")
def generic(generic_harness: Harness) -> tuple[Harness, BatchResult]:
    h = generic_harness
    result = h.run(list(PLANS))
    assert not result.failures, "\n".join(c.explain() for c in result.failures)
    return h, result


@pytest.mark.parametrize("control", ["check1-ghost-call", "check2-other-registers",
                                     "check3-other-return"])
def test_generic_controls(generic: tuple, control: str) -> None:  # type: ignore[type-arg]
    h, result = generic
    recs = list(result.batch.records)
    if control == "check1-ghost-call":
        k = _READ + 1
        recs.insert(k, dataclasses.replace(recs[_READ], t_ns=recs[_READ].t_end_ns + 1,
                                           t_end_ns=recs[_READ].t_end_ns + 2))
        want = FindingKind.PAIRING
    elif control == "check2-other-registers":
        k = _READ
        args = list(recs[k].args)
        args[2] += 1
        recs[k] = dataclasses.replace(recs[k], args=tuple(args))
        want = FindingKind.ARGS_MISMATCH
    else:
        k = _WRITE
        recs[k] = dataclasses.replace(recs[k], ret=recs[k].ret - 1)
        want = FindingKind.RET_MISMATCH
    checks = check_calls(recs, result.capture, EventSource.SYSCALLS, h.specs, memory=h.arena)
    assert want in _kinds(checks[k]), checks[k].explain()
    assert [c.ok for i, c in enumerate(checks) if i != k] == [True] * (len(checks) - 1)
