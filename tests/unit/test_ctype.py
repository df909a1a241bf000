"""Unit tests of kapi_selftests.oracle.ctype: the wrapper casts, for every register value."""

from __future__ import annotations

import ctypes

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kapi_selftests.arch import SYSCALLS
from kapi_selftests.errors import SpecError
from kapi_selftests.oracle.ctype import (
    CKind,
    cast,
    parse_ctype,
    split_type_name,
    stored_args,
    to_s64,
)

U64 = st.sampled_from((0, 1, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**63 - 1, 2**63, 2**64 - 1)) \
    | st.integers(0, 2**64 - 1)

# ctypes' own conversions are C's: truncate, then reinterpret.
C_EQUIV = {
    "int": ctypes.c_int32, "unsigned int": ctypes.c_uint32, "umode_t": ctypes.c_uint16,
    "size_t": ctypes.c_uint64, "unsigned long": ctypes.c_uint64, "long": ctypes.c_int64,
    "loff_t": ctypes.c_int64, "pid_t": ctypes.c_int32, "short": ctypes.c_int16,
    "unsigned char": ctypes.c_uint8, "char": ctypes.c_int8, "u32": ctypes.c_uint32,
}


@pytest.mark.parametrize("ctype", sorted(C_EQUIV))
@given(reg=U64)
def test_cast_matches_c_conversion(ctype: str, reg: int) -> None:
    assert cast(ctype, reg) == C_EQUIV[ctype](reg).value & (2**64 - 1)


@pytest.mark.parametrize(("ctype", "reg", "stored"), [
    ("unsigned int", 0x100000009, 9),
    ("unsigned int", 2**64 - 1, 0xFFFFFFFF),
    ("int", 0x80000000, 0xFFFFFFFF80000000),
    ("int", 0x100000000, 0),
    ("int", 2**64 - 1, 2**64 - 1),
    ("umode_t", 0x101A4, 0x1A4),
    ("size_t", 2**63, 2**63),
    ("const char __user *", 0xFFFF888000000000, 0xFFFF888000000000),
    ("bool", 0x100, 1),
    ("bool", 0, 0),
])
def test_cast_boundary_values(ctype: str, reg: int, stored: int) -> None:
    assert cast(ctype, reg) == stored


def test_cast_negative_python_int_is_twos_complement() -> None:
    assert cast("unsigned int", -1) == 0xFFFFFFFF
    assert cast("long", -1) == 2**64 - 1


def test_parse_ctype_pointers_and_qualifiers() -> None:
    assert parse_ctype("const struct iovec __user *").kind is CKind.POINTER
    assert parse_ctype("const unsigned long").kind is CKind.UNSIGNED
    assert parse_ctype("__u32").bits == 32


def test_parse_ctype_every_arch_table_type() -> None:
    for abi in SYSCALLS.values():
        for ctype, _ in abi.params:
            parse_ctype(ctype)


def test_parse_ctype_unknown_raises_spec_error() -> None:
    with pytest.raises(SpecError, match="frobnicator_t"):
        parse_ctype("frobnicator_t")


@pytest.mark.parametrize(("type_name", "param", "ctype"), [
    ("unsigned int fd", "fd", "unsigned int"),
    ("const char __user * filename", "filename", "const char __user *"),
    ("size_t count", None, "size_t"),
    ("unsigned int", None, "unsigned int"),
    ("char __user *buf", "buf", "char __user *"),
])
def test_split_type_name(type_name: str, param: str | None, ctype: str) -> None:
    assert split_type_name(type_name, param) == ctype


def test_stored_args_pads_to_six() -> None:
    assert stored_args(("unsigned int",), (0x100000003,)) == (3, 0, 0, 0, 0, 0)
    with pytest.raises(SpecError):
        stored_args(("int",) * 7, ())


@given(v=st.integers(0, 2**64 - 1))
def test_to_s64_round_trip(v: int) -> None:
    assert to_s64(v) & (2**64 - 1) == v
    assert -(2**63) <= to_s64(v) < 2**63
