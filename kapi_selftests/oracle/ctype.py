"""The C casts the x86-64 syscall wrappers apply to each 64-bit register.

With ``CONFIG_KAPI_RUNTIME_CHECKS`` the wrapper receives every register as a
``long``, casts it to the parameter's ``SYSCALL_DEFINE`` C type, and widens
that back to ``s64`` for validation; the ``kapi_syscall_enter`` event stores
the same ``s64`` values in its ``u64 args[6]``. This module models that round
trip exactly (truncation, sign or zero extension) for any register value.

Pure: no I/O. Unknown C types raise :class:`~kapi_selftests.errors.SpecError`
rather than guessing.
"""

from __future__ import annotations

import enum
import functools
import re
from dataclasses import dataclass

from kapi_selftests.arch import MASK64
from kapi_selftests.errors import SpecError

__all__ = ["CKind", "CType", "parse_ctype", "split_type_name", "cast", "to_s64", "to_u64",
           "stored_args"]


class CKind(enum.Enum):
    """How a C type converts a register to its value."""

    SIGNED = "signed"  # truncate to width, sign-extend
    UNSIGNED = "unsigned"  # truncate to width, zero-extend
    BOOL = "bool"  # _Bool: any non-zero register becomes 1
    POINTER = "pointer"  # 64 bits, kept as is


@dataclass(frozen=True, slots=True)
class CType:
    """A scalar C type as the x86-64 wrapper sees it.

    :param spelling: the type as written (``unsigned int``, ``char __user *``)
    :param kind: conversion rule
    :param bits: width in bits (64 for pointers)
    """

    spelling: str
    kind: CKind
    bits: int

    def cast(self, reg: int) -> int:
        """The value after ``(type)(long)reg``, as a Python int (signed types negative)."""
        reg &= MASK64
        if self.kind is CKind.POINTER:
            return reg
        if self.kind is CKind.BOOL:
            return 1 if reg else 0
        v = reg & ((1 << self.bits) - 1)
        if self.kind is CKind.SIGNED and v >> (self.bits - 1):
            v -= 1 << self.bits
        return v


# Base integer types by (signed?, bits); x86-64 LP64 widths.
_INT_WORDS: dict[str, tuple[CKind, int]] = {
    "char": (CKind.SIGNED, 8),  # x86 char is signed
    "signed char": (CKind.SIGNED, 8),
    "unsigned char": (CKind.UNSIGNED, 8),
    "short": (CKind.SIGNED, 16),
    "short int": (CKind.SIGNED, 16),
    "signed short": (CKind.SIGNED, 16),
    "unsigned short": (CKind.UNSIGNED, 16),
    "unsigned short int": (CKind.UNSIGNED, 16),
    "int": (CKind.SIGNED, 32),
    "signed": (CKind.SIGNED, 32),
    "signed int": (CKind.SIGNED, 32),
    "unsigned": (CKind.UNSIGNED, 32),
    "unsigned int": (CKind.UNSIGNED, 32),
    "long": (CKind.SIGNED, 64),
    "long int": (CKind.SIGNED, 64),
    "signed long": (CKind.SIGNED, 64),
    "unsigned long": (CKind.UNSIGNED, 64),
    "unsigned long int": (CKind.UNSIGNED, 64),
    "long long": (CKind.SIGNED, 64),
    "signed long long": (CKind.SIGNED, 64),
    "unsigned long long": (CKind.UNSIGNED, 64),
    "_Bool": (CKind.BOOL, 8),
    "bool": (CKind.BOOL, 8),
}

# Kernel typedefs seen in SYSCALL_DEFINE parameter lists (x86-64 definitions).
_TYPEDEFS: dict[str, str] = {
    "size_t": "unsigned long",
    "ssize_t": "long",
    "loff_t": "long long",
    "off_t": "long",
    "umode_t": "unsigned short",
    "mode_t": "unsigned int",
    "pid_t": "int",
    "uid_t": "unsigned int",
    "gid_t": "unsigned int",
    "qid_t": "unsigned int",
    "old_uid_t": "unsigned short",
    "old_gid_t": "unsigned short",
    "key_serial_t": "int",
    "clockid_t": "int",
    "timer_t": "int",
    "mqd_t": "int",
    "rwf_t": "int",
    "key_t": "int",
    "aio_context_t": "unsigned long",
    "cap_user_header_t": "*",
    "cap_user_data_t": "*",
    "__kernel_old_time_t": "long",
    "time_t": "long",
    "u8": "unsigned char",
    "u16": "unsigned short",
    "u32": "unsigned int",
    "u64": "unsigned long long",
    "s8": "signed char",
    "s16": "short",
    "s32": "int",
    "s64": "long long",
    "__u8": "unsigned char",
    "__u16": "unsigned short",
    "__u32": "unsigned int",
    "__u64": "unsigned long long",
    "__s8": "signed char",
    "__s16": "short",
    "__s32": "int",
    "__s64": "long long",
    "__kernel_size_t": "unsigned long",
    "__kernel_ssize_t": "long",
    "__kernel_pid_t": "int",
    "__kernel_uid32_t": "unsigned int",
    "__kernel_gid32_t": "unsigned int",
    "__kernel_mode_t": "unsigned int",
    "__kernel_off_t": "long",
    "__kernel_loff_t": "long long",
    "__kernel_clockid_t": "int",
    "__kernel_timer_t": "int",
    "__kernel_key_t": "int",
    "__kernel_mqd_t": "int",
    "__kernel_rwf_t": "int",
}

