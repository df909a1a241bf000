"""The capture pipeline on the running kernel: issue -> tracefs -> decode -> pair.

Runs against the generic syscall events, so it is real on any kernel with
CONFIG_FTRACE_SYSCALLS (and again against the kapi events where they exist).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from kapi_selftests.arch import NR, find_syscall
from kapi_selftests.guest.executor import Executor
from kapi_selftests.guest.harness import Harness
from kapi_selftests.guest.memory import Arena
from kapi_selftests.guest.syscalls import invoke
from kapi_selftests.oracle.window import events_by_call
from kapi_selftests.records import EventSource, SyscallRecord
from kapi_selftests.trace.pairing import pair
from kapi_selftests.trace.ringbuf import decode


def _five_calls(arena: Arena) -> list[tuple[int, tuple[int, ...]]]:
    path = arena.cstring("/dev/null")
    buf = arena.buffer(4096, b"x" * 64)
    return [
        (NR["open"], (path, os.O_RDWR, 0)),
        (NR["read"], (0x7FFFFFFF, buf, 16)),
        (NR["write"], (0x7FFFFFFF, buf, 16)),
        (NR["close"], (0x7FFFFFFF,)),
        (NR["madvise"], (buf, 4096, 0)),
    ]


def test_capture_each_call_is_one_pair_with_its_args_and_ret(any_harness: Harness) -> None:
    h = any_harness
    calls = _five_calls(h.arena)
    batch = h.executor.run(calls)
    capture = decode(batch.raw)
    os.close(batch.records[0].ret)
    assert batch.records[0].ret >= 0, batch.records[0].describe()
    result = pair(capture.events, capture.loss)
    assert not result.violations, result.violations
    for rec, evs in zip(batch.records, events_by_call(batch.records, capture.events), strict=True):
        abi = find_syscall(rec.nr)
        assert abi is not None
        names = [e.name for e in evs]
        if batch.source is EventSource.KAPI:
            assert names == ["kapi_syscall_enter", "kapi_syscall_exit"], (rec.describe(), names)
            assert evs[0].fields["name"] == abi.spec_name
            assert evs[1].fields["ret"] == rec.ret
        else:
            assert names == [f"sys_enter_{abi.name}", f"sys_exit_{abi.name}"], \
                (rec.describe(), names)
            for i, (_, pname) in enumerate(abi.params):
                assert evs[0].fields[pname] == rec.args[i], (pname, evs[0].fields)
            assert evs[1].fields["ret"] == rec.ret


def test_capture_threads_pair_by_tid(any_harness: Harness) -> None:
    h = any_harness
    buf = h.arena.buffer(4096)

    def worker(out: list[SyscallRecord]) -> None:
        for _ in range(200):
            out.append(invoke(NR["read"], 0x7FFFFFFF, buf, 1))
            out.append(invoke(NR["close"], 0x7FFFFFFF))

    def run() -> list[SyscallRecord]:
        outs: list[list[SyscallRecord]] = [[] for _ in range(4)]
        threads = [threading.Thread(target=worker, args=(o,)) for o in outs]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return [r for o in outs for r in o]

    batch, capture, checks = h.run_fn(run)
    assert len({r.tid for r in batch.records}) == 4
    assert capture.loss.lost_events == 0
    bad = [c.explain() for c in checks if not c.ok]
    assert not bad, "\n\n".join(bad[:3])
    assert all(len(c.events) == 2 for c in checks), "a call lost or gained events"


def test_capture_instance_removed_on_error(tracefs_root: Path) -> None:
    with pytest.raises(RuntimeError), Executor(EventSource.SYSCALLS) as ex:
        path = ex.trace.path
        assert path.is_dir()
        raise RuntimeError("boom")
    assert not path.exists()


def test_capture_loss_is_counted_never_a_false_missing_exit(tracefs_root: Path) -> None:
    with Arena() as arena, Executor(EventSource.SYSCALLS, buffer_kb=4) as ex:
        buf = arena.buffer(4096)
        batch = ex.run([(NR["read"], (0x7FFFFFFF, buf, 1))] * 4000)
        capture = decode(batch.raw)
    assert capture.loss.lost_events, "4000 calls into a 4 KB buffer must overrun"
    result = pair(capture.events, capture.loss)
    assert not result.violations, result.violations[:3]
