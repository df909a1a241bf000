"""Host side of a fast campaign: plans become call tables for an agent (``agent.py``).

:class:`RemoteHarness` has the interface of :class:`~kapi_selftests.guest.harness.Harness`
(``run(plans) -> BatchResult``), so :class:`~kapi_selftests.fuzz.campaign.Campaign` drives
either. The difference is where the work happens: here plans are made concrete
against the agent's fixed resources (its manifest: :class:`ManifestMaterializer`),
predicted by the oracle with the manifest's memory facts
(:class:`ManifestMemory`), sent as one table, and the results and raw trace that
come back are decoded, paired and judged here. The agent is in the same process
(:class:`LocalLink`, ``fuzz --local``) or in a guest, behind shared memory
(:class:`ShmLink`, the default) or a directory on the output share (:class:`DirLink`).

Side effects (check 5) are measured by the executor around each call the oracle
expects to be rejected: the watches and the judging of their measurements are
:mod:`kapi_selftests.oracle.sideeffects`, the same as the suite's, so are the lines.
"""

from __future__ import annotations

import json
import logging
import os
import struct
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

from kapi_selftests.arch import PAGE_SIZE
from kapi_selftests.errors import LostGuest, MissingFeature
from kapi_selftests.link import calltable
from kapi_selftests.link.shm import unpack_out, wait_until
from kapi_selftests.oracle import sideeffects
from kapi_selftests.oracle.checks import check_calls
from kapi_selftests.oracle.predict import predict
from kapi_selftests.oracle.reference import differing_reference, predict_calls
from kapi_selftests.oracle.sideeffects import Watch, judge
from kapi_selftests.oracle.spec import Spec, builtin_specs, load_debugfs, load_specs, write_specs
from kapi_selftests.plan import (
    TOP_BUFS,
    ArgPlan,
    Buf,
    BufKind,
    CallPlan,
    Fd,
    FdKind,
    Lit,
    PathKind,
    top_address,
)
from kapi_selftests.plan import Path as PathPlan
from kapi_selftests.records import (
    Batch,
    BatchResult,
    EventSource,
    Materialized,
    Prediction,
    SyscallRecord,
)
from kapi_selftests.trace.capture import read_capture_dir
from kapi_selftests.trace.events import RawCapture
from kapi_selftests.trace.ringbuf import decode

__all__ = ["Manifest", "ManifestMemory", "ManifestMaterializer", "Link", "LocalLink", "DirLink",
           "ShmLink",
           "RemoteHarness", "pack_table", "unpack_results"]

log = logging.getLogger(__name__)

_M64 = (1 << 64) - 1


@dataclass(frozen=True, slots=True)
class Manifest:
    """The agent's resources (see :meth:`kapi_selftests.guest.agent.Resources.manifest`)."""

    source: EventSource
    fds: Mapping[FdKind, int]
    rw: tuple[int, int]
    ro: tuple[int, int]
    unmapped: int
    kernel: int
    paths: Mapping[PathKind, int]
    new_paths: tuple[int, ...]
    strings: Mapping[int, tuple[bytes, bool]]  # addr -> (bytes up to NUL/fault, terminated)
    executor: str = "c"
    #: the agent reports each batch's kernel coverage (KCOV) after its results
    kcov: bool = False
    #: the agent's last user page (None: not the agent's: top-of-user buffers get
    #: ``unmapped``)
    top: int | None = None

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Manifest:
        return cls(source=EventSource(d["source"]),
                   fds={FdKind(k): int(v) for k, v in d["fds"].items()},
                   rw=(int(d["rw"][0]), int(d["rw"][1])), ro=(int(d["ro"][0]), int(d["ro"][1])),
                   unmapped=int(d["unmapped"]), kernel=int(d["kernel"]),
                   paths={PathKind(k): int(v) for k, v in d["paths"].items()},
                   new_paths=tuple(int(a) for a in d["new_paths"]),
                   strings={int(a): (bytes.fromhex(s["hex"]), bool(s["terminated"]))
                            for a, s in d["strings"].items()},
                   executor=str(d.get("executor", "c")), kcov=bool(d.get("kcov", False)),
                   top=None if d.get("top") is None else int(d["top"]))


