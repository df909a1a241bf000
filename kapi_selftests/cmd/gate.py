"""``kapi-selftests gate``: does a KAPI series regress KAPI behaviour? One verdict.

Three ways in, one comparison:

* ``--src TREE --series MBOX...``: build the base (the tree) and the patched
  kernel (tree + series) with the same fragment, then run both;
* ``--base-kernel A --kernel B``: prebuilt images (CI that builds elsewhere);
  ``--src/--series`` with ``--base-kernel`` builds only the patched one;
* ``--compare BASE_DIR PATCHED_DIR``: judge two saved run directories again,
  no kernel needed (the runs of an earlier gate are under ``OUT/base/guest``
  and ``OUT/patched/guest``).

Writes ``OUT/gate.md`` (printed on stdout too), ``OUT/gate.json`` and, with
``--junit``, JUnit XML. Exit codes: 0 no regression, 1 regression (a patched
kernel that oopses, warns, panics or hangs where the base did not included),
2 usage, 4 could not judge (the series did not apply, a build failed, the base
kernel itself crashed), with the reason.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from pathlib import Path
from typing import Any

from kapi_selftests.cmd.argtypes import add_accel
from kapi_selftests.cmd.build_kernel import (
    DEFAULT_FRAGMENT,
    PathArgumentError,
    existing_file,
    source_tree,
)
from kapi_selftests.errors import BuildError, LostGuest, MissingFeature, UsageError
from kapi_selftests.gate.compare import GateVerdict, compare, retry_candidates, unjudged
from kapi_selftests.gate.record import KernelRun, load_run
from kapi_selftests.gate.render import to_json, to_junit, to_markdown
from kapi_selftests.report import Outcome

log = logging.getLogger(__name__)


def _existing(value: str) -> Path:
    p = Path(value)
    if not p.exists():
        raise PathArgumentError(f"{value}: no such file or directory")
    return p


def _count(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise PathArgumentError(f"{value}: not a number") from None
    if n < 0:
        raise PathArgumentError(f"{value}: must be 0 or more")
    return n


def _abs_file(value: str) -> Path:
    # absolute: the series is applied in a worktree of the source tree
    return existing_file(value).resolve()


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of ``gate``."""
    src = p.add_argument_group("kernels")
    src.add_argument("--src", metavar="TREE", type=source_tree,
                     help="kernel tree: the base is the tree as is, the patched kernel the "
                          "tree plus --series (built in git worktrees, cached)")
    src.add_argument("--series", metavar="MBOX", type=_abs_file, action="extend", nargs="+",
                     default=[], help="patch mbox files (or one b4 .mbx) of the series, in "
                                      "order (repeatable)")
    src.add_argument("--base-kernel", metavar="PATH", type=_existing,
                     help="prebuilt base kernel (bzImage, build dir, PVH vmlinux)")
    src.add_argument("--kernel", metavar="PATH", type=_existing,
                     help="prebuilt patched kernel (with --base-kernel)")
    src.add_argument("--compare", nargs=2, metavar=("BASE_DIR", "PATCHED_DIR"), type=_existing,
                     help="judge two saved run directories; boots nothing")
    b = p.add_argument_group("build (with --src)")
    b.add_argument("--config", metavar="FRAGMENT", type=existing_file, default=None,
                   help=f"Kconfig fragment for both kernels (default {DEFAULT_FRAGMENT})")
    b.add_argument("--build-dir", metavar="DIR", type=Path,
                   help="worktrees and build output (default OUT/build); keep it between "
                        "runs to reuse the builds")
    b.add_argument("-j", "--jobs", type=_count, default=os.cpu_count() or 1,
                   help="parallel make jobs")
    r = p.add_argument_group("what runs on each kernel")
    r.add_argument("--seed", type=int, default=1, help="seed of the sampled and fuzzed calls")
    r.add_argument("--probe-calls", type=_count, default=300,
                   help="calls of the fixed call mix (default 300; at least its boundary "
                        "table)")
    r.add_argument("--fuzz-calls", type=_count, default=200,
                   help="calls of a fixed-seed fuzz run on each kernel (default 200; 0: none)")
    r.add_argument("--timing-rounds", type=_count, default=2000,
                   help="rounds of the timed call mix (0: no cost figure)")
    r.add_argument("--no-suite", dest="suite", action="store_false",
                   help="skip the in-guest suite")
    r.add_argument("-k", dest="keyword", help="pytest -k expression for the suite")
    r.add_argument("--retries", type=_count, default=1, metavar="N",
                   help="re-run a suite test that failed on one kernel only up to N times "
                        "there (one guest per round) before calling it a regression or a "
                        "fix; passed on a re-run: flaky (default 1; 0: no re-run)")
    r.add_argument("--memory-mb", type=_count, help="guest RAM")
    r.add_argument("--timeout-s", type=_count, help="kill a guest after this long")
    add_accel(r)
    r.add_argument("--console", action="store_true", help="echo the guest consoles on stderr")
    o = p.add_argument_group("output")
    o.add_argument("--out", metavar="DIR", type=Path, default=Path("gate-out"),
                   help="output directory (default ./gate-out)")
    o.add_argument("--junit", metavar="FILE", type=Path, help="also write JUnit XML here")


