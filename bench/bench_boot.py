#!/usr/bin/env python3
"""Boot benchmark: boot-to-init, boot-to-first-test (median of N) and whole-suite wall time.

Usage: python bench/bench_boot.py [--kernel PATH ...] [--runs 5] [--suite] [--json FILE]

Each run boots one fresh TCG guest with the real in-guest runner (the default suite,
only the smoke tests selected), so "first test" includes Python start-up, importing
pytest and collecting the suite's first session (the tests without hypothesis). With
--suite, one more run executes the whole default suite as ``run --kernel`` does (its
default number of guests) and its wall time is reported (boot included). Prints a
Markdown table (bench/README.md has figures).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kapi_selftests.host import kernel, qemu, runner  # noqa: E402
from kapi_selftests.report import Outcome, TestResult  # noqa: E402

STOCK = Path(__file__).resolve().parents[1] / ".cache" / "kernels" / "stock"


def _one(k: kernel.KernelImage, keyword: str | None, pvh: bool, guests: int | None = 1
         ) -> tuple[list[TestResult], list[runner.GuestRun]]:
    with tempfile.TemporaryDirectory(prefix="kapi-bench-") as tmp:
        cfg = qemu.GuestConfig(kernel=k.image, accel=qemu.Accel.TCG, pvh=pvh, timeout_s=600)
        req = runner.SuiteRequest(kernel=k, config=cfg, work_dir=Path(tmp), keyword=keyword,
                                  guests=guests)
        results, runs = runner.run_guests(req)
        bad = [r for r in results if r.outcome in (Outcome.FAIL, Outcome.ERROR)]
        if bad:
            print(f"  warning: {len(bad)} failed/error results, e.g. {bad[0].name}: "
                  f"{bad[0].reason}", file=sys.stderr)
        return results, runs


def _med(xs: list[float | None]) -> float | None:
    vals = [x for x in xs if x is not None]
    return round(statistics.median(vals), 2) if vals else None


def bench(path: str, runs: int, suite: bool, pvh: bool) -> dict[str, object]:
    k = kernel.find_kernel(path)
    timings = []
    for i in range(runs):
        _, (r,) = _one(k, "smoke", pvh)
        t = r.timings
        print(f"  {Path(path).name} run {i + 1}: init {t.init_s} s, root mounted {t.start_s} s, "
              f"first test {t.first_test_s} s, end {t.total_s} s", file=sys.stderr)
        timings.append(t)
    out: dict[str, object] = {
        "kernel": str(path), "release": k.release, "runs": runs, "pvh": pvh,
        "boot_to_init_s": _med([t.init_s for t in timings]),
        "boot_to_root_s": _med([t.start_s for t in timings]),
        "boot_to_first_test_s": _med([t.first_test_s for t in timings]),
        "smoke_run_total_s": _med([t.total_s for t in timings]),
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }
    if suite:
        t0 = time.monotonic()
        results, runs = _one(k, None, pvh, guests=None)  # as run --kernel: auto guests
        out["suite_wall_s"] = round(time.monotonic() - t0, 2)
        out["suite_guests"] = len(runs)
        out["suite_results"] = len(results)
        print(f"  {Path(path).name} suite: {out['suite_wall_s']} s wall, "
              f"{len(results)} results, {len(runs)} guest(s)", file=sys.stderr)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kernel", action="append", help="kernel(s) to boot (default: stock)")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--suite", action="store_true", help="also time the whole default suite")
    p.add_argument("--no-pvh", dest="pvh", action="store_false")
    p.add_argument("--json", type=Path, help="write the figures here too")
    a = p.parse_args()
    if not a.kernel and not STOCK.exists():
        p.error(f"no kernel: pass --kernel PATH, or run .ci/setup, which extracts the stock "
                f"kernel to {STOCK}")
    kernels = a.kernel or [str(STOCK)]
    rows = [bench(k, a.runs, a.suite, a.pvh) for k in kernels]
    print("| kernel | boot→init s | boot→root mounted s | boot→first test s | "
          "smoke run s | whole suite s (boot incl.) | load |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['release'] or r['kernel']}{'' if r['pvh'] else ' (bzImage)'} | "
              f"{r['boot_to_init_s']} | {r['boot_to_root_s']} | {r['boot_to_first_test_s']} | "
              f"{r['smoke_run_total_s']} | {r.get('suite_wall_s', '-')} | {r['load_avg_1m']} |")
    if a.json:
        a.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
