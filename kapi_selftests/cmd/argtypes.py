"""What the subcommands share: argparse ``type=`` validators and the guest entry glue.

Validators raise ``argparse.ArgumentTypeError`` naming the value and what is wrong
with it, so argparse prints one line and exits 2 (a usage error).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

from kapi_selftests.errors import KSFT_FAIL, KSFT_SKIP, KapiError, describe_exception

__all__ = ["existing_path", "existing_dir", "existing_file", "positive_int", "nonneg_int",
           "fraction", "add_accel", "guest_entry", "call_reporting", "reference_specs",
           "add_reference_specs"]

ACCELS = ("auto", "kvm", "tcg")


def existing_path(s: str) -> Path:
    """A path that exists (file or directory)."""
    p = Path(s)
    if not p.exists():
        raise argparse.ArgumentTypeError(f"no such file or directory: {s}")
    return p


def reference_specs(s: str) -> str:
    """``builtin``, or a saved kapi debugfs dump (a directory with ``list``, or one holding
    ``kapi/list``), made absolute: a guest reads it through the shared root."""
    if s == "builtin":
        return s
    p = Path(s)
    if not ((p / "list").is_file() or (p / "kapi" / "list").is_file()):
        raise argparse.ArgumentTypeError(
            f"{s}: neither 'builtin' nor a saved kapi debugfs dump (no 'list' file; "
            "'kapi-selftests specs --save DIR' writes one)")
    return str(p.resolve())


class _SetEnv(argparse.Action):
    # The option's value also goes to the environment variable named by const, which
    # the guest command inherits (host.runner's _PASSTHROUGH_ENV) and the tests read.
    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: object, option_string: str | None = None) -> None:
        setattr(namespace, self.dest, values)
        os.environ[str(self.const)] = str(values)


def add_reference_specs(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--reference-specs builtin|DIR``: the spec set the kernel's own specs are judged
    against (``KAPI_REFERENCE_SPECS``)."""
    p.add_argument("--reference-specs", type=reference_specs, action=_SetEnv,
                   const="KAPI_REFERENCE_SPECS", metavar="builtin|DIR",
                   help="judge the kernel's specs against these: the built-in v4 model "
                        "(default when the kernel's specs have its shape) or a dump saved "
                        "by 'specs --save DIR' from a base kernel")


def existing_dir(s: str) -> Path:
    """A directory that exists."""
    p = existing_path(s)
    if not p.is_dir():
        raise argparse.ArgumentTypeError(f"not a directory: {s}")
    return p


def existing_file(s: str) -> Path:
    """A regular file that exists."""
    p = existing_path(s)
    if not p.is_file():
        raise argparse.ArgumentTypeError(f"not a file: {s}")
    return p


def _int_at_least(s: str, low: int, what: str) -> int:
    try:
        v = int(s, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {s!r}") from None
    if v < low:
        raise argparse.ArgumentTypeError(f"{what}: {s}")
    return v


def positive_int(s: str) -> int:
    """An integer > 0 (decimal or 0x...)."""
    return _int_at_least(s, 1, "must be positive")


def nonneg_int(s: str) -> int:
    """An integer >= 0 (decimal or 0x...)."""
    return _int_at_least(s, 0, "must be >= 0")


def fraction(s: str) -> float:
    """A number from 0 to 1."""
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {s!r}") from None
    if not 0.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"must be from 0 to 1: {s}")
    return v


def _accel(s: str) -> str:
    if s not in ACCELS:
        raise argparse.ArgumentTypeError(f"invalid choice: {s!r} (choose from "
                                         f"{', '.join(ACCELS)})")
    return s


def add_accel(group: argparse._ActionsContainer) -> None:
    """``--accel auto|kvm|tcg`` of every command that boots a guest (default KAPI_ACCEL,
    else auto: KVM once it was seen to boot a kernel on this host boot, else TCG).
    """
    group.add_argument("--accel", type=_accel, metavar="auto|kvm|tcg",
                       default=os.environ.get("KAPI_ACCEL") or "auto",
                       help="auto (default, or KAPI_ACCEL) takes KVM once it has been seen to "
                            "boot a kernel on this host boot, else TCG")


def guest_entry(prog: str, add_arguments: Callable[[argparse.ArgumentParser], None],
                run: Callable[[argparse.Namespace], int], argv: Sequence[str]) -> int:
    """Run one subcommand in a guest without :mod:`kapi_selftests.cli`.

    The CLI imports every subcommand module to build its parser; under TCG over 9p
    that costs seconds, so a guest enters a subcommand here. Errors map to exit codes
    as in ``cli.main``.
    """
    p = argparse.ArgumentParser(prog=prog)
    add_arguments(p)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(name)s: %(levelname)s: %(message)s")
    return call_reporting("kapi-selftests", run, args)


def call_reporting(prog: str, run: Callable[[argparse.Namespace], int],
                   args: argparse.Namespace) -> int:
    """Run a subcommand; our errors become one line on stderr and their exit code.

    Any other exception is a bug and keeps its traceback.
    """
    try:
        return int(run(args))
    except KapiError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        if e.hint:
            print(f"hint: {e.hint}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return KSFT_FAIL
    except BrokenPipeError:
        return KSFT_FAIL
    except Exception as e:  # a bug of ours: one line, exit 4, the traceback on request
        print(f"{prog}: internal error {describe_exception(e)}", file=sys.stderr)
        if getattr(args, "verbose", 0) or os.environ.get("KAPI_DEBUG") == "1":
            traceback.print_exc()
        else:
            print("hint: this is a bug in kapi-selftests; -v or KAPI_DEBUG=1 shows the "
                  "traceback", file=sys.stderr)
        return KSFT_SKIP

