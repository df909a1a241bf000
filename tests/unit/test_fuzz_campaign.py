"""The campaign loop with the harness faked: calls.jsonl rows, findings with reproducers,
resume after Ctrl-C, a batch in flight when the kernel died is skipped and recorded."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from kapi_selftests.fuzz.campaign import (
    CALLS_FILE,
    INFLIGHT_FILE,
    Campaign,
    CampaignConfig,
    finding_keys,
)
from kapi_selftests.fuzz.coverage import Coverage
from kapi_selftests.fuzz.findings import FindingStore, read_jsonl
from kapi_selftests.fuzz.generate import PlanGenerator
from kapi_selftests.guest.harness import Harness
from kapi_selftests.oracle.spec import builtin_specs
from kapi_selftests.plan import CallPlan, plan_to_json
from kapi_selftests.records import CallCheck, EventSource, Finding, FindingKind, SyscallRecord

SPECS = builtin_specs()


class FakeHarness:
    """Every close() 'returns' 0 but the trace says -9: a ret mismatch finding."""

    def __init__(self, interrupt_at: int | None = None) -> None:
        self.specs = SPECS
        self.source = EventSource.SYSCALLS
        self.batches = 0
        self.interrupt_at = interrupt_at
        self.strict = False
        self.all_fail = False

    def run(self, plans: Sequence[CallPlan]) -> Any:
        if len(plans) == 50:  # a campaign batch (not a shrinking or re-run)
            if self.interrupt_at is not None and self.batches == self.interrupt_at:
                raise KeyboardInterrupt
            self.batches += 1
        checks = []
        for p in plans:
            rec = SyscallRecord(nr=p.nr, args=(1, 2, 3, 0, 0, 0), ret=0, errno=0, tid=1)
            f = (Finding(FindingKind.RET_MISMATCH, f"sys_{p.name} exit ret -9, userspace saw 0"),) \
                if p.name == "close" or self.all_fail else ()
            checks.append(CallCheck(rec, (), f))
        return SimpleNamespace(checks=tuple(checks), predictions=(), disagreements=())


def _camp(tmp_path: Path, h: FakeHarness, **kw: Any) -> Campaign:
    cfg = CampaignConfig(out=tmp_path, seed=11, batch_size=50, **kw)
    return Campaign(cfg, cast(Harness, h))


def test_campaign_writes_call_rows_and_counts_findings(tmp_path: Path) -> None:
    h = FakeHarness()
    p = _camp(tmp_path, h, calls=120).run()
    assert p.calls == 120 and p.batches == 3 and p.done
    rows = read_jsonl(tmp_path / CALLS_FILE)
    assert len(rows) == 120
    assert set(rows[0]) == {"v", "seed", "shard", "batch", "index", "n", "plan", "regs", "ret",
                            "errno", "spec_match", "pairs", "findings"}
    assert [r["n"] for r in rows] == list(range(120))
    first = PlanGenerator(SPECS, 11).batch(0, 50, Coverage(SPECS).missing())[0]
    assert rows[0]["plan"] == plan_to_json(first)
    closes = [r for r in rows if r["plan"]["name"] == "close"]
    assert closes and all(r["findings"] == ["ret mismatch"] for r in closes)
    store = FindingStore.load(tmp_path / "findings.jsonl")
    (rec,) = store.records.values()
    assert rec.key.kind == "ret mismatch" and rec.key.syscall == "close"
    assert rec.count == len(closes)
    assert rec.reproducers and (tmp_path / rec.reproducers[0]).is_file()
    assert len(rec.minimized) == 1  # the context was dropped


def test_campaign_shrinking_is_bounded_in_time(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch,
                                               caplog: pytest.LogCaptureFixture) -> None:
    # every call a finding, each shrinking run slow: the shard's shrinking time is capped
    # and the findings after it are saved as found, with one line saying so
    import time

    from kapi_selftests.fuzz import minimize as minimize_mod

    real = minimize_mod.minimize

    def slow(ctx: Any, failing: Any, fails: Any, **kw: Any) -> Any:
        def slow_fails(ps: Any) -> bool:
            time.sleep(0.1)
            return bool(fails(ps))
        return real(ctx, failing, slow_fails, **kw)

    monkeypatch.setattr(minimize_mod, "minimize", slow)
    h = FakeHarness()
    h.all_fail = True
    t0 = time.monotonic()
    _camp(tmp_path, h, calls=100, minimize_time_s=0.3, minimize_total_s=0.5).run()
    assert time.monotonic() - t0 < 5
    store = FindingStore.load(tmp_path / "findings.jsonl")
    assert len(store.records) >= 3  # read, write, open, madvise, close
    said = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("shrinking ") for m in said)
    assert sum("shrinking are spent" in m for m in said) == 1
    assert not (tmp_path / "shrinking.json").exists()


def test_campaign_resumes_after_ctrl_c(tmp_path: Path) -> None:
    with pytest.raises(KeyboardInterrupt):
        _camp(tmp_path, FakeHarness(interrupt_at=2), calls=200, minimize=False).run()
    assert not (tmp_path / INFLIGHT_FILE).exists()  # a clean stop is not a crash
    assert json.loads((tmp_path / "state.json").read_text())["batches"] == 2
    p = _camp(tmp_path, FakeHarness(), calls=200, minimize=False).run()
    assert p.calls == 200 and p.batches == 4 and p.skipped_batches == ()
    rows = read_jsonl(tmp_path / CALLS_FILE)
    assert [r["batch"] for r in rows[::50]] == [0, 1, 2, 3]


def test_campaign_skips_and_records_the_batch_a_crash_interrupted(tmp_path: Path) -> None:
    _camp(tmp_path, FakeHarness(), calls=50, minimize=False).run()
    # the guest died while issuing batch 1: inflight.json written, never committed
    plans = PlanGenerator(SPECS, 11).batch(1, 50)
    (tmp_path / INFLIGHT_FILE).write_text(json.dumps(
        {"seed": 11, "shard": 0, "batch": 1, "plans": [plan_to_json(p) for p in plans]}))
    c = _camp(tmp_path, FakeHarness(), calls=100, minimize=False)
    p = c.run()
    assert p.skipped_batches == (1,) and p.batches == 3 and p.calls == 100
    (crash,) = read_jsonl(tmp_path / "crashes.jsonl")
    assert crash["batch"] == 1 and len(crash["last_plans"]) == 50


def test_campaign_refuses_another_seed_in_the_same_directory(tmp_path: Path) -> None:
    from kapi_selftests.errors import UsageError

    _camp(tmp_path, FakeHarness(), calls=10, minimize=False).run()
    with pytest.raises(UsageError, match="seed 11"):
        Campaign(CampaignConfig(out=tmp_path, seed=12), cast(Harness, FakeHarness()))


def test_finding_keys_name_the_predicted_rejection() -> None:
    from kapi_selftests.oracle.predict import predict

    rec = SyscallRecord(nr=0, args=(1 << 31, 0, 0, 0, 0, 0), ret=-22, errno=22, tid=1)
    check = CallCheck(rec, (), (Finding(FindingKind.SPEC_MATCH_MISMATCH, "m"),))
    pred = predict(SPECS["sys_read"], rec.args)
    (k,) = finding_keys(check, pred)
    assert (k.kind, k.syscall, k.where) == ("spec_match mismatch", "read", "fd:fd")
    assert finding_keys(CallCheck(rec, ()), pred) == []


def test_call_line_is_call_row_as_json() -> None:
    from kapi_selftests.fuzz.campaign import call_line, call_row
    from kapi_selftests.trace.events import TraceEvent

    plan = CallPlan("close", ())
    rec = SyscallRecord(nr=3, args=(2**64 - 1, 0, 0, 0, 0, 7), ret=-22, errno=22, tid=5)
    enter = TraceEvent(1, 0, 5, "kapi_syscall_enter", {"name": "sys_close"})
    leave = TraceEvent(2, 0, 5, "kapi_syscall_exit", {"name": "sys_close", "ret": -22,
                                                      "spec_match": 0})
    for check in (CallCheck(rec, (enter, leave)),
                  CallCheck(rec, (enter,), (Finding(FindingKind.PAIRING, "m"),)),
                  CallCheck(rec, (TraceEvent(1, 0, 5, "sys_enter_close", {}),))):
        line = call_line(1, 2, 3, 4, 5, json.dumps(plan_to_json(plan)), check)
        assert json.loads(line) == call_row(1, 2, 3, 4, 5, plan, check)
