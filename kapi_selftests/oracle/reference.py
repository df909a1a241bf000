"""The running kernel's specs judged against a reference spec set. Pure except the loader.

The oracle predicts every call from the specs the kernel itself exports, so a
kernel whose own spec is wrong looks self-consistent: drop ``O_CLOEXEC`` from
open's flags mask and the harness predicts the new rejections. This module
compares the kernel's specs with a reference (the built-in v4 model, or a
debugfs dump saved from a base kernel with ``kapi-selftests specs --save DIR``),
parameter by parameter through :func:`kapi_selftests.oracle.specdiff.diff_fields`,
and classes each difference by what it does to callers:

* **stricter** -- the kernel now rejects calls the reference accepts (a
  compatibility regression);
* **looser** -- it accepts calls the reference rejects;
* **stricter and looser** -- both (a constraint replaced by another);
* **return check** -- the return check changed, so ``spec_match`` of calls
  the reference calls correct changes;
* **text only** -- nothing a caller can observe: names, listed errors (an
  unlisted error still gives ``spec_match`` 1), a spec the reference does not know.

Everything but *text only* fails. It does no I/O except :func:`load_reference`.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from kapi_selftests.arch import find_syscall
from kapi_selftests.errors import KapiError, UsageError
from kapi_selftests.oracle.predict import PlanMaterializer, predict
from kapi_selftests.oracle.spec import (
    ConstraintType,
    ParamFlag,
    ParamSpec,
    ParamType,
    Spec,
    SpecSource,
    builtin_specs,
    load_debugfs,
    same_shape,
)
from kapi_selftests.oracle.specdiff import FieldChange, SpecChangeKind, diff_fields, diff_specs
from kapi_selftests.plan import CallPlan
from kapi_selftests.records import Materialized, Prediction

__all__ = ["ENV", "BUILTIN", "DiffClass", "SpecDifference", "load_reference",
           "reference_choice", "compare_to_reference", "classify", "v4_shaped",
           "same_rules", "disagreement"]

#: The environment variable that carries the reference into a guest.
ENV = "KAPI_REFERENCE_SPECS"
BUILTIN = "builtin"


class DiffClass(enum.Enum):
    """What a spec difference does to callers."""

    STRICTER = "stricter"
    LOOSER = "looser"
    BOTH = "stricter and looser"
    RETURN = "return check"
    TEXT_ONLY = "text only"

    @property
    def fails(self) -> bool:
        """Every class but text only is a compatibility difference."""
        return self is not DiffClass.TEXT_ONLY


@dataclass(frozen=True, slots=True)
class SpecDifference:
    """One difference between the kernel's spec and the reference's, classed.

    :param spec: spec name (``sys_open``)
    :param cls: its class
    :param change: what differs, one readable line (from the spec diff)
    :param why: what that means for a caller
    """

    spec: str
    cls: DiffClass
    change: str
    why: str

    @property
    def fails(self) -> bool:
        return self.cls.fails

    def describe(self) -> str:
        """``stricter: sys_open param[1] flags: constraint ... (why)``."""
        return f"{self.cls.value}: {self.spec} {self.change} ({self.why})"


# --------------------------------------------------------------------------
# Loading the reference

def reference_choice(environ: Mapping[str, str] | None = None) -> str:
    """The reference the user chose (``KAPI_REFERENCE_SPECS``): ``builtin``, a directory,
    or ``""`` for the default."""
    e = os.environ if environ is None else environ
    return e.get(ENV, "").strip()


def v4_shaped(specs: Mapping[str, Spec]) -> bool:
    """Whether ``specs`` have the v4 shape: at least one of the five v4 specs, and each
    of those present with the built-in model's parameters, types and constraint kinds."""
    model = builtin_specs()
    present = [n for n in model if n in specs]
    return bool(present) and all(same_shape(specs[n], model[n]) for n in present)


