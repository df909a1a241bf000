"""trace: format files, ring-buffer pages (real captures and hand-built edge cases),
text traces, capture directories."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from datadir import DATA
from datadir import REFERENCE as REF
from hypothesis import given, settings
from hypothesis import strategies as st

from kapi_selftests.errors import DecodeError, UsageError
from kapi_selftests.trace import ringbuf
from kapi_selftests.trace.capture import (
    find_capture_dirs,
    load_capture,
    read_capture_dir,
    write_capture_dir,
)
from kapi_selftests.trace.events import LossGap, RawCapture, TraceEvent
from kapi_selftests.trace.formats import parse_format, parse_header_page
from kapi_selftests.trace.ringbuf import _walk_cpu, _walk_vectorized, decode, decode_columns
from kapi_selftests.trace.text import parse_text_trace

ENTER_FMT = (DATA / "kapi_syscall_enter.format").read_text()
EXIT_FMT = (DATA / "kapi_syscall_exit.format").read_text()
HEADER_PAGE = (DATA / "header_page").read_text()
ENTER_ID, EXIT_ID = 373, 372


@pytest.fixture(autouse=True, params=["columnar", "plain"])
def walk(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test twice: decode() through the numpy path and through the plain walk."""
    monkeypatch.setattr(ringbuf, "SMALL_CAPTURE_PAGES",
                        0 if request.param == "columnar" else 1 << 30)
    return str(request.param)

# --------------------------------------------------------------------------- page builder
# Records as the kernel writes them (kernel/trace/ring_buffer.c): a u32 header with
# type_len in the low 5 bits and time_delta in the high 27, then the payload.


