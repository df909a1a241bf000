"""Build a guest kernel: apply a patch series, configure from a fragment, make bzImage.

Owns the kernel-tree side of ``kapi-selftests build-kernel``: ``git am`` of a
series (stopping at the first patch that does not apply and leaving the tree
for a person to fix, as ``git am`` does), merging ``vm/kapi.config`` into
``defconfig``, checking that every requested option the tree knows survived
``olddefconfig``, ``make bzImage`` out of tree, and a cache keyed by the
inputs. It never boots anything and never exits: failures are
:class:`~kapi_selftests.errors.BuildError` with a one-line message and a hint.
"""

from __future__ import annotations

import email
import email.header
import email.message
import hashlib
import json
import logging
import mailbox
import os
import re
import shlex
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from kapi_selftests.errors import BuildError

__all__ = [
    "BuildResult",
    "ConfigCheck",
    "ConfigMismatch",
    "PatchFailure",
    "Patch",
    "build_kernel",
    "plan_commands",
    "parse_config",
    "check_config",
    "scan_kconfig",
    "KconfigIndex",
    "first_error",
    "cache_key",
    "read_series",
    "strip_debian_gitignore",
    "apply_series",
    "git_init_tree",
]

log = logging.getLogger(__name__)

# Image produced by `make bzImage`, relative to the build directory (x86 only).
IMAGE_PATH = Path("arch/x86/boot/bzImage")
# Build state kept in the output directory: the cache record of the last build.
STATE_FILE = "kapi-build.json"
BUILD_LOG = "build.log"

# Identity used for commits we make ourselves when git has none configured.
_GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "kapi-selftests",
    "GIT_AUTHOR_EMAIL": "kapi-selftests@localhost",
    "GIT_COMMITTER_NAME": "kapi-selftests",
    "GIT_COMMITTER_EMAIL": "kapi-selftests@localhost",
}


@dataclass(frozen=True, slots=True)
class Patch:
    """One patch of a series, as ``git am`` will see it."""

    source: Path        # the mbox file it comes from
    subject: str        # subject as git am records it ("[PATCH v4 01/11]" stripped)


@dataclass(frozen=True, slots=True)
class ConfigMismatch:
    """A requested option the tree knows that did not end up as requested."""

    name: str                       # "CONFIG_KAPI_RUNTIME_CHECKS"
    wanted: str                     # "y"
    got: str | None                 # None: not set
    unmet: tuple[str, ...] = ()     # "depends on DEBUG_KERNEL (not set)", ...

    def describe(self) -> str:
        text = f"{self.name}={self.wanted} but got {self.got if self.got else 'not set'}"
        if self.unmet:
            text += " (" + "; ".join(self.unmet) + ")"
        return text


@dataclass(frozen=True, slots=True)
class ConfigCheck:
    """Result of comparing a fragment with the final ``.config``."""

    mismatched: tuple[ConfigMismatch, ...]
    absent: tuple[str, ...]        # options the tree does not know at all (e.g. pre-KAPI base)

    @property
    def ok(self) -> bool:
        return not self.mismatched


@dataclass(frozen=True, slots=True)
class PatchFailure:
    """Where ``git am`` stopped."""

    number: int                     # 1-based index in the series being applied
    total: int
    subject: str
    hunks: tuple[str, ...]          # "Makefile: @@ -2126,6 +2126,7 @@", "x.c: conflict"

    def describe(self) -> str:
        return (f"patch {self.number}/{self.total} '{self.subject}' did not apply: "
                + ", ".join(self.hunks))


@dataclass(frozen=True, slots=True)
class BuildResult:
    """A built (or cached) kernel image."""

    image: Path                     # OUT/arch/x86/boot/bzImage
    config: Path                    # OUT/.config
    key: str                        # cache key (sha256 hex)
    cached: bool                    # True: nothing was run
    elapsed_s: float
    applied: tuple[str, ...] = ()   # subjects of the patches applied by this call
    absent: tuple[str, ...] = ()    # fragment options this tree does not know


