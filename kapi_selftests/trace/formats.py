"""Tracefs's description files: event ``format`` files, ``header_page`` and the
per-CPU ``stats`` files -> :class:`EventFormat`, :class:`HeaderPage`, counters.

What the decoders (:mod:`~kapi_selftests.trace.ringbuf`) need to know about a
capture's layout before they read a page. Pure text parsing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from kapi_selftests.errors import DecodeError

__all__ = [
    "FieldFormat",
    "EventFormat",
    "HeaderPage",
    "parse_format",
    "parse_header_page",
    "parse_stats",
]


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


_STATS_RE = re.compile(r"^(?P<key>[a-z ]+):\s*(?P<value>[\d.]+)\s*$", re.M)


def parse_stats(text: str) -> dict[str, float]:
    """Parse a ``per_cpu/cpuN/stats`` file into ``{key: value}`` (``overrun``,
    ``dropped events``, ``oldest event ts`` in seconds, ...)."""
    return {m.group("key").strip(): float(m.group("value")) for m in _STATS_RE.finditer(text)}
