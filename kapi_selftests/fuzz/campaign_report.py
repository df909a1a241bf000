"""Campaign results on disk: read shard directories, merge them, write the report. Pure
(file I/O only; runs on the host or in the guest).

A *shard directory* is what one :class:`~kapi_selftests.fuzz.campaign.Campaign` writes
(``state.json``, ``findings.jsonl``, ``coverage.json``, ``calls.jsonl``,
``crashes.jsonl``, ``repro/``). A *campaign directory* holds shard
directories named ``shard-<N>`` (``fuzz --kernel``), or is itself a shard
(``fuzz --local``). :func:`merge_into` folds any number of either into one
directory: findings deduplicated (counts added, earliest first example,
smallest example), coverage added up, crashes and call records concatenated,
then ``report.md`` and ``summary.json`` written.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kapi_selftests.fuzz.coverage import Coverage
from kapi_selftests.fuzz.edges import EdgeCoverage, plan_edges
from kapi_selftests.fuzz.findings import (
    CRASHES_FILE,
    FINDINGS_FILE,
    CrashRecord,
    FindingStore,
    append_jsonl,
    read_jsonl,
)
from kapi_selftests.oracle.spec import Spec
from kapi_selftests.plan import CallPlan

if TYPE_CHECKING:
    from kapi_selftests.oracle.reference import SpecDifference

__all__ = ["CampaignData", "REPORT_FILE", "find_shards", "load_dirs", "merge_into",
           "render_markdown", "summary", "write_outputs"]

CALLS_FILE = "calls.jsonl"
STATE_FILE = "state.json"
COVERAGE_FILE = "coverage.json"
EDGES_FILE = "edge-coverage.json"
REPORT_FILE = "report.md"


@dataclass
class CampaignData:
    """Everything a report needs, folded from one or more shard directories."""

    store: FindingStore
    coverage: Coverage
    #: the parameters' edges issued (kapi_selftests.fuzz.edges)
    edges: EdgeCoverage = field(default_factory=lambda: EdgeCoverage({}))
    crashes: list[CrashRecord] = field(default_factory=list)
    states: list[dict[str, Any]] = field(default_factory=list)
    shard_dirs: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: the kernel's function addresses (System.map, or /proc/kallsyms for --local): with
    #: KCOV, the report names the kernel functions the campaign ran
    system_map: Path | None = None
    #: the kernel's specs against the reference (:mod:`kapi_selftests.oracle.reference`), and
    #: which reference
    spec_differences: list[SpecDifference] = field(default_factory=list)
    reference: str = ""
    #: calls the reference's spec decides otherwise than the kernel's (examples)
    disagreements: list[str] = field(default_factory=list)
    _kcov: tuple[Any, dict[str, Any]] | None = field(default=None, repr=False, compare=False)

    @property
    def calls(self) -> int:
        return sum(int(s.get("calls", 0)) for s in self.states)

    @property
    def elapsed_s(self) -> float:
        # shards run in parallel: the campaign took as long as its longest shard
        return max((float(s.get("elapsed_s", 0.0)) for s in self.states), default=0.0)

    @property
    def calls_per_s(self) -> float:
        return sum(float(s.get("calls_per_s", 0.0)) for s in self.states)

    @property
    def kcov(self) -> dict[str, Any] | None:
        """Kernel coverage (KCOV) over the shards: distinct ``edges`` and ``pcs``,
        ``corpus`` plans kept, and with a :attr:`system_map` the ``functions`` reached
        and KAPI's own (``kapi_functions``: reached, not reached); None when no shard
        measured it."""
        if not any(s.get("kcov") for s in self.states):
            return None
        key = (self.system_map, tuple(self.shard_dirs))
        if self._kcov is None or self._kcov[0] != key:  # the shards' files, read once
            self._kcov = (key, self._read_kcov())
        return self._kcov[1]

    def _read_kcov(self) -> dict[str, Any]:
        # numpy loads in a second or so: only the columnar paths (KCOV, bulk decode) pay it
        from kapi_selftests.fuzz.kcov import functions_reached, union_edges, union_pcs

        pcs = union_pcs(self.shard_dirs)
        out: dict[str, Any] = {
            "edges": union_edges(self.shard_dirs), "pcs": len(pcs),
            "corpus": sum(int((s.get("kcov") or {}).get("corpus", 0)) for s in self.states)}
        if self.system_map is not None and pcs:
            f = functions_reached(pcs, self.system_map)
            reached, missed = f.kapi()
            out["functions"] = len(f.reached)
            out["kapi_functions"] = {"reached": reached, "not_reached": missed}
        return out

    def kcov_text(self) -> str:
        k = self.kcov
        if not k:
            return "-"
        text = f"{k['edges']} distinct kernel edges, {k['pcs']} PCs"
        if "functions" in k:
            kf = k["kapi_functions"]
            n = len(kf["reached"]) + len(kf["not_reached"])
            text += (f" in {k['functions']} functions (KAPI's own: {len(kf['reached'])} "
                     f"of {n})")
        return text + f", {k['corpus']} calls kept"


def _is_store(d: Path) -> bool:
    return any((d / f).is_file() for f in (STATE_FILE, FINDINGS_FILE, COVERAGE_FILE))


def find_shards(dirs: Iterable[Path]) -> list[Path]:
    """The shard directories in ``dirs`` (a campaign dir's ``shard-*``, or the dir itself)."""
    out: list[Path] = []
    for d in dirs:
        subs = sorted((p for p in d.glob("shard-*") if p.is_dir() and _is_store(p)),
                      key=lambda p: (len(p.name), p.name))
        if subs:
            out += subs
        elif _is_store(d):
            out.append(d)
    return out


def load_dirs(dirs: Sequence[Path], specs: Mapping[str, Spec]) -> CampaignData:
    """Fold every shard under ``dirs`` into one :class:`CampaignData`."""
    data = CampaignData(FindingStore(None), Coverage(specs), EdgeCoverage(specs))
    seen_crashes: set[tuple[int, int, int, str]] = set()
    for d in find_shards(dirs):
        data.shard_dirs.append(d)
        data.store.merge(_rebased(FindingStore.load(d / FINDINGS_FILE), d))
        if (d / COVERAGE_FILE).is_file():
            data.coverage.load_json(json.loads((d / COVERAGE_FILE).read_text()))
        if (d / EDGES_FILE).is_file():
            data.edges.load_json(json.loads((d / EDGES_FILE).read_text()))
        if (d / STATE_FILE).is_file():
            st = json.loads((d / STATE_FILE).read_text())
            st["dir"] = str(d)
            data.states.append(st)
        for row in read_jsonl(d / CRASHES_FILE):
            c = CrashRecord.from_json(row)
            k = (c.shard, c.batch, int(row.get("seed", 0)), c.summary)
            if k not in seen_crashes:
                seen_crashes.add(k)
                data.crashes.append(c)
    data.store.path = None
    return data


def _rebased(store: FindingStore, d: Path) -> FindingStore:
    # reproducer paths are stored relative to their shard directory
    for k, rec in list(store.records.items()):
        paths = tuple(p if Path(p).is_absolute() else str(d / p) for p in rec.reproducers)
        store.records[k] = replace(rec, reproducers=paths)
    return store


def merge_into(dirs: Sequence[Path], into: Path, specs: Mapping[str, Spec], *,
               title: str = "kapi-selftests fuzz campaign", header: Sequence[str] = (),
               notes: Sequence[str] = (), system_map: Path | None = None) -> CampaignData:
    """Merge the shards under ``dirs`` into ``into`` and write its report files.

    :param notes: lines the report adds (e.g. shards that failed)
    :param system_map: see :attr:`CampaignData.system_map`
    """
    into.mkdir(parents=True, exist_ok=True)
    data = load_dirs(dirs, specs)
    data.notes += notes
    data.system_map = system_map
    shards_here = [d for d in data.shard_dirs if d.resolve() != into.resolve()]
    if len(shards_here) != len(data.shard_dirs):
        raise ValueError(f"{into} is itself one of the shards being merged")
    (into / FINDINGS_FILE).unlink(missing_ok=True)
    append_jsonl(into / FINDINGS_FILE, data.store.dump_rows())
    (into / COVERAGE_FILE).write_text(json.dumps(data.coverage.to_json(), indent=1))
    (into / EDGES_FILE).write_text(json.dumps(data.edges.to_json()))
    (into / CRASHES_FILE).unlink(missing_ok=True)
    append_jsonl(into / CRASHES_FILE, [c.to_json() for c in data.crashes])
    # Call records: concatenated in shard order (a shard's own order is kept).
    with (into / CALLS_FILE).open("w") as out:
        for d in data.shard_dirs:
            src = d / CALLS_FILE
            if src.is_file():
                with src.open() as f:
                    shutil.copyfileobj(f, out)
    write_outputs(into, data, title=title, header=header)
    return data


def summary(data: CampaignData, *, header: Sequence[str] = ()) -> dict[str, Any]:
    """The campaign as one JSON object (``--json`` output and ``summary.json``)."""
    kcov = data.kcov
    return {
        "header": list(header),
        "calls": data.calls, "elapsed_s": round(data.elapsed_s, 3),
        "calls_per_s": round(data.calls_per_s, 1),
        "shards": [{k: v for k, v in s.items()} for s in data.states],
        "coverage": data.coverage.figure().to_json(),
        "edges": dict(zip(("issued", "total"), data.edges.figure(), strict=True)),
        "edges_missing": [list(m) for m in data.edges.missing()],
        "kcov": kcov,
        "findings": [
            {"key": r.key.to_json(), "count": r.count, "first_seen": r.first_seen,
             "message": r.first.message, "reproducers": list(r.reproducers),
             "replay": (f"kapi-selftests replay {r.reproducers[0]}" if r.reproducers else None),
             "seed": next((int(s.get("seed", 0)) for s in data.states
                           if int(s.get("shard", -1)) == r.first.shard), None),
             "shard": r.first.shard, "batch": r.first.batch}
            for r in sorted(data.store.records.values(), key=lambda r: r.key)],
        "crashes": [{"summary": c.summary, "shard": c.shard, "batch": c.batch, "when": c.when,
                     "console": c.console, "reproducer": c.reproducer,
                     "last_plans": len(c.last_plans)} for c in data.crashes],
        "notes": list(data.notes),
        "reference": data.reference,
        "spec_differences": [{"spec": d.spec, "class": d.cls.value, "change": d.change,
                              "why": d.why, "fails": d.fails}
                             for d in data.spec_differences],
        "reference_disagreements": list(data.disagreements),
    }


def render_markdown(data: CampaignData, *, title: str = "kapi-selftests fuzz campaign",
                    header: Sequence[str] = ()) -> str:
    fig = data.coverage.figure()
    k = data.kcov
    lines = [f"# {title}", ""]
    lines += [f"- {h}" for h in header]
    lines += [f"- calls: {data.calls} in {data.elapsed_s:.1f} s "
              f"({data.calls_per_s:.1f} calls/s over {len(data.states)} shard(s))",
              f"- spec coverage: {fig.describe()}",
              f"- edge coverage: {edges_text(data.edges)}",
              *([f"- kernel coverage (KCOV): {data.kcov_text()}"] if k else []),
              f"- findings: {len(data.store.records)} distinct, "
              f"{sum(r.count for r in data.store.records.values())} occurrences",
              f"- kernel crashes: {len(data.crashes)}"]
    for s in data.states:
        lines.append(f"- shard {s.get('shard')}: seed {s.get('seed')}, {s.get('calls')} calls, "
                     f"{s.get('batches')} batches, skipped batches "
                     f"{s.get('skipped_batches') or 'none'} ({s.get('dir', '')})")
    lines += [f"- note: {n}" for n in data.notes]
    lines += ["", "## Findings", ""]
    if not data.store.records:
        lines += ["None: every call agreed with the oracle.", ""]
    for r in sorted(data.store.records.values(), key=lambda r: (-r.count, r.key)):
        lines += [f"### {r.key.describe()}", "",
                  f"- count: {r.count}; first seen {r.first_seen} "
                  f"(shard {r.first.shard}, batch {r.first.batch}, call {r.first.index})",
                  f"- explanation: {r.first.message}",
                  f"- smallest example: `{r.smallest.plan.describe()}`"]
        exposed = finding_edges(data.edges.specs, r.smallest.plan)
        if exposed:
            lines.append(f"- edges in it: {exposed}")
        if r.minimized:
            lines.append("- minimised reproducer: " +
                         "; ".join(f"`{p.describe()}`" for p in r.minimized))
        if r.reproducers:
            lines.append("- reproducers: " + ", ".join(f"`{p}`" for p in r.reproducers))
            lines.append(f"- replay: `kapi-selftests replay {r.reproducers[0]}`")
        lines += ["", "```", *r.first.evidence, "```", ""]
    if data.reference:
        lines += [f"## Spec differences from the reference ({data.reference})", ""]
        lines += [f"- {'**' if d.fails else ''}{d.cls.value}{'**' if d.fails else ''}: "
                  f"{d.spec} {d.change} ({d.why})" for d in data.spec_differences] or \
            ["None: the kernel's specs have the reference's rules."]
        lines.append("")
        if data.disagreements:
            lines += ["Calls the two specs decide differently (examples):", ""]
            lines += [f"- `{x}`" for x in data.disagreements[:20]] + [""]
    lines += ["## Kernel crashes", ""]
    if not data.crashes:
        lines += ["None.", ""]
    for c in data.crashes:
        lines += [f"### shard {c.shard}, batch {c.batch}: {c.summary}", "",
                  f"- when: {c.when}; console: `{c.console}`; "
                  f"last batch: {len(c.last_plans)} calls"
                  + (f"; reproducer `{c.reproducer}`" if c.reproducer else ""),
                  "", "```", *c.excerpt[:60], "```", ""]
    if k is not None:
        lines += ["## Kernel code reached (KCOV)", "", f"{data.kcov_text()}.", ""]
        if "kapi_functions" in k:
            kf = k["kapi_functions"]
            lines += [f"KAPI's own functions (`kapi_*` in `{data.system_map}`) the "
                      "campaign ran:", ""]
            lines += [f"- reached: {', '.join(f'`{n}`' for n in kf['reached']) or 'none'}",
                      f"- not reached: "
                      f"{', '.join(f'`{n}`' for n in kf['not_reached']) or 'none'}", ""]
        else:
            lines += ["(No System.map of the kernel was found: functions are not named.)",
                      ""]
    lines += ["## Spec coverage", "",
              "Valid side: calls where the parameter passed validation; invalid side: calls "
              "the oracle predicted are rejected because of it. Errors: listed codes userspace "
              "saw.", ""]
    lines += data.coverage.table()
    lines += ["", "## Edge coverage", "",
              "Per parameter, each edge (kapi_selftests.fuzz.edges) and the sides it was issued "
              "on: a accepted, r rejected by the validator at that parameter, e rejected at an "
              "earlier parameter, - never.", ""]
    lines += [f"- {t}" for t in data.edges.table()]
    return "\n".join(lines) + "\n"


def finding_edges(specs: Mapping[str, Spec], plan: CallPlan) -> str:
    """The edges a finding's call issued, as ``sys_x.param edge; ...`` ("" if none)."""
    spec = specs.get(f"sys_{plan.name}")
    return "; ".join(f"{spec.name}.{e}" for e in plan_edges(spec, plan)) if spec else ""


def edges_text(edges: EdgeCoverage) -> str:
    """``N/M edges issued`` and the first missing ones."""
    hit, total = edges.figure()
    missing = edges.missing()
    text = f"{hit}/{total} edges issued"
    if missing:
        text += "; not yet: " + ", ".join(f"{s}.{p} {e}" for s, p, e in missing[:6]) + \
            (f" and {len(missing) - 6} more" if len(missing) > 6 else "")
    return text


def write_outputs(out: Path, data: CampaignData, *, title: str = "kapi-selftests fuzz campaign",
                  header: Sequence[str] = ()) -> tuple[Path, Path]:
    """Write ``report.md`` and ``summary.json`` into ``out``."""
    md = out / REPORT_FILE
    md.write_text(render_markdown(data, title=title, header=header))
    js = out / "summary.json"
    js.write_text(json.dumps(summary(data, header=header), indent=1) + "\n")
    return md, js

