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

Kernels: ``KAPI_GATE_KERNEL`` (a KAPI kernel's bzImage), ``KAPI_GATE_VARIANT`` (the
variant's) and ``KAPI_GATE_BASE`` (the unpatched base's); there are no defaults. Where
a variable is unset, or what it names, QEMU or busybox is missing, the tests skip with
the reason. Each test
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

# what each variable names (no defaults: these are paths of the machine that built them)
_WHAT = {
    "KAPI_GATE_KERNEL": "a KAPI kernel's bzImage (kapi-selftests build-kernel)",
    "KAPI_GATE_VARIANT": "the bzImage of that tree with open's mode mask widened to 0xffff",
    "KAPI_GATE_BASE": "the unpatched base kernel's bzImage (same tree and config)",
    "KAPI_GATE_SRC": "a git kernel tree carrying the series",
    "KAPI_GATE_SRC_BASE": "a git kernel tree at the series' base",
    "KAPI_GATE_SERIES": "the directory of the series' 00*.mbox files",
    # build dirs of the base and patched kernels (kapi-build.json cache records in each)
    "KAPI_GATE_BUILDS": "a directory holding the build dirs base/ and kapi/",
}


def _env(var: str) -> Path:
    """The path ``var`` names; skip, saying what to set, when it is unset."""
    value = os.environ.get(var)
    if not value:
        pytest.skip(f"{var} is not set: set it to {_WHAT[var]}")
    return Path(value)


def _need(*kernel_vars: str) -> list[Path]:
    kernels = [_env(v) for v in kernel_vars]
    for var, k in zip(kernel_vars, kernels, strict=True):
        if not k.is_file():
            pytest.skip(f"kernel {k} ({var}) not found (build it with kapi-selftests "
                        "build-kernel)")
    reason = missing_vm_tools()
    if reason:
        pytest.skip(reason)
    return kernels


def _gate(base: Path, patched: Path, out: Path) -> tuple[int, dict[str, Any]]:
    code = main(["gate", "--base-kernel", str(base), "--kernel", str(patched), "--out",
                 str(out), "-k", "smoke", "--probe-calls", "200", "--timing-rounds", "500",
                 "--accel", os.environ.get("KAPI_GATE_ACCEL", "tcg"),
                 "--junit", str(out / "junit.xml")])
    return code, json.loads((out / "gate.json").read_text())


def test_gate_kapi_kernel_against_itself_no_difference(tmp_path: Path) -> None:
    (kapi,) = _need("KAPI_GATE_KERNEL")
    code, report = _gate(kapi, kapi, tmp_path / "out")
    assert report["differences"] == [], report["differences"]
    assert report["spec_changes"] == []
    assert report["calls_compared"] >= 200 and report["calls_unmatched"] == 0
    assert code == 0 and report["verdict"] == "no regression"


def test_gate_variant_reports_exactly_the_spec_change(tmp_path: Path) -> None:
    kapi, variant = _need("KAPI_GATE_KERNEL", "KAPI_GATE_VARIANT")
    code, report = _gate(kapi, variant, tmp_path / "out")
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
    base, kapi = _need("KAPI_GATE_BASE", "KAPI_GATE_KERNEL")
    code, report = _gate(base, kapi, tmp_path / "out")
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
    series = _env("KAPI_GATE_SERIES")
    mboxes = sorted(str(p) for p in series.glob("00*.mbox"))
    if not mboxes:
        pytest.skip(f"no series mbox files (00*.mbox) in {series} (KAPI_GATE_SERIES)")
    return mboxes


def _git(tree: Path, *args: str) -> str:
    import subprocess
    return subprocess.run(["git", "-C", str(tree), *args], capture_output=True, text=True,
                          check=True).stdout


def test_gate_src_series_that_does_not_apply_stops_before_building(tmp_path: Path) -> None:
    src_base = _env("KAPI_GATE_SRC_BASE")
    if not (src_base / ".git").exists():
        pytest.skip(f"{src_base}: no git kernel tree at the series' base (KAPI_GATE_SRC_BASE)")
    series = _series()
    head, status = _git(src_base, "rev-parse", "HEAD"), _git(src_base, "status", "--porcelain")
    out = tmp_path / "out"
    try:
        code = main(["gate", "--src", str(src_base), "--series", *series, "--out", str(out)])
        report = json.loads((out / "gate.json").read_text())
        assert code == 4 and report["verdict"] == "could not judge"
        (reason,) = report["reasons"]
        assert reason.startswith("build: patch 1/11 'kernel/api: introduce kernel API "
                                 "specification framework' did not apply: "), reason
        assert "am --continue" in report["hints"][0]
        assert "same gate command" in report["hints"][0]
        assert not (out / "build" / "base").exists()  # nothing was built
        assert (_git(src_base, "rev-parse", "HEAD"), _git(src_base, "status", "--porcelain")) \
            == (head, status)
    finally:
        wt = out / "build" / "src" / "patched"
        if wt.exists():
            _git(src_base, "worktree", "remove", "--force", str(wt))


def test_gate_src_reuses_cached_builds(tmp_path: Path) -> None:
    _need()
    src, builds_of = _env("KAPI_GATE_SRC"), _env("KAPI_GATE_BUILDS")
    if not (src / ".git").exists():
        pytest.skip(f"{src}: no git kernel tree carrying the series (KAPI_GATE_SRC)")
    series = _series()
    builds = tmp_path / "build"
    builds.mkdir()
    for label, name in (("base", "base"), ("patched", "kapi")):
        if not (builds_of / name / "kapi-build.json").is_file():
            pytest.skip(f"{builds_of / name}: no cached build (KAPI_GATE_BUILDS)")
        (builds / label).symlink_to(builds_of / name)
    out = tmp_path / "out"
    code = main(["gate", "--src", str(src), "--series", *series, "--build-dir", str(builds),
                 "--out", str(out), "-k", "smoke", "--probe-calls", "200",
                 "--timing-rounds", "500", "--accel", os.environ.get("KAPI_GATE_ACCEL", "tcg")])
    report = json.loads((out / "gate.json").read_text())
    if report["verdict"] == "could not judge" and "build" in report["reasons"][0]:
        pytest.fail(f"the cached builds were not reused: {report['reasons']}")
    assert not (builds / "src").exists()  # cached: no worktree, no make
    assert report["patched"].endswith("arch/x86/boot/bzImage")
    assert {c["kind"] for c in report["spec_changes"]} == {"added"}
    assert code == 0 and report["verdict"] == "no regression"
