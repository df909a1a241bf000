"""Findings: dedupe by key, counts, first and smallest example, JSONL resume, merge, crashes."""

from __future__ import annotations

import json
from pathlib import Path

from kapi_selftests.fuzz.findings import (
    CrashRecord,
    Example,
    FindingKey,
    FindingStore,
    append_jsonl,
    plan_size,
    read_jsonl,
)
from kapi_selftests.plan import Buf, BufKind, CallPlan, Fd, FdKind, Lit

K1 = FindingKey("ret mismatch", "read", "accepted")
K2 = FindingKey("spec_match mismatch", "read", "fd:range")
BIG = CallPlan("read", (Fd(FdKind.SOCKET, 0xFFFFFFFF), Buf(BufKind.KERNEL, 4096), Lit(1 << 40)))
SMALL = CallPlan("read", (Fd(FdKind.REGULAR), Buf(BufKind.MAPPED, 1), Lit(1)))


def test_plan_size_orders_simple_below_complex() -> None:
    assert plan_size(SMALL) < plan_size(BIG)


def test_store_dedupes_by_key_and_counts() -> None:
    s = FindingStore()
    new = s.add([(K1, Example(BIG)), (K1, Example(SMALL)), (K2, Example(BIG))], "t0")
    assert new == [K1, K2]
    assert s.records[K1].count == 2
    assert s.records[K1].first.plan == BIG
    assert s.records[K1].smallest.plan == SMALL
    assert s.add([(K1, Example(BIG))], "t1") == []
    assert s.records[K1].count == 3 and s.records[K1].first_seen == "t0"
    assert s.by_kind() == {"ret mismatch": 3, "spec_match mismatch": 1}


def test_store_jsonl_resume_gives_the_same_store(tmp_path: Path) -> None:
    f = tmp_path / "findings.jsonl"
    s = FindingStore.load(f)
    s.add([(K1, Example(BIG, context=(SMALL,), message="m"))], "t0")
    s.add([(K1, Example(SMALL)), (K2, Example(SMALL))], "t1")
    s.set_reproducer(K1, ["repro/x/repro.json"], [SMALL])
    again = FindingStore.load(f)
    assert again.records == s.records
    assert again.records[K1].count == 2
    assert again.records[K1].reproducers == ("repro/x/repro.json",)
    assert again.records[K1].minimized == (SMALL,)
    assert again.records[K1].first.context == (SMALL,)


def test_store_survives_a_line_cut_short_by_a_crash(tmp_path: Path) -> None:
    f = tmp_path / "findings.jsonl"
    s = FindingStore.load(f)
    s.add([(K1, Example(BIG))], "t0")
    with f.open("a") as fh:
        fh.write('{"type":"count","key":{"kind"')  # the guest died mid-write
    assert FindingStore.load(f).records[K1].count == 1


def test_store_merge_adds_counts_keeps_earliest_and_smallest() -> None:
    a, b = FindingStore(), FindingStore()
    a.add([(K1, Example(BIG))], "2026-01-02T00:00:00Z")
    b.add([(K1, Example(SMALL)), (K2, Example(BIG))], "2026-01-01T00:00:00Z")
    a.merge(b)
    assert a.records[K1].count == 2
    assert a.records[K1].first_seen == "2026-01-01T00:00:00Z"
    assert a.records[K1].first.plan == SMALL
    assert a.records[K1].smallest.plan == SMALL
    assert K2 in a.records


def test_dump_rows_round_trip(tmp_path: Path) -> None:
    s = FindingStore()
    s.add([(K1, Example(BIG)), (K1, Example(SMALL))], "t0")
    s.set_reproducer(K1, ["r.json"])
    f = tmp_path / "f.jsonl"
    append_jsonl(f, s.dump_rows())
    assert FindingStore.load(f).records == s.records


def test_key_slug_is_file_name_safe() -> None:
    assert K2.slug() == "spec-match-mismatch_read_fd-range"


def test_crash_record_json_round_trip(tmp_path: Path) -> None:
    c = CrashRecord("Oops: general protection fault", ("line1", "line2"), (SMALL, BIG), 1, 7,
                    "t", console="c.log", reproducer="r.json")
    f = tmp_path / "crashes.jsonl"
    append_jsonl(f, [c.to_json()])
    assert [CrashRecord.from_json(d) for d in read_jsonl(f)] == [c]
    assert json.loads(f.read_text())["batch"] == 7
