"""Findings of a fuzzing campaign, deduplicated, counted and kept on disk. Pure (plus file I/O).

A finding is keyed by (kind, syscall, where): ``where`` is the parameter and
check the oracle predicted the validator rejects the call on
(``flags:mask``), or ``accepted`` when it predicted the handler runs. Each key
keeps a count, its first example and its smallest example (by
:func:`plan_size`), when it was first seen and its reproducer files.

The store lives in ``findings.jsonl``, append-only: one line per key and batch
(count added, first/smallest example when they change) and one line when a
reproducer is saved. Folding the lines gives the store back, so a campaign
killed at any point loses at most the batch in flight, and a rerun resumes.
Crashes (oops/WARN/panic/hang) go to ``crashes.jsonl`` the same way.
"""

from __future__ import annotations

import enum
import functools
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from kapi_selftests.plan import (
    Buf,
    BufKind,
    CallPlan,
    Fd,
    FdKind,
    Lit,
    PathKind,
    plan_from_json,
    plan_to_json,
)
from kapi_selftests.plan import Path as PathArg

__all__ = ["FindingKey", "Example", "FindingRecord", "CrashRecord", "FindingStore",
           "plan_size", "read_jsonl", "append_jsonl", "append_lines", "now_iso", "FINDINGS_FILE",
           "CRASHES_FILE", "INFLIGHT_FILE", "SHRINKING_FILE"]

FINDINGS_FILE = "findings.jsonl"
CRASHES_FILE = "crashes.jsonl"
#: the batch a shard is issuing, written before it runs (what a crashed guest was doing)
INFLIGHT_FILE = "inflight.json"
#: there while the shard shrinks a finding: a guest that goes silent then is not a crash
SHRINKING_FILE = "shrinking.json"


