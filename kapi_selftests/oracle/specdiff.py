"""The readable diff of two kernels' KAPI specs. Pure.

Compares what validation and the return check read (parameters, their types,
flags and constraints, the return check, the error list), not prose: a spec
whose description changed but whose rules did not has no diff.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass

from kapi_selftests.oracle.spec import ParamSpec, ReturnSpec, Spec

__all__ = ["SpecChangeKind", "SpecChange", "FieldChange", "diff_specs", "diff_spec",
           "diff_fields"]


class SpecChangeKind(enum.Enum):
    ADDED = "added"
    REMOVED = "removed"
    CHANGED = "changed"


@dataclass(frozen=True, slots=True)
class SpecChange:
    """One spec that differs between the kernels.

    :param name: spec name (``sys_open``)
    :param kind: added, removed or changed
    :param lines: what changed, one readable line each (``param[2] mode: mask 0xfff -> 0xffff``)
    """

    name: str
    kind: SpecChangeKind
    lines: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class FieldChange:
    """One fact that differs between two versions of a spec.

    :param what: ``arity``, ``parameters``, ``param``, ``return`` or ``errors``
    :param index: the parameter's index (``param`` only)
    :param key: which fact (``constraint``, ``flags``; ``added``/``removed`` for a
        parameter or for errors)
    :param line: the readable line (``param[2] mode: constraint mask 0xfff -> mask 0xffff``)
    """

    what: str
    index: int | None
    key: str
    line: str


def _param_facts(p: ParamSpec) -> dict[str, str]:
    return {
        "name": p.name,
        "C type": p.ctype,
        "type": p.type.text_name,
        "flags": str(p.flags).removeprefix("ParamFlag.") if p.flags else "NONE",
        "constraint": p.describe_constraint(),
    }


def _ret_facts(r: ReturnSpec) -> dict[str, str]:
    return {
        "defined": str(r.defined),
        "type": r.type_name,
        "check": r.check.name.lower(),
        "success": r.describe(),
        "error values": "?" if r.error_values is None else
        ", ".join(str(v) for v in r.error_values),
    }


def diff_fields(base: Spec, patched: Spec) -> tuple[FieldChange, ...]:
    """Every fact of validation and the return check that differs, one record each."""
    out: list[FieldChange] = []
    if base.syscall_nargs != patched.syscall_nargs:
        out.append(FieldChange("arity", None, "arity",
                               f"arity: {base.syscall_nargs} -> {patched.syscall_nargs}"))
    if len(base.params) != len(patched.params):
        out.append(FieldChange("parameters", None, "parameters",
                               f"parameters: {len(base.params)} -> {len(patched.params)}"))
    for i in range(max(len(base.params), len(patched.params))):
        b = base.params[i] if i < len(base.params) else None
        p = patched.params[i] if i < len(patched.params) else None
        if b is None and p is not None:
            out.append(FieldChange("param", i, "added",
                                   f"param[{i}] {p.name}: added ({p.type.text_name}, "
                                   f"{p.describe_constraint()})"))
            continue
        if p is None and b is not None:
            out.append(FieldChange("param", i, "removed", f"param[{i}] {b.name}: removed"))
            continue
        assert b is not None and p is not None
        fb, fp = _param_facts(b), _param_facts(p)
        for k in fb:
            if fb[k] != fp[k]:
                out.append(FieldChange("param", i, k,
                                       f"param[{i}] {p.name}: {k} {fb[k]} -> {fp[k]}"))
    rb, rp = _ret_facts(base.ret), _ret_facts(patched.ret)
    for k in rb:
        if rb[k] != rp[k]:
            out.append(FieldChange("return", None, k, f"return: {k} {rb[k]} -> {rp[k]}"))
    eb = {e.code: e.name for e in base.errors}
    ep = {e.code: e.name for e in patched.errors}
    added = sorted(set(ep) - set(eb), reverse=True)
    removed = sorted(set(eb) - set(ep), reverse=True)
    if added:
        out.append(FieldChange("errors", None, "added", "errors added: " +
                               ", ".join(f"{ep[c]} ({c})" for c in added)))
    if removed:
        out.append(FieldChange("errors", None, "removed", "errors removed: " +
                               ", ".join(f"{eb[c]} ({c})" for c in removed)))
    return tuple(out)


def diff_spec(base: Spec, patched: Spec) -> tuple[str, ...]:
    """Lines saying how ``patched`` differs from ``base`` (empty: same rules)."""
    return tuple(c.line for c in diff_fields(base, patched))


def _summary(s: Spec) -> tuple[str, ...]:
    lines = [f"param[{i}] {p.name}: {p.type.text_name}, {p.describe_constraint()}"
             for i, p in enumerate(s.params)]
    lines.append(f"return: {s.ret.describe()}")
    lines.append(f"errors: {len(s.errors)} (" +
                 ", ".join(e.name for e in s.errors) + ")")
    return tuple(lines)


def diff_specs(base: Mapping[str, Spec] | None,
               patched: Mapping[str, Spec] | None) -> tuple[SpecChange, ...]:
    """Every spec added, removed or changed from ``base`` to ``patched``.

    None on a side means that kernel exposes no specs (no ``CONFIG_KAPI_SPEC_DEBUGFS``):
    then every spec of the other side is added (or removed).
    """
    b = dict(base or {})
    p = dict(patched or {})
    out: list[SpecChange] = []
    for name in sorted(set(b) | set(p)):
        if name not in b:
            out.append(SpecChange(name, SpecChangeKind.ADDED, _summary(p[name])))
        elif name not in p:
            out.append(SpecChange(name, SpecChangeKind.REMOVED, _summary(b[name])))
        else:
            lines = diff_spec(b[name], p[name])
            if lines:
                out.append(SpecChange(name, SpecChangeKind.CHANGED, lines))
    return tuple(out)
