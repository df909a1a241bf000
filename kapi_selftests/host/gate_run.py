"""The gate's host side: get two kernels, run the same things on each, save the runs.

Stages (each returns a record; :mod:`kapi_selftests.gate.compare` judges them):

1. kernels -- prebuilt images, or built from a tree and a series with
   :func:`kapi_selftests.host.build.build_kernel` (same fragment for both, the
   base from a git worktree at the tree's commit, the patched kernel from
   another worktree with the series applied; both cached in the build dir);
2. one guest per kernel (:func:`run_kernel`) running, in order: a copy of
   ``/sys/kernel/debug/kapi`` and the kapi tracepoint formats into the output
   share, the probe (:mod:`kapi_selftests.gate.probe`: fixed call mix, timing,
   optional fixed-seed fuzz), then the in-guest suite;
3. the run directory is loaded as a :class:`~kapi_selftests.gate.record.KernelRun`.

Never judges (that is :mod:`kapi_selftests.gate.compare`) and never exits.
"""

from __future__ import annotations

import json
import logging
import re
import shlex
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from kapi_selftests.errors import BuildError, LostGuest
from kapi_selftests.gate.record import KernelRun, load_run
from kapi_selftests.host import build, initramfs, kernel, qemu, runner
from kapi_selftests.report import TestResult, format_ktap

__all__ = ["GateRunConfig", "guest_script", "run_kernel", "build_pair", "retry_keyword",
           "rerun_tests", "RUN_SUBDIR"]

log = logging.getLogger(__name__)

#: run_guests puts a single guest's output share here, under the kernel's work dir
RUN_SUBDIR = "guest"
_PROBE_ENTRY = ("import sys; from kapi_selftests.gate.probe import guest_main; "
                "sys.exit(guest_main(sys.argv[1:]))")


@dataclass(frozen=True, slots=True)
class GateRunConfig:
    """What runs on each kernel, and how the guest is set up.

    :param out: output directory (``base/``, ``patched/`` and the reports go here)
    :param seed: seed of the probe's sampled calls and of the fuzz run
    :param probe_calls: calls in the probe's fixed mix (at least its boundary table)
    :param fuzz_calls: calls of the fixed-seed fuzz run (0: none)
    :param timing_rounds: rounds of the timed mix (0: not timed)
    :param suite: run the in-guest suite
    :param keyword: pytest ``-k`` for the suite
    :param memory_mb: guest RAM
    :param timeout_s: whole-guest limit
    :param accel: kvm, tcg or auto
    """

    out: Path
    seed: int = 1
    probe_calls: int = 300
    fuzz_calls: int = 0
    timing_rounds: int = 2000
    suite: bool = True
    keyword: str | None = None
    memory_mb: int | None = None
    timeout_s: int | None = None
    accel: qemu.Accel = qemu.Accel.AUTO


def guest_script(cfg: GateRunConfig, python: str = sys.executable) -> runner.GuestSpec:
    """The guest command: copy specs and formats, run the probe (and fuzz), then the suite.

    Each stage's exit code goes to ``stage-<name>`` in the output share; the command
    itself exits 0 once every stage ran, so a missing status means the guest died.
    """
    o = initramfs.GUEST_OUT
    probe = [python, "-S", "-c", _PROBE_ENTRY, "--out", f"{o}/probe", "--seed", str(cfg.seed),
             "--calls", str(cfg.probe_calls), "--timing-rounds", str(cfg.timing_rounds)]
    if cfg.fuzz_calls:
        probe += ["--fuzz-calls", str(cfg.fuzz_calls), "--fuzz-out", f"{o}/fuzz"]
    lines = [
        f"O={o}",
        "K=/sys/kernel/debug/kapi",
        'if [ -r "$K/list" ]; then',
        '  mkdir -p "$O/kapi/specs" "$O/kapi/specs-json"',
        '  cat "$K/list" > "$O/kapi/list"',
        '  for d in specs specs-json; do',
        '    for f in "$K/$d"/*; do [ -r "$f" ] && cat "$f" > "$O/kapi/$d/${f##*/}"; done',
        "  done",
        "fi",
        'mkdir -p "$O/events"',
        "for e in kapi_syscall_enter kapi_syscall_exit; do",
        '  f=/sys/kernel/tracing/events/kapi/$e/format',
        '  [ -r "$f" ] && cat "$f" > "$O/events/$e.format"',
        "done",
        'echo "kapi-selftests: gate: probe"',
        f'{shlex.join(probe)} < /dev/null; echo $? > "$O/stage-probe"',
    ]
    if cfg.suite:
        suite = runner.guest_command(python=python, keyword=cfg.keyword).argv
        lines += ['echo "kapi-selftests: gate: suite"',
                  f'{shlex.join(suite)} < /dev/null > "$O/suite-stdout.txt"; '
                  'echo $? > "$O/stage-suite"']
    lines.append("exit 0")
    return runner.GuestSpec(argv=("/bin/sh", "-c", "\n".join(lines)),
                            env=runner.guest_env(python))


