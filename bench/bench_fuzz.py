#!/usr/bin/env python3
"""Fuzzing throughput: checked calls per second of a campaign against a bare C loop.

Usage: python bench/bench_fuzz.py [--kernel PATH | --local] [--engine batch|harness]
                                  [--calls N] [--loop N] [--json FILE]

Both figures come from the same kernel in the same run (the same guest with
``--kernel``):

* **campaign**: ``fuzz.Campaign`` over ``--calls`` generated calls, no shrinking.
  ``--engine batch`` (default, what ``fuzz`` runs): generation, prediction,
  decoding and judging here, the calls issued in the guest by the agent's compiled
  executor, tables and traces over shared memory (batches of 2000, two in flight);
  ``--engine harness``: the whole campaign in the guest (batches of 200). Checked
  calls/s = calls / wall time of the campaign loop (the boot is not in it).
* **C loop**: ``read(fd, buf, 0)`` ``--loop`` times with raw ``syscall()``, in a
  private tracefs instance with the kapi events enabled (``kapi:enable``; the
  generic ``syscalls:sys_enter_read``/``sys_exit_read`` on a kernel without them),
  compiled with gcc into a temporary directory at bench time (nothing committed).
  With the batch engine it runs in the guest right before and right after the
  campaign; the ratio uses their mean.

With ``--kernel PATH`` (or ``KAPI_KERNEL``; there is no default: pass a KAPI kernel
for the KAPI figure, or ``.cache/kernels/stock``, the stock kernel ``.ci/setup``
extracts) one TCG guest serves both. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


C_LOOP = r"""#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

static char inst[256];

static int tfs(const char *file, const char *val)
{
	char path[512];
	struct iovec iov = { (void *)val, strlen(val) };
	int fd, ok;

	snprintf(path, sizeof(path), "%s/%s", inst, file);
	fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	ok = writev(fd, &iov, 1) == (ssize_t)iov.iov_len; /* writev: no KAPI spec */
	close(fd);
	return ok ? 0 : -1;
}

