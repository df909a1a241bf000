"""The guest console: capture it to a file as it arrives, find kernel splats in it.

Owns the console log and what can be read from it: kernel oops, BUG, WARNING,
KASAN/UBSAN/KFENCE reports, lockdep reports, suspicious RCU usage, sleeping in atomic
context, refcount_t warnings, RCU stalls, hung tasks and panics (:func:`find_splats`),
and the arrival time of the boot markers (used only for timings). The guest's
verdict never comes from here: it comes from the status file (runner).
"""

from __future__ import annotations

import enum
import re
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

__all__ = ["SplatKind", "Splat", "SPLAT_PATTERNS", "find_splats", "ConsoleCapture",
           "EXCERPT_MAX_LINES"]

EXCERPT_MAX_LINES = 60

# Kernel log lines start with an optional "[   12.345678] " timestamp, sometimes
# a "subsystem: " word (watchdog:, rcu:). Anchoring there keeps a test that prints
# "BUG: ..." on its own output from looking like a kernel splat.
_TS = r"^(?:<\d>)?(?:\[\s*\d+\.\d+\]\s*)?(?:\[\s*[CT]\d+\]\s*)?"


class SplatKind(enum.Enum):
    OOPS = "oops"
    BUG = "BUG"
    WARNING = "WARNING"
    KASAN = "KASAN report"
    UBSAN = "UBSAN report"
    KFENCE = "KFENCE report"
    LOCKDEP = "lockdep report"
    RCU_USAGE = "suspicious RCU usage"
    SLEEP_IN_ATOMIC = "sleeping in atomic context"
    REFCOUNT = "refcount_t warning"
    RCU_STALL = "RCU stall"
    HUNG_TASK = "hung task"
    PANIC = "panic"


# Order matters: the first pattern that matches a line names its kind. The heads are
# the kernel's own report lines (lockdep: kernel/locking/lockdep.c; RCU usage:
# lockdep_rcu_suspicious(); sleeping: __might_resched(); refcount: lib/refcount.c;
# KFENCE: mm/kfence/report.c).
SPLAT_PATTERNS: tuple[tuple[SplatKind, re.Pattern[str]], ...] = (
    (SplatKind.KASAN, re.compile(_TS + r"(?:BUG: )?KASAN: ")),
    (SplatKind.UBSAN, re.compile(_TS + r"UBSAN: ")),
    (SplatKind.KFENCE, re.compile(_TS + r"BUG: KFENCE: ")),
    (SplatKind.SLEEP_IN_ATOMIC,
     re.compile(_TS + r"BUG: sleeping function called from invalid context")),
    (SplatKind.LOCKDEP, re.compile(
        _TS + r"WARNING: (?:possible (?:circular locking dependency|recursive locking"
        r"|irq lock inversion dependency) detected|inconsistent lock state"
        r"|bad unlock balance detected!|held lock freed!)")),
    (SplatKind.RCU_USAGE, re.compile(_TS + r"WARNING: suspicious RCU usage")),
    (SplatKind.REFCOUNT, re.compile(_TS + r"refcount_t: ")),
    (SplatKind.OOPS, re.compile(_TS + r"(?:Oops: |Oops\[|general protection fault)")),
    (SplatKind.BUG, re.compile(_TS + r"(?:\w+: )?(?:BUG: |kernel BUG at )")),
    (SplatKind.WARNING, re.compile(_TS + r"(?:-+\[ cut here \]-+|WARNING: (?:CPU: \d+|.* at ))")),
    (SplatKind.RCU_STALL, re.compile(_TS + r"(?:rcu: )?INFO: rcu_\w+ (?:self-)?detected stall")),
    (SplatKind.HUNG_TASK, re.compile(_TS + r"INFO: task \S+ blocked for more than \d+ seconds")),
    (SplatKind.PANIC, re.compile(_TS + r"Kernel panic - not syncing")),
)

_END = re.compile(_TS + r"---\[ end (?:trace|Kernel panic)")
# Reports that print no "---[ end" line end elsewhere: lockdep, RCU usage and
# sleeping-in-atomic after their one stack dump (x86's "</TASK>"), KFENCE at its closing
# rule of "=" (it opens with one too, the line before its head).
_TASK_END = re.compile(_TS + r"\s*</TASK>")
_RULE_END = re.compile(_TS + r"={20,}\s*$")
_OWN_END: dict[SplatKind, re.Pattern[str]] = {
    SplatKind.LOCKDEP: _TASK_END,
    SplatKind.RCU_USAGE: _TASK_END,
    SplatKind.SLEEP_IN_ATOMIC: _TASK_END,
    SplatKind.KFENCE: _RULE_END,
}
_REFCOUNT = SPLAT_PATTERNS[[k for k, _p in SPLAT_PATTERNS].index(SplatKind.REFCOUNT)][1]