def _stages(out: Path) -> dict[str, int | None]:
    st: dict[str, int | None] = {}
    for f in sorted(out.glob("stage-*")):
        try:
            st[f.name.removeprefix("stage-")] = int(f.read_text().strip())
        except ValueError:
            st[f.name.removeprefix("stage-")] = None
    return st


def _guest_config(kimg: kernel.KernelImage, cfg: GateRunConfig) -> qemu.GuestConfig:
    gcfg = qemu.config_from_env(qemu.GuestConfig(kernel=kimg.image))
    changes: dict[str, object] = {"accel": cfg.accel}
    if cfg.memory_mb:
        changes["memory_mb"] = cfg.memory_mb
    if cfg.timeout_s:
        changes["timeout_s"] = cfg.timeout_s
    return replace(gcfg, **changes)  # type: ignore[arg-type]


def run_kernel(label: str, kernel_path: Path, cfg: GateRunConfig, *,
               echo: bool = False) -> KernelRun:
    """Boot ``kernel_path`` once, run the gate's guest script, and load what it left.

    A guest that never came back is not an exception here: it is recorded in
    ``guest.json`` (``lost``) and judged by the comparison.
    """
    kimg = kernel.find_kernel(kernel_path)
    work = cfg.out / label
    work.mkdir(parents=True, exist_ok=True)
    gcfg = _guest_config(kimg, cfg)
    spec = guest_script(cfg)
    req = runner.SuiteRequest(kernel=kimg, config=gcfg, guests=1, work_dir=work, keep=True)
    rundir = work / RUN_SUBDIR
    for stale in ("kapi", "events", "probe", "fuzz"):
        d = rundir / stale
        if d.is_dir():
            shutil.rmtree(d)
    for pattern in ("stage-*", "suite-retry-*.ktap"):
        for f in rundir.glob(pattern):
            f.unlink()
    health: dict[str, object] = {"status": None, "killed": None, "splats": [], "lost": None}
    results: Sequence[TestResult] = ()
    log.info("%s kernel: %s", label, kimg.image)
    try:
        _res, runs = runner.run_guests(req, echo=sys.stderr if echo else None,
                                       spec_for=lambda i, n: spec)
        run = runs[0]
        results = run.results
        health.update(status=run.status, killed=run.killed,
                      splats=[{"kind": s.kind.value, "summary": s.summary} for s in run.splats])
        if run.status is None and not run.killed:
            health["lost"] = (f"guest returned no status (QEMU exit {run.returncode}); "
                              f"console: {run.console}")
    except LostGuest as e:
        health["lost"] = str(e)
    rundir.mkdir(parents=True, exist_ok=True)
    health["stages"] = _stages(rundir)
    (rundir / "guest.json").write_text(json.dumps(health, indent=1) + "\n")
    (rundir / "kernel.json").write_text(json.dumps({"image": str(kimg.image),
                                                    "release": kimg.release}) + "\n")
    if results:
        (rundir / "suite.ktap").write_text(format_ktap(
            list(results), header=[f"{label} kernel: {kimg.image}"]))
    return load_run(rundir, label)


# What pytest's -k grammar takes as one identifier; "and", "or", "not" are its operators.
_K_IDENT = re.compile(r"[\w:+\-.\[\]\\/]+")
_K_OPERATORS = frozenset({"and", "or", "not"})


