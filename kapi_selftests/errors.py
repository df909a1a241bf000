"""The one exception tree of kapi-selftests and its kselftest exit codes.

Library code raises these; only :func:`kapi_selftests.cli.main` catches
them and turns them into one line on stderr and an exit code.
"""

from __future__ import annotations

import os
import traceback

__all__ = [
    "KSFT_PASS",
    "KSFT_FAIL",
    "KSFT_USAGE",
    "KSFT_SKIP",
    "KapiError",
    "UsageError",
    "MissingFeature",
    "SpecError",
    "TraceError",
    "DecodeError",
    "LostGuest",
    "BuildError",
    "describe_exception",
]

KSFT_PASS = 0
KSFT_FAIL = 1
KSFT_USAGE = 2
KSFT_SKIP = 4


class KapiError(Exception):
    """Base of every error kapi-selftests raises on purpose."""

    exit_code = KSFT_FAIL

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint


class UsageError(KapiError):
    """Bad flag, file or argument: fix the command line."""

    exit_code = KSFT_USAGE


class MissingFeature(KapiError):
    """The environment cannot run this (no tracefs, not root, option off): a skip."""

    exit_code = KSFT_SKIP


class SpecError(KapiError):
    """A KAPI spec could not be loaded or is inconsistent."""

    exit_code = KSFT_FAIL


class TraceError(KapiError):
    """The trace cannot be judged (events lost, buffer overrun)."""

    exit_code = KSFT_SKIP


class DecodeError(KapiError):
    """A trace file or ring-buffer page is malformed: name the file and offset."""

    exit_code = KSFT_SKIP


class LostGuest(KapiError):
    """The guest returned no status (never booted, hung, killed): not a kernel FAIL."""

    exit_code = KSFT_SKIP


class BuildError(KapiError):
    """A kernel could not be configured, patched or built."""

    exit_code = KSFT_SKIP


def describe_exception(e: BaseException) -> str:
    """``in <step> (file:line): Type: message``, the step being the innermost function of
    this package the exception went through (else the innermost of all).
    """
    frames = traceback.extract_tb(e.__traceback__)
    ours = [f for f in frames if "/kapi_selftests/" in f.filename] or frames
    where = ""
    if ours:
        f = ours[-1]
        _, sep, rel = f.filename.rpartition("/kapi_selftests/")
        file = f"kapi_selftests/{rel}" if sep else os.path.basename(f.filename)
        where = f"in {f.name} ({file}:{f.lineno}): "
    msg = " ".join(str(e).split())
    kind = type(e).__qualname__
    if type(e).__module__ not in ("builtins", "__main__"):
        kind = f"{type(e).__module__}.{kind}"
    return f"{where}{kind}" + (f": {msg}" if msg else "")
