"""The calls a capture window issued, as a saved capture keeps them. Pure.

``calls.log`` has one line per call, in issue order: ``TID NAME A0 .. A5 ret=R
errno=E`` (registers in hex), as the reference captures write it (three registers
there), plus ``t=T0-T1`` (``CLOCK_MONOTONIC`` around the call, the trace's clock) when
the harness wrote it: with the times the call's events can be found again, so a saved
capture is judged offline as the live run judged it (``kapi-selftests check``).
``facts.json`` beside it holds what the oracle asked of user memory (the strings
behind path arguments) and the side effects measured around rejected calls.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from kapi_selftests.arch import find_syscall
from kapi_selftests.errors import DecodeError
from kapi_selftests.oracle.predict import MemoryFacts, UserString
from kapi_selftests.records import SyscallRecord

__all__ = ["CALLS_LOG", "FACTS_FILE", "format_calls_log", "parse_calls_log", "facts_json",
           "load_facts"]

CALLS_LOG = "calls.log"
FACTS_FILE = "facts.json"
_M64 = (1 << 64) - 1


def format_calls_log(records: Iterable[SyscallRecord]) -> str:
    """``calls.log`` for ``records`` (all six registers, with the call's times)."""
    lines = []
    for r in records:
        regs = " ".join(f"{a & _M64:#x}" for a in r.args)
        lines.append(f"{r.tid} {r.name} {regs} ret={r.ret} errno={r.errno} "
                     f"t={r.t_ns}-{r.t_end_ns}")
    return "".join(f"{ln}\n" for ln in lines)


def parse_calls_log(text: str, *, origin: str = CALLS_LOG) -> list[SyscallRecord]:
    """The records of a ``calls.log``; a call without times has ``t_ns = t_end_ns = 0``.

    :raises DecodeError: a line that is not a call (names the line)
    """
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        words = line.split()
        try:
            tid, name = int(words[0]), words[1]
            regs = [int(w, 16) for w in words[2:] if "=" not in w]
            kv = dict(w.split("=", 1) for w in words[2:] if "=" in w)
            abi = find_syscall(name)
            if abi is None:
                raise ValueError(f"unknown syscall {name!r}")
            t0, _, t1 = kv.get("t", "0-0").partition("-")
            args = tuple((regs + [0] * 6)[:6])
            out.append(SyscallRecord(nr=abi.nr, args=args,  # type: ignore[arg-type]
                                     ret=int(kv["ret"]), errno=int(kv["errno"]), tid=tid,
                                     t_ns=int(t0), t_end_ns=int(t1)))
        except (ValueError, KeyError, IndexError) as e:
            raise DecodeError(f"{origin} line {n}: not a call ({e}): {line!r}") from e
    return out


def facts_json(strings: Iterable[UserString], side_effects: Sequence[Sequence[str]]) -> str:
    """``facts.json``: the user strings the oracle read and each call's side effects."""
    return json.dumps({
        "strings": [{"addr": s.addr, "length": s.length, "readable": s.readable}
                    for s in strings],
        "side_effects": [list(e) for e in side_effects]}, indent=1) + "\n"


def load_facts(d: Mapping[str, Any], user_ptr_max: int | None = None
               ) -> tuple[MemoryFacts, list[list[str]]]:
    """The oracle's memory facts and the side effects from a loaded ``facts.json``."""
    strings = tuple(UserString(int(s["addr"]), None if s["length"] is None else int(s["length"]),
                               None if s["readable"] is None else int(s["readable"]))
                    for s in d.get("strings", ()))
    facts = MemoryFacts(strings=strings) if user_ptr_max is None else \
        MemoryFacts(strings=strings, user_ptr_max=user_ptr_max)
    return facts, [list(map(str, e)) for e in d.get("side_effects", ())]