def retry_keyword(names: Sequence[str]) -> str:
    """A pytest ``-k`` expression that selects the tests with these node ids.

    ``-k`` matches each identifier as a case-insensitive substring of a test's name
    (``test_upstream[kapi-06-open with invalid mode returns EINVAL]``), and a node id's
    parameters can hold spaces and characters the grammar does not take: so each test is
    the ``and`` of its name's identifier runs, and the tests are ``or``-ed. This may
    select a few more tests than asked for; :func:`rerun_tests` keeps only the results of
    the named ones.
    """
    exprs = []
    for name in dict.fromkeys(names):
        item = name.rsplit("::", 1)[-1]
        tokens = [t for t in _K_IDENT.findall(item) if t.lower() not in _K_OPERATORS]
        if tokens:
            exprs.append("(" + " and ".join(tokens) + ")")
    return " or ".join(exprs)


def rerun_tests(label: str, kernel_path: Path, names: Sequence[str], cfg: GateRunConfig,
                round_: int, *, echo: bool = False) -> tuple[TestResult, ...]:
    """Boot ``kernel_path`` again and re-run just these suite tests (the in-guest runner
    with ``-k`` :func:`retry_keyword`); save their results as
    ``OUT/<label>/guest/suite-retry-<round_>.ktap`` (read by ``load_run``).

    A guest that does not come back leaves an empty round: the tests count as not
    re-run, never as passed.
    """
    kimg = kernel.find_kernel(kernel_path)
    work = cfg.out / label / f"retry-{round_}"
    work.mkdir(parents=True, exist_ok=True)
    spec = runner.guest_command(keyword=retry_keyword(names))
    req = runner.SuiteRequest(kernel=kimg, config=_guest_config(kimg, cfg), guests=1,
                              work_dir=work, keep=True)
    log.info("%s kernel: re-run %d of %d test(s): %s", label, round_, len(names),
             ", ".join(names))
    wanted = set(names)
    results: tuple[TestResult, ...] = ()
    try:
        _res, runs = runner.run_guests(req, echo=sys.stderr if echo else None,
                                       spec_for=lambda i, n: spec)
        results = tuple(r for r in runs[0].results if r.name in wanted)
        if runs[0].splats:
            log.warning("%s kernel: the re-run guest reported %s", label,
                        "; ".join(f"{s.kind.value}: {s.summary}" for s in runs[0].splats))
    except LostGuest as e:
        log.warning("%s kernel: re-run %d lost: %s", label, round_, e)
    rundir = cfg.out / label / RUN_SUBDIR
    rundir.mkdir(parents=True, exist_ok=True)
    (rundir / f"suite-retry-{round_}.ktap").write_text(format_ktap(
        list(results), header=[f"{label} kernel: {kimg.image}: re-run {round_}"]))
    return results


def _git(src: Path, *args: str) -> str:
    return build._git(src, *args).stdout.strip()


def _worktree(src: Path, dest: Path, commit: str,
              patches: Sequence[build.Patch] = (), *, checkout: str | None = None) -> Path:
    """A detached worktree of ``src`` at ``commit`` (created at ``checkout``, default
    ``commit``: the tree's own HEAD when it already carries the series).

    An existing worktree is reused as it is when its HEAD is ``commit`` plus a prefix of
    ``patches`` -- the whole series, or part of it with a ``git am`` stopped for a person
    to fix: that work is never thrown away. Otherwise it is moved to ``commit``.
    """
    if (dest / ".git").exists():
        done = build._applied_prefix(dest, patches) if patches else 0
        below = build._git(dest, "rev-parse", "--verify", "-q", f"HEAD~{done}^{{commit}}",
                           check=False).stdout.strip()
        if below == commit and (patches or done == 0):
            return dest
        if build._am_in_progress(dest):
            build._git(dest, "am", "--abort")
        build._git(dest, "checkout", "-q", "--detach", checkout or commit)
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    build._git(src, "worktree", "add", "-q", "--detach", str(dest), checkout or commit)
    return dest


def _gate_resume_hint(wt: Path) -> str:
    files = build._patch_files(wt) if build._am_in_progress(wt) else []
    add = shlex.join(["git", "-C", str(wt), "add", "-f", "-A", "--", *files]) if files \
        else f"git -C {wt} add <fixed files>"
    return (f"to resume: fix the hunks of the *.rej files in {wt} by hand and delete them, "
            f"{add}, git -C {wt} am --continue, then run the same gate command again "
            f"(the worktree is reused); to give up: git -C {wt} am --abort, or drop the "
            f"worktree: git worktree remove --force {wt}")