# ---------------------------------------------------------------------------
# Pure helpers: config text, Kconfig index, build logs, cache keys


_SET_RE = re.compile(r"^(CONFIG_[A-Za-z0-9_]+)=(.*)$")
_UNSET_RE = re.compile(r"^# (CONFIG_[A-Za-z0-9_]+) is not set$")


def parse_config(text: str) -> dict[str, str]:
    """Parse ``.config`` or fragment text.

    :return: ``{"CONFIG_X": value}``; ``# CONFIG_X is not set`` gives ``"n"``.
    """
    values: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if m := _SET_RE.match(line):
            values[m.group(1)] = m.group(2)
        elif m := _UNSET_RE.match(line):
            values[m.group(1)] = "n"
    return values


@dataclass(frozen=True, slots=True)
class KconfigIndex:
    """Symbols a tree's Kconfig files define, with their ``depends on`` expressions."""

    symbols: frozenset[str]                         # without the CONFIG_ prefix
    depends: Mapping[str, tuple[str, ...]]


_KCONFIG_ENTRY_RE = re.compile(r"^\s*(?:menu)?config\s+([A-Za-z0-9_]+)\s*$")
_KCONFIG_HELP_RE = re.compile(r"^\s*(?:help|---help---)\s*$")
_KCONFIG_DEPENDS_RE = re.compile(r"^\s*depends\s+on\s+(.+?)\s*(?:#.*)?$")
# Keywords that end the attribute block of a config entry.
_KCONFIG_BLOCK_END_RE = re.compile(
    r"^\s*(?:menu|endmenu|choice|endchoice|if|endif|comment|source|rsource|osource|"
    r"orsource|mainmenu)\b")


def scan_kconfig(texts: Iterable[str]) -> KconfigIndex:
    """Index ``config``/``menuconfig`` symbols and their ``depends on`` lines.

    :param texts: contents of Kconfig files.
    """
    symbols: set[str] = set()
    depends: dict[str, list[str]] = {}
    for text in texts:
        current: str | None = None
        help_indent: int | None = -1    # -1: not in help text; None: help, indent unknown
        for line in text.splitlines():
            if help_indent != -1:
                # Help text runs while lines stay at least as indented as its first line.
                if not line.strip():
                    continue
                indent = len(line.expandtabs(8)) - len(line.expandtabs(8).lstrip())
                if help_indent is None:
                    help_indent = indent
                    continue
                if indent >= help_indent:
                    continue
                help_indent = -1
            if _KCONFIG_HELP_RE.match(line):
                help_indent = None
            elif m := _KCONFIG_ENTRY_RE.match(line):
                current = m.group(1)
                symbols.add(current)
                depends.setdefault(current, [])
            elif _KCONFIG_BLOCK_END_RE.match(line):
                current = None
            elif current is not None and (m := _KCONFIG_DEPENDS_RE.match(line)):
                depends[current].append(m.group(1))
    return KconfigIndex(frozenset(symbols), {k: tuple(v) for k, v in depends.items()})


def _read_kconfig_index(src: Path) -> KconfigIndex:
    texts: list[str] = []
    for root, dirs, files in os.walk(src):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            if name.startswith("Kconfig"):
                texts.append(Path(root, name).read_text(errors="replace"))
    return scan_kconfig(texts)


def _unmet_dependencies(symbol: str, index: KconfigIndex,
                        config: Mapping[str, str]) -> tuple[str, ...]:
    notes: list[str] = []
    for expr in index.depends.get(symbol, ()):
        unmet = [s for s in re.findall(r"\b[A-Z][A-Z0-9_]*\b", expr)
                 if s in index.symbols and config.get(f"CONFIG_{s}", "n") == "n"]
        if unmet:
            notes.append(f"depends on {expr}: {', '.join(unmet)} not set")
    return tuple(notes)


