"""What one kernel's gate run left on disk, loaded as frozen records.

A run directory (written by :mod:`kapi_selftests.host.gate_run`, or recorded
for tests under ``tests/data/gate-*``) holds::

    kernel.json           {"image": ..., "release": ...}            (optional)
    guest.json            guest health: status, killed, splats, lost
    suite.ktap            the in-guest suite's results (KTAP)
    suite-retry-<n>.ktap  re-run round n of the tests that failed on this kernel only
    kapi/list, kapi/specs/<name>, kapi/specs-json/<name>
                          copy of /sys/kernel/debug/kapi (absent: no KAPI specs)
    events/<event>.format the kapi tracepoints' format files (absent: none)
    probe/calls.jsonl     per-call behaviour of the gate's fixed call mix
    probe/timing.json     the timed call mix
    fuzz/calls.jsonl      per-call behaviour of a fixed-seed fuzz run (docs/fuzz.md)

``calls.jsonl`` has one JSON object per call: ``seed``, ``shard``, ``index``,
``plan`` (:func:`kapi_selftests.plan.plan_to_json`), ``regs``, ``ret``,
``errno``, ``spec_match`` (null without kapi events), ``pairs`` and
``findings`` (finding kinds). Reading only; nothing here runs a kernel.
"""

from __future__ import annotations

import errno as _errno
import json
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kapi_selftests.errors import SpecError, UsageError
from kapi_selftests.oracle.spec import Spec, load_debugfs
from kapi_selftests.report import TestResult, parse_ktap

__all__ = ["CallRecord", "Splat", "Health", "Timing", "KernelRun", "load_run",
           "read_calls", "call_to_json", "parse_calls", "plan_key", "KAPI_EVENTS"]

log = logging.getLogger(__name__)

KAPI_EVENTS = ("kapi_syscall_enter", "kapi_syscall_exit")


@dataclass(frozen=True, slots=True)
class CallRecord:
    """One issued call and what was seen of it.

    :param source: which run it came from (``probe``, ``fuzz``)
    :param shard: seed/shard label the index counts within
    :param index: position in its shard
    :param plan: the call plan as JSON (``{"name": ..., "args": [...]}``)
    :param regs: the registers passed
    :param ret: the kernel-form return (result or ``-errno``)
    :param errno: what userspace saw (0 on success)
    :param spec_match: the kapi exit's ``spec_match``; None without kapi events
    :param pairs: enter/exit pairs traced for the call; None when not counted
    :param findings: finding kinds of the run's own checks
    """

    source: str
    shard: str
    index: int
    plan: Mapping[str, Any]
    regs: tuple[int, ...]
    ret: int
    errno: int
    spec_match: int | None = None
    pairs: int | None = None
    findings: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return str(self.plan.get("name", "?"))

    def describe_plan(self) -> str:
        """``open(path:existing, 0x1000, 0)`` from the plan JSON."""
        parts = []
        for a in self.plan.get("args", ()):
            if "lit" in a:
                v = int(a["lit"])
                parts.append(hex(v) if abs(v) > 9 else str(v))
            elif "fd" in a:
                parts.append(f"fd:{a['fd']}" + (f"+{int(a['high']):#x}<<32"
                                                if a.get("high") else ""))
            elif "buf" in a:
                parts.append(f"buf:{a['buf']}[{a.get('size', '?')}]")
            elif "path" in a:
                parts.append(f"path:{a['path']}")
        return f"{self.name}({', '.join(parts)})"

    def outcome(self) -> str:
        """What userspace saw, in one word: ``ret=3`` or ``EINVAL``."""
        if self.errno:
            return _errno.errorcode.get(self.errno, f"errno {self.errno}")
        return f"ret={self.ret}"


@dataclass(frozen=True, slots=True)
class Splat:
    """A kernel report on the guest console: its kind and its line, timestamp stripped."""

    kind: str
    summary: str


