"""A stateful test: open/write/read/close/madvise interleaved with bookkeeping.

The model tracks each open fd's file content and offset; every call goes through
the capture window and the five checks, and what was written is read back.
Invalid calls from the generated plans are interleaved: they must not disturb
the model (a rejected call has no side effect).
"""

from __future__ import annotations

import os

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from kapi_selftests.arch import MADV, NR, PAGE_SIZE
from kapi_selftests.fuzz.strategies import call_plans
from kapi_selftests.guest.harness import Harness
from kapi_selftests.guest.memory import Arena
from kapi_selftests.oracle.checks import check_calls
from kapi_selftests.oracle.spec import builtin_specs
from kapi_selftests.records import SyscallRecord
from kapi_selftests.trace.ringbuf import decode

SPECS = builtin_specs()
O_RDWR, O_CREAT = os.O_RDWR, os.O_CREAT


@pytest.fixture
def stateful_harness(any_harness: Harness) -> Harness:
    return any_harness


class FileModel(RuleBasedStateMachine):
    harness: Harness  # set by the test below

    fds = Bundle("fds")

    def __init__(self) -> None:
        super().__init__()
        self.content: dict[int, bytearray] = {}
        self.offset: dict[int, int] = {}
        # Our own arena: the harness's is released after each generated batch.
        self.arena = Arena()
        self.mapping = self.arena.buffer(4 * PAGE_SIZE, b"m" * 4 * PAGE_SIZE)

    def _call(self, nr: int, *args: int) -> SyscallRecord:
        h = self.harness
        batch = h.executor.run([(nr, args)])
        checks = check_calls(batch.records, decode(batch.raw), batch.source, h.specs,
                             memory=self.arena)
        assert checks[0].ok, checks[0].explain()
        return batch.records[0]

    @rule(target=fds)
    def open_new(self) -> int:
        path = self.arena.cstring(str(self.harness.pool.new_path("state")))
        rec = self._call(NR["open"], path, O_RDWR | O_CREAT, 0o600)
        assert rec.ret >= 0, rec.describe()
        self.content[rec.ret] = bytearray()
        self.offset[rec.ret] = 0
        return rec.ret

    @rule(fd=fds, data=st.binary(min_size=0, max_size=300))
    def write(self, fd: int, data: bytes) -> None:
        buf = self.arena.buffer(max(len(data), 1), data)
        rec = self._call(NR["write"], fd, buf, len(data))
        assert rec.ret == len(data), rec.describe()
        off = self.offset[fd]
        c = self.content[fd]
        c[off:off + len(data)] = data
        self.offset[fd] = off + len(data)

    @rule(fd=fds, n=st.integers(0, 400))
    def read_back(self, fd: int, n: int) -> None:
        # read(2) continues at the fd's offset; the model says what comes back.
        buf = self.arena.buffer(max(n, 1))
        rec = self._call(NR["read"], fd, buf, n)
        off = self.offset[fd]
        want = bytes(self.content[fd][off:off + n])
        assert rec.ret == len(want), rec.describe()
        assert self.arena.read(buf, rec.ret) == want
        self.offset[fd] = off + rec.ret

    @rule(fd=consumes(fds))
    def close(self, fd: int) -> None:
        rec = self._call(NR["close"], fd)
        assert rec.ret == 0, rec.describe()
        del self.content[fd], self.offset[fd]

    @rule(pages=st.integers(0, 4), advice=st.sampled_from(
        [MADV["MADV_NORMAL"], MADV["MADV_WILLNEED"], MADV["MADV_DONTNEED"], MADV["MADV_COLD"]]))
    def madvise(self, pages: int, advice: int) -> None:
        rec = self._call(NR["madvise"], self.mapping, pages * PAGE_SIZE, advice)
        assert rec.ret == 0, rec.describe()
        if advice == MADV["MADV_DONTNEED"] and pages:
            # private anonymous pages read back as zeroes after MADV_DONTNEED
            assert self.arena.read(self.mapping, 1) == b"\0"
            self.arena.write(self.mapping, b"m" * pages * PAGE_SIZE)

    @precondition(lambda self: bool(self.content))
    @rule(data=st.data())
    def generated_call(self, data: st.DataObject) -> None:
        name = data.draw(st.sampled_from(sorted(SPECS)))
        plan = data.draw(call_plans(SPECS[name]))
        res = self.harness.run([plan])
        assert res.checks[0].ok, res.checks[0].explain()

    @invariant()
    def files_match_model(self) -> None:
        for fd, c in self.content.items():
            assert os.pread(fd, len(c) + 1, 0) == bytes(c)

    def teardown(self) -> None:
        for fd in self.content:
            os.close(fd)
        self.arena.close()


def test_stateful_file_model(stateful_harness: Harness) -> None:
    FileModel.harness = stateful_harness
    run_state_machine_as_test(FileModel, settings=settings(
        max_examples=8, stateful_step_count=12, deadline=None))
