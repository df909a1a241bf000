"""The readable diff of two kernels' KAPI specs. Pure.

Compares what validation and the return check read (parameters, their types,
flags and constraints, the return check, the error list), not prose: a spec
whose description changed but whose rules did not has no diff.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass

from kapi_selftests.spec import ParamSpec, ReturnSpec, Spec

__all__ = ["SpecChangeKind", "SpecChange", "diff_specs", "diff_spec"]


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


def diff_spec(base: Spec, patched: Spec) -> tuple[str, ...]:
    """Lines saying how ``patched`` differs from ``base`` (empty: same rules)."""
    out: list[str] = []
    if base.syscall_nargs != patched.syscall_nargs:
        out.append(f"arity: {base.syscall_nargs} -> {patched.syscall_nargs}")
    if len(base.params) != len(patched.params):
        out.append(f"parameters: {len(base.params)} -> {len(patched.params)}")
    for i in range(max(len(base.params), len(patched.params))):
        b = base.params[i] if i < len(base.params) else None
        p = patched.params[i] if i < len(patched.params) else None
        if b is None and p is not None:
            out.append(f"param[{i}] {p.name}: added ({p.type.text_name}, "
                       f"{p.describe_constraint()})")
            continue
        if p is None and b is not None:
            out.append(f"param[{i}] {b.name}: removed")
            continue
        assert b is not None and p is not None
        fb, fp = _param_facts(b), _param_facts(p)
        for k in fb:
            if fb[k] != fp[k]:
                out.append(f"param[{i}] {p.name}: {k} {fb[k]} -> {fp[k]}")
    rb, rp = _ret_facts(base.ret), _ret_facts(patched.ret)
    for k in rb:
        if rb[k] != rp[k]:
            out.append(f"return: {k} {rb[k]} -> {rp[k]}")
    eb = {e.code: e.name for e in base.errors}
    ep = {e.code: e.name for e in patched.errors}
    added = sorted(set(ep) - set(eb), reverse=True)
    removed = sorted(set(eb) - set(ep), reverse=True)
    if added:
        out.append("errors added: " + ", ".join(f"{ep[c]} ({c})" for c in added))
    if removed:
        out.append("errors removed: " + ", ".join(f"{eb[c]} ({c})" for c in removed))
    return tuple(out)


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
