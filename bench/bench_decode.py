"""Decode benchmark: binary ring-buffer pages and text traces, >= 1M events.

Not a test. Builds a large capture from the real pages of
``tests/data/kapi-reference/raw/threads`` (each repetition's page time stamps shifted
past the previous one, so the result is a plausible, longer capture) and its text
``trace.txt`` likewise, then prints events/s and where the time goes.

    python bench/bench_decode.py [--reference DIR] [--events N] [--repeat K]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import platform
import pstats
import re
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kapi_selftests.trace.capture import read_capture_dir  # noqa: E402
from kapi_selftests.trace.events import RawCapture  # noqa: E402
from kapi_selftests.trace.formats import parse_header_page  # noqa: E402
from kapi_selftests.trace.pairing import pair  # noqa: E402
from kapi_selftests.trace.ringbuf import _walk_cpu, _walk_vectorized, decode, decode_columns  # noqa: E402
from kapi_selftests.trace.text import _iter_lines, parse_text_trace  # noqa: E402

T = TypeVar("T")


def best_of(k: int, fn: Callable[[], T]) -> tuple[float, T]:
    best, out = float("inf"), None
    for _ in range(k):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    assert out is not None
    return best, out


def big_raw(raw: RawCapture, reps: int) -> RawCapture:
    hp = parse_header_page(raw.header_page)
    first = min(struct.unpack_from("<Q", d, hp.ts_offset)[0] for d in raw.pages.values() if d)
    last = max(struct.unpack_from("<Q", d, len(d) - hp.page_size + hp.ts_offset)[0]
               for d in raw.pages.values() if d)
    span = last - first + 10_000_000
    pages: dict[int, bytes] = {}
    for cpu, data in raw.pages.items():
        if not data:
            pages[cpu] = data
            continue
        arr = np.frombuffer(data * reps, dtype=np.uint8).copy()
        npages = len(data) // hp.page_size
        ts = arr.view("<u8")[hp.ts_offset // 8::hp.page_size // 8]
        ts += (np.arange(reps, dtype=np.uint64) * np.uint64(span)).repeat(npages)
        pages[cpu] = arr.tobytes()
    return RawCapture(raw.header_page, raw.header_event, raw.formats, pages, raw.stats)


def big_text(text: str, reps: int) -> str:
    lines = text.splitlines(keepends=True)
    head = [ln for ln in lines if ln.startswith("#")]
    body = "".join(ln for ln in lines if not ln.startswith("#"))
    return "".join(head) + body * reps


def top(prof: cProfile.Profile, n: int) -> str:
    s = io.StringIO()
    pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(n)
    keep = [ln for ln in s.getvalue().splitlines()
            if re.match(r"\s*\d", ln) or "tottime" in ln]
    return "\n".join(keep)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reference", type=Path,
                    default=ROOT / "tests" / "data" / "kapi-reference",
                    help="real captures (default: tests/data/kapi-reference)")
    ap.add_argument("--events", type=int, default=1_000_000, help="at least this many events")
    ap.add_argument("--repeat", type=int, default=3, help="best of K runs")
    ap.add_argument("--profile", action="store_true", help="print cProfile top functions")
    args = ap.parse_args()

    src = args.reference / "raw" / "threads"
    raw = read_capture_dir(src)
    base = len(decode(raw).events)
    reps = -(-args.events // base)
    big = big_raw(raw, reps)
    nbytes = sum(len(d) for d in big.pages.values())
    print(f"machine: {platform.machine()} {platform.processor() or ''} "
          f"python {platform.python_version()} numpy {np.__version__}")
    print(f"binary capture: {src} x{reps}: {nbytes / 1e6:.1f} MB of pages")

    # --- binary: the whole decode to sorted columns
    t_dec, (cols, _loss) = best_of(args.repeat, lambda: decode_columns(big))
    n = len(cols)
    print(f"binary decode (columns, sorted):      {n:>9} events {t_dec:7.3f} s "
          f"{n / t_dec / 1e6:6.2f} M events/s")

    # where the time goes: the page walk vs the rest (gathers, id check, sort)
    hp = parse_header_page(big.header_page)
    cpus = sorted(big.pages)
    blob = b"".join(big.pages[c] for c in cpus)
    where = [("x", i) for i in range(len(blob) // hp.page_size)]
    t_walk, walk = best_of(args.repeat, lambda: _walk_vectorized(blob, hp, where))
    t_join, _ = best_of(args.repeat, lambda: b"".join(big.pages[c] for c in cpus))
    t_sort, _ = best_of(args.repeat, lambda: np.argsort(walk.ts_ns, kind="stable"))
    print(f"  page walk (numpy, all pages/step):  {t_walk:7.3f} s "
          f"({100 * t_walk / t_dec:4.1f}%)")
    print(f"  join pages into one blob:           {t_join:7.3f} s "
          f"({100 * t_join / t_dec:4.1f}%)")
    print(f"  stable sort by time stamp:          {t_sort:7.3f} s "
          f"({100 * t_sort / t_dec:4.1f}%)")
    rest = t_dec - t_walk - t_join - t_sort
    print(f"  rest (gathers, id check, loss):     {rest:7.3f} s ({100 * rest / t_dec:4.1f}%)")

    # the per-record pure-Python walk, for comparison
    def py_walk() -> int:
        offs: list[int] = []
        tss: list[int] = []
        lens: list[int] = []
        b = 0
        for c in cpus:
            _walk_cpu(big.pages[c], c, hp, b, offs, tss, lens, [], "x")
            b += len(big.pages[c])
        return len(tss)

    t_py, n_py = best_of(1, py_walk)
    print(f"  (pure-Python per-record walk:       {t_py:7.3f} s "
          f"{n_py / t_py / 1e6:6.2f} M events/s)")

    # materialising TraceEvent objects (lazy; what pairing iterates)
    cap = decode(big)
    t_obj, k = best_of(1, lambda: sum(1 for _ in cap.events))
    print(f"TraceEvent objects (fields decoded):  {k:>9} events {t_obj:7.3f} s "
          f"{k / t_obj / 1e6:6.2f} M events/s")
    t_pair, res = best_of(1, lambda: pair(cap.events, cap.loss))
    print(f"pairing:                              {k:>9} events {t_pair:7.3f} s "
          f"{k / t_pair / 1e6:6.2f} M events/s ({len(res.pairs)} pairs)")

    # --- text
    text = big_text((src / "trace.txt").read_text(), reps)
    t_txt, tcap = best_of(args.repeat, lambda: parse_text_trace(text))
    m = len(tcap.events)
    print(f"text parse:                           {m:>9} events {t_txt:7.3f} s "
          f"{m / t_txt / 1e6:6.2f} M events/s ({len(text) / 1e6:.0f} MB)")
    t_re, _ = best_of(1, lambda: sum(1 for _ in _iter_lines(text)))
    print(f"  line regex alone (findall):         {t_re:7.3f} s ({100 * t_re / t_txt:4.1f}%)")

    if args.profile:
        prof = cProfile.Profile()
        prof.runcall(decode_columns, big)
        print("\nprofile: binary decode\n" + top(prof, 10))
        prof = cProfile.Profile()
        prof.runcall(parse_text_trace, text)
        print("\nprofile: text parse\n" + top(prof, 10))
    return 0


if __name__ == "__main__":
    sys.exit(main())