class ManifestMemory:
    """The oracle's :class:`~kapi_selftests.oracle.predict.MemoryView` from the manifest's facts."""

    def __init__(self, m: Manifest) -> None:
        self._strings = m.strings
        self._faulting = {0, m.unmapped, m.kernel}

    def strnlen_user(self, addr: int, count: int) -> int | None:
        if count <= 0:
            return 0
        if addr in self._faulting:
            return 0
        s = self._strings.get(addr)
        if s is None:
            return None  # not one of the agent's strings: unknown
        data, terminated = s
        if terminated:
            n = len(data) - 1  # data ends with the NUL
            return n + 1 if n < count else count + 1
        return count + 1 if len(data) >= count else 0


class ManifestMaterializer:
    """Makes plans concrete against the agent's fixed resources (no syscalls: pure)."""

    def __init__(self, m: Manifest) -> None:
        self.manifest = m
        self.memory = ManifestMemory(m)
        self._new = 0
        self._predictions: dict[tuple[str, tuple[int, ...]], Prediction] = {}
        self._args: dict[ArgPlan, tuple[int, str, Any]] = {}
        self._plans: dict[CallPlan, Materialized] = {}

    def predict(self, spec: Spec, regs: tuple[int, ...]) -> Prediction:
        """The oracle's prediction, cached: the memory facts are fixed for the session."""
        key = (spec.name, regs)
        p = self._predictions.get(key)
        if p is None:
            if len(self._predictions) > 1 << 16:
                self._predictions.clear()
            p = self._predictions[key] = predict(spec, regs, self.memory)
        return p

    def __call__(self, plan: CallPlan) -> Materialized:
        # Equal plans make equal calls (the resources are fixed), but for a new path's
        # name, which changes each time: half a campaign's plans repeat an earlier one.
        m = self._plans.get(plan)
        if m is None:
            m = self._make(plan)
            if not any(_is_new(a) for a in plan.args):
                if len(self._plans) > 1 << 16:
                    self._plans.clear()
                self._plans[plan] = m
        return m

    def _make(self, plan: CallPlan) -> Materialized:
        fds: dict[int, int] = {}
        bufs: dict[int, tuple[int, int]] = {}
        paths: dict[int, bytes] = {}
        regs: list[int] = []
        cache = self._args
        for i, a in enumerate(plan.args):
            hit = cache.get(a)
            if hit is None:
                if _is_new(a):
                    hit = self._one(a)  # a new name each time: not cached
                else:
                    hit = cache[a] = self._one(a)
            reg, what, payload = hit
            regs.append(reg)
            if what == "fd":
                fds[i] = payload
            elif what == "buf":
                bufs[i] = payload
            elif what == "path" and payload is not None:
                paths[i] = payload
        return Materialized(plan, tuple(regs), fds, bufs, paths)

    def _one(self, a: ArgPlan) -> tuple[int, str, Any]:
        # (register, what it names, the fd / (addr, size) / path text)
        man = self.manifest
        if isinstance(a, Lit):
            return a.value & _M64, "lit", None
        if isinstance(a, Fd):
            fd = man.fds[a.kind]
            return (fd + (a.high << 32)) & _M64, "fd", fd
        if isinstance(a, Buf):
            addr = self._buf(a)
            return addr, "buf", (addr, a.size)
        addr = self._path(a)
        s = man.strings.get(addr)
        return addr, "path", (s[0][:-1] if s is not None and s[1] else None)

    def _buf(self, b: Buf) -> int:
        man, size = self.manifest, b.size
        start, cap = man.rw
        end = start + cap  # a guard page follows
        if b.kind is BufKind.MAPPED:
            return start + b.offset
        if b.kind in TOP_BUFS:
            return top_address(b, man.top, lambda: man.unmapped)
        if b.kind is BufKind.GUARD_TAIL:
            return end - min(size, cap)
        if b.kind is BufKind.SHORT:
            return end - min(max(size - 1, 0), cap)
        if b.kind is BufKind.UNALIGNED:
            return start + 1
        if b.kind is BufKind.READONLY:
            return man.ro[0]
        if b.kind is BufKind.UNMAPPED:
            return man.unmapped
        if b.kind is BufKind.NULL:
            return 0
        return man.kernel

    def _path(self, p: PathPlan) -> int:
        if p.kind is PathKind.NEW:
            addr = self.manifest.new_paths[self._new % len(self.manifest.new_paths)]
            self._new += 1
            return addr
        return self.manifest.paths[p.kind]

    def readable(self, addr: int, size: int) -> bool:
        """Whether ``[addr, addr+size)`` lies in the agent's rw or ro region."""
        top = self.manifest.top
        for start, cap in (self.manifest.rw, self.manifest.ro,
                           *(((top, PAGE_SIZE),) if top is not None else ())):
            if start <= addr and addr + size <= start + cap:
                return True
        return False


