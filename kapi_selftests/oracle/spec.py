"""The KAPI spec model: what a kernel's spec says about a syscall, as frozen data.

Three sources feed the same model:

* :func:`builtin_specs` -- the five specs of the v4 series (``sys_open``,
  ``sys_close``, ``sys_read``, ``sys_write``, ``sys_madvise``), restated from
  their ``kernel-doc`` DSL, for kernels without ``CONFIG_KAPI_SPEC_DEBUGFS``;
* :func:`load_debugfs` -- the running kernel's ``/sys/kernel/debug/kapi``:
  ``list``, the text dumps ``specs/<name>`` (the only place that carries
  parameter constraints) and the JSON dumps ``specs-json/<name>`` (exact
  flags, return check, error codes);
* :func:`find_source_hints` -- the spec DSL in a kernel tree's sources, which
  fills what the dumps cannot show (which parameter sizes a buffer).

Whatever a source could not tell is listed in :attr:`Spec.unknowns`, so the
oracle can say "cannot know" instead of guessing. Pure except the explicit
loaders (``load_debugfs``, ``find_source_hints``, ``missing_kapi_specs``).
"""

from __future__ import annotations

import contextlib
import enum
import json
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from kapi_selftests import arch
from kapi_selftests.errors import SpecError
from kapi_selftests.oracle.ctype import parse_ctype, split_type_name

__all__ = [
    "ParamType",
    "ParamFlag",
    "ConstraintType",
    "ReturnCheck",
    "SpecSource",
    "ParamSpec",
    "ReturnSpec",
    "ErrorSpec",
    "Spec",
    "SourceHint",
    "builtin_specs",
    "load_debugfs",
    "specs_files",
    "write_specs",
    "parse_text_dump",
    "parse_json_dump",
    "parse_list",
    "merge_dumps",
    "apply_hints",
    "parse_source_hints",
    "find_source_hints",
    "missing_kapi_specs",
    "same_shape",
    "DEBUGFS_ROOT",
    "S64_MAX",
]

log = logging.getLogger(__name__)

DEBUGFS_ROOT = Path("/sys/kernel/debug/kapi")
S64_MAX = (1 << 63) - 1
INT_MAX = (1 << 31) - 1


class ParamType(enum.Enum):
    """``enum kapi_param_type``; values are the kernel's enumerators."""

    VOID = 0
    INT = 1
    UINT = 2
    PTR = 3
    STRUCT = 4
    UNION = 5
    ENUM = 6
    FUNC_PTR = 7
    ARRAY = 8
    FD = 9
    USER_PTR = 10
    PATH = 11
    CUSTOM = 12

    @property
    def text_name(self) -> str:
        """The name the debugfs text dump prints (``type: fd (...)``)."""
        return _TEXT_TYPE_NAMES[self]

    @property
    def json_name(self) -> str:
        """The name the JSON dump prints as ``type_class``."""
        return _JSON_TYPE_NAMES[self]

    @property
    def decimal_in_trace(self) -> bool:
        """``kapi_syscall_enter`` prints INT and FD parameters in decimal, the rest in hex."""
        return self in (ParamType.INT, ParamType.FD)


_TEXT_TYPE_NAMES = {
    ParamType.VOID: "void", ParamType.INT: "int", ParamType.UINT: "uint", ParamType.PTR: "ptr",
    ParamType.STRUCT: "struct", ParamType.UNION: "union", ParamType.ENUM: "enum",
    ParamType.FUNC_PTR: "func_ptr", ParamType.ARRAY: "array", ParamType.FD: "fd",
    ParamType.USER_PTR: "user_ptr", ParamType.PATH: "path", ParamType.CUSTOM: "custom",
}
_JSON_TYPE_NAMES = {
    ParamType.VOID: "void", ParamType.INT: "int", ParamType.UINT: "uint",
    ParamType.PTR: "pointer", ParamType.STRUCT: "struct", ParamType.UNION: "union",
    ParamType.ENUM: "enum", ParamType.FUNC_PTR: "function_pointer", ParamType.ARRAY: "array",
    ParamType.FD: "file_descriptor", ParamType.USER_PTR: "user_pointer",
    ParamType.PATH: "pathname", ParamType.CUSTOM: "custom",
}


class ParamFlag(enum.IntFlag):
    """``enum kapi_param_flags``."""

    NONE = 0
    IN = 1 << 0
    OUT = 1 << 1
    OPTIONAL = 1 << 3
    CONST = 1 << 4
    VOLATILE = 1 << 5
    USER = 1 << 6
    DMA = 1 << 7
    ALIGNED = 1 << 8


class ConstraintType(enum.Enum):
    """``enum kapi_constraint_type``; values are the kernel's enumerators."""

    NONE = 0
    RANGE = 1
    MASK = 2
    ENUM = 3
    ALIGNMENT = 4
    POWER_OF_TWO = 5
    PAGE_ALIGNED = 6
    NONZERO = 7
    USER_STRING = 8
    USER_PATH = 9
    USER_PTR = 10
    BUFFER = 11
    CUSTOM = 12


class ReturnCheck(enum.Enum):
    """``enum kapi_return_check_type``; values are the kernel's enumerators."""

    EXACT = 0
    RANGE = 1
    ERROR_CHECK = 2
    FD = 3
    CUSTOM = 4
    NO_RETURN = 5

    @property
    def json_name(self) -> str:
        return _JSON_CHECK_NAMES[self]


