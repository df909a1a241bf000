"""``kapi-selftests run``: the in-guest suite, in a QEMU guest (``--kernel``) or here (``--local``).

``--kernel PATH`` boots PATH (see :mod:`kapi_selftests.host.kernel` for what PATH
may be), runs ``run --local`` in the guest and prints the host's KTAP report;
``--local`` runs pytest in-process on ``tests/guest`` against the running kernel
(what the guest itself runs). Exit codes: 0 all passed, 1 a test failed or the
kernel oopsed/warned/panicked/hung, 2 usage error, 4 nothing could run or be judged.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import shlex
import sys
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kapi_selftests.cmd.argtypes import (
    add_accel,
    add_reference_specs,
    existing_dir,
    existing_path,
    guest_entry,
    positive_int,
)
from kapi_selftests.errors import KapiError, MissingFeature, UsageError
from kapi_selftests.host.initramfs import FIRST_TEST_MARKER
from kapi_selftests.report import (
    Outcome,
    TestResult,
    exit_code,
    format_ktap,
    format_ktap_unrun,
)

log = logging.getLogger(__name__)

DEFAULT_TESTS = Path(__file__).resolve().parents[2] / "tests" / "guest"








def _shard(s: str) -> tuple[int, int]:
    try:
        i, n = (int(x) for x in s.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shard {s!r}: expected I/N") from None
    if not 0 <= i < n:
        raise argparse.ArgumentTypeError(f"--shard {s}: need 0 <= I < N")
    return i, n


def _guests(s: str) -> int | str:
    return "auto" if s == "auto" else positive_int(s)


def add_arguments(p: argparse.ArgumentParser) -> None:
    where = p.add_mutually_exclusive_group()
    where.add_argument("--kernel", type=existing_path, metavar="PATH",
                       help="boot this kernel in QEMU: bzImage, build dir, PVH vmlinux, or a "
                            "directory where a kernel package was extracted (default: "
                            "KAPI_KERNEL)")
    where.add_argument("--local", action="store_true",
                       help="run the in-guest suite on the running kernel (needs root)")
    p.add_argument("--modules", type=existing_dir, metavar="DIR",
                   help="modules of a modular kernel (default: found next to the kernel or in "
                        "/lib/modules/<release>)")
    p.add_argument("--junit", type=Path, metavar="FILE", help="write JUnit XML here")
    p.add_argument("--ktap", type=Path, metavar="FILE", help="also write the KTAP report here")
    p.add_argument("--save-trace", type=Path, metavar="DIR",
                   help="keep the captured traces here (KAPI_SAVE_TRACE for the tests)")
    p.add_argument("--require-kapi", action="store_true",
                   default=os.environ.get("KAPI_STRICT") == "1",
                   help="fail instead of skip when the kernel has no kapi tracepoints")
    add_reference_specs(p)
    vm = p.add_argument_group("guest (with --kernel)")
    vm.add_argument("--memory-mb", type=positive_int,
                    help="guest RAM (default 2048, KAPI_MEMORY_MB)")
    vm.add_argument("--cpus", type=positive_int, help="vCPUs (default 1, KAPI_CPUS)")
    vm.add_argument("--timeout-s", type=positive_int,
                    help="kill the guest after this long (default 900, KAPI_TIMEOUT_S)")
    vm.add_argument("--progress-timeout-s", type=positive_int,
                    help="kill the guest after this long without console output (default 300)")
    vm.add_argument("--append", default="", metavar="CMDLINE",
                    help="extra kernel command line")
    vm.add_argument("--guests", type=_guests, metavar="N|auto",
                    help="boot N guests at once, each running a shard of the suite (default "
                         "auto: one per host core a guest keeps busy, at most 4; 1 with "
                         "--console)")
    vm.add_argument("--runner", choices=("qemu", "vng"), default="qemu",
                    help="boot with QEMU directly (default, faster) or with virtme-ng "
                         "(needs udev running)")
    vm.add_argument("--qemu-arg", dest="qemu_args", action="append", default=[],
                    metavar="ARG",
                    help="one more QEMU argument, as given (repeatable; --qemu-arg=-x for one "
                         "that starts with a dash; with --runner vng passed as --qemu-opts)")
    add_accel(vm)
    vm.add_argument("--no-pvh", dest="pvh", action="store_false",
                    help="boot the bzImage as is, not its inner vmlinux via PVH (the "
                         "default when the kernel has a PVH note: skips decompression)")
    vm.add_argument("--no-pyzip", dest="pyzip", action="store_false",
                    help="import the guest's Python packages over 9p, not from a zip in the "
                         "initramfs (the default; faster under TCG)")
    vm.add_argument("--work-dir", type=Path, metavar="DIR",
                    help="scratch directory for the guests' output (default: a temp dir, "
                         "removed when everything passed)")
    vm.add_argument("--console", action="store_true", help="echo the guest console on stderr")
    vm.add_argument("--dry-run", action="store_true",
                    help="print the QEMU command and exit")
    loc = p.add_argument_group("suite selection (--local; with --kernel, passed to the guest)")
    loc.add_argument("--tests", type=Path, default=DEFAULT_TESTS, help=argparse.SUPPRESS)
    loc.add_argument("--progress", type=Path, help=argparse.SUPPRESS)
    loc.add_argument("--shard", type=_shard, help="run only shard I of N (I/N)")
    loc.add_argument("--jobs", type=positive_int, help="pytest-xdist workers")
    loc.add_argument("-k", dest="keyword", help="pytest -k expression")


def run(args: argparse.Namespace) -> int:
    if args.local:
        return run_local(args)
    if args.kernel is None:
        env = os.environ.get("KAPI_KERNEL")
        if not env:
            raise UsageError("one of --kernel PATH or --local is required (or set KAPI_KERNEL)")
        args.kernel = Path(env)
    return run_kernel(args)


def guest_main(argv: Sequence[str]) -> int:
    """``run --local`` for the guest, without :mod:`kapi_selftests.cli`."""
    return guest_entry("kapi-selftests run", add_arguments, run, argv)


# --- on the host: boot a guest ---------------------------------------------------------

def _guest_config(args: argparse.Namespace, kernel_image: Path) -> Any:
    # host side: the CLI imports every subcommand at start, in the guest too
    from kapi_selftests.host import qemu

    try:
        append = tuple(shlex.split(args.append))
    except ValueError as e:
        raise UsageError(f"--append {args.append!r}: {e}") from e
    cfg = qemu.config_from_env(qemu.GuestConfig(kernel=kernel_image))
    flags = {key: getattr(args, key) for key in ("memory_mb", "cpus", "timeout_s",
                                                  "progress_timeout_s")
             if getattr(args, key) is not None}
    return dataclasses.replace(cfg, append=append, accel=qemu.Accel(args.accel),
                               pvh=args.pvh, pyzip=args.pyzip,
                               extra_qemu=tuple(args.qemu_args), **flags)


def run_kernel(args: argparse.Namespace) -> int:
    # host side: the CLI imports every subcommand at start, in the guest too
    from kapi_selftests.host import kernel, runner

    kimg = kernel.find_kernel(args.kernel, args.modules)
    cfg = _guest_config(args, kimg.image)
    if args.dry_run:
        out = args.work_dir or Path(tempfile.mkdtemp(prefix="kapi-dry-"))
        out.mkdir(parents=True, exist_ok=True)
        cfg = dataclasses.replace(cfg, out_dir=out)
        spec = runner.guest_command(require_kapi=args.require_kapi, keyword=args.keyword)
        _cfg, argv = runner.prepare(kimg, cfg, spec, runner=args.runner)
        print(shlex.join(argv))
        return 0
    guests = None if args.guests in (None, "auto") else int(args.guests)
    if args.guests is None and args.console:
        guests = 1  # one console to echo
    req = runner.SuiteRequest(kernel=kimg, config=cfg, guests=guests,
                              require_kapi=args.require_kapi, save_trace=args.save_trace,
                              runner=args.runner, work_dir=args.work_dir,
                              keyword=args.keyword)
    header = [f"kernel: {kimg.image}" + (f" ({kimg.release})" if kimg.release else "")]
    try:
        results, runs = runner.run_guests(req, echo=sys.stderr if args.console else None)
    except KapiError as e:
        _report_unrun(str(e), args, header)
        raise
    for i, r in enumerate(runs):
        t = r.timings
        header.append(f"guest{i}: boot-to-init {t.init_s} s, boot-to-first-test "
                      f"{t.first_test_s} s, total {t.total_s} s, console {r.console}")
    return _report(results, args, header)


def _report(results: list[TestResult], args: argparse.Namespace, header: list[str]) -> int:
    text = format_ktap(results, header=header)
    sys.stdout.write(text)
    sys.stdout.flush()
    if args.ktap:
        args.ktap.write_text(text)
    if args.junit and not args.local:
        # host side: the CLI imports every subcommand at start, in the guest too
        from kapi_selftests.host.runner import write_junit
        write_junit(results, args.junit)
    return exit_code(results)


def _report_unrun(reason: str, args: argparse.Namespace, header: list[str]) -> None:
    """Nothing came back from any guest: still a KTAP document and a JUnit file, which
    say why (the caller then reports the error itself, with its exit code).
    """
    text = format_ktap_unrun(f"could not run: {reason}", header=header)
    sys.stdout.write(text)
    sys.stdout.flush()
    if args.ktap:
        args.ktap.write_text(text)
    if args.junit:
        # host side: the CLI imports every subcommand at start, in the guest too
        from kapi_selftests.host.runner import write_junit
        write_junit([TestResult(name="guest", outcome=Outcome.ERROR,
                                reason=f"could not run: {reason}")], args.junit)


# --- in the guest (or as root here): run pytest in-process -----------------------------


# pytest's built-in plugins the in-guest suite has no use for: each costs import and
# hook time at start-up, which under TCG is ~20x the host's.
_UNUSED_PLUGINS = ("cacheprovider", "doctest", "pastebin", "legacypath", "unittest",
                   "stepwise", "setuponly", "setupplan", "subtests")


class _Collector:
    """pytest plugin: one TestResult per test, the first-test marker, the progress log."""

    def __init__(self, progress: Path | None, shard: tuple[int, int] | None) -> None:
        self.results: list[TestResult] = []
        self._progress = progress.open("a") if progress else None
        self._shard = shard
        self._started = False
        self._by_id: dict[str, TestResult] = {}

    def pytest_collection_modifyitems(self, config: Any, items: list[Any]) -> None:
        if self._shard is None:
            return
        i, n = self._shard
        keep = [it for k, it in enumerate(items) if k % n == i]
        config.hook.pytest_deselected(items=[it for it in items if it not in keep])
        items[:] = keep

    def pytest_runtest_logstart(self, nodeid: str, location: Any) -> None:
        if not self._started:
            self._started = True
            print(FIRST_TEST_MARKER, file=sys.__stderr__, flush=True)

    def pytest_runtest_logreport(self, report: Any) -> None:
        r = _result_of(report)
        if r is None:
            return
        prev = self._by_id.get(report.nodeid)
        if prev is not None:
            if r.outcome is Outcome.PASS:
                return
            if prev.outcome is not Outcome.PASS:  # keep the first failure
                return
            r = TestResult(name=r.name, outcome=Outcome.ERROR if report.when == "teardown"
                           else r.outcome, reason=r.reason, diagnostics=r.diagnostics)
            self.results[self.results.index(prev)] = r
        else:
            self.results.append(r)
        self._by_id[report.nodeid] = r
        self._write_progress(r)

    def _write_progress(self, r: TestResult) -> None:
        if self._progress is None:
            return
        self._progress.write(json.dumps({"name": r.name, "outcome": r.outcome.value,
                                         "reason": r.reason,
                                         "diagnostics": list(r.diagnostics)}) + "\n")
        self._progress.flush()
        with contextlib.suppress(OSError):
            os.fsync(self._progress.fileno())


def _result_of(report: Any) -> TestResult | None:
    name = report.nodeid
    if report.passed:
        if hasattr(report, "wasxfail"):
            return TestResult(name=name, outcome=Outcome.FAIL,
                              reason=f"XPASS strict: {report.wasxfail}")
        return TestResult(name=name, outcome=Outcome.PASS) if report.when == "call" else None
    if report.skipped:
        if hasattr(report, "wasxfail"):
            return TestResult(name=name, outcome=Outcome.SKIP, reason=f"xfail: {report.wasxfail}")
        lr = report.longrepr
        reason = lr[2] if isinstance(lr, tuple) and len(lr) == 3 else str(lr)
        return TestResult(name=name, outcome=Outcome.SKIP,
                          reason=str(reason).removeprefix("Skipped: "))
    text = str(report.longreprtext or "")
    crash = getattr(report.longrepr, "reprcrash", None)
    msg = crash.message if crash is not None else (text.strip().splitlines() or ["failed"])[-1]
    outcome = Outcome.FAIL if report.when == "call" else Outcome.ERROR
    return TestResult(name=name, outcome=outcome, reason=msg.splitlines()[0] if msg else "",
                      diagnostics=tuple(text.splitlines()[-40:]))


def _phases(tests: Path) -> list[list[str]]:
    """The suite's pytest sessions, in order: ``tests`` but its ``pbt`` directory, then that.

    The property-based tests (``pbt``) import hypothesis, which takes seconds under
    TCG; the rest never import it, so their session reaches its first test that much
    sooner. Both run in this process: pytest and the project are imported once.
    """
    pbt = tests / "pbt"
    if not pbt.is_dir():
        return [[str(tests)]]
    return [[str(tests), f"--ignore={pbt}"], [str(pbt)]]


def _combined(codes: Sequence[int]) -> int:
    # pytest exit codes of the sessions as one: a stop (2-4) wins, then a failure (1);
    # "no test collected" (5) only when no session collected any
    for c in (2, 3, 4, 1):
        if c in codes:
            return c
    return 5 if codes and all(c == 5 for c in codes) else 0


def merge_junit(parts: Sequence[Path], dest: Path) -> None:
    """One JUnit XML file with the test suites of ``parts`` (those written), which go."""

    root = ET.Element("testsuites")
    for part in parts:
        try:
            tree = ET.parse(part).getroot()
        except (OSError, ET.ParseError):
            continue  # a session that stopped before writing: its results are in progress
        root.extend(tree.iter("testsuite"))
        part.unlink()
    ET.ElementTree(root).write(dest, encoding="utf-8", xml_declaration=True)


def run_local(args: argparse.Namespace) -> int:
    if os.geteuid() != 0:
        raise MissingFeature("run --local needs root (a tracefs instance and raw syscalls on "
                             "the running kernel)",
                             hint="run it as root, or boot a guest: run --kernel PATH")
    tests: Path = args.tests
    if not tests.is_dir():
        raise MissingFeature(f"in-guest tests not found at {tests}",
                             hint="run from a source checkout of kapi-selftests "
                                  "(tests/guest next to the kapi_selftests package)")
    # pytest loads only when the suite runs
    import pytest

    if args.save_trace is not None:
        args.save_trace.mkdir(parents=True, exist_ok=True)
        os.environ["KAPI_SAVE_TRACE"] = str(args.save_trace)
    pargs = ["-q", "-rs"]
    if os.environ.get("KAPI_IN_GUEST") == "1":
        # The guest's process is the harness's alone: fds 0-2 become its files, so calls
        # may name them (the fd range's low edge). pytest then captures at the sys level:
        # its fd-level capture would take fds 1 and 2 back.
        from kapi_selftests.guest.fds import own_std_fds

        own_std_fds()
        pargs.append("--capture=sys")
    for plugin in _UNUSED_PLUGINS:
        pargs += ["-p", f"no:{plugin}"]
    collector = _Collector(args.progress, args.shard)
    plugins: list[Any] = [collector]
    if os.environ.get("PYTEST_DISABLE_PLUGIN_AUTOLOAD"):
        # hypothesis's plugin as an object: "-p NAME" first scans every installed
        # distribution's entry points for NAME (half a second over 9p under TCG);
        # its hooks do nothing until hypothesis itself is imported
        import _hypothesis_pytestplugin  # type: ignore[import-untyped]

        plugins.append(_hypothesis_pytestplugin)
        if args.jobs:
            pargs += ["-p", "xdist.plugin"]
    if args.jobs:
        pargs += ["-n", str(args.jobs)]
    if args.require_kapi:
        pargs.append("--require-kapi")
    if args.keyword:
        pargs += ["-k", args.keyword]
    codes: list[int] = []
    junits: list[Path] = []
    for n, where in enumerate(_phases(tests)):
        extra = []
        if args.junit:
            junits.append(args.junit.with_name(f"{args.junit.name}.{n}"))
            extra = [f"--junitxml={junits[-1]}", "-o", "junit_family=xunit1"]
        log.info("pytest %s", shlex.join([*where, *pargs, *extra]))
        # stdout carries only the KTAP report: pytest's own terminal output goes to stderr
        with contextlib.redirect_stdout(sys.stderr):
            codes.append(int(pytest.main([*where, *pargs, *extra], plugins=plugins)))
        if codes[-1] in (2, 3, 4):  # interrupted, internal error, usage error: stop
            break
    if args.junit:
        merge_junit(junits, args.junit)
    rc = _combined(codes)
    results = list(collector.results)
    if not results:
        results.append(TestResult(name="guest-suite", outcome=Outcome.ERROR,
                                  reason=f"pytest ran no test (exit {int(rc)})"))
    elif int(rc) in (2, 3, 4):  # interrupted, internal error, usage error
        results.append(TestResult(name="guest-suite", outcome=Outcome.ERROR,
                                  reason=f"pytest exited {int(rc)}"))
    uname = os.uname()
    return _report(results, args, [f"local kernel: {uname.release} {uname.version}"])
