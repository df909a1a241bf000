"""Spec coverage of a fuzzing campaign: which constraint sides and listed errors were hit. Pure.

For every spec and every parameter the map counts calls where the parameter
passed validation (the *valid side*: the oracle accepted the call, or rejected
it at a later parameter) and calls the oracle predicted the validator rejects
because of that parameter (the *invalid side*). A parameter that validation
cannot reject (no constraint, not an fd/path/user pointer) has no invalid side.
Every error code the spec lists counts once userspace saw it. The sides come
from the oracle only (never from what the kernel returned), so the generator's
steering, which reads them, is the same on every kernel for the same seed.

Nothing here issues a call or touches memory.
"""

from __future__ import annotations

import enum
import errno as _errno
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from kapi_selftests.oracle.spec import ConstraintType, ParamSpec, ParamType, Spec
from kapi_selftests.records import Prediction

__all__ = ["Side", "Target", "CoverageFigure", "Coverage", "rejectable", "listed_errors"]

#: Kernel-internal restart codes: listed by some specs, never seen by userspace as such.
_INTERNAL_CODES = frozenset((512, 513, 514, 516))


class Side(enum.Enum):
    VALID = "valid"  # the parameter passed its check
    INVALID = "invalid"  # validation rejected the call because of this parameter


@dataclass(frozen=True, slots=True)
class Target:
    """One coverage goal: a side of one parameter of one spec."""

    spec: str
    param: str
    side: Side

    def describe(self) -> str:
        return f"{self.spec}.{self.param}:{self.side.value}"


@dataclass(frozen=True, slots=True)
class CoverageFigure:
    """Coverage as numbers: constraint sides and listed errors hit, of those possible."""

    sides_hit: int
    sides_total: int
    errors_hit: int
    errors_total: int

    @property
    def hit(self) -> int:
        return self.sides_hit + self.errors_hit

    @property
    def total(self) -> int:
        return self.sides_total + self.errors_total

    @property
    def ratio(self) -> float:
        return self.hit / self.total if self.total else 1.0

    def describe(self) -> str:
        return (f"{100 * self.ratio:.1f}% (constraint sides {self.sides_hit}/{self.sides_total},"
                f" listed errors {self.errors_hit}/{self.errors_total})")

    def to_json(self) -> dict[str, Any]:
        return {"sides_hit": self.sides_hit, "sides_total": self.sides_total,
                "errors_hit": self.errors_hit, "errors_total": self.errors_total,
                "ratio": round(self.ratio, 4)}


def rejectable(p: ParamSpec) -> bool:
    """Whether parameter validation can reject a call because of ``p``."""
    return p.constraint is not ConstraintType.NONE or p.type in (
        ParamType.FD, ParamType.PATH, ParamType.USER_PTR)


def listed_errors(spec: Spec) -> dict[int, str]:
    """The positive errno values ``spec`` lists that userspace can see, with one name each."""
    out: dict[int, str] = {}
    for e in spec.errors:
        code = abs(e.code)
        if code in _INTERNAL_CODES:
            continue
        out.setdefault(code, _errno.errorcode.get(code) or e.name)
    return out


def _outcome(p: Prediction | None) -> int | None:
    # What coverage counts of a prediction: None (none, or undetermined), -1 (the
    # validator accepts: every parameter passed) or the index of the rejected
    # parameter (those before it passed). A rejection with no index (the parameter
    # count) names no parameter: its parameters count on their valid side.
    if p is None or p.undetermined is not None:
        return None
    rej = p.rejection
    if rej is None or rej.index is None:
        return -1
    return rej.index