_JSON_CHECK_NAMES = {
    ReturnCheck.EXACT: "exact", ReturnCheck.RANGE: "range",
    ReturnCheck.ERROR_CHECK: "error_check", ReturnCheck.FD: "file_descriptor",
    ReturnCheck.CUSTOM: "custom", ReturnCheck.NO_RETURN: "no_return",
}


class SpecSource(enum.Enum):
    """Where a spec came from."""

    BUILTIN = "builtin"
    DEBUGFS = "debugfs"


@dataclass(frozen=True, slots=True)
class ParamSpec:
    """One parameter of a spec (``struct kapi_param_spec``, the fields validation reads).

    :param name: parameter name (``fd``)
    :param ctype: its C type without the name (``unsigned int``)
    :param type: the KAPI type class
    :param flags: ``KAPI_PARAM_*`` flags
    :param constraint: constraint type
    :param min_value: ``min_value`` (range, user_string min length)
    :param max_value: ``max_value`` as the kernel stores it: ``s64`` (``SIZE_MAX`` is -1)
    :param valid_mask: ``valid_mask`` (u64)
    :param enum_values: the valid values, or None when the source does not show them
    :param alignment: ``alignment`` in bytes
    :param size: fixed ``size`` in bytes
    :param size_param: 0-based index of the parameter that sizes this buffer, or None
    :param size_param_known: False when the source cannot show ``size_param`` (debugfs)
    :param size_multiplier: ``size_multiplier`` (the v4 DSL cannot set it: 0)
    """

    name: str
    ctype: str
    type: ParamType
    flags: ParamFlag = ParamFlag.IN
    constraint: ConstraintType = ConstraintType.NONE
    min_value: int = 0
    max_value: int = 0
    valid_mask: int = 0
    enum_values: tuple[int, ...] | None = ()
    alignment: int = 0
    size: int = 0
    size_param: int | None = None
    size_param_known: bool = True
    size_multiplier: int = 0

    @property
    def optional(self) -> bool:
        return bool(self.flags & ParamFlag.OPTIONAL)

    def describe_constraint(self) -> str:
        """One line: ``range [0, 2147483647]``, ``mask 0xfff``, ``buffer sized by count``."""
        c = self.constraint
        if c is ConstraintType.RANGE:
            if self.max_value < 0:
                return f"range [{self.min_value}, {self.max_value}] (max < 0: only min checked)"
            return f"range [{self.min_value}, {self.max_value}]"
        if c is ConstraintType.MASK:
            return f"mask 0x{self.valid_mask:x}"
        if c is ConstraintType.ENUM:
            vals = "?" if self.enum_values is None else ", ".join(map(str, self.enum_values))
            return f"enum {{{vals}}}"
        if c is ConstraintType.ALIGNMENT:
            return f"alignment {self.alignment}"
        if c is ConstraintType.USER_STRING:
            return f"user_string len [{self.min_value}, {self.max_value}]"
        if c is ConstraintType.USER_PTR:
            return f"user_ptr size {self.size}"
        if c is ConstraintType.BUFFER:
            if not self.size_param_known:
                return "buffer (sizing parameter unknown)"
            return "buffer" + (f" sized by param {self.size_param}"
                               if self.size_param is not None else "")
        return c.name.lower()


@dataclass(frozen=True, slots=True)
class ReturnSpec:
    """``struct kapi_return_spec`` plus whether ``KAPI_RETURN`` was given at all.

    :param defined: the spec has a return section (``return_magic`` set)
    :param type_name: the declared return type name
    :param check: how success is recognised
    :param success_value: EXACT value
    :param success_min: RANGE low end
    :param success_max: RANGE high end
    :param error_values: ERROR_CHECK list; None when the source does not show it
    """

    defined: bool = True
    type_name: str = "KAPI_TYPE_INT"
    check: ReturnCheck = ReturnCheck.EXACT
    success_value: int = 0
    success_min: int = 0
    success_max: int = 0
    error_values: tuple[int, ...] | None = ()

    def describe(self) -> str:
        if not self.defined:
            return "no return spec"
        if self.check is ReturnCheck.EXACT:
            return f"== {self.success_value}"
        if self.check is ReturnCheck.RANGE:
            return f"[{self.success_min}, {self.success_max}]"
        if self.check is ReturnCheck.FD:
            return "file descriptor (>= 0)"
        return self.check.name.lower()


@dataclass(frozen=True, slots=True)
class ErrorSpec:
    """One listed error: ``code`` is negative (``-9``), ``name`` ``EBADF``."""

    code: int
    name: str
    condition: str = ""


