"""Unit tests of kapi_selftests.host.build: no kernel tree needed.

Series application runs real ``git am`` on a throwaway repository; the build runs
real ``make`` on a fake tree whose Makefile imitates defconfig/olddefconfig/bzImage.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from kapi_selftests.cli import main
from kapi_selftests.errors import BuildError
from kapi_selftests.host import build
from kapi_selftests.host.build import (
    apply_series,
    build_kernel,
    cache_key,
    check_config,
    first_error,
    parse_config,
    read_series,
    scan_kconfig,
    strip_debian_gitignore,
)

# --- config survival ---------------------------------------------------------

KCONFIG = (
"""\
config DEBUG_KERNEL
	bool "Kernel debugging"

config DEBUG_FS
	bool "Debug Filesystem"

config KAPI_SPEC
	bool "Kernel API Specification Framework"
	help
"""
    "\t  Help text is not an entry even when a line reads\n"
    "\t  config HELP_TEXT_WORD\n"
    "\t  depends on NOTHING\n"
"""
config KAPI_RUNTIME_CHECKS
	bool "Runtime checking of API specifications"
	depends on KAPI_SPEC
	depends on DEBUG_KERNEL

menuconfig KAPI_SPEC_DEBUGFS
	bool "Export kernel API specifications via debugfs"
	depends on KAPI_SPEC && DEBUG_FS

config RUST
	bool "Rust support"
"""
)

FRAGMENT = """\
# KAPI
CONFIG_KAPI_SPEC=y
CONFIG_KAPI_RUNTIME_CHECKS=y
CONFIG_KAPI_SPEC_DEBUGFS=y
CONFIG_DEBUG_FS=y
CONFIG_VIRTIO_PCI=y
# CONFIG_RUST is not set
"""

# What olddefconfig left when DEBUG_KERNEL was off: RUNTIME_CHECKS dropped.
DOTCONFIG_MISSING_DEP = """\
#
# Automatically generated file; DO NOT EDIT.
#
CONFIG_KAPI_SPEC=y
CONFIG_KAPI_SPEC_DEBUGFS=y
CONFIG_DEBUG_FS=y
# CONFIG_DEBUG_KERNEL is not set
# CONFIG_RUST is not set
CONFIG_CMDLINE="console=ttyS0"
"""


def test_parse_config_values_and_not_set() -> None:
    cfg = parse_config(DOTCONFIG_MISSING_DEP)
    assert cfg["CONFIG_KAPI_SPEC"] == "y"
    assert cfg["CONFIG_DEBUG_KERNEL"] == "n"
    assert cfg["CONFIG_CMDLINE"] == '"console=ttyS0"'
    assert "CONFIG_KAPI_RUNTIME_CHECKS" not in cfg


def test_scan_kconfig_symbols_and_depends() -> None:
    index = scan_kconfig([KCONFIG])
    assert index.symbols == {"DEBUG_KERNEL", "DEBUG_FS", "KAPI_SPEC", "KAPI_RUNTIME_CHECKS",
                             "KAPI_SPEC_DEBUGFS", "RUST"}
    assert index.depends["KAPI_RUNTIME_CHECKS"] == ("KAPI_SPEC", "DEBUG_KERNEL")
    assert index.depends["KAPI_SPEC_DEBUGFS"] == ("KAPI_SPEC && DEBUG_FS",)


def test_check_config_names_dropped_option_and_unmet_dependency() -> None:
    check = check_config(parse_config(FRAGMENT), parse_config(DOTCONFIG_MISSING_DEP),
                         scan_kconfig([KCONFIG]))
    assert not check.ok
    assert [m.name for m in check.mismatched] == ["CONFIG_KAPI_RUNTIME_CHECKS"]
    (m,) = check.mismatched
    assert m.wanted == "y" and m.got is None
    assert m.unmet == ("depends on DEBUG_KERNEL: DEBUG_KERNEL not set",)
    assert "DEBUG_KERNEL" in m.describe()
    # An option this tree does not know is absent, not an error.
    assert check.absent == ("CONFIG_VIRTIO_PCI",)


def test_check_config_all_survived() -> None:
    cfg = parse_config(DOTCONFIG_MISSING_DEP + "CONFIG_KAPI_RUNTIME_CHECKS=y\n")
    check = check_config(parse_config(FRAGMENT), cfg, scan_kconfig([KCONFIG]))
    assert check.ok and check.mismatched == ()


def test_check_config_base_tree_without_kapi_is_ok() -> None:
    base_kconfig = "config DEBUG_FS\n\tbool\n\nconfig RUST\n\tbool\n"
    check = check_config(parse_config(FRAGMENT), parse_config("CONFIG_DEBUG_FS=y\n"),
                         scan_kconfig([base_kconfig]))
    assert check.ok
    assert set(check.absent) == {"CONFIG_KAPI_SPEC", "CONFIG_KAPI_RUNTIME_CHECKS",
                                 "CONFIG_KAPI_SPEC_DEBUGFS", "CONFIG_VIRTIO_PCI"}


def test_check_config_not_set_request_violated() -> None:
    check = check_config({"CONFIG_RUST": "n"}, {"CONFIG_RUST": "y"}, scan_kconfig([KCONFIG]))
    assert [(m.name, m.wanted, m.got) for m in check.mismatched] == [("CONFIG_RUST", "n", "y")]


# --- build log ---------------------------------------------------------------

BUILD_LOG = """\
  CC      kernel/api/kernel_api_spec.o
