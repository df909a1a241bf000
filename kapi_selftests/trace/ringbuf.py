"""Ring-buffer pages -> events: binary sub-buffer pages as read from
``per_cpu/cpuN/trace_pipe_raw`` (a :class:`~kapi_selftests.trace.events.RawCapture`)
decoded into a :class:`~kapi_selftests.trace.events.Capture`, with what was lost.

The binary decoder is columnar. Records are variable-length, so a page cannot be
walked with vector operations, but all pages can at once: step *k* decodes the
*k*-th record of every page with numpy gathers (record offsets, time stamps and
lengths only); numpy then gathers ``common_type``/``common_pid`` of every record and
merges the CPUs by time stamp. :class:`TraceEvent` objects (with their fields) are
built lazily, on access, from those columns. ``_walk_cpu`` is the plain per-record
walk, kept as the reference the tests compare the vectorised walk against, and the
decoder of small captures.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, overload

from kapi_selftests.errors import DecodeError
from kapi_selftests.trace.events import (
    Capture,
    EventColumns,
    FieldValue,
    LossGap,
    LossInfo,
    RawCapture,
    TraceEvent,
)
from kapi_selftests.trace.formats import (
    EventFormat,
    FieldFormat,
    HeaderPage,
    parse_format,
    parse_header_page,
    parse_stats,
)

__all__ = ["decode", "decode_columns"]

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

# Captures of at most this many pages are walked in plain Python: numpy costs more
# to import (1.5 s in a TCG guest) than it saves on a few hundred records.
SMALL_CAPTURE_PAGES = 64

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


# --------------------------------------------------------------------------- fields


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


# --------------------------------------------------------------------------- pages


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
