"""``kapi-selftests fuzz``: a coverage-steered fuzzing campaign, here (``--local``) or in
QEMU guests (``--kernel``).

``--local`` runs one shard on the running kernel as root (inside a scratch
directory and on fds and mappings the harness owns). ``--kernel PATH`` boots
``--guests N`` guests, one shard (seed stream) each, shard directory
``<out>/shard-<i>``. Two engines: ``batch`` (default) runs each shard's campaign in
a process here and only the issuing in its guest (:mod:`kapi_selftests.guest.agent`: call
tables through a compiled executor, results and raw traces back over shared memory,
:mod:`kapi_selftests.fuzz.remote`, :mod:`kapi_selftests.link.shm`); ``harness`` runs ``fuzz
--local`` in the guest with the suite's harness (every call materialised and judged
in the guest). A
guest that oopses, warns, panics or hangs is recorded (console excerpt, the
batch it was issuing) and booted again, and the campaign goes on. Ctrl-C stops
cleanly (a guest is asked to stop through a ``stop`` file in its share); a rerun
with the same ``--out`` resumes. Exit codes: 0 no finding, 1 findings or
kernel crashes, 2 usage, 4 cannot run here.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import multiprocessing
import os
import queue
import re
import shutil
import signal
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from kapi_selftests.cmd.argtypes import (
    add_accel,
    add_reference_specs,
    existing_path,
    fraction,
    guest_entry,
    nonneg_int,
    positive_int,
)
from kapi_selftests.errors import (
    KSFT_FAIL,
    KSFT_PASS,
    KapiError,
    LostGuest,
    MissingFeature,
    UsageError,
)
from kapi_selftests.fuzz.callsafety import safe_specs
from kapi_selftests.oracle.spec import DEBUGFS_ROOT

if TYPE_CHECKING:
    from kapi_selftests.plan import CallPlan

log = logging.getLogger(__name__)

_GUEST_ENTRY = ("import sys; from kapi_selftests.cmd.fuzz import guest_main; "
                "sys.exit(guest_main(sys.argv[1:]))")
STOP_FILE = "stop"
_DEFAULT_CALLS = 2000
_BATCH = {"batch": 2000, "harness": 200}
_AGENT_ENTRY = ("import sys; from kapi_selftests.guest.agent import main; "
                "sys.exit(main(sys.argv[1:]))")


def parse_duration(s: str) -> float:
    """``8h``, ``90m``, ``1h30m``, ``45s`` or plain seconds -> seconds."""
    s = s.strip()
    if re.fullmatch(r"\d+(\.\d+)?", s):
        return float(s)
    m = re.fullmatch(r"(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", s)
    if not s or m is None or not any(m.groups()):
        raise argparse.ArgumentTypeError(f"--duration {s!r}: expected e.g. 8h, 30m, 1h30m, 90s")
    d, h, mi, se = (int(g or 0) for g in m.groups())
    return float(((d * 24 + h) * 60 + mi) * 60 + se)








def add_arguments(p: argparse.ArgumentParser) -> None:
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--local", action="store_true",
                       help="fuzz the running kernel (root; scratch dir and own fds/mappings only)")
    where.add_argument("--kernel", type=existing_path, metavar="PATH",
                       help="boot this kernel in QEMU guests and fuzz there")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--duration", type=parse_duration, metavar="TIME",
                        help="stop after this long (8h, 30m, 90s), resumed runs included")
    budget.add_argument("--calls", type=positive_int, metavar="N",
                        help=f"stop after N calls in all (default {_DEFAULT_CALLS} when no "
                             "--duration)")
    p.add_argument("--guests", type=positive_int, default=1, metavar="N",
                   help="guests in parallel with --kernel, one shard (seed stream) each")
    p.add_argument("--seed", type=nonneg_int, default=int(os.environ.get("KAPI_SEED", "0")),
                   help="campaign seed (default KAPI_SEED or 0): same seed, same calls")
    p.add_argument("--shard", type=nonneg_int, default=0, metavar="I",
                   help="first shard number (guest i runs shard I+i); give CI jobs "
                        "disjoint shards or seeds")
    p.add_argument("--corpus", type=existing_path, metavar="DIR",
                   help="run these saved plans (repro.json and kcov-corpus.jsonl files, "
                        "searched recursively) before generating")
    p.add_argument("--out", type=Path, default=Path("kapi-fuzz"), metavar="DIR",
                   help="campaign directory (default ./kapi-fuzz); a rerun resumes it")
    p.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    p.add_argument("--batch-size", type=positive_int, metavar="N",
                   help=f"calls per capture window (default {_BATCH['batch']} with the batch "
                        f"engine, {_BATCH['harness']} with the harness)")
    p.add_argument("--transport", choices=("shm", "dir"), default="shm",
                   help="batch engine in guests: tables and traces over shared memory "
                        "(ivshmem, default) or files on the output share (9p)")
    p.add_argument("--engine", choices=tuple(_BATCH), default="batch",
                   help="batch (default): generate, predict, decode and judge here, issue call "
                        "tables through a compiled executor in the guest; harness: the whole "
                        "campaign in the guest, every call through the suite's harness")
    p.add_argument("--kcov", action="store_true",
                   help="KCOV-guided (batch engine; a kernel with CONFIG_KCOV, see "
                        "vm/kcov.config): keep the calls that reach new kernel code and "
                        "mutate them")
    p.add_argument("--mutate-rate", type=fraction, default=0.5, metavar="R",
                   help="with --kcov, the share of calls that mutate a kept call (default "
                        "0.5; 0 measures kernel coverage without guidance)")
    p.add_argument("--no-minimize", dest="minimize", action="store_false",
                   help="save findings unshrunk")
    p.add_argument("--strict", action="store_true", help="spec drift is a finding")
    add_reference_specs(p)
    vm = p.add_argument_group("guests (with --kernel)")
    vm.add_argument("--modules", type=existing_path, metavar="DIR",
                    help="modules of a modular kernel")
    vm.add_argument("--memory-mb", type=positive_int, help="guest RAM (default 2048)")
    vm.add_argument("--progress-timeout-s", type=positive_int, default=180,
                    help="a guest silent this long is hung: killed, recorded, restarted")
    vm.add_argument("--max-restarts", type=nonneg_int, default=20,
                    help="give a shard up after this many crashed guests (default 20)")
    vm.add_argument("--console", action="store_true", help="echo guest consoles on stderr")
    add_accel(vm)
    p.add_argument("--guest-out", type=Path, help=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> int:
    if args.calls is None and args.duration is None:
        args.calls = _DEFAULT_CALLS
    if args.batch_size is None:
        args.batch_size = _BATCH[args.engine]
    if args.kcov and args.engine != "batch":
        raise UsageError("--kcov needs the batch engine (its executor reads KCOV)",
                         hint="drop --engine harness")
    if args.local:
        return run_local(args)
    return run_kernel(args)


def guest_main(argv: Sequence[str]) -> int:
    """``fuzz --local`` in a guest, without importing every subcommand (see cmd.run)."""
    return guest_entry("kapi-selftests fuzz", add_arguments, run, argv)


# --- progress ---------------------------------------------------------------------------

class _Ticker:
    """One live line on a tty (rewritten), else a plain line every ``every_s`` seconds."""

    def __init__(self, stream: TextIO | None = None, every_s: float = 10.0) -> None:
        self.stream = stream or sys.stderr  # looked up now: tests swap sys.stderr
        self.tty = self.stream.isatty()
        self.every_s = every_s
        self._last = 0.0

    def show(self, text: str, force: bool = False) -> None:
        now = time.monotonic()
        if self.tty:
            self.stream.write("\r\x1b[K" + text)
            self.stream.flush()
        elif force or now - self._last >= self.every_s:
            self.stream.write(text + "\n")
            self.stream.flush()
        else:
            return
        self._last = now

    def end(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


def _progress_text(elapsed_s: float, calls: int, findings: dict[str, int], coverage: str,
                   alive: str = "", kcov: str = "") -> str:
    rate = calls / elapsed_s if elapsed_s > 0 else 0.0
    fk = ", ".join(f"{k} {n}" for k, n in sorted(findings.items())) or "none"
    return (f"fuzz: {elapsed_s:7.0f} s  {calls} calls  {rate:.0f}/s  findings: {fk}  "
            f"coverage {coverage}" + (f"  kcov {kcov}" if kcov else "")
            + (f"  guests {alive}" if alive else ""))


def _kcov_text(fig: Any) -> str:
    # a KcovCorpus figure (or state.json's "kcov") for the progress line
    if not fig:
        return ""
    return f"{fig['edges']} edges, corpus {fig['corpus']}"


# --- local (and in each guest) ----------------------------------------------------------

def _corpus_plans(d: Path | None, batch_size: int = _BATCH["batch"]) -> list[list[CallPlan]]:
    """The ``--corpus`` runs: each reproducer's plans, then the plans of every
    ``kcov-corpus.jsonl`` (another campaign's KCOV corpus: with ``--kcov`` the calls that
    reach code new to this campaign join its corpus) in batches of ``batch_size``."""
    # loaded when the subcommand runs: the CLI imports every subcommand at start
    from kapi_selftests.fuzz import repro
    from kapi_selftests.fuzz.kcov import CORPUS_FILE, read_corpus

    if d is None:
        return []
    out = []
    for f in sorted(d.rglob("repro.json")) if d.is_dir() else [d]:
        try:
            crashed = bool(json.loads(f.read_text()).get("crash"))
        except (OSError, ValueError, AttributeError):
            crashed = False
        if crashed:  # it brought a kernel down: replay it on purpose, not as a seed
            log.warning("corpus: skipping %s (a kernel crash reproducer)", f)
            continue
        out.append(list(repro.load(f).plans))
    if d.is_dir():
        kept = [p for f in sorted(d.rglob(CORPUS_FILE)) for p, _ in read_corpus(f)]
        kept = list(dict.fromkeys(kept))
        out += [kept[i:i + batch_size] for i in range(0, len(kept), batch_size)]
    return out


def run_local(args: argparse.Namespace) -> int:
    # loaded when the subcommand runs: the CLI imports every subcommand at start
    from kapi_selftests.fuzz import campaign, campaign_report
    from kapi_selftests.guest.tracefs import find_tracefs, missing_tracefs

    if os.geteuid() != 0:
        raise MissingFeature("fuzz --local needs root (tracefs, set_event_pid)",
                             hint="run as root, or use --kernel PATH to fuzz in a guest")
    reason = missing_tracefs(find_tracefs())
    if reason:
        raise MissingFeature(reason)
    out: Path = args.guest_out or args.out
    out.mkdir(parents=True, exist_ok=True)
    (out / STOP_FILE).unlink(missing_ok=True)
    ticker = _Ticker(every_s=1.0 if sys.stderr.isatty() else 10.0)
    stop_file = out / STOP_FILE
    with campaign.local_harness(args.engine, strict=args.strict, kcov=args.kcov) as h:
        cfg = campaign.CampaignConfig(out=out, seed=args.seed, shard=args.shard, calls=args.calls,
                                  duration_s=args.duration, batch_size=args.batch_size,
                                  minimize=args.minimize, strict=args.strict,
                                  mutate_rate=args.mutate_rate)
        h.strict = args.strict

        def show(p: campaign.Progress) -> None:
            ticker.show(_progress_text(p.elapsed_s, p.calls, dict(p.findings),
                                       p.coverage.describe(), kcov=_kcov_text(p.kcov)))

        camp = campaign.Campaign(cfg, h, on_progress=show)
        if camp.state.batches == 0:
            for plans in _corpus_plans(args.corpus, args.batch_size):
                camp.run_corpus(plans)
        interrupted = False
        try:
            camp.run(stop=stop_file.exists)
        except KeyboardInterrupt:
            interrupted = True  # everything up to the last batch is on disk
        finally:
            ticker.end()
        source = h.source.value
    header = [f"kernel: {os.uname().release} (local)", f"events: {source}",
              f"seed {args.seed}, shard {args.shard}"]
    if interrupted:
        header.append(f"interrupted: rerun with --out {out} to resume")
    if args.guest_out is not None:
        _save_kernel_specs(out)  # the host compares them with the reference
        return KSFT_FAIL if interrupted else _status(camp.store.records, [])
    data = campaign_report.load_dirs([out], safe_specs(h.specs))
    _compare_with_reference(data, _kernel_specs([DEBUGFS_ROOT]))
    if args.kcov and os.access("/proc/kallsyms", os.R_OK):
        data.system_map = Path("/proc/kallsyms")  # the running kernel's function addresses
    md, _ = campaign_report.write_outputs(out, data, header=header)
    _print_summary(args, data, header, md)
    return KSFT_FAIL if interrupted else _status(data.store.records, data.crashes,
                                                 data.spec_differences, data.disagreements)


def _status(findings: Any, crashes: Sequence[Any], differences: Sequence[Any] = (),
            disagreements: Sequence[str] = ()) -> int:
    # a difference from the reference that callers can see, or a call the reference
    # decides otherwise, fails the campaign like a finding
    if findings or crashes or disagreements or any(d.fails for d in differences):
        return KSFT_FAIL
    return KSFT_PASS


def _save_kernel_specs(out: Path) -> None:
    # loaded when the subcommand runs: the CLI imports every subcommand at start
    from kapi_selftests.oracle.spec import specs_files, write_specs

    files = specs_files(DEBUGFS_ROOT)
    if files:
        write_specs(files, out / "kapi")


def _kernel_specs(roots: Sequence[Path]) -> dict[str, Any] | None:
    # The first spec dump among roots (debugfs here, or what a guest saved or sent).
    from kapi_selftests.oracle.spec import load_debugfs, missing_kapi_specs

    for root in roots:
        if missing_kapi_specs(root) is None:
            return load_debugfs(root)
    return None


def _compare_with_reference(data: Any, kernel: Mapping[str, Any] | None) -> None:
    # loaded when the subcommand runs: the CLI imports every subcommand at start
    from kapi_selftests.oracle import reference

    if kernel is None:
        data.notes.append("spec reference: the kernel exports no debugfs specs: not compared")
        return
    try:
        ref, what = reference.load_reference(reference.reference_choice(), kernel)
    except UsageError as e:
        data.notes.append(f"spec reference: {e}")
        return
    data.reference = what
    data.spec_differences = list(reference.compare_to_reference(ref, kernel))
    # loaded when the subcommand runs: the CLI imports every subcommand at start
    from kapi_selftests.fuzz.campaign import DISAGREEMENTS_FILE
    from kapi_selftests.fuzz.findings import read_jsonl

    for d in data.shard_dirs:
        if (d / DISAGREEMENTS_FILE).is_file():
            data.disagreements += [str(r["line"]) for r in read_jsonl(d / DISAGREEMENTS_FILE)]


def _print_summary(args: argparse.Namespace, data: Any, header: Sequence[str], md: Path) -> None:
    # loaded when the subcommand runs: the CLI imports every subcommand at start
    from kapi_selftests.fuzz import campaign_report

    if args.json:
        print(json.dumps(campaign_report.summary(data, header=header), indent=1))
        return
    fig = data.coverage.figure()
    lines = [*header, f"calls: {data.calls} in {data.elapsed_s:.1f} s "
             f"({data.calls_per_s:.1f}/s)", f"spec coverage: {fig.describe()}",
             f"edge coverage: {campaign_report.edges_text(data.edges)}",
             *([f"kernel coverage (KCOV): {data.kcov_text()}"] if data.kcov else []),
             f"findings: {len(data.store.records)} distinct, crashes: {len(data.crashes)}"]
    if data.reference:
        failing = [d for d in data.spec_differences if d.fails]
        lines.append(f"spec differences from the reference ({data.reference}): "
                     f"{len(failing)} callers can see, "
                     f"{len(data.spec_differences) - len(failing)} text only")
        lines += [f"  {d.describe()}" for d in data.spec_differences]
        if data.disagreements:
            lines.append(f"calls the reference decides otherwise: {len(data.disagreements)} "
                         "(examples)")
            lines += [f"  {x}" for x in data.disagreements[:10]]
    for r in sorted(data.store.records.values(), key=lambda r: r.key):
        lines.append(f"  {r.key.describe()} x{r.count}: {r.first.message}")
        exposed = campaign_report.finding_edges(data.edges.specs, r.smallest.plan)
        if exposed:
            lines.append(f"    edges: {exposed}")
        if r.reproducers:
            lines.append(f"    replay: kapi-selftests replay {r.reproducers[0]}")
    for c in data.crashes:
        lines.append(f"  crash (shard {c.shard}, batch {c.batch}): {c.summary}")
    lines.append(f"report: {md}")
    print("\n".join(lines))


# --- --kernel: guests -------------------------------------------------------------------

def _guest_argv(args: argparse.Namespace, shard: int, guests: int) -> list[str]:
    # host side: the CLI imports every subcommand at start, in the guest too
    from kapi_selftests.host.initramfs import GUEST_OUT

    argv = [sys.executable, "-S", "-c", _GUEST_ENTRY, "--local", "--guest-out", GUEST_OUT,
            "--seed", str(args.seed), "--shard", str(shard),
            "--batch-size", str(args.batch_size), "--engine", "harness"]
    per = _shard_calls(args, shard, guests)
    if per is not None:
        argv += ["--calls", str(per)]
    if args.duration is not None:
        argv += ["--duration", str(args.duration)]
    if args.corpus is not None:
        argv += ["--corpus", f"{GUEST_OUT}/corpus"]  # copied into each shard's share
    if not args.minimize:
        argv.append("--no-minimize")
    if args.strict:
        argv.append("--strict")
    return argv


def _shard_calls(args: argparse.Namespace, shard: int, guests: int) -> int | None:
    if args.calls is None:
        return None
    calls: int = args.calls
    per = calls // guests + (1 if shard - args.shard < calls % guests else 0)
    return max(per, 1)


def _record_guest_crash(shard_dir: Path, shard: int, run: Any, engine: str) -> str | None:
    """Append a crash record for a guest that splatted or hung; return its summary.

    The batches in flight become a reproducer that replays through ``engine``.
    """
    # loaded when the subcommand runs: the CLI imports every subcommand at start
    from kapi_selftests.fuzz.findings import (
        CRASHES_FILE,
        INFLIGHT_FILE,
        SHRINKING_FILE,
        CrashRecord,
        append_jsonl,
        now_iso,
    )

    # loaded when the subcommand runs: the CLI imports every subcommand at start
    from kapi_selftests.plan import plan_from_json

    if not run.splats and not run.killed:
        return None
    shrinking = shard_dir / SHRINKING_FILE
    if not run.splats and shrinking.is_file():
        # silent while this side shrank a finding: the harness kept it busy or waiting.
        # A kernel that hangs shows it in its own batch too; a silence here is not
        # told apart from the harness's own, so it is never filed as a kernel crash
        log.warning("shard %d: the guest went silent while a finding was being shrunk "
                    "(%s): the harness's doing, not a kernel crash", shard, run.killed)
        shrinking.unlink(missing_ok=True)
        return None
    summary = run.splats[0].summary if run.splats else f"guest hung: {run.killed}"
    excerpt: tuple[str, ...] = run.splats[0].excerpt if run.splats else ()
    if not excerpt:
        with contextlib.suppress(OSError):
            excerpt = tuple(run.console.read_text(errors="replace").splitlines()[-40:])
    batch = -1
    plans: tuple[CallPlan, ...] = ()
    infl = shard_dir / INFLIGHT_FILE
    if infl.is_file():
        with contextlib.suppress(ValueError, KeyError, OSError):
            d = json.loads(infl.read_text())
            batch = int(d["batch"])
            plans = tuple(plan_from_json(p) for p in d["plans"])
    saved = shard_dir / "crash-console"
    saved.mkdir(exist_ok=True)
    console_copy = saved / f"batch-{batch}-{int(time.time())}.log"
    with contextlib.suppress(OSError):
        console_copy.write_bytes(run.console.read_bytes())
    repro = ""
    if plans:
        rdir = shard_dir / "repro" / f"crash_shard{shard}_batch{batch}"
        rdir.mkdir(parents=True, exist_ok=True)
        # loaded when the subcommand runs: the CLI imports every subcommand at start
        from kapi_selftests.fuzz.findings import FindingKey
        from kapi_selftests.fuzz.repro import Reproducer, render_json
        r = Reproducer(FindingKey("kernel crash", plans[-1].name, summary[:80]), plans,
                       summary, shard=shard, batch=batch, source="kapi", engine=engine)
        (rdir / "repro.json").write_text(
            json.dumps({**render_json(r), "crash": True}, indent=1) + "\n")
        repro = str(rdir / "repro.json")
    rec = CrashRecord(summary=summary, excerpt=tuple(excerpt), last_plans=plans, shard=shard,
                      batch=batch, when=now_iso(), console=str(console_copy), reproducer=repro)
    append_jsonl(shard_dir / CRASHES_FILE, [rec.to_json()])
    return summary


def run_kernel(args: argparse.Namespace) -> int:

    # loaded when the subcommand runs: the CLI imports every subcommand at start
    from kapi_selftests.fuzz import campaign_report
    from kapi_selftests.host import kernel, qemu, runner
    from kapi_selftests.oracle.spec import builtin_specs

    kimg = kernel.find_kernel(args.kernel, args.modules)
    if args.kcov:
        _check_kcov_config(kimg)
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    cfg = qemu.config_from_env(qemu.GuestConfig(kernel=kimg.image))
    timeout_s = int(args.duration + 600) if args.duration is not None else 24 * 3600
    cfg = dataclasses.replace(cfg, timeout_s=timeout_s, cpus=1, accel=qemu.Accel(args.accel),
                              progress_timeout_s=args.progress_timeout_s,
                              **({"memory_mb": args.memory_mb} if args.memory_mb else {}))
    if args.kcov:  # the same edge ids in every boot, whatever CONFIG_RANDOMIZE_BASE is
        cfg = dataclasses.replace(cfg, append=(*cfg.append, "nokaslr"))
    accel = cfg.accel
    if accel is qemu.Accel.AUTO:
        accel = qemu.choose_accel(cfg, qemu.find_qemu(cfg.arch))
    cfg = dataclasses.replace(cfg, accel=accel)
    n = args.guests
    shards = [args.shard + i for i in range(n)]
    # Shards of the batch engine run in processes (each campaign's Python is the
    # bottleneck: threads would share one GIL); the harness engine's in threads (its
    # work is in the guests). The primitives below serve both.
    ctx = multiprocessing.get_context("fork")
    stop = ctx.Event()
    alive = ctx.Value("i", 0)
    lock = ctx.Lock()
    errq: Any = ctx.Queue()

    lib = None
    if args.engine == "batch":
        # guest side: only a run on this kernel (--local, in the guest) needs it
        from kapi_selftests.link import calltable
        lib = calltable.build_library(calltable.CACHE_DIR)

    def one(shard: int) -> None:
        if args.engine == "batch":
            _batch_shard(args, kimg, cfg, out, shard, n, lib, stop, alive, lock, errq)
            return
        sdir = out / f"shard-{shard}"
        sdir.mkdir(parents=True, exist_ok=True)
        (sdir / STOP_FILE).unlink(missing_ok=True)
        if args.corpus is not None:
            if args.corpus.is_dir():
                shutil.copytree(args.corpus, sdir / "corpus", dirs_exist_ok=True)
            else:
                (sdir / "corpus").mkdir(exist_ok=True)
                shutil.copy(args.corpus, sdir / "corpus" / "repro.json")
        restarts = 0
        while not stop.is_set():
            _clear_guest_files(sdir)
            gcfg = dataclasses.replace(cfg, out_dir=sdir)
            spec = runner.GuestSpec(argv=tuple(_guest_argv(args, shard, n)),
                                    env=runner.guest_env())
            try:
                gcfg, argv = runner.prepare(kimg, gcfg, spec)
                run = _counted_boot(gcfg, argv, sys.stderr if args.console else None,
                                    lock, alive)
            except KapiError as e:
                errq.put(f"shard {shard}: {e}")
                return
            crash = _record_guest_crash(sdir, shard, run, "harness")
            if crash is None:
                if run.status is None:
                    errq.put(f"shard {shard}: guest returned no status "
                             f"(console {run.console})")
                elif run.status not in (0, 1):
                    errq.put(f"shard {shard}: guest exited {run.status} "
                             f"(console {run.console})")
                return  # done: budget spent, stopped, or failed to run
            nxt = _restart_after_crash(args, shard, crash, restarts, errq)
            if nxt is None:
                return
            restarts = nxt

    threads: list[Any] = [
        ctx.Process(target=_shard_process, args=(one, s)) if args.engine == "batch"
        else threading.Thread(target=one, args=(s,), daemon=True) for s in shards]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    ticker = _Ticker(every_s=1.0 if sys.stderr.isatty() else 30.0)
    specs = builtin_specs()
    interrupted = False
    try:
        while any(t.is_alive() for t in threads):
            time.sleep(0.5)
            ticker.show(_live(out, shards, specs, time.monotonic() - t0, alive.value, n))
    except KeyboardInterrupt:
        interrupted = True
        stop.set()
        for s in shards:
            with contextlib.suppress(OSError):
                (out / f"shard-{s}" / STOP_FILE).write_text("stop\n")
        print("\nfuzz: stopping the guests after their current batch (Ctrl-C again to kill)",
              file=sys.stderr)
        try:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            for t in threads:
                t.join()
        except KeyboardInterrupt:
            for t in threads:
                if isinstance(t, multiprocessing.process.BaseProcess) and t.is_alive():
                    t.kill()
    finally:
        ticker.end()
    errors: list[str] = []
    while True:
        try:
            errors.append(errq.get(timeout=0.2))
        except queue.Empty:
            break
    header = [f"kernel: {kimg.image}" + (f" ({kimg.release})" if kimg.release else ""),
              f"guests: {n} ({accel.value})", f"seed {args.seed}, shards {shards}"]
    if interrupted:
        header.append(f"interrupted: rerun with --out {out} to resume")
    # the guests' spec dumps (the batch engine's agents send theirs, the harness engine's
    # guests save theirs): coverage counts every spec'd syscall the guests issued
    kspecs = _kernel_specs(sorted(out.glob("shard-*/agent/kapi")) +
                           sorted(out.glob("shard-*/kapi")))
    if kspecs is not None:
        specs = safe_specs(kspecs)
    # with KCOV, the kernel's System.map names the functions the campaign ran
    data = campaign_report.merge_into(
        [out], out, specs, header=header, notes=errors,
        system_map=kernel.find_system_map(kimg) if args.kcov else None)
    _compare_with_reference(data, kspecs)
    if data.reference:  # the report is written: add the differences to it
        campaign_report.write_outputs(out, data, header=header)
    _print_summary(args, data, header, out / campaign_report.REPORT_FILE)
    if errors and not data.states:
        raise LostGuest("; ".join(errors), hint=f"console logs are under {out}/shard-*")
    if interrupted:
        return KSFT_FAIL
    return _status(data.store.records, data.crashes, data.spec_differences,
                   data.disagreements)


def _check_kcov_config(kimg: Any) -> None:
    """--kcov on a kernel whose config is known not to have KCOV: say so before booting."""
    # host side: the CLI imports every subcommand at start, in the guest too
    from kapi_selftests.host.kernel import read_kconfig

    if kimg.config is None:
        return  # a bare image: the agent finds out in the guest, and says so
    if read_kconfig(kimg.config).get("CONFIG_KCOV") != "y":
        raise MissingFeature(f"--kcov: kernel has no KCOV (CONFIG_KCOV is not set in "
                             f"{kimg.config})",
                             hint="build one with kapi-selftests build-kernel --config "
                                  "vm/kapi.config --config vm/kcov.config")


def _shard_process(one: Any, shard: int) -> None:
    # a batch-engine shard in its own process: Ctrl-C is the parent's to handle (it sets
    # the stop event and writes the stop file; the campaign stops after its batch)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    one(shard)


def _counted_boot(gcfg: Any, qargv: Sequence[str], echo: Any, lock: Any, alive: Any) -> Any:
    # runner.boot, with the live count of guests (for the progress line) kept
    from kapi_selftests.host import runner

    with lock:
        alive.value += 1
    try:
        return runner.boot(gcfg, qargv, echo=echo)
    finally:
        with lock:
            alive.value -= 1


def _boot_in_thread(gcfg: Any, qargv: Sequence[str], echo: Any, lock: Any,
                    alive: Any) -> tuple[threading.Thread, dict[str, Any]]:
    box: dict[str, Any] = {}

    def boot() -> None:
        try:
            box["run"] = _counted_boot(gcfg, qargv, echo, lock, alive)
        except BaseException as e:  # the campaign side sees the guest gone
            box["error"] = e

    th = threading.Thread(target=boot, daemon=True)
    th.start()
    return th, box


def _clear_guest_files(sdir: Path) -> None:
    # what a previous guest of the shard left that the next one writes anew
    for stale in ("status", "console.log"):
        (sdir / stale).unlink(missing_ok=True)


def _restart_after_crash(args: argparse.Namespace, shard: int, crash: str, restarts: int,
                         errq: Any) -> int | None:
    """After a recorded crash: the next restart count, or None when the shard has had
    ``--max-restarts`` of them."""
    log.warning("shard %d: kernel crash: %s; restarting the guest", shard, crash)
    if restarts + 1 > args.max_restarts:
        errq.put(f"shard {shard}: gave up after {restarts + 1} crashed guests")
        return None
    return restarts + 1


def _drop_channel(chan: Any, path: Path) -> None:
    # a shard's shared-memory channel, when it has one, and its file in /dev/shm
    if chan is not None:
        chan.close()
        path.unlink(missing_ok=True)


def _batch_shard(args: argparse.Namespace, kimg: Any, cfg: Any, out: Path, shard: int,
                 guests: int, lib: Path | None, stop: Any, alive: Any, lock: Any,
                 errq: Any) -> None:
    """One shard of the batch engine: the campaign here, an agent in a guest, restarts."""

    # loaded when the subcommand runs: the CLI imports every subcommand at start
    from kapi_selftests.fuzz import campaign, remote
    from kapi_selftests.host import runner
    from kapi_selftests.host.initramfs import GUEST_OUT
    from kapi_selftests.link import shm

    sdir = out / f"shard-{shard}"
    sdir.mkdir(parents=True, exist_ok=True)
    (sdir / STOP_FILE).unlink(missing_ok=True)
    restarts = 0
    while not stop.is_set():
        _clear_guest_files(sdir)
        adir = sdir / "agent"
        shutil.rmtree(adir, ignore_errors=True)
        adir.mkdir()
        argv = [sys.executable, "-S", "-c", _AGENT_ENTRY]
        gcfg = dataclasses.replace(cfg, out_dir=sdir)
        chan = None
        shm_path = Path("/dev/shm") / f"kapi-selftests-{os.getpid()}-{shard}"
        if args.transport == "shm":
            chan = shm.create_host(shm_path)
            gcfg = dataclasses.replace(gcfg, extra_qemu=(*gcfg.extra_qemu,
                                                         *shm.qemu_args(shm_path)))
            argv.append("--shm")
        else:
            argv += ["--dir", f"{GUEST_OUT}/agent"]
        if lib is not None:
            argv += ["--lib", str(lib)]
        if args.kcov:
            argv.append("--kcov")
        try:
            gcfg, qargv = runner.prepare(kimg, gcfg, runner.GuestSpec(
                argv=tuple(argv), env=runner.guest_env()))
        except KapiError as e:
            errq.put(f"shard {shard}: {e}")
            _drop_channel(chan, shm_path)
            return
        th, box = _boot_in_thread(gcfg, qargv, sys.stderr if args.console else None,
                                  lock, alive)

        def gone(t: threading.Thread = th) -> str | None:
            return None if t.is_alive() else "the guest exited"

        link: Any = (remote.ShmLink(chan, adir / "kapi", alive=gone) if chan is not None
                     else remote.DirLink(adir, alive=gone))
        lost: str | None = None
        try:
            with remote.RemoteHarness(link, strict=args.strict) as h:
                ccfg = campaign.CampaignConfig(out=sdir, seed=args.seed, shard=shard,
                                           calls=_shard_calls(args, shard, guests),
                                           duration_s=args.duration, batch_size=args.batch_size,
                                           minimize=args.minimize, strict=args.strict,
                                           mutate_rate=args.mutate_rate)
                camp = campaign.Campaign(ccfg, h)
                if camp.state.batches == 0 and args.corpus is not None:
                    for plans in _corpus_plans(args.corpus, args.batch_size):
                        camp.run_corpus(plans)
                camp.run(stop=lambda: stop.is_set() or (sdir / STOP_FILE).exists())
        except LostGuest as e:
            lost = str(e)
        except MissingFeature as e:  # the agent cannot start here (no KCOV): no restart
            errq.put(f"shard {shard}: {e}" + (f" ({e.hint})" if e.hint else ""))
            return
        except Exception as e:  # one line in the summary, not a traceback from a child
            log.debug("shard %d failed", shard, exc_info=True)  # -v shows the traceback
            errq.put(f"shard {shard}: {type(e).__name__}: {e}")
            return
        finally:
            link.close()
            th.join(timeout=120)
            _drop_channel(chan, shm_path)
        if lost is None:
            return
        run = box.get("run")
        crash = _record_guest_crash(sdir, shard, run, "batch") if run is not None else None
        if crash is None:
            errq.put(f"shard {shard}: {lost}" + (f" (console {run.console})" if run else ""))
            return
        nxt = _restart_after_crash(args, shard, crash, restarts, errq)
        if nxt is None:
            return
        restarts = nxt


def _live(out: Path, shards: Sequence[int], specs: Any, elapsed_s: float, alive: int,
          n: int) -> str:
    calls, findings = 0, dict[str, int]()
    cov_hit = cov_total = edges = corpus = 0
    kcov = False  # some shard measures kernel coverage
    for s in shards:
        st = out / f"shard-{s}" / "state.json"
        try:
            d = json.loads(st.read_text())
        except (OSError, ValueError):
            continue
        calls += int(d.get("calls", 0))
        for k, v in dict(d.get("findings", {})).items():
            findings[k] = findings.get(k, 0) + int(v)
        f = d.get("coverage", {})
        cov_hit = max(cov_hit, int(f.get("sides_hit", 0)) + int(f.get("errors_hit", 0)))
        cov_total = max(cov_total, int(f.get("sides_total", 0)) + int(f.get("errors_total", 0)))
        k = d.get("kcov")
        if k:
            kcov = True
            edges = max(edges, int(k["edges"]))
            corpus += int(k["corpus"])
    cov = f"{100 * cov_hit / cov_total:.1f}% (best shard)" if cov_total else "-"
    kc = f"{edges} edges (best shard), corpus {corpus}" if kcov else ""
    return _progress_text(elapsed_s, calls, findings, cov, f"{alive}/{n}", kc)