int main(int argc, char **argv)
{
	long n = argc > 1 ? atol(argv[1]) : 1000000;
	const char *events = argc > 2 ? argv[2] : "kapi";
	char buf[16], pid[32];
	struct timespec a, b;
	int fd = open("/dev/zero", O_RDONLY | O_CLOEXEC);

	snprintf(inst, sizeof(inst), "/sys/kernel/tracing/instances/bench-%d", getpid());
	if (fd < 0 || mkdir(inst, 0700))
		return 4;
	tfs("tracing_on", "0");
	snprintf(pid, sizeof(pid), "%d", getpid());
	tfs("set_event_pid", pid);
	if (!strcmp(events, "kapi")) {
		if (tfs("events/kapi/enable", "1"))
			goto skip;
	} else if (tfs("events/syscalls/sys_enter_read/enable", "1") ||
			tfs("events/syscalls/sys_exit_read/enable", "1")) {
		goto skip;
	}
	tfs("tracing_on", "1");
	clock_gettime(CLOCK_MONOTONIC, &a);
	for (long i = 0; i < n; i++)
		syscall(SYS_read, fd, buf, 0);
	clock_gettime(CLOCK_MONOTONIC, &b);
	tfs("tracing_on", "0");
	tfs("events/enable", "0");
	rmdir(inst);
	printf("%.1f\n", n / ((b.tv_sec - a.tv_sec) + (b.tv_nsec - a.tv_nsec) / 1e9));
	return 0;
skip:
	rmdir(inst);
	return 4;
}
"""


def compile_loop(dest: Path) -> Path:
    """Compile the C loop into ``dest`` (gcc -O2 -Wall)."""
    src = dest / "read0.c"
    src.write_text(C_LOOP)
    exe = dest / "read0"
    subprocess.run(["gcc", "-O2", "-Wall", "-o", str(exe), str(src)], check=True)
    return exe


def measure(exe: Path, calls: int, loop: int, work: Path) -> dict[str, Any]:
    """Both figures on the running kernel (root)."""
    from kapi_selftests.fuzz.campaign import Campaign, CampaignConfig
    from kapi_selftests.guest.executor import find_event_source
    from kapi_selftests.guest.harness import Harness
    from kapi_selftests.records import EventSource

    source = find_event_source()
    events = "kapi" if source is EventSource.KAPI else "syscalls"
    r = subprocess.run([str(exe), str(loop), events], capture_output=True, text=True)
    c_rate = float(r.stdout.strip()) if r.returncode == 0 else None
    out = work / "campaign"
    shutil.rmtree(out, ignore_errors=True)
    with Harness() as h:
        camp = Campaign(CampaignConfig(out=out, seed=1, calls=calls, minimize=False), h)
        t0 = time.monotonic()
        p = camp.run()
        wall = time.monotonic() - t0
    return {"kernel": os.uname().release, "events": events, "campaign_calls": p.calls,
            "campaign_s": round(wall, 3), "campaign_calls_per_s": round(p.calls / wall, 1),
            "coverage": p.coverage.describe(), "findings": dict(p.findings),
            "c_loop_calls": loop, "c_loop_calls_per_s": c_rate,
            "ratio": round(p.calls / wall / c_rate, 5) if c_rate else None}


def in_guest(kernel_path: Path, calls: int, loop: int) -> dict[str, Any]:
    from kapi_selftests.host import initramfs, kernel, qemu, runner

    k = kernel.find_kernel(kernel_path)
    work = Path(tempfile.mkdtemp(prefix="kapi-bench-fuzz-"))
    compile_loop(work)  # on the host: gcc under TCG only costs time
    out = initramfs.GUEST_OUT
    argv = (sys.executable, "-S", str(Path(__file__).resolve()), "--guest", "--exe",
            f"{out}/read0", "--out", out, "--calls", str(calls), "--loop", str(loop))
    cfg = dataclasses.replace(qemu.GuestConfig(kernel=k.image, accel=qemu.Accel.TCG,
                                               timeout_s=1800), out_dir=work, cpus=1)
    cfg, qargv = runner.prepare(k, cfg, runner.GuestSpec(argv=argv, env=runner.guest_env()))
    run = runner.boot(cfg, qargv)
    try:
        res: dict[str, Any] = json.loads((work / "bench.json").read_text())
    except (OSError, ValueError):
        raise SystemExit(f"guest wrote no figures (status {run.status}); "
                         f"console {run.console}") from None
    res["guest"] = f"TCG, 1 vCPU, {k.image} ({k.release})"
    res["boot_total_s"] = run.timings.total_s
    res["campaign_dir"] = str(work / "campaign")
    if not res.get("findings"):
        shutil.rmtree(work, ignore_errors=True)
    return res


def batch_in_guest(kernel_path: Path, calls: int, loop: int,
                   batch_size: int = 2000) -> dict[str, Any]:
    """The batch engine: campaign here, agent and C loop (before and after) in one guest."""
    import shlex
    import threading

    from kapi_selftests.fuzz import remote
    from kapi_selftests.fuzz.campaign import Campaign, CampaignConfig
    from kapi_selftests.host import initramfs, kernel, qemu, runner
    from kapi_selftests.link import calltable, shm

    k = kernel.find_kernel(kernel_path)
    work = Path(tempfile.mkdtemp(prefix="kapi-bench-fuzz-"))
    compile_loop(work)  # the guest runs it from the output share
    lib = calltable.build_library(calltable.CACHE_DIR)
    out = initramfs.GUEST_OUT
    events = "kapi" if "CONFIG_KAPI_RUNTIME_CHECKS=y" in _config_of(k) else "syscalls"
    loop_cmd = f"{out}/read0 {loop} {events} >> {out}/cloop.txt"
    agent = shlex.join([sys.executable, "-S", "-c", "import sys; from kapi_selftests.guest.agent "
                        "import main; sys.exit(main(sys.argv[1:]))", "--shm",
                        *(["--lib", str(lib)] if lib else [])])
    script = f"{loop_cmd}; {agent}; {loop_cmd}"
    shm_path = Path("/dev/shm") / f"kapi-bench-{os.getpid()}"
    ch = shm.create_host(shm_path)
    cfg = dataclasses.replace(qemu.GuestConfig(kernel=k.image, accel=qemu.Accel.TCG,
                                               timeout_s=1800), out_dir=work, cpus=1,
                              extra_qemu=shm.qemu_args(shm_path))
    cfg, qargv = runner.prepare(k, cfg, runner.GuestSpec(argv=("/bin/sh", "-c", script),
                                                         env=runner.guest_env()))
    box: dict[str, Any] = {}
    th = threading.Thread(target=lambda: box.setdefault("run", runner.boot(cfg, qargv)),
                          daemon=True)
    th.start()
    link = remote.ShmLink(ch, work / "kapi", alive=lambda: None if th.is_alive()
                          else "the guest exited")
    try:
        with remote.RemoteHarness(link) as h:
            camp = Campaign(CampaignConfig(out=work / "campaign", seed=1, calls=calls,
                                           batch_size=batch_size, minimize=False), h)
            t0 = time.monotonic()
            p = camp.run()
            wall = time.monotonic() - t0
            waited = link.waited_s
    finally:
        th.join(timeout=600)
        ch.close()
        shm_path.unlink(missing_ok=True)
    rates = [float(x) for x in (work / "cloop.txt").read_text().split()] \
        if (work / "cloop.txt").is_file() else []
    c_rate = sum(rates) / len(rates) if rates else None
    run = box.get("run")
    agent_line = ""
    if run is not None:
        agent_line = next((ln for ln in run.console.read_text(errors="replace").splitlines()
                           if "agent: served" in ln), "")
    res = {"kernel": k.release, "events": h.source.value, "engine": "batch",
           "campaign_calls": p.calls, "campaign_s": round(wall, 3),
           "campaign_calls_per_s": round(p.calls / wall, 1), "coverage": p.coverage.describe(),
           "findings": dict(p.findings), "c_loop_calls": loop,
           "c_loop_runs_calls_per_s": rates, "c_loop_calls_per_s": c_rate,
           "ratio": round(p.calls / wall / c_rate, 5) if c_rate else None,
           "host_waited_s": round(waited, 2), "agent": agent_line.strip(),
           "guest": f"TCG, 1 vCPU, {k.image} ({k.release})",
           "campaign_dir": str(work / "campaign")}
    if not p.findings:
        shutil.rmtree(work, ignore_errors=True)
    return res


def _config_of(k: Any) -> str:
    try:
        return Path(k.config).read_text() if getattr(k, "config", None) else ""
    except OSError:
        return ""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    where = ap.add_mutually_exclusive_group()
    where.add_argument("--kernel", type=Path, default=os.environ.get("KAPI_KERNEL") or None,
                       help="kernel to boot (default: KAPI_KERNEL; none else)")
    where.add_argument("--local", action="store_true", help="measure on the running kernel")
    ap.add_argument("--engine", choices=("batch", "harness"), default="batch")
    ap.add_argument("--batch-size", type=int, default=2000, help="batch engine: calls per "
                                                                 "table (default 2000)")
    ap.add_argument("--calls", type=int, help="campaign calls (default 60000 with the batch "
                                              "engine, 2000 with the harness)")
    ap.add_argument("--loop", type=int, default=200000, help="C loop calls (default 200000)")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    ap.add_argument("--guest", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--exe", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.calls is None:
        a.calls = 60000 if a.engine == "batch" else 2000
    if a.guest:
        res = measure(a.exe, a.calls, a.loop, a.out)  # the campaign stays in the share
        (a.out / "bench.json").write_text(json.dumps(res))
        return 0
    if a.local:
        with tempfile.TemporaryDirectory() as tmp:
            res = measure(compile_loop(Path(tmp)), a.calls, a.loop, Path(tmp))
        res["guest"] = "none (--local, host kernel)"
    else:
        if a.kernel is None:
            ap.error("no kernel: pass --kernel PATH (or set KAPI_KERNEL), or --local; "
                     "the stock kernel of .ci/setup is .cache/kernels/stock")
        kp = Path(a.kernel)
        res = (batch_in_guest(kp, a.calls, a.loop, a.batch_size) if a.engine == "batch"
               else in_guest(kp, a.calls, a.loop))
    print("| where | events | campaign checked calls/s | C read(fd, buf, 0) calls/s | ratio |")
    print("|---|---|---:|---:|---:|")
    ratio = f"1/{1 / res['ratio']:.0f}" if res.get("ratio") else "-"
    print(f"| {res['guest']} | {res['events']} | {res['campaign_calls_per_s']} "
          f"({res['campaign_calls']} calls in {res['campaign_s']} s) | "
          f"{res['c_loop_calls_per_s']} | {ratio} |")
    print(f"coverage: {res['coverage']}; findings: {res['findings'] or 'none'}")
    if res.get("agent"):
        print(f"guest: {res['agent']}; host waited for the guest {res['host_waited_s']} s "
              "(boot included)")
    if a.json:
        a.json.write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
