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
    assert builds[0]["head"] == head
    assert _git(builds[1]["src"], "rev-parse", "HEAD~2") == head  # series applied first
    assert builds[0]["series"] == () and builds[1]["series"] == tuple(series)
    assert builds[0]["src"] == tmp_path / "b" / "src" / "base"
    assert builds[1]["src"] == tmp_path / "b" / "src" / "patched"
    assert _git(repo, "rev-parse", "HEAD") == head  # the tree itself is left alone


def test_build_pair_series_already_applied_uses_the_commit_below(
        tree: tuple[Path, list[Path]], builds: list[dict[str, Any]], tmp_path: Path) -> None:
    repo, series = tree
    base_commit = _git(repo, "rev-parse", "HEAD")
    _git(repo, "am", "-q", *map(str, series))
    (repo / "open.c").write_text("hand-fixed\n")
    _git(repo, "commit", "-q", "--amend", "-a", "--no-edit")  # a hunk fixed by hand
    head = _git(repo, "rev-parse", "HEAD")
    gate_run.build_pair(repo, series, tmp_path / "b", fragment=Path("f"), jobs=1)
    # the base is the commit below the series; the patched tree is the tree's own HEAD
    # (re-applying the series on the base would fail where hunks were fixed by hand)
    assert [c["head"] for c in builds] == [base_commit, head]


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


def _conflicting_series(repo: Path, series: list[Path]) -> None:
    # the tree moved on under the series: patch 1 no longer applies
    (repo / "open.c").write_text("something else entirely\n")
    _git(repo, "commit", "-q", "-am", "unrelated change")


def test_build_pair_series_that_does_not_apply_stops_before_any_build(
        tree: tuple[Path, list[Path]], builds: list[dict[str, Any]], tmp_path: Path) -> None:
    repo, series = tree
    _conflicting_series(repo, series)
    head = _git(repo, "rev-parse", "HEAD")
    with pytest.raises(BuildError) as ei:
        gate_run.build_pair(repo, series, tmp_path / "b", fragment=Path("f"), jobs=1)
    assert builds == []  # no base build of half an hour before finding out
    wt = tmp_path / "b" / "src" / "patched"
    assert "patch 1/2 'kernel/api: change 1' did not apply: open.c" in str(ei.value)
    hint = ei.value.hint or ""
    assert f"git -C {wt} am --continue" in hint and "same gate command" in hint
    assert "build-kernel" not in hint
    assert f"git worktree remove --force {wt}" in hint
    # the user's tree is untouched: same HEAD, clean, no git am of its own
    assert _git(repo, "rev-parse", "HEAD") == head
    assert _git(repo, "status", "--porcelain", "--untracked-files=no") == ""
    assert not build._am_in_progress(repo) and build._am_in_progress(wt)


def test_build_pair_resumes_in_the_worktree_a_person_fixed(
        tree: tuple[Path, list[Path]], builds: list[dict[str, Any]], tmp_path: Path) -> None:
    repo, series = tree
    _conflicting_series(repo, series)
    wt = tmp_path / "b" / "src" / "patched"
    with pytest.raises(BuildError):
        gate_run.build_pair(repo, series, tmp_path / "b", fragment=Path("f"), jobs=1)
    # running the gate again before the fix: the stopped git am is kept, not aborted
    with pytest.raises(BuildError, match="git am is in progress"):
        gate_run.build_pair(repo, series, tmp_path / "b", fragment=Path("f"), jobs=1)
    assert build._am_in_progress(wt)
    for rej in wt.glob("*.rej"):
        rej.unlink()
    (wt / "open.c").write_text("fixed by hand 1\n")
    _git(wt, "add", "open.c")
    subprocess.run(["git", "-C", str(wt), "-c", "user.name=t", "-c", "user.email=t@t",
                    "am", "--continue"], capture_output=True, text=True, check=False)
    if build._am_in_progress(wt):  # patch 2 conflicts with the hand fix in turn
        (wt / "open.c").write_text("fixed by hand 2\n")
        for rej in wt.glob("*.rej"):
            rej.unlink()
        _git(wt, "add", "open.c")
        _git(wt, "am", "--continue")
    fixed = _git(wt, "rev-parse", "HEAD")
    base, patched = gate_run.build_pair(repo, series, tmp_path / "b", fragment=Path("f"),
                                        jobs=1)
    assert [c["head"] for c in builds] == [_git(repo, "rev-parse", "HEAD"), fixed]


def test_build_pair_cached_builds_need_no_worktree(
        tree: tuple[Path, list[Path]], builds: list[dict[str, Any]], tmp_path: Path) -> None:
    repo, series = tree
    frag = tmp_path / "kapi.config"
    frag.write_text("CONFIG_KAPI_SPEC=y\n")
    head = _git(repo, "rev-parse", "HEAD")
    for label, patches in (("base", []), ("patched", series)):
        out = tmp_path / "b" / label
        image = out / build.IMAGE_PATH
        image.parent.mkdir(parents=True)
        image.write_bytes(label.encode())
        key = build.cache_key(f"git:{head}", [p.read_bytes() for p in patches],
                              frag.read_bytes())
        (out / build.STATE_FILE).write_text(
            f'{{"key": "{key}", "image_sha256": "{build._hash_file(image)}"}}')
    base, patched = gate_run.build_pair(repo, series, tmp_path / "b", fragment=frag, jobs=1)
    assert (base, patched) == (tmp_path / "b" / "base" / build.IMAGE_PATH,
                               tmp_path / "b" / "patched" / build.IMAGE_PATH)
    assert builds == [] and not (tmp_path / "b" / "src").exists()
    # another fragment is another key: both are built
    frag.write_text("CONFIG_KAPI_SPEC=n\n")
    gate_run.build_pair(repo, series, tmp_path / "b", fragment=frag, jobs=1)
    assert len(builds) == 2