@dataclass(frozen=True, slots=True)
class Spec:
    """A syscall's KAPI spec: what runtime validation and the return check read.

    :param name: spec name (``sys_read``), as the kapi events carry it
    :param params: parameters in register order
    :param ret: the return spec
    :param errors: listed errors
    :param nr: x86-64 syscall number, if known
    :param nargs: the ``SYSCALL_DEFINE`` arity (what the wrapper passes as ``param_count``)
    :param source: where this spec came from
    :param unknowns: what the source could not show, one line each
    :param filled: facts the source could not show, filled from elsewhere, one line each
    """

    name: str
    params: tuple[ParamSpec, ...]
    ret: ReturnSpec
    errors: tuple[ErrorSpec, ...] = ()
    nr: int | None = None
    nargs: int | None = None
    source: SpecSource = SpecSource.BUILTIN
    unknowns: tuple[str, ...] = field(default=())
    filled: tuple[str, ...] = field(default=())

    @property
    def syscall_nargs(self) -> int:
        """Registers the wrapper passes: the SYSCALL_DEFINE arity, else the spec's count."""
        return self.nargs if self.nargs is not None else len(self.params)

    @property
    def error_codes(self) -> frozenset[int]:
        return frozenset(e.code for e in self.errors)

    def param(self, name: str) -> ParamSpec:
        for p in self.params:
            if p.name == name:
                return p
        raise SpecError(f"spec {self.name}: no parameter {name!r}")

    def ctypes(self) -> tuple[str, ...]:
        """C types of the syscall's registers (the ABI table wins over the spec's type names)."""
        abi = arch.find_syscall(self.name)
        if abi is not None and abi.nr == self.nr and abi.params_known:
            return tuple(t for t, _ in abi.params)
        return tuple(p.ctype for p in self.params)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready view (used by ``kapi-selftests specs --json``)."""
        return {
            "name": self.name,
            "nr": self.nr,
            "nargs": self.syscall_nargs,
            "source": self.source.value,
            "params": [
                {
                    "name": p.name, "ctype": p.ctype, "type": p.type.text_name,
                    "flags": int(p.flags), "constraint": p.constraint.name.lower(),
                    "min": p.min_value, "max": p.max_value, "valid_mask": p.valid_mask,
                    "enum_values": None if p.enum_values is None else list(p.enum_values),
                    "alignment": p.alignment, "size": p.size,
                    "size_param": p.size_param if p.size_param_known else "unknown",
                    "size_multiplier": p.size_multiplier,
                }
                for p in self.params
            ],
            "return": {
                "defined": self.ret.defined, "check": self.ret.check.json_name,
                "success_value": self.ret.success_value, "success_min": self.ret.success_min,
                "success_max": self.ret.success_max,
                "error_values": (None if self.ret.error_values is None
                                 else list(self.ret.error_values)),
            },
            "errors": [{"code": e.code, "name": e.name} for e in self.errors],
            "unknowns": list(self.unknowns),
            "filled": list(self.filled),
        }


# --------------------------------------------------------------------------
# Built-in model of the five v4 specs
# --------------------------------------------------------------------------

def _errors(*pairs: tuple[str, int]) -> tuple[ErrorSpec, ...]:
    return tuple(ErrorSpec(-code, name) for name, code in pairs)


_FD_RANGE = {"constraint": ConstraintType.RANGE, "min_value": 0, "max_value": INT_MAX}
# range(0, SIZE_MAX): SIZE_MAX stored in an s64 is -1
_SIZE_RANGE = {"constraint": ConstraintType.RANGE, "min_value": 0, "max_value": -1}
_RW_RETURN = ReturnSpec(check=ReturnCheck.RANGE, success_min=0, success_max=S64_MAX)
_OPEN_FLAGS_MASK = 0x7FFFC3  # every O_* flag the open spec lists, on x86-64
_MODE_MASK = 0o7777  # S_ISUID|S_ISGID|S_ISVTX|S_IRWXU|S_IRWXG|S_IRWXO


def builtin_specs() -> dict[str, Spec]:
    """The five specs of the KAPI v4 series, as its DSL defines them (x86-64).

    Includes what debugfs cannot show: ``buf`` of read/write is sized by
    parameter 2 (``count``), with ``size_multiplier`` 0.
    """
    p_in = ParamFlag.IN
    specs = [
        Spec(
            name="sys_open",
            params=(
                ParamSpec("filename", "const char __user *", ParamType.PATH,
                          p_in | ParamFlag.USER, ConstraintType.USER_PATH),
                ParamSpec("flags", "int", ParamType.INT, p_in, ConstraintType.MASK,
                          valid_mask=_OPEN_FLAGS_MASK),
                ParamSpec("mode", "umode_t", ParamType.UINT, p_in, ConstraintType.MASK,
                          valid_mask=_MODE_MASK),
            ),
            ret=ReturnSpec(check=ReturnCheck.FD),
            errors=_errors(
                ("EACCES", 13), ("EAGAIN", 11), ("EBUSY", 16), ("EDQUOT", 122), ("EEXIST", 17),
                ("EFAULT", 14), ("EINTR", 4), ("EINVAL", 22), ("EISDIR", 21), ("ELOOP", 40),
                ("EMFILE", 24), ("ENAMETOOLONG", 36), ("ENFILE", 23), ("ENODEV", 19),
                ("ENOENT", 2), ("ENOMEM", 12), ("ENOSPC", 28), ("ENOTDIR", 20), ("ENXIO", 6),
                ("EOPNOTSUPP", 95), ("EOVERFLOW", 75), ("EPERM", 1), ("EROFS", 30),
                ("ETXTBSY", 26), ("EWOULDBLOCK", 11),
            ),
        ),
        Spec(
            name="sys_close",
            params=(ParamSpec("fd", "unsigned int", ParamType.FD, p_in, **_FD_RANGE),),  # type: ignore[arg-type]
            ret=ReturnSpec(check=ReturnCheck.EXACT, success_value=0),
            errors=_errors(("EBADF", 9), ("EINTR", 4), ("EIO", 5), ("ENOSPC", 28),
                           ("EDQUOT", 122)),
        ),
        Spec(
            name="sys_read",
            params=(
                ParamSpec("fd", "unsigned int", ParamType.FD, p_in, **_FD_RANGE),  # type: ignore[arg-type]
                ParamSpec("buf", "char __user *", ParamType.USER_PTR,
                          ParamFlag.OUT | ParamFlag.USER, ConstraintType.BUFFER, size_param=2),
                ParamSpec("count", "size_t", ParamType.UINT, p_in, **_SIZE_RANGE),  # type: ignore[arg-type]
            ),
            ret=_RW_RETURN,
            errors=_errors(
                ("EBADF", 9), ("EFAULT", 14), ("EINVAL", 22), ("EISDIR", 21), ("EAGAIN", 11),
                ("EWOULDBLOCK", 11), ("EINTR", 4), ("EIO", 5), ("EOVERFLOW", 75),
                ("ENOBUFS", 105), ("ERESTARTSYS", 512), ("EACCES", 13), ("EPERM", 1),
                ("ENODATA", 61), ("EOPNOTSUPP", 95),
            ),
        ),
        Spec(
            name="sys_write",
            params=(
                ParamSpec("fd", "unsigned int", ParamType.FD, p_in, **_FD_RANGE),  # type: ignore[arg-type]
                ParamSpec("buf", "const char __user *", ParamType.USER_PTR,
                          p_in | ParamFlag.USER, ConstraintType.BUFFER, size_param=2),
                ParamSpec("count", "size_t", ParamType.UINT, p_in, **_SIZE_RANGE),  # type: ignore[arg-type]
            ),
            ret=_RW_RETURN,
            errors=_errors(
                ("EBADF", 9), ("EFAULT", 14), ("EINVAL", 22), ("EAGAIN", 11),
                ("EWOULDBLOCK", 11), ("EINTR", 4), ("EPIPE", 32), ("EFBIG", 27), ("ENOSPC", 28),
                ("EDQUOT", 122), ("EIO", 5), ("EPERM", 1), ("EOVERFLOW", 75),
                ("EDESTADDRREQ", 89), ("ETXTBSY", 26), ("EXDEV", 18), ("ENOMEM", 12),
                ("ERESTARTSYS", 512), ("EACCES", 13),
            ),
        ),
        Spec(
            name="sys_madvise",
            params=(
                ParamSpec("start", "unsigned long", ParamType.UINT, p_in,
                          ConstraintType.PAGE_ALIGNED),
                ParamSpec("len_in", "size_t", ParamType.UINT, p_in, **_SIZE_RANGE),  # type: ignore[arg-type]
                ParamSpec("behavior", "int", ParamType.INT, p_in),
            ),
            ret=ReturnSpec(check=ReturnCheck.EXACT, success_value=0),
            errors=_errors(
                ("EINVAL", 22), ("ENOMEM", 12), ("EAGAIN", 11), ("EIO", 5), ("EBADF", 9),
                ("EACCES", 13), ("EPERM", 1), ("EINTR", 4), ("EHWPOISON", 133),
                ("EFAULT", 14), ("EBUSY", 16),
            ),
        ),
    ]
    out: dict[str, Spec] = {}
    for s in specs:
        abi = arch.find_syscall(s.name)
        out[s.name] = replace(s, nr=abi.nr if abi else None,
                              nargs=len(abi.params) if abi else None)
    return out


# --------------------------------------------------------------------------
# debugfs loaders
# --------------------------------------------------------------------------

def parse_list(text: str) -> tuple[str, ...]:
    """Spec names from ``kapi/list`` (lines ``name - description``)."""
    names = []
    for line in text.splitlines():
        m = re.match(r"^(\S+) - ", line)
        if m:
            names.append(m.group(1))
    return tuple(names)


_TEXT_TYPES = {v: k for k, v in _TEXT_TYPE_NAMES.items()}
_JSON_TYPES = {v: k for k, v in _JSON_TYPE_NAMES.items()}
_JSON_CHECKS = {v: k for k, v in _JSON_CHECK_NAMES.items()}
_TEXT_FLAGS = {
    "IN": ParamFlag.IN, "OUT": ParamFlag.OUT, "INOUT": ParamFlag.IN | ParamFlag.OUT,
    "OPTIONAL": ParamFlag.OPTIONAL, "CONST": ParamFlag.CONST, "USER": ParamFlag.USER,
    "VOLATILE": ParamFlag.VOLATILE, "DMA": ParamFlag.DMA, "ALIGNED": ParamFlag.ALIGNED,
}
_TEXT_CONSTRAINTS = {
    "range": ConstraintType.RANGE, "mask": ConstraintType.MASK, "enum": ConstraintType.ENUM,
    "user_string": ConstraintType.USER_STRING, "user_path": ConstraintType.USER_PATH,
    "user_ptr": ConstraintType.USER_PTR, "alignment": ConstraintType.ALIGNMENT,
    "power_of_two": ConstraintType.POWER_OF_TWO, "page_aligned": ConstraintType.PAGE_ALIGNED,
    "nonzero": ConstraintType.NONZERO, "custom": ConstraintType.CUSTOM,
}


_HEADER_RE = re.compile(
    r"^(Parameters|Return value|Errors|Locks|Additional constraints|Signal handling|"
    r"Side effects|State transitions|Capabilities|Examples|Notes)(?: \((\d+)\))?:$")
_SECTIONS = {"Parameters": "params", "Return value": "return", "Errors": "errors"}


def _int(text: str, what: str) -> int:
    try:
        return int(text.strip(), 0)
    except ValueError:
        raise SpecError(f"{what}: not a number: {text.strip()!r}") from None


def parse_text_dump(text: str, *, origin: str = "<text dump>") -> Spec:
    """Parse one ``specs/<name>`` text dump into a :class:`Spec` (source DEBUGFS).

    The text dump shows constraints but not which parameter sizes a buffer,
    nor enum values, nor the error list of an ERROR_CHECK return; those are
    recorded in :attr:`Spec.unknowns`.

    :raises SpecError: the dump lacks a ``Name:`` line or a field is malformed
    """
    lines = text.splitlines()
    name = next((ln[len("Name: "):].strip() for ln in lines if ln.startswith("Name: ")), None)
    if not name:
        raise SpecError(f"{origin}: no 'Name:' line; not a KAPI text dump")
    params: list[dict[str, Any]] = []
    unknowns: list[str] = []
    ret: dict[str, Any] = {}
    errors: list[ErrorSpec] = []
    section = ""
    cur: dict[str, Any] | None = None
    in_constraints = False
    nparams: int | None = None
    for ln in lines:
        # Only the headers kapi_spec_show() prints switch sections: prose values
        # (descriptions with newlines) may contain unindented lines.
        hm = _HEADER_RE.match(ln)
        if hm:
            section = _SECTIONS.get(hm.group(1), "")
            if section == "params":
                nparams = int(hm.group(2))
            continue
        if not ln.startswith(" "):
            continue
        if section == "params":
            m = re.match(r"^  \[(\d+)\] (.*):$", ln)
            if m:
                cur = {"index": int(m.group(1)), "name": m.group(2), "flags": ParamFlag.NONE,
                       "constraint": ConstraintType.NONE}
                params.append(cur)
                in_constraints = False
                continue
            if cur is None:
                continue
            m = re.match(r"^    (\w+):(.*)$", ln)
            if m:
                key, val = m.group(1), m.group(2).strip()
                in_constraints = key == "constraints"
                if key == "type":
                    tm = re.match(r"^(\w+) \((.*)\)$", val)
                    if not tm or tm.group(1) not in _TEXT_TYPES:
                        raise SpecError(f"{origin}: {name}.{cur['name']}: bad type line {val!r}")
                    cur["type"] = _TEXT_TYPES[tm.group(1)]
                    cur["type_name"] = tm.group(2)
                elif key == "flags":
                    for tok in val.split():
                        cur["flags"] |= _TEXT_FLAGS.get(tok, ParamFlag.NONE)
                elif key == "size":
                    cur["size"] = _int(val, f"{origin}: {name}.{cur['name']}.size")
                elif key == "alignment":
                    cur["alignment"] = _int(val, f"{origin}: {name}.{cur['name']}.alignment")
                elif key == "constraints":
                    # A constraint block with no 'type:' line is KAPI_CONSTRAINT_BUFFER:
                    # the only constraint type the dump prints nothing for.
                    cur["constraint"] = ConstraintType.BUFFER
                continue
            m = re.match(r"^      (\w+):(.*)$", ln)
            if m and in_constraints:
                key, val = m.group(1), m.group(2).strip()
                what = f"{origin}: {name}.{cur['name']}.constraints.{key}"
                if key == "type":
                    if val not in _TEXT_CONSTRAINTS:
                        raise SpecError(f"{what}: unknown constraint type {val!r}")
                    cur["constraint"] = _TEXT_CONSTRAINTS[val]
                elif key in ("min", "min_len"):
                    cur["min_value"] = _int(val, what)
                elif key == "max":
                    cur["max_value"] = _int(val, what)
                elif key == "max_len" and cur["constraint"] is ConstraintType.USER_STRING:
                    cur["max_value"] = _int(val, what)
                elif key == "valid_bits":
                    cur["valid_mask"] = _int(val, what)
                elif key == "count":
                    cur["enum_count"] = _int(val, what)
                elif key == "alignment":
                    cur["alignment"] = _int(val, what)
                elif key == "size":
                    cur["size"] = _int(val.split()[0], what)
        elif section == "return":
            m = re.match(r"^  (\w+): ?(.*)$", ln)
            if not m:
                continue
            key, val = m.group(1), m.group(2).strip()
            if key == "type":
                ret["type_name"] = val
                ret["defined"] = val != "(null)"
            elif key == "success":
                if val.startswith("=="):
                    ret["check"] = ReturnCheck.EXACT
                    ret["success_value"] = _int(val[2:], f"{origin}: {name}.return")
                elif val.startswith("["):
                    lo, hi = val.strip("[]").split(",")
                    ret["check"] = ReturnCheck.RANGE
                    ret["success_min"] = _int(lo, f"{origin}: {name}.return.min")
                    ret["success_max"] = _int(hi, f"{origin}: {name}.return.max")
                elif val.startswith("valid file descriptor"):
                    ret["check"] = ReturnCheck.FD
                elif val == "error check":
                    ret["check"] = ReturnCheck.ERROR_CHECK
                    ret["error_values"] = None
                elif val == "custom check":
                    ret["check"] = ReturnCheck.CUSTOM
        elif section == "errors":
            m = re.match(r"^  (\w+) \((-?\d+)\):", ln)
            if m:
                errors.append(ErrorSpec(int(m.group(2)), m.group(1)))
            else:
                cm = re.match(r"^    condition: (.*)$", ln)
                if cm and errors:
                    errors[-1] = replace(errors[-1], condition=cm.group(1).strip())
    if nparams is not None and [p["index"] for p in params] != list(range(nparams)):
        raise SpecError(f"{origin}: {name}: 'Parameters ({nparams})' but parameters "
                        f"{[p['index'] for p in params]} were found")
    if "check" not in ret:
        # No success line: NO_RETURN (the dump prints nothing for it).
        ret.setdefault("check", ReturnCheck.NO_RETURN)
    pspecs = tuple(_param_from_fields(name, p, unknowns, origin) for p in params)
    if ret.get("check") is ReturnCheck.ERROR_CHECK:
        unknowns.append("return: error_check list of error values (not in the dumps)")
    if ret.get("check") is ReturnCheck.CUSTOM:
        unknowns.append("return: custom success check (a kernel function)")
    return Spec(name=name, params=pspecs, ret=ReturnSpec(**ret), errors=tuple(errors),
                source=SpecSource.DEBUGFS, unknowns=tuple(unknowns))


def _param_from_fields(spec_name: str, p: dict[str, Any], unknowns: list[str],
                       origin: str) -> ParamSpec:
    if "type" not in p:
        raise SpecError(f"{origin}: {spec_name}.{p['name']}: no 'type:' line")
    pname = p["name"]
    ctype = split_type_name(p.get("type_name", ""), pname)
    kw: dict[str, Any] = {k: p[k] for k in ("min_value", "max_value", "valid_mask", "alignment",
                                             "size") if k in p}
    constraint: ConstraintType = p["constraint"]
    if constraint is ConstraintType.ENUM:
        kw["enum_values"] = None
        unknowns.append(f"{pname}: enum values (the dump shows only their count, "
                        f"{p.get('enum_count', '?')})")
    if constraint is ConstraintType.CUSTOM:
        unknowns.append(f"{pname}: custom validator (a kernel function)")
    if p["type"] is ParamType.USER_PTR:
        kw["size_param_known"] = False
        unknowns.append(f"{pname}: which parameter sizes this buffer (size_param_idx) "
                        "and its size_multiplier (not in the dumps)")
    return ParamSpec(name=pname, ctype=ctype, type=p["type"], flags=p["flags"],
                     constraint=constraint, **kw)


def parse_json_dump(text: str, *, origin: str = "<json dump>") -> dict[str, Any]:
    """Parse one ``specs-json/<name>`` dump; returns the decoded object.

    :raises SpecError: not valid JSON (the kernel truncates dumps that overflow its buffer)
    """
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise SpecError(f"{origin}: not valid JSON ({e.msg} at line {e.lineno})",
                        hint="the kernel truncates JSON dumps larger than its buffer") from None
    if not isinstance(obj, dict) or "name" not in obj:
        raise SpecError(f"{origin}: JSON has no 'name'; not a KAPI JSON dump")
    return obj


def merge_dumps(text_spec: Spec, js: Mapping[str, Any] | None, *, origin: str = "") -> Spec:
    """Combine a text dump (constraints) with its JSON dump (exact flags, return, errors).

    :raises SpecError: the two dumps disagree on names, parameters or types
    """
    if js is None:
        return text_spec
    where = origin or text_spec.name
    if js.get("name") != text_spec.name:
        raise SpecError(f"{where}: JSON name {js.get('name')!r} != text name {text_spec.name!r}")
    jparams = js.get("parameters", [])
    if len(jparams) != len(text_spec.params):
        raise SpecError(f"{where}: JSON has {len(jparams)} parameters, "
                        f"text {len(text_spec.params)}")
    params = []
    for p, jp in zip(text_spec.params, jparams, strict=True):
        if jp.get("name") != p.name:
            raise SpecError(f"{where}: parameter {p.name!r} is {jp.get('name')!r} in JSON")
        jtype = _JSON_TYPES.get(str(jp.get("type_class")))
        if jtype is not None and jtype is not p.type:
            raise SpecError(f"{where}: {p.name}: type {p.type.text_name} in text, "
                            f"{jp.get('type_class')} in JSON")
        flags = ParamFlag(_int(str(jp.get("flags", "0")), f"{where}: {p.name}.flags"))
        params.append(replace(p, flags=flags))
    jr = js.get("return", {})
    ret = text_spec.ret
    check = _JSON_CHECKS.get(str(jr.get("check_type")))
    if check is not None:
        ret = replace(ret, check=check)
        if check is ReturnCheck.EXACT and "success_value" in jr:
            ret = replace(ret, success_value=int(jr["success_value"]))
        if check is ReturnCheck.RANGE:
            ret = replace(ret, success_min=int(jr.get("success_min", ret.success_min)),
                          success_max=int(jr.get("success_max", ret.success_max)))
    if jr.get("type") is None:
        ret = replace(ret, defined=False)
    errors = tuple(ErrorSpec(int(e["code"]), str(e["name"]), str(e.get("condition") or ""))
                   for e in js.get("errors", []))
    return replace(text_spec, params=tuple(params), ret=ret, errors=errors or text_spec.errors)


def _attach_abi(spec: Spec, numbers: Mapping[str, int] | None) -> Spec:
    nr = (numbers or {}).get(spec.name)
    abi = arch.find_syscall(spec.name)
    unknowns = list(spec.unknowns)
    if nr is None and abi is not None:
        nr = abi.nr
    nargs = len(abi.params) if abi is not None and abi.nr == nr and abi.params_known else None
    if nr is None:
        unknowns.append("x86-64 syscall number (not in kapi_selftests.arch; pass numbers=)")
    for p in spec.params:
        try:
            parse_ctype(p.ctype)
        except SpecError:
            unknowns.append(f"{p.name}: C type {p.ctype!r} unknown to the cast model")
    return replace(spec, nr=nr, nargs=nargs, unknowns=tuple(unknowns))


def specs_files(root: Path = DEBUGFS_ROOT) -> dict[str, str]:
    """The kernel's debugfs spec dump as {relative path: text} (empty without one): what
    a guest's agent sends the host."""
    out: dict[str, str] = {}
    if not (root / "list").is_file():
        return out
    out["list"] = (root / "list").read_text()
    for sub in ("specs", "specs-json"):
        if (root / sub).is_dir():
            for f in (root / sub).iterdir():
                with contextlib.suppress(OSError):
                    out[f"{sub}/{f.name}"] = f.read_text()
    return out