# Qualifiers and annotations that do not change the conversion.
_IGNORED = {"const", "volatile", "__user", "__force", "restrict", "__restrict", "register"}


@functools.lru_cache(maxsize=512)
def parse_ctype(spelling: str) -> CType:
    """Parse a ``SYSCALL_DEFINE`` parameter type (without the parameter name).

    :param spelling: ``unsigned int``, ``umode_t``, ``const char __user *`` ...
    :return: the conversion rule for that type
    :raises SpecError: the type is not a scalar or pointer the wrapper can pass
    """
    text = spelling.strip()
    if "*" in text or "[" in text:
        return CType(text, CKind.POINTER, 64)
    words = [w for w in text.split() if w not in _IGNORED]
    base = " ".join(words)
    if base.startswith("enum "):
        # gcc: an enum without negative enumerators is unsigned int
        return CType(text, CKind.UNSIGNED, 32)
    seen: set[str] = set()
    while base in _TYPEDEFS and base not in seen:
        seen.add(base)
        base = _TYPEDEFS[base]
    if base == "*":
        return CType(text, CKind.POINTER, 64)
    if base in _INT_WORDS:
        kind, bits = _INT_WORDS[base]
        return CType(text, kind, bits)
    raise SpecError(
        f"C type {spelling!r}: unknown to the x86-64 cast model",
        hint="add its x86-64 definition to kapi_selftests/oracle/ctype.py _TYPEDEFS",
    )


_NAME_RE = re.compile(r"^(?P<type>.*?[\s*])(?P<name>[A-Za-z_][A-Za-z0-9_]*)\s*$")


def split_type_name(type_name: str, param_name: str | None = None) -> str:
    """Strip the parameter name from a spec ``type_name`` (``unsigned int fd`` -> ``unsigned int``).

    KAPI specs generated from kernel-doc store the type with the parameter name
    appended. If ``param_name`` is given only that trailing word is removed.
    """
    text = " ".join(type_name.split())
    if param_name and (text.endswith(" " + param_name) or text.endswith("*" + param_name)):
        return text[: -len(param_name)].rstrip()
    if param_name:
        return text
    m = _NAME_RE.match(text)
    if m is None:
        return text
    head = m.group("type").rstrip()
    # "unsigned int" alone: the last word is part of the type, not a name.
    if not head or " ".join(head.split()) in ("unsigned", "signed", "long", "short"):
        return text
    return head


def cast(ctype: str, reg: int) -> int:
    """The value the kernel stores in ``args[]`` for ``reg``: ``(u64)(s64)(ctype)(long)reg``.

    :param ctype: the ``SYSCALL_DEFINE`` C type (``int``, ``size_t``, ``const char __user *``)
    :param reg: register value (any Python int; taken modulo 2**64)
    :return: an unsigned 64-bit value, as in the event's ``u64 args[6]``
    """
    return parse_ctype(ctype).cast(reg) & MASK64


def to_s64(value: int) -> int:
    """Reinterpret a 64-bit pattern as signed (the validator's ``s64`` view)."""
    value &= MASK64
    return value - (1 << 64) if value >> 63 else value


def to_u64(value: int) -> int:
    """Reinterpret any int as an unsigned 64-bit pattern."""
    return value & MASK64


def stored_args(ctypes: tuple[str, ...],
                regs: tuple[int, ...]) -> tuple[int, int, int, int, int, int]:
    """The six ``u64 args[]`` of ``kapi_syscall_enter``: the cast of each parameter, zero-padded.

    :param ctypes: C types of the syscall's parameters, in order (at most six)
    :param regs: the registers passed (missing ones count as 0)
    """
    if len(ctypes) > 6:
        raise SpecError(f"syscall with {len(ctypes)} parameters: x86-64 passes at most 6")
    padded = tuple(regs) + (0,) * (6 - len(regs))
    vals = [cast(t, padded[i]) for i, t in enumerate(ctypes)]
    vals += [0] * (6 - len(vals))
    return (vals[0], vals[1], vals[2], vals[3], vals[4], vals[5])