def _check(args: argparse.Namespace) -> str:
    if args.compare:
        if args.src or args.series or args.base_kernel or args.kernel:
            raise UsageError("--compare judges saved runs: no --src, --series or kernels")
        return "compare"
    if args.kernel:
        if args.src or args.series:
            raise UsageError("--kernel is the patched kernel: give it or --src/--series, "
                             "not both")
        if not args.base_kernel:
            raise UsageError("--kernel needs --base-kernel",
                             hint="gate --base-kernel A --kernel B")
        return "prebuilt"
    if args.src:
        if not args.series:
            raise UsageError("--src needs the series to apply (--series MBOX)")
        return "build"
    raise UsageError("nothing to compare",
                     hint="gate --src TREE --series MBOX..., gate --base-kernel A --kernel B, "
                          "or gate --compare BASE_DIR PATCHED_DIR")


def _verdict(args: argparse.Namespace, mode: str) -> GateVerdict:
    if mode == "compare":
        base_dir, patched_dir = args.compare
        return compare(load_run(base_dir, "base"), load_run(patched_dir, "patched"))
    # host side: the CLI imports every subcommand at start, in the guest too
    from kapi_selftests.host import gate_run, kernel, qemu

    base_image: Path | None = args.base_kernel
    patched_image: Path | None = args.kernel
    if mode == "build":
        fragment: Path = args.config or DEFAULT_FRAGMENT
        try:
            base_image, patched_image = gate_run.build_pair(
                args.src, args.series, args.build_dir or args.out / "build",
                fragment=fragment, jobs=max(args.jobs, 1), base_image=base_image)
        except BuildError as e:
            return unjudged(f"build: {e}", hints=(e.hint,) if e.hint else ())
    assert base_image is not None and patched_image is not None
    cfg = gate_run.GateRunConfig(
        out=args.out, seed=args.seed, probe_calls=args.probe_calls, fuzz_calls=args.fuzz_calls,
        timing_rounds=args.timing_rounds, suite=args.suite, keyword=args.keyword,
        memory_mb=args.memory_mb or None, timeout_s=args.timeout_s or None,
        accel=qemu.Accel(args.accel))
    if cfg.accel is qemu.Accel.AUTO:
        # One accelerator for both kernels: the timings must be comparable.
        try:
            accel = qemu.choose_accel(
                qemu.GuestConfig(kernel=kernel.find_kernel(Path(base_image)).image),
                qemu.find_qemu())
        except MissingFeature as e:
            return unjudged(str(e), hints=(e.hint,) if e.hint else ())
        cfg = dataclasses.replace(cfg, accel=accel)
    runs = []
    images = {"base": base_image, "patched": patched_image}
    for label, image in images.items():
        try:
            runs.append(gate_run.run_kernel(label, image, cfg, echo=args.console))
        except (MissingFeature, LostGuest) as e:
            return unjudged(f"{label} kernel: {e}", base=str(base_image),
                            patched=str(patched_image), hints=(e.hint,) if e.hint else ())
    notes: list[str] = []
    if args.retries and cfg.suite:
        notes = _rerun_one_sided_failures(runs, images, cfg, args.retries, args.console)
        runs = [load_run(cfg.out / r.label / gate_run.RUN_SUBDIR, r.label) for r in runs]
    v = compare(runs[0], runs[1])
    return dataclasses.replace(v, notes=v.notes + tuple(notes)) if notes else v


#: more one-sided failures than this on a kernel: a real breakage, not flakiness; the
#: re-runs would only cost boots
MAX_RETRIED_TESTS = 20


def _rerun_one_sided_failures(runs: list[KernelRun], images: dict[str, Path], cfg: Any,
                              retries: int, echo: bool) -> list[str]:
    """Re-run, on the kernel where they failed, the suite tests that failed on one kernel
    only: up to ``retries`` rounds, each round the tests that have not passed yet."""
    # host side: the CLI imports every subcommand at start, in the guest too
    from kapi_selftests.host import gate_run

    notes: list[str] = []
    for label, names in retry_candidates(runs[0], runs[1]).items():
        todo = list(names)
        if len(todo) > MAX_RETRIED_TESTS:
            notes.append(f"{label}: {len(todo)} tests failed on this kernel only: not re-run "
                         f"(more than {MAX_RETRIED_TESTS})")
            continue
        for n in range(1, retries + 1):
            if not todo:
                break
            try:
                got = gate_run.rerun_tests(label, images[label], todo, cfg, n, echo=echo)
            except (MissingFeature, LostGuest) as e:
                notes.append(f"{label}: re-run {n} did not run: {e}")
                break
            passed = {r.name for r in got if r.outcome is Outcome.PASS}
            todo = [t for t in todo if t not in passed]
    return notes


def run(args: argparse.Namespace) -> int:
    """Run the gate; print the Markdown report; return 0, 1 or 4."""
    mode = _check(args)
    verdict = _verdict(args, mode)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    md = to_markdown(verdict)
    (out / "gate.md").write_text(md)
    (out / "gate.json").write_text(to_json(verdict))
    if args.junit:
        args.junit.write_text(to_junit(verdict))
    sys.stdout.write(md)
    log.info("reports: %s, %s", out / "gate.md", out / "gate.json")
    return verdict.exit_code
