"""``kapi-selftests merge OUT... --into DIR``: fold campaign shards into one campaign.

Each ``OUT`` is a campaign directory (``fuzz --out``; its ``shard-*``
directories are read) or a single shard. Findings are deduplicated by
(kind, syscall, where) with counts added, the earliest first example and the
smallest example kept; coverage counts are added; crashes and per-call records
are concatenated. ``DIR`` gets ``findings.jsonl``, ``coverage.json``,
``crashes.jsonl``, ``calls.jsonl``, ``report.md`` and ``summary.json``.
Exit codes: 0 no finding, 1 findings or crashes, 2 usage.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from kapi_selftests.cmd.argtypes import existing_dir, existing_file
from kapi_selftests.errors import KSFT_FAIL, KSFT_PASS, UsageError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dirs", nargs="+", type=existing_dir, metavar="OUT",
                   help="campaign or shard directories written by kapi-selftests fuzz")
    p.add_argument("--into", type=Path, required=True, metavar="DIR",
                   help="write the merged campaign here")
    p.add_argument("--json", action="store_true", help="print the merged summary as JSON")
    p.add_argument("--system-map", type=existing_file, metavar="FILE",
                   help="the campaign kernel's System.map: with KCOV shards, the report "
                        "names the kernel functions they ran")


def run(args: argparse.Namespace) -> int:
    # loaded when the subcommand runs: the CLI imports every subcommand at start
    from kapi_selftests.fuzz import campaign_report
    from kapi_selftests.oracle.spec import builtin_specs

    shards = campaign_report.find_shards(args.dirs)
    if not shards:
        raise UsageError(f"no campaign shards under {', '.join(map(str, args.dirs))}",
                         hint="pass directories written by kapi-selftests fuzz --out")
    try:
        data = campaign_report.merge_into(args.dirs, args.into, builtin_specs(),
                                          header=[f"merged from {len(shards)} shard(s)"],
                                          system_map=args.system_map)
    except ValueError as e:
        raise UsageError(str(e), hint="merge into a new directory") from e
    if args.json:
        print(json.dumps(campaign_report.summary(data), indent=1))
    else:
        print(f"merged {len(shards)} shard(s): {data.calls} calls, "
              f"coverage {data.coverage.figure().describe()}, "
              f"{len(data.store.records)} distinct finding(s), {len(data.crashes)} crash(es); "
              f"report {args.into / 'report.md'}")
    return KSFT_FAIL if data.store.records or data.crashes else KSFT_PASS
