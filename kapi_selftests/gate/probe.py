"""The gate's guest side: a fixed call mix, recorded per call, and timed. [G]

The same plans, in the same order, on every kernel: :func:`probe_plans` is a
table of boundary values for every constraint of the v4 specs (whatever the
running kernel's own specs say, so that two kernels get identical calls),
extended by a seeded sample of their combinations. :func:`run_probe` issues
them through the :class:`~kapi_selftests.guest.harness.Harness` (kapi events where
the kernel has them, the generic syscall events where it does not) and writes
``calls.jsonl`` in the format of :mod:`kapi_selftests.gate.record`; then it
times a small mix of spec'd calls with tracing off, the runtime cost of the
checks, into ``timing.json``.

Runs in the guest as ``python -S -c 'from kapi_selftests.gate.probe import
guest_main; ...' --out DIR``; never imported on the host side.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import logging
import os
import random
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from kapi_selftests.arch import NR
from kapi_selftests.plan import (
    ArgPlan,
    Buf,
    BufKind,
    CallPlan,
    Fd,
    FdKind,
    Lit,
    PathKind,
    plan_to_json,
)
from kapi_selftests.plan import Path as PathArg

__all__ = ["probe_plans", "run_probe", "time_mix", "guest_main"]

log = logging.getLogger(__name__)

_O_RDWR, _O_CREAT, _O_DIRECTORY, _O_PATH = 0o2, 0o100, 0o200000, 0o10000000
_O_TMPFILE = 0o20200000
_OPEN_PATHS = (PathKind.EXISTING, PathKind.NEW, PathKind.MISSING, PathKind.DIRECTORY,
               PathKind.EMPTY, PathKind.LEN_PATH_MAX_1, PathKind.LEN_PATH_MAX,
               PathKind.UNTERMINATED, PathKind.NULL, PathKind.KERNEL, PathKind.DEV_NULL)
_OPEN_FLAGS = (0, _O_RDWR, _O_RDWR | _O_CREAT, _O_DIRECTORY, _O_PATH, _O_TMPFILE | _O_RDWR,
               3, 1 << 30, 1 << 31, 1 << 32, -1)
_OPEN_MODES = (0, 0o644, 0o7777, 0o10000, 0o170000, 0xFFFF, 0x10000, 1 << 31, 1 << 32, -1)
_RW_FDS = (FdKind.REGULAR, FdKind.REGULAR_RDONLY, FdKind.REGULAR_WRONLY, FdKind.DIRECTORY,
           FdKind.PIPE_READ, FdKind.PIPE_WRITE, FdKind.DEV_NULL, FdKind.DEV_ZERO,
           FdKind.DEV_FULL, FdKind.EVENTFD, FdKind.O_PATH, FdKind.CLOSED)
_RW_BUFS = (BufKind.MAPPED, BufKind.GUARD_TAIL, BufKind.SHORT, BufKind.READONLY,
            BufKind.UNMAPPED, BufKind.NULL, BufKind.KERNEL)
_RW_COUNTS = (0, 1, 8, 4096)
# Never an fd literal that casts to a real fd (2^32 is fd 0: a read would block on the
# console); the high-bits edge is Fd(kind, high=1), a live fd plus 2^32.
_FD_LITS = (-1, -100, 2**31 - 1, 2**31, 2**32 - 1)
_COUNT_LITS = (1 << 63, 2**63 - 1, -1)
_MADV_ADVICE = (0, 1, 2, 3, 4, 8, 14, 15, 22, -1, 1 << 31)
_MADV_LENS = (0, 1, 4096, 8192, -1)
_REFERENCE = "reference"


def _boundary_plans() -> list[CallPlan]:
    out: list[CallPlan] = []
    for p in _OPEN_PATHS:
        out.append(CallPlan("open", (PathArg(p), Lit(0), Lit(0))))
    for f in _OPEN_FLAGS:
        out.append(CallPlan("open", (PathArg(PathKind.EXISTING), Lit(f), Lit(0))))
    for m in _OPEN_MODES:
        out.append(CallPlan("open", (PathArg(PathKind.EXISTING), Lit(0), Lit(m))))
        out.append(CallPlan("open", (PathArg(PathKind.NEW), Lit(_O_RDWR | _O_CREAT), Lit(m))))
    for name in ("read", "write"):
        for fk in _RW_FDS:
            out.append(CallPlan(name, (Fd(fk), Buf(BufKind.MAPPED, 8), Lit(8))))
        for bk in _RW_BUFS:
            out.append(CallPlan(name, (Fd(FdKind.DEV_ZERO if name == "read" else
                                          FdKind.DEV_NULL), Buf(bk, 8), Lit(8))))
        for lit in _FD_LITS:
            out.append(CallPlan(name, (Lit(lit), Buf(BufKind.MAPPED, 8), Lit(8))))
        out.append(CallPlan(name, (Fd(FdKind.REGULAR, high=1), Buf(BufKind.MAPPED, 8), Lit(8))))
        for c in _COUNT_LITS:
            out.append(CallPlan(name, (Fd(FdKind.REGULAR), Buf(BufKind.MAPPED, 8), Lit(c))))
    for fk in (FdKind.REGULAR, FdKind.PIPE_READ, FdKind.SOCKET, FdKind.O_PATH, FdKind.CLOSED):
        out.append(CallPlan("close", (Fd(fk),)))
    for lit in _FD_LITS:
        out.append(CallPlan("close", (Lit(lit),)))
    out.append(CallPlan("close", (Fd(FdKind.DEV_NULL, high=1),)))
    for adv in _MADV_ADVICE:
        out.append(CallPlan("madvise", (Buf(BufKind.MAPPED, 8192), Lit(8192), Lit(adv))))
    for ln in _MADV_LENS:
        out.append(CallPlan("madvise", (Buf(BufKind.MAPPED, 8192), Lit(ln), Lit(0))))
    for bk in (BufKind.UNALIGNED, BufKind.UNMAPPED, BufKind.NULL, BufKind.KERNEL):
        out.append(CallPlan("madvise", (Buf(bk, 4096), Lit(4096), Lit(0))))
    return out


def _random_plan(rng: random.Random) -> CallPlan:
    name = rng.choice(("open", "read", "write", "close", "madvise"))
    args: tuple[ArgPlan, ...]
    if name == "open":
        args = (PathArg(rng.choice(_OPEN_PATHS)), Lit(rng.choice(_OPEN_FLAGS)),
                Lit(rng.choice(_OPEN_MODES)))
    elif name in ("read", "write"):
        count = rng.choice(_RW_COUNTS)
        args = (Fd(rng.choice(_RW_FDS)), Buf(rng.choice(_RW_BUFS), max(count, 1)), Lit(count))
    elif name == "close":
        args = (Fd(rng.choice(_RW_FDS)),) if rng.random() < 0.7 else (Lit(rng.choice(_FD_LITS)),)
    else:
        ln = rng.choice((4096, 8192, 0, 1))
        args = (Buf(rng.choice((BufKind.MAPPED, BufKind.UNALIGNED)), max(ln, 4096)), Lit(ln),
                Lit(rng.choice((0, 1, 2, 3, 4, 22, -1))))
    return CallPlan(name, args)


def probe_plans(seed: int, calls: int) -> list[CallPlan]:
    """The gate's call mix: the boundary table, then seeded random combinations,
    ``calls`` plans in all (at least the whole boundary table)."""
    plans = _boundary_plans()
    rng = random.Random(seed)
    while len(plans) < calls:
        plans.append(_random_plan(rng))
    return plans


def run_probe(out: Path, *, seed: int, calls: int, batch: int = 1) -> int:
    """Issue :func:`probe_plans` through the harness; write ``out/calls.jsonl``.

    One call per capture window by default: the harness measures a rejected call's side
    effects (fd table, files) across its whole window, so a call that succeeds on one
    kernel only would otherwise turn its neighbours' checks into differences.

    :return: the number of calls recorded
    """
    # guest side: the host imports this package too (gate.record, gate.compare)
    from kapi_selftests.guest.harness import Harness
    from kapi_selftests.oracle.spec import load_specs
    from kapi_selftests.records import ENTER, EXIT, EventSource

    specs, where = load_specs()
    log.info("probe: %s", where)
    plans = probe_plans(seed, calls)
    out.mkdir(parents=True, exist_ok=True)
    n = 0
    with Harness(specs=specs) as h, (out / "calls.jsonl").open("w") as fh:
        for start in range(0, len(plans), batch):
            chunk = plans[start:start + batch]
            res = h.run(chunk)
            for k, (plan, check) in enumerate(zip(chunk, res.checks, strict=True)):
                rec = check.record
                if h.source is EventSource.KAPI:
                    enters = [e for e in check.events if e.name == ENTER]
                    exits = [e for e in check.events if e.name == EXIT]
                    spec_match: int | None = (int(str(exits[-1].fields.get("spec_match", 0)))
                                              if exits else None)
                else:
                    enters = [e for e in check.events if e.name == f"sys_enter_{plan.name}"]
                    exits = [e for e in check.events if e.name == f"sys_exit_{plan.name}"]
                    spec_match = None
                fh.write(json.dumps({
                    "source": "probe", "seed": seed, "shard": 0, "index": start + k,
                    "plan": plan_to_json(plan), "regs": list(rec.args[:len(plan.args)]),
                    "ret": rec.ret, "errno": rec.errno, "spec_match": spec_match,
                    "pairs": min(len(enters), len(exits)),
                    "findings": sorted({f.kind.value for f in check.failures})}) + "\n")
                n += 1
    return n


def time_mix(rounds: int) -> dict[str, object]:
    """Time a fixed mix of spec'd calls, tracing off: mean ns per call, per syscall.

    After a warm-up pass, each syscall's variants are issued ``rounds / 7`` times in a
    tight loop (raw ``syscall(2)`` through ctypes), seven times over, interleaved across
    syscalls, and the fastest repetition counts; calls that succeed and calls each spec
    rejects are both in the mix. ``getpid`` (no spec) is timed the same way, as the
    reference that cancels the guest's own speed out of a comparison between two runs.
    """
    # guest side: the host imports this package too (gate.record, gate.compare)
    from kapi_selftests.guest.memory import Arena
    from kapi_selftests.guest.syscalls import invoke

    with Arena() as arena:
        buf = arena.buffer(8192, b"x" * 8192)
        path = arena.cstring(b"/dev/null")
        fd = os.open("/dev/null", os.O_RDWR | os.O_CLOEXEC)
        # a number no fd has (closed at once): close() of it passes the fd check, EBADF;
        # high, but under the soft fd limit (F_DUPFD above it is EINVAL)
        import resource
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        free = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, min(4000, max(soft // 2, 64)))
        os.close(free)
        try:
            mix: dict[str, list[tuple[int, ...]]] = {
                "read": [(NR["read"], fd, buf, 1), (NR["read"], -1 & (2**64 - 1), buf, 1)],
                "write": [(NR["write"], fd, buf, 1), (NR["write"], fd, 0, 1)],
                "close": [(NR["close"], free), (NR["close"], 2**64 - 1)],
                "open": [(NR["open"], 0, 0, 0), (NR["open"], path, 1 << 31, 0)],
                "madvise": [(NR["madvise"], buf, 8192, 0), (NR["madvise"], buf + 1, 4096, 0)],
                # no spec: the guest's speed (TCG, host load) in the same run, to normalise
                _REFERENCE: [(NR["getpid"],), (NR["getpid"],)],
            }
            reps = 7  # best of 7: the repetition least disturbed by the host
            per_rep = max(rounds // reps, 1)
            # An open the kernel accepts returns an fd (on a kernel without the checks,
            # every one here): keep them and close them after each timed loop, or the
            # process runs out of low fd numbers and the fuzz run after this one sees
            # fd numbers its "closed" fds collide with.
            opened: list[int] = []

            def issue(nr: int, *args: int) -> None:
                r = invoke(nr, *args)
                if nr == NR["open"] and r.ret >= 0:
                    opened.append(r.ret)

            def close_opened() -> None:
                for o in opened:
                    os.close(o)
                opened.clear()

            for variants in mix.values():  # warm-up: page faults, ctypes, caches
                for _ in range(max(per_rep // 4, 1)):
                    for nr, *args in variants:
                        issue(nr, *args)
                close_opened()
            best: dict[str, int] = {}
            for _ in range(reps):  # interleaved, so a disturbance hits every syscall alike
                for name, variants in mix.items():
                    t0 = time.perf_counter_ns()
                    for _ in range(per_rep):
                        for nr, *args in variants:
                            issue(nr, *args)
                    dt = time.perf_counter_ns() - t0
                    close_opened()
                    best[name] = min(best.get(name, dt), dt)
            per = {name: best[name] / (per_rep * len(mix[name])) for name in mix}
            ref = per.pop(_REFERENCE)
            total = sum(per_rep * len(v) for k, v in mix.items() if k != _REFERENCE)
            total_ns = sum(v for k, v in best.items() if k != _REFERENCE)
        finally:
            os.close(fd)
    return {"calls": total, "ns_per_call": total_ns / total, "per_syscall": per,
            "reference_ns": ref, "reference": "getpid", "rounds": rounds}


def guest_main(argv: Sequence[str]) -> int:
    """``probe --out DIR [--seed S] [--calls N] [--timing-rounds R]`` in the guest."""
    p = argparse.ArgumentParser(prog="kapi-selftests gate-probe")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--calls", type=int, default=300)
    p.add_argument("--timing-rounds", type=int, default=1000)
    p.add_argument("--fuzz-calls", type=int, default=0)
    p.add_argument("--fuzz-out", type=Path)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(name)s: %(levelname)s: %(message)s")
    _raise_nofile()
    n = run_probe(args.out, seed=args.seed, calls=args.calls)
    log.info("probe: %d calls recorded", n)
    if args.timing_rounds > 0:
        timing = time_mix(args.timing_rounds)
        (args.out / "timing.json").write_text(json.dumps(timing, indent=1) + "\n")
        log.info("probe: timing %.0f ns per call", timing["ns_per_call"])
    if args.fuzz_calls > 0:
        n = run_fuzz(args.fuzz_out or args.out.parent / "fuzz", seed=args.seed,
                     calls=args.fuzz_calls)
        log.info("fuzz: %d calls recorded", n)
    return 0


def _raise_nofile(want: int = 65536) -> None:
    # A guest's init leaves RLIMIT_NOFILE at 1024; a batch of generated calls can hold
    # more fds than that at once on a kernel that accepts every open.
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for limit in ((want, max(hard, want)), (hard, hard)):
        try:
            if limit[0] > soft:
                resource.setrlimit(resource.RLIMIT_NOFILE, limit)
            return
        except (ValueError, OSError):
            continue


def run_fuzz(out: Path, *, seed: int, calls: int) -> int:
    """A fixed-seed fuzz run (:mod:`kapi_selftests.fuzz.campaign`) writing ``out/calls.jsonl``.

    Plans are generated from the built-in v4 model with steering off and no shrinking,
    so both kernels get the same calls whatever their own specs say.

    :return: calls recorded
    """
    # guest side: the host imports this package too (gate.record, gate.compare)
    from kapi_selftests.fuzz.campaign import Campaign, CampaignConfig
    from kapi_selftests.guest.harness import Harness
    from kapi_selftests.oracle.spec import builtin_specs

    if out.exists():
        shutil.rmtree(out)
    # 50 calls a window: each call gets fresh fds (pipes and sockets take two or three),
    # and on a kernel without the checks every open succeeds and holds one till the end
    cfg = CampaignConfig(out=out, seed=seed, shard=0, calls=calls, minimize=False,
                         steer_rate=0.0, batch_size=50)
    with Harness(specs=builtin_specs()) as h:
        Campaign(cfg, h).run()
    f = out / "calls.jsonl"
    return sum(1 for _ in f.open()) if f.is_file() else 0


if __name__ == "__main__":
    sys.exit(guest_main(sys.argv[1:]))
