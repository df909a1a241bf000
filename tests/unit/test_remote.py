"""remote: plans made concrete against an agent's manifest, tables and results, memory facts."""

from __future__ import annotations

from kapi_selftests.arch import NR, PAGE_SIZE
from kapi_selftests.fuzz.remote import (
    Manifest,
    ManifestMaterializer,
    ManifestMemory,
    _watches,
    pack_table,
    unpack_results,
)
from kapi_selftests.link import calltable
from kapi_selftests.oracle.sideeffects import Watch
from kapi_selftests.oracle.spec import builtin_specs
from kapi_selftests.plan import Buf, BufKind, CallPlan, Fd, FdKind, Lit, Path, PathKind
from kapi_selftests.records import EventSource

RW, RO, SIZE = 0x7F0000000000, 0x7F0000100000, 128 << 10
UNMAPPED, KERNEL = 0x7F0000200000, 0xFFFF800000000000
EXISTING, UNTERM, LONG = 0x7F0000300000, 0x7F0000301000, 0x7F0000302000
NEW = (0x7F0000400000, 0x7F0000401000)


def manifest() -> Manifest:
    return Manifest.from_json({
        "source": "kapi",
        "fds": {k.value: 1500 + i for i, k in enumerate(FdKind)},
        "rw": [RW, SIZE], "ro": [RO, SIZE], "unmapped": UNMAPPED, "kernel": KERNEL,
        "paths": {"existing": EXISTING, "unterminated": UNTERM, "len_4096": LONG,
                  "null": 0, "unmapped": UNMAPPED, "kernel": KERNEL},
        "new_paths": list(NEW),
        "strings": {str(EXISTING): {"hex": b"/tmp/s/existing\0".hex(), "terminated": True},
                    str(UNTERM): {"hex": b"/tmp/s/unterminated".hex(), "terminated": False},
                    str(LONG): {"hex": (b"a" * 4096 + b"\0").hex(), "terminated": True},
                    str(NEW[0]): {"hex": b"/tmp/s/new0\0".hex(), "terminated": True},
                    str(NEW[1]): {"hex": b"/tmp/s/new1\0".hex(), "terminated": True}},
    })


def test_manifest_memory_answers_strnlen_user_like_the_kernel() -> None:
    mem = ManifestMemory(manifest())
    assert mem.strnlen_user(EXISTING, 4096) == len(b"/tmp/s/existing") + 1
    assert mem.strnlen_user(EXISTING, 5) == 6  # no NUL within count: count + 1
    assert mem.strnlen_user(LONG, 4096) == 4097  # PATH_MAX chars: too long by one
    assert mem.strnlen_user(UNTERM, 4096) == 0  # faults before a NUL
    assert mem.strnlen_user(UNTERM, 5) == 6  # ... but count bytes were readable
    assert mem.strnlen_user(UNMAPPED, 10) == mem.strnlen_user(0, 10) == 0
    assert mem.strnlen_user(RW + 8, 10) is None  # not one of the agent's strings


def test_materializer_places_buffers_in_the_regions() -> None:
    mat = ManifestMaterializer(manifest())
    end = RW + SIZE  # a guard page follows
    cases = {BufKind.MAPPED: RW, BufKind.GUARD_TAIL: end - 100, BufKind.SHORT: end - 99,
             BufKind.UNALIGNED: RW + 1, BufKind.READONLY: RO, BufKind.UNMAPPED: UNMAPPED,
             BufKind.NULL: 0, BufKind.KERNEL: KERNEL}
    for kind, addr in cases.items():
        m = mat(CallPlan("read", (Fd(FdKind.REGULAR), Buf(kind, 100), Lit(100))))
        assert m.regs == (1500, addr, 100), kind
        assert m.fds == {0: 1500} and m.bufs == {1: (addr, 100)}
    # larger than the region: the whole region (the call runs past its end)
    m = mat(CallPlan("read", (Fd(FdKind.REGULAR), Buf(BufKind.GUARD_TAIL, 1 << 30), Lit(1))))
    assert m.regs[1] == RW


