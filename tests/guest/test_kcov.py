"""KCOV on the running kernel: the coverage ``fuzz --kcov`` is guided by, on real traces.

Skips on kernels without CONFIG_KCOV (every stock kernel; build one with
vm/kcov.config). KCOV follows a thread, so each scenario runs in a thread of
its own: the suite's thread is never traced.
"""

from __future__ import annotations

import ctypes
import fcntl
import mmap
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from kapi_selftests.arch import NR
from kapi_selftests.fuzz import campaign
from kapi_selftests.fuzz.generate import PlanGenerator
from kapi_selftests.fuzz.kcov import SymbolMap
from kapi_selftests.guest import cexec
from kapi_selftests.guest.executor import find_event_source
from kapi_selftests.guest.syscalls import invoke
from kapi_selftests.link import calltable
from kapi_selftests.records import EventSource

# <linux/kcov.h>
KCOV_INIT_TRACE, KCOV_ENABLE, KCOV_DISABLE, KCOV_TRACE_PC = 0x80086301, 0x6364, 0x6365, 0
WORDS = 1 << 16
O_RDONLY, FLAG_BIT_30 = 0, 0x40000000

T = TypeVar("T")


@pytest.fixture(scope="module")
def kcov_kernel(tracefs_root: object) -> None:
    if not os.path.exists(calltable.KCOV_PATH):
        pytest.skip(f"kernel has no KCOV (no {calltable.KCOV_PATH}: CONFIG_KCOV is not set)")


def _in_thread(fn: Callable[[], T]) -> T:
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as e:  # re-raised in the test's thread
            box["error"] = e

    t = threading.Thread(target=run)
    t.start()
    t.join(timeout=300)
    assert not t.is_alive(), "the KCOV scenario did not finish"
    if "error" in box:
        raise box["error"]
    return box["value"]  # type: ignore[no-any-return]


def _traced(calls: list[tuple[int, tuple[int, ...]]]) -> list[tuple[int, list[int]]]:
    # each call's return value and kernel PCs, read with KCOV directly (not through the
    # executor under test); mmap(2) through libc: Python's mmap wants a file size, and
    # the kcov file has none
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                          ctypes.c_int, ctypes.c_long]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    fd = os.open(calltable.KCOV_PATH, os.O_RDWR)
    try:
        fcntl.ioctl(fd, KCOV_INIT_TRACE, WORDS)
        addr = libc.mmap(None, WORDS * 8, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_SHARED,
                         fd, 0)
        assert addr not in (None, ctypes.c_void_p(-1).value), os.strerror(ctypes.get_errno())
        area = (ctypes.c_uint64 * WORDS).from_address(addr)
        fcntl.ioctl(fd, KCOV_ENABLE, KCOV_TRACE_PC)
        out = []
        try:
            for nr, regs in calls:
                area[0] = 0
                rec = invoke(nr, *regs)
                n = min(area[0], WORDS - 1)
                out.append((rec.ret, list(area[1:n + 1])))
        finally:
            fcntl.ioctl(fd, KCOV_DISABLE, 0)
            libc.munmap(addr, WORDS * 8)
        return out
    finally:
        os.close(fd)


def _kallsyms() -> SymbolMap:
    # the running kernel's functions, as fuzz --kcov --local maps PCs to them
    syms = SymbolMap(Path("/proc/kallsyms"))
    if not syms.addr.size or int(syms.addr[-1]) == 0:
        pytest.skip("/proc/kallsyms hides addresses (kptr_restrict)")
    return syms


def test_a_spec_rejected_open_runs_the_validator_and_no_open_code(kcov_kernel: None) -> None:
    # KAPI's promise, seen in the kernel's own coverage: a call whose parameter breaks
    # its spec returns -EINVAL "without running the real handler". open(2) of /dev/null
    # with flag bit 30 set: without KAPI the kernel ignores the bit and opens the file.
    if find_event_source() is not EventSource.KAPI:
        pytest.skip("kernel has no kapi tracepoints")
    path = ctypes.create_string_buffer(b"/dev/null")
    addr = ctypes.addressof(path)
    (ok_ret, ok), (bad_ret, bad) = _in_thread(lambda: _traced([
        (NR["open"], (addr, O_RDONLY, 0)), (NR["open"], (addr, FLAG_BIT_30, 0))]))
    os.close(ok_ret)
    assert bad_ret == -22  # -EINVAL
    handler = ("getname_flags", "path_openat", "vfs_open")  # the name, the walk, the open
    syms = _kallsyms()
    ran_ok, ran_bad = syms.functions(ok), syms.functions(bad)
    missing = {"kapi_validate_syscall_params", *handler} - ran_ok.text
    assert not missing, f"no such kernel functions: {sorted(missing)}"
    assert "kapi_validate_syscall_params" in ran_ok.reached
    assert "kapi_validate_syscall_params" in ran_bad.reached
    for name in handler:
        assert name in ran_ok.reached, name
        assert name not in ran_bad.reached, f"the rejected open ran {name}"
    # (not fewer PCs in all: the validator's rejection warning runs printk)