def now_iso() -> str:
    """The current UTC time, ISO 8601 to the second (``first_seen``, crash times)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True, slots=True, order=True)
class FindingKey:
    """What makes two findings the same: kind (``FindingKind`` value), syscall, where."""

    kind: str
    syscall: str
    where: str

    def slug(self) -> str:
        """A file-name-safe name: ``ret-mismatch_read_fd-range``."""
        def clean(s: str) -> str:
            return "".join(c if c.isalnum() else "-" for c in s).strip("-")
        return f"{clean(self.kind)}_{clean(self.syscall)}_{clean(self.where)}"

    def describe(self) -> str:
        return f"{self.kind}: {self.syscall} ({self.where})"

    def to_json(self) -> dict[str, str]:
        return {"kind": self.kind, "syscall": self.syscall, "where": self.where}

    @staticmethod
    def from_json(d: Mapping[str, Any]) -> FindingKey:
        return FindingKey(str(d["kind"]), str(d["syscall"]), str(d["where"]))


@dataclass(frozen=True, slots=True)
class Example:
    """One occurrence: the failing call's plan, the batch plans before it, what happened.

    :param plan: the failing call
    :param context: the plans issued before it in its batch (what minimisation starts from)
    :param regs: the registers passed
    :param ret: the raw return (``-errno`` form)
    :param message: the finding's one-line explanation
    :param evidence: the events and the call, one line each
    :param shard: campaign shard
    :param batch: batch number in the shard
    :param index: the call's index in its batch
    """

    plan: CallPlan
    context: tuple[CallPlan, ...] = ()
    regs: tuple[int, ...] = ()
    ret: int = 0
    message: str = ""
    evidence: tuple[str, ...] = ()
    shard: int = 0
    batch: int = 0
    index: int = 0

    @property
    def size(self) -> int:
        return plan_size(self.plan) + sum(plan_size(p) for p in self.context)

    def to_json(self) -> dict[str, Any]:
        return {"plan": plan_to_json(self.plan), "context": [plan_to_json(p) for p in self.context],
                "regs": list(self.regs), "ret": self.ret, "message": self.message,
                "evidence": list(self.evidence), "shard": self.shard, "batch": self.batch,
                "index": self.index}

    @staticmethod
    def from_json(d: Mapping[str, Any]) -> Example:
        return Example(plan=plan_from_json(d["plan"]),
                       context=tuple(plan_from_json(p) for p in d.get("context", ())),
                       regs=tuple(int(r) for r in d.get("regs", ())), ret=int(d.get("ret", 0)),
                       message=str(d.get("message", "")),
                       evidence=tuple(str(e) for e in d.get("evidence", ())),
                       shard=int(d.get("shard", 0)), batch=int(d.get("batch", 0)),
                       index=int(d.get("index", 0)))


@dataclass(frozen=True, slots=True)
class FindingRecord:
    """A deduplicated finding."""

    key: FindingKey
    count: int
    first: Example
    smallest: Example
    first_seen: str  # ISO 8601 UTC
    reproducers: tuple[str, ...] = ()
    minimized: tuple[CallPlan, ...] = ()  # the plans that still fail alone, after shrinking


@dataclass(frozen=True, slots=True)
class CrashRecord:
    """A guest that oopsed, warned, panicked or hung during a campaign.

    :param summary: the first splat line, or why the guest was killed
    :param excerpt: the console lines around it
    :param last_plans: the batch the guest was issuing (from ``inflight.json``)
    """

    summary: str
    excerpt: tuple[str, ...]
    last_plans: tuple[CallPlan, ...]
    shard: int
    batch: int
    when: str
    console: str = ""
    reproducer: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"summary": self.summary, "excerpt": list(self.excerpt),
                "last_plans": [plan_to_json(p) for p in self.last_plans], "shard": self.shard,
                "batch": self.batch, "when": self.when, "console": self.console,
                "reproducer": self.reproducer}

    @staticmethod
    def from_json(d: Mapping[str, Any]) -> CrashRecord:
        return CrashRecord(summary=str(d["summary"]), excerpt=tuple(d.get("excerpt", ())),
                           last_plans=tuple(plan_from_json(p) for p in d.get("last_plans", ())),
                           shard=int(d.get("shard", 0)), batch=int(d.get("batch", 0)),
                           when=str(d.get("when", "")), console=str(d.get("console", "")),
                           reproducer=str(d.get("reproducer", "")))


@functools.lru_cache(maxsize=1 << 16)
def plan_size(p: CallPlan) -> int:
    """How complicated a plan is: smaller is simpler (used to keep the smallest example).

    A literal costs its bit length, an fd its kind's rank (a regular file is simplest)
    plus its high bits, a buffer its kind's rank plus its size's bit length, a path its
    kind's rank. Cached: a campaign asks it of the same plans again and again.
    """
    n = 1
    for a in p.args:
        if isinstance(a, Lit):
            n += (a.value & ((1 << 64) - 1)).bit_length()
        elif isinstance(a, Fd):
            n += _RANKS[a.kind] + a.high.bit_length()
        elif isinstance(a, Buf):
            n += _RANKS[a.kind] + a.size.bit_length()
        elif isinstance(a, PathArg):
            n += _RANKS[a.kind]
    return n


def _ranks() -> dict[enum.Enum, int]:
    out: dict[enum.Enum, int] = {}
    for kinds in (FdKind, BufKind, PathKind):
        out.update({k: i for i, k in enumerate(kinds)})
    return out


_RANKS = _ranks()


def append_jsonl(path: Path, rows: Iterable[Mapping[str, Any]]) -> None:
    """Append ``rows`` as JSON lines and fsync: once this returns, they survive a crash."""
    rows = list(rows)
    if not rows:
        return
    with path.open("a") as f:
        for r in rows:
            f.write(json.dumps(r, separators=(",", ":")) + "\n")
        _sync(f)


def append_lines(path: Path, lines: Sequence[str]) -> None:
    """Append ready JSON lines (each without its newline) and fsync, as :func:`append_jsonl`."""
    if not lines:
        return
    with path.open("a") as f:
        f.write("\n".join(lines) + "\n")
        _sync(f)


def _sync(f: IO[str]) -> None:
    f.flush()
    try:
        os.fsync(f.fileno())
    except OSError:  # 9p without fsync support: flushed is the best we get
        pass


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The rows of a JSON-lines file; a last line cut short by a crash is dropped."""
    if not path.is_file():
        return []
    out: list[dict[str, Any]] = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            d = json.loads(line)
        except ValueError:
            continue
        if isinstance(d, dict):
            out.append(d)
    return out