def write_specs(files: Mapping[str, str], dest: Path) -> None:
    """Write a spec dump (:func:`specs_files`) under ``dest``, as the debugfs lays it out
    (:func:`load_debugfs` reads it there)."""
    for rel, text in files.items():
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        (dest / rel).write_text(text)


def load_debugfs(root: Path = DEBUGFS_ROOT, *, numbers: Mapping[str, int] | None = None,
                 builtin_hints: bool = True) -> dict[str, Spec]:
    """Load every spec the kernel lists under ``root`` (``/sys/kernel/debug/kapi``).

    Reads ``list``, then ``specs/<name>`` (constraints) and, when present,
    ``specs-json/<name>``. Which parameter sizes a buffer is not in either
    dump: for a spec the built-in model also has (same parameters and types),
    that fact is taken from the model (``builtin_hints``); otherwise it stays
    in :attr:`Spec.unknowns`. Use :func:`apply_hints` with
    :func:`find_source_hints` to fill it from a kernel tree.

    :param root: the ``kapi`` debugfs directory
    :param numbers: x86-64 syscall numbers for specs ``kapi_selftests.arch`` does not know
    :raises SpecError: ``list`` is missing or a dump is malformed
    """
    lst = root / "list"
    try:
        names = parse_list(lst.read_text())
    except OSError as e:
        raise SpecError(f"{lst}: cannot read ({e.strerror})",
                        hint="mount debugfs and boot a CONFIG_KAPI_SPEC_DEBUGFS=y kernel") from None
    builtins = builtin_specs() if builtin_hints else {}
    out: dict[str, Spec] = {}
    for name in names:
        tpath = root / "specs" / name
        try:
            text = tpath.read_text()
        except OSError as e:
            raise SpecError(f"{tpath}: cannot read ({e.strerror})") from None
        spec = parse_text_dump(text, origin=str(tpath))
        jpath = root / "specs-json" / name
        if jpath.exists():
            spec = merge_dumps(spec, parse_json_dump(jpath.read_text(), origin=str(jpath)),
                               origin=str(jpath))
        else:
            log.info("%s: no JSON dump; flags and errors from the text dump only", jpath)
        spec = _attach_abi(spec, numbers)
        b = builtins.get(name)
        if b is not None and same_shape(spec, b):
            spec = apply_hints(spec, {p.name: SourceHint(size_param=p.size_param)
                                      for p in b.params if p.type is ParamType.USER_PTR},
                               why="built-in model of the v4 spec")
        out[name] = spec
    return out


