"""Kernel coverage (KCOV) of a campaign: a batch's edges, and the plans that found them. Pure
(file I/O only).

With ``fuzz --kcov`` the guest's executor reports, per call, the kernel
*edges* (hashed pairs of consecutive program counters, :mod:`kapi_selftests.guest.cexec`)
that guest had not reached before, after the batch's results
(:func:`split`). A shard's :class:`KcovCorpus` keeps every edge it was told of
and, for each call that reached an edge the shard had not seen, its plan: the
*corpus* the generator mutates (:meth:`~kapi_selftests.fuzz.generate.PlanGenerator.batch`),
as syzkaller keeps programs that reach new kernel code.

Files in the shard directory (see ``docs/fuzz.md``), all append-only so a
resumed campaign keeps its corpus: ``kcov-edges.bin`` (the edge ids, u32
little-endian), ``kcov-pcs.bin`` (the kernel PCs reached, their low 32 bits: the
functions a campaign ran, :func:`functions_reached`) and ``kcov-corpus.jsonl`` (one
kept plan per line: ``batch``, ``index``, ``new`` edges, ``pcs`` it ran, ``plan``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kapi_selftests.link.calltable import COV_CALL, COV_HEAD
from kapi_selftests.plan import CallPlan, plan_from_json, plan_json_text
from kapi_selftests.records import BatchCover

__all__ = ["KcovCorpus", "split", "EDGES_FILE", "CORPUS_FILE", "PCS_FILE", "read_corpus",
           "union_edges", "union_pcs", "FunctionCover", "SymbolMap", "functions_reached"]

EDGES_FILE = "kcov-edges.bin"
CORPUS_FILE = "kcov-corpus.jsonl"
PCS_FILE = "kcov-pcs.bin"
#: the kernel's text lies in the top 4 GiB (x86-64): a PC is reported by its low 32 bits
TEXT_BASE = 0xFFFFFFFF00000000


def split(data: bytes, result_bytes: int, n: int) -> tuple[bytes, BatchCover]:
    """Split an agent's answer into the ``cexec`` results and the batch's coverage.

    :param result_bytes: the size of the results (``calltable.result_size``)
    :raise ValueError: the coverage part does not hold ``n`` calls
    """
    cov = memoryview(data)[result_bytes:]
    head = COV_HEAD.size + COV_CALL.size * n
    if len(cov) < head:
        raise ValueError(f"coverage of {len(cov)} bytes for {n} calls")
    stored, dropped, pcs_stored, _ = COV_HEAD.unpack_from(cov)
    per = np.frombuffer(cov, dtype="<u4", count=3 * n, offset=COV_HEAD.size).reshape(n, 3)
    if len(cov) != head + 4 * (stored + pcs_stored) or int(per[:, 2].sum()) != stored:
        raise ValueError(f"coverage of {len(cov)} bytes does not hold {stored} edge ids and "
                         f"{pcs_stored} PCs")
    flat = np.frombuffer(cov, dtype="<u4", count=stored, offset=head)
    new_pcs = np.frombuffer(cov, dtype="<u4", count=pcs_stored, offset=head + 4 * stored)
    ends = np.cumsum(per[:, 2])
    starts = ends - per[:, 2]
    ids = tuple(tuple(flat[a:b].tolist()) if b > a else () for a, b in
                zip(starts.tolist(), ends.tolist(), strict=True))
    return (bytes(data[:result_bytes]),
            BatchCover(tuple(per[:, 0].tolist()), tuple(per[:, 1].tolist()), ids, dropped,
                       tuple(new_pcs.tolist())))


class KcovCorpus:
    """The kernel edges a shard has reached, and the plans that reached new ones.

    :param out: the shard directory (None: in memory only)
    """

    def __init__(self, out: Path | None = None) -> None:
        self.out = out
        self.edges: set[int] = set()
        #: kernel PCs reached (low 32 bits)
        self.reached: set[int] = set()
        self.plans: list[CallPlan] = []
        #: the kernel PCs each kept plan ran when it was kept (its cost: the generator
        #: mutates cheap entries more often)
        self.costs: list[int] = []
        self._known: set[CallPlan] = set()
        #: PCs the calls of this run ran, and how many calls (for the mean per call)
        self.traced = 0
        self.calls = 0
        if out is not None:
            self._load(out)

    def _load(self, out: Path) -> None:
        self.edges.update(_read_u32(out / EDGES_FILE).tolist())
        self.reached.update(_read_u32(out / PCS_FILE).tolist())
        for plan, pcs in read_corpus(out / CORPUS_FILE):
            if plan not in self._known:
                self._known.add(plan)
                self.plans.append(plan)
                self.costs.append(pcs)

    def add(self, batch: int, plans: Sequence[CallPlan], cover: BatchCover) -> list[int]:
        """Count a batch's coverage; keep the plans that reached edges new to this shard.

        A call whose new edges were not listed (the batch overflowed) is kept when the
        guest counted any. Returns the indices of the plans kept.
        """
        kept: list[int] = []
        fresh: list[int] = []
        rows: list[str] = []
        new_pcs = [pc for pc in cover.new_pcs if pc not in self.reached]
        self.reached.update(new_pcs)
        self.calls += len(plans)
        self.traced += sum(cover.pcs)
        for i, (plan, new, ids, pcs) in enumerate(zip(plans, cover.new, cover.ids, cover.pcs,
                                                      strict=True)):
            if not new:
                continue
            mine = [e for e in ids if e not in self.edges]
            if not mine and len(ids) == new:
                continue  # edges another guest of this shard (before a restart) reported
            self.edges.update(mine)
            fresh += mine
            if plan in self._known:
                continue
            self._known.add(plan)
            self.plans.append(plan)
            self.costs.append(pcs)
            kept.append(i)
            rows.append(f'{{"batch":{batch},"index":{i},"new":{len(mine) or new},"pcs":{pcs},'
                        f'"plan":{plan_json_text(plan)}}}\n')
        if self.out is not None:
            for name, vals in ((EDGES_FILE, fresh), (PCS_FILE, new_pcs)):
                if vals:
                    with (self.out / name).open("ab") as f:
                        f.write(np.asarray(vals, dtype="<u4").tobytes())
            if rows:
                with (self.out / CORPUS_FILE).open("a") as f:
                    f.write("".join(rows))
        return kept

    def figure(self) -> dict[str, Any]:
        """``edges``, ``pcs`` (distinct PCs reached), ``corpus`` (plans kept),
        ``pcs_per_call`` (this run's calls)."""
        return {"edges": len(self.edges), "pcs": len(self.reached), "corpus": len(self.plans),
                "pcs_per_call": round(self.traced / self.calls, 1) if self.calls else None}


def read_corpus(path: Path) -> list[tuple[CallPlan, int]]:
    """The plans of a ``kcov-corpus.jsonl`` with their costs (PCs); none when it is
    missing. A line cut by a crash is left out."""
    out: list[tuple[CallPlan, int]] = []
    if not path.is_file():
        return out
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
            out.append((plan_from_json(row["plan"]), int(row.get("pcs", 0))))
        except (ValueError, KeyError, TypeError):
            continue
    return out


def _read_u32(path: Path) -> np.ndarray[Any, np.dtype[np.uint32]]:
    # an append-only file of u32 ids; a half-written last id (a crash) is left out
    if not path.is_file():
        return np.zeros(0, dtype="<u4")
    raw = path.read_bytes()
    return np.frombuffer(raw[:len(raw) // 4 * 4], dtype="<u4")


def _union(dirs: Iterable[Path], name: str) -> np.ndarray[Any, np.dtype[np.uint32]]:
    parts = [_read_u32(d / name) for d in dirs]
    return np.unique(np.concatenate(parts)) if parts else np.zeros(0, dtype="<u4")


def union_edges(dirs: Iterable[Path]) -> int:
    """Distinct edges over the shard directories ``dirs`` (their ``kcov-edges.bin``)."""
    return int(_union(dirs, EDGES_FILE).size)


def union_pcs(dirs: Iterable[Path]) -> list[int]:
    """Distinct kernel PCs reached over the shard directories ``dirs``, as addresses."""
    return [TEXT_BASE | int(pc) for pc in _union(dirs, PCS_FILE).tolist()]


@dataclass(frozen=True, slots=True)
class FunctionCover:
    """Kernel functions a campaign ran, by name (from a System.map).

    :param reached: function name -> distinct PCs reached in it
    :param text: every text symbol of the map (functions the campaign could reach)
    """

    reached: dict[str, int]
    text: frozenset[str]

    def kapi(self) -> tuple[list[str], list[str]]:
        """KAPI's own functions (``kapi_*``): reached and not reached, sorted."""
        mine = sorted(n for n in self.text if n.startswith("kapi_"))
        return [n for n in mine if n in self.reached], [n for n in mine if n not in self.reached]


class SymbolMap:
    """The text symbols of a ``System.map`` (or ``/proc/kallsyms``), sorted by address."""

    def __init__(self, path: Path) -> None:
        starts: list[int] = []
        names: list[str] = []
        for line in path.read_text(errors="replace").splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[1] in ("t", "T"):
                starts.append(int(parts[0], 16))
                names.append(parts[2])
        order = np.argsort(np.asarray(starts, dtype=np.uint64), kind="stable")
        self.addr = np.asarray(starts, dtype=np.uint64)[order]
        self.names = [names[i] for i in order.tolist()]

    def functions(self, pcs: Iterable[int]) -> FunctionCover:
        """The symbols that hold ``pcs``: each PC belongs to the nearest symbol at or
        below it."""
        idx = np.searchsorted(self.addr, np.fromiter(pcs, dtype=np.uint64), side="right") - 1
        reached: dict[str, int] = {}
        for i in idx.tolist():
            if i >= 0:
                reached[self.names[i]] = reached.get(self.names[i], 0) + 1
        return FunctionCover(reached, frozenset(self.names))


def functions_reached(pcs: Iterable[int], system_map: Path) -> FunctionCover:
    """Map PCs to the text symbols of ``system_map`` (the kernel's ``System.map``) that
    hold them."""
    return SymbolMap(system_map).functions(pcs)