def check_config(fragment: Mapping[str, str], config: Mapping[str, str],
                 index: KconfigIndex) -> ConfigCheck:
    """Check that every fragment option the tree knows has its requested value.

    :param fragment: parsed fragment (:func:`parse_config`).
    :param config: parsed final ``.config``.
    :param index: the tree's Kconfig symbols; options outside it are *absent*, not errors.
    """
    mismatched: list[ConfigMismatch] = []
    absent: list[str] = []
    for name, wanted in fragment.items():
        symbol = name.removeprefix("CONFIG_")
        if symbol not in index.symbols:
            absent.append(name)
            continue
        got = config.get(name)
        if wanted == "n":
            if got in (None, "n"):
                continue
        elif got == wanted:
            continue
        mismatched.append(ConfigMismatch(
            name, wanted, None if got == "n" else got,
            _unmet_dependencies(symbol, index, config) if wanted != "n" else ()))
    return ConfigCheck(tuple(mismatched), tuple(absent))


_ERROR_RE = re.compile(r"(?:^|:\s?|\s)(?:fatal )?error:", re.IGNORECASE)
_MAKE_ERROR_RE = re.compile(r"^make(?:\[\d+\])?: \*\*\* ")


def first_error(log_text: str) -> str | None:
    """The first compiler/linker error line of a build log.

    Falls back to the first ``make: ***`` line when no line says ``error:``.
    """
    fallback: str | None = None
    for line in log_text.splitlines():
        if _ERROR_RE.search(line):
            return line.strip()
        if fallback is None and _MAKE_ERROR_RE.match(line):
            fallback = line.strip()
    return fallback


def cache_key(tree: str, series: Sequence[bytes], fragment: bytes) -> str:
    """Key of a build: tree identity, series contents (in order), fragment contents."""
    h = hashlib.sha256()
    h.update(b"kapi-build-v1\0")
    h.update(tree.encode() + b"\0")
    for patch in series:
        h.update(hashlib.sha256(patch).digest())
    h.update(b"\0")
    h.update(hashlib.sha256(fragment).digest())
    return h.hexdigest()


def _normalise_subject(subject: str) -> str:
    # What git mailinfo keeps: leading "Re:" and "[...]" tags go, whitespace folds.
    s = " ".join(subject.split())
    while True:
        m = re.match(r"^(?:re:\s*|\[[^]]*\]\s*)", s, re.IGNORECASE)
        if not m or not m.group(0):
            return s
        s = s[m.end():]


def _has_diff(msg: email.message.Message) -> bool:
    for part in msg.walk():
        body = part.get_payload(decode=True)
        if isinstance(body, bytes) and b"\ndiff --git " in b"\n" + body:
            return True
    return False


def _read_messages(path: Path) -> list[email.message.Message]:
    data = path.read_bytes()
    if not data.startswith(b"From "):
        # One bare RFC 822 message (as saved from a mail client or lore): git am takes it.
        return [email.message_from_bytes(data)] if data.strip() else []
    box = mailbox.mbox(str(path), create=False)
    try:
        return list(box)
    finally:
        box.close()


def read_series(paths: Sequence[Path]) -> tuple[Patch, ...]:
    """The patches of mbox files, in order; messages without a diff (cover letters) are
    left out.
    """
    patches: list[Patch] = []
    for path in paths:
        messages = _read_messages(path)
        if not messages:
            raise BuildError(f"{path}: no mail in this mbox",
                             hint="pass mbox files made by git format-patch or b4")
        for msg in messages:
            if _has_diff(msg):
                subject = str(email.header.make_header(
                    email.header.decode_header(str(msg.get("Subject", "")))))
                patches.append(Patch(path, _normalise_subject(subject)))
    return tuple(patches)


def strip_debian_gitignore(text: str) -> str:
    """Drop the block of a Debian kernel tarball's ``.gitignore`` that ignores everything
    at top level (``/*``, then ``!/debian/``), with the comment above it.
    """
    lines = text.splitlines()
    try:
        start = lines.index("/*")
    except ValueError:
        return text
    end = start + 1
    while end < len(lines) and lines[end].startswith("!"):
        end += 1
    while start > 0 and lines[start - 1].startswith("#"):
        start -= 1
    while start > 0 and not lines[start - 1].strip():
        start -= 1
    kept = lines[:start] + lines[end:]
    return "\n".join(kept) + "\n" if kept else ""