def load_reference(choice: str, kernel: Mapping[str, Spec]) -> tuple[dict[str, Spec], str]:
    """The reference spec set and a line naming it.

    :param choice: ``builtin``, a directory (a saved ``kapi`` debugfs dump, or a directory
        holding one as ``kapi/``), or ``""``: the built-in model when ``kernel`` has the
        v4 shape
    :param kernel: the running kernel's specs (for the default)
    :raises UsageError: no such directory, or no default for a kernel of another shape
    """
    if choice in ("", BUILTIN):
        if choice == "" and not v4_shaped(kernel):
            raise UsageError(
                "the kernel's specs do not have the v4 shape: no built-in reference fits "
                f"(specs: {', '.join(sorted(kernel)) or 'none'})",
                hint="save a base kernel's specs (kapi-selftests specs --save DIR) and pass "
                     "--reference-specs DIR")
        return builtin_specs(), "built-in v4 model"
    d = Path(choice)
    if not (d / "list").is_file() and (d / "kapi" / "list").is_file():
        d = d / "kapi"
    if not (d / "list").is_file():
        raise UsageError(f"reference specs {choice}: no 'list' file there (not a saved "
                         "kapi debugfs dump)",
                         hint="kapi-selftests specs --save DIR writes one")
    return load_debugfs(d), f"specs saved in {d}"


# --------------------------------------------------------------------------
# Classing

_MISMATCH = ("the wrapper passes a different number of registers than the spec has "
             "parameters: every call is rejected")
_RETURN_WHY = ("the return check decides spec_match of every call: returns the reference "
               "calls correct may now be violations, or the reverse")
_ERRORS_WHY = "listed errors only: an unlisted error still gives spec_match=1"
_TYPE_CHECKS = {ParamType.FD: "fd", ParamType.USER_PTR: "user pointer", ParamType.PATH: "path"}
# Constraints that check nothing (BUFFER is checked through the USER_PTR type).
_NO_CHECK = (ConstraintType.NONE,)


def _effect(stricter: bool, looser: bool, why: str) -> tuple[DiffClass, str]:
    if stricter and looser:
        return DiffClass.BOTH, why
    if stricter:
        return DiffClass.STRICTER, why
    if looser:
        return DiffClass.LOOSER, why
    return DiffClass.TEXT_ONLY, why or "the same values are accepted"


def _interval(lo: int, hi: int) -> tuple[int, float]:
    # A range the kernel checks: a negative max (SIZE_MAX in an s64) bounds nothing.
    return lo, float("inf") if hi < 0 else float(hi)


def _intervals(b: tuple[int, float], p: tuple[int, float], what: str) -> tuple[DiffClass, str]:
    stricter = p[0] > b[0] or p[1] < b[1]
    looser = p[0] < b[0] or p[1] > b[1]
    return _effect(stricter, looser, f"{what} {_show(b)} -> {_show(p)}")


def _show(r: tuple[int, float]) -> str:
    return f"[{r[0]}, {'no max' if r[1] == float('inf') else int(r[1])}]"


def _constraint(b: ParamSpec, p: ParamSpec) -> tuple[DiffClass, str]:
    cb, cp = b.constraint, p.constraint
    if cb is not cp:
        if cb in _NO_CHECK:
            return DiffClass.STRICTER, f"constraint {cp.name.lower()} added"
        if cp in _NO_CHECK:
            return DiffClass.LOOSER, f"constraint {cb.name.lower()} dropped"
        return DiffClass.BOTH, (f"constraint {cb.name.lower()} replaced by "
                                f"{cp.name.lower()}")
    c = cp
    if c is ConstraintType.MASK:
        removed = b.valid_mask & ~p.valid_mask
        added = p.valid_mask & ~b.valid_mask
        parts = ([f"bits 0x{removed:x} now rejected"] if removed else []) + \
                ([f"bits 0x{added:x} now accepted"] if added else [])
        return _effect(bool(removed), bool(added), ", ".join(parts))
    if c is ConstraintType.RANGE:
        return _intervals(_interval(b.min_value, b.max_value),
                          _interval(p.min_value, p.max_value), "range")
    if c is ConstraintType.USER_STRING:
        return _intervals(_interval(b.min_value, b.max_value),
                          _interval(p.min_value, p.max_value), "string length")
    if c is ConstraintType.ALIGNMENT:
        a, n = b.alignment, p.alignment
        if a > 0 and n > 0 and n % a == 0:
            return _effect(n > a, False, f"alignment {a} -> {n}")
        if a > 0 and n > 0 and a % n == 0:
            return _effect(False, n < a, f"alignment {a} -> {n}")
        return DiffClass.BOTH, f"alignment {a} -> {n}"
    if c is ConstraintType.USER_PTR:
        # size 0 rejects every non-NULL pointer; otherwise a larger size reaches further
        sb, sp = b.size, p.size
        if sb == 0 or sp == 0:
            return _effect(sp == 0 and sb != 0, sb == 0 and sp != 0,
                           f"user_ptr size {sb} -> {sp}")
        return _effect(sp > sb, sp < sb, f"user_ptr size {sb} -> {sp}")
    if c is ConstraintType.ENUM:
        if b.enum_values is None or p.enum_values is None:
            return DiffClass.BOTH, "enumeration changed (its values are not in the dumps)"
        vb, vp = set(b.enum_values), set(p.enum_values)
        return _effect(bool(vb - vp), bool(vp - vb),
                       f"values {sorted(vb - vp)} dropped, {sorted(vp - vb)} added")
    if c is ConstraintType.BUFFER:
        return DiffClass.BOTH, "the parameter that sizes the buffer changed"
    if c is ConstraintType.CUSTOM:
        return DiffClass.BOTH, "custom validator (a kernel function): cannot tell"
    return DiffClass.TEXT_ONLY, "the constraint has no value to change"


