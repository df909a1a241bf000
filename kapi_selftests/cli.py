"""Command line: ``kapi-selftests <subcommand>``; the only place that exits.

Subcommands mirror the pipeline stages so each can run alone. Each one lives
in ``kapi_selftests/cmd/<name>.py`` with ``add_arguments(parser)`` and
``run(args) -> int``; this module only dispatches and maps errors to exit codes.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from kapi_selftests.cmd.argtypes import call_reporting

# name -> (module under kapi_selftests.cmd, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "check": ("check", "analyse a saved trace (text trace or raw capture directory)"),
    "run": ("run", "run the suite in a QEMU guest (--kernel) or on this kernel (--local)"),
    "specs": ("specs", "show the KAPI specs of this kernel (debugfs) or the built-in model"),
    "build-kernel": ("build_kernel", "apply a series, configure and build a KAPI guest kernel"),
    "fuzz": ("fuzz", "run a fuzzing campaign"),
    "replay": ("replay", "re-run a saved reproducer"),
    "merge": ("merge", "merge the results of several campaign shards"),
    "gate": ("gate", "compare a base and a patched kernel: one regression verdict"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kapi-selftests",
        description="kselftest-style harness and fuzzer for KAPI (Kernel API Specification)",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    parser.add_argument("-q", "--quiet", action="store_true", help="only errors on stderr")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module, helptext) in SUBCOMMANDS.items():
        try:
            mod = importlib.import_module(f"kapi_selftests.cmd.{module}")
        except ModuleNotFoundError as e:
            if e.name != f"kapi_selftests.cmd.{module}":
                raise
            continue  # not implemented yet
        p = sub.add_parser(name, help=helptext, description=helptext)
        mod.add_arguments(p)
        p.set_defaults(handler=mod.run)
    return parser


def _setup_logging(verbose: int, quiet: bool) -> None:
    level = logging.ERROR if quiet else (logging.DEBUG if verbose > 1 else
                                         logging.INFO if verbose else logging.WARNING)
    logging.basicConfig(level=level, format="%(name)s: %(levelname)s: %(message)s",
                        stream=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI and return its kselftest exit code (0 pass, 1 fail, 2 usage, 4 skip)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args.verbose, args.quiet)
    return call_reporting(parser.prog, args.handler, args)


if __name__ == "__main__":
    sys.exit(main())
