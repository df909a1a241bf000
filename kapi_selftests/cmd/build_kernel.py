"""``kapi-selftests build-kernel``: apply a series, configure and build a guest kernel.

Argument handling only; the work is :func:`kapi_selftests.host.build.build_kernel`.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from kapi_selftests.errors import KSFT_PASS, UsageError
from kapi_selftests.host.build import build_kernel, plan_commands

log = logging.getLogger(__name__)

# vm/kapi.config of this checkout (the package sits next to vm/).
DEFAULT_FRAGMENT = Path(__file__).resolve().parents[2] / "vm" / "kapi.config"
#: where several --config fragments are merged, in the build directory
MERGED_FRAGMENT = "kapi-selftests-fragment.config"


class PathArgumentError(UsageError, argparse.ArgumentTypeError):
    """A bad path flag: a :class:`UsageError` (exit 2) that argparse reports itself
    ("argument --src: ...") when raised from a ``type=`` callable during parsing.
    """


def source_tree(value: str) -> Path:
    """A kernel source tree: a directory with a top-level Makefile and Kconfig."""
    path = Path(value)
    if not path.is_dir():
        raise PathArgumentError(f"{value}: not a directory")
    if not (path / "Makefile").is_file() or not (path / "Kconfig").is_file():
        raise PathArgumentError(f"{value}: not a kernel source tree (no Makefile or Kconfig)")
    return path


def existing_file(value: str) -> Path:
    """A regular file that exists."""
    path = Path(value)
    if not path.is_file():
        raise PathArgumentError(f"{value}: no such file")
    return path


def _mbox(value: str) -> Path:
    # absolute: git am runs in the source tree, not in the user's directory
    path = existing_file(value)
    if not os.access(path, os.R_OK):
        raise PathArgumentError(f"{value}: not readable")
    return path.resolve()


def _out_dir(value: str) -> Path:
    path = Path(value)
    if path.exists() and not path.is_dir():
        raise PathArgumentError(f"{value}: exists and is not a directory")
    return path


def _jobs(value: str) -> int:
    try:
        jobs = int(value)
    except ValueError:
        raise PathArgumentError(f"{value}: not a number") from None
    if jobs < 1:
        raise PathArgumentError(f"{value}: must be at least 1")
    return jobs


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of ``build-kernel``."""
    p.add_argument("--src", metavar="TREE", type=source_tree, required=True,
                   help="kernel source tree (git repository or extracted tarball; a tarball "
                        "is made a git repository when a series is applied)")
    p.add_argument("--series", metavar="MBOX", type=_mbox, action="append", default=[],
                   help="patch mbox to apply with git am, in order (repeatable; --continue "
                        "remembers them)")
    p.add_argument("--out", metavar="DIR", type=_out_dir, required=True,
                   help="build directory (make O=DIR); the image is DIR/arch/x86/boot/bzImage")
    p.add_argument("--config", metavar="FRAGMENT", type=existing_file, action="append",
                   default=[],
                   help=f"Kconfig fragment merged on top of defconfig (default "
                        f"{DEFAULT_FRAGMENT}); repeatable, later ones win (e.g. "
                        f"vm/kapi.config then vm/kcov.config for a KCOV kernel)")
    p.add_argument("-j", "--jobs", type=_jobs, default=os.cpu_count() or 1,
                   help="parallel make jobs (default: all cores)")
    p.add_argument("--continue", dest="resume", action="store_true",
                   help="resume after fixing a patch that did not apply (git am --continue)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the commands that would run, run nothing")


def merged_fragment(fragments: Sequence[Path], out: Path) -> tuple[Path, bytes | None]:
    """One fragment for the build: the only one, or ``out/MERGED_FRAGMENT`` holding them
    all in order (later values win, as in merge_config.sh).

    :return: its path, and the bytes to write there first (None: nothing to write)
    """
    if len(fragments) == 1:
        return fragments[0], None
    text = b"".join(t if t.endswith(b"\n") else t + b"\n"
                    for t in (f.read_bytes() for f in fragments))
    return out / MERGED_FRAGMENT, text


def run(args: argparse.Namespace) -> int:
    """Build (or find cached) the kernel; print the image path on stdout."""
    fragments: list[Path] = args.config or [DEFAULT_FRAGMENT]
    if not fragments[0].is_file():
        raise UsageError(f"--config: default fragment {fragments[0]} not found",
                         hint="pass --config FRAGMENT")
    fragment, text = merged_fragment(fragments, args.out)
    if args.dry_run:
        if text is not None:
            print(f"# {fragment}: " + " + ".join(str(f) for f in fragments))
        for argv in plan_commands(args.src, args.out, series=args.series, fragment=fragment,
                                  jobs=args.jobs, resume=args.resume):
            print(shlex.join(argv))
        return KSFT_PASS
    if text is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        fragment.write_bytes(text)
    result = build_kernel(args.src, args.out, series=args.series, fragment=fragment,
                          jobs=args.jobs, resume=args.resume)
    log.info("%s: %s in %.0f s", result.image,
                "cached" if result.cached else "built", result.elapsed_s)
    sys.stdout.write(f"{result.image}\n")
    return KSFT_PASS