def same_shape(a: Spec, b: Spec) -> bool:
    """Same parameters: names, type classes and constraint kinds (values may differ)."""
    return len(a.params) == len(b.params) and all(
        p.name == q.name and p.type is q.type and p.constraint is q.constraint
        for p, q in zip(a.params, b.params, strict=True))


# --------------------------------------------------------------------------
# Source hints: the spec DSL in a kernel tree
# --------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class SourceHint:
    """What the DSL says about a parameter that the dumps do not show.

    :param size_param: 0-based index given by ``buffer(N)`` / ``size-param: N``
    :param enum_values: literal integer values of ``enum(...)``, when all are literals
    """

    size_param: int | None = None
    enum_values: tuple[int, ...] | None = None


def apply_hints(spec: Spec, hints: Mapping[str, SourceHint], *, why: str = "source") -> Spec:
    """Fill unknown facts of ``spec`` from ``hints`` (parameter name -> hint)."""
    params = []
    unknowns = list(spec.unknowns)
    filled = list(spec.filled)
    for p in spec.params:
        h = hints.get(p.name)
        if h is None:
            params.append(p)
            continue
        if not p.size_param_known:
            p = replace(p, size_param=h.size_param, size_param_known=True)
            unknowns = [u for u in unknowns if not u.startswith(f"{p.name}: which parameter")]
            filled.append(f"{p.name}: sized by parameter {h.size_param} (from {why})")
            log.debug("%s.%s: size parameter %s from %s", spec.name, p.name, h.size_param, why)
        if p.enum_values is None and h.enum_values is not None:
            p = replace(p, enum_values=h.enum_values)
            unknowns = [u for u in unknowns if not u.startswith(f"{p.name}: enum values")]
            filled.append(f"{p.name}: enum values {h.enum_values} (from {why})")
        params.append(p)
    return replace(spec, params=tuple(params), unknowns=tuple(unknowns), filled=tuple(filled))


