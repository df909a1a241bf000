#!/usr/bin/env python3
"""A failing run must not cost much more than a passing one: the whole suite on a correct
kernel and on a broken one of the same build, alternated in one run.

Usage: python bench/bench_failing.py --pass-kernel PATH --fail-kernel PATH [--runs 2]
       [--json FILE]

Each run is ``kapi-selftests run --kernel K --require-kapi`` as a user runs it (its
default guests); the figure is wall time from start to the KTAP report. Goal: the
failing kernel's median at most 2x the correct kernel's (shrinking in the ``ci``
hypothesis profile is bounded, so a bug is reported soon after it is found).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

GOAL = 2.0


def _run(kernel: str) -> tuple[float, int, int]:
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "kapi_selftests", "run", "--kernel", kernel,
                           "--require-kapi"], capture_output=True, text=True, check=False)
    wall = time.monotonic() - t0
    failed = sum(line.startswith("not ok") for line in proc.stdout.splitlines())
    return wall, proc.returncode, failed


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pass-kernel", required=True, help="a correct KAPI kernel")
    p.add_argument("--fail-kernel", required=True, help="the same build with a bug")
    p.add_argument("--runs", type=int, default=2)
    p.add_argument("--json", type=Path)
    a = p.parse_args()
    for k in (a.pass_kernel, a.fail_kernel):
        if not Path(k).exists():
            print(f"bench_failing: no kernel at {k}", file=sys.stderr)
            return 2
    walls: dict[str, list[float]] = {"pass": [], "fail": []}
    for i in range(a.runs):
        for label, k in (("pass", a.pass_kernel), ("fail", a.fail_kernel)):
            wall, rc, failed = _run(k)
            walls[label].append(wall)
            print(f"  run {i + 1} {label}: {wall:.1f} s, exit {rc}, {failed} failing results",
                  file=sys.stderr)
            if (label == "pass") != (rc == 0):
                print(f"bench_failing: the {label} kernel exited {rc}: not the kernel pair "
                      "this benchmark needs", file=sys.stderr)
                return 1
    med = {k: statistics.median(v) for k, v in walls.items()}
    ratio = med["fail"] / med["pass"]
    print("| kernel | suite wall s (median) |\n|---|---|")
    print(f"| correct | {med['pass']:.1f} |\n| broken | {med['fail']:.1f} |")
    verdict = "met" if ratio <= GOAL else "NOT met"
    print(f"\nfailing/passing: {ratio:.2f} (goal <= {GOAL}: {verdict})")
    if a.json:
        a.json.write_text(json.dumps({"walls": walls, "ratio": round(ratio, 3)}, indent=2) + "\n")
    return 0 if ratio <= GOAL else 1


if __name__ == "__main__":
    sys.exit(main())
