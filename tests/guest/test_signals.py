"""A read blocked on an empty pipe, interrupted by a signal, with and without SA_RESTART.

The kernel's exit event carries its internal restart code (-512, -ERESTARTSYS),
while userspace sees EINTR (no SA_RESTART) or, after the restart, the bytes
read. With SA_RESTART the call enters twice: two pairs for one userspace call.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator

import pytest

from kapi_selftests.arch import NR
from kapi_selftests.guest.harness import Harness
from kapi_selftests.guest.syscalls import invoke
from kapi_selftests.records import SyscallRecord

ERESTARTSYS = -512


@pytest.fixture
def sigusr1() -> Iterator[list[int]]:
    seen: list[int] = []
    old = signal.signal(signal.SIGUSR1, lambda s, f: seen.append(s))
    yield seen
    signal.signal(signal.SIGUSR1, old)
    signal.siginterrupt(signal.SIGUSR1, False)


@pytest.mark.parametrize("restart", [False, True], ids=["no_restart", "sa_restart"])
def test_signal_interrupted_read(any_harness: Harness, sigusr1: list[int],
                                 restart: bool) -> None:
    h = any_harness
    signal.siginterrupt(signal.SIGUSR1, not restart)
    r, w = os.pipe()  # blocking read end
    buf = h.arena.buffer(16)
    me = threading.get_ident()

    def poke() -> None:
        time.sleep(0.3)
        signal.pthread_kill(me, signal.SIGUSR1)
        if restart:
            time.sleep(0.3)
            os.write(w, b"x")  # ends the restarted read

    def run() -> list[SyscallRecord]:
        t = threading.Thread(target=poke)
        t.start()
        rec = invoke(NR["read"], r, buf, 1)
        t.join()
        return [rec]

    try:
        batch, capture, checks = h.run_fn(run)
    finally:
        os.close(r)
        os.close(w)
    (rec,), (chk,) = batch.records, checks
    assert sigusr1, "the signal handler did not run"
    if restart:
        assert rec.ret == 1, rec.describe()
    else:
        assert rec.errno == 4, rec.describe()  # EINTR
    exits = [e for e in chk.events if e.name in ("kapi_syscall_exit", "sys_exit_read")]
    rets = [e.fields["ret"] for e in exits]
    assert rets == ([ERESTARTSYS, 1] if restart else [ERESTARTSYS]), chk.explain()
    assert chk.ok, chk.explain()