def _type(b: ParamSpec, p: ParamSpec) -> tuple[DiffClass, str]:
    tb, tp = _TYPE_CHECKS.get(b.type), _TYPE_CHECKS.get(p.type)
    if tb == tp:
        return DiffClass.TEXT_ONLY, "no type check added or removed"
    parts = ([f"{tp} check added"] if tp else []) + ([f"{tb} check dropped"] if tb else [])
    return _effect(tp is not None, tb is not None, ", ".join(parts))


def _flags(b: ParamSpec, p: ParamSpec) -> tuple[DiffClass, str]:
    ob, op = bool(b.flags & ParamFlag.OPTIONAL), bool(p.flags & ParamFlag.OPTIONAL)
    if ob == op:
        return DiffClass.TEXT_ONLY, "validation reads only OPTIONAL, which is unchanged"
    checks_null = p.type is ParamType.USER_PTR or p.constraint is ConstraintType.USER_PTR \
        or (p.type is ParamType.FD)
    if not checks_null:
        return DiffClass.TEXT_ONLY, "OPTIONAL changed on a parameter whose check ignores it"
    return _effect(ob and not op, op and not ob,
                   "OPTIONAL dropped: NULL (or a missing fd) now rejected" if ob else
                   "OPTIONAL added: NULL (or a missing fd) now accepted")


def _checked(p: ParamSpec) -> bool:
    return p.constraint not in _NO_CHECK or p.type in _TYPE_CHECKS


def classify(base: Spec, patched: Spec, change: FieldChange) -> tuple[DiffClass, str]:
    """The class of one difference of ``patched`` from ``base`` and why.

    :param base: the reference's spec
    :param patched: the kernel's spec
    :param change: one record of :func:`~kapi_selftests.oracle.specdiff.diff_fields`
    """
    if change.what in ("arity", "parameters"):
        mb = base.syscall_nargs != len(base.params)
        mp = patched.syscall_nargs != len(patched.params)
        if mp and not mb:
            return DiffClass.STRICTER, _MISMATCH
        if mb and not mp:
            return DiffClass.LOOSER, "the reference's parameter count rejected every call"
        return DiffClass.BOTH, "different parameters are validated"
    if change.what == "errors":
        return DiffClass.TEXT_ONLY, _ERRORS_WHY
    if change.what == "return":
        if change.key == "type":
            return DiffClass.TEXT_ONLY, "the return type's name is not checked"
        return DiffClass.RETURN, _RETURN_WHY
    assert change.index is not None
    i = change.index
    if change.key == "added":
        p = patched.params[i]
        return (DiffClass.STRICTER if _checked(p) else DiffClass.TEXT_ONLY,
                "a parameter the reference does not have" +
                (" is checked" if _checked(p) else ", unchecked"))
    if change.key == "removed":
        b = base.params[i]
        return (DiffClass.LOOSER if _checked(b) else DiffClass.TEXT_ONLY,
                "a parameter the reference checks is gone" if _checked(b) else
                "an unchecked parameter is gone")
    b, p = base.params[i], patched.params[i]
    if change.key == "constraint":
        return _constraint(b, p)
    if change.key == "type":
        return _type(b, p)
    if change.key == "flags":
        return _flags(b, p)
    if change.key == "C type":
        return DiffClass.TEXT_ONLY, "the wrapper casts by its SYSCALL_DEFINE type, not this name"
    return DiffClass.TEXT_ONLY, f"the {change.key} is not checked"


