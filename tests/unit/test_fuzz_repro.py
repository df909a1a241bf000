"""Reproducer rendering: JSON round trip, pytest file, C program (compiled when gcc exists)."""

from __future__ import annotations

import ast
import shutil
import subprocess
from pathlib import Path

import pytest

from kapi_selftests.fuzz.findings import FindingKey
from kapi_selftests.fuzz.generate import PlanGenerator
from kapi_selftests.fuzz.repro import Reproducer, load, render_c, render_pytest, save
from kapi_selftests.oracle.spec import builtin_specs
from kapi_selftests.plan import Buf, BufKind, CallPlan, Fd, FdKind, Lit, PathKind
from kapi_selftests.plan import Path as PathArg

SPECS = builtin_specs()
KEY = FindingKey("spec_match mismatch", "read", "fd:range")
PLANS = (CallPlan("open", (PathArg(PathKind.UNTERMINATED), Lit(0x40), Lit(0o600))),
         CallPlan("read", (Fd(FdKind.SOCKET, 1), Buf(BufKind.SHORT, 64), Lit(64))))


def _repro(source: str = "kapi", plans: tuple[CallPlan, ...] = PLANS,
           engine: str = "harness") -> Reproducer:
    return Reproducer(KEY, plans, "exit spec_match=1, oracle says 0 */ (comment end)", ("ev",),
                      seed=3, shard=1, batch=9, source=source, rejected=True,
                      spec=SPECS[f"sys_{plans[-1].name}"], engine=engine)


def test_save_writes_three_files_and_json_round_trips(tmp_path: Path) -> None:
    paths = save(_repro(), tmp_path)
    assert [p.name for p in paths] == ["repro.json", "test_repro.py", "repro.c"]
    r = load(paths[0])
    assert r.plans == PLANS and r.key == KEY and r.seed == 3 and r.rejected is True
    assert load(paths[0].parent).plans == PLANS  # the directory works too


def test_the_engine_that_found_it_is_kept_and_replays_it(tmp_path: Path) -> None:
    import json

    paths = save(_repro(engine="batch"), tmp_path)
    assert load(paths[0]).engine == "batch"
    assert "ENGINE = 'batch'" in paths[1].read_text()
    assert "engine=ENGINE" in paths[1].read_text()
    d = json.loads(paths[0].read_text())
    del d["engine"]  # written before reproducers named their engine: the harness's
    paths[0].write_text(json.dumps(d))
    assert load(paths[0]).engine == "harness"


def test_c_reproducer_of_the_batch_engine_shares_one_fd_per_kind() -> None:
    plans = (CallPlan("close", (Fd(FdKind.REGULAR),)),
             CallPlan("read", (Fd(FdKind.REGULAR), Buf(BufKind.MAPPED, 16), Lit(16))))
    batch, harness = render_c(_repro(plans=plans, engine="batch")), \
        render_c(_repro(plans=plans))
    assert batch.count('shared_fd_of("regular")') == 2 and ' fd_of("regular")' not in batch
    assert harness.count('(unsigned int)fd_of("regular")') == 2
    assert "shared_fd_of(" not in harness.split("int main(void)")[1]
    assert "calls share one fd per kind" in batch.split("#define")[0]
    assert 'shared_buf_of("mapped", 16UL)' in batch and 'buf_of("mapped", 16UL)' in harness
    assert "shared_buf_of(" not in harness.split("int main(void)")[1]


def test_load_rejects_a_file_that_is_not_a_reproducer(tmp_path: Path) -> None:
    from kapi_selftests.errors import UsageError

    f = tmp_path / "x.json"
    f.write_text("{}")
    with pytest.raises(UsageError, match="not a kapi-selftests reproducer"):
        load(f)


def test_pytest_reproducer_is_valid_python_naming_the_key() -> None:
    text = render_pytest(_repro())
    ast.parse(text)
    assert "FindingKey('spec_match mismatch', 'read', 'fd:range')" in text
    assert "def test_repro" in text


def test_c_reproducer_has_raw_syscalls_writev_toggles_and_expectations() -> None:
    text = render_c(_repro())
    assert "syscall(2, c0[0]" in text and "syscall(0, c1[0]" in text
    assert "writev(" in text and "events/kapi/enable" in text
    assert 'expect("spec_match"' in text and 'expect("enter"' in text
    assert "fd=%lld, buf=0x%llx, count=0x%llx" in text
    assert "*/ (comment end)" not in text  # the message cannot end the comment early


def test_c_reproducer_for_generic_events_enables_each_syscall() -> None:
    text = render_c(_repro("syscalls"))
    assert "events/syscalls/sys_enter_open/enable" in text
    assert "events/syscalls/sys_exit_read/enable" in text
    assert '": sys_read -> "' in text


@pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc not installed")
@pytest.mark.parametrize(("source", "engine"), [("kapi", "harness"), ("syscalls", "harness"),
                                                ("kapi", "batch")])
def test_c_reproducer_compiles_with_gcc_wall(tmp_path: Path, source: str, engine: str) -> None:
    # every argument kind the generator makes, in one program
    plans = tuple(PlanGenerator(SPECS, seed=5).batch(0, 60))
    kinds = {PathArg(k) for k in PathKind} | {Fd(k) for k in FdKind}
    extra = tuple(CallPlan("close", (a,)) if isinstance(a, Fd) else
                  CallPlan("open", (a, Lit(0), Lit(0))) for a in sorted(kinds, key=repr))
    extra += tuple(CallPlan("read", (Fd(FdKind.REGULAR), Buf(k, 16), Lit(16))) for k in BufKind)
    extra += (CallPlan("madvise", (Buf(BufKind.MAPPED, 4096, 2048), Lit(4096), Lit(0))),)
    c = tmp_path / "repro.c"
    c.write_text(render_c(_repro(source, plans + extra, engine)))
    r = subprocess.run(["gcc", "-Wall", "-Wextra", "-Werror", "-O2", "-o", str(tmp_path / "r"),
                        str(c)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