@dataclass(frozen=True, slots=True)
class Health:
    """How the guest ended.

    :param status: exit code of the guest command; None: it wrote none
    :param killed: why the host killed the guest (hang), or None
    :param splats: kernel reports on the console
    :param lost: why nothing usable came back (never booted, ...), or None
    :param stages: exit code of each guest stage (``probe``, ``suite``); None: unreadable
    """

    status: int | None = 0
    killed: str | None = None
    splats: tuple[Splat, ...] = ()
    lost: str | None = None
    stages: Mapping[str, int | None] = field(default_factory=dict)

    @property
    def crashed(self) -> bool:
        """Oops, panic, BUG (KFENCE and sleeping in atomic context are BUGs too),
        KASAN/UBSAN, a hang, or no guest at all."""
        fatal = {"oops", "panic", "BUG", "KASAN report", "UBSAN report", "KFENCE report",
                 "sleeping in atomic context", "hung task", "RCU stall"}
        return (self.lost is not None or self.killed is not None
                or any(s.kind in fatal for s in self.splats))

    def describe(self) -> str:
        bits: list[str] = []
        if self.lost:
            bits.append(f"lost: {self.lost}")
        if self.killed:
            bits.append(f"hung: {self.killed}")
        bits += [f"{s.kind}: {s.summary}" for s in self.splats]
        return "; ".join(bits) or "clean"


@dataclass(frozen=True, slots=True)
class Timing:
    """The timed call mix: mean nanoseconds per call, overall and per syscall, and of a
    syscall without a spec timed in the same run (``reference_ns``; None if not timed)."""

    calls: int
    ns_per_call: float
    per_syscall: Mapping[str, float] = field(default_factory=dict)
    reference_ns: float | None = None


@dataclass(frozen=True, slots=True)
class KernelRun:
    """Everything one kernel's gate run produced.

    :param label: ``base`` or ``patched``
    :param image: the kernel booted
    :param suite: in-guest suite results (empty when the suite did not run)
    :param health: how the guest ended
    :param specs: specs from the kernel's debugfs; None when it had none
    :param formats: tracepoint event -> its field lines (``ID:`` left out)
    :param calls: per-call records of the probe and fuzz runs
    :param timing: the timed call mix, when it ran
    :param notes: what was missing from the directory, one line each
    :param retries: suite results of each re-run round on this kernel (only the tests
        that failed here and not on the other kernel), ``suite-retry-<n>.ktap``
    """

    label: str
    image: str = ""
    suite: tuple[TestResult, ...] = ()
    health: Health = Health()
    specs: Mapping[str, Spec] | None = None
    formats: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    calls: tuple[CallRecord, ...] = ()
    timing: Timing | None = None
    notes: tuple[str, ...] = ()
    retries: tuple[tuple[TestResult, ...], ...] = ()


def plan_key(plan: Mapping[str, Any]) -> str:
    """A canonical string of a plan (its identity across kernels)."""
    return json.dumps(plan, sort_keys=True, separators=(",", ":"))


def call_to_json(c: CallRecord) -> dict[str, Any]:
    """One ``calls.jsonl`` object."""
    return {"source": c.source, "shard": c.shard, "index": c.index, "plan": dict(c.plan),
            "regs": list(c.regs), "ret": c.ret, "errno": c.errno, "spec_match": c.spec_match,
            "pairs": c.pairs, "findings": list(c.findings)}


def _opt_int(v: Any) -> int | None:
    if v is None:
        return None
    return int(v)


def parse_calls(lines: Iterable[str], *, source: str, origin: str = "<calls>"
                ) -> tuple[CallRecord, ...]:
    """Parse ``calls.jsonl`` lines; a line cut short (a guest that died) is skipped.

    Accepts the aliases a producer may use: ``seed``/``shard`` (joined as the shard
    label), ``n_pairs``/``pair_count`` for ``pairs``, ``finding_kinds`` for ``findings``.
    """
    out: list[CallRecord] = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
            plan = d["plan"]
            if not isinstance(plan, dict):
                raise TypeError("plan is not an object")
            shard = "/".join(str(d[k]) for k in ("seed", "shard") if d.get(k) is not None)
            pairs = next((d[k] for k in ("pairs", "n_pairs", "pair_count") if k in d), None)
            kinds = next((d[k] for k in ("findings", "finding_kinds") if k in d), ())
            out.append(CallRecord(
                source=str(d.get("source") or source), shard=shard or "0",
                # fuzz rows count calls in "n" (their "index" is within a batch)
                index=int(d.get("n", d.get("index", n - 1))), plan=plan,
                regs=tuple(int(r) for r in d.get("regs", ())),
                ret=int(d["ret"]), errno=int(d.get("errno", 0)),
                spec_match=_opt_int(d.get("spec_match")), pairs=_opt_int(pairs),
                findings=tuple(str(k) for k in kinds or ())))
        except (ValueError, KeyError, TypeError) as e:
            log.warning("%s:%d: skipped (%s)", origin, n, e)
    return tuple(out)