def test_materializer_fds_high_bits_and_paths() -> None:
    mat = ManifestMaterializer(manifest())
    m = mat(CallPlan("close", (Fd(FdKind.PIPE_READ, 1),)))
    assert m.regs == ((1 << 32) + 1500 + list(FdKind).index(FdKind.PIPE_READ),)
    assert mat(CallPlan("close", (Fd(FdKind.PIPE_READ, 1),))) is m  # made once per plan
    m = mat(CallPlan("open", (Path(PathKind.EXISTING), Lit(0), Lit(-1))))
    assert m.regs == (EXISTING, 0, 2**64 - 1) and m.paths == {0: b"/tmp/s/existing"}
    assert mat(CallPlan("open", (Path(PathKind.UNTERMINATED), Lit(0), Lit(0)))).paths == {}
    news = [mat(CallPlan("open", (Path(PathKind.NEW), Lit(0o100), Lit(0o600)))).regs[0]
            for _ in range(3)]
    assert news == [NEW[0], NEW[1], NEW[0]]  # a ring of fresh names


def test_predictions_are_cached_and_rejected_calls_get_watches() -> None:
    mat = ManifestMaterializer(manifest())
    spec = builtin_specs()["sys_read"]
    m = mat(CallPlan("read", (Lit(2**31), Buf(BufKind.MAPPED, 64), Lit(64))))
    p = mat.predict(spec, m.regs)
    assert p.rejected and mat.predict(spec, m.regs) is p
    ws = _watches(m, mat)
    table = Watch(calltable.WATCH_FD_TABLE, 0, 0, -1)  # every rejected call: the fd table
    assert ws == [Watch(calltable.WATCH_BUF, RW, 64, 1), table]  # no fd of ours; a readable buffer
    m = mat(CallPlan("read", (Fd(FdKind.REGULAR), Buf(BufKind.UNMAPPED, 64), Lit(64))))
    # unmapped: not hashed
    assert _watches(m, mat) == [Watch(calltable.WATCH_FD, 1500, 0, 0), table]
    m = mat(CallPlan("open", (Path(PathKind.EXISTING), Lit(1 << 30), Lit(0))))
    assert _watches(m, mat) == [Watch(calltable.WATCH_PATH, EXISTING, 0, 0), table]


def test_table_and_results_round_trip_with_side_effect_lines() -> None:
    mat = ManifestMaterializer(manifest())
    mats = [mat(CallPlan("read", (Fd(FdKind.REGULAR), Buf(BufKind.MAPPED, 8), Lit(8)))),
            mat(CallPlan("close", (Lit(7),)))]
    watches = [_watches(mats[0], mat), []]
    table = pack_table(mats, watches)
    assert calltable.watch_counts(table, 2) == [3, 0]
    assert [w.kind for w in watches[0]] == [calltable.WATCH_FD, calltable.WATCH_BUF,
                                            calltable.WATCH_FD_TABLE]
    un = (-1, -1, -1, -1)
    results = (calltable.RESULT.pack(-22, 100, 200)
               # fd: the offset moved, the contents did not
               + calltable.WATCH_RESULT.pack(1, 0, 960, 77, -1, 1, 8, 960, 77, -1)
               + calltable.WATCH_RESULT.pack(5, *un, 6, *un)  # buffer: hash changed
               + calltable.WATCH_RESULT.pack(3, *un, 4, *un)  # fd table: fd 3 is new
               + calltable.RESULT.pack(-9, 300, 400))
    records, effects = unpack_results(results, 42, mats, watches)
    assert [(r.nr, r.ret, r.errno, r.tid, r.t_ns, r.t_end_ns) for r in records] == [
        (NR["read"], -22, 22, 42, 100, 200), (NR["close"], -9, 9, 42, 300, 400)]
    assert records[0].args == (1500, RW, 8, 0, 0, 0)
    assert effects == [["fd table changed: opened [3], closed []",
                        "arg0: file offset moved 0 -> 8", "arg1: buffer contents changed"],
                       []]


def test_manifest_source_and_page_size_sanity() -> None:
    man = manifest()
    assert man.source is EventSource.KAPI
    assert man.rw[1] % PAGE_SIZE == 0