_DEFINE_RE = re.compile(r"SYSCALL_DEFINE\d\(\s*(\w+)")


def parse_source_hints(text: str) -> dict[str, dict[str, SourceHint]]:
    """Scan C source for kernel-doc KAPI blocks before ``SYSCALL_DEFINEn(name, ...)``.

    :return: ``{"sys_<name>": {param: SourceHint}}`` for each block with a
        ``buffer(N)`` / ``size-param:`` or literal ``enum(...)`` parameter
    """
    out: dict[str, dict[str, SourceHint]] = {}
    for m in re.finditer(r"/\*\*((?:(?!\*/).)*)\*/\s*SYSCALL_DEFINE\d\(\s*(\w+)", text, re.S):
        body, sysname = m.group(1), m.group(2)
        if "param:" not in body:
            continue
        hints: dict[str, SourceHint] = {}
        cur: str | None = None
        for raw in body.splitlines():
            ln = raw.strip().removeprefix("*").rstrip()
            top = re.match(r"^ ?([a-z-]+):\s*(\S*)", ln)
            if top:
                cur = top.group(2).rstrip(",") if top.group(1) == "param" else None
                continue
            if cur is None:
                continue
            cm = re.match(r"^\s{2,}constraint-type:\s*(\w+)\s*(?:\((.*)\))?", ln)
            sm = re.match(r"^\s{2,}size-param:\s*(\d+)", ln)
            if cm and cm.group(1).lower() == "buffer" and cm.group(2):
                hints[cur] = SourceHint(size_param=int(cm.group(2).strip(), 0))
            elif sm:
                hints[cur] = SourceHint(size_param=int(sm.group(1)))
            elif cm and cm.group(1).lower() == "enum" and cm.group(2):
                try:
                    vals = tuple(int(v.strip(), 0) for v in cm.group(2).split(","))
                except ValueError:
                    continue
                hints[cur] = SourceHint(enum_values=vals)
        if hints:
            out["sys_" + sysname] = hints
    return out