def _apply_in_worktree(wt: Path, patches: Sequence[build.Patch]) -> None:
    # The series goes on before anything is built: a series that does not apply must
    # stop the gate at once, not after a base kernel build of half an hour or more.
    if build._applied_prefix(wt, patches) == len(patches) and not build._am_in_progress(wt):
        return
    try:
        build.apply_series(wt, patches)
    except BuildError as e:
        raise BuildError(str(e), hint=_gate_resume_hint(wt)) from None


def build_pair(src: Path, series: Sequence[Path], build_dir: Path, *, fragment: Path,
               jobs: int, base_image: Path | None = None) -> tuple[Path, Path]:
    """Build the base (tree as is) and the patched kernel (tree + series), same fragment.

    When the series is already the newest commits of the tree, the base is the commit
    below it and the patched tree is the tree's HEAD (as it is, hand-fixed hunks
    included). Both are built in git worktrees under ``build_dir/src`` so the tree
    itself is left alone. The series is applied before either kernel is built, so a
    series that does not apply stops at once. A build whose cache key (base commit,
    series, fragment: :func:`~kapi_selftests.host.build.cache_key`) matches the record
    in ``build_dir/base`` or ``build_dir/patched`` is reused without even a worktree.

    :param base_image: a prebuilt base kernel (then only the patched one is built)
    :return: the base and patched images
    :raises BuildError: the series did not apply, configuration or the build failed
    """
    src = src.resolve()
    if not (src / ".git").exists():
        build.git_init_tree(src)
    patches = build.read_series(series)
    if not patches:
        raise BuildError("the series holds no patch", hint="pass the mbox files of the series")
    applied = build._applied_prefix(src, patches)
    if applied not in (0, len(patches)):
        raise BuildError(f"{src}: HEAD has {applied} of the {len(patches)} patches of the "
                         "series", hint="pass a tree without the series, or with all of it")
    head = _git(src, "rev-parse", "HEAD")
    base_commit = _git(src, "rev-parse", f"HEAD~{applied}" if applied else "HEAD")
    fragment_bytes = fragment.read_bytes() if fragment.is_file() else b""
    base_out, patched_out = build_dir / "base", build_dir / "patched"
    patched_key = build.cache_key(f"git:{base_commit}", [p.read_bytes() for p in series],
                                  fragment_bytes)
    # the patched tree is known before any worktree only when the tree carries the series
    # (its worktree is HEAD as committed: the tree's own uncommitted edits stay out)
    patched_image = build.cached_image(patched_out, patched_key,
                                       _git(src, "rev-parse", "HEAD^{tree}") if applied
                                       else None)
    patched_src: Path | None = None
    if patched_image is not None:
        log.info("patched kernel: cached %s (key %s)", patched_image, patched_key[:12])
    else:
        patched_src = _worktree(src, build_dir / "src" / "patched", base_commit, patches,
                                checkout=head if applied else None)
        log.info("patched kernel: %s at %s + %d patches", patched_src, base_commit[:12],
                 len(patches))
        _apply_in_worktree(patched_src, patches)
    if base_image is None:
        base_key = build.cache_key(f"git:{base_commit}", [], fragment_bytes)
        base_image = build.cached_image(base_out, base_key,
                                        _git(src, "rev-parse", f"{base_commit}^{{tree}}"))
        if base_image is not None:
            log.info("base kernel: cached %s (key %s)", base_image, base_key[:12])
        else:
            base_src = _worktree(src, build_dir / "src" / "base", base_commit)
            log.info("base kernel: %s at %s", base_src, base_commit[:12])
            _say_building("base", base_src, base_out)
            base_image = build.build_kernel(base_src, base_out, fragment=fragment,
                                            jobs=jobs).image
    if patched_image is None:
        assert patched_src is not None
        _say_building("patched", patched_src, patched_out)
        patched_image = build.build_kernel(patched_src, patched_out, series=series,
                                           fragment=fragment, jobs=jobs).image
    return base_image, patched_image


def _say_building(which: str, src: Path, out: Path) -> None:
    # A kernel build takes tens of minutes on a small machine: say so on stderr (stdout
    # carries the report), with where its log goes, whatever the log level.
    print(f"gate: building the {which} kernel from {src} in {out} (make output: "
          f"{out / build.BUILD_LOG}); this takes a while unless the build is cached",
          file=sys.stderr, flush=True)