@dataclass
class FindingStore:
    """Findings by key, optionally backed by a ``findings.jsonl`` file (append-only)."""

    path: Path | None = None
    records: dict[FindingKey, FindingRecord] = field(default_factory=dict)

    @staticmethod
    def load(path: Path) -> FindingStore:
        """Fold the lines of ``path`` (missing: empty store) into a store writing there."""
        store = FindingStore(None)
        store.apply(read_jsonl(path))
        store.path = path
        return store

    def apply(self, rows: Iterable[Mapping[str, Any]]) -> None:
        for d in rows:
            key = FindingKey.from_json(d["key"])
            rec = self.records.get(key)
            if d.get("type") == "reproducer":
                if rec is not None:
                    paths = tuple(dict.fromkeys(rec.reproducers + tuple(d.get("paths", ()))))
                    mini = tuple(plan_from_json(p) for p in d.get("minimized", ())) or \
                        rec.minimized
                    self.records[key] = replace(rec, reproducers=paths, minimized=mini)
                continue
            first = Example.from_json(d["first"]) if "first" in d else None
            small = Example.from_json(d["smallest"]) if "smallest" in d else None
            n = int(d.get("count", 0))
            if rec is None:
                if first is None:
                    continue
                self.records[key] = FindingRecord(key, n, first, small or first,
                                                  str(d.get("first_seen", "")))
            else:
                self.records[key] = replace(rec, count=rec.count + n,
                                            smallest=small if small is not None and
                                            small.size < rec.smallest.size else rec.smallest)

    def add(self, found: Sequence[tuple[FindingKey, Example]], when: str,
            extra: Mapping[FindingKey, int] | None = None) -> list[FindingKey]:
        """Count one batch's findings; write one line per key touched.

        :param extra: more occurrences of keys in ``found``, without their examples
        :return: the keys seen for the first time
        """
        rows: list[dict[str, Any]] = []
        new: list[FindingKey] = []
        per_key: dict[FindingKey, list[Example]] = {}
        for k, ex in found:
            per_key.setdefault(k, []).append(ex)
        more = extra or {}
        for k, exs in per_key.items():
            row: dict[str, Any] = {"type": "count", "key": k.to_json(),
                                   "count": len(exs) + more.get(k, 0), "first_seen": when}
            small = min(exs, key=lambda e: e.size)
            rec = self.records.get(k)
            if rec is None:
                new.append(k)
                row["first"] = exs[0].to_json()
                row["smallest"] = small.to_json()
            elif small.size < rec.smallest.size:
                row["smallest"] = small.to_json()
            rows.append(row)
        self.apply(rows)
        if self.path is not None:
            append_jsonl(self.path, rows)
        return new

    def set_reproducer(self, key: FindingKey, paths: Sequence[str],
                       minimized: Sequence[CallPlan] = ()) -> None:
        row = {"type": "reproducer", "key": key.to_json(), "paths": list(paths),
               "minimized": [plan_to_json(p) for p in minimized]}
        self.apply([row])
        if self.path is not None:
            append_jsonl(self.path, [row])

    def merge(self, other: FindingStore) -> None:
        """Add ``other``'s findings (counts add up, the earliest first and smallest win)."""
        for k, rec in other.records.items():
            mine = self.records.get(k)
            if mine is None:
                self.records[k] = rec
                continue
            first = mine.first if mine.first_seen <= rec.first_seen else rec.first
            seen = min(mine.first_seen, rec.first_seen)
            small = mine.smallest if mine.smallest.size <= rec.smallest.size else rec.smallest
            self.records[k] = replace(mine, count=mine.count + rec.count, first=first,
                                      smallest=small, first_seen=seen,
                                      reproducers=tuple(dict.fromkeys(mine.reproducers +
                                                                      rec.reproducers)),
                                      minimized=mine.minimized or rec.minimized)

    def dump_rows(self) -> list[dict[str, Any]]:
        """The store as fresh ``findings.jsonl`` lines (one count line per key, then repros)."""
        rows: list[dict[str, Any]] = []
        for k, rec in sorted(self.records.items()):
            rows.append({"type": "count", "key": k.to_json(), "count": rec.count,
                         "first_seen": rec.first_seen, "first": rec.first.to_json(),
                         "smallest": rec.smallest.to_json()})
            if rec.reproducers or rec.minimized:
                rows.append({"type": "reproducer", "key": k.to_json(),
                             "paths": list(rec.reproducers),
                             "minimized": [plan_to_json(p) for p in rec.minimized]})
        return rows

    def by_kind(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for k, rec in self.records.items():
            out[k.kind] = out.get(k.kind, 0) + rec.count
        return out
