"""Saved captures on disk: the capture directory (``cpuN.raw``, ``cpuN.stats``,
``header_page``, ``header_event``, ``<event>.format``, optional ``calls.log``) read
and written as a :class:`~kapi_selftests.trace.events.RawCapture`, and
:func:`load_capture`, which decodes a saved directory or text trace.
"""

from __future__ import annotations

import re
from pathlib import Path

from kapi_selftests.errors import DecodeError, UsageError
from kapi_selftests.trace.events import Capture, RawCapture
from kapi_selftests.trace.ringbuf import decode
from kapi_selftests.trace.text import parse_text_trace

__all__ = [
    "read_capture_dir",
    "write_capture_dir",
    "find_capture_dirs",
    "load_capture",
]

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