cc1: some warnings being treated as errors
kernel/api/kapi_debugfs.c: In function 'kapi_show':
kernel/api/kapi_debugfs.c:41:9: warning: unused variable 'x' [-Wunused-variable]
kernel/api/kapi_debugfs.c:57:17: error: implicit declaration of function 'foo'
kernel/api/kapi_debugfs.c:60:1: error: expected ';' before '}' token
make[4]: *** [scripts/Makefile.build:287: kernel/api/kapi_debugfs.o] Error 1
make[3]: *** [scripts/Makefile.build:555: kernel/api] Error 2
"""


def test_first_error_is_first_compiler_error() -> None:
    assert first_error(BUILD_LOG) == (
        "kernel/api/kapi_debugfs.c:57:17: error: implicit declaration of function 'foo'")


def test_first_error_fatal_error() -> None:
    text = "  CC x.o\nx.c:1:10: fatal error: foo.h: No such file or directory\n"
    assert first_error(text) == "x.c:1:10: fatal error: foo.h: No such file or directory"


def test_first_error_falls_back_to_make_line() -> None:
    text = ("  LD      vmlinux.o\nld: vmlinux.o: in function `f': undefined reference to `g'\n"
            "make[2]: *** [scripts/Makefile.vmlinux_o:72: vmlinux.o] Error 1\n"
            "make: *** [Makefile:248: __sub-make] Error 2\n")
    assert first_error(text) == "make[2]: *** [scripts/Makefile.vmlinux_o:72: vmlinux.o] Error 1"


def test_first_error_none_on_clean_log() -> None:
    assert first_error("  CC a.o\n  LD vmlinux\nKernel: arch/x86/boot/bzImage is ready\n") is None


# --- cache key -----------------------------------------------------------------

def test_cache_key_stable_and_sensitive() -> None:
    k = cache_key("git:abc", [b"p1", b"p2"], b"CONFIG_A=y\n")
    assert k == cache_key("git:abc", [b"p1", b"p2"], b"CONFIG_A=y\n")
    assert len(k) == 64
    others = {
        cache_key("git:abd", [b"p1", b"p2"], b"CONFIG_A=y\n"),
        cache_key("git:abc", [b"p2", b"p1"], b"CONFIG_A=y\n"),
        cache_key("git:abc", [b"p1"], b"CONFIG_A=y\n"),
        cache_key("git:abc", [b"p1", b"p2"], b"CONFIG_A=n\n"),
        cache_key("git:abc", [b"p1p2"], b"CONFIG_A=y\n"),
    }
    assert k not in others and len(others) == 5


# --- Debian .gitignore -----------------------------------------------------------

def test_strip_debian_gitignore_block() -> None:
    text = ("*.o\n# bc language scripts\n!kernel/time/timeconst.bc\n\n#\n"
            "# Debian packaging: ignore everything at the top level, since it isn't\n"
            "# included in our repository\n#\n/*\n!/debian/\n")
    assert strip_debian_gitignore(text) == "*.o\n# bc language scripts\n!kernel/time/timeconst.bc\n"
    assert strip_debian_gitignore("*.o\n/vmlinux\n") == "*.o\n/vmlinux\n"


# --- series application on a throwaway git repository ----------------------------

def _git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args],
        check=True, capture_output=True, text=True).stdout


def _make_series(tmp_path: Path) -> tuple[Path, list[Path]]:
    """Two patches made on a history repo; returns a history-less tree that patch 2
    conflicts with (as a Debian tarball does) and the two mbox files."""
    lines = [f"line {i}" for i in range(1, 21)]
    # a.txt and b.txt differ, or git am -3 could take one for a rename of the other.
    blines = [f"b line {i}" for i in range(1, 21)]
    hist = tmp_path / "hist"
    hist.mkdir()
    _git(hist, "init", "-q", "-b", "main")
    (hist / "a.txt").write_text("\n".join(lines) + "\n")
    (hist / "b.txt").write_text("\n".join(blines) + "\n")
    _git(hist, "add", "-A")
    _git(hist, "commit", "-q", "-m", "base")
    (hist / "a.txt").write_text("\n".join(lines[:5] + ["added by one"] + lines[5:]) + "\n")
    _git(hist, "commit", "-q", "-am", "one: touch a")
    (hist / "b.txt").write_text("\n".join(blines[:10] + ["added by two"] + blines[10:]) + "\n")
    _git(hist, "commit", "-q", "-am", "two: touch b")
    pdir = tmp_path / "patches"
    _git(hist, "format-patch", "-q", "-2", "--subject-prefix=PATCH v4", "-o", str(pdir))
    mboxes = sorted(pdir.glob("*.patch"))
    assert len(mboxes) == 2

    # The "tarball": same base, but b.txt's context around line 10 differs.
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "a.txt").write_text("\n".join(lines) + "\n")
    changed = blines[:9] + ["b line 10 (distro)"] + blines[10:]
    (tree / "b.txt").write_text("\n".join(changed) + "\n")
    _git(tree, "init", "-q", "-b", "main")
    _git(tree, "add", "-A")
    _git(tree, "commit", "-q", "-m", "tarball")
    _git(tree, "config", "user.name", "t")
    _git(tree, "config", "user.email", "t@t")
    return tree, mboxes


def _subjects(repo: Path) -> list[str]:
    return _git(repo, "log", "--format=%s").splitlines()


def test_read_series_subjects(tmp_path: Path) -> None:
    _, mboxes = _make_series(tmp_path)
    assert [p.subject for p in read_series(mboxes)] == ["one: touch a", "two: touch b"]


def test_apply_series_stops_at_conflict_and_continues(tmp_path: Path) -> None:
    tree, mboxes = _make_series(tmp_path)
    patches = read_series(mboxes)

    with pytest.raises(BuildError) as exc:
        apply_series(tree, patches)
    msg = str(exc.value)
    assert "patch 2/2 'two: touch b'" in msg
    assert "b.txt: @@ -8,6 +8,7 @@" in msg
    assert "a.txt" not in msg
    assert exc.value.hint is not None and "--continue" in exc.value.hint
    assert f"git -C {tree} add -f -A -- b.txt," in exc.value.hint
    # Patch 1 is committed, patch 2 left for a person: .rej file, am in progress.
    assert _subjects(tree) == ["one: touch a", "tarball"]
    assert (tree / "b.txt.rej").is_file()
    assert (tree / ".git" / "rebase-apply").is_dir()

    # Running again without --continue refuses to start another am, names the patch
    # and what is left, and leaves the tree alone.
    with pytest.raises(BuildError, match=r"git am is in progress, stopped at patch 2/2 "
                                         r"'two: touch b' \(left: b\.txt\.rej\)"):
        apply_series(tree, patches)
    assert (tree / "b.txt.rej").is_file()
    # --continue while the .rej file is still there: refused, naming it.
    with pytest.raises(BuildError, match=r"b\.txt\.rej"):
        apply_series(tree, patches, resume=True)

    # The person fixes the hunk by hand, removes the .rej, but forgets git add.
    text = (tree / "b.txt").read_text().replace("b line 10 (distro)\n",
                                                "b line 10 (distro)\nadded by two\n")
    (tree / "b.txt").write_text(text)
    (tree / "b.txt.rej").unlink()
    with pytest.raises(BuildError, match="not staged"):
        apply_series(tree, patches, resume=True)

    _git(tree, "add", "b.txt")
    assert apply_series(tree, patches, resume=True) == ("two: touch b",)
    assert _subjects(tree) == ["two: touch b", "one: touch a", "tarball"]
    assert not (tree / ".git" / "rebase-apply").exists()
    assert "added by two" in (tree / "b.txt").read_text()
    # Everything applied: a further call does nothing.
    assert apply_series(tree, patches) == ()


def test_apply_series_names_the_hunks_after_a_hand_continue_failed_again(
        tmp_path: Path) -> None:
    # A person ran plain `git am --continue` / `git am` themselves and it stopped again:
    # no .rej files, a clean tree. The next run names the patch and makes the .rej files.
    tree, mboxes = _make_series(tmp_path)
    patches = read_series(mboxes)
    with pytest.raises(BuildError):
        apply_series(tree, patches)
    (tree / "b.txt.rej").unlink()  # as if git am had stopped without leaving any
    with pytest.raises(BuildError) as exc:
        apply_series(tree, patches)
    assert "patch 2/2 'two: touch b'" in str(exc.value)
    assert "b.txt: @@ -8,6 +8,7 @@" in str(exc.value)
    assert (tree / "b.txt.rej").is_file()
    assert exc.value.hint is not None and "*.rej" in exc.value.hint


def test_apply_series_resume_without_am_in_progress(tmp_path: Path) -> None:
    tree, mboxes = _make_series(tmp_path)
    with pytest.raises(BuildError, match="nothing to continue"):
        apply_series(tree, read_series(mboxes), resume=True)


def test_apply_series_clean(tmp_path: Path) -> None:
    tree, mboxes = _make_series(tmp_path)
    # Only patch 1 applies cleanly on the tarball.
    assert apply_series(tree, read_series(mboxes[:1])) == ("one: touch a",)
    assert _subjects(tree) == ["one: touch a", "tarball"]


# --- whole build on a fake kernel tree (real make, no compiler) ----------------------

FAKE_MAKEFILE = """\
defconfig:
\tmkdir -p $(O)
\tprintf 'CONFIG_DEBUG_FS=y\\n# CONFIG_DEBUG_KERNEL is not set\\n' > $(O)/.config
olddefconfig:
\t# DEBUG_KERNEL off: drop KAPI_RUNTIME_CHECKS as Kconfig would.
\tif ! grep -q '^CONFIG_DEBUG_KERNEL=y' $(O)/.config; then \\
\t  sed -i '/^CONFIG_KAPI_RUNTIME_CHECKS=/d' $(O)/.config; fi
bzImage:
\tif grep -q '^CONFIG_BREAK=y' $(O)/.config; then \\
\t  echo 'init/main.c:3:1: error: broken on purpose'; exit 1; fi
\tmkdir -p $(O)/arch/x86/boot
\techo image > $(O)/arch/x86/boot/bzImage
\techo built >> $(O)/builds
"""

FAKE_MERGE = """\
#!/bin/sh
# merge_config.sh -m -O OUT BASE FRAGMENT: append the fragment (last value wins).
out=$3; base=$4; frag=$5
cat "$frag" >> "$out/.config"
"""


def _fake_tree(tmp_path: Path) -> Path:
    src = tmp_path / "linux"
    (src / "scripts" / "kconfig").mkdir(parents=True)
    (src / "Makefile").write_text(FAKE_MAKEFILE)
    (src / "Kconfig").write_text(KCONFIG + "\nconfig BREAK\n\tbool\n")
    merge = src / "scripts" / "kconfig" / "merge_config.sh"
    merge.write_text(FAKE_MERGE)
    merge.chmod(0o755)
    return src


def test_build_kernel_builds_then_caches(tmp_path: Path) -> None:
    src, out = _fake_tree(tmp_path), tmp_path / "out"
    frag = tmp_path / "frag.config"
    frag.write_text("CONFIG_KAPI_SPEC=y\nCONFIG_DEBUG_FS=y\nCONFIG_NOT_IN_TREE=y\n")
    first = build_kernel(src, out, fragment=frag, jobs=1)
    assert not first.cached
    assert first.image == (out / "arch/x86/boot/bzImage").resolve()
    assert first.absent == ("CONFIG_NOT_IN_TREE",)
    assert "CONFIG_KAPI_SPEC=y" in first.config.read_text()
    second = build_kernel(src, out, fragment=frag, jobs=1)
    assert second.cached and second.key == first.key
    assert (out / "builds").read_text() == "built\n"      # make bzImage ran once
    # A different fragment is a different build.
    frag.write_text("CONFIG_KAPI_SPEC=y\n")
    third = build_kernel(src, out, fragment=frag, jobs=1)
    assert not third.cached and third.key != first.key
    assert (out / "builds").read_text() == "built\nbuilt\n"


def test_build_kernel_dropped_option_is_an_error(tmp_path: Path) -> None:
    src, frag = _fake_tree(tmp_path), tmp_path / "frag.config"
    frag.write_text("CONFIG_KAPI_SPEC=y\nCONFIG_KAPI_RUNTIME_CHECKS=y\n")
    with pytest.raises(BuildError) as exc:
        build_kernel(src, tmp_path / "out", fragment=frag, jobs=1)
    assert "CONFIG_KAPI_RUNTIME_CHECKS=y but got not set" in str(exc.value)
    assert "DEBUG_KERNEL not set" in str(exc.value)
    assert not (tmp_path / "out" / "builds").exists()


def test_build_kernel_compile_error_shows_first_error(tmp_path: Path) -> None:
    src, frag = _fake_tree(tmp_path), tmp_path / "frag.config"
    frag.write_text("CONFIG_BREAK=y\n")
    with pytest.raises(BuildError, match="init/main.c:3:1: error: broken on purpose") as exc:
        build_kernel(src, tmp_path / "out", fragment=frag, jobs=1)
    assert exc.value.hint is not None and "build.log" in exc.value.hint


def test_build_kernel_logs_commands(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    src, frag = _fake_tree(tmp_path), tmp_path / "frag.config"
    frag.write_text("CONFIG_DEBUG_FS=y\n")
    with caplog.at_level("INFO", logger=build.__name__):
        build_kernel(src, tmp_path / "out", fragment=frag, jobs=3)
    out = (tmp_path / "out").resolve()
    assert f"make -C {src.resolve()} O={out} -j3 bzImage" in caplog.messages


# --- CLI ------------------------------------------------------------------------

def test_cli_missing_src_is_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["build-kernel", "--src", str(tmp_path / "nope"), "--out", str(tmp_path)])
    assert exc.value.code == 2
    assert "not a directory" in capsys.readouterr().err


def test_cli_missing_series_is_usage_error(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    src = _fake_tree(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main(["build-kernel", "--src", str(src), "--out", str(tmp_path / "o"),
              "--series", str(tmp_path / "missing.mbox")])
    assert exc.value.code == 2
    assert "missing.mbox: no such file" in capsys.readouterr().err


def test_cli_dry_run_prints_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src, frag = _fake_tree(tmp_path), tmp_path / "frag.config"
    frag.write_text("CONFIG_DEBUG_FS=y\n")
    rc = main(["build-kernel", "--src", str(src), "--out", str(tmp_path / "o"),
               "--config", str(frag), "-j", "2", "--dry-run"])
    assert rc == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].endswith("defconfig") and lines[-1].endswith("-j2 bzImage")
    assert not (tmp_path / "o").exists()


def test_cli_build_error_exit_code(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src, frag = _fake_tree(tmp_path), tmp_path / "frag.config"
    frag.write_text("CONFIG_BREAK=y\n")
    rc = main(["build-kernel", "--src", str(src), "--out", str(tmp_path / "o"),
               "--config", str(frag), "-j", "1"])
    assert rc == 4
    assert "error: broken on purpose" in capsys.readouterr().err


def test_cli_built_then_cached(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src, frag = _fake_tree(tmp_path), tmp_path / "frag.config"
    frag.write_text("CONFIG_DEBUG_FS=y\n")
    argv = ["build-kernel", "--src", str(src), "--out", str(tmp_path / "o"),
            "--config", str(frag), "-j", "1"]
    assert main(argv) == 0 and main(argv) == 0
    image = str((tmp_path / "o" / "arch/x86/boot/bzImage").resolve())
    assert capsys.readouterr().out.splitlines() == [image, image]
    assert (tmp_path / "o" / "builds").read_text() == "built\n"


def test_cli_several_fragments_merge_in_order(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    # vm/kapi.config then vm/kcov.config: one fragment holding both, the later winning
    src, a, b = _fake_tree(tmp_path), tmp_path / "a.config", tmp_path / "b.config"
    a.write_text("CONFIG_DEBUG_FS=y\n# CONFIG_KCOV is not set")  # no final newline
    b.write_text("CONFIG_KCOV=y\n")
    out = tmp_path / "o"
    argv = ["build-kernel", "--src", str(src), "--out", str(out), "--config", str(a),
            "--config", str(b), "-j", "1"]
    assert main([*argv, "--dry-run"]) == 0
    dry = capsys.readouterr().out.splitlines()
    merged = out / "kapi-selftests-fragment.config"
    assert dry[0] == f"# {merged}: {a} + {b}"
    assert any(line.endswith(str(merged.resolve())) for line in dry)
    assert not out.exists()  # a dry run writes nothing
    assert main(argv) == 0
    assert merged.read_text() == "CONFIG_DEBUG_FS=y\n# CONFIG_KCOV is not set\nCONFIG_KCOV=y\n"
    assert "CONFIG_KCOV=y" in (out / ".config").read_text()


def test_build_kernel_tarball_tree_with_series(tmp_path: Path) -> None:
    """A tree that is no git repository yet (Debian tarball): git init after dropping the
    `/*` .gitignore block, apply the series, build; the second call is cached."""
    _, mboxes = _make_series(tmp_path)
    src = _fake_tree(tmp_path)
    lines = [f"line {i}" for i in range(1, 21)]
    (src / "a.txt").write_text("\n".join(lines) + "\n")
    (src / ".gitignore").write_text("*.o\n.*\n\n#\n# Debian packaging\n#\n/*\n!/debian/\n")
    (src / "scripts" / ".gitignore").write_text("/generated\n")   # dotfiles are source too
    frag, out = tmp_path / "frag.config", tmp_path / "out"
    frag.write_text("CONFIG_DEBUG_FS=y\n")
    first = build_kernel(src, out, series=mboxes[:1], fragment=frag, jobs=1)
    assert not first.cached and first.applied == ("one: touch a",)
    assert (src / ".gitignore").read_text() == "*.o\n.*\n"
    assert _subjects(src) == ["one: touch a", f"import {src.name} (tarball)"]
    # The import commit holds the whole tree (nothing ignored by a `/*` rule).
    tracked = _git(src, "ls-files").split()
    assert {"Makefile", ".gitignore", "scripts/.gitignore"} <= set(tracked)
    again = build_kernel(src, out, series=mboxes[:1], fragment=frag, jobs=1)
    assert again.cached and again.applied == () and again.key == first.key
    # Same tree and fragment with a different series: a different key (and git am).
    with pytest.raises(BuildError, match="patch 2/2 'two: touch b'.*b.txt: No such file"):
        build_kernel(src, out, series=mboxes, fragment=frag, jobs=1)


def test_apply_series_three_way_conflict_on_history_tree(tmp_path: Path) -> None:
    """Where the tree has history, git am -3 merges: a real conflict is reported by file
    and left as conflict markers."""
    _, mboxes = _make_series(tmp_path)
    hist = tmp_path / "hist"
    _git(hist, "reset", "-q", "--hard", "HEAD~2")
    text = (hist / "b.txt").read_text().replace("b line 11\n", "b line 11 (changed)\n")
    (hist / "b.txt").write_text(text)
    _git(hist, "commit", "-q", "-am", "local change")
    _git(hist, "config", "user.name", "t")
    _git(hist, "config", "user.email", "t@t")
    with pytest.raises(BuildError, match=r"patch 2/2 'two: touch b'.*b\.txt: conflict markers"):
        apply_series(hist, read_series(mboxes))
    assert "<<<<<<<" in (hist / "b.txt").read_text()
    assert not list(hist.glob("*.rej"))
    assert _subjects(hist)[0] == "one: touch a"


def test_plan_commands_tarball_with_series(tmp_path: Path) -> None:
    _, mboxes = _make_series(tmp_path)
    src = _fake_tree(tmp_path)
    frag = tmp_path / "frag.config"
    frag.write_text("CONFIG_DEBUG_FS=y\n")
    plan = build.plan_commands(src, tmp_path / "out", series=mboxes, fragment=frag, jobs=2)
    s, o = str(src.resolve()), str((tmp_path / "out").resolve())
    assert plan[0] == ("git", "init", "-q", s)
    assert plan[1] == ("git", "-C", s, "add", "--force", "-A")
    # A fresh tarball has no history: plain git am, no -3.
    assert plan[3] == ("git", "-C", s, "am", *map(str, mboxes))
    assert plan[-1] == ("make", "-C", s, f"O={o}", "-j2", "bzImage")
    assert not (src / ".git").exists()          # a dry run changes nothing


def _record(out: Path, key: str, tree: str | None) -> Path:
    import json

    image = out / build.IMAGE_PATH
    image.parent.mkdir(parents=True, exist_ok=True)
    image.write_bytes(b"bzImage")
    state = {"key": key, "image_sha256": build._hash_file(image), **({"tree": tree} if tree
                                                                      else {})}
    (out / build.STATE_FILE).write_text(json.dumps(state))
    return image


def test_cached_image_is_used_only_for_the_tree_it_was_built_from(tmp_path: Path) -> None:
    image = _record(tmp_path / "a", "k", "tree-1")
    assert build.cached_image(tmp_path / "a", "k", "tree-1") == image
    assert build.cached_image(tmp_path / "a", "k", "tree-2") is None  # fixed up differently
    assert build.cached_image(tmp_path / "a", "k", None) is None  # tree not known yet
    assert build.cached_image(tmp_path / "a", "other-key", "tree-1") is None
    image.write_bytes(b"changed")
    assert build.cached_image(tmp_path / "a", "k", "tree-1") is None
    # a record from before trees were recorded: the key alone, as then
    old = _record(tmp_path / "b", "k", None)
    assert build.cached_image(tmp_path / "b", "k", "anything") == old


def test_tree_hash_tells_hand_fixes_apart(tmp_path: Path) -> None:
    trees = []
    for fix in ("fixed one way\n", "fixed another way\n"):
        repo = tmp_path / fix.split()[1]
        repo.mkdir()
        _git(repo, "init", "-q")
        (repo / "f").write_text("base\n")
        _git(repo, "add", "f")
        _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "base")
        (repo / "f").write_text(fix)
        _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "patch 1")
        trees.append(build.tree_hash(repo))
        (repo / "f").write_text("edited\n")
        assert build.tree_hash(repo) != trees[-1] and ":dirty:" in str(build.tree_hash(repo))
    assert trees[0] != trees[1] and None not in trees


def test_cli_relative_series_and_continue_without_series(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """--series paths relative to where the user stands (git am runs in the tree), and
    --continue resumes the series it stopped in without --series, as git am does."""
    _, mboxes = _make_series(tmp_path)
    src = _fake_tree(tmp_path)
    lines = [f"line {i}" for i in range(1, 21)]
    blines = [f"b line {i}" for i in range(1, 21)]
    (src / "a.txt").write_text("\n".join(lines) + "\n")
    (src / "b.txt").write_text("\n".join(blines[:9] + ["b line 10 (distro)"] + blines[10:])
                               + "\n")
    frag = tmp_path / "frag.config"
    frag.write_text("CONFIG_DEBUG_FS=y\n")
    monkeypatch.chdir(mboxes[0].parent)
    argv = ["build-kernel", "--src", str(src), "--out", str(tmp_path / "o"),
            "--config", str(frag), "-j", "1"]
    rc = main([*argv, "--series", mboxes[0].name, "--series", mboxes[1].name])
    err = capsys.readouterr().err
    assert rc == 4 and "patch 2/2 'two: touch b'" in err  # not "could not open"
    assert "could not open" not in err
    text = (src / "b.txt").read_text().replace("b line 10 (distro)\n",
                                               "b line 10 (distro)\nadded by two\n")
    (src / "b.txt").write_text(text)
    (src / "b.txt.rej").unlink()
    _git(src, "add", "b.txt")
    monkeypatch.chdir(tmp_path)
    assert main([*argv, "--continue"]) == 0, capsys.readouterr().err
    assert _subjects(src)[:2] == ["two: touch b", "one: touch a"]
    # the build is the series' build: the same command with --series is cached
    assert main([*argv, "--series", str(mboxes[0]), "--series", str(mboxes[1])]) == 0
    assert (tmp_path / "o" / "builds").read_text() == "built\n"


def test_cli_continue_with_nothing_remembered(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    src = _fake_tree(tmp_path)
    rc = main(["build-kernel", "--src", str(src), "--out", str(tmp_path / "o"), "--continue"])
    assert rc == 4
    assert "no series was being applied here" in capsys.readouterr().err
