"""Trace events: format files, ring-buffer pages and text traces -> :class:`TraceEvent`.

Owns the on-disk capture layout (``cpuN.raw``, ``cpuN.stats``, ``header_page``,
``header_event``, ``<event>.format``, optional ``calls.log``) and the two decoders:
binary sub-buffer pages as read from ``per_cpu/cpuN/trace_pipe_raw`` and the text
``trace`` file. It knows nothing about enter/exit pairs (that is
:mod:`kapi_selftests.trace.pairing`) and never touches a live tracefs.

The binary decoder is columnar. Records are variable-length, so a page cannot be
walked with vector operations, but all pages can at once: step *k* decodes the
*k*-th record of every page with numpy gathers (record offsets, time stamps and
lengths only); numpy then gathers ``common_type``/``common_pid`` of every record and
merges the CPUs by time stamp. :class:`TraceEvent` objects (with their fields) are
built lazily, on access, from those columns. ``_walk_cpu`` is the plain per-record
walk, kept as the reference the tests compare the vectorised walk against.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import re
import struct
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, overload

from kapi_selftests.errors import DecodeError, UsageError

__all__ = [
    "FieldFormat",
    "EventFormat",
    "HeaderPage",
    "RawCapture",
    "LossGap",
    "LossInfo",
    "TraceEvent",
    "Capture",
    "EventColumns",
    "FieldValue",
    "parse_format",
    "parse_header_page",
    "parse_stats",
    "read_capture_dir",
    "write_capture_dir",
    "find_capture_dirs",
    "decode",
    "decode_columns",
    "parse_text_trace",
    "load_capture",
    "gc_paused",
]

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

log = logging.getLogger(__name__)

# Captures of at most this many pages are walked in plain Python: numpy costs more
# to import (1.5 s in a TCG guest) than it saves on a few hundred records.
SMALL_CAPTURE_PAGES = 64

FieldValue = int | str | bytes | tuple[int, ...]

# Ring-buffer record types (kernel/trace/ring_buffer.c, enum ring_buffer_type).
RINGBUF_TYPE_DATA_TYPE_LEN_MAX = 28
RINGBUF_TYPE_PADDING = 29
RINGBUF_TYPE_TIME_EXTEND = 30
RINGBUF_TYPE_TIME_STAMP = 31
TS_SHIFT = 27
# Flags in the high bits of the page's commit word (RB_MISSED_EVENTS, RB_MISSED_STORED).
RB_MISSED_EVENTS = 1 << 31
RB_MISSED_STORED = 1 << 30
COMMIT_MASK = (1 << 27) - 1  # as libtraceevent's kbuffer-parse.c
# An absolute time stamp record carries only the low 59 bits (rb_fix_abs_ts()).
_TS_MSB_SHIFT = 59


# --------------------------------------------------------------------------- formats


@dataclass(frozen=True, slots=True)
class FieldFormat:
    """One ``field:`` line of an event's ``format`` file.

    :param name: field name without array suffix (``args``)
    :param ctype: C type as printed (``u64``, ``__data_loc char[]``)
    :param offset: byte offset in the record
    :param size: size in bytes (of the whole array for arrays)
    :param signed: ``signed:1``
    :param array_len: element count for fixed arrays (``args[6]`` -> 6), else ``None``
    :param data_loc: ``__data_loc`` (or ``__rel_loc``) dynamic field: the record holds
        a u32 (offset | length << 16) pointing at the data
    :param rel_loc: ``__rel_loc``: the offset is relative to the end of this field
    :param common: one of the ``common_*`` fields every event has
    """

    name: str
    ctype: str
    offset: int
    size: int
    signed: bool
    array_len: int | None = None
    data_loc: bool = False
    rel_loc: bool = False
    common: bool = False

    @property
    def is_string(self) -> bool:
        """Character data: a ``__data_loc char[]`` or a fixed ``char name[N]``."""
        base = self.ctype.replace("__data_loc", "").replace("__rel_loc", "").strip()
        if "*" in base:  # ``char * buf`` of the syscall events is a pointer value
            return False
        return base.startswith("char") or base.startswith("const char[")


@dataclass(frozen=True, slots=True)
class EventFormat:
    """An event's ``format`` file.

    :param name: event name (``kapi_syscall_enter``, ``sys_enter_openat``)
    :param id: the event id (``common_type``); differs from build to build
    :param fields: every field, common ones first
    :param print_fmt: the ``print fmt:`` line's value
    """

    name: str
    id: int
    fields: tuple[FieldFormat, ...]
    print_fmt: str = ""

    def field(self, name: str) -> FieldFormat | None:
        """The field called ``name``, or ``None``."""
        for f in self.fields:
            if f.name == name:
                return f
        return None

    @property
    def record_size(self) -> int:
        """Bytes of the fixed part of a record (end of the last field)."""
        return max((f.offset + f.size for f in self.fields), default=0)


_FIELD_RE = re.compile(
    r"^\s*field:\s*(?P<decl>[^;]*);\s*offset:\s*(?P<offset>\d+);\s*size:\s*(?P<size>\d+);"
    r"(?:\s*signed:\s*(?P<signed>-?\d+);)?"
)
_DECL_RE = re.compile(r"^(?P<ctype>.*?)\s*\b(?P<name>\w+)\s*(?:\[(?P<len>\w*)\])?$")


def _parse_field(line: str, common: bool, where: str) -> FieldFormat:
    m = _FIELD_RE.match(line)
    if not m:
        raise DecodeError(f"{where}: malformed field line {line.strip()!r}")
    decl = m.group("decl").strip()
    data_loc = decl.startswith("__data_loc") or decl.startswith("__rel_loc")
    rel_loc = decl.startswith("__rel_loc")
    d = _DECL_RE.match(decl)
    if not d:
        raise DecodeError(f"{where}: cannot parse field declaration {decl!r}")
    ctype, name, length = d.group("ctype"), d.group("name"), d.group("len")
    array_len: int | None = None
    if data_loc:
        ctype = ctype + "[]" if length == "" else ctype
    elif length is not None:
        array_len = int(length, 0) if length and length[0].isdigit() else None
        ctype = f"{ctype}[{length}]"
    offset, size = int(m.group("offset")), int(m.group("size"))
    signed_s = m.group("signed")
    signed = bool(int(signed_s)) if signed_s is not None else False
    return FieldFormat(name=name, ctype=ctype.strip(), offset=offset, size=size, signed=signed,
                       array_len=array_len, data_loc=data_loc, rel_loc=rel_loc, common=common)


def parse_format(text: str, *, where: str = "format") -> EventFormat:
    """Parse an event's ``format`` file.

    :param text: the file's contents
    :param where: file name used in error messages
    :return: the event's name, id and fields
    :raises DecodeError: no ``name:``/``ID:`` line or a malformed field line
    """
    name: str | None = None
    event_id: int | None = None
    fields: list[FieldFormat] = []
    print_fmt = ""
    in_common = True
    seen_fields = False
    for line in text.splitlines():
        s = line.strip()
        if s.startswith("name:"):
            name = s[5:].strip()
        elif s.startswith("ID:"):
            try:
                event_id = int(s[3:].strip())
            except ValueError:
                raise DecodeError(f"{where}: bad ID line {s!r}") from None
        elif s.startswith("field:"):
            seen_fields = True
            fields.append(_parse_field(line, in_common, where))
        elif s == "" and seen_fields:
            in_common = False  # the blank line separates common from event fields
        elif s.startswith("print fmt:"):
            print_fmt = s[len("print fmt:"):].strip()
    if name is None or event_id is None:
        raise DecodeError(f"{where}: not an event format file (no 'name:' or 'ID:' line)")
    # Older formats have no blank line; the common_ prefix is authoritative anyway.
    fields = [FieldFormat(f.name, f.ctype, f.offset, f.size, f.signed, f.array_len, f.data_loc,
                          f.rel_loc, f.common or f.name.startswith("common_"))
              if f.name.startswith("common_") != f.common else f for f in fields]
    return EventFormat(name=name, id=event_id, fields=tuple(fields), print_fmt=print_fmt)


@dataclass(frozen=True, slots=True)
class HeaderPage:
    """Layout of a ring-buffer sub-buffer page, from ``events/header_page``.

    :param ts_offset: offset of the u64 page time stamp
    :param commit_offset: offset of ``local_t commit``
    :param commit_size: its size (8 on 64-bit kernels)
    :param data_offset: offset of the first record
    :param page_size: whole sub-buffer size (data offset + data size)
    """

    ts_offset: int = 0
    commit_offset: int = 8
    commit_size: int = 8
    data_offset: int = 16
    page_size: int = 4096


def parse_header_page(text: str, *, where: str = "header_page") -> HeaderPage:
    """Parse ``events/header_page``.

    :raises DecodeError: a required field (timestamp, commit, data) is missing
    """
    found: dict[str, tuple[int, int]] = {}
    for line in text.splitlines():
        m = _FIELD_RE.match(line)
        if not m:
            continue
        d = _DECL_RE.match(m.group("decl").strip())
        if d:
            found.setdefault(d.group("name"), (int(m.group("offset")), int(m.group("size"))))
    missing = [k for k in ("timestamp", "commit", "data") if k not in found]
    if missing:
        raise DecodeError(f"{where}: no {', '.join(missing)} field: not a header_page file")
    (ts_off, _), (c_off, c_size), (d_off, d_size) = (found["timestamp"], found["commit"],
                                                     found["data"])
    if c_size not in (4, 8) or d_off % 4 or d_size <= 0:
        raise DecodeError(f"{where}: unsupported layout (commit size {c_size}, data at {d_off})")
    return HeaderPage(ts_offset=ts_off, commit_offset=c_off, commit_size=c_size,
                      data_offset=d_off, page_size=d_off + d_size)


# --------------------------------------------------------------------------- captures


@dataclass(frozen=True, slots=True)
class RawCapture:
    """Everything a binary capture needs to be decoded later, as read from tracefs.

    :param header_page: ``events/header_page``
    :param header_event: ``events/header_event``
    :param formats: event name -> its ``format`` file
    :param pages: cpu -> everything read from ``per_cpu/cpuN/trace_pipe_raw`` (whole pages)
    :param stats: cpu -> that CPU's ``stats`` file, read before draining
    :param calls_log: the harness's ``calls.log`` (one line per call), if any
    """

    header_page: str
    header_event: str
    formats: Mapping[str, str]
    pages: Mapping[int, bytes]
    stats: Mapping[int, str]
    calls_log: str | None = None


_CPU_FILE_RE = re.compile(r"^cpu(\d+)\.(raw|stats)$")


def _read_text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError as e:
        raise UsageError(f"{path}: cannot read: {e.strerror}") from None


def read_capture_dir(path: Path | str) -> RawCapture:
    """Read a capture directory (``cpuN.raw``, ``cpuN.stats``, ``header_page``,
    ``header_event``, ``<event>.format``, optional ``calls.log``).

    :raises UsageError: not a directory, or a file cannot be read
    :raises DecodeError: ``header_page`` or every ``cpuN.raw`` is missing
    """
    d = Path(path)
    if not d.is_dir():
        raise UsageError(f"{d}: not a capture directory")
    pages: dict[int, bytes] = {}
    stats: dict[int, str] = {}
    formats: dict[str, str] = {}
    for p in sorted(d.iterdir()):
        m = _CPU_FILE_RE.match(p.name)
        if m:
            cpu = int(m.group(1))
            if m.group(2) == "raw":
                try:
                    pages[cpu] = p.read_bytes()
                except OSError as e:
                    raise UsageError(f"{p}: cannot read: {e.strerror}") from None
            else:
                stats[cpu] = _read_text(p)
        elif p.suffix == ".format" and p.is_file():
            text = _read_text(p)
            m2 = re.search(r"^name:\s*(\S+)", text, re.M)
            formats[m2.group(1) if m2 else p.stem.split(":")[-1]] = text
    if not (d / "header_page").is_file():
        raise DecodeError(f"{d}: no header_page file: not a raw capture directory",
                          hint="a capture holds cpuN.raw, cpuN.stats, header_page, "
                               "header_event and <event>.format files")
    if not pages:
        raise DecodeError(f"{d}: no cpuN.raw files: not a raw capture directory")
    header_event = _read_text(d / "header_event") if (d / "header_event").is_file() else ""
    calls = _read_text(d / "calls.log") if (d / "calls.log").is_file() else None
    return RawCapture(header_page=_read_text(d / "header_page"), header_event=header_event,
                      formats=formats, pages=pages, stats=stats, calls_log=calls)


def write_capture_dir(raw: RawCapture, path: Path | str) -> Path:
    """Save ``raw`` in the capture directory layout that :func:`read_capture_dir` reads.

    :return: the directory (created if needed)
    """
    d = Path(path)
    d.mkdir(parents=True, exist_ok=True)
    (d / "header_page").write_text(raw.header_page)
    (d / "header_event").write_text(raw.header_event)
    for name, text in raw.formats.items():
        (d / f"{name}.format").write_text(text)
    for cpu, data in raw.pages.items():
        (d / f"cpu{cpu}.raw").write_bytes(data)
    for cpu, text in raw.stats.items():
        (d / f"cpu{cpu}.stats").write_text(text)
    if raw.calls_log is not None:
        (d / "calls.log").write_text(raw.calls_log)
    return d


def find_capture_dirs(path: Path | str) -> list[Path]:
    """Capture directories at ``path``: itself if it holds ``cpuN.raw`` files, else
    every subdirectory (recursively) that does, sorted by path."""
    root = Path(path)
    if any(_CPU_FILE_RE.match(p.name) for p in root.glob("cpu*.raw")):
        return [root]
    found: list[Path] = []
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        found.extend(find_capture_dirs(sub))
    return found


# --------------------------------------------------------------------------- loss


@dataclass(frozen=True, slots=True)
class LossGap:
    """A time range in which events of one CPU may be missing from the capture.

    :param cpu: the CPU, or ``None`` when the CPU is unknown (any CPU)
    :param start_ns: gap start (exclusive); ``None``: since before the capture
    :param end_ns: gap end (exclusive); ``None``: until after the capture
    :param count: events lost in it, when known
    """

    cpu: int | None
    start_ns: int | None
    end_ns: int | None
    count: int | None = None

    def overlaps(self, lo_ns: int | None, hi_ns: int | None) -> bool:
        """Whether an event lost in this gap could lie strictly between ``lo_ns`` and
        ``hi_ns`` (``None``: unbounded)."""
        if self.end_ns is not None and lo_ns is not None and lo_ns >= self.end_ns:
            return False
        if self.start_ns is not None and hi_ns is not None and hi_ns <= self.start_ns:
            return False
        return True


@dataclass(frozen=True, slots=True)
class LossInfo:
    """What the capture lost.

    :param lost_events: events lost (overrun + dropped, or written - in buffer);
        ``None`` when the input cannot tell
    :param gaps: where (per CPU, in time) the lost events may have been
    :param per_cpu: cpu -> events lost on it, when known
    """

    lost_events: int | None = None
    gaps: tuple[LossGap, ...] = ()
    per_cpu: tuple[tuple[int, int], ...] = ()

    @property
    def lost(self) -> bool:
        """Whether any event is known (or, with page flags, suspected) to be lost."""
        return bool(self.lost_events) or bool(self.gaps)

    def explains(self, lo_ns: int | None, hi_ns: int | None) -> bool:
        """Whether a lost event could lie strictly between ``lo_ns`` and ``hi_ns``."""
        return any(g.overlaps(lo_ns, hi_ns) for g in self.gaps)


_STATS_RE = re.compile(r"^(?P<key>[a-z ]+):\s*(?P<value>[\d.]+)\s*$", re.M)


def parse_stats(text: str) -> dict[str, float]:
    """Parse a ``per_cpu/cpuN/stats`` file into ``{key: value}`` (``overrun``,
    ``dropped events``, ``oldest event ts`` in seconds, ...)."""
    return {m.group("key").strip(): float(m.group("value")) for m in _STATS_RE.finditer(text)}


# --------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class TraceEvent:
    """One decoded trace event.

    :param ts_ns: time stamp in ns (trace clock; text traces have µs resolution)
    :param cpu: CPU whose buffer held it
    :param tid: ``common_pid`` (the thread id)
    :param name: event name (``kapi_syscall_enter``, ``sys_enter_openat``)
    :param fields: the event's own fields (no ``common_*``): ints, strings, int tuples
    """

    ts_ns: int
    cpu: int
    tid: int
    name: str
    fields: Mapping[str, FieldValue] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, eq=False)  # numpy arrays: compare by identity
class EventColumns:
    """Decoded records as columns (the fast path), in time stamp order.

    :param ts_ns: int64 time stamps
    :param cpu: int32 CPUs
    :param tid: int32 ``common_pid``
    :param type_id: int32 ``common_type`` (event id)
    :param offset: int64 offset of each record's data in :attr:`blob`
    :param length: int32 data length of each record
    :param blob: all pages of all CPUs, concatenated
    :param formats: event id -> format
    """

    ts_ns: npt.NDArray[np.int64]
    cpu: npt.NDArray[np.int32]
    tid: npt.NDArray[np.int32]
    type_id: npt.NDArray[np.int32]
    offset: npt.NDArray[np.int64]
    length: npt.NDArray[np.int32]
    blob: bytes
    formats: Mapping[int, EventFormat]

    def __len__(self) -> int:
        return int(self.ts_ns.shape[0])


_FieldDecoder = Callable[[bytes, int, int], dict[str, FieldValue]]


def _field_decoder(fmt: EventFormat) -> _FieldDecoder:
    # Build ``(blob, off, length) -> fields`` for one event format (struct-based).
    plan: list[tuple[str, str, FieldFormat]] = []
    for f in fmt.fields:
        if f.common:
            continue
        if f.data_loc:
            plan.append(("loc", f.name, f))
        elif f.array_len is not None and not f.is_string and f.array_len > 0:
            esize = f.size // f.array_len
            code = {1: "B", 2: "H", 4: "I", 8: "Q"}.get(esize)
            if code is None:
                plan.append(("bytes", f.name, f))
            else:
                code = code.lower() if f.signed else code
                plan.append((f"<{f.array_len}{code}", f.name, f))
        elif f.is_string:
            plan.append(("str", f.name, f))
        else:
            code = {1: "B", 2: "H", 4: "I", 8: "Q"}.get(f.size)
            if code is None:
                plan.append(("bytes", f.name, f))
            else:
                plan.append(("<" + (code.lower() if f.signed else code), f.name, f))
    structs = {kind: struct.Struct(kind) for kind, _, _ in plan if kind.startswith("<")}

    def slow(blob: bytes, off: int, length: int) -> dict[str, FieldValue]:
        out: dict[str, FieldValue] = {}
        end = off + length
        for kind, name, f in plan:
            if f.offset + f.size > length:
                continue  # truncated record: leave the field out rather than invent it
            if kind == "loc":
                loc = int.from_bytes(blob[off + f.offset:off + f.offset + 4], "little")
                start = (loc & 0xFFFF) + (f.offset + f.size if f.rel_loc else 0)
                n = loc >> 16
                raw = blob[off + start:min(off + start + n, end)]
                if f.is_string:
                    out[name] = raw.split(b"\0", 1)[0].decode(errors="replace")
                else:
                    out[name] = bytes(raw)
            elif kind == "str":
                raw = blob[off + f.offset:off + f.offset + f.size]
                out[name] = raw.split(b"\0", 1)[0].decode(errors="replace")
            elif kind == "bytes":
                out[name] = bytes(blob[off + f.offset:off + f.offset + f.size])
            else:
                vals = structs[kind].unpack_from(blob, off + f.offset)
                out[name] = vals if f.array_len is not None else int(vals[0])
        return out

    return _fast_decoder(fmt, plan, slow) or slow


_K_INT, _K_ARR, _K_LOC, _K_STR, _K_BYTES = range(5)


def _fast_decoder(fmt: EventFormat, plan: list[tuple[str, str, FieldFormat]],
                  slow: _FieldDecoder) -> _FieldDecoder | None:
    # One struct.unpack_from for the whole fixed part of a record, then assemble the
    # dict; falls back to the per-field decoder for short records. None when fields
    # overlap (then the per-field decoder is the only one that is right).
    parts = ["<"]
    steps: list[tuple[int, str, int, int, bool]] = []  # kind, name, index, count, rel
    pos = 0
    idx = 0
    slow_by_name = {name: kind for kind, name, _ in plan}
    for f in sorted((f for f in fmt.fields if not f.common), key=lambda f: f.offset):
        if f.offset < pos:
            return None
        if f.offset > pos:
            parts.append(f"{f.offset - pos}x")
        kind = slow_by_name[f.name]
        if kind == "loc":
            if f.size != 4:
                return None
            parts.append("I")
            steps.append((_K_LOC if f.is_string else _K_BYTES, f.name, idx,
                          f.offset + f.size if f.rel_loc else 0, True))
            idx += 1
        elif kind in ("str", "bytes"):
            parts.append(f"{f.size}s")
            steps.append((_K_STR if kind == "str" else _K_BYTES, f.name, idx, 0, False))
            idx += 1
        elif f.array_len is not None:
            parts.append(kind[1:])
            steps.append((_K_ARR, f.name, idx, f.array_len, False))
            idx += f.array_len
        else:
            parts.append(kind[1:])
            steps.append((_K_INT, f.name, idx, 1, False))
            idx += 1
        pos = f.offset + f.size
    st = struct.Struct("".join(parts))
    need = st.size
    unpack_from = st.unpack_from
    cache: dict[bytes, str] = {}

    def fast(blob: bytes, off: int, length: int) -> dict[str, FieldValue]:
        if length < need:
            return slow(blob, off, length)
        vals = unpack_from(blob, off)
        out: dict[str, FieldValue] = {}
        for kind, name, i, n, is_loc in steps:
            if kind == _K_INT:
                out[name] = vals[i]
            elif kind == _K_ARR:
                out[name] = vals[i:i + n]
            elif is_loc:
                loc = vals[i]
                start = off + (loc & 0xFFFF) + n
                raw = blob[start:min(start + (loc >> 16), off + length)]
                if kind == _K_LOC:
                    text = cache.get(raw)
                    if text is None:
                        text = raw.split(b"\0", 1)[0].decode(errors="replace")
                        if len(cache) < 4096:
                            cache[raw] = text
                    out[name] = text
                else:
                    out[name] = bytes(raw)
            elif kind == _K_STR:
                out[name] = vals[i].split(b"\0", 1)[0].decode(errors="replace")
            else:
                out[name] = vals[i]
        return out

    return fast


class _LazyEvents(Sequence[TraceEvent]):
    """A read-only sequence of :class:`TraceEvent` built from columns on access."""

    __slots__ = ("_cols", "_decoders", "_names")

    def __init__(self, cols: EventColumns) -> None:
        self._cols = cols
        self._decoders = {i: _field_decoder(f) for i, f in cols.formats.items()}
        self._names = {i: f.name for i, f in cols.formats.items()}

    def __len__(self) -> int:
        return len(self._cols)

    def _make(self, i: int) -> TraceEvent:
        c = self._cols
        tid = int(c.type_id[i])
        off = int(c.offset[i])
        return TraceEvent(ts_ns=int(c.ts_ns[i]), cpu=int(c.cpu[i]), tid=int(c.tid[i]),
                          name=self._names[tid],
                          fields=self._decoders[tid](c.blob, off, int(c.length[i])))

    @overload
    def __getitem__(self, i: int) -> TraceEvent: ...

    @overload
    def __getitem__(self, i: slice) -> list[TraceEvent]: ...

    def __getitem__(self, i: int | slice) -> TraceEvent | list[TraceEvent]:
        if isinstance(i, slice):
            return [self._make(j) for j in range(*i.indices(len(self)))]
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(i)
        return self._make(i)

    def __iter__(self) -> Iterator[TraceEvent]:
        c = self._cols
        ts, cpu, tid_col = c.ts_ns.tolist(), c.cpu.tolist(), c.tid.tolist()
        types, offs, lens = c.type_id.tolist(), c.offset.tolist(), c.length.tolist()
        decoders, names, blob = self._decoders, self._names, c.blob
        for k in range(len(ts)):
            t = types[k]
            yield TraceEvent(ts[k], cpu[k], tid_col[k], names[t], decoders[t](blob, offs[k],
                                                                              lens[k]))


@dataclass(frozen=True, slots=True)
class Capture:
    """Decoded events of one capture, sorted by time stamp, and what was lost.

    :param events: the events (lazily built from columns for binary captures)
    :param loss: loss counters and where events may be missing
    :param source: where it came from (path), for messages
    :param columns: the columnar form, for binary captures
    :param cpus: CPUs the capture covered (whether or not they hold events)
    """

    events: Sequence[TraceEvent]
    loss: LossInfo = LossInfo()
    source: str = ""
    columns: EventColumns | None = None
    cpus: tuple[int, ...] = ()


# --------------------------------------------------------------------------- binary


def _walk_cpu(data: bytes, cpu: int, hp: HeaderPage, base: int, offs: list[int],
              tss: list[int], lens: list[int], gaps: list[LossGap], where: str) -> int:
    # Reference walk, one record per iteration (kbuffer-parse.c semantics); the decoder
    # uses _walk_vectorized, tests and bench/ compare the two. Appends record data
    # offsets (into a blob holding ``data`` at ``base``), time stamps and lengths;
    # returns the events lost inside the data (page flags with a stored count).
    psize = hp.page_size
    if len(data) % psize:
        raise DecodeError(f"{where}: {len(data)} bytes is not a whole number of "
                          f"{psize}-byte pages (truncated?)")
    words = memoryview(data).cast("I") if data else memoryview(b"").cast("I")
    commit_fmt = "<q" if hp.commit_size == 8 else "<i"
    d_words = hp.data_offset // 4
    max_len = psize - hp.data_offset
    stored_lost = 0
    prev_ts: int | None = None
    offs_append, tss_append, lens_append = offs.append, tss.append, lens.append
    for page_no, pstart in enumerate(range(0, len(data), psize)):
        ts = struct.unpack_from("<Q", data, pstart + hp.ts_offset)[0]
        commit = struct.unpack_from(commit_fmt, data, pstart + hp.commit_offset)[0]
        length = commit & COMMIT_MASK
        if length > max_len:
            raise DecodeError(f"{where}: page {page_no} (offset {pstart}): commit {length} "
                              f"exceeds the page's {max_len} data bytes: corrupt page")
        first_in_page = len(tss)
        if commit & RB_MISSED_EVENTS:
            missed: int | None = None
            if commit & RB_MISSED_STORED and length + hp.commit_size <= max_len:
                missed = _missed_count(struct.unpack_from(
                    "<Q" if hp.commit_size == 8 else "<I", data,
                    pstart + hp.data_offset + length)[0], where, page_no)
                stored_lost += missed or 0
            # Events were lost between the previous page read and this one.
            gaps.append(LossGap(cpu, prev_ts, None, missed))
        i = pstart // 4 + d_words
        end = i + (length + 3) // 4
        while i < end:
            w = words[i]
            tl = w & 31
            if tl == 0:
                n = words[i + 1] if i + 1 < end else 0  # array[0]: data length + 4
                if n < 4 or i + 1 + (n + 3) // 4 > end:
                    raise _past_commit(where, page_no, tl, i * 4 - pstart, length)
                ts += w >> 5
                offs_append(base + (i + 2) * 4)
                tss_append(ts)
                lens_append(n - 4)
                i += 1 + (n + 3) // 4
            elif tl <= RINGBUF_TYPE_DATA_TYPE_LEN_MAX:
                if i + 1 + tl > end:
                    raise _past_commit(where, page_no, tl, i * 4 - pstart, length)
                ts += w >> 5
                offs_append(base + (i + 1) * 4)
                tss_append(ts)
                lens_append(tl * 4)
                i += 1 + tl
            elif tl == RINGBUF_TYPE_PADDING:
                if (w >> 5) == 0 or i + 1 >= end:
                    break  # null event (or no room left): nothing more on this page
                n = words[i + 1]  # array[0]: length of the discarded event - 4
                ts += w >> 5  # discarded event: keep its delta (as kbuffer-parse.c)
                i += 1 + max((n + 3) // 4, 1)
            elif i + 2 > end:
                raise _past_commit(where, page_no, tl, i * 4 - pstart, length)
            elif tl == RINGBUF_TYPE_TIME_EXTEND:
                ts += (words[i + 1] << TS_SHIFT) | (w >> 5)
                i += 2
            else:  # RINGBUF_TYPE_TIME_STAMP: absolute, low 59 bits only
                abs_ts = (words[i + 1] << TS_SHIFT) | (w >> 5)
                msb = ts >> _TS_MSB_SHIFT << _TS_MSB_SHIFT
                abs_ts |= msb
                if abs_ts < ts and msb:
                    abs_ts += 1 << _TS_MSB_SHIFT
                ts = abs_ts
                i += 2
        if len(tss) > first_in_page:
            if commit & RB_MISSED_EVENTS:
                gaps[-1] = LossGap(cpu, prev_ts, tss[first_in_page], gaps[-1].count)
            prev_ts = tss[-1]
    return stored_lost


def _missed_count(count: int, where: str, page_no: int) -> int:
    if count >= 1 << 62:  # the kernel stores an unsigned long of lost events
        raise DecodeError(f"{where}: page {page_no}: missed-events count {count} is not "
                          "plausible: corrupt page")
    return count


def _past_commit(where: str, page_no: int, type_len: int, offset: int,
                 commit: int) -> DecodeError:
    return DecodeError(f"{where}: page {page_no}: record (type {type_len}) at offset {offset} "
                       f"runs past the commit ({commit} bytes): corrupt page")


@dataclass(frozen=True, slots=True)
class _Walk:
    # Result of walking pages: one row per data record, page-major order.
    page: npt.NDArray[np.int64]  # global page index of each record
    offset: npt.NDArray[np.int64]  # byte offset of the record's data in the blob
    ts_ns: npt.NDArray[np.int64]
    length: npt.NDArray[np.int32]
    missed: npt.NDArray[np.int64]  # per page: -1 no flag, -2 flag without count, else count


def _walk_vectorized(blob: bytes, hp: HeaderPage, page_where: Sequence[tuple[str, int]]) -> _Walk:
    # numpy loads in a second or so: only the columnar paths (KCOV, bulk decode) pay it
    import numpy as np
    # Records are variable-length, so one page cannot be walked in parallel; but all
    # pages can: step k decodes the k-th record of every page at once (numpy gathers
    # over the page cursors), so the Python loop runs ~records-per-page times.
    psize = hp.page_size
    npages = len(blob) // psize
    words = np.frombuffer(blob, dtype="<u4")
    nwords = words.shape[0]
    pstart = np.arange(npages, dtype=np.int64) * psize
    page_ts = np.frombuffer(blob, dtype="<u8")[(pstart + hp.ts_offset) // 8].astype(np.int64) \
        if hp.ts_offset % 8 == 0 else np.array(
            [struct.unpack_from("<Q", blob, int(o) + hp.ts_offset)[0] for o in pstart],
            dtype=np.int64)
    if hp.commit_size == 8:
        commit = words[(pstart + hp.commit_offset) // 4].astype(np.int64) | (
            words[(pstart + hp.commit_offset) // 4 + 1].astype(np.int64) << 32)
    else:
        commit = words[(pstart + hp.commit_offset) // 4].astype(np.int64)
    length = commit & COMMIT_MASK
    max_len = psize - hp.data_offset
    bad = np.flatnonzero(length > max_len)
    if bad.size:
        f, pno = page_where[int(bad[0])]
        raise DecodeError(f"{f}: page {pno} (offset {pno * psize}): commit "
                          f"{int(length[bad[0]])} exceeds the page's {max_len} data bytes: "
                          f"corrupt page")
    missed = np.full(npages, -1, dtype=np.int64)
    flagged = (commit & RB_MISSED_EVENTS) != 0
    if flagged.any():
        missed[flagged] = -2
        stored = flagged & ((commit & RB_MISSED_STORED) != 0) & \
            (length + hp.commit_size <= max_len)
        for p in np.flatnonzero(stored).tolist():
            at = p * psize + hp.data_offset + int(length[p])
            count = struct.unpack_from("<Q" if hp.commit_size == 8 else "<I", blob, at)[0]
            f, pno = page_where[p]
            missed[p] = _missed_count(count, f, pno)

    live = np.flatnonzero(length > 0)
    cur = pstart[live] // 4 + hp.data_offset // 4
    end = cur + (length[live] + 3) // 4
    ts = page_ts[live]
    out_page: list[npt.NDArray[np.int64]] = []
    out_off: list[npt.NDArray[np.int64]] = []
    out_ts: list[npt.NDArray[np.int64]] = []
    out_len: list[npt.NDArray[np.int64]] = []
    while live.size:
        w = words[cur].astype(np.int64)
        nxt = words[np.minimum(cur + 1, nwords - 1)].astype(np.int64)
        tl = w & 31
        delta = w >> 5
        big = tl == 0
        small = (tl > 0) & (tl <= RINGBUF_TYPE_DATA_TYPE_LEN_MAX)
        pad = tl == RINGBUF_TYPE_PADDING
        ext = tl == RINGBUF_TYPE_TIME_EXTEND
        absts = tl == RINGBUF_TYPE_TIME_STAMP
        data = big | small
        step = np.where(big, 1 + (nxt + 3) // 4,
                        np.where(small, 1 + tl,
                                 np.where(pad, 1 + np.maximum((nxt + 3) // 4, 1), 2)))
        # A null padding record (delta 0), or one with no room for its length, ends the page.
        stop = pad & ((delta == 0) | (cur + 1 >= end))
        broken = ~stop & ((cur + step > end) | (big & (nxt < 4)))
        if broken.any():
            k = int(np.flatnonzero(broken)[0])
            p = int(live[k])
            f, pno = page_where[p]
            raise _past_commit(f, pno, int(tl[k]), int(cur[k]) * 4 - p * psize, int(length[p]))
        ts = ts + np.where(ext, (nxt << TS_SHIFT) | delta, np.where(stop, 0, delta))
        if absts.any():
            a = (nxt << TS_SHIFT) | delta
            msb = (ts >> _TS_MSB_SHIFT) << _TS_MSB_SHIFT
            a = a | msb
            a = np.where((a < ts) & (msb != 0), a + (1 << _TS_MSB_SHIFT), a)
            ts = np.where(absts, a, ts)
        if data.any():
            out_page.append(live[data])
            out_off.append(np.where(big, cur + 2, cur + 1)[data] * 4)
            out_ts.append(ts[data])
            out_len.append(np.where(big, nxt - 4, tl * 4)[data])
        cur = cur + step
        keep = ~stop & (cur < end)
        live, cur, end, ts = live[keep], cur[keep], end[keep], ts[keep]
    if out_page:
        page_a = np.concatenate(out_page)
        order = np.argsort(page_a, kind="stable")  # step-major -> page-major
        return _Walk(page_a[order], np.concatenate(out_off)[order],
                     np.concatenate(out_ts)[order],
                     np.concatenate(out_len)[order].astype(np.int32), missed)
    z = np.zeros(0, dtype=np.int64)
    return _Walk(z, z, z, np.zeros(0, dtype=np.int32), missed)


def decode_columns(raw: RawCapture, *, where: str = "capture") -> tuple[EventColumns, LossInfo]:
    """Decode every page of ``raw`` into columns sorted by time stamp.

    :param where: name used in error messages (the capture directory)
    :raises DecodeError: corrupt page, unknown event id, bad format or header file
    """
    # numpy loads in a second or so: only the columnar paths (KCOV, bulk decode) pay it
    import numpy as np

    hp, formats = _parse_headers(raw, where)
    cpus = sorted(raw.pages)
    page_where: list[tuple[str, int]] = []
    page_cpu_l: list[int] = []
    for cpu in cpus:
        data = raw.pages[cpu]
        if len(data) % hp.page_size:
            raise DecodeError(f"{where}/cpu{cpu}.raw: {len(data)} bytes is not a whole number "
                              f"of {hp.page_size}-byte pages (truncated?)")
        k = len(data) // hp.page_size
        page_where.extend((f"{where}/cpu{cpu}.raw", j) for j in range(k))
        page_cpu_l.extend([cpu] * k)
    blob = b"".join(raw.pages[c] for c in cpus)
    page_cpu = np.array(page_cpu_l, dtype=np.int32)
    walk = _walk_vectorized(blob, hp, page_where)
    n = int(walk.ts_ns.shape[0])
    ts_arr, off_arr, len_arr = walk.ts_ns, walk.offset, walk.length
    cpu_arr = page_cpu[walk.page] if n else np.zeros(0, np.int32)

    gaps: list[LossGap] = []
    for cpu in cpus:
        idx = np.flatnonzero(cpu_arr == cpu)
        first = int(ts_arr[idx[0]]) if idx.size else None
        last = int(ts_arr[idx[-1]]) if idx.size else None
        stat_gaps = _stats_gaps(raw.stats.get(cpu), cpu, first, last)
        spans = {(g.start_ns, g.end_ns) for g in stat_gaps}
        gaps.extend(stat_gaps)
        for p in np.flatnonzero((walk.missed != -1) & (page_cpu == cpu)).tolist():
            # Events were lost between the previous page read and this one.
            i = int(np.searchsorted(walk.page, p, side="left"))
            end_ns = int(ts_arr[i]) if i < n and cpu_arr[i] == cpu else None
            start_ns = int(ts_arr[i - 1]) if i > 0 and cpu_arr[i - 1] == cpu else None
            count = int(walk.missed[p]) if walk.missed[p] >= 0 else None
            if (start_ns, end_ns) not in spans:
                gaps.append(LossGap(cpu, start_ns, end_ns, count))
    # Every record starts 4-byte aligned: gather common_type and common_pid as words.
    u32 = np.frombuffer(blob, dtype="<u4") if len(blob) >= 4 else np.zeros(0, "<u4")
    w0 = off_arr // 4
    short = len_arr < 8
    if n and short.any():
        k = int(np.flatnonzero(short)[0])
        raise _short_record(where, int(off_arr[k]), int(len_arr[k]))
    type_arr = (u32[w0] & 0xFFFF).astype(np.int32) if n else np.zeros(0, np.int32)
    tid_arr = u32[w0 + 1].view(np.int32) if n else np.zeros(0, np.int32)
    if n:
        known = np.isin(type_arr, np.array(sorted(formats) or [-1], dtype=np.int32))
        if not known.all():
            k = int(np.flatnonzero(~known)[0])
            raise _unknown_event(where, int(cpu_arr[k]), int(type_arr[k]), int(ts_arr[k]),
                                 formats)
        order = np.argsort(ts_arr, kind="stable")
        ts_arr, cpu_arr, tid_arr = ts_arr[order], cpu_arr[order], tid_arr[order]
        type_arr, off_arr, len_arr = type_arr[order], off_arr[order], len_arr[order]
    cols = EventColumns(ts_ns=ts_arr, cpu=cpu_arr, tid=np.ascontiguousarray(tid_arr),
                        type_id=type_arr, offset=off_arr, length=len_arr, blob=blob,
                        formats=formats)
    return cols, _loss_info(raw, gaps)


def _parse_headers(raw: RawCapture, where: str) -> tuple[HeaderPage, dict[int, EventFormat]]:
    hp = parse_header_page(raw.header_page, where=f"{where}/header_page")
    formats: dict[int, EventFormat] = {}
    for name, text in raw.formats.items():
        fmt = parse_format(text, where=f"{where}/{name}.format")
        formats[fmt.id] = fmt
    return hp, formats


def _unknown_event(where: str, cpu: int, type_id: int, ts_ns: int,
                   formats: Mapping[int, EventFormat]) -> DecodeError:
    known = ", ".join(f"{i}={f.name}" for i, f in sorted(formats.items())) or "none"
    return DecodeError(f"{where}/cpu{cpu}.raw: unknown event id {type_id} at ts {ts_ns} ns "
                       f"(known: {known}; add its format file as <event>.format)")


def _short_record(where: str, offset: int, length: int) -> DecodeError:
    return DecodeError(f"{where}: record at blob offset {offset} is {length} bytes, too "
                       "short for an event: corrupt page")


def _loss_info(raw: RawCapture, gaps: list[LossGap]) -> LossInfo:
    per_cpu: list[tuple[int, int]] = []
    total: int | None = 0
    for cpu in sorted(raw.pages):
        st = raw.stats.get(cpu)
        if st is None:
            total = None
            continue
        s = parse_stats(st)
        lost = int(s.get("overrun", 0)) + int(s.get("dropped events", 0))
        per_cpu.append((cpu, lost))
        if total is not None:
            total += lost
    if total is None and not per_cpu:
        stored = sum(g.count or 0 for g in gaps)
        total = stored if gaps else None
    return LossInfo(lost_events=total, gaps=tuple(gaps), per_cpu=tuple(per_cpu))


def _stats_gaps(stats: str | None, cpu: int, first: int | None,
                last: int | None) -> list[LossGap]:
    # Overwrite mode loses the oldest events (before the first survivor); a full
    # buffer without overwrite drops the newest (after the last survivor).
    if stats is None:
        return []
    s = parse_stats(stats)
    overrun, dropped = int(s.get("overrun", 0)), int(s.get("dropped events", 0))
    gaps: list[LossGap] = []
    if overrun:
        gaps.append(LossGap(cpu, None, first, overrun))
    if dropped:
        gaps.append(LossGap(cpu, last, None, dropped))
    return gaps


def decode(raw: RawCapture, *, where: str = "capture",
           small_pages: int | None = None) -> Capture:
    """Decode a binary capture into events sorted by time stamp.

    Captures of up to ``small_pages`` (default :data:`SMALL_CAPTURE_PAGES`) pages are
    walked record by record (no numpy, ``columns`` is None); larger ones take the
    columnar path. Both give the same events, loss information and errors.

    :param where: name used in error messages (the capture directory)
    :raises DecodeError: corrupt page, unknown event id, bad format or header file
    """
    hp = parse_header_page(raw.header_page, where=f"{where}/header_page")
    limit = SMALL_CAPTURE_PAGES if small_pages is None else small_pages
    if sum(len(d) for d in raw.pages.values()) <= limit * hp.page_size:
        return _decode_plain(raw, where)
    cols, loss = decode_columns(raw, where=where)
    return Capture(events=_LazyEvents(cols), loss=loss, source=where, columns=cols,
                   cpus=tuple(sorted(raw.pages)))


def _decode_plain(raw: RawCapture, where: str) -> Capture:
    # The per-record reference walk, for small captures: no numpy, events built at once.
    hp, formats = _parse_headers(raw, where)
    decoders = {i: _field_decoder(f) for i, f in formats.items()}
    events: list[tuple[int, int, TraceEvent]] = []  # (ts, sequence, event)
    gaps: list[LossGap] = []
    for cpu in sorted(raw.pages):
        data = raw.pages[cpu]
        offs: list[int] = []
        tss: list[int] = []
        lens: list[int] = []
        page_gaps: list[LossGap] = []
        _walk_cpu(data, cpu, hp, 0, offs, tss, lens, page_gaps, f"{where}/cpu{cpu}.raw")
        stat_gaps = _stats_gaps(raw.stats.get(cpu), cpu, tss[0] if tss else None,
                                tss[-1] if tss else None)
        spans = {(g.start_ns, g.end_ns) for g in stat_gaps}
        gaps.extend(stat_gaps)
        gaps.extend(g for g in page_gaps if (g.start_ns, g.end_ns) not in spans)
        for off, ts, n in zip(offs, tss, lens, strict=True):
            if n < 8:
                raise _short_record(where, off, n)
            type_id, tid = struct.unpack_from("<Hxxi", data, off)
            fmt = formats.get(type_id)
            if fmt is None:
                raise _unknown_event(where, cpu, type_id, ts, formats)
            ev = TraceEvent(ts, cpu, tid, fmt.name, decoders[type_id](data, off, n))
            events.append((ts, len(events), ev))
    events.sort(key=lambda t: (t[0], t[1]))
    return Capture(events=[e for _, _, e in events], loss=_loss_info(raw, gaps), source=where,
                   cpus=tuple(sorted(raw.pages)))


# --------------------------------------------------------------------------- text

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


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while building many small acyclic objects.

    Building ~1M events or pairs otherwise triggers the collector over and over, each
    pass scanning everything built so far; none of these objects forms a cycle.
    """
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


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


# --------------------------------------------------------------------------- loading


def load_capture(path: Path | str) -> Capture:
    """Load a saved capture: a text trace file, or a raw capture directory.

    :raises UsageError: ``path`` does not exist or cannot be read
    :raises DecodeError: the file or directory does not decode
    """
    p = Path(path)
    if p.is_dir():
        return decode(read_capture_dir(p), where=str(p))
    if not p.exists():
        raise UsageError(f"{p}: no such file or directory")
    try:
        data = p.read_bytes()
    except OSError as e:
        raise UsageError(f"{p}: cannot read: {e.strerror}") from None
    try:
        text = data.decode()
    except UnicodeDecodeError:
        raise DecodeError(f"{p}: not a text trace (not UTF-8 text; a raw capture is a "
                          f"directory of cpuN.raw files)") from None
    return parse_text_trace(text, where=str(p))
