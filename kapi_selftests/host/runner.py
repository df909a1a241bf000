"""Boot guests, watch them, collect their results and turn them into host results.

Owns the lifetime of a QEMU process (ExitStack cleanup; QEMU dies with its
parent), the whole-run and no-progress timeouts, reading the output share
(``status``, ``junit.xml``, ``ktap.txt``, ``progress.jsonl``) and mapping all of it
to :class:`~kapi_selftests.report.TestResult` records and kselftest exit codes.
The guest's verdict is the ``status`` file it writes; no status is
:class:`~kapi_selftests.errors.LostGuest`, never a guess from the console.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import json
import logging
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO

from kapi_selftests.errors import (
    KapiError,
    LostGuest,
    MissingFeature,
    UsageError,
    describe_exception,
)
from kapi_selftests.host import console as console_mod
from kapi_selftests.host import initramfs, kernel, pyzip, qemu, warm
from kapi_selftests.link import calltable
from kapi_selftests.report import Outcome, TestResult, group, leaves

__all__ = ["BootTimings", "GuestRun", "GuestSpec", "guest_command", "guest_env", "prepare",
           "boot", "collect_results", "host_results", "parse_junit", "write_junit",
           "run_guests", "auto_guests", "PROJECT", "GUEST_TESTS"]

log = logging.getLogger(__name__)

PROJECT = Path(__file__).resolve().parents[2]
CACHE_DIR = calltable.CACHE_DIR  # KAPI_CACHE_DIR, else ~/.cache/kapi-selftests
GUEST_TESTS = PROJECT / "tests" / "guest"
_PASSTHROUGH_ENV = ("KAPI_STRICT", "KAPI_HYPOTHESIS_PROFILE", "KAPI_SEED",
                    "KAPI_TEST_CRASH_AT_BATCH", "KAPI_REFERENCE_SPECS")
_GUEST_ENTRY = ("import sys; from kapi_selftests.cmd.run import guest_main; "
                "sys.exit(guest_main(sys.argv[1:]))")


@dataclass(frozen=True, slots=True)
class BootTimings:
    """Seconds from QEMU start to each milestone (None: not reached)."""

    init_s: float | None = None  # the initramfs /init ran (kernel booted)
    start_s: float | None = None  # root mounted, guest command starting
    first_test_s: float | None = None  # the first in-guest test started
    total_s: float = 0.0  # QEMU exited


@dataclass(frozen=True, slots=True)
class GuestSpec:
    """What one guest runs: the command and its environment (all in the guest's view)."""

    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class GuestRun:
    """What came back from one guest.

    :param status: exit code the guest command wrote to ``status``; None = none written
    :param results: in-guest test results (JUnit, else the progress log)
    :param splats: kernel splats found on the console
    :param killed: why the host killed the guest (timeout), or None
    :param console: console log file
    :param out_dir: the output share on the host
    :param timings: boot milestones
    """

    status: int | None
    results: tuple[TestResult, ...]
    splats: tuple[console_mod.Splat, ...]
    killed: str | None
    console: Path
    out_dir: Path
    timings: BootTimings
    returncode: int | None = None
    error: str | None = None  # the harness failed on this guest (the step and the error)


def guest_command(*, python: str = sys.executable, require_kapi: bool = False,
                  shard: tuple[int, int] | None = None, xdist: int = 0,
                  save_trace: bool = False, tests: Path = GUEST_TESTS,
                  keyword: str | None = None) -> GuestSpec:
    """The in-guest runner: ``kapi-selftests run --local`` writing to the output share."""
    out = initramfs.GUEST_OUT
    # -S: no site module (.pth hooks cost seconds under TCG); guest_env puts the
    # project and site-packages on PYTHONPATH instead. guest_main skips cli.py's
    # import of every subcommand.
    argv = [python, "-S", "-c", _GUEST_ENTRY, "--local", "--tests", str(tests),
            "--junit", f"{out}/junit.xml", "--ktap", f"{out}/ktap.txt",
            "--progress", f"{out}/progress.jsonl"]
    if require_kapi:
        argv.append("--require-kapi")
    if shard is not None:
        argv += ["--shard", f"{shard[0]}/{shard[1]}"]
    if xdist > 1:
        argv += ["--jobs", str(xdist)]
    if save_trace:
        argv += ["--save-trace", f"{out}/trace"]
    if keyword:
        argv += ["-k", keyword]
    return GuestSpec(argv=tuple(argv), env=guest_env(python))


def guest_env(python: str = sys.executable, environ: dict[str, str] | None = None
              ) -> tuple[tuple[str, str], ...]:
    """The guest command's whole environment: lean, and the project importable."""
    e = os.environ if environ is None else environ
    path = ":".join(dict.fromkeys([str(Path(python).parent), "/usr/local/sbin", "/usr/local/bin",
                                   "/usr/sbin", "/usr/bin", "/sbin", "/bin"]))
    env = [("PATH", path), ("HOME", "/tmp"), ("TERM", "dumb"), ("LANG", "C.UTF-8"),
           ("PYTHONPATH", ":".join(_python_path())), ("PYTHONDONTWRITEBYTECODE", "1"),
           ("PYTHONUNBUFFERED", "1"), ("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1"),
           ("HYPOTHESIS_NO_PLUGINS", "1"), ("KAPI_CACHE_DIR", str(CACHE_DIR)),
           ("KAPI_IN_GUEST", "1")]
    env += [(k, e[k]) for k in _PASSTHROUGH_ENV if k in e]
    return tuple(env)


def _python_path() -> list[str]:
    # what site would add for this interpreter, so the guest can run with -S
    paths = [str(PROJECT)]
    for key in ("purelib", "platlib"):
        p = sysconfig.get_paths()[key]
        if p not in paths:
            paths.append(p)
    return paths


def prepare(kimg: kernel.KernelImage, cfg: qemu.GuestConfig, spec: GuestSpec, *,
            runner: str = "qemu") -> tuple[qemu.GuestConfig, list[str]]:
    """Check the kernel, write the initramfs into ``cfg.out_dir`` and build the argv.

    :raises MissingFeature: QEMU, busybox or a module is missing, or the config lacks options
    """
    if runner == "vng":
        vng = shutil.which("vng")
        if vng is None:
            raise MissingFeature("vng not found (virtme-ng is not installed)",
                                 hint="pip install 'kapi-selftests[vng]'; it also needs udev")
        if not udev_running():
            raise MissingFeature("--runner vng needs udev running on the host (vng finds its "
                                 "guest's console ports through it)",
                                 hint="apt-get install udev, then (as root) "
                                      "/lib/systemd/systemd-udevd --daemon; with systemd it "
                                      "runs already")
        env = " ".join(shlex.quote(f"{k}={v}") for k, v in spec.env)
        cmd = f"mkdir -p {initramfs.GUEST_OUT} && mount --bind {shlex.quote(str(cfg.out_dir))} " \
              f"{initramfs.GUEST_OUT} && cd {initramfs.GUEST_OUT} && env {env} " \
              f"{shlex.join(spec.argv)}; echo $? > {initramfs.GUEST_OUT}/status"
        _warm(PROJECT, cfg.out_dir)  # the guest sees the host's byte code, as without vng
        accel = qemu.choose_accel(cfg, qemu.find_qemu(cfg.arch))
        return cfg, qemu.vng_argv(cfg, cmd, vng=vng, accel=accel, project=PROJECT)
    qemu_bin = qemu.find_qemu(cfg.arch)
    mods = kernel.guest_modules(kimg)
    if cfg.pvh and kimg.kind is kernel.ImageKind.BZIMAGE:
        vmlinux = kernel.pvh_vmlinux(kimg.image, CACHE_DIR)
        if vmlinux is not None:
            cfg = replace(cfg, kernel=vmlinux)
    project = cfg.project or PROJECT
    cfg = replace(cfg, project=project)
    _warm(project, cfg.out_dir)
    genv: tuple[tuple[str, str], ...] = spec.env
    extra: dict[str, bytes] = {}
    zipped = _guest_pyzip(project) if cfg.pyzip else None
    if zipped is not None:
        genv = tuple((k, f"{pyzip.GUEST_ZIP}:{v}" if k == "PYTHONPATH" else v) for k, v in genv)
        extra = {"py.zip": zipped.read_bytes()}
    init = initramfs.GuestInit(argv=spec.argv, env=genv, project=str(project),
                               pyzip=pyzip.GUEST_ZIP if zipped else None)
    initrd = initramfs.write_initramfs(cfg.out_dir / "initramfs.cpio", init, mods.paths,
                                       extra=extra)
    cfg = replace(cfg, initrd=initrd)
    accel = qemu.choose_accel(cfg, qemu_bin)
    return cfg, qemu.qemu_argv(cfg, qemu_bin, accel)


def udev_running(proc: Path = Path("/proc")) -> bool:
    """Whether a udev daemon runs on this host (``systemd-udevd`` or ``udevd``)."""
    for comm in proc.glob("[0-9]*/comm"):
        try:
            if comm.read_text().strip() in ("systemd-udevd", "udevd"):
                return True
        except OSError:
            continue
    return False


def _warm(project: Path, out_dir: Path) -> None:
    # byte code, pytest's rewritten tests and hypothesis's constants, built on the host
    # (one guest's worth of Python start-up); the guest's cwd is the output share.
    # Each cache serialises its own writers (kapi_selftests.cache).
    hyp = warm.warm_caches(project, project / "tests" / "guest", sys.executable, CACHE_DIR)
    calltable.build_library(CACHE_DIR)  # the batch executor the guest's fuzz tests load
    warm.copy_constants(hyp, out_dir / ".hypothesis")


def _guest_pyzip(project: Path) -> Path | None:
    # the zip is cached by content
    return pyzip.build_pyzip(CACHE_DIR / "pyzip", _python_path(), project)


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: QEMU gets SIGKILL when we die.
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def boot(cfg: qemu.GuestConfig, argv: Sequence[str], *, echo: IO[str] | None = None) -> GuestRun:
    """Run the guest to the end: QEMU exits, the run times out, or progress stops.

    The console is copied to ``<out_dir>/console.log`` as it arrives.
    """
    console_path = cfg.out_dir / "console.log"
    log.info("%s", shlex.join(argv))
    markers = (initramfs.INIT_MARKER, initramfs.START_MARKER, initramfs.FIRST_TEST_MARKER)
    killed: str | None = None
    with contextlib.ExitStack() as stack:
        try:
            proc = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
        except FileNotFoundError as e:
            raise MissingFeature(f"{argv[0]} not found", hint="apt-get install qemu-system-x86"
                                 ) from e
        stack.callback(_reap, proc)
        assert proc.stdout is not None
        cap = console_mod.ConsoleCapture(proc.stdout, console_path, markers, echo=echo).start()
        stack.callback(cap.join, 5)
        t0 = cap.started
        while proc.poll() is None:
            now = time.monotonic()
            if now - t0 > cfg.timeout_s:
                killed = f"guest did not finish within {cfg.timeout_s} s; killed"
            elif now - cap.last_output > cfg.progress_timeout_s:
                killed = (f"guest made no progress (no console output) for "
                          f"{cfg.progress_timeout_s} s; killed")
            if killed:
                log.warning("%s", killed)
                proc.kill()
                break
            time.sleep(0.1)
        proc.wait()
        total = time.monotonic() - t0
    marks = cap.marks

    def rel(m: str) -> float | None:
        return round(marks[m] - t0, 3) if m in marks else None

    timings = BootTimings(init_s=rel(initramfs.INIT_MARKER), start_s=rel(initramfs.START_MARKER),
                          first_test_s=rel(initramfs.FIRST_TEST_MARKER), total_s=round(total, 3))
    status = read_status(cfg.out_dir)
    splats = tuple(console_mod.find_splats(console_mod.read_console(console_path)))
    return GuestRun(status=status, results=tuple(collect_results(cfg.out_dir)), splats=splats,
                    killed=killed, console=console_path, out_dir=cfg.out_dir, timings=timings,
                    returncode=proc.returncode)


def _reap(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def read_status(out_dir: Path) -> int | None:
    """The guest command's exit code from ``status``; None when absent or malformed."""
    try:
        return int((out_dir / "status").read_text().strip())
    except (OSError, ValueError):
        return None


def parse_junit(path: Path) -> list[TestResult]:
    """Results from a pytest JUnit XML file, named by pytest node id where it can be rebuilt.

    :raises LostGuest: the file is not valid XML (a guest died while writing it)
    """
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        raise LostGuest(f"{path}: malformed JUnit XML ({e})") from e
    out: list[TestResult] = []
    for tc in root.iter("testcase"):
        name = _nodeid(tc.get("classname", ""), tc.get("name", ""), tc.get("file"))
        outcome, reason = Outcome.PASS, ""
        diags: tuple[str, ...] = ()
        for tag, oc in (("failure", Outcome.FAIL), ("error", Outcome.ERROR),
                        ("skipped", Outcome.SKIP)):
            el = tc.find(tag)
            if el is not None:
                outcome = oc
                msg = el.get("message") or ""
                text = el.text or ""
                if tag == "skipped":
                    # pytest writes "file:line: reason" in the text, the bare reason in message
                    msg = msg.removeprefix("Skipped: ")
                reason = (msg or text).strip().splitlines()[0] if (msg or text).strip() else tag
                if tag != "skipped":
                    diags = tuple(text.strip().splitlines()[-40:])
                break
        out.append(TestResult(name=name, outcome=outcome, reason=reason, diagnostics=diags,
                              time_s=_seconds(tc.get("time"))))
    return out


def _seconds(text: str | None) -> float | None:
    try:
        t = float(text) if text else None
    except ValueError:
        return None
    return t if t is not None and t >= 0 and t == t else None  # not NaN, not negative


def _nodeid(classname: str, name: str, file: str | None) -> str:
    if file and file.endswith(".py"):
        mod = file[:-3].replace("/", ".")
        rest = classname[len(mod) + 1:] if classname.startswith(mod) else ""
        return "::".join(filter(None, (file, rest.replace(".", "::"), name)))
    parts = classname.split(".")
    # classname is "pkg.module" or "pkg.module.Class": guess the class by its capital
    if len(parts) > 1 and parts[-1][:1].isupper():
        return "/".join(parts[:-1]) + ".py::" + parts[-1] + "::" + name
    return "/".join(parts) + ".py::" + name


def _parse_progress(path: Path) -> list[TestResult]:
    # one line per change of a test's result: the last line of a name wins
    out: dict[str, TestResult] = {}
    for line in path.read_text(errors="replace").splitlines():
        try:
            d = json.loads(line)
            out[str(d["name"])] = TestResult(name=str(d["name"]), outcome=Outcome(d["outcome"]),
                                             reason=str(d.get("reason", "")),
                                             diagnostics=tuple(d.get("diagnostics", ())))
        except (ValueError, KeyError, TypeError):
            continue  # a line cut short by the guest's death
    return list(out.values())


def collect_results(out_dir: Path) -> list[TestResult]:
    """In-guest results: ``junit.xml`` when written, else what ``progress.jsonl`` kept."""
    junit = out_dir / "junit.xml"
    if junit.is_file():
        with contextlib.suppress(LostGuest):
            return parse_junit(junit)
    prog = out_dir / "progress.jsonl"
    return _parse_progress(prog) if prog.is_file() else []


def host_results(run: GuestRun, *, label: str = "") -> list[TestResult]:
    """Turn one guest's run into host results: its tests, plus one result per splat and
    one for a hang; a guest with no status, no splat and no result is a LostGuest.

    :raises LostGuest: nothing could run or be judged (the guest never booted, or died
        without writing anything); the message says what was seen
    """
    prefix = f"{label}: " if label else ""
    if run.error is not None:
        raise LostGuest(f"{prefix}could not run: {run.error}")
    results = list(run.results)
    for sp in run.splats:
        results.append(TestResult(name=f"{prefix}kernel-console", outcome=Outcome.FAIL,
                                  reason=sp.summary,
                                  diagnostics=(f"console: {run.console} line {sp.line_no}",
                                               *sp.excerpt)))
    started = run.timings.start_s is not None
    if run.killed and started:
        results.append(TestResult(name=f"{prefix}guest-watchdog", outcome=Outcome.FAIL,
                                  reason=f"guest hung: {run.killed}",
                                  diagnostics=(f"console: {run.console}",), timed_out=True))
    if run.status is None and not run.splats and not (run.killed and started):
        where = ("the kernel never reached the initramfs" if run.timings.init_s is None else
                 "the root file system was not mounted" if not started else
                 "the guest command ended without writing its status")
        tail = [ln.strip() for ln in console_mod.read_console(run.console) if ln.strip()][-3:]
        msg = (f"{prefix}guest returned no status ({where}; exit code {run.returncode}"
               + (f"; {run.killed}" if run.killed else "") + f"); console: {run.console}"
               + (f"; its last lines: {' | '.join(tail)}" if tail else ""))
        if not results:
            raise LostGuest(msg, hint="read the console log; try -v to see QEMU's command")
        results.append(TestResult(name=f"{prefix}guest", outcome=Outcome.ERROR, reason=msg))
    elif run.status not in (None, 0) and not run.results:
        results.append(TestResult(name=f"{prefix}guest", outcome=Outcome.ERROR,
                                  reason=f"guest command exited {run.status} with no results; "
                                         f"console: {run.console}"))
    return results


# Characters XML 1.0 cannot hold, even escaped (C0 controls but tab, LF and CR; lone
# surrogates; U+FFFE/U+FFFF): a console excerpt with an ANSI escape (\x1b) made the
# whole file unparsable.
_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def _xml(text: str) -> str:
    return _XML_INVALID.sub("", text)


def write_junit(results: Sequence[TestResult], path: Path, *, suite: str = "kapi-selftests"
                ) -> None:
    """Write host results as JUnit XML (one testcase per test: a group of subtests, one
    guest's, is its leaves), with each result's ``time`` where known (the guest's pytest
    measured it) and the suite's as their sum; characters XML cannot hold are dropped
    from names, messages and diagnostics."""
    results = leaves(results)
    times = [r.time_s for r in results if r.time_s is not None]
    ts = ET.Element("testsuite", name=_xml(suite), tests=str(len(results)),
                    failures=str(sum(r.outcome is Outcome.FAIL for r in results)),
                    errors=str(sum(r.outcome is Outcome.ERROR for r in results)),
                    skipped=str(sum(r.outcome is Outcome.SKIP for r in results)))
    if times:
        ts.set("time", f"{sum(times):.3f}")
    for r in results:
        cls, _, name = r.name.rpartition("::")
        tc = ET.SubElement(ts, "testcase", classname=_xml(cls or suite), name=_xml(name))
        if r.time_s is not None:
            tc.set("time", f"{r.time_s:.3f}")
        tag = {Outcome.FAIL: "failure", Outcome.ERROR: "error",
               Outcome.SKIP: "skipped"}.get(r.outcome)
        if tag:
            el = ET.SubElement(tc, tag, message=_xml(r.reason))
            if r.diagnostics:
                el.text = _xml("\n".join(r.diagnostics))
    root = ET.Element("testsuites")
    root.append(ts)
    ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)


@dataclass(frozen=True, slots=True)
class SuiteRequest:
    """One ``run --kernel`` request: the kernel and how to run the suite on it."""

    kernel: kernel.KernelImage
    config: qemu.GuestConfig
    guests: int | None = None  # None: as many as the host runs at once (auto_guests)
    require_kapi: bool = False
    save_trace: Path | None = None
    runner: str = "qemu"
    keep: bool = False
    work_dir: Path | None = None
    keyword: str | None = None


#: The most guests ``auto_guests`` boots: each boot and start-up is paid again, so past a
#: few guests the suite's shards get too short to gain.
MAX_AUTO_GUESTS = 4


def auto_guests(cfg: qemu.GuestConfig, accel: qemu.Accel, *, cores: int | None = None,
                free_mb: int | None = None) -> int:
    """How many guests run the suite at once by default: one per host core they keep busy.

    Under TCG (``thread=single``) a guest runs on one host core whatever its vCPU
    count; with KVM it keeps ``cfg.cpus`` cores busy. At most :data:`MAX_AUTO_GUESTS`,
    and no more than the free memory holds (each guest's RAM plus QEMU's own).
    """
    if cores is None:
        cores = len(os.sched_getaffinity(0))
    if free_mb is None:
        free_mb = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") >> 20
    per_guest = cfg.cpus if accel is qemu.Accel.KVM else 1
    by_memory = free_mb // (cfg.memory_mb + 256)
    return max(1, min(cores // max(per_guest, 1), MAX_AUTO_GUESTS, by_memory))


def _merge(per_guest: Sequence[list[TestResult] | str]) -> list[TestResult]:
    # One guest: its results as they are. Several: one result per guest, ``guest<i>``,
    # with that guest's results as subtests (KTAP nests them); a lost guest is an ERROR
    # of its own, and a guest whose shard held no test a skip, so no group is empty.
    if len(per_guest) == 1:
        (g,) = per_guest
        return [TestResult(name="guest", outcome=Outcome.ERROR, reason=g)] \
            if isinstance(g, str) else list(g)
    out: list[TestResult] = []
    for i, g in enumerate(per_guest):
        if isinstance(g, str):
            out.append(TestResult(name=f"guest{i}", outcome=Outcome.ERROR, reason=g))
        elif not g:
            out.append(TestResult(name=f"guest{i}", outcome=Outcome.SKIP,
                                  reason="no test in this guest's shard"))
        else:
            out.append(group(f"guest{i}", g))
    return out


def run_guests(req: SuiteRequest, *, echo: IO[str] | None = None,
               spec_for: Callable[[int, int], GuestSpec] | None = None
               ) -> tuple[list[TestResult], list[GuestRun]]:
    """Boot ``req.guests`` guests at once, each with its own scratch area and a shard of
    the suite; return the merged host results and each guest's run. With more than one
    guest the results are one per guest (``guest<i>``) with that guest's results as
    subtests (:func:`~kapi_selftests.report.leaves` flattens them).

    :raises LostGuest: no guest returned anything usable
    """
    accel = req.config.accel
    if accel is qemu.Accel.AUTO:
        accel = qemu.choose_accel(req.config, qemu.find_qemu(req.config.arch))
    n = req.guests if req.guests is not None else auto_guests(req.config, accel)
    if n < 1:
        raise UsageError(f"--guests {n}: must be at least 1")
    base = req.work_dir or Path(tempfile.mkdtemp(prefix="kapi-run-"))
    base.mkdir(parents=True, exist_ok=True)

    def one(i: int) -> GuestRun:
        out = base / (f"guest{i}" if n > 1 else "guest")
        try:
            return _boot_guest(i, out)
        except KapiError:
            raise  # the user's to fix (the same for every guest): reported as such
        except Exception as e:  # a bug of ours on this guest: the other guests' results stay
            log.debug("guest%d", i, exc_info=True)
            return GuestRun(status=None, results=(), splats=(), killed=None,
                            console=out / "console.log", out_dir=out, timings=BootTimings(),
                            error=f"internal error {describe_exception(e)}")

    def _boot_guest(i: int, out: Path) -> GuestRun:
        out.mkdir(parents=True, exist_ok=True)
        for stale in ("status", "junit.xml", "ktap.txt", "progress.jsonl", "console.log"):
            (out / stale).unlink(missing_ok=True)
        cfg = replace(req.config, out_dir=out, accel=accel)
        xdist = cfg.cpus if accel is qemu.Accel.KVM and cfg.cpus > 1 else 0
        spec = (spec_for(i, n) if spec_for else
                guest_command(require_kapi=req.require_kapi, shard=(i, n) if n > 1 else None,
                              xdist=xdist, save_trace=req.save_trace is not None,
                              keyword=req.keyword))
        cfg, argv = prepare(req.kernel, cfg, spec, runner=req.runner)
        run = boot(cfg, argv, echo=echo if n == 1 else None)
        if (cfg.accel is qemu.Accel.KVM and req.config.accel is qemu.Accel.AUTO
                and run.timings.init_s is None and run.returncode not in (0, None)):
            # KVM passed the probe but QEMU died before the kernel ran: TCG, once
            log.warning("QEMU with KVM exited %s before the kernel started; retrying with TCG",
                        run.returncode)
            cfg, argv = prepare(req.kernel, replace(cfg, accel=qemu.Accel.TCG), spec,
                                runner=req.runner)
            run = boot(cfg, argv, echo=echo if n == 1 else None)
        return run

    with concurrent.futures.ThreadPoolExecutor(max_workers=n) as pool:
        runs = list(pool.map(one, range(n)))
    per_guest: list[list[TestResult] | str] = []  # a guest's results, or why it was lost
    for i, run in enumerate(runs):
        try:
            per_guest.append(host_results(run, label=f"guest{i}" if n > 1 else ""))
        except LostGuest as e:
            per_guest.append(str(e))
        if req.save_trace is not None and (run.out_dir / "trace").is_dir():
            dest = req.save_trace / (f"guest{i}" if n > 1 else "")
            shutil.copytree(run.out_dir / "trace", dest, dirs_exist_ok=True)
    lost = [g for g in per_guest if isinstance(g, str)]
    if lost and not any(isinstance(g, list) and g for g in per_guest):
        raise LostGuest("; ".join(lost), hint=f"console logs are under {base}")
    results = _merge(per_guest)
    failed = any(r.outcome in (Outcome.FAIL, Outcome.ERROR) for r in leaves(results))
    if req.work_dir is None and not req.keep and not lost and not failed:
        shutil.rmtree(base, ignore_errors=True)
    return results, runs
