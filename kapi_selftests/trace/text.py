"""Text traces -> events: the ``trace`` file (what ``/sys/kernel/tracing/trace``
prints) parsed into a :class:`~kapi_selftests.trace.events.Capture`, with the loss its
header and ``[LOST N EVENTS]`` lines report.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from kapi_selftests.errors import DecodeError
from kapi_selftests.trace.events import (
    Capture,
    FieldValue,
    LossGap,
    LossInfo,
    TraceEvent,
    gc_paused,
)

__all__ = ["parse_text_trace"]

_LINE_RE = re.compile(
    r"^[ \t]*(?P<comm>.*?)-(?P<pid>\d+)[ \t]+(?:\([ \t]*[\d-]+\)[ \t]+)?\[(?P<cpu>\d+)\][ \t]+"
    r"(?:(?P<flags>\S{4,5})[ \t]+)?(?P<sec>\d+)(?:\.(?P<frac>\d+))?:[ \t]+(?P<rest>.*?)[ \t]*$"
)
# One pass over the whole text: every line matches exactly one alternative (an event
# line; a comment or blank line; anything else, which is checked separately), so
# re.findall does the line splitting and matching in C.
_TEXT_RE = re.compile(
    r"^(?:[ \t]*.*?-(\d+)[ \t]+(?:\([ \t]*[\d-]+\)[ \t]+)?\[(\d+)\][ \t]+(?:\S{4,5}[ \t]+)?"
    r"(\d+)(?:\.(\d+))?:[ \t]+(.*)|#.*|[ \t]*|(.+))$",
    re.M,
)
_SYS_ENTER_RE = re.compile(r"^sys_(?P<name>\w+)\((?P<params>.*)\)$")
_SYS_EXIT_RE = re.compile(r"^sys_(?P<name>\w+) -> (?P<ret>-?(?:0x)?[0-9a-fA-F]+)$")
_HEADER_RE = re.compile(r"entries-in-buffer/entries-written:\s*(\d+)/(\d+)\s+#P:(\d+)")
_LOST_RE = re.compile(r"^\s*CPU:(?P<cpu>\d+) \[LOST (?:(?P<n>\d+) )?EVENTS\]\s*$")
_PARAM_RE = re.compile(r"(\w+): (?:0x)?([0-9a-fA-F]+)")
_FRAC_SCALE = tuple(10 ** (9 - k) for k in range(10))
_TRAILING_SPACE = frozenset(" \t\r")


def _text_fields(rest: str) -> tuple[str, dict[str, FieldValue]] | None:
    # The part after the time stamp: "event: payload", or a generic syscall event,
    # which prints without an "event:" label (print_syscall_enter/exit()).
    event, sep, payload = rest.partition(": ")
    if not sep or "(" in event or " " in event:
        if rest.endswith(":"):
            return rest[:-1], {"text": ""}
        return _generic_syscall(rest)
    if event == "kapi_syscall_enter":
        name, paren, params = payload.partition("(")
        if not paren or not params.endswith(")"):
            return None
        return event, {"name": name, "params": params[:-1]}
    if event == "kapi_syscall_exit":
        name, eq, tail = payload.partition(" = ")
        ret_s, sm, match = tail.partition(" spec_match=")
        try:
            f: dict[str, FieldValue] = {"name": name, "ret": int(ret_s)}
            if sm:
                f["spec_match"] = int(match)
        except ValueError:
            return None
        return (event, f) if eq else None
    return event, {"text": payload}


def _generic_syscall(rest: str) -> tuple[str, dict[str, FieldValue]] | None:
    m = _SYS_EXIT_RE.match(rest)
    if m:
        ret = int(m.group("ret"), 16)
        if ret >= 1 << 63:
            ret -= 1 << 64
        return f"sys_exit_{m.group('name')}", {"ret": ret}
    m = _SYS_ENTER_RE.match(rest)
    if m:
        f: dict[str, FieldValue] = {"params": m.group("params")}
        for k, v in _PARAM_RE.findall(m.group("params")):
            f[k] = int(v, 16)
        return f"sys_enter_{m.group('name')}", f
    return None


def _bad_line(text: str, where: str, rest: str | None = None) -> DecodeError:
    # Slow path, errors only: find the offending line's number.
    for lineno, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if not s or s.startswith("#") or _LOST_RE.match(line):
            continue
        m = _LINE_RE.match(line)
        if m is None:
            if any(ch < " " and ch != "\t" for ch in line):
                return DecodeError(f"{where}:{lineno}: not a text trace (binary data; a raw "
                                   f"capture is a directory of cpuN.raw files)")
            return DecodeError(f"{where}:{lineno}: not a trace line: {line[:80]!r}")
        if rest is not None and m.group("rest") == rest:
            return DecodeError(f"{where}:{lineno}: cannot parse event {rest[:80]!r}")
    return DecodeError(f"{where}: cannot parse the trace")


def parse_text_trace(text: str, *, where: str = "trace") -> Capture:
    """Parse the text ``trace`` file (what ``/sys/kernel/tracing/trace`` prints).

    kapi events get fields ``name``/``params`` (enter) and ``name``/``ret``/``spec_match``
    (exit); generic syscall events become ``sys_enter_<name>`` (``params`` and each
    argument) and ``sys_exit_<name>`` (``ret``); any other event keeps its text.
    Loss comes from the header's entries-written minus entries-in-buffer and from
    ``CPU:N [LOST M EVENTS]`` lines.

    :param where: file name used in error messages
    :raises DecodeError: a line that is neither a header, a comment nor an event
    """
    with gc_paused():
        return _parse_text_trace(text, where)


def _parse_text_trace(text: str, where: str) -> Capture:
    events: list[TraceEvent] = []
    append = events.append
    lost: int | None = None
    ncpus: int | None = None
    h = _HEADER_RE.search(text)
    if h:
        lost = int(h.group(2)) - int(h.group(1))
        ncpus = int(h.group(3))
    gaps: list[LossGap] = []
    lost_marks: list[tuple[int, int | None]] = []  # (cpu, count) before its next event
    scale = _FRAC_SCALE
    kapi_enter, kapi_exit = "kapi_syscall_enter", "kapi_syscall_exit"
    for pid, cpu_s, sec, frac, rest, bad in _iter_lines(text):
        if not pid:
            if not bad:
                continue  # comment or blank line
            lm = _LOST_RE.match(bad)
            if lm is None:
                raise _bad_line(text, where)
            lost_marks.append((int(lm.group("cpu")),
                               int(lm.group("n")) if lm.group("n") else None))
            continue
        if rest[-1:] in _TRAILING_SPACE:
            rest = rest.rstrip()
        ts_ns = int(sec) * 1_000_000_000
        if frac:
            ts_ns += int(frac[:9]) * scale[min(len(frac), 9)]
        cpu = int(cpu_s)
        # Inline fast path for the kapi events; everything else via _text_fields.
        event, sep, payload = rest.partition(": ")
        fields: dict[str, FieldValue]
        if event == kapi_enter and payload.endswith(")"):
            name, paren, params = payload.partition("(")
            if not paren:
                raise _bad_line(text, where, rest)
            fields = {"name": name, "params": params[:-1]}
        elif event == kapi_exit and " spec_match=" in payload:
            name, eq, tail = payload.partition(" = ")
            ret_s, _, match = tail.partition(" spec_match=")
            try:
                fields = {"name": name, "ret": int(ret_s), "spec_match": int(match)}
            except ValueError:
                raise _bad_line(text, where, rest) from None
        else:
            parsed = _text_fields(rest)
            if parsed is None:
                raise _bad_line(text, where, rest)
            event, fields = parsed
        if lost_marks:
            # "CPU:N [LOST M EVENTS]" precedes the first event read after the loss on N.
            still: list[tuple[int, int | None]] = []
            for c, count in lost_marks:
                if c == cpu:
                    gaps.append(LossGap(c, _last_on_cpu(events, c), ts_ns, count))
                else:
                    still.append((c, count))
            lost_marks = still
        append(TraceEvent(ts_ns, cpu, int(pid), event, fields))
    for c, count in lost_marks:  # loss reported after the CPU's last event
        gaps.append(LossGap(c, _last_on_cpu(events, c), None, count))
    events.sort(key=_ts_key)
    cpus = tuple(range(ncpus)) if ncpus else tuple(sorted({e.cpu for e in events}))
    if lost:
        # Overwrite mode: a CPU that lost events lost its oldest ones, before its first
        # survivor (which CPU is unknown). One with no events left lost none: an
        # overwritten buffer always keeps its newest events.
        firsts: dict[int, int] = {}
        for e in events:
            if e.cpu not in firsts:
                firsts[e.cpu] = e.ts_ns
                if len(firsts) == len(cpus):
                    break
        for c in sorted(firsts):
            gaps.append(LossGap(c, None, firsts[c], None))
    if gaps and not lost:
        lost = sum(g.count or 0 for g in gaps) or None
    return Capture(events=events, loss=LossInfo(lost_events=lost, gaps=tuple(gaps)),
                   source=where, cpus=cpus)


def _iter_lines(text: str, chunk: int = 1 << 20) -> Iterator[tuple[str, ...]]:
    # findall over ~1 MB pieces cut at line ends: the tuples of one piece at a time,
    # not of the whole file, are alive at once.
    start, n = 0, len(text)
    while start < n:
        end = text.find("\n", min(start + chunk, n))
        end = n if end < 0 else end + 1
        yield from _TEXT_RE.findall(text, start, end)
        start = end


def _last_on_cpu(events: list[TraceEvent], cpu: int) -> int | None:
    # Rare (loss markers only): the time stamp of the CPU's latest event so far.
    for e in reversed(events):
        if e.cpu == cpu:
            return e.ts_ns
    return None


def _ts_key(e: TraceEvent) -> int:
    return e.ts_ns