def _is_new(a: ArgPlan) -> bool:
    # a PathKind.NEW path: the materialiser hands out the next name of its ring each time
    return type(a) is PathPlan and a.kind is PathKind.NEW


def _six(regs: Sequence[int]) -> tuple[int, int, int, int, int, int]:
    # a call's registers padded to the six the table and the records carry
    r = (*regs, 0, 0, 0, 0, 0, 0)
    return r[0], r[1], r[2], r[3], r[4], r[5]


def _watches(m: Materialized, mat: ManifestMaterializer) -> list[Watch]:
    # What a call predicted to be rejected could change (check 5's one definition).
    return sideeffects.watches(m, mat.readable)


def pack_table(mats: Sequence[Materialized], watches: Sequence[Sequence[Watch]]) -> bytes:
    """The ``cexec`` call table for ``mats`` (registers padded to six)."""
    out = bytearray(calltable.table_size([len(w) for w in watches]))
    off = 0
    for m, ws in zip(mats, watches, strict=True):
        calltable.CALL.pack_into(out, off, m.plan.nr, *_six(m.regs), len(ws))
        off += calltable.CALL.size
        for w in ws:
            calltable.WATCH.pack_into(out, off, w.kind, w.x, w.length)
            off += calltable.WATCH.size
    return bytes(out)


def unpack_results(data: bytes, tid: int, mats: Sequence[Materialized],
                   watches: Sequence[Sequence[Watch]]
                   ) -> tuple[list[SyscallRecord], list[list[str]]]:
    """Records and side-effect lines (check 5) from the ``cexec`` results."""
    if len(data) != calltable.result_size([len(w) for w in watches]):
        raise LostGuest(f"agent returned {len(data)} result bytes for {len(mats)} calls")
    records: list[SyscallRecord] = []
    effects: list[list[str]] = []
    off = 0
    nv = calltable.NVAL
    for m, ws in zip(mats, watches, strict=True):
        ret, t0, t1 = calltable.RESULT.unpack_from(data, off)
        off += calltable.RESULT.size
        records.append(SyscallRecord(nr=m.plan.nr, args=_six(m.regs),
                                     ret=ret, errno=-ret if -4096 < ret < 0 else 0, tid=tid,
                                     t_ns=t0, t_end_ns=t1))
        if not ws:
            effects.append([])
            continue
        vals = [calltable.WATCH_RESULT.unpack_from(data, off + k * calltable.WATCH_RESULT.size)
                for k in range(len(ws))]
        off += len(ws) * calltable.WATCH_RESULT.size
        effects.append(judge(ws, [v[:nv] for v in vals], [v[nv:] for v in vals]))
    return records, effects


class Link(Protocol):
    """How tables reach an agent and results come back."""

    def manifest(self) -> Mapping[str, Any]: ...
    def specs(self) -> Mapping[str, Spec]: ...
    def send(self, n: int, table: bytes, calls: int) -> None: ...
    def receive(self, n: int) -> tuple[bytes, int, RawCapture]: ...
    def close(self) -> None: ...


def _guest_specs(d: Path) -> Mapping[str, Spec]:
    # the guest kernel's debugfs dump, as the agent copied it; else the built-in model
    # (never this host's specs: its kernel is not the one under test)
    if (d / "list").is_file():
        specs = load_debugfs(d)
        if specs:
            return specs
    return builtin_specs()


