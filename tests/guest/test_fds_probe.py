"""Fd hygiene of the harness's fd pool and the gate's timing probe, on the running kernel.

Both were found by a real gate run on a kernel without the checks: the timing mix
leaked an fd per accepted open (thousands), and a "closed" fd number then collided with
the pool's own socket, whose release raised EBADF and ended the fuzz stage.
"""

from __future__ import annotations

import os

import pytest

from kapi_selftests.guest.fds import FdPool, std_fds_owned
from kapi_selftests.plan import STD_FDS, FdKind


def _open_fds() -> set[int]:
    return {int(n) for n in os.listdir("/proc/self/fd")}


def test_pool_release_survives_its_socket_fd_closed_and_reused() -> None:
    with FdPool() as pool:
        pool.make(FdKind.SOCKET)
        own = pool._keep[0].fileno()
        os.close(own)  # what a fuzzed close() of a reused number does
        other = os.open("/dev/null", os.O_RDONLY)  # the lowest free number: the same
        try:
            assert other == own
            pool.release()  # neither raises nor closes the file that has the number now
            os.fstat(other)
        finally:
            os.close(other)


def test_pool_release_closes_everything_it_made() -> None:
    before = _open_fds()
    kinds = [k for k in FdKind if std_fds_owned() or k not in STD_FDS]
    with FdPool() as pool:
        for k in kinds:
            pool.make(k)
        pool.release()
        assert _open_fds() == before  # fds 0-2 (where owned) hold /dev/null again


def test_pool_refuses_fds_0_to_2_where_they_are_not_the_harness_s() -> None:
    if std_fds_owned():
        pytest.skip("fds 0-2 are the harness's in this process (the guest)")
    with FdPool() as pool, pytest.raises(ValueError, match="not the harness's here"):
        pool.make(FdKind.STD0)


def test_gate_timing_mix_leaves_no_fd_behind() -> None:
    from kapi_selftests.gate.probe import time_mix

    before = _open_fds()
    res = time_mix(70)
    assert res["calls"] and _open_fds() == before