def find_source_hints(tree: Path,
                      names: Iterable[str] | None = None) -> dict[str, dict[str, SourceHint]]:
    """Read the KAPI DSL blocks of a kernel tree (``fs/``, ``mm/``, ``kernel/``, ``net/`` ...).

    :param tree: top of a kernel source tree
    :param names: spec names wanted (``sys_read``); None for all
    :raises SpecError: ``tree`` is not a directory
    """
    if not tree.is_dir():
        raise SpecError(f"{tree}: not a kernel source directory")
    wanted = set(names) if names is not None else None
    out: dict[str, dict[str, SourceHint]] = {}
    for sub in ("fs", "mm", "kernel", "ipc", "net", "security", "block", "arch/x86"):
        d = tree / sub
        if not d.is_dir():
            continue
        for path in sorted(d.rglob("*.c")):
            try:
                text = path.read_text(errors="replace")
            except OSError:
                continue
            if "constraint-type:" not in text or "SYSCALL_DEFINE" not in text:
                continue
            for name, hints in parse_source_hints(text).items():
                if wanted is None or name in wanted:
                    out[name] = hints
    return out


def missing_kapi_specs(root: Path = DEBUGFS_ROOT) -> str | None:
    """Probe for the debugfs spec files; return a skip reason or None."""
    if not root.parent.is_dir():
        return f"{root.parent} not found (mount -t debugfs none /sys/kernel/debug)"
    try:
        if not (root / "list").is_file():
            return (f"{root}/list not found (boot a kernel with CONFIG_KAPI_SPEC=y and "
                    "CONFIG_KAPI_SPEC_DEBUGFS=y)")
        names = parse_list((root / "list").read_text())
    except PermissionError:
        return f"{root} not readable (run as root)"
    except OSError as e:
        return f"{root}/list unreadable ({e.strerror})"
    if not names:
        return f"{root}/list names no specs"
    return None


def load_specs() -> tuple[dict[str, Spec], str]:
    """The specs of the running kernel from debugfs, else the built-in v4 model.

    :return: the specs and a line saying where they came from
    """
    reason = missing_kapi_specs()
    if reason is None:
        try:
            specs = load_debugfs()
            if specs:
                return specs, "specs from /sys/kernel/debug/kapi"
        except Exception as e:  # a malformed dump must not stop the suite: say so, fall back
            log.warning("debugfs specs unreadable (%s); using the built-in model", e)
            reason = str(e)
    return builtin_specs(), f"built-in v4 spec model ({reason})"
