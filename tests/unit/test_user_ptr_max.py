"""USER_PTR_MAX from the guest's paging: the probe's answer read, and every prediction
taking it from the memory view it is given."""

from __future__ import annotations

from kapi_selftests.oracle.predict import (
    LA57_PROBE_HINT,
    USER_PTR_MAX,
    USER_PTR_MAX_LA57,
    MemoryFacts,
    predict,
    user_ptr_max_from_probe,
)
from kapi_selftests.oracle.spec import builtin_specs

READ = builtin_specs()["sys_read"]
ABOVE_47_BITS = 0x0000800000000000


def test_user_ptr_max_probe_mapped_above_47_bits_is_5_level() -> None:
    assert user_ptr_max_from_probe(LA57_PROBE_HINT) == USER_PTR_MAX_LA57
    assert user_ptr_max_from_probe(USER_PTR_MAX + 0x1000) == USER_PTR_MAX_LA57


def test_user_ptr_max_probe_mapped_below_or_failed_is_4_level() -> None:
    assert user_ptr_max_from_probe(0x7F12_3456_7000) == USER_PTR_MAX
    assert user_ptr_max_from_probe(None) == USER_PTR_MAX


def test_user_ptr_max_prediction_takes_it_from_the_memory_view() -> None:
    # read(3, 1 << 47, 16): past user space with 4-level paging, a user address with 5
    regs = (3, ABOVE_47_BITS, 16)
    assert predict(READ, regs).rejected
    assert predict(READ, regs, MemoryFacts()).rejected
    la57 = MemoryFacts(user_ptr_max=USER_PTR_MAX_LA57)
    assert not predict(READ, regs, la57).rejected
    assert predict(READ, regs, la57, user_ptr_max=USER_PTR_MAX).rejected  # given wins
    assert predict(READ, (3, USER_PTR_MAX_LA57 + 1, 16), la57).rejected
