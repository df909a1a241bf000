#!/usr/bin/env python3
"""Direct QEMU vs virtme-ng: boot→first test and the whole suite, same kernel, same run.

Usage: python bench/bench_runners.py [--kernel PATH] [--runs 3] [--suite] [--json FILE]

The two runners alternate (qemu, vng, qemu, vng, ...) so a machine whose speed moves
between minutes moves both alike; each figure is the median of its runs, and the
ratio vng/qemu is taken of those medians. Boot→first test is from the runner's start
(QEMU's, or vng's own start-up included) to the in-guest suite's first test, with only
the smoke tests selected, on one TCG guest. --suite adds one whole default suite per
runner, as ``run --kernel`` runs it. Needs vng (``pip install 'kapi-selftests[vng]'``)
and udev running. Prints a Markdown table (the README has the figures).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kapi_selftests.host import kernel, qemu, runner  # noqa: E402

STOCK = Path(__file__).resolve().parents[1] / ".cache" / "kernels" / "stock"
RUNNERS = ("qemu", "vng")


def _run(k: kernel.KernelImage, name: str, keyword: str | None, guests: int | None
         ) -> tuple[float, float | None, int]:
    with tempfile.TemporaryDirectory(prefix="kapi-bench-") as tmp:
        cfg = qemu.GuestConfig(kernel=k.image, accel=qemu.Accel.TCG, timeout_s=900)
        req = runner.SuiteRequest(kernel=k, config=cfg, work_dir=Path(tmp), keyword=keyword,
                                  guests=guests, runner=name)
        t0 = time.monotonic()
        results, runs = runner.run_guests(req)
        wall = time.monotonic() - t0
        firsts = [r.timings.first_test_s for r in runs if r.timings.first_test_s is not None]
        return wall, (min(firsts) if firsts else None), len(results)


def _med(xs: list[float]) -> float | None:
    return round(statistics.median(xs), 2) if xs else None


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kernel", default=str(STOCK), help="kernel to boot (default: stock)")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--suite", action="store_true", help="also time the whole default suite")
    p.add_argument("--json", type=Path, help="write the figures here too")
    a = p.parse_args()
    if not Path(a.kernel).exists():
        print(f"bench_runners: no kernel at {a.kernel} (run vm/get-stock-kernel)",
              file=sys.stderr)
        return 2
    if not runner.udev_running():
        print("bench_runners: vng needs udev running (/lib/systemd/systemd-udevd --daemon)",
              file=sys.stderr)
        return 4
    k = kernel.find_kernel(a.kernel)
    first: dict[str, list[float]] = {r: [] for r in RUNNERS}
    suite: dict[str, float] = {}
    for i in range(a.runs):
        for name in RUNNERS:
            _wall, f, _n = _run(k, name, "smoke", 1)
            print(f"  run {i + 1} {name}: first test {f} s", file=sys.stderr)
            if f is not None:
                first[name].append(f)
    if a.suite:
        for name in RUNNERS:
            wall, _f, n = _run(k, name, None, None)
            suite[name] = round(wall, 1)
            print(f"  suite {name}: {wall:.1f} s, {n} results", file=sys.stderr)
    row = {name: {"first_test_s": _med(first[name]), "suite_s": suite.get(name)}
           for name in RUNNERS}
    q, v = row["qemu"]["first_test_s"], row["vng"]["first_test_s"]
    ratio = round(v / q, 2) if q and v else None
    print("| runner | boot→first test s (median) | whole suite s |")
    print("|---|---|---|")
    for name in RUNNERS:
        print(f"| {name} | {row[name]['first_test_s']} | {row[name]['suite_s'] or '-'} |")
    print(f"\nvng/qemu boot→first test: {ratio}")
    if a.json:
        a.json.write_text(json.dumps({"kernel": a.kernel, "runs": a.runs, "runners": row,
                                      "ratio_first_test": ratio}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
