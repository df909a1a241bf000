"""The guest-side fuzzing campaign: generate, run, judge, count, shrink, save. Needs a live kernel.

One :class:`Campaign` is one shard: batches of plans from
:class:`~kapi_selftests.fuzz.generate.PlanGenerator` (deterministic from
``(seed, shard, batch)``), each run in one capture window by
:meth:`Harness.run <kapi_selftests.guest.harness.Harness.run>`, every call classified
by the oracle (:func:`~kapi_selftests.oracle.predict.predict`, at materialisation time,
so the memory facts are live) for the coverage map, every failing check turned
into a deduplicated finding, every new finding shrunk on the live kernel
(:mod:`kapi_selftests.fuzz.minimize`) and saved as reproducers
(:mod:`kapi_selftests.fuzz.repro`).

Files in the shard directory (see ``docs/fuzz.md``): ``inflight.json`` (the
batch being issued, written and synced *before* it runs: what a crashed guest
was doing), ``calls.jsonl``, ``findings.jsonl``, ``coverage.json``,
``state.json`` (the commit point of a batch), ``repro/``; with KCOV
``kcov-edges.bin``, ``kcov-pcs.bin`` and ``kcov-corpus.jsonl``
(:mod:`kapi_selftests.fuzz.kcov`). A rerun on the same directory resumes after the
last committed batch; a batch that was in flight when the process died (a
kernel crash) is skipped and recorded.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kapi_selftests.errors import UsageError
from kapi_selftests.fuzz import minimize, remote, repro
from kapi_selftests.fuzz.callsafety import safe_specs
from kapi_selftests.fuzz.campaign_report import EDGES_FILE
from kapi_selftests.fuzz.coverage import Coverage, CoverageFigure
from kapi_selftests.fuzz.edges import EdgeCoverage
from kapi_selftests.fuzz.findings import (
    CRASHES_FILE,
    FINDINGS_FILE,
    INFLIGHT_FILE,
    SHRINKING_FILE,
    CrashRecord,
    Example,
    FindingKey,
    FindingStore,
    append_jsonl,
    append_lines,
    now_iso,
    plan_size,
    read_jsonl,
)
from kapi_selftests.fuzz.generate import PlanGenerator
from kapi_selftests.guest.fds import std_fds_owned
from kapi_selftests.link import calltable
from kapi_selftests.oracle.spec import Spec
from kapi_selftests.plan import CallPlan, FdKind, plan_from_json, plan_json_text, plan_to_json
from kapi_selftests.records import BatchResult, CallCheck, Prediction

if TYPE_CHECKING:
    from kapi_selftests.fuzz.kcov import KcovCorpus
    from kapi_selftests.fuzz.remote import RemoteHarness
    from kapi_selftests.guest.harness import Harness

__all__ = ["CampaignConfig", "Progress", "Campaign", "finding_keys", "call_row",
           "write_json_atomic", "now_iso", "CALLS_FILE", "STATE_FILE", "COVERAGE_FILE",
           "INFLIGHT_FILE", "REPRO_DIR"]

log = logging.getLogger(__name__)

CALLS_FILE = "calls.jsonl"
STATE_FILE = "state.json"
COVERAGE_FILE = "coverage.json"
REPRO_DIR = "repro"
#: calls.jsonl format version (bump on any incompatible change; docs/fuzz.md)
CALLS_FORMAT = 1


def _write_text_atomic(path: Path, text: str) -> None:
    # through a temporary file, synced, and a rename: a crash leaves the old or the new
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w") as f:
        f.write(text)
        f.flush()
        try:
            os.fsync(f.fileno())
        except OSError:
            pass
    os.replace(tmp, path)


def write_json_atomic(path: Path, data: Any, *, indent: int | None = 1) -> None:
    """Write ``data`` as JSON to ``path`` through a temporary file and a rename.

    :param indent: None for big payloads (json's C encoder only runs without indent)
    """
    _write_text_atomic(path, json.dumps(data, indent=indent))


@dataclass(frozen=True, slots=True)
class CampaignConfig:
    """One shard of a campaign.

    :param out: the shard directory
    :param seed: campaign seed
    :param shard: shard number (its random stream)
    :param calls: stop after this many calls in total (None: no limit)
    :param duration_s: stop after this many seconds in total, resumed runs included
    :param batch_size: calls per capture window
    :param minimize: shrink each new finding on the live kernel
    :param minimize_budget: most runs spent shrinking one finding
    :param minimize_time_s: most seconds spent shrinking one finding
    :param minimize_total_s: most seconds a shard spends shrinking; later findings are
        saved as found (a kernel where every call is a finding must not stall the
        campaign, nor keep the guest waiting)
    :param strict: spec drift counts as a finding
    :param replay_line: how to replay a reproducer (printed in reports)
    :param mutate_rate: with KCOV (the harness reports kernel coverage), the share of
        calls that mutate a plan which reached new kernel code (0: coverage is only
        measured, as a baseline)
    """

    out: Path
    seed: int = 0
    shard: int = 0
    calls: int | None = None
    duration_s: float | None = None
    batch_size: int = 200
    minimize: bool = True
    minimize_budget: int = 80
    minimize_time_s: float = 10.0
    minimize_total_s: float = 60.0
    strict: bool = False
    steer_rate: float = 0.5
    #: with KCOV, the share of calls that mutate a corpus entry
    mutate_rate: float = 0.5


@dataclass(frozen=True, slots=True)
class Progress:
    """Where a shard stands (also what ``state.json`` holds)."""

    seed: int
    shard: int
    batches: int
    calls: int
    elapsed_s: float
    findings: Mapping[str, int]
    coverage: CoverageFigure
    skipped_batches: tuple[int, ...] = ()
    done: bool = False
    #: kernel coverage (KCOV) when the harness reports it (``KcovCorpus.figure``)
    kcov: Mapping[str, Any] | None = None

    @property
    def calls_per_s(self) -> float:
        return self.calls / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        return {"seed": self.seed, "shard": self.shard, "batches": self.batches,
                "calls": self.calls, "elapsed_s": round(self.elapsed_s, 3),
                "calls_per_s": round(self.calls_per_s, 1), "findings": dict(self.findings),
                "coverage": self.coverage.to_json(), "skipped_batches": list(self.skipped_batches),
                "done": self.done, **({"kcov": dict(self.kcov)} if self.kcov is not None else {})}


def finding_keys(check: CallCheck, prediction: Prediction | None) -> list[FindingKey]:
    """The dedupe keys of a call's failing findings: (kind, syscall, where).

    ``where`` is ``param:check`` of the oracle's predicted rejection, ``accepted``, or
    ``undetermined``.
    """
    pred = check.prediction or prediction
    if pred is None:
        where = "unpredicted"
    elif pred.rejection is not None:
        r = pred.rejection
        where = f"{r.param or 'nargs'}:{r.check.value}"
    elif pred.undetermined is not None:
        where = "undetermined"
    else:
        where = "accepted"
    return list(dict.fromkeys(FindingKey(f.kind.value, check.record.name, where)
                              for f in check.failures))


def call_row(seed: int, shard: int, batch: int, index: int, n: int, plan: CallPlan,
             check: CallCheck) -> dict[str, Any]:
    """One ``calls.jsonl`` row (format ``CALLS_FORMAT``; see docs/fuzz.md)."""
    rec = check.record
    spec_match, pairs = check.summary
    return {"v": CALLS_FORMAT, "seed": seed, "shard": shard, "batch": batch, "index": index,
            "n": n, "plan": plan_to_json(plan), "regs": list(rec.args),
            "ret": rec.ret, "errno": rec.errno, "spec_match": spec_match, "pairs": pairs,
            "findings": sorted({f.kind.value for f in check.failures})}


def call_line(seed: int, shard: int, batch: int, index: int, n: int, plan_json: str,
              check: CallCheck) -> str:
    """:func:`call_row` as its JSON line, with the plan already in JSON (the fast path)."""
    rec = check.record
    spec_match, pairs = check.summary
    fails = check.failures
    found = json.dumps(sorted({f.kind.value for f in fails})) if fails else "[]"
    sm = "null" if spec_match is None else str(spec_match)
    a = rec.args
    return (f'{{"v":{CALLS_FORMAT},"seed":{seed},"shard":{shard},"batch":{batch},'
            f'"index":{index},"n":{n},"plan":{plan_json},'
            f'"regs":[{a[0]},{a[1]},{a[2]},{a[3]},{a[4]},{a[5]}],"ret":{rec.ret},'
            f'"errno":{rec.errno},"spec_match":{sm},"pairs":{pairs},"findings":{found}}}')


def _context_sizes(sizes: list[int], plans: Sequence[CallPlan]) -> list[int]:
    # ``sizes`` filled once per batch with each call's context size (the sum of
    # plan_size over the calls before it); a batch with no failure never pays for it
    if not sizes:
        sizes.append(0)
        for p in plans[:-1]:
            sizes.append(sizes[-1] + plan_size(p))
    return sizes


def _plans_json(plans: Sequence[CallPlan]) -> list[str]:
    return [plan_json_text(p) for p in plans]


#: calls the reference's spec decides otherwise than the kernel's (JSON lines)
DISAGREEMENTS_FILE = "reference-disagreements.jsonl"
_MAX_DISAGREEMENTS = 100


def keep_disagreements(out: Path, lines: Sequence[str], kept: int) -> int:
    """Append calls the reference decides otherwise to ``out``'s file, up to
    :data:`_MAX_DISAGREEMENTS` a run (examples, not a log); returns how many it wrote."""
    keep = lines[:max(0, _MAX_DISAGREEMENTS - kept)]
    if keep:
        append_lines(out / DISAGREEMENTS_FILE, [json.dumps({"line": line}) for line in keep])
    return len(keep)


@dataclass
class _State:
    batches: int = 0  # next batch number
    calls: int = 0
    elapsed_s: float = 0.0
    skipped: list[int] = field(default_factory=list)


class Campaign:
    """One shard of a fuzzing campaign over ``harness`` (entered by the caller).

    :param cfg: what to run and where to write
    :param harness: the live harness (root, tracefs)
    :param on_progress: called after every batch
    """

    def __init__(self, cfg: CampaignConfig, harness: Harness | RemoteHarness,
                 on_progress: Callable[[Progress], None] | None = None) -> None:
        self.cfg = cfg
        self.h = harness
        #: the batch engine's harness takes a table before the previous one is judged
        self._submit: Callable[[list[CallPlan]], int] | None = getattr(harness, "submit", None)
        #: which engine issues the calls
        self.engine = "batch" if self._submit is not None else "harness"
        # what the campaign generates calls of and counts coverage over: the spec'd
        # syscalls that may be issued with generated arguments
        self.specs = safe_specs(harness.specs)
        self.on_progress = on_progress
        self.out = cfg.out
        self.out.mkdir(parents=True, exist_ok=True)
        # fds 0-2 may be named where the calls run owns them (the guest's agent says so
        # in its manifest; a harness in this process, when this process owns them)
        manifest = getattr(harness, "man", None)
        std = (FdKind.STD0 in manifest.fds) if manifest is not None else std_fds_owned()
        self.gen = PlanGenerator(self.specs, cfg.seed, cfg.shard, steer_rate=cfg.steer_rate,
                                 std_fds=std)
        #: seconds spent shrinking findings (bounded by cfg.minimize_total_s)
        self.shrink_s = 0.0
        self._shrink_spent_said = False
        self.coverage = Coverage(self.specs)
        #: the parameters' edges issued (kapi_selftests.fuzz.edges), and on which side
        self.edges = EdgeCoverage(self.specs)
        #: kernel edges reached and the plans that reached new ones (KCOV kernels only)
        self.kcov: KcovCorpus | None = None
        if getattr(harness, "kcov", False):
            from kapi_selftests.fuzz.kcov import KcovCorpus  # numpy: only where KCOV is on

            self.kcov = KcovCorpus(self.out)
        self.store = FindingStore.load(self.out / FINDINGS_FILE)
        self.state = _State()
        self._ahead: tuple[int, list[CallPlan], int] | None = None
        self._json: dict[int, list[str]] = {}
        self._disagreements = 0  # lines written: at most _MAX_DISAGREEMENTS each run
        self._resume()

    # --- persistence --------------------------------------------------------------------

    def _resume(self) -> None:
        st = self.out / STATE_FILE
        if st.is_file():
            d = json.loads(st.read_text())
            if int(d.get("seed", self.cfg.seed)) != self.cfg.seed or \
                    int(d.get("shard", self.cfg.shard)) != self.cfg.shard:
                raise UsageError(f"{self.out}: holds seed {d.get('seed')} shard "
                                 f"{d.get('shard')}, not seed {self.cfg.seed} shard "
                                 f"{self.cfg.shard}", hint="use another --out, or the same --seed")
            self.state = _State(int(d["batches"]), int(d["calls"]), float(d["elapsed_s"]),
                                [int(b) for b in d.get("skipped_batches", ())])
        cov = self.out / COVERAGE_FILE
        if cov.is_file():
            self.coverage.load_json(json.loads(cov.read_text()))
        if (self.out / EDGES_FILE).is_file():
            self.edges.load_json(json.loads((self.out / EDGES_FILE).read_text()))
        inflight = self.out / INFLIGHT_FILE
        if inflight.is_file():
            try:
                d = json.loads(inflight.read_text())
            except ValueError:
                d = {}
            b = int(d.get("batch", -1))
            if b == self.state.batches:
                # Started, never committed, and not stopped cleanly: the kernel died under it.
                log.warning("shard %d: batch %d was in flight when the last run died; "
                            "skipping it", self.cfg.shard, b)
                self._record_crash(d, "the run died while this batch was in flight")
                self.state.skipped.append(b)
                self.state.batches += 1
            inflight.unlink()

    def _record_crash(self, inflight: Mapping[str, Any], summary: str) -> None:
        crashes = read_jsonl(self.out / CRASHES_FILE)
        b = int(inflight.get("batch", -1))
        if any(int(c.get("batch", -2)) == b and int(c.get("shard", -1)) == self.cfg.shard
               for c in crashes):
            return  # the host already recorded it, with the console excerpt
        plans = tuple(plan_from_json(p) for p in inflight.get("plans", ()))
        rec = CrashRecord(summary=summary, excerpt=(), last_plans=plans, shard=self.cfg.shard,
                          batch=b, when=now_iso())
        append_jsonl(self.out / CRASHES_FILE, [rec.to_json()])

    def progress(self, done: bool = False) -> Progress:
        return Progress(self.cfg.seed, self.cfg.shard, self.state.batches, self.state.calls,
                        self.state.elapsed_s, self.store.by_kind(), self.coverage.figure(),
                        tuple(self.state.skipped), done,
                        self.kcov.figure() if self.kcov is not None else None)

    def _commit(self) -> None:
        write_json_atomic(self.out / COVERAGE_FILE, self.coverage.to_json())
        write_json_atomic(self.out / EDGES_FILE, self.edges.to_json())
        write_json_atomic(self.out / STATE_FILE, self.progress().to_json())

    # --- the loop -----------------------------------------------------------------------

    def _remaining(self) -> int | None:
        if self.cfg.calls is None:
            return None
        return max(self.cfg.calls - self.state.calls, 0)

    def run(self, stop: Callable[[], bool] = lambda: False) -> Progress:
        """Run batches until the call or time budget is spent or ``stop()`` is true.

        A ``KeyboardInterrupt`` between or inside batches stops cleanly: the batch in
        flight is dropped (not committed, not counted as a crash), everything before it
        is on disk.
        """
        t_start = time.monotonic()
        base = self.state.elapsed_s
        try:
            while not stop():
                left = self._remaining()
                if left == 0:
                    break
                if self.cfg.duration_s is not None and \
                        base + time.monotonic() - t_start >= self.cfg.duration_s:
                    break
                n = self.cfg.batch_size if left is None else min(left, self.cfg.batch_size)
                nxt = self.cfg.batch_size if left is None else min(left - n, self.cfg.batch_size)
                self.run_batch(n, nxt)
                self.state.elapsed_s = base + time.monotonic() - t_start
                self._commit()
                if self.on_progress is not None:
                    self.on_progress(self.progress())
        except KeyboardInterrupt:
            log.warning("interrupted: stopping after batch %d", self.state.batches)
            (self.out / INFLIGHT_FILE).unlink(missing_ok=True)
            self.state.elapsed_s = base + time.monotonic() - t_start
            self._commit()
            raise
        self.state.elapsed_s = base + time.monotonic() - t_start
        self._commit()
        return self.progress(done=True)

    def run_batch(self, n: int, next_n: int = 0) -> list[CallCheck]:
        """Generate, issue and judge one batch; count and save what it found.

        With a harness that can take a batch before the previous one is judged (the
        batch engine's :class:`~kapi_selftests.fuzz.remote.RemoteHarness`), ``next_n`` calls
        of the next batch are generated and sent first, so the guest issues them while
        this side judges: a pipeline two batches deep. The next batch is generated
        from the coverage before this one (the same every run: seeds still replay).
        """
        b = self.state.batches
        submit = self._submit
        ticket: int | None = None
        if self._ahead is not None and self._ahead[0] == b:
            _, plans, ticket = self._ahead
            self._ahead = None
        else:
            plans = self._generate(b, n)
            if submit is not None:
                ticket = submit(plans)
        # each plan goes to JSON once: for inflight.json (one or two batches) and calls.jsonl
        js = self._json.pop(b, None) or _plans_json(plans)
        flight = list(js)
        if submit is not None and next_n > 0:
            nxt = self._generate(b + 1, next_n)
            self._ahead = (b + 1, nxt, submit(nxt))
            self._json[b + 1] = _plans_json(nxt)
            flight += self._json[b + 1]
        # a crash during either batch in flight is triaged with both (the last calls last)
        _write_text_atomic(self.out / INFLIGHT_FILE,
                           f'{{"seed":{self.cfg.seed},"shard":{self.cfg.shard},"batch":{b},'
                           f'"plans":[{",".join(flight)}]}}')
        checks = self._run_judge(b, plans, ticket, js)
        (self.out / INFLIGHT_FILE).unlink(missing_ok=True)
        self.state.batches += 1
        self.state.calls += len(plans)
        return checks

    def _generate(self, b: int, n: int) -> list[CallPlan]:
        k = self.kcov
        return self.gen.batch(b, n, self.coverage.missing(), self.coverage.attempts,
                              corpus=k.plans if k else (), costs=k.costs if k else (),
                              mutate_rate=self.cfg.mutate_rate)

    def run_corpus(self, plans: Sequence[CallPlan]) -> list[CallCheck]:
        """Run saved plans (a corpus entry) as batch -1: judged, counted, not numbered."""
        return self._run_judge(-1, list(plans))

    def _run_judge(self, b: int, plans: list[CallPlan], ticket: int | None = None,
                   plan_json: list[str] | None = None) -> list[CallCheck]:
        if ticket is not None:
            result = self.h.collect(ticket)  # type: ignore[union-attr]
            self._count_cover(b, result)
        else:
            result = self._run_now(plans, b)
        preds = result.predictions
        self._keep_disagreements(result.disagreements)
        plan_json = plan_json or _plans_json(plans)
        rows: list[str] = []
        found: list[tuple[FindingKey, Example]] = []
        bumps: dict[FindingKey, int] = {}  # occurrences of known keys, no example kept
        seen_keys: set[FindingKey] = set()
        before: list[int] = []  # size of the calls before each one: made at a first failure
        seed, shard, n0 = self.cfg.seed, self.cfg.shard, self.state.calls
        outcomes: list[tuple[str, Prediction | None, int]] = []
        for i, (plan, check) in enumerate(zip(plans, result.checks, strict=True)):
            pred = check.prediction or (preds[i] if i < len(preds) else None)
            outcomes.append((f"sys_{plan.name}", pred, check.record.errno))
            rows.append(call_line(seed, shard, b, i, n0 + i, plan_json[i], check))
            if not check.failures:
                continue
            for k in finding_keys(check, pred):
                # a key already known gets an example only when this one is smaller: on a
                # kernel where every call is a finding, explaining each call is the cost
                rec = self.store.records.get(k)
                if rec is not None and k in seen_keys and \
                        _context_sizes(before, plans)[i] + plan_size(plan) >= \
                        rec.smallest.size:
                    bumps[k] = bumps.get(k, 0) + 1
                    continue
                seen_keys.add(k)
                msg = next((f.message for f in check.failures if f.kind.value == k.kind), "")
                found.append((k, Example(plan=plan, context=tuple(plans[:i]),
                                         regs=check.record.args, ret=check.record.ret,
                                         message=msg, evidence=tuple(check.explain().splitlines()),
                                         shard=self.cfg.shard, batch=b, index=i)))
        self.coverage.add_many(outcomes)
        self.edges.add_many((name, plan, pred) for (name, pred, _e), plan in
                            zip(outcomes, plans, strict=True))
        append_lines(self.out / CALLS_FILE, rows)
        new = self.store.add(found, now_iso(), extra=bumps)
        for k in new:
            self._save_reproducer(k)
        return list(result.checks)

    # --- shrinking and reproducers ------------------------------------------------------

    def still_fails(self, key: FindingKey, plans: Sequence[CallPlan]) -> bool:
        """Run ``plans`` in one window: does the last call still give ``key``?"""
        if not plans:
            return False
        result = self._run_now(list(plans))
        preds = result.predictions
        return key in finding_keys(result.checks[-1], preds[-1] if preds else None)

    def _run_now(self, plans: list[CallPlan], b: int = -2) -> BatchResult:
        # Run and judge at once (shrinking runs are batch -2).
        result: BatchResult = self.h.run(plans)
        self._count_cover(b, result)
        return result

    def _keep_disagreements(self, lines: Sequence[str]) -> None:
        self._disagreements += keep_disagreements(self.out, lines, self._disagreements)

    def _count_cover(self, b: int, result: Any) -> None:
        # every run's coverage counts (the guest reports an edge once, whichever run
        # reached it first: a shrinking run too)
        cover = getattr(result, "kcov", None)
        if self.kcov is not None and cover is not None:
            self.kcov.add(b, result.plans, cover)

    def _save_reproducer(self, key: FindingKey) -> None:

        rec = self.store.records[key]
        ex = rec.first
        plans: list[CallPlan] = [*ex.context, ex.plan]
        left = self.cfg.minimize_total_s - self.shrink_s
        if self.cfg.minimize and left > 0:
            limit = min(self.cfg.minimize_time_s, left)
            log.warning("shrinking %s (at most %.0f s; %.0f s of the shard's %.0f s left)",
                        key.describe(), limit, left, self.cfg.minimize_total_s)
            marker = self.out / SHRINKING_FILE
            _write_text_atomic(marker, json.dumps({"finding": key.describe()}))
            t0 = time.monotonic()
            try:
                plans = minimize.minimize(ex.context, ex.plan,
                                          lambda ps: self.still_fails(key, ps),
                                          budget=self.cfg.minimize_budget, time_s=limit)
            except Exception as e:  # shrinking is best effort: keep the unshrunk batch
                log.warning("could not shrink %s: %s", key.describe(), e)
            finally:
                self.shrink_s += time.monotonic() - t0
                marker.unlink(missing_ok=True)
        elif self.cfg.minimize and not self._shrink_spent_said:
            self._shrink_spent_said = True
            log.warning("the shard's %.0f s of shrinking are spent: further findings are "
                        "saved as found", self.cfg.minimize_total_s)
        pred = None
        try:
            preds = self._run_now(plans[-1:]).predictions
            pred = preds[-1] if preds else None
        except Exception as e:
            log.warning("could not re-run %s: %s", key.describe(), e)
        spec = self.specs.get(f"sys_{plans[-1].name}")
        r = repro.Reproducer(key=key, plans=tuple(plans), message=ex.message,
                             evidence=ex.evidence, seed=self.cfg.seed, shard=self.cfg.shard,
                             batch=ex.batch, source=self.h.source.value,
                             rejected=None if pred is None else pred.rejected,
                             spec=spec, engine=self.engine)
        paths = repro.save(r, self.out / REPRO_DIR)
        # relative to the shard directory: the same in the guest and on the host
        self.store.set_reproducer(key, [str(p.relative_to(self.out)) for p in paths], plans)
        log.warning("new finding %s; reproducer %s (replay: kapi-selftests replay %s)",
                    key.describe(), paths[0].parent, paths[0])


def load_shard(out: Path, specs: Mapping[str, Spec]) -> tuple[FindingStore, Coverage,
                                                              dict[str, Any]]:
    """A shard directory's findings, coverage and state (for reports and merges)."""
    store = FindingStore.load(out / FINDINGS_FILE)
    store.path = None
    cov = Coverage(specs)
    if (out / COVERAGE_FILE).is_file():
        cov.load_json(json.loads((out / COVERAGE_FILE).read_text()))
    state: dict[str, Any] = {}
    if (out / STATE_FILE).is_file():
        state = json.loads((out / STATE_FILE).read_text())
    return store, cov, state


@contextlib.contextmanager
def local_harness(engine: str = "harness", *, source: Any = None,
                  specs: Mapping[str, Spec] | None = None, strict: bool = False,
                  kcov: bool = False) -> Iterator[Any]:
    """A harness on the running kernel (``fuzz --local``, replays).

    :param engine: ``harness`` (fresh resources per call, judged in this process) or
        ``batch`` (an agent in this process behind the batch engine's link: one fd per
        kind shared by the calls, one table per capture window)
    :param source: the :class:`~kapi_selftests.records.EventSource` (probed when None)
    :param specs: the spec model (None: the running kernel's)
    :param kcov: the batch engine's agent reports kernel coverage (KCOV)
    """
    if engine == "harness":
        # guest side: a campaign on the host drives a guest's agent and runs no call here
        from kapi_selftests.guest.harness import Harness

        with Harness(source, specs=specs) as h:
            yield h
        return
    # guest side: a campaign on the host drives a guest's agent and runs no call here
    from kapi_selftests.guest import agent

    with agent.Agent(calltable.build_library(calltable.CACHE_DIR), source, kcov=kcov) as ag, \
            remote.RemoteHarness(remote.LocalLink(ag), specs, strict=strict) as rh:
        yield rh


def replay_plans(plans: Sequence[CallPlan], key: FindingKey,
                 source: Any = None, *, specs: Mapping[str, Spec] | None = None,
                 engine: str = "harness") -> tuple[bool, str]:
    """Run ``plans`` once on the running kernel: does the last call still give ``key``?

    :param source: the :class:`~kapi_selftests.records.EventSource` (probed when None)
    :param engine: the engine that found it (see :func:`local_harness`): a batch-engine
        finding may depend on the state its calls share
    :return: whether it still fails, and the last call's explanation
    """
    with local_harness(engine, source=source, specs=specs) as h:
        result = h.run(list(plans))
        last = result.checks[-1]
        pred = last.prediction or (result.predictions[-1] if result.predictions else None)
        return key in finding_keys(last, pred), last.explain()