def read_calls(path: Path, *, source: str) -> tuple[CallRecord, ...]:
    """Records of one ``calls.jsonl`` file."""
    return parse_calls(path.read_text(errors="replace").splitlines(), source=source,
                       origin=str(path))


_TS_RE = re.compile(r"^(?:<\d>)?(?:\[\s*\d+\.\d+\]\s*)?(?:\[\s*[CT]\d+\]\s*)?")


def _health(path: Path) -> Health:
    d = json.loads(path.read_text())
    splats = tuple(Splat(str(s.get("kind", "?")), _TS_RE.sub("", str(s.get("summary", ""))))
                   for s in d.get("splats", ()))
    return Health(status=_opt_int(d.get("status")), killed=d.get("killed"), splats=splats,
                  lost=d.get("lost"),
                  stages={str(k): _opt_int(v) for k, v in d.get("stages", {}).items()})


def _format_fields(text: str) -> tuple[str, ...]:
    # Event ids differ from build to build; the fields and print fmt are the interface.
    return tuple(" ".join(line.split()) for line in text.splitlines()
                 if line.strip() and not line.startswith("ID:"))


def _timing(path: Path) -> Timing:
    d = json.loads(path.read_text())
    ref = d.get("reference_ns")
    return Timing(calls=int(d["calls"]), ns_per_call=float(d["ns_per_call"]),
                  per_syscall={str(k): float(v) for k, v in d.get("per_syscall", {}).items()},
                  reference_ns=float(ref) if ref else None)


def load_run(root: Path, label: str) -> KernelRun:
    """Load the run directory ``root`` of one kernel.

    :raises UsageError: ``root`` is not a directory
    :raises SpecError: the debugfs copy is there but malformed
    """
    if not root.is_dir():
        raise UsageError(f"{root}: not a run directory")
    notes: list[str] = []
    image = ""
    if (root / "kernel.json").is_file():
        image = str(json.loads((root / "kernel.json").read_text()).get("image", ""))
    health = Health()
    if (root / "guest.json").is_file():
        health = _health(root / "guest.json")
    else:
        notes.append("no guest.json: guest health unknown")
    suite: tuple[TestResult, ...] = ()
    if (root / "suite.ktap").is_file():
        suite = tuple(parse_ktap((root / "suite.ktap").read_text(errors="replace")))
    else:
        notes.append("no suite.ktap: the suite did not run")
    rounds = sorted((int(m.group(1)), f) for f in root.glob("suite-retry-*.ktap")
                    if (m := re.fullmatch(r"suite-retry-(\d+)\.ktap", f.name)))
    retries = tuple(tuple(parse_ktap(f.read_text(errors="replace"))) for _, f in rounds)
    specs: dict[str, Spec] | None = None
    if (root / "kapi" / "list").is_file():
        try:
            specs = load_debugfs(root / "kapi")
        except SpecError as e:
            raise SpecError(f"{label} kernel: {e}", hint=e.hint) from None
    formats: dict[str, tuple[str, ...]] = {}
    for ev in KAPI_EVENTS:
        f = root / "events" / f"{ev}.format"
        if f.is_file():
            formats[ev] = _format_fields(f.read_text(errors="replace"))
    calls: list[CallRecord] = []
    for source in ("probe", "fuzz"):
        f = root / source / "calls.jsonl"
        if f.is_file():
            calls += read_calls(f, source=source)
    timing = _timing(root / "probe" / "timing.json") \
        if (root / "probe" / "timing.json").is_file() else None
    return KernelRun(label=label, image=image, suite=suite, health=health, specs=specs,
                     formats=formats, calls=tuple(calls), timing=timing, notes=tuple(notes),
                     retries=retries)