def rec_data(delta: int, payload: bytes, *, force_array: bool = False) -> bytes:
    payload = payload + b"\0" * (-len(payload) % 4)
    if len(payload) <= 112 and not force_array:
        return struct.pack("<I", (delta << 5) | (len(payload) // 4)) + payload
    return struct.pack("<II", delta << 5, len(payload) + 4) + payload


def rec_extend(delta: int) -> bytes:
    return struct.pack("<II", ((delta & ((1 << 27) - 1)) << 5) | 30, delta >> 27)


def rec_abs(ts: int) -> bytes:
    return struct.pack("<II", ((ts & ((1 << 27) - 1)) << 5) | 31, (ts >> 27) & 0xFFFFFFFF)


def rec_padding(delta: int, length: int) -> bytes:
    # A discarded event: array[0] holds its length - 4.
    return struct.pack("<II", (delta << 5) | 29, length - 4) + b"\xee" * (length - 8)


def page(ts: int, records: list[bytes], *, missed: int | None = None,
         missed_flag: bool = False, size: int = 4096) -> bytes:
    data = b"".join(records)
    commit = len(data)
    tail = b""
    if missed is not None:
        commit |= (1 << 31) | (1 << 30)
        tail = struct.pack("<Q", missed)
    elif missed_flag:
        commit |= 1 << 31
    body = struct.pack("<QQ", ts, commit) + data + tail
    assert len(body) <= size
    return body + b"\0" * (size - len(body))


def exit_payload(pid: int, name: str, ret: int, match: int = 1) -> bytes:
    fixed = struct.pack("<HBBiI4xqB3x", EXIT_ID, 0, 0, pid, 0, ret, match)
    s = name.encode() + b"\0"
    loc = len(fixed) | (len(s) << 16)
    return fixed[:8] + struct.pack("<I", loc) + fixed[12:] + s


def enter_payload(pid: int, name: str, args: tuple[int, ...], params: str) -> bytes:
    a = (args + (0,) * 6)[:6]
    fixed_len = 68
    n = name.encode() + b"\0"
    p = params.encode() + b"\0"
    name_loc = fixed_len | (len(n) << 16)
    params_loc = (fixed_len + len(n)) | (len(p) << 16)
    return (struct.pack("<HBBiIi6QI", ENTER_ID, 0, 0, pid, name_loc, len(args), *a, params_loc)
            + n + p)


def raw_capture(pages: dict[int, bytes], stats: dict[int, str] | None = None,
                formats: dict[str, str] | None = None) -> RawCapture:
    return RawCapture(header_page=HEADER_PAGE, header_event="",
                        formats=formats if formats is not None else
                        {"kapi_syscall_enter": ENTER_FMT, "kapi_syscall_exit": EXIT_FMT},
                        pages=pages, stats=stats or {})


# --------------------------------------------------------------------------- formats


def test_parse_format_kapi_enter_fields() -> None:
    fmt = parse_format(ENTER_FMT)
    assert fmt.name == "kapi_syscall_enter" and fmt.id == 373
    assert [f.name for f in fmt.fields if f.common] == [
        "common_type", "common_flags", "common_preempt_count", "common_pid"]
    name = fmt.field("name")
    assert name is not None and name.data_loc and name.is_string and name.offset == 8
    args = fmt.field("args")
    assert args is not None and args.array_len == 6 and args.size == 48 and args.offset == 16
    pid = fmt.field("common_pid")
    assert pid is not None and pid.signed and pid.size == 4


def test_parse_format_kapi_exit_ret_after_padding() -> None:
    fmt = parse_format(EXIT_FMT)
    ret = fmt.field("ret")
    assert ret is not None and (ret.offset, ret.size, ret.signed) == (16, 8, True)
    assert fmt.field("spec_match") is not None and fmt.id == 372


def test_parse_format_rejects_non_format() -> None:
    with pytest.raises(DecodeError, match="not an event format"):
        parse_format("hello\nworld\n")


def test_parse_header_page_real() -> None:
    hp = parse_header_page(HEADER_PAGE)
    assert (hp.commit_offset, hp.commit_size, hp.data_offset, hp.page_size) == (8, 8, 16, 4096)


def test_parse_header_page_rejects_garbage() -> None:
    with pytest.raises(DecodeError, match="header_page"):
        parse_header_page("nothing here")


# --------------------------------------------------------------------------- real captures


def _key_raw(e: TraceEvent) -> tuple[object, ...]:
    f = e.fields
    return ((e.ts_ns + 500) // 1000, e.cpu, e.tid, e.name, f.get("name"), f.get("params"),
            f.get("ret"), f.get("spec_match"))


def _key_text(e: TraceEvent) -> tuple[object, ...]:
    f = e.fields
    return (e.ts_ns // 1000, e.cpu, e.tid, e.name, f.get("name"), f.get("params"),
            f.get("ret"), f.get("spec_match"))


@pytest.mark.parametrize("scenario,count", [("raw/small", 110), ("raw/threads", 28966),
                                            ("raw/overrun", 124), ("boundary", 140)])
def test_decode_real_capture_matches_text_trace(scenario: str, count: int) -> None:
    cap = load_capture(REF / scenario)
    text = load_capture(REF / scenario / "trace.txt")
    assert len(cap.events) == count == len(text.events)
    assert sorted(map(_key_raw, cap.events)) == sorted(map(_key_text, text.events))


def test_decode_real_capture_sorted_with_args() -> None:
    cap = load_capture(REF / "raw/small")
    ts = [e.ts_ns for e in cap.events]
    assert ts == sorted(ts)
    first = cap.events[0]
    assert first.name == "kapi_syscall_enter" and first.tid == 69 and first.cpu == 1
    assert first.fields["name"] == "sys_open" and first.fields["nargs"] == 3
    assert first.fields["args"] == (0x48C043, 0, 0, 0, 0, 0)
    assert first.fields["params"] == "filename=0x48c043, flags=0, mode=0x0"
    assert cap.events[-1].ts_ns == list(cap.events)[-1].ts_ns


def test_decode_threads_migrate_between_cpus() -> None:
    cap = load_capture(REF / "raw/threads")
    cpus_of: dict[int, set[int]] = {}
    for ev in cap.events:
        cpus_of.setdefault(ev.tid, set()).add(ev.cpu)
    assert len(cpus_of) == 4 and all(c == {0, 1} for c in cpus_of.values())


def test_decode_vectorised_walk_matches_reference_walk() -> None:
    raw = read_capture_dir(REF / "raw/threads")
    cols, _ = decode_columns(raw)
    hp = parse_header_page(raw.header_page)
    offs: list[int] = []
    tss: list[int] = []
    lens: list[int] = []
    base = 0
    for cpu in sorted(raw.pages):
        _walk_cpu(raw.pages[cpu], cpu, hp, base, offs, tss, lens, [], "x")
        base += len(raw.pages[cpu])
    assert sorted(zip(tss, offs, lens, strict=True)) == sorted(
        zip(cols.ts_ns.tolist(), cols.offset.tolist(), cols.length.tolist(), strict=True))


def test_decode_overrun_counts_loss_from_stats() -> None:
    cap = load_capture(REF / "raw/overrun")
    assert cap.loss.lost_events == 14480 - 124 == 1037 + 13319
    assert dict(cap.loss.per_cpu) == {0: 1037, 1: 13319}
    starts = {g.cpu: g.end_ns for g in cap.loss.gaps if g.start_ns is None}
    assert starts == {0: 4453207726, 1: 4597685750}


def test_text_trace_loss_from_header() -> None:
    cap = load_capture(REF / "raw/overrun/trace.txt")
    assert cap.loss.lost_events == 14356
    assert {g.cpu for g in cap.loss.gaps} == {0, 1}


def test_text_trace_no_loss() -> None:
    cap = load_capture(REF / "boot-evidence/trace-phase2-isolated.txt")
    assert len(cap.events) == 36 and cap.loss.lost_events == 0 and not cap.loss.gaps


# --------------------------------------------------------------------------- hand-built pages


def test_page_small_and_array_records() -> None:
    recs = [rec_data(10, enter_payload(7, "sys_close", (4,), "fd=4")),
            rec_data(5, exit_payload(7, "sys_close", 0)),
            rec_data(3, exit_payload(7, "sys_close", -9), force_array=True)]
    cap = decode(raw_capture({0: page(1000, recs)}))
    assert [e.ts_ns for e in cap.events] == [1010, 1015, 1018]
    assert cap.events[0].fields["args"] == (4, 0, 0, 0, 0, 0)
    assert cap.events[0].fields["params"] == "fd=4"
    assert [e.fields.get("ret") for e in cap.events] == [None, 0, -9]
    assert all(e.tid == 7 and e.cpu == 0 for e in cap.events)


def test_page_time_extend_adds_large_delta() -> None:
    big = (5 << 27) + 123
    recs = [rec_data(1, exit_payload(1, "sys_read", 1)), rec_extend(big),
            rec_data(0, exit_payload(1, "sys_read", 2))]
    cap = decode(raw_capture({0: page(100, recs)}))
    assert [e.ts_ns for e in cap.events] == [101, 101 + big]


def test_page_absolute_time_stamp_sets_clock() -> None:
    recs = [rec_data(1, exit_payload(1, "sys_read", 1)), rec_abs(9_000_000_000),
            rec_data(7, exit_payload(1, "sys_read", 2))]
    cap = decode(raw_capture({0: page(100, recs)}))
    assert [e.ts_ns for e in cap.events] == [101, 9_000_000_007]


def test_page_discarded_event_is_skipped() -> None:
    recs = [rec_data(1, exit_payload(1, "sys_read", 1)), rec_padding(2, 40),
            rec_data(3, exit_payload(1, "sys_read", 2))]
    cap = decode(raw_capture({0: page(100, recs)}))
    assert [e.fields["ret"] for e in cap.events] == [1, 2]
    assert [e.ts_ns for e in cap.events] == [101, 106]


def test_page_null_padding_ends_page() -> None:
    recs = [rec_data(1, exit_payload(1, "sys_read", 1)), struct.pack("<II", 29, 0),
            b"\xff" * 16]
    cap = decode(raw_capture({0: page(100, recs)}))
    assert len(cap.events) == 1


def test_page_missed_events_stored_count_is_a_gap() -> None:
    p0 = page(100, [rec_data(1, exit_payload(1, "sys_read", 1))])
    p1 = page(500, [rec_data(1, exit_payload(1, "sys_read", 2))], missed=42)
    cap = decode(raw_capture({0: p0 + p1}))
    assert [g for g in cap.loss.gaps] == [LossGap(0, 101, 501, 42)]
    assert cap.loss.explains(101, 501) and not cap.loss.explains(501, 900)


def test_page_missed_events_flag_without_count() -> None:
    p1 = page(500, [rec_data(1, exit_payload(1, "sys_read", 2))], missed_flag=True)
    cap = decode(raw_capture({0: p1}))
    assert cap.loss.gaps == (LossGap(0, None, 501, None),)


def test_empty_cpu_file_decodes_to_nothing() -> None:
    cap = decode(raw_capture({0: b"", 1: page(5, [])}))
    assert len(cap.events) == 0 and cap.cpus == (0, 1)


def test_corrupt_commit_larger_than_page() -> None:
    bad = bytearray(page(100, [rec_data(1, exit_payload(1, "sys_read", 1))]))
    struct.pack_into("<Q", bad, 8, 5000)
    with pytest.raises(DecodeError, match=r"cpu0\.raw: page 0 .*corrupt page"):
        decode(raw_capture({0: bytes(bad)}), where="cap")


def test_corrupt_record_runs_past_commit() -> None:
    rec = struct.pack("<II", 1 << 5, 4000) + b"\0" * 8  # array[0] claims 4000 bytes
    with pytest.raises(DecodeError, match="runs past the commit"):
        decode(raw_capture({0: page(100, [rec])}))


def test_truncated_cpu_file() -> None:
    with pytest.raises(DecodeError, match="not a whole number"):
        decode(raw_capture({0: page(100, [])[:1000]}))


def test_unknown_event_id() -> None:
    payload = struct.pack("<HBBi", 999, 0, 0, 1) + b"\0" * 8
    with pytest.raises(DecodeError, match="unknown event id 999"):
        decode(raw_capture({0: page(100, [rec_data(1, payload)])}))


def test_generic_syscall_event_fields() -> None:
    fmts = {"sys_enter_openat": (DATA / "sys_enter_openat.format").read_text(),
            "sys_exit_openat": (DATA / "sys_exit_openat.format").read_text()}
    enter = struct.pack("<HBBii4xQQQQ", 700, 0, 0, 9, 257, 0xFFFFFF9C, 0x7FFD0000, 0, 0)
    exit_ = struct.pack("<HBBii4xq", 699, 0, 0, 9, 257, -2)
    cap = decode(raw_capture({0: page(1, [rec_data(1, enter), rec_data(1, exit_)])},
                               formats=fmts))
    e0, e1 = cap.events
    assert e0.name == "sys_enter_openat" and e0.fields["__syscall_nr"] == 257
    assert e0.fields["filename"] == 0x7FFD0000
    assert e1.name == "sys_exit_openat" and e1.fields["ret"] == -2


# --------------------------------------------------------------------------- text traces


def test_text_trace_kapi_fields() -> None:
    cap = parse_text_trace(
        "# tracer: nop\n"
        "#\n"
        "# entries-in-buffer/entries-written: 2/2   #P:2\n"
        "    capture-69      [001] .B...     2.876297: kapi_syscall_enter: "
        "sys_open(filename=0x48c043, flags=0, mode=0x0)\n"
        "    capture-69      [001] .....     2.877703: kapi_syscall_exit: "
        "sys_open = 4 spec_match=1\n")
    e0, e1 = cap.events
    assert (e0.ts_ns, e0.cpu, e0.tid) == (2_876_297_000, 1, 69)
    assert e0.fields == {"name": "sys_open", "params": "filename=0x48c043, flags=0, mode=0x0"}
    assert e1.fields == {"name": "sys_open", "ret": 4, "spec_match": 1}
    assert cap.loss.lost_events == 0 and cap.cpus == (0, 1)


def test_text_trace_generic_syscall_events() -> None:
    cap = load_capture(DATA / "trace-generic-syscalls.txt")
    names = [e.name for e in cap.events]
    assert names[:2] == ["sys_enter_openat", "sys_exit_openat"]
    assert cap.events[0].fields["dfd"] == 0xFFFFFF9C
    assert cap.events[1].fields["ret"] == 3


def test_text_trace_lost_marker_is_a_gap() -> None:
    cap = load_capture(DATA / "trace-lost-marker.txt")
    assert cap.loss.lost_events == 5
    (gap,) = cap.loss.gaps
    assert gap.cpu == 1 and gap.count == 5 and gap.start_ns is not None


def test_text_trace_comm_with_dash_and_space() -> None:
    cap = parse_text_trace(
        "  kworker/u4:1-my thread-1234 [000] ..... 1.000001: kapi_syscall_exit: "
        "sys_read = 0 spec_match=1\n")
    assert cap.events[0].tid == 1234


def test_text_trace_bad_line() -> None:
    with pytest.raises(DecodeError, match=r"t\.txt:2: not a trace line"):
        parse_text_trace("# header\nthis is not a trace\n", where="t.txt")


def test_load_capture_binary_file_is_clear_error(tmp_path: Path) -> None:
    f = tmp_path / "cpu0.bin"
    f.write_bytes(b"\x00\xff\xfe" * 100)
    with pytest.raises(DecodeError, match="not a text trace"):
        load_capture(f)


def test_load_capture_missing_path(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no such file"):
        load_capture(tmp_path / "nope")


# --------------------------------------------------------------------------- capture dirs


def test_capture_dir_round_trip(tmp_path: Path) -> None:
    raw = raw_capture({0: page(100, [rec_data(1, exit_payload(3, "sys_read", 1))]), 1: b""},
                      stats={0: "entries: 1\noverrun: 0\n", 1: "entries: 0\noverrun: 0\n"})
    raw = RawCapture(raw.header_page, "# header_event\n", raw.formats, raw.pages, raw.stats,
                       calls_log="3 read 0x0 0x0 0x0 ret=1 errno=0\n")
    d = write_capture_dir(raw, tmp_path / "cap")
    back = read_capture_dir(d)
    assert back == raw
    assert find_capture_dirs(tmp_path) == [d]


def test_read_capture_dir_needs_header_page(tmp_path: Path) -> None:
    (tmp_path / "cpu0.raw").write_bytes(b"")
    with pytest.raises(DecodeError, match="no header_page"):
        read_capture_dir(tmp_path)


# --------------------------------------------------------------------------- garbage in


@settings(max_examples=300)
@given(st.binary(min_size=0, max_size=600), st.integers(0, 4200), st.sampled_from([0, 1 << 31,
                                                                                 3 << 30]))
def test_decode_garbage_page_is_decode_error_or_events(body: bytes, commit: int,
                                                       flags: int) -> None:
    # Any page: either events or one DecodeError, never another exception.
    data = struct.pack("<QQ", 1000, commit | flags) + body
    data += b"\0" * (4096 - len(data))
    try:
        cap = decode(raw_capture({0: data}))
        for ev in cap.events:
            assert ev.cpu == 0
    except DecodeError:
        pass


@settings(max_examples=200)
@given(st.lists(st.sampled_from([
    "  a-1 [000] ..... 1.000001: kapi_syscall_enter: sys_close(fd=1)",
    "  a-1 [000] ..... 1.000002: kapi_syscall_exit: sys_close = 0 spec_match=1",
    "  a-1 [000] ..... 1.000002: kapi_syscall_exit: sys_close = x spec_match=1",
    "  a-1 [001] ..... 1.000003: kapi_syscall_enter: sys_close(",
    "  a-1 [001] ..... 1.000004: sys_read -> 0x3",
    "  a-1 [001] ..... 1.000004: sys_read(fd: 3",
    "CPU:1 [LOST 3 EVENTS]", "# comment", "", "garbage", "\x00\x01",
    "  a-1 [000] ..... 1.000005: sched_switch: prev=a",
]), max_size=12))
def test_parse_text_garbage_is_decode_error_or_events(lines: list[str]) -> None:
    try:
        parse_text_trace("\n".join(lines))
    except DecodeError:
        pass


_RECORD = st.one_of(
    st.builds(lambda d, r: rec_data(d, exit_payload(1, "sys_read", r)),
              st.integers(0, (1 << 27) - 1), st.integers(-(2**63), 2**63 - 1)),
    st.builds(lambda d, n: rec_data(d, enter_payload(2, "sys_write", (n,), "p" * (n % 90))),
              st.integers(0, 1000), st.integers(0, 2**64 - 1)),
    st.builds(rec_extend, st.integers(1 << 27, (1 << 59) - 1)),
    st.builds(lambda d, n: rec_padding(d, 8 + 4 * n), st.integers(1, 100), st.integers(0, 20)),
)


@settings(max_examples=150)
@given(st.lists(st.lists(_RECORD, max_size=25), min_size=1, max_size=4),
       st.integers(0, 2**40))
def test_vectorised_walk_equals_reference_on_random_pages(pages: list[list[bytes]],
                                                          ts0: int) -> None:
    data = b"".join(page(ts0 + 10**9 * k, recs) for k, recs in enumerate(pages)
                    if len(b"".join(recs)) <= 4080)
    hp = parse_header_page(HEADER_PAGE)
    offs: list[int] = []
    tss: list[int] = []
    lens: list[int] = []
    _walk_cpu(data, 0, hp, 0, offs, tss, lens, [], "x")
    walk = _walk_vectorized(data, hp, [("x", i) for i in range(len(data) // 4096)])
    assert walk.offset.tolist() == offs and walk.ts_ns.tolist() == tss
    assert walk.length.tolist() == lens


def test_text_trace_loss_gaps_only_on_cpus_with_events() -> None:
    cap = parse_text_trace(
        "# entries-in-buffer/entries-written: 1/9   #P:2\n"
        "  a-1 [000] ..... 1.000002: kapi_syscall_exit: sys_close = 0 spec_match=1\n")
    assert cap.loss.lost_events == 8
    assert cap.loss.gaps == (LossGap(0, None, 1_000_002_000, None),)