def _wait_for_agent(link: DirLink | ShmLink, ready: Any, what: str, timeout_s: float,
                    nap_max_s: float = 0.002) -> None:
    # poll for the agent's answer; a dead guest or a timeout loses the agent
    t0 = time.monotonic()
    try:
        wait_until(ready, timeout_s=timeout_s, alive=link.alive, what=what, nap_max_s=nap_max_s)
    except (RuntimeError, TimeoutError) as e:
        raise LostGuest(f"agent lost while waiting for {what}: {e}") from e
    finally:
        link.waited_s += time.monotonic() - t0


class LocalLink:
    """The agent in this process (``fuzz --local``: the running kernel)."""

    def __init__(self, agent: Any) -> None:
        self.agent = agent
        self._pending: dict[int, tuple[bytes, int]] = {}

    def manifest(self) -> Mapping[str, Any]:
        return dict(self.agent.manifest())

    def specs(self) -> Mapping[str, Spec]:
        return load_specs()[0]  # the running kernel's: the agent is here

    def send(self, n: int, table: bytes, calls: int) -> None:
        self._pending[n] = (table, calls)

    def receive(self, n: int) -> tuple[bytes, int, RawCapture]:
        return self.agent.run(*self._pending.pop(n))  # type: ignore[no-any-return]

    def close(self) -> None:
        pass


class DirLink:
    """An agent serving directory ``d`` (the guest's output share; see ``agent.serve``).

    :param alive: returns a reason when the agent can no longer answer (guest died)
    """

    def __init__(self, d: Path, *, timeout_s: float = 300.0,
                 alive: Any = lambda: None) -> None:
        self.d = d
        self.timeout_s = timeout_s
        self.alive = alive
        #: seconds this side spent waiting for the agent (the rest is judging here)
        self.waited_s = 0.0

    def _wait(self, path: Path, what: str) -> None:
        _wait_for_agent(self, path.exists, what, self.timeout_s, nap_max_s=0.02)

    def manifest(self) -> Mapping[str, Any]:
        p = self.d / "manifest.json"
        self._wait(p, "manifest")
        return dict(json.loads(p.read_text()))

    def specs(self) -> Mapping[str, Spec]:
        return _guest_specs(self.d / "kapi")

    def send(self, n: int, table: bytes, calls: int) -> None:
        tmp = self.d / f"in-{n}.tmp"
        tmp.write_bytes(struct.pack("<Q", calls) + table)
        os.replace(tmp, self.d / f"in-{n}.bin")

    def receive(self, n: int) -> tuple[bytes, int, RawCapture]:
        out = self.d / f"out-{n}"
        self._wait(out, f"results of batch {n}")
        data = (out / "results.bin").read_bytes()
        raw = read_capture_dir(out)
        for f in out.iterdir():
            f.unlink()
        out.rmdir()
        return data[8:], struct.unpack_from("<Q", data)[0], raw

    def close(self) -> None:
        log.info("agent link %s: %.1f s spent waiting for the agent", self.d, self.waited_s)
        (self.d / "stop").touch()


class ShmLink:
    """An agent behind a :class:`kapi_selftests.link.shm.Channel` (``agent --shm`` in a guest).

    :param alive: returns a reason when the agent can no longer answer (guest died)
    """

    def __init__(self, ch: Any, spec_dir: Path, *, timeout_s: float = 300.0,
                 alive: Any = lambda: None) -> None:
        self.ch = ch
        self.spec_dir = spec_dir
        self.timeout_s = timeout_s
        self.alive = alive
        self.waited_s = 0.0
        self._got: dict[int, bytes] = {}
        self._copied = 0  # results of batches < this are in _got or were returned

    def _wait(self, ready: Any, what: str, timeout_s: float | None = None) -> None:
        _wait_for_agent(self, ready, what, timeout_s or self.timeout_s)

    def manifest(self) -> Mapping[str, Any]:
        self._wait(lambda: self.ch.manifest() is not None, "manifest", 900.0)
        man = dict(json.loads(self.ch.manifest()))
        write_specs(man.pop("specs_files", {}), self.spec_dir)
        return man

    def specs(self) -> Mapping[str, Spec]:
        return _guest_specs(self.spec_dir)

    def _drain(self) -> None:
        # copy every posted result out, so its slot can take a new table
        while self._copied < self.ch.done:
            self._got[self._copied] = self.ch.get_out(self._copied)
            self._copied += 1

    def send(self, n: int, table: bytes, calls: int) -> None:
        # slot n % 2 is free once batch n-2's results are copied out
        self._wait(lambda: self.ch.done >= n - 1, f"results of batch {n - 2}")
        self._drain()
        self.ch.put_table(n, table, calls)

    def receive(self, n: int) -> tuple[bytes, int, RawCapture]:
        self._wait(lambda: self.ch.done > n, f"results of batch {n}")
        self._drain()
        return unpack_out(self._got.pop(n))

    def close(self) -> None:
        log.info("agent link (shared memory): %.1f s spent waiting for the agent",
                 self.waited_s)
        self.ch.stop()