def test_the_executor_reports_each_kernel_edge_once(kcov_kernel: None) -> None:
    # The batch engine with KCOV on, as a guest runs it: the same 300 generated calls
    # twice. The first pass reaches thousands of edges, each reported by one call; the
    # second adds few (the same code, but for state the first pass left behind).
    if calltable.build_library(calltable.CACHE_DIR) is None:
        pytest.skip("no C compiler for the batch executor")

    def scenario() -> tuple[Any, Any]:
        with campaign.local_harness("batch", kcov=True) as h:
            plans = PlanGenerator(h.specs, seed=11).batch(0, 300)
            return h.run(plans), h.run(plans)

    first, second = _in_thread(scenario)
    assert first.kcov is not None and second.kcov is not None
    assert not first.failures, first.failures[0].explain()  # KCOV changes no outcome
    assert all(n > 0 for n in first.kcov.pcs)  # every call ran kernel code
    ids = [e for call in first.kcov.ids for e in call]
    assert len(ids) == len(set(ids)) == sum(first.kcov.new) > 1000
    assert sum(second.kcov.new) < sum(first.kcov.new) / 10
    assert not set(e for call in second.kcov.ids for e in call) & set(ids)
    # and each PC once (by its low 32 bits)
    assert len(set(first.kcov.new_pcs)) == len(first.kcov.new_pcs) > 1000
    assert not set(second.kcov.new_pcs) & set(first.kcov.new_pcs)


def test_a_kcov_campaign_keeps_calls_that_reach_new_code(kcov_kernel: None,
                                                         tmp_path: Path) -> None:
    # Three batches with the corpus steering the later ones: the corpus and the edge set
    # grow, are on disk, and a resumed campaign starts from them.
    if calltable.build_library(calltable.CACHE_DIR) is None:
        pytest.skip("no C compiler for the batch executor")
    out = tmp_path / "camp"

    def run_campaign(calls: int) -> Any:
        with campaign.local_harness("batch", kcov=True) as h:
            cfg = campaign.CampaignConfig(out=out, seed=3, calls=calls, batch_size=300,
                                          minimize=False)
            camp = campaign.Campaign(cfg, h)
            start = None if camp.kcov is None else camp.kcov.figure()
            return start, camp.run()

    start, p = _in_thread(lambda: run_campaign(900))
    assert start == {"edges": 0, "pcs": 0, "corpus": 0, "pcs_per_call": None}
    assert p.kcov is not None and p.kcov["edges"] > 1000 and p.kcov["corpus"] > 10
    assert not p.findings
    assert (out / "kcov-edges.bin").stat().st_size == 4 * p.kcov["edges"]
    start2, p2 = _in_thread(lambda: run_campaign(1200))
    assert start2["edges"] == p.kcov["edges"] and start2["corpus"] == p.kcov["corpus"]
    assert p2.calls == 1200 and p2.kcov["edges"] >= p.kcov["edges"]


# --- a kernel without KCOV: what the executor and fuzz --kcov say (from tests/unit, which
# touches no kernel interface of the host) ----------------------------------------------

@pytest.fixture(scope="module")
def no_kcov_kernel(tracefs_root: object) -> None:
    if os.path.exists(calltable.KCOV_PATH):
        pytest.skip(f"this kernel has KCOV ({calltable.KCOV_PATH}): the error path cannot be "
                    "reached")


def test_cov_open_names_the_missing_kcov(no_kcov_kernel: None) -> None:
    built = calltable.build_library(calltable.CACHE_DIR)
    if built is None:
        pytest.skip("no C compiler for the batch executor")
    with pytest.raises(OSError) as e:
        cexec.cov_open(cexec.load(built))
    assert "kcov" in str(e.value)


def test_local_kcov_on_this_kernel_says_it_has_none(
        no_kcov_kernel: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from kapi_selftests import cli
    from kapi_selftests.errors import KSFT_SKIP

    rc = cli.main(["fuzz", "--local", "--kcov", "--calls", "5", "--out", str(tmp_path / "o")])
    assert rc == KSFT_SKIP
    assert "kernel has no KCOV" in capsys.readouterr().err
