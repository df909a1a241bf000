"""Kernel coverage (KCOV) of a campaign: a batch's edges, and the plans that found them. Pure
(file I/O only).

With ``fuzz --kcov`` the guest's executor reports, per call, the kernel
*edges* (hashed pairs of consecutive program counters, :mod:`kapi_selftests.cexec`)
that guest had not reached before, after the batch's results
(:func:`split`). A shard's :class:`KcovCorpus` keeps every edge it was told of
and, for each call that reached an edge the shard had not seen, its plan: the
*corpus* the generator mutates (:meth:`~kapi_selftests.generate.PlanGenerator.batch`),
as syzkaller keeps programs that reach new kernel code.

Files in the shard directory (see ``docs/fuzz.md``), both append-only so a
resumed campaign keeps its corpus: ``kcov-edges.bin`` (the edge ids, u32
little-endian) and ``kcov-corpus.jsonl`` (one kept plan per line: ``batch``,
``index``, ``new`` edges, ``pcs`` it ran, ``plan``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kapi_selftests.cexec import COV_CALL, COV_HEAD
from kapi_selftests.plan import CallPlan, plan_from_json, plan_json_text

__all__ = ["BatchCover", "KcovCorpus", "split", "EDGES_FILE", "CORPUS_FILE", "read_corpus",
           "union_edges"]

EDGES_FILE = "kcov-edges.bin"
CORPUS_FILE = "kcov-corpus.jsonl"


@dataclass(frozen=True, slots=True)
class BatchCover:
    """One batch's kernel coverage, per call in issue order.

    :param new: edges new to the guest
    :param pcs: program counters the call ran in the kernel
    :param ids: the new edges' ids (fewer than ``new`` when the batch overflowed)
    """

    new: tuple[int, ...]
    pcs: tuple[int, ...]
    ids: tuple[tuple[int, ...], ...]
    dropped: int = 0


def split(data: bytes, result_bytes: int, n: int) -> tuple[bytes, BatchCover]:
    """Split an agent's answer into the ``cexec`` results and the batch's coverage.

    :param result_bytes: the size of the results (``cexec.result_size``)
    :raise ValueError: the coverage part does not hold ``n`` calls
    """
    cov = memoryview(data)[result_bytes:]
    head = COV_HEAD.size + COV_CALL.size * n
    if len(cov) < head:
        raise ValueError(f"coverage of {len(cov)} bytes for {n} calls")
    stored, dropped = COV_HEAD.unpack_from(cov)
    per = np.frombuffer(cov, dtype="<u4", count=3 * n, offset=COV_HEAD.size).reshape(n, 3)
    if len(cov) != head + 4 * stored or int(per[:, 2].sum()) != stored:
        raise ValueError(f"coverage of {len(cov)} bytes does not hold {stored} edge ids")
    flat = np.frombuffer(cov, dtype="<u4", count=stored, offset=head)
    ends = np.cumsum(per[:, 2])
    starts = ends - per[:, 2]
    ids = tuple(tuple(flat[a:b].tolist()) if b > a else () for a, b in
                zip(starts.tolist(), ends.tolist(), strict=True))
    return (bytes(data[:result_bytes]),
            BatchCover(tuple(per[:, 0].tolist()), tuple(per[:, 1].tolist()), ids, dropped))


class KcovCorpus:
    """The kernel edges a shard has reached, and the plans that reached new ones.

    :param out: the shard directory (None: in memory only)
    """

    def __init__(self, out: Path | None = None) -> None:
        self.out = out
        self.edges: set[int] = set()
        self.plans: list[CallPlan] = []
        #: the kernel PCs each kept plan ran when it was kept (its cost: the generator
        #: mutates cheap entries more often)
        self.costs: list[int] = []
        self._known: set[CallPlan] = set()
        #: program counters of every call seen (for the mean per call)
        self.pcs = 0
        self.calls = 0
        if out is not None:
            self._load(out)

    def _load(self, out: Path) -> None:
        f = out / EDGES_FILE
        if f.is_file():
            raw = f.read_bytes()
            self.edges.update(np.frombuffer(raw[:len(raw) // 4 * 4], dtype="<u4").tolist())
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
        self.calls += len(plans)
        self.pcs += sum(cover.pcs)
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
            if fresh:
                with (self.out / EDGES_FILE).open("ab") as f:
                    f.write(np.asarray(fresh, dtype="<u4").tobytes())
            if rows:
                with (self.out / CORPUS_FILE).open("a") as f:
                    f.write("".join(rows))
        return kept

    def figure(self) -> dict[str, Any]:
        """``edges``, ``corpus`` (plans kept), ``pcs_per_call`` (this run's calls)."""
        return {"edges": len(self.edges), "corpus": len(self.plans),
                "pcs_per_call": round(self.pcs / self.calls, 1) if self.calls else None}


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


def union_edges(dirs: Iterable[Path]) -> int:
    """Distinct edges over the shard directories ``dirs`` (their ``kcov-edges.bin``)."""
    parts = []
    for d in dirs:
        f = d / EDGES_FILE
        if f.is_file():
            raw = f.read_bytes()
            parts.append(np.frombuffer(raw[:len(raw) // 4 * 4], dtype="<u4"))
    return int(np.unique(np.concatenate(parts)).size) if parts else 0
