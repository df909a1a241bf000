"""The guest-side pipeline in one object: plans -> memory -> batch -> capture -> checks.

:class:`Harness` owns the arena, the fd pool and the trace instance, and runs a
batch of :class:`~kapi_selftests.plan.CallPlan` end to end: materialise,
snapshot what a predicted rejection must not change, issue all calls in one
capture window, measure side effects, decode, judge. The suite, the fuzzer
and ``run --local`` all go through it. Resources of a batch are released after
it, so a long campaign does not run out of fds or mappings.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from kapi_selftests.arch import PATH_MAX
from kapi_selftests.guest.executor import SPEC_SYSCALLS, Executor
from kapi_selftests.guest.fds import FdPool
from kapi_selftests.guest.materialize import Materializer, side_effects, snapshot
from kapi_selftests.guest.memory import Arena
from kapi_selftests.oracle.calls_log import CALLS_LOG, FACTS_FILE, facts_json, format_calls_log
from kapi_selftests.oracle.checks import check_calls
from kapi_selftests.oracle.predict import PlanMaterializer, UserString
from kapi_selftests.oracle.reference import differing_reference, predict_calls
from kapi_selftests.oracle.spec import (
    ReturnCheck,
    Spec,
    load_specs,
    specs_files,
    write_specs,
)
from kapi_selftests.plan import CallPlan
from kapi_selftests.records import (
    Batch,
    BatchResult,
    CallCheck,
    EventSource,
    Materialized,
    Prediction,
    SyscallRecord,
)
from kapi_selftests.trace.capture import write_capture_dir
from kapi_selftests.trace.events import Capture
from kapi_selftests.trace.ringbuf import decode

if TYPE_CHECKING:
    pass

__all__ = ["Harness"]

log = logging.getLogger(__name__)


class Harness:
    """Runs call plans end to end on the running kernel (needs root and tracefs).

    :param source: event source (probed when None)
    :param specs: spec model (debugfs or built-in when None)
    :param strict: spec drift fails
    :param save_trace: directory to save every batch's raw capture in (``batch-N/``)
    :param names: syscalls the generic events are traced for (the five v4 ones by default)
    :param reference: reference specs by name: every call of theirs is also predicted
        from them, and a call they decide otherwise is a line of its batch's
        ``disagreements`` (None: the reference's specs whose rules differ from the
        kernel's, :func:`~kapi_selftests.oracle.reference.differing_reference`)
    """

    def __init__(self, source: EventSource | None = None, *,
                 specs: Mapping[str, Spec] | None = None, strict: bool = False,
                 save_trace: Path | None = None, buffer_kb: int = 8192,
                 names: Sequence[str] = SPEC_SYSCALLS,
                 reference: Mapping[str, Spec] | None = None) -> None:
        self.specs = dict(specs) if specs is not None else load_specs()[0]
        self.names = tuple(names)
        self.reference = dict(reference) if reference is not None else \
            differing_reference(self.specs)
        self.strict = strict
        self.save_trace = save_trace
        self.arena = Arena()
        self.pool = FdPool()
        self.materialize: PlanMaterializer = Materializer(self.arena, self.pool)
        self.executor = Executor(source, names=self.names, buffer_kb=buffer_kb)
        self.source = self.executor.source
        self._batches = 0

    def __enter__(self) -> Harness:
        self.executor.__enter__()
        return self

    def __exit__(self, t: type[BaseException] | None, v: BaseException | None,
                 tb: TracebackType | None) -> None:
        try:
            self.executor.__exit__(t, v, tb)
        finally:
            self.pool.close()
            self.arena.close()

    def run(self, plans: Sequence[CallPlan]) -> BatchResult:
        """Issue ``plans`` in one capture window and judge every call."""
        mats = tuple(self.materialize(p) for p in plans)
        # Predicted once, before the calls: what a rejected call must leave alone is
        # snapshotted, and the same prediction is what the call is judged against.
        preds, disagree = predict_calls(mats, self.specs, self.materialize, self.reference)
        snaps = {i: snapshot(mats[i], self.arena) for i, p in enumerate(preds)
                 if p is not None and p.rejected and self.source is EventSource.KAPI}
        batch = self.executor.run([(m.plan.nr, m.regs) for m in mats])
        touched = [self._fds_touched(r) for r in batch.records]
        effects = [side_effects(snaps[i], ignore_fds=frozenset().union(
                       *(t for j, t in enumerate(touched) if j != i)))
                   if i in snaps else [] for i in range(len(mats))]
        result = self._judge(tuple(plans), mats, batch, effects, preds)
        self._release(batch.records)
        return replace(result, disagreements=tuple(disagree)) if disagree else result

    def run_fn(self, fn: Callable[[], Sequence[SyscallRecord]]) -> tuple[Batch, Capture,
                                                                          list[CallCheck]]:
        """Run ``fn`` (which issues calls itself: threads, signals) in one capture window."""
        batch = self.executor.run_fn(fn)
        capture = self._decode(batch)
        checks = check_calls(batch.records, capture, batch.source, self.specs,
                             memory=self.arena, strict=self.strict)
        return batch, capture, checks

    def _decode(self, batch: Batch) -> Capture:
        self._batches += 1
        if self.save_trace is not None:
            write_capture_dir(batch.raw, self.save_trace / f"batch-{self._batches}")
        return decode(batch.raw)

    def _judge(self, plans: tuple[CallPlan, ...], mats: tuple[Materialized, ...], batch: Batch,
               effects: Sequence[Sequence[str]],
               predictions: Sequence[Prediction | None]) -> BatchResult:
        capture = self._decode(batch)
        if self.save_trace is not None:  # what the offline judge needs to judge it again
            d = self.save_trace / f"batch-{self._batches}"
            (d / CALLS_LOG).write_text(format_calls_log(batch.records))
            (d / FACTS_FILE).write_text(facts_json(self._strings(mats), effects))
            if not (self.save_trace / "specs").exists():  # the kernel's dump, when it has one
                write_specs(specs_files(), self.save_trace / "specs")
        checks = check_calls(batch.records, capture, batch.source, self.specs,
                             memory=self.arena, side_effects=effects, strict=self.strict,
                             predictions=predictions)
        return BatchResult(plans, mats, batch, capture, tuple(checks),
                           predictions=tuple(predictions))

    def _strings(self, mats: Sequence[Materialized]) -> list[UserString]:
        # the bytes behind every path argument, as the oracle read them (before release)
        out = []
        for m in mats:
            for i in m.paths:
                addr = m.regs[i]
                n = self.arena.strnlen(addr, PATH_MAX + 2)
                readable = n + 1 if n is not None else _readable(self.arena, addr)
                out.append(UserString(addr, n, readable))
        return out

    def _release(self, records: Sequence[SyscallRecord]) -> None:
        # fds that successful open() (or any call whose spec returns an fd) returned
        # belong to no one else: close them.
        for r in records:
            if self._returns_fd(r):
                try:
                    os.close(r.ret)
                except OSError:
                    pass
        self.pool.release()
        self.arena.release()

    def _returns_fd(self, r: SyscallRecord) -> bool:
        if r.ret < 0:
            return False
        if r.name == "open":
            return True
        spec = self.specs.get(f"sys_{r.name}")
        return spec is not None and spec.ret.check is ReturnCheck.FD

    def _fds_touched(self, r: SyscallRecord) -> frozenset[int]:
        # The fds a call may have added to or removed from the process's fd table.
        if self._returns_fd(r):
            return frozenset((r.ret,))
        if r.name == "close":
            return frozenset((r.args[0] & 0xFFFFFFFF,))
        return frozenset()


def _readable(arena: Arena, addr: int) -> int:
    # bytes readable from addr before a fault (at most PATH_MAX + 2)
    n = 0
    while n < PATH_MAX + 2 and arena.accessible(addr + n, 1):
        n += 1
    return n