class Coverage:
    """Counts per (spec, parameter, side) and per (spec, errno); mergeable, JSON round trip.

    :param specs: the specs whose goals are counted (others are ignored)
    """

    def __init__(self, specs: Mapping[str, Spec]) -> None:
        self.specs = dict(specs)
        self.sides: dict[Target, int] = {}
        self.errors: dict[tuple[str, int], int] = {}
        self.unlisted: dict[tuple[str, int], int] = {}
        self.calls: dict[str, int] = {}
        #: steered calls per goal (the generator's bookkeeping; saved for resumes)
        self.attempts: dict[Target, int] = {}
        self._param_targets: dict[str, list[tuple[Target, Target]]] = {}
        for s in self.specs.values():
            for t in self.goals(s):
                self.sides[t] = 0
            for code in listed_errors(s):
                self.errors[(s.name, code)] = 0

    @staticmethod
    def goals(spec: Spec) -> list[Target]:
        out = []
        for p in spec.params:
            out.append(Target(spec.name, p.name, Side.VALID))
            if rejectable(p):
                out.append(Target(spec.name, p.name, Side.INVALID))
        return out

    def add(self, spec_name: str, prediction: Prediction | None, err: int) -> list[Target]:
        """Count one call: its prediction (None: not predicted) and the errno userspace saw.

        :return: the targets this call hit for the first time
        """
        return self._add(spec_name, _outcome(prediction), err, 1)

    def add_many(self, calls: Iterable[tuple[str, Prediction | None, int]]) -> list[Target]:
        """:meth:`add` for many calls (a batch): equal outcomes are counted once.

        :return: the targets the calls hit for the first time
        """
        counts = Counter((s, _outcome(p), e) for s, p, e in calls)
        new: list[Target] = []
        for (spec_name, outcome, err), n in counts.items():
            new += self._add(spec_name, outcome, err, n)
        return new

    def _add(self, spec_name: str, outcome: int | None, err: int, n: int) -> list[Target]:
        # outcome: None (not predicted), -1 (accepted) or the rejected parameter's index
        spec = self.specs.get(spec_name)
        if spec is None:
            return []
        self.calls[spec_name] = self.calls.get(spec_name, 0) + n
        new: list[Target] = []
        if outcome is not None:
            targets = self._param_targets.get(spec.name)
            if targets is None:
                targets = self._param_targets[spec.name] = [
                    (Target(spec.name, p.name, Side.VALID), Target(spec.name, p.name, Side.INVALID))
                    for p in spec.params]
            for i, (valid, invalid) in enumerate(targets):
                if 0 <= outcome < i:
                    break
                t = invalid if outcome == i else valid
                if t in self.sides:
                    if self.sides[t] == 0:
                        new.append(t)
                    self.sides[t] += n
        if err:
            key = (spec.name, err)
            if key in self.errors:
                self.errors[key] += n
            else:
                self.unlisted[key] = self.unlisted.get(key, 0) + n
        return new

    def missing(self) -> list[Target]:
        """Sides no call has hit yet, in spec and parameter order."""
        return [t for t, n in self.sides.items() if n == 0]

    def missing_errors(self, spec_name: str) -> list[int]:
        return [c for (s, c), n in self.errors.items() if s == spec_name and n == 0]

    def figure(self) -> CoverageFigure:
        return CoverageFigure(sides_hit=sum(1 for n in self.sides.values() if n),
                              sides_total=len(self.sides),
                              errors_hit=sum(1 for n in self.errors.values() if n),
                              errors_total=len(self.errors))

    def merge(self, other: Coverage) -> None:
        """Add ``other``'s counts to this map (shards of one campaign)."""
        for t, n in other.sides.items():
            self.sides[t] = self.sides.get(t, 0) + n
        for k, n in other.errors.items():
            self.errors[k] = self.errors.get(k, 0) + n
        for k, n in other.unlisted.items():
            self.unlisted[k] = self.unlisted.get(k, 0) + n
        for s, n in other.calls.items():
            self.calls[s] = self.calls.get(s, 0) + n
        for t, n in other.attempts.items():
            self.attempts[t] = self.attempts.get(t, 0) + n

    def to_json(self) -> dict[str, Any]:
        return {
            "sides": [{"spec": t.spec, "param": t.param, "side": t.side.value, "calls": n}
                      for t, n in self.sides.items()],
            "errors": [{"spec": s, "errno": c, "name": _errno.errorcode.get(c, str(c)),
                        "calls": n} for (s, c), n in self.errors.items()],
            "unlisted": [{"spec": s, "errno": c, "name": _errno.errorcode.get(c, str(c)),
                          "calls": n} for (s, c), n in self.unlisted.items()],
            "calls": dict(self.calls),
            "attempts": [{"spec": t.spec, "param": t.param, "side": t.side.value, "calls": n}
                         for t, n in self.attempts.items()],
            "figure": self.figure().to_json(),
        }

    def load_json(self, d: Mapping[str, Any]) -> None:
        """Add the counts of a :meth:`to_json` dump (resume, merge)."""
        for e in d.get("sides", ()):
            t = Target(str(e["spec"]), str(e["param"]), Side(e["side"]))
            self.sides[t] = self.sides.get(t, 0) + int(e["calls"])
        for e in d.get("errors", ()):
            k = (str(e["spec"]), int(e["errno"]))
            self.errors[k] = self.errors.get(k, 0) + int(e["calls"])
        for e in d.get("unlisted", ()):
            k = (str(e["spec"]), int(e["errno"]))
            self.unlisted[k] = self.unlisted.get(k, 0) + int(e["calls"])
        for s, n in dict(d.get("calls", {})).items():
            self.calls[str(s)] = self.calls.get(str(s), 0) + int(n)
        for e in d.get("attempts", ()):
            t = Target(str(e["spec"]), str(e["param"]), Side(e["side"]))
            self.attempts[t] = self.attempts.get(t, 0) + int(e["calls"])

    def table(self) -> list[str]:
        """A Markdown table per syscall: each parameter's sides, then the listed errors."""
        lines: list[str] = []
        for s in self.specs.values():
            lines += [f"### {s.name} ({self.calls.get(s.name, 0)} calls)", "",
                      "| parameter | constraint | valid side | invalid side |",
                      "|---|---|---|---|"]
            for p in s.params:
                v = self.sides.get(Target(s.name, p.name, Side.VALID), 0)
                inv = self.sides.get(Target(s.name, p.name, Side.INVALID))
                lines.append(f"| {p.name} | {p.describe_constraint()} | {_cell(v)} | "
                             f"{'n/a' if inv is None else _cell(inv)} |")
            names = listed_errors(s)
            hit = [f"{names.get(c, c)} ({n})"
                   for (sn, c), n in self.errors.items() if sn == s.name and n]
            miss = [str(names.get(c, c)) for c in self.missing_errors(s.name)]
            other = [f"{_errno.errorcode.get(c, c)} ({n})"
                     for (sn, c), n in self.unlisted.items() if sn == s.name]
            lines += ["", f"- errors seen: {', '.join(hit) or 'none'}",
                      f"- listed, never seen: {', '.join(miss) or 'none'}"]
            if other:
                lines.append(f"- seen but not listed: {', '.join(other)}")
            lines.append("")
        return lines


def _cell(n: int) -> str:
    return f"{n}" if n else "**0**"

