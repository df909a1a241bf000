"""The gate's host side without a kernel: the guest script, and build_pair on a throwaway
git tree with ``build_kernel`` replaced by a recorder (real ``git worktree``)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from kapi_selftests.errors import BuildError
from kapi_selftests.host import build, gate_run


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args],
        check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Path, list[Path]]:
    """A tiny "kernel tree" with history, and a two-patch series made on top of it
    (the tree is left at the base; the patches are mbox files)."""
    repo = tmp_path / "linux"
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / "Makefile").write_text("all:\n")
    (repo / "Kconfig").write_text("config KAPI_SPEC\n\tbool\n")
    (repo / "open.c").write_text("mask(S_IALLUGO)\n")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "base")
    for n, text in ((1, "mask(S_IALLUGO) /* 1 */\n"), (2, "mask(S_IALLUGO) /* 2 */\n")):
        (repo / "open.c").write_text(text)
        _git(repo, "commit", "-q", "-am", f"kernel/api: change {n}")
    pdir = tmp_path / "series"
    _git(repo, "format-patch", "-q", "-2", "--subject-prefix=PATCH v4", "-o", str(pdir))
    _git(repo, "reset", "-q", "--hard", "HEAD~2")
    return repo, sorted(pdir.glob("*.patch"))


@pytest.fixture
def builds(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    calls: list[dict[str, Any]] = []

    def fake(src: Path, out: Path, *, series: tuple[Path, ...] = (), fragment: Path,
             jobs: int, resume: bool = False) -> build.BuildResult:
        calls.append({"src": src, "out": out, "series": tuple(series),
                      "head": _git(src, "rev-parse", "HEAD")})
        return build.BuildResult(out / "bzImage", out / ".config", "k", False, 0.0)

    monkeypatch.setattr(build, "build_kernel", fake)
    return calls


def test_build_pair_base_is_the_tree_and_patched_adds_the_series(
        tree: tuple[Path, list[Path]], builds: list[dict[str, Any]], tmp_path: Path) -> None:
    repo, series = tree
    head = _git(repo, "rev-parse", "HEAD")
    base, patched = gate_run.build_pair(repo, series, tmp_path / "b", fragment=Path("f"),
                                        jobs=1)
    assert base == tmp_path / "b" / "base" / "bzImage"
    assert patched == tmp_path / "b" / "patched" / "bzImage"
    assert [c["head"] for c in builds] == [head, head]
    assert builds[0]["series"] == () and builds[1]["series"] == tuple(series)
    assert builds[0]["src"] == tmp_path / "b" / "src" / "base"
    assert builds[1]["src"] == tmp_path / "b" / "src" / "patched"
    assert _git(repo, "rev-parse", "HEAD") == head  # the tree itself is left alone


def test_build_pair_series_already_applied_uses_the_commit_below(
        tree: tuple[Path, list[Path]], builds: list[dict[str, Any]], tmp_path: Path) -> None:
    repo, series = tree
    base_commit = _git(repo, "rev-parse", "HEAD")
    _git(repo, "am", "-q", *map(str, series))
    gate_run.build_pair(repo, series, tmp_path / "b", fragment=Path("f"), jobs=1)
    assert [c["head"] for c in builds] == [base_commit, base_commit]


def test_build_pair_prebuilt_base_builds_only_the_patched_kernel(
        tree: tuple[Path, list[Path]], builds: list[dict[str, Any]], tmp_path: Path) -> None:
    repo, series = tree
    base, _ = gate_run.build_pair(repo, series, tmp_path / "b", fragment=Path("f"), jobs=1,
                                  base_image=Path("/boot/vmlinuz"))
    assert base == Path("/boot/vmlinuz") and len(builds) == 1


def test_build_pair_reuses_worktrees(tree: tuple[Path, list[Path]],
                                     builds: list[dict[str, Any]], tmp_path: Path) -> None:
    repo, series = tree
    gate_run.build_pair(repo, series, tmp_path / "b", fragment=Path("f"), jobs=1)
    gate_run.build_pair(repo, series, tmp_path / "b", fragment=Path("f"), jobs=1)
    assert len(builds) == 4 and builds[0]["src"] == builds[2]["src"]


def test_build_pair_partly_applied_series_is_build_error(
        tree: tuple[Path, list[Path]], builds: list[dict[str, Any]], tmp_path: Path) -> None:
    repo, series = tree
    _git(repo, "am", "-q", str(series[0]))
    with pytest.raises(BuildError, match="1 of the 2 patches"):
        gate_run.build_pair(repo, series, tmp_path / "b", fragment=Path("f"), jobs=1)
    assert builds == []


def test_guest_script_order_and_stages(tmp_path: Path) -> None:
    cfg = gate_run.GateRunConfig(out=tmp_path, seed=7, probe_calls=50, fuzz_calls=20,
                                 keyword="smoke")
    spec = gate_run.guest_script(cfg, python="/usr/bin/python3")
    assert spec.argv[:2] == ("/bin/sh", "-c")
    script = spec.argv[2]
    assert script.index("/sys/kernel/debug/kapi") < script.index("gate.probe") \
        < script.index("--local")
    assert "--seed 7 --calls 50" in script and "--fuzz-calls 20" in script
    assert "stage-probe" in script and "stage-suite" in script and "-k smoke" in script
    assert script.rstrip().endswith("exit 0")
    no_suite = gate_run.guest_script(
        gate_run.GateRunConfig(out=tmp_path, suite=False), python="/usr/bin/python3")
    assert "--local" not in no_suite.argv[2] and "--fuzz-calls" not in no_suite.argv[2]
