"""``kapi-selftests specs``: show the KAPI specs of this kernel, or the built-in model.

Argument handling and printing only; loading is :mod:`kapi_selftests.oracle.spec`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from kapi_selftests.cmd.argtypes import existing_dir
from kapi_selftests.errors import KSFT_PASS, MissingFeature, UsageError
from kapi_selftests.oracle.spec import (
    DEBUGFS_ROOT,
    Spec,
    apply_hints,
    builtin_specs,
    find_source_hints,
    load_debugfs,
    missing_kapi_specs,
    specs_files,
    write_specs,
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group()
    src.add_argument("--builtin", action="store_true",
                     help="show the built-in model of the five v4 specs instead of debugfs")
    src.add_argument("--debugfs", metavar="DIR", type=existing_dir, default=None,
                     help=f"the kapi debugfs directory (default {DEBUGFS_ROOT})")
    p.add_argument("--source", metavar="TREE", type=existing_dir, default=None,
                   help="kernel source tree whose spec DSL fills what debugfs cannot show")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument("--save", metavar="DIR", type=Path, default=None,
                   help="save the kernel's debugfs dump (list, specs/, specs-json/) in DIR, "
                        "as --reference-specs DIR reads it")
    p.add_argument("names", nargs="*", metavar="NAME", help="only these specs (sys_read ...)")


def _format(spec: Spec) -> str:
    nr = "?" if spec.nr is None else str(spec.nr)
    lines = [f"{spec.name} (nr {nr}, {spec.syscall_nargs} args, from {spec.source.value})"]
    for i, p in enumerate(spec.params):
        flags = "|".join(f.name or "" for f in type(p.flags) if f and f in p.flags) or "-"
        lines.append(f"  [{i}] {p.ctype} {p.name}: {p.type.text_name}, {flags}, "
                     f"{p.describe_constraint()}")
    lines.append(f"  return: {spec.ret.describe()}")
    errs = ", ".join(e.name for e in spec.errors) or "none listed"
    lines.append(f"  errors: {errs}")
    for f in spec.filled:
        lines.append(f"  filled: {f}")
    for u in spec.unknowns:
        lines.append(f"  unknown: {u}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    if args.builtin:
        if args.save is not None:
            raise UsageError("--save saves a kernel's debugfs dump; --builtin has none")
        specs = builtin_specs()
    else:
        root = args.debugfs or DEBUGFS_ROOT
        reason = missing_kapi_specs(root)
        if reason is not None:
            raise MissingFeature(reason, hint="use --builtin for the built-in model of v4 specs")
        specs = load_debugfs(root)
        if args.save is not None:
            write_specs(specs_files(root), args.save)
            print(f"saved {len(specs)} specs in {args.save}", file=sys.stderr)
        if args.source is not None:
            hints = find_source_hints(args.source, specs)
            specs = {n: apply_hints(s, hints.get(n, {}), why=str(args.source))
                     for n, s in specs.items()}
    if args.names:
        unknown = [n for n in args.names if n not in specs]
        if unknown:
            raise UsageError(f"no spec named {', '.join(unknown)}; "
                             f"known: {', '.join(sorted(specs))}")
        specs = {n: specs[n] for n in args.names}
    if args.json:
        json.dump([s.to_dict() for s in specs.values()], sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        sys.stdout.write("\n\n".join(_format(s) for s in specs.values()) + "\n")
    return KSFT_PASS
