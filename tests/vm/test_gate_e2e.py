"""End to end: ``kapi-selftests gate`` on real kernels, booted under QEMU.

- a KAPI kernel against itself must report no difference;
- that kernel against a variant that differs by one spec constraint (open's mode
  mask widened to 0xffff) must report exactly that change;
- the unpatched base (same tree and config, no KAPI) against it: the specs are all
  added, and every call that behaves differently is one the specs now reject;
- ``gate --src`` on the unpatched tree: the v4 series does not apply to 7.2.13, so the
  gate stops at patch 1 before building anything (exit 4, how to resume), leaving the
  tree as it was; on the tree that carries the series, with the build dirs of those
  kernels as ``--build-dir``, both builds come from the cache (``KAPI_GATE_SRC``,
  ``KAPI_GATE_SRC_BASE``, ``KAPI_GATE_SERIES``, ``KAPI_GATE_BUILDS``).

Kernels: ``KAPI_GATE_KERNEL`` (default ``/work/kernels/kapi/bzImage``) and
``KAPI_GATE_VARIANT`` (default ``/work/kernels/kapi-variant/arch/x86/boot/bzImage``).
Where they, QEMU or busybox are missing, the tests skip with the reason. Each test
boots two TCG guests (several minutes; ``KAPI_GATE_ACCEL=auto`` to probe KVM); the
suite stage is limited to the smoke tests to keep it short.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from kapi_selftests.cli import main
from kapi_selftests.testing import missing_vm_tools

pytestmark = [pytest.mark.vm]

KAPI = Path(os.environ.get("KAPI_GATE_KERNEL", "/work/kernels/kapi/bzImage"))
VARIANT = Path(os.environ.get("KAPI_GATE_VARIANT",
                              "/work/kernels/kapi-variant/arch/x86/boot/bzImage"))
BASE = Path(os.environ.get("KAPI_GATE_BASE", "/work/kernels/base/bzImage"))
SRC = Path(os.environ.get("KAPI_GATE_SRC", "/work/kernels/src/linux-source-7.2"))
SRC_BASE = Path(os.environ.get("KAPI_GATE_SRC_BASE", "/work/kernels/src/linux-base"))
SERIES = Path(os.environ.get("KAPI_GATE_SERIES", "/work/series/v4"))
# build dirs of the base and patched kernels (kapi-build.json cache records in each)
BUILDS = Path(os.environ.get("KAPI_GATE_BUILDS", "/work/kernels/build"))


def _need(*kernels: Path) -> None:
    for k in kernels:
        if not k.is_file():
            pytest.skip(f"kernel {k} not found (build it with kapi-selftests build-kernel, or "
                        "set KAPI_GATE_KERNEL / KAPI_GATE_VARIANT / KAPI_GATE_BASE)")
    reason = missing_vm_tools()
    if reason:
        pytest.skip(reason)


def _gate(base: Path, patched: Path, out: Path) -> tuple[int, dict[str, Any]]:
    code = main(["gate", "--base-kernel", str(base), "--kernel", str(patched), "--out",
                 str(out), "-k", "smoke", "--probe-calls", "200", "--timing-rounds", "500",
                 "--accel", os.environ.get("KAPI_GATE_ACCEL", "tcg"),
                 "--junit", str(out / "junit.xml")])
    return code, json.loads((out / "gate.json").read_text())


def test_gate_kapi_kernel_against_itself_no_difference(tmp_path: Path) -> None:
    _need(KAPI)
    code, report = _gate(KAPI, KAPI, tmp_path / "out")
    assert report["differences"] == [], report["differences"]
    assert report["spec_changes"] == []
    assert report["calls_compared"] >= 200 and report["calls_unmatched"] == 0
    assert code == 0 and report["verdict"] == "no regression"


def test_gate_variant_reports_exactly_the_spec_change(tmp_path: Path) -> None:
    _need(KAPI, VARIANT)
    code, report = _gate(KAPI, VARIANT, tmp_path / "out")
    assert [(c["name"], c["kind"], c["lines"]) for c in report["spec_changes"]] == [
        ("sys_open", "changed", ["param[2] mode: constraint mask 0xfff -> mask 0xffff"])]
    diffs = report["differences"]
    assert diffs, "the widened mask must change some open calls"
    for d in diffs:
        assert d["kind"] == "call" and d["class"] == "expected", d
        assert d["subject"].startswith("open("), d
        assert "mode: mask" in d["explanation"], d
    assert code == 0 and report["verdict"] == "no regression"


def test_gate_unpatched_base_against_kapi_only_new_rejections(tmp_path: Path) -> None:
    _need(BASE, KAPI)
    code, report = _gate(BASE, KAPI, tmp_path / "out")
    assert {c["kind"] for c in report["spec_changes"]} == {"added"}
    assert sorted(c["name"] for c in report["spec_changes"]) == [
        "sys_close", "sys_madvise", "sys_open", "sys_read", "sys_write"]
    calls = [d for d in report["differences"] if d["kind"] == "call"]
    assert calls, "the KAPI checks must reject some calls the base ran"
    for d in calls:
        if d["class"] == "note":  # a fuzz call on a "closed" fd reused within its window
            assert "fd:closed" in d["subject"] and "[fuzz" in d["subject"], d
            continue
        assert d["class"] == "expected", d
        assert d["patched"].startswith("EINVAL spec_match=0"), d
    assert [d["subject"] for d in report["differences"] if d["kind"] == "tracepoint"] == [
        "kapi_syscall_enter", "kapi_syscall_exit"]
    assert code == 0 and report["verdict"] == "no regression"


def _series() -> list[str]:
    mboxes = sorted(str(p) for p in SERIES.glob("00*.mbox"))
    if not mboxes:
        pytest.skip(f"no series mbox files (00*.mbox) in {SERIES} (KAPI_GATE_SERIES)")
    return mboxes


def _git(tree: Path, *args: str) -> str:
    import subprocess
    return subprocess.run(["git", "-C", str(tree), *args], capture_output=True, text=True,
                          check=True).stdout


def test_gate_src_series_that_does_not_apply_stops_before_building(tmp_path: Path) -> None:
    if not (SRC_BASE / ".git").exists():
        pytest.skip(f"{SRC_BASE}: no git kernel tree at the series' base (KAPI_GATE_SRC_BASE)")
    series = _series()
    head, status = _git(SRC_BASE, "rev-parse", "HEAD"), _git(SRC_BASE, "status", "--porcelain")
    out = tmp_path / "out"
    try:
        code = main(["gate", "--src", str(SRC_BASE), "--series", *series, "--out", str(out)])
        report = json.loads((out / "gate.json").read_text())
        assert code == 4 and report["verdict"] == "could not judge"
        (reason,) = report["reasons"]
        assert reason.startswith("build: patch 1/11 'kernel/api: introduce kernel API "
                                 "specification framework' did not apply: "), reason
        assert "am --continue" in report["hints"][0]
        assert "same gate command" in report["hints"][0]
        assert not (out / "build" / "base").exists()  # nothing was built
        assert (_git(SRC_BASE, "rev-parse", "HEAD"), _git(SRC_BASE, "status", "--porcelain")) \
            == (head, status)
    finally:
        wt = out / "build" / "src" / "patched"
        if wt.exists():
            _git(SRC_BASE, "worktree", "remove", "--force", str(wt))


def test_gate_src_reuses_cached_builds(tmp_path: Path) -> None:
    _need()
    if not (SRC / ".git").exists():
        pytest.skip(f"{SRC}: no git kernel tree carrying the series (KAPI_GATE_SRC)")
    series = _series()
    builds = tmp_path / "build"
    builds.mkdir()
    for label, name in (("base", "base"), ("patched", "kapi")):
        if not (BUILDS / name / "kapi-build.json").is_file():
            pytest.skip(f"{BUILDS / name}: no cached build (KAPI_GATE_BUILDS)")
        (builds / label).symlink_to(BUILDS / name)
    out = tmp_path / "out"
    code = main(["gate", "--src", str(SRC), "--series", *series, "--build-dir", str(builds),
                 "--out", str(out), "-k", "smoke", "--probe-calls", "200",
                 "--timing-rounds", "500", "--accel", os.environ.get("KAPI_GATE_ACCEL", "tcg")])
    report = json.loads((out / "gate.json").read_text())
    if report["verdict"] == "could not judge" and "build" in report["reasons"][0]:
        pytest.fail(f"the cached builds were not reused: {report['reasons']}")
    assert not (builds / "src").exists()  # cached: no worktree, no make
    assert report["patched"].endswith("arch/x86/boot/bzImage")
    assert {c["kind"] for c in report["spec_changes"]} == {"added"}
    assert code == 0 and report["verdict"] == "no regression"