@dataclass(frozen=True, slots=True)
class Splat:
    """One kernel report found on the console.

    :param kind: what it is
    :param line_no: 1-based line of its first line in the console log
    :param excerpt: its lines, from the first to the ``---[ end ...`` marker (capped)
    """

    kind: SplatKind
    line_no: int
    excerpt: tuple[str, ...]

    @property
    def summary(self) -> str:
        """One line: the kind and the line that matched (for a "cut here" line, the next one)."""
        first = next((ln for ln in self.excerpt if "cut here" not in ln), self.excerpt[0])
        return f"kernel {self.kind.value}: {_strip_ts(first)}"


def _strip_ts(line: str) -> str:
    return re.sub(_TS, "", line).strip()


def _kind_of(line: str) -> SplatKind | None:
    for kind, pat in SPLAT_PATTERNS:
        if pat.search(line):
            return kind
    return None


def find_splats(lines: Sequence[str]) -> list[Splat]:
    """Every kernel splat in ``lines`` (console text, one entry a line), in order.

    Lines that belong to a splat already found (up to its ``---[ end`` marker or
    :data:`EXCERPT_MAX_LINES`) do not start another one, so one WARNING is one
    splat even though "cut here", "WARNING:" and "Call Trace:" all appear in it.
    A "cut here" line takes the kind of the line after it.
    """
    out: list[Splat] = []
    i = 0
    n = len(lines)
    while i < n:
        kind = _kind_of(lines[i])
        if kind is None:
            i += 1
            continue
        if "cut here" in lines[i] and i + 1 < n:
            kind = _kind_of(lines[i + 1]) or kind
        if kind is SplatKind.WARNING and any(_REFCOUNT.search(ln) for ln in lines[i + 1:i + 3]):
            kind = SplatKind.REFCOUNT  # arm64 prints the message after "WARNING: CPU:"
        start = i
        end = i + 1
        own_end = _OWN_END.get(kind)
        while end < n and end - start < EXCERPT_MAX_LINES:
            if _END.search(lines[end]) or (own_end is not None and own_end.search(lines[end])):
                end += 1
                break
            # a report without an end line (old kernels print no "</TASK>") ends where
            # the next one starts
            if own_end is not None and _kind_of(lines[end]) is not None:
                break
            # a new panic after an oops is its own splat: the oops ended there
            if end > start + 1 and kind is not SplatKind.PANIC and \
                    SPLAT_PATTERNS[-1][1].search(lines[end]):
                break
            end += 1
        out.append(Splat(kind=kind, line_no=start + 1,
                         excerpt=tuple(ln.rstrip() for ln in lines[start:end])))
        i = end
    return out


def read_console(path: Path) -> list[str]:
    """The console log as lines (CRs of the serial line dropped)."""
    try:
        text = path.read_bytes().decode("utf-8", "replace")
    except FileNotFoundError:
        return []
    return text.replace("\r", "").split("\n")


class ConsoleCapture:
    """Copy a console stream to a file as it arrives, in a thread.

    Records when output last arrived (:attr:`last_output`, monotonic) and when
    each marker line first arrived (:attr:`marks`). The file is flushed after
    every chunk, so it is complete up to the moment the guest died.
    """

    def __init__(self, stream: IO[bytes], path: Path, markers: Iterable[str] = (),
                 echo: IO[str] | None = None) -> None:
        self._stream = stream
        self.path = path
        self._markers = tuple(markers)
        self._echo = echo
        self.started = time.monotonic()
        self.last_output = self.started
        self.marks: dict[str, float] = {}
        self._tail = ""
        self._thread = threading.Thread(target=self._pump, name="console", daemon=True)

    def start(self) -> ConsoleCapture:
        self._thread.start()
        return self

    def _pump(self) -> None:
        with self.path.open("wb") as f:
            while True:
                chunk = self._stream.read1(65536) if hasattr(self._stream, "read1") \
                    else self._stream.read(4096)
                if not chunk:
                    break
                now = time.monotonic()
                self.last_output = now
                f.write(chunk)
                f.flush()
                if self._echo is not None:
                    self._echo.write(chunk.decode("utf-8", "replace"))
                    self._echo.flush()
                self._scan(chunk.decode("utf-8", "replace"), now)

    def _scan(self, text: str, now: float) -> None:
        buf = self._tail + text
        lines = buf.split("\n")
        self._tail = lines.pop()[-4096:]
        for line in lines:
            for m in self._markers:
                if m not in self.marks and m in line:
                    self.marks[m] = now

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)