# ---------------------------------------------------------------------------
# External commands


def _run(argv: Sequence[str], *, cwd: Path | None = None, check: bool = True,
         env: Mapping[str, str] | None = None, log_file: Path | None = None,
         ) -> subprocess.CompletedProcess[str]:
    log.info("%s", shlex.join(argv))
    full_env = {**os.environ, **env} if env else None
    if log_file is not None:
        with log_file.open("w") as fh:
            proc = subprocess.run(list(argv), cwd=cwd, env=full_env, stdout=fh,
                                  stderr=subprocess.STDOUT, text=True, check=False)
        proc = subprocess.CompletedProcess(proc.args, proc.returncode, "", "")
    else:
        proc = subprocess.run(list(argv), cwd=cwd, env=full_env, capture_output=True,
                              text=True, check=False)
    if check and proc.returncode != 0:
        detail = (proc.stderr or proc.stdout or "").strip().splitlines()
        raise BuildError(f"{shlex.join(argv)} failed (exit {proc.returncode})"
                         + (f": {detail[0]}" if detail else ""),
                         hint="\n".join(detail[1:6]) or None)
    return proc


def _git(src: Path, *args: str, check: bool = True,
         env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return _run(("git", "-C", str(src), *args), check=check, env=env)


def _git_identity_env(src: Path) -> dict[str, str]:
    # git am and commit need a committer; supply one only when git has none.
    try:
        proc = subprocess.run(["git", "-C", str(src), "config", "user.email"],
                              capture_output=True, text=True, check=False)
    except FileNotFoundError as e:
        raise BuildError("git is not installed", hint="apt-get install git") from e
    if proc.returncode == 0 and proc.stdout.strip():
        return {}
    return dict(_GIT_IDENTITY)


def _is_git_repo(src: Path) -> bool:
    return (src / ".git").exists()


def _git_path(src: Path, name: str) -> Path:
    out = _git(src, "rev-parse", "--git-path", name).stdout.strip()
    p = Path(out)
    return p if p.is_absolute() else src / p


def _am_in_progress(src: Path) -> bool:
    return _is_git_repo(src) and _git_path(src, "rebase-apply").is_dir()


def git_init_tree(src: Path) -> None:
    """Make an extracted tarball a git repository with one commit (so ``git am`` works),
    first removing a Debian ``/*`` block from ``.gitignore`` (else nothing is staged).
    """
    gitignore = src / ".gitignore"
    if gitignore.is_file():
        text = gitignore.read_text()
        stripped = strip_debian_gitignore(text)
        if stripped != text:
            log.info("removing the top-level '/*' block from %s", gitignore)
            gitignore.write_text(stripped)
    _run(("git", "init", "-q", str(src)))
    env = _git_identity_env(src)
    # --force: the kernel's own rules ignore dotfiles (".*"), which upstream tracks
    # anyway (.gitignore, .kunitconfig, .clang-format); everything in a tarball is source.
    _git(src, "add", "--force", "-A")
    _git(src, "commit", "-q", "-m", f"import {src.name} (tarball)", env=env)


def _tree_identity(src: Path, below: int) -> str:
    """Identity of the tree under the last `below` commits (the series), plus local edits."""
    if _is_git_repo(src):
        commit = _git(src, "rev-parse", f"HEAD~{below}" if below else "HEAD").stdout.strip()
        diff = _git(src, "diff", "HEAD", "--binary").stdout
        ident = f"git:{commit}"
        if diff:
            ident += ":dirty:" + hashlib.sha256(diff.encode()).hexdigest()
        return ident
    # An extracted tarball: file names, sizes and mtimes (tar keeps mtimes).
    h = hashlib.sha256()
    for root, dirs, files in os.walk(src):
        dirs[:] = sorted(d for d in dirs if d != ".git")
        for name in sorted(files):
            p = Path(root, name)
            try:
                st = p.lstat()
            except OSError:
                continue
            h.update(f"{p.relative_to(src)}\0{st.st_size}\0{int(st.st_mtime)}\n".encode())
    return f"tree:{h.hexdigest()}"


def _applied_prefix(src: Path, patches: Sequence[Patch]) -> int:
    """How many leading patches of the series are the newest commits of HEAD."""
    if not patches or not _is_git_repo(src):
        return 0
    proc = _git(src, "log", f"-n{len(patches)}", "--format=%s", check=False)
    newest_first = [_normalise_subject(s) for s in proc.stdout.splitlines()]
    for k in range(min(len(patches), len(newest_first)), 0, -1):
        if list(reversed(newest_first[:k])) == [p.subject for p in patches[:k]]:
            return k
    return 0


def _has_history(src: Path) -> bool:
    proc = _git(src, "rev-list", "--count", "HEAD", check=False)
    return proc.returncode == 0 and proc.stdout.strip().isdigit() and int(proc.stdout) > 1


_REJ_HUNK_RE = re.compile(r"^@@ .* @@")


def _failed_hunks(src: Path) -> tuple[str, ...]:
    """After a failed ``git am``: the files/hunks of the current patch that failed.

    Leaves ``.rej`` files (``git apply --reject`` of the patch) or, after a ``-3``
    merge, the conflict markers, for a person to fix.
    """
    unmerged = _git(src, "diff", "--name-only", "--diff-filter=U", check=False).stdout.split()
    if unmerged:
        return tuple(f"{name}: conflict markers" for name in dict.fromkeys(unmerged))
    patch = _git_path(src, "rebase-apply") / "patch"
    before = set(_untracked_rejects(src))
    proc = _run(("git", "-C", str(src), "apply", "--reject", "--whitespace=nowarn",
                 str(patch)), check=False)
    hunks: list[str] = []
    for rej in _untracked_rejects(src):
        if rej in before:
            continue
        target = rej.removesuffix(".rej")
        for line in (src / rej).read_text(errors="replace").splitlines():
            if _REJ_HUNK_RE.match(line):
                hunks.append(f"{target}: {line.split(' @@')[0]} @@")
    for line in proc.stderr.splitlines():
        # Files the patch could not touch at all (missing, already there).
        if line.startswith("error: ") and any(
                s in line for s in ("No such file", "does not exist", "already exists")):
            hunks.append(line.removeprefix("error: "))
    if not hunks:
        hunks = [line.removeprefix("error: ") for line in proc.stderr.splitlines()
                 if line.startswith("error: ")][:3] or ["see git am --show-current-patch"]
    return tuple(hunks)


def _patch_files(src: Path) -> list[str]:
    # Paths the patch of the stopped git am touches (what must be staged to continue).
    patch = _git_path(src, "rebase-apply") / "patch"
    proc = _git(src, "apply", "--numstat", str(patch), check=False)
    return [line.split("\t", 2)[2] for line in proc.stdout.splitlines() if line.count("\t") >= 2]


def _untracked_rejects(src: Path) -> list[str]:
    return _git(src, "ls-files", "--others", "--", "*.rej", check=False).stdout.split()


def _stopped_am(src: Path, patches: Sequence[Patch], applied: int) -> BuildError:
    # A git am stopped earlier (by us, or by a hand `git am --continue` that failed
    # again): name the patch and, on a clean tree, leave its failed hunks as .rej files
    # as the first stop did, so the hint below is true.
    n = applied + 1
    subject = patches[applied].subject if applied < len(patches) else "?"
    dirty = [ln for ln in _git(src, "status", "--porcelain", check=False).stdout.splitlines()
             if not ln.startswith("??")]
    where = f"{src}: a git am is in progress, stopped at patch {n}/{len(patches)} '{subject}'"
    rejects = _untracked_rejects(src)
    if dirty or rejects:  # a person is fixing it: leave the tree alone
        state = ", ".join(filter(None, [f"{len(dirty)} changed file(s)" if dirty else "",
                                        "left: " + " ".join(rejects) if rejects else ""]))
        return BuildError(f"{where} ({state})",
                          hint="finish the fix (apply the hunks of the *.rej files, delete "
                               "them), stage what the patch touches: " + shlex.join(
                              ["git", "-C", str(src), "add", "-f", "-A", "--",
                               *_patch_files(src)]) + ", then --continue "
                          "(or git am --abort to start over)")
    failure = PatchFailure(n, len(patches), subject, _failed_hunks(src))
    return BuildError(failure.describe() + f" (tree left in {src})",
                      hint="apply the hunks of the *.rej files by hand, delete them, stage "
                           "what the patch touches: " + shlex.join(
                               ["git", "-C", str(src), "add", "-f", "-A", "--",
                                *_patch_files(src)]) + ", then --continue "
                           "(or git am --abort to start over)")


_SERIES_FILE = "kapi-selftests-series"  # in the tree's git directory, beside git am's state


def save_series(src: Path, series: Sequence[Path]) -> None:
    """Remember the series being applied to ``src`` (absolute paths), so that
    ``--continue`` resumes it without ``--series``, as ``git am --continue`` does.
    """
    _git_path(src, _SERIES_FILE).write_text("".join(f"{p}\n" for p in series))


def saved_series(src: Path) -> list[Path]:
    """The series :func:`save_series` recorded for ``src`` (empty: none)."""
    if not _is_git_repo(src):
        return []
    try:
        text = _git_path(src, _SERIES_FILE).read_text()
    except OSError:
        return []
    return [Path(line) for line in text.splitlines() if line]


def apply_series(src: Path, patches: Sequence[Patch], *, resume: bool = False) -> tuple[str, ...]:
    """Apply the patches of a series not yet on HEAD with ``git am``.

    Stops at the first patch that does not apply: raises :class:`BuildError` naming
    the patch and its failed files/hunks, leaving the tree mid-``git am`` with
    ``.rej`` files (or conflict markers) for a person to fix, ``git add``, then
    resume with ``resume=True`` (``git am --continue``).

    :return: subjects of the patches this call applied.
    """
    env = _git_identity_env(src)
    in_progress = _am_in_progress(src)
    already = _applied_prefix(src, patches)
    if resume:
        if not in_progress:
            raise BuildError(f"{src}: no git am in progress, nothing to continue",
                             hint="run build-kernel without --continue")
        left = _untracked_rejects(src)
        if left:
            raise BuildError(f"{src}: .rej files left: {', '.join(left)}",
                             hint="apply those hunks by hand, delete the .rej files, "
                                  "git add the fixed files, then --continue")
        proc = _git(src, "am", "--continue", check=False, env=env)
    elif in_progress:
        raise _stopped_am(src, patches, already)
    elif already == len(patches):
        return ()
    else:
        todo = patches[already:]
        sources = list(dict.fromkeys(p.source for p in todo))
        if already and any(p.source == todo[0].source for p in patches[:already]):
            raise BuildError(f"{todo[0].source}: partly applied already (up to "
                             f"'{patches[already - 1].subject}')",
                             hint="pass one mbox per patch, or reset the tree to its base")
        argv = ["am"]
        if _has_history(src):
            argv.append("-3")
        proc = _git(src, *argv, *map(str, sources), check=False, env=env)
    head_after = _applied_prefix(src, patches)
    if proc.returncode != 0 or _am_in_progress(src):
        if not _am_in_progress(src):
            detail = (proc.stderr or proc.stdout).strip().splitlines()
            raise BuildError(f"git am failed in {src}: " + (detail[0] if detail else "?"))
        said = proc.stdout + proc.stderr
        if resume and "forget to use 'git add'" in said:
            raise BuildError(f"{src}: the fixes are not staged (git am --continue: no changes)",
                             hint=f"git -C {src} add <fixed files>, then --continue")
        failure = PatchFailure(head_after + 1, len(patches), patches[head_after].subject,
                               _failed_hunks(src))
        files = _patch_files(src)
        raise BuildError(failure.describe() + f" (tree left in {src})",
                         hint="apply the hunks of the *.rej files by hand, delete them, stage "
                              "what the patch touches: "
                              + shlex.join(["git", "-C", str(src), "add", "-f", "-A", "--",
                                            *files])
                              + ", then build-kernel --continue (to give up: git am --abort, "
                                "git checkout -- ., remove the new files)")
    if head_after != len(patches):
        raise BuildError(f"{src}: git am finished but HEAD does not end with the series "
                         f"({head_after}/{len(patches)} found)",
                         hint="check git log; was a patch skipped?")
    return tuple(p.subject for p in patches[already:])


# ---------------------------------------------------------------------------
# The build


def tree_hash(src: Path) -> str | None:
    """What a build of ``src`` compiles: HEAD's tree object plus any local edits (git).

    The cache key names the base commit and the series; this also tells two trees
    apart whose series was applied with different hand fixes.
    """
    if not _is_git_repo(src):
        return None
    head = _git(src, "rev-parse", "HEAD^{tree}", check=False).stdout.strip()
    if not head:
        return None
    diff = _git(src, "diff", "HEAD", "--binary", check=False).stdout
    return head + (":dirty:" + hashlib.sha256(diff.encode()).hexdigest() if diff else "")


def cached_image(out: Path, key: str, tree: str | None) -> Path | None:
    """The image a build left in ``out`` for ``key`` and source ``tree``, if still there.

    A record that names its tree is used only for that tree (``tree`` None: not known
    yet, so not used); a record from before trees were recorded matches on the key.
    """
    state = _read_state(out)
    image = out / IMAGE_PATH
    if state.get("key") != key or not image.is_file() \
            or state.get("image_sha256") != _hash_file(image):
        return None
    recorded = state.get("tree")
    if recorded and recorded != tree:
        log.info("%s: the cached build is of another tree%s", out,
                 "" if tree is None else " (the series fixed up differently?)")
        return None
    return image


def _hash_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _read_state(out: Path) -> dict[str, str]:
    try:
        data = json.loads((out / STATE_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def _config_commands(src: Path, out: Path, fragment: Path) -> list[tuple[str, ...]]:
    return [
        ("make", "-C", str(src), f"O={out}", "defconfig"),
        (str(src / "scripts/kconfig/merge_config.sh"), "-m", "-O", str(out),
         str(out / ".config"), str(fragment)),
        ("make", "-C", str(src), f"O={out}", "olddefconfig"),
    ]


def _build_command(src: Path, out: Path, jobs: int) -> tuple[str, ...]:
    return ("make", "-C", str(src), f"O={out}", f"-j{jobs}", "bzImage")


def plan_commands(src: Path, out: Path, *, series: Sequence[Path] = (), fragment: Path,
                  jobs: int, resume: bool = False) -> tuple[tuple[str, ...], ...]:
    """The commands :func:`build_kernel` would run from the tree's current state
    (for ``--dry-run``); runs nothing but read-only git queries.
    """
    src, out, fragment = src.resolve(), out.resolve(), fragment.resolve()
    cmds: list[tuple[str, ...]] = []
    patches = read_series(series) if series else ()
    if series and not _is_git_repo(src):
        cmds += [("git", "init", "-q", str(src)),
                 ("git", "-C", str(src), "add", "--force", "-A"),
                 ("git", "-C", str(src), "commit", "-q", "-m", f"import {src.name} (tarball)")]
    if resume:
        cmds.append(("git", "-C", str(src), "am", "--continue"))
    elif patches:
        done = _applied_prefix(src, patches)
        if done < len(patches):
            three = ["-3"] if _is_git_repo(src) and _has_history(src) else []
            cmds.append(("git", "-C", str(src), "am", *three,
                         *dict.fromkeys(str(p.source) for p in patches[done:])))
    cmds += _config_commands(src, out, fragment)
    cmds.append(_build_command(src, out, jobs))
    return tuple(cmds)


def _configure(src: Path, out: Path, fragment: Path) -> ConfigCheck:
    for argv in _config_commands(src, out, fragment):
        _run(argv, cwd=src)
    wanted = parse_config(fragment.read_text())
    got = parse_config((out / ".config").read_text())
    check = check_config(wanted, got, _read_kconfig_index(src))
    if check.absent:
        log.info("options this tree does not know (left out): %s", " ".join(check.absent))
    if not check.ok:
        first, *rest = check.mismatched
        raise BuildError(
            f"config option did not survive olddefconfig: {first.describe()}"
            + (f" (+{len(rest)} more)" if rest else ""),
            hint="; ".join(m.describe() for m in rest[:5])
                 or "add the unmet dependencies to the fragment")
    return check


def build_kernel(src: Path, out: Path, *, series: Sequence[Path] = (), fragment: Path,
                 jobs: int, resume: bool = False) -> BuildResult:
    """Apply *series* to the tree *src*, configure it from *fragment*, build bzImage in *out*.

    A second call with the same tree, series and fragment returns the cached image at
    once. A patch that does not apply stops the build (see :func:`apply_series`);
    call again with ``resume=True`` once it is fixed.

    :param src: kernel source tree (git repository or extracted tarball).
    :param out: build directory (``make O=``); holds the image, ``.config``, the log.
    :param series: mbox files, in order.
    :param fragment: Kconfig fragment merged on top of ``defconfig``.
    :param jobs: ``make -j``.
    :raises BuildError: patch, config or compile failure.
    """
    start = time.monotonic()
    src, out, fragment = src.resolve(), out.resolve(), fragment.resolve()
    if not (src / "Makefile").is_file() or not (src / "Kconfig").is_file():
        raise BuildError(f"{src}: not a kernel source tree (no Makefile/Kconfig)",
                         hint="pass the top directory of the kernel sources with --src")
    if not fragment.is_file():
        raise BuildError(f"{fragment}: config fragment not found")
    series = [Path(p).resolve() for p in series]
    if resume and not series:
        series = saved_series(src)  # what the stopped git am was applying
    patches = read_series(series) if series else ()
    series_bytes = [p.read_bytes() for p in series]
    fragment_bytes = fragment.read_bytes()

    applied: tuple[str, ...] = ()
    if patches:
        if not _is_git_repo(src):
            git_init_tree(src)
        if resume or _applied_prefix(src, patches) < len(patches) or _am_in_progress(src):
            save_series(src, series)
            applied = apply_series(src, patches, resume=resume)
    elif resume:
        raise BuildError(f"{src}: --continue: no series was being applied here",
                         hint="pass the series again with --series")

    key = cache_key(_tree_identity(src, len(patches)), series_bytes, fragment_bytes)
    image = out / IMAGE_PATH
    tree = tree_hash(src)
    if cached_image(out, key, tree) is not None:
        log.info("cached: %s (key %s)", image, key[:12])
        return BuildResult(image, out / ".config", key, True, time.monotonic() - start,
                           applied, tuple(_read_state(out).get("absent", "").split()))

    out.mkdir(parents=True, exist_ok=True)
    check = _configure(src, out, fragment)
    build_log = out / BUILD_LOG
    log.info("build output goes to %s", build_log)
    proc = _run(_build_command(src, out, jobs), cwd=src, check=False, log_file=build_log)
    if proc.returncode != 0 or not image.is_file():
        line = first_error(build_log.read_text(errors="replace"))
        raise BuildError(f"kernel build failed: {line or f'make exit {proc.returncode}'}",
                         hint=f"full log: {build_log}")
    (out / STATE_FILE).write_text(json.dumps({
        "key": key, "image_sha256": _hash_file(image), "absent": " ".join(check.absent),
        **({"tree": tree} if tree else {}),
        "src": str(src), "fragment": str(fragment),
        "series": " ".join(str(p) for p in series)}, indent=1) + "\n")
    elapsed = time.monotonic() - start
    log.info("built %s in %.0f s", image, elapsed)
    return BuildResult(image, out / ".config", key, False, elapsed, applied, check.absent)
