#!/usr/bin/env python3
"""KCOV guidance: kernel edges reached with and without it, and what measuring costs.

Usage: python bench/bench_kcov.py --kernel PATH [--calls N | --duration T] [--rounds R]
                                  [--json FILE]

On a KCOV kernel (``build-kernel --config vm/kapi.config --config vm/kcov.config``)
each round runs three campaigns of ``--calls`` calls (or ``--duration``: what a fuzzer
is worth is coverage per unit of time) with the same seed, one TCG guest each, in this
order (alternated, so a drift of the machine's speed hits all three):

* **off**: ``fuzz`` without ``--kcov`` (the batch engine as usual);
* **measured**: ``fuzz --kcov --mutate-rate 0``: the same calls as *off*, kernel
  coverage measured, no guidance;
* **guided**: ``fuzz --kcov`` (half of the calls mutate calls that reached new code).

Prints distinct kernel edges at a quarter, half and all of the calls (from
``kcov-corpus.jsonl``: each kept call's new edges, by batch), the ratio guided /
measured, and checked calls/s of each (the cost of reading KCOV is measured / off).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {"off": [], "measured": ["--kcov", "--mutate-rate", "0"], "guided": ["--kcov"]}


def campaign(kernel: Path, budget: list[str], seed: int, extra: list[str],
             out: Path) -> dict[str, Any]:
    argv = [sys.executable, "-m", "kapi_selftests", "fuzz", "--kernel", str(kernel),
            *budget, "--seed", str(seed), "--no-minimize", "--json",
            "--out", str(out), *extra]
    r = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT)
    if r.returncode not in (0, 1):
        raise SystemExit(f"fuzz exited {r.returncode}: {r.stderr.strip().splitlines()[-1:]}")
    summary: dict[str, Any] = json.loads(r.stdout)
    return summary


def edges_by_batch(shard: Path) -> list[tuple[int, int]]:
    """(batch, edges so far) after each batch that kept a call."""
    total, out = 0, []
    rows = [json.loads(line) for line in (shard / "kcov-corpus.jsonl").read_text().splitlines()]
    for b in sorted({r["batch"] for r in rows if r["batch"] >= 0}):
        total += sum(r["new"] for r in rows if r["batch"] == b)
        out.append((b, total))
    return out


def at(curve: list[tuple[int, int]], batch: int) -> int:
    return max((e for b, e in curve if b <= batch), default=0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kernel", type=Path, required=True, help="a KCOV kernel")
    budget = ap.add_mutually_exclusive_group()
    budget.add_argument("--calls", type=int, default=60000)
    budget.add_argument("--duration", help="e.g. 30s: each campaign runs this long instead")
    ap.add_argument("--rounds", type=int, default=2, help="rounds (seed 1, 2, ...)")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    budget = ["--duration", a.duration] if a.duration else ["--calls", str(a.calls)]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="kapi-bench-kcov-") as tmp:
        for seed in range(1, a.rounds + 1):
            for name, extra in VARIANTS.items():
                out = Path(tmp) / f"{name}-{seed}"
                s = campaign(a.kernel, budget, seed, extra, out)
                batches = -(-s["calls"] // 2000)
                row: dict[str, Any] = {"variant": name, "seed": seed, "calls": s["calls"],
                                       "calls_per_s": s["calls_per_s"],
                                       "findings": len(s["findings"])}
                if s.get("kcov"):
                    curve = edges_by_batch(out / "shard-0")
                    row.update(edges=s["kcov"]["edges"], corpus=s["kcov"]["corpus"],
                               quarter=at(curve, batches // 4 - 1),
                               half=at(curve, batches // 2 - 1))
                rows.append(row)
                print(json.dumps(row), file=sys.stderr)
                shutil.rmtree(out, ignore_errors=True)
    print("| seed | variant | calls | calls/s | edges at 1/4 of the calls | at 1/2 | at the end "
          "| calls kept |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        e = (f"{r['quarter']} | {r['half']} | {r['edges']} | {r['corpus']}" if "edges" in r
             else "- | - | - | -")
        print(f"| {r['seed']} | {r['variant']} | {r['calls']} | {r['calls_per_s']:.0f} | {e} |")
    for seed in range(1, a.rounds + 1):
        by = {r["variant"]: r for r in rows if r["seed"] == seed}
        g, m, o = by["guided"], by["measured"], by["off"]
        print(f"seed {seed}: guided/measured edges {g['edges'] / m['edges']:.2f} "
              f"(at half the calls {g['half'] / m['half']:.2f}); calls/s measured/off "
              f"{m['calls_per_s'] / o['calls_per_s']:.2f}, guided/off "
              f"{g['calls_per_s'] / o['calls_per_s']:.2f}")
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
