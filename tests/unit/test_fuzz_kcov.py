"""KCOV-guided fuzzing, host side: the executor's edge folding (the compiled C), the
coverage layout after a batch's results, the shard's corpus and its files, the
campaign's use of them, and the errors a kernel without KCOV gives.

The kernel's side (a real KCOV trace, and what a kernel without KCOV says) is in
tests/guest/test_kcov.py and tests/vm/test_kcov_e2e.py; nothing here opens the host's
kcov or tracefs.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import threading
import zlib
from pathlib import Path

import pytest

from kapi_selftests import cli
from kapi_selftests.errors import KSFT_PASS, KSFT_SKIP, KSFT_USAGE, MissingFeature
from kapi_selftests.fuzz import kcov, remote
from kapi_selftests.fuzz.campaign import write_json_atomic
from kapi_selftests.guest import agent, cexec
from kapi_selftests.host import kernel, runner
from kapi_selftests.link import calltable
from kapi_selftests.plan import Buf, BufKind, CallPlan, Fd, FdKind, Lit

needs_cc = pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None,
                              reason="no C compiler")

PCS = [0xFFFFFFFF81000000 + 0x40 * i for i in range(50)]


@pytest.fixture
def lib(tmp_path: Path) -> object:
    # a library of its own (its own set of seen edges): loaded from a fresh path
    built = calltable.build_library(tmp_path / "cache")
    assert built is not None
    return cexec.load(built)


@needs_cc
def test_edges_are_reported_once_per_thread(lib: object) -> None:
    new, ids, _, _ = cexec.cov_edges(lib, PCS)  # type: ignore[arg-type]
    assert new == len(PCS) == len(set(ids))  # 49 pairs + the entry edge, all new
    assert cexec.cov_edges(lib, PCS) == (0, [], 0, [])  # type: ignore[arg-type]
    # the same PCs in another order are other edges; a prefix is not new
    new2, ids2, _, _ = cexec.cov_edges(lib, PCS[::-1])  # type: ignore[arg-type]
    assert new2 > 0 and not set(ids2) & set(ids)
    assert cexec.cov_edges(lib, PCS[:10]) == (0, [], 0, [])  # type: ignore[arg-type]


@needs_cc
def test_pcs_are_reported_once_by_their_low_32_bits(lib: object) -> None:
    _, _, new, low = cexec.cov_edges(lib, PCS + PCS[:5])  # type: ignore[arg-type]
    assert new == len(PCS) and low == [pc & 0xFFFFFFFF for pc in PCS]
    # known PCs in a new order: new edges, no new PC
    new_edges, _, new_pcs, _ = cexec.cov_edges(lib, PCS[::-1])  # type: ignore[arg-type]
    assert new_edges > 0 and new_pcs == 0
    # one new PC amid known ones
    _, _, new3, low3 = cexec.cov_edges(lib, [PCS[0], 0xFFFFFFFF82000000, PCS[1]])  # type: ignore[arg-type]
    assert new3 == 1 and low3 == [0x82000000]


@needs_cc
def test_edge_ids_beyond_the_limit_are_counted_not_listed(lib: object) -> None:
    new, ids, pc_new, pcs = cexec.cov_edges(lib, PCS, max_ids=7)  # type: ignore[arg-type]
    assert new == pc_new == len(PCS) and len(ids) == len(pcs) == 7


def test_cov_open_without_an_executor_says_so() -> None:
    # (the kernel's own refusal, on a kernel without KCOV: tests/guest/test_kcov.py)
    with pytest.raises(OSError, match="executor"):
        cexec.cov_open(None)


def _cov_section(calls: list[tuple[int, int, list[int]]], dropped: int = 0,
                 new_pcs: tuple[int, ...] = ()) -> bytes:
    stored = sum(len(ids) for _, _, ids in calls)
    out = calltable.COV_HEAD.pack(stored, dropped, len(new_pcs), 0)
    out += b"".join(calltable.COV_CALL.pack(new, pcs, len(ids)) for new, pcs, ids in calls)
    out += b"".join(struct.pack("<I", i) for _, _, ids in calls for i in ids)
    return out + b"".join(struct.pack("<I", pc) for pc in new_pcs)


def test_split_gives_each_call_its_edges() -> None:
    results = b"r" * 48
    cov = _cov_section([(2, 300, [11, 12]), (0, 120, []), (5, 900, [13, 14, 15])], dropped=2,
                       new_pcs=(0x81000010, 0x81000020))
    res, c = kcov.split(results + cov, len(results), 3)
    assert res == results
    assert c.new == (2, 0, 5) and c.pcs == (300, 120, 900) and c.dropped == 2
    assert c.ids == ((11, 12), (), (13, 14, 15))
    assert c.new_pcs == (0x81000010, 0x81000020)


@pytest.mark.parametrize("cut", [1, 4, 13])
def test_split_rejects_a_cut_section(cut: int) -> None:
    cov = _cov_section([(2, 300, [11, 12]), (1, 5, [9])])
    with pytest.raises(ValueError):
        kcov.split(b"r" * 24 + cov[:-cut], 24, 2)


@needs_cc
def test_the_executor_appends_the_layout_split_reads(lib: object, tmp_path: Path) -> None:
    # Without KCOV on (this kernel, or not opened) every call reports no PCs, in the
    # same layout: results first, unchanged, then the coverage of each call.
    f = tmp_path / "f"
    f.write_bytes(b"x" * 10)
    fd = os.open(f, os.O_RDONLY)
    try:
        # lseek(fd, k, SEEK_SET) (x86-64 number 8): no spec, returns k
        table = b"".join(calltable.CALL.pack(8, fd, k, 0, 0, 0, 0, 0) for k in (1, 3, 5))
        plain, tid = cexec.run_table(lib, table, 3)  # type: ignore[arg-type]
        data, tid2 = cexec.run_table(lib, table, 3, kcov=True)  # type: ignore[arg-type]
    finally:
        os.close(fd)
    assert tid == tid2 == threading.get_native_id()
    res, c = kcov.split(data, len(plain), 3)
    rets = [calltable.RESULT.unpack_from(res, i * calltable.RESULT.size)[0] for i in range(3)]
    assert rets == [1, 3, 5]
    assert c.new == c.pcs == (0, 0, 0) and c.ids == ((), (), ())


def _read(n: int) -> CallPlan:
    return CallPlan("read", (Fd(FdKind.PIPE_READ), Buf(BufKind.MAPPED, n), Lit(n)))


def _cover(*calls: tuple[int, list[int]]) -> kcov.BatchCover:
    return kcov.BatchCover(tuple(n for n, _ in calls), tuple(100 for _ in calls),
                           tuple(tuple(ids) for _, ids in calls))


def test_corpus_keeps_plans_that_reach_new_edges_and_resumes(tmp_path: Path) -> None:
    c = kcov.KcovCorpus(tmp_path)
    kept = c.add(0, [_read(1), _read(2), _read(3)], _cover((2, [1, 2]), (0, []), (1, [3])))
    assert kept == [0, 2] and c.plans == [_read(1), _read(3)] and c.edges == {1, 2, 3}
    # a restarted guest reports edges again: known to the shard, so nothing is kept
    assert c.add(1, [_read(4)], _cover((2, [1, 2]))) == []
    # the same plan reaching a new edge is counted but kept once
    assert c.add(2, [_read(1)], _cover((1, [9]))) == []
    assert c.edges == {1, 2, 3, 9}
    # an overflowed batch: edges counted but not listed still keep the call
    assert c.add(3, [_read(5)], _cover((4, []))) == [0]
    fig = c.figure()
    assert fig["edges"] == 4 and fig["corpus"] == 3 and fig["pcs_per_call"] == 100.0
    again = kcov.KcovCorpus(tmp_path)
    assert again.edges == c.edges and again.plans == c.plans
    assert again.costs == c.costs == [100, 100, 100]  # the PCs each kept call ran
    rows = [json.loads(line) for line in (tmp_path / kcov.CORPUS_FILE).read_text().splitlines()]
    assert [(r["batch"], r["index"], r["new"]) for r in rows] == [(0, 0, 2), (0, 2, 1), (3, 0, 4)]
    assert kcov.union_edges([tmp_path]) == 4


def test_corpus_survives_a_line_cut_by_a_crash(tmp_path: Path) -> None:
    c = kcov.KcovCorpus(tmp_path)
    c.add(0, [_read(1)], _cover((1, [5])))
    with (tmp_path / kcov.CORPUS_FILE).open("a") as f:
        f.write('{"batch":1,"index":0,"new":1,"plan":{"name":"re')
    with (tmp_path / kcov.EDGES_FILE).open("ab") as f:
        f.write(b"\x07\x00")  # half an id
    again = kcov.KcovCorpus(tmp_path)
    assert again.plans == [_read(1)] and again.edges == {5}


def test_union_of_shards_counts_shared_edges_once(tmp_path: Path) -> None:
    for name, ids in (("shard-0", [1, 2, 3]), ("shard-1", [3, 4])):
        d = tmp_path / name
        d.mkdir()
        kcov.KcovCorpus(d).add(0, [_read(len(ids))], _cover((len(ids), ids)))
    assert kcov.union_edges([tmp_path / "shard-0", tmp_path / "shard-1"]) == 4


# --- what the user sees -----------------------------------------------------------------

def test_kcov_needs_the_batch_engine(capsys: pytest.CaptureFixture[str]) -> None:
    rc = cli.main(["fuzz", "--local", "--kcov", "--engine", "harness", "--calls", "5"])
    assert rc == KSFT_USAGE
    assert "--kcov needs the batch engine" in capsys.readouterr().err


@pytest.mark.parametrize("rate", ["1.5", "-0.1", "half"])
def test_mutate_rate_is_a_fraction(rate: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        cli.main(["fuzz", "--local", "--kcov", "--mutate-rate", rate])
    assert e.value.code == KSFT_USAGE
    assert "--mutate-rate" in capsys.readouterr().err


def test_kcov_on_a_kernel_configured_without_it_stops_before_booting(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    img, config = tmp_path / "bzImage", tmp_path / "config"
    img.write_bytes(b"\0" * 1024)
    config.write_text("CONFIG_KAPI_SPEC=y\n# CONFIG_KCOV is not set\n")
    monkeypatch.setattr(kernel, "find_kernel", lambda p, m=None: kernel.KernelImage(
        image=img, kind=kernel.ImageKind.BZIMAGE, release="7.2-test", config=config))

    def no_boot(*a: object, **k: object) -> None:
        raise AssertionError("booted a guest")

    monkeypatch.setattr(runner, "boot", no_boot)
    rc = cli.main(["fuzz", "--kernel", str(img), "--kcov", "--calls", "5",
                   "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == KSFT_SKIP
    assert f"kernel has no KCOV (CONFIG_KCOV is not set in {config})" in err
    assert "vm/kcov.config" in err


def test_an_agent_that_cannot_start_says_why_to_the_host(tmp_path: Path) -> None:
    # what agent.main writes when Agent(kcov=True) fails in a guest without KCOV
    agent._DirEnd(tmp_path).put_error({
        "error": "kernel has no KCOV (No such file or directory)",
        "hint": "build the kernel with vm/kcov.config (CONFIG_KCOV=y)", "missing": True})
    with pytest.raises(MissingFeature, match="kernel has no KCOV") as e:
        remote.RemoteHarness(remote.DirLink(tmp_path, timeout_s=5))
    assert e.value.hint is not None and "vm/kcov.config" in e.value.hint


def test_merge_reports_the_union_of_the_shards_edges(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for shard, ids in ((0, [1, 2, 3]), (1, [3, 4])):
        d = tmp_path / "camp" / f"shard-{shard}"
        d.mkdir(parents=True)
        c = kcov.KcovCorpus(d)
        c.add(0, [_read(shard + 1)], kcov.BatchCover(
            (len(ids),), (100,), (tuple(ids),),
            new_pcs=tuple(0x81000000 + 0x10 * i for i in ids)))
        write_json_atomic(d / "state.json", {
            "seed": 1, "shard": shard, "batches": 1, "calls": 1, "elapsed_s": 1.0,
            "calls_per_s": 1.0, "kcov": c.figure()})
    smap = tmp_path / "System.map"
    smap.write_text("ffffffff81000000 T kapi_validate_fd\n"
                    "ffffffff81000038 T do_sys_open\n"
                    "ffffffff81000100 T kapi_validate_path\n")
    rc = cli.main(["merge", str(tmp_path / "camp"), "--into", str(tmp_path / "m"), "--json",
                   "--system-map", str(smap)])
    assert rc == KSFT_PASS
    summary = json.loads(capsys.readouterr().out)
    assert summary["kcov"] == {
        "edges": 4, "pcs": 4, "corpus": 2, "functions": 2,
        "kapi_functions": {"reached": ["kapi_validate_fd"], "not_reached": ["kapi_validate_path"]}}
    md = (tmp_path / "m" / "report.md").read_text()
    assert ("kernel coverage (KCOV): 4 distinct kernel edges, 4 PCs in 2 functions "
            "(KAPI's own: 1 of 2), 2 calls kept") in md
    assert "- not reached: `kapi_validate_path`" in md


# --- the campaign's use of it (the harness faked; the real kernel: tests/guest, tests/vm) --

class CoverHarness:
    """Reports, for each call, one edge per distinct (syscall, argument kinds and values
    of its first argument): a stand-in for coverage that tests the wiring, not KCOV."""

    kcov = True

    def __init__(self) -> None:
        from kapi_selftests.guest.materialize import Materializer
        from kapi_selftests.oracle.spec import builtin_specs
        from kapi_selftests.records import EventSource

        self.specs = builtin_specs()
        self.source = EventSource.SYSCALLS
        self.materialize = Materializer(None, None)  # type: ignore[arg-type]
        self.strict = False
        self.seen: set[int] = set()  # what the "guest" reported already
        self.runs: list[list[CallPlan]] = []

    def run(self, plans: list[CallPlan]) -> object:
        from types import SimpleNamespace

        from kapi_selftests.records import CallCheck, SyscallRecord

        self.runs.append(list(plans))
        new, ids = [], []
        for p in plans:
            e = zlib.crc32(f"{p.name} {p.args[0]!r}".encode())
            fresh = [] if e in self.seen else [e]
            self.seen.update(fresh)
            new.append(len(fresh))
            ids.append(tuple(fresh))
        checks = tuple(CallCheck(SyscallRecord(nr=p.nr, args=(0,) * 6, ret=0, errno=0, tid=1),
                                 (), ()) for p in plans)
        cover = kcov.BatchCover(tuple(new), tuple(10 for _ in plans), tuple(ids))
        return SimpleNamespace(checks=checks, plans=tuple(plans), kcov=cover, predictions=(),
                               disagreements=())


def test_campaign_keeps_new_coverage_mutates_it_and_resumes(tmp_path: Path) -> None:
    from kapi_selftests.fuzz.campaign import Campaign, CampaignConfig

    cfg = CampaignConfig(out=tmp_path, seed=2, calls=600, batch_size=200, minimize=False)
    h = CoverHarness()
    camp = Campaign(cfg, h)  # type: ignore[arg-type]
    assert camp.kcov is not None
    p = camp.run()
    assert p.kcov is not None and p.kcov["edges"] == len(h.seen) > 20
    assert p.kcov["corpus"] == len(camp.kcov.plans) > 20
    kept = set(camp.kcov.plans)
    # later batches mutate kept calls: many share all but one or two arguments with one
    first = h.runs[0]
    later = [q for q in h.runs[2] if q not in first]
    near = [q for q in later if any(q.name == k.name and sum(
        a == b for a, b in zip(q.args, k.args, strict=True)) >= len(k.args) - 2 and q != k
        for k in kept)]
    assert len(near) > 0.3 * len(later)
    state = json.loads((tmp_path / "state.json").read_text())
    assert state["kcov"]["edges"] == p.kcov["edges"]
    # resumed: the corpus and edges come back from the shard's files
    h2 = CoverHarness()
    again = Campaign(CampaignConfig(out=tmp_path, seed=2, calls=800, batch_size=200,
                                    minimize=False), h2)  # type: ignore[arg-type]
    assert again.kcov is not None
    assert again.kcov.plans == camp.kcov.plans and again.kcov.edges == camp.kcov.edges
    again.run()
    assert again.state.calls == 800


def test_campaign_without_kcov_has_no_corpus(tmp_path: Path) -> None:
    from kapi_selftests.fuzz.campaign import Campaign, CampaignConfig

    h = CoverHarness()
    h.kcov = False  # type: ignore[misc]
    camp = Campaign(CampaignConfig(out=tmp_path, calls=200, batch_size=200,
                                   minimize=False), h)  # type: ignore[arg-type]
    p = camp.run()
    assert camp.kcov is None and p.kcov is None
    assert "kcov" not in json.loads((tmp_path / "state.json").read_text())
    assert not (tmp_path / kcov.EDGES_FILE).exists()


def test_corpus_flag_reads_another_campaigns_kcov_corpus(tmp_path: Path) -> None:
    from kapi_selftests.cmd import fuzz as fuzz_cmd

    for shard, sizes in ((0, [1, 2, 3]), (1, [3, 4])):  # read(3) is in both shards
        d = tmp_path / "old" / f"shard-{shard}"
        d.mkdir(parents=True)
        kcov.KcovCorpus(d).add(0, [_read(n) for n in sizes],
                               _cover(*((1, [shard * 10 + n]) for n in sizes)))
    runs = fuzz_cmd._corpus_plans(tmp_path / "old", batch_size=3)
    assert runs == [[_read(1), _read(2), _read(3)], [_read(4)]]  # each plan once


def test_pcs_reached_are_kept_and_mapped_to_functions(tmp_path: Path) -> None:
    c = kcov.KcovCorpus(tmp_path)
    cover = kcov.BatchCover((1,), (3,), ((7,),), new_pcs=(0x81000004, 0x81000008, 0x81000104))
    c.add(0, [_read(1)], cover)
    c.add(1, [_read(2)], kcov.BatchCover((0,), (3,), ((),), new_pcs=(0x81000004,)))  # known
    assert kcov.KcovCorpus(tmp_path).reached == {0x81000004, 0x81000008, 0x81000104}
    assert c.figure()["pcs"] == 3
    pcs = kcov.union_pcs([tmp_path])
    assert pcs == [0xFFFFFFFF81000004, 0xFFFFFFFF81000008, 0xFFFFFFFF81000104]
    smap = tmp_path / "System.map"  # the layout of a kernel build's System.map
    smap.write_text("ffffffff81000000 T kapi_validate_fd\n"
                    "ffffffff81000100 t kapi_validate_path\n"
                    "ffffffff81000200 T kapi_validate_user_string\n"
                    "ffffffff81000300 D kapi_data_not_text\n"
                    "ffffffff80fff000 T _stext\n")
    f = kcov.functions_reached(pcs, smap)
    assert f.reached == {"kapi_validate_fd": 2, "kapi_validate_path": 1}
    assert f.kapi() == (["kapi_validate_fd", "kapi_validate_path"],
                        ["kapi_validate_user_string"])
