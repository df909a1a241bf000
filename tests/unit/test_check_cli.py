"""``kapi-selftests check``: verdicts, KTAP and JSON on saved traces; bad input."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path
from typing import Any

import pytest
from datadir import DATA
from datadir import REFERENCE as REF

from kapi_selftests.cli import main
from kapi_selftests.report import Outcome, parse_ktap


def check_json(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, Any]:
    code = main(["check", "--json", str(path)])
    out = capsys.readouterr().out
    return code, json.loads(out)


@pytest.mark.parametrize("path,pairs", [
    ("boot-evidence/trace-phase2-isolated.txt", 18), ("raw/small", 55),
    ("raw/threads", 14483), ("boundary", 70)])
def test_check_reference_pass(path: str, pairs: int, capsys: pytest.CaptureFixture[str]) -> None:
    code, obj = check_json(REF / path, capsys)
    assert code == 0
    assert obj["pairs"] == pairs and obj["violations"] == [] and obj["edge_halves"] == []
    assert obj["lost_events"] == 0


@pytest.mark.parametrize("path", ["boot-evidence/trace-phase1-global.txt",
                                  "boot-evidence/trace-phase3-busybox.txt"])
def test_check_reference_edge_halves(path: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, obj = check_json(REF / path, capsys)
    assert code == 0 and obj["violations"] == []
    halves = obj["edge_halves"]
    assert len(halves) == 2
    assert [h["kind"] for h in halves] == ["orphan_exit", "missing_exit"]
    assert all(h["name"] == "sys_write" and h["tid"] == 1 and isinstance(h["ts"], int)
               for h in halves)


def test_check_reference_overrun_is_skip_with_loss(capsys: pytest.CaptureFixture[str]) -> None:
    code, obj = check_json(REF / "raw/overrun", capsys)
    assert code == 4
    assert obj["lost_events"] == 1037 + 13319 and obj["violations"] == []
    assert len(obj["unjudged"]) == 2


def test_check_reference_overrun_text(capsys: pytest.CaptureFixture[str]) -> None:
    code, obj = check_json(REF / "raw/overrun/trace.txt", capsys)
    assert code == 4 and obj["lost_events"] == 14480 - 124


def test_check_ktap_default(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["check", str(REF / "boot-evidence/trace-phase1-global.txt")])
    out = capsys.readouterr().out
    assert code == 0 and out.startswith("KTAP version 1\n")
    results = parse_ktap(out)
    names = [r.name for r in results]
    assert names == ["sys_close", "sys_madvise", "sys_open", "sys_read", "sys_write", "loss"]
    assert all(r.outcome is Outcome.PASS for r in results)
    assert "edge half" in out and "# Totals: pass:6 fail:0" in out


def test_check_ktap_overrun_loss_skips(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["check", str(REF / "raw/overrun")])
    results = {r.name: r for r in parse_ktap(capsys.readouterr().out)}
    assert code == 4
    assert results["loss"].outcome is Outcome.SKIP and "14356 events lost" in results["loss"].reason


def test_check_directory_of_captures(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("small", "threads"):
        shutil.copytree(REF / "raw" / name, tmp_path / name)
    code, obj = check_json(tmp_path, capsys)
    assert code == 0 and obj["pairs"] == 55 + 14483
    assert [c["capture"] for c in obj["captures"]] == ["small", "threads"]


def test_check_directory_with_overrun_is_skip(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["check", str(REF / "raw")])
    out = capsys.readouterr().out
    assert code == 4 and "# Subtest: overrun" in out


def test_check_missing_exit_in_middle_fails(capsys: pytest.CaptureFixture[str]) -> None:
    code, obj = check_json(DATA / "trace-missing-exit-middle.txt", capsys)
    assert code == 1
    (v,) = obj["violations"]
    assert (v["kind"], v["tid"], v["name"], v["ts"]) == ("missing_exit", 124, "sys_read",
                                                         3_999_400_000)
    assert obj["pairs"] == 3 and obj["edge_halves"] == []


def test_check_double_enter_fails(capsys: pytest.CaptureFixture[str]) -> None:
    code, obj = check_json(DATA / "trace-double-enter.txt", capsys)
    assert code == 1
    (v,) = obj["violations"]
    assert (v["kind"], v["tid"], v["name"]) == ("double_enter", 124, "sys_read")
    assert [e["fields"]["name"] for e in v["evidence"]] == ["sys_read", "sys_close"]


def test_check_orphan_exit_in_middle_fails(capsys: pytest.CaptureFixture[str]) -> None:
    code, obj = check_json(DATA / "trace-orphan-exit-middle.txt", capsys)
    assert code == 1 and [v["kind"] for v in obj["violations"]] == ["orphan_exit"]


def test_check_name_mismatch_fails_ktap(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["check", str(DATA / "trace-name-mismatch.txt")])
    results = {r.name: r for r in parse_ktap(capsys.readouterr().out)}
    assert code == 1 and results["sys_open"].outcome is Outcome.FAIL
    assert results["sys_close"].outcome is Outcome.PASS


def test_check_lost_marker_unjudged(capsys: pytest.CaptureFixture[str]) -> None:
    code, obj = check_json(DATA / "trace-lost-marker.txt", capsys)
    assert code == 4 and obj["violations"] == [] and obj["lost_events"] == 5
    assert [v["kind"] for v in obj["unjudged"]] == ["double_enter"]


def test_check_generic_syscalls_pass(capsys: pytest.CaptureFixture[str]) -> None:
    code, obj = check_json(DATA / "trace-generic-syscalls.txt", capsys)
    assert code == 0 and obj["pairs"] == 3
    assert set(obj["captures"][0]["syscalls"]) == {"sys_openat", "sys_read", "sys_close"}


def test_check_empty_trace_is_skip(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", str(DATA / "trace-empty.txt")]) == 4


def test_check_text_without_header_has_null_loss(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "pipe.txt"
    f.write_text("  a-1 [000] ..... 1.000001: kapi_syscall_enter: sys_close(fd=1)\n"
                 "  a-1 [000] ..... 1.000002: kapi_syscall_exit: sys_close = 0 spec_match=1\n")
    code, obj = check_json(f, capsys)
    assert code == 0 and obj["lost_events"] is None


def test_check_missing_path_is_usage_error(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", str(tmp_path / "nope")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_check_empty_dir_is_usage_error(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", str(tmp_path)]) == 2
    assert "no capture found" in capsys.readouterr().err


def test_check_corrupt_page_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "cap"
    shutil.copytree(REF / "raw/small", d)
    data = bytearray((d / "cpu1.raw").read_bytes())
    struct.pack_into("<Q", data, 4096 + 8, 0x7FFF)  # page 1: commit past the page end
    (d / "cpu1.raw").write_bytes(bytes(data))
    code = main(["check", str(d)])
    out, err = capsys.readouterr()
    assert code == 4 and out == ""
    assert "cpu1.raw: page 1" in err and "corrupt page" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_check_unknown_event_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "cap"
    shutil.copytree(REF / "raw/small", d)
    (d / "kapi_syscall_exit.format").unlink()
    code = main(["check", str(d)])
    err = capsys.readouterr().err
    assert code == 4 and "unknown event id 372" in err and "Traceback" not in err


def test_check_binary_file_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "cpu0.raw"
    f.write_bytes(bytes(range(256)) * 16)
    code = main(["check", str(f)])
    err = capsys.readouterr().err
    assert code == 4 and "not a text trace" in err and "Traceback" not in err
