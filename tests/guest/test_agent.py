"""The batch engine's agent on the running kernel: real resources, real calls, real trace,
judged on "the host" side (here the same process) over shared memory."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from kapi_selftests.fuzz import remote
from kapi_selftests.fuzz.generate import PlanGenerator
from kapi_selftests.guest import agent
from kapi_selftests.guest.executor import SPEC_SYSCALLS
from kapi_selftests.guest.tracefs import find_tracefs, missing_syscall_events
from kapi_selftests.link import calltable, shm
from kapi_selftests.records import EventSource


@pytest.fixture
def generic(tracefs_root: object) -> EventSource:
    reason = missing_syscall_events(find_tracefs(), SPEC_SYSCALLS)
    if reason:
        pytest.skip(reason)
    return EventSource.SYSCALLS


def test_resources_keep_their_numbers_and_addresses_across_resets(generic: EventSource
                                                                  ) -> None:
    with agent.Agent(None, generic) as ag:
        assert ag.resources is not None
        before = ag.manifest()
        ag.resources.reset()
        after = ag.manifest()
    assert before["fds"] == after["fds"] and before["paths"] == after["paths"]
    strings = {int(a): s for a, s in before["strings"].items()}
    assert strings[before["paths"]["len_4096"]]["terminated"]
    assert len(bytes.fromhex(strings[before["paths"]["len_4096"]]["hex"])) == 4097
    assert not strings[before["paths"]["unterminated"]]["terminated"]


def test_agent_over_shared_memory_judges_a_campaign_batch(generic: EventSource,
                                                          tmp_path: Path) -> None:
    # serve_shm in a thread (as in a guest) and a RemoteHarness over ShmLink (as on the
    # host), one shared file between them: 150 generated calls, every one traced and
    # judged, none failing on a correct kernel.
    ch_host = shm.create_host(tmp_path / "chan")
    lib = calltable.build_library(tmp_path / "cache")
    with agent.Agent(lib, generic) as ag:
        ch_agent = shm.Channel(ch_host.mm)  # the same mapping: both ends in one process
        served: list[int] = []
        t = threading.Thread(target=lambda: served.append(agent.serve_shm(ag, ch_agent)),
                             daemon=True)
        t.start()
        link = remote.ShmLink(ch_host, tmp_path / "kapi", timeout_s=60)
        with remote.RemoteHarness(link) as h:
            gen = PlanGenerator(h.specs, seed=5)
            result = h.run(gen.batch(0, 150))
        t.join(timeout=30)
    assert served == [1]
    assert len(result.checks) == 150
    assert not result.failures, result.failures[0].explain()
    assert all(c.events for c in result.checks)  # every call was traced


def test_resources_fit_under_a_low_fd_limit() -> None:
    # slots go just below a hard RLIMIT_NOFILE lower than the default slot numbers
    import subprocess
    import sys

    code = ("import resource; resource.setrlimit(resource.RLIMIT_NOFILE, (512, 512)); "
            "from kapi_selftests.guest.agent import Resources; r = Resources(); "
            "print(min(r.slots.values()), max(r.slots.values())); r.close()")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert [int(x) for x in out] == [448, 511]


def test_agent_over_a_directory_judges_a_campaign_batch(generic: EventSource,
                                                        tmp_path: Path) -> None:
    # the --transport dir path: tables and results as files (a guest's output share)
    d = tmp_path / "agent"
    with agent.Agent(None, generic) as ag:
        served: list[int] = []
        t = threading.Thread(target=lambda: served.append(agent.serve(ag, d)), daemon=True)
        t.start()
        with remote.RemoteHarness(remote.DirLink(d, timeout_s=60)) as h:
            result = h.run(PlanGenerator(h.specs, seed=6).batch(0, 100))
        t.join(timeout=30)
    assert served == [1]
    assert len(result.checks) == 100 and not result.failures
    assert not list(d.glob("in-*")) and not list(d.glob("out-*"))