def compare_to_reference(reference: Mapping[str, Spec],
                         kernel: Mapping[str, Spec]) -> tuple[SpecDifference, ...]:
    """Every difference of the kernel's specs from the reference's, classed, in spec
    order (one record per changed fact; a spec only one side has is one record)."""
    out: list[SpecDifference] = []
    for c in diff_specs(reference, kernel):
        if c.kind is SpecChangeKind.ADDED:
            out.append(SpecDifference(c.name, DiffClass.TEXT_ONLY, "not in the reference",
                                      "a spec the reference does not know; tested from the "
                                      "kernel's own spec"))
        elif c.kind is SpecChangeKind.REMOVED:
            out.append(SpecDifference(c.name, DiffClass.LOOSER, "not specced by the kernel",
                                      "the kernel no longer validates it: calls the "
                                      "reference rejects run the handler"))
        else:
            for f in diff_fields(reference[c.name], kernel[c.name]):
                cls, why = classify(reference[c.name], kernel[c.name], f)
                out.append(SpecDifference(c.name, cls, f.line, why))
    return tuple(out)


def same_rules(reference: Mapping[str, Spec], kernel: Mapping[str, Spec]) -> tuple[str, ...]:
    """The kernel's specs whose rules are the reference's exactly."""
    changed = {c.name for c in diff_specs(reference, kernel)}
    return tuple(n for n in sorted(kernel) if n in reference and n not in changed)


# --------------------------------------------------------------------------
# Calls judged against both

def _verdict(p: Prediction) -> str:
    if p.rejection is not None:
        return f"rejected ({p.rejection.describe()})"
    if p.undetermined is not None:
        return f"not predicted ({p.undetermined})"
    return "accepted"


def disagreement(plan: CallPlan, kernel: Prediction, ref: Prediction) -> str | None:
    """One line naming both predictions when the kernel's spec and the reference's decide
    ``plan`` differently (accepted, rejected or not predictable), else None."""
    if kernel.rejected == ref.rejected and kernel.accepted == ref.accepted:
        return None
    return (f"{plan.describe()}: the kernel's spec predicts {_verdict(kernel)}, "
            f"the reference {_verdict(ref)}")


def differing_reference(specs: Mapping[str, Spec]) -> dict[str, Spec]:
    """The reference's spec of each kernel spec (from debugfs) that has other rules.

    Empty when the specs are not the kernel's own or no reference loads (the
    campaign's summary says why).
    """
    if not specs or any(s.source is not SpecSource.DEBUGFS for s in specs.values()):
        return {}
    try:
        ref, _ = load_reference(reference_choice(), specs)
    except KapiError:
        return {}
    changed = {d.spec for d in compare_to_reference(ref, specs)}
    return {n: ref[n] for n in changed if n in ref and n in specs}


def predict_calls(mats: Sequence[Materialized], specs: Mapping[str, Spec],
                  materializer: PlanMaterializer,
                  reference: Mapping[str, Spec] | None = None,
                  ) -> tuple[list[Prediction | None], list[str]]:
    """The kernel spec's prediction of each call, and each call the reference decides otherwise.

    Both engines call this before the calls run, while the memory the registers
    name is live: what a rejected call must leave alone is measured from the same
    prediction the call is judged against.

    :param materializer: what made the calls concrete; it answers the oracle about
        its memory (and may cache predictions)
    :param reference: reference specs with other rules than the kernel's, by name
    :return: one prediction per call (None: no spec), and one line per disagreement
    """
    preds: list[Prediction | None] = [None] * len(mats)
    lines: list[str] = []
    for i, m in enumerate(mats):
        abi = find_syscall(m.plan.nr)
        spec = specs.get(abi.spec_name) if abi else None
        if spec is None:
            continue
        pred = preds[i] = materializer.predict(spec, m.regs)
        ref = reference.get(spec.name) if reference else None
        if ref is not None and ref is not spec:
            # the oracle itself: a materialiser may cache predictions by spec name
            line = disagreement(m.plan, pred, predict(ref, m.regs, materializer.memory))
            if line is not None:
                lines.append(line)
    return preds, lines