class RemoteHarness:
    """``Harness.run`` over a link: judge on this side, issue on the agent's.

    :param link: the agent
    :param specs: the spec model (None: the agent's kernel's, from its debugfs dump,
        else the built-in model)
    :param strict: spec drift fails
    :param reference: reference specs by name (see :class:`~kapi_selftests.guest.harness.Harness`)
    """

    def __init__(self, link: Link, specs: Mapping[str, Spec] | None = None, *,
                 strict: bool = False, reference: Mapping[str, Spec] | None = None) -> None:
        self.link = link
        man = link.manifest()
        if "error" in man:  # the agent could not start: it says why
            cls = MissingFeature if man.get("missing") else LostGuest
            raise cls(f"agent: {man['error']}", hint=man.get("hint"))
        self.man = Manifest.from_json(man)
        self.source = self.man.source
        self.specs = dict(specs if specs is not None else link.specs())
        self.strict = strict
        self.reference = dict(reference) if reference is not None else \
            differing_reference(self.specs)
        self.materialize = ManifestMaterializer(self.man)
        self._n = 0
        self._sent: dict[int, tuple[list[Materialized], list[Prediction | None],
                                    list[list[Watch]], list[str]]] = {}

    @property
    def kcov(self) -> bool:
        """The agent reports kernel coverage (KCOV) with every batch."""
        return self.man.kcov

    def __enter__(self) -> RemoteHarness:
        return self

    def __exit__(self, t: type[BaseException] | None, v: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.link.close()

    def submit(self, plans: Sequence[CallPlan]) -> int:
        """Materialise, predict and send ``plans``; returns the batch number to collect."""
        mats = [self.materialize(p) for p in plans]
        preds, disagree = predict_calls(mats, self.specs, self.materialize, self.reference)
        # check 5's watches, for the calls the kernel's validator will reject
        watches: list[list[Watch]] = [
            _watches(m, self.materialize)
            if p is not None and p.rejected and self.source is EventSource.KAPI else []
            for m, p in zip(mats, preds, strict=True)]
        n = self._n
        self._n += 1
        self.link.send(n, pack_table(mats, watches), len(mats))
        self._sent[n] = (mats, preds, watches, disagree)
        return n

    def collect(self, n: int) -> BatchResult:
        """Receive, decode and judge batch ``n``."""
        mats, preds, watches, disagree = self._sent.pop(n)
        data, tid, raw = self.link.receive(n)
        cover = None
        if self.man.kcov:
            # numpy loads in a second or so: only the columnar paths (KCOV, bulk decode) pay it
            from kapi_selftests.fuzz.kcov import split

            try:
                data, cover = split(data, calltable.result_size([len(w) for w in watches]),
                                    len(mats))
            except ValueError as e:
                raise LostGuest(f"agent's answer to batch {n}: {e}") from e
        records, effects = unpack_results(data, tid, mats, watches)
        capture = decode(raw)
        checks = check_calls(records, capture, self.source, self.specs,
                             memory=self.materialize.memory, side_effects=effects,
                             strict=self.strict, predictions=preds)
        batch = Batch(tuple(records), raw, self.source)
        return BatchResult(tuple(m.plan for m in mats), tuple(mats), batch, capture,
                           tuple(checks), cover, tuple(disagree), tuple(preds))

    def run(self, plans: Sequence[CallPlan]) -> BatchResult:
        return self.collect(self.submit(plans))
