"""Splat detection on recorded consoles (tests/data/console-*.txt) and console capture."""

from __future__ import annotations

import io
import time
from pathlib import Path

import pytest
from datadir import DATA

from kapi_selftests.host.console import (
    EXCERPT_MAX_LINES,
    ConsoleCapture,
    SplatKind,
    find_splats,
    read_console,
)


def test_console_sysrq_panic_is_one_panic_with_its_trace() -> None:
    splats = find_splats(read_console(DATA / "console-sysrq-panic-6.1-tcg.txt"))
    assert [s.kind for s in splats] == [SplatKind.PANIC]
    sp = splats[0]
    assert "sysrq triggered crash" in sp.summary
    assert any("sysrq_handle_crash" in ln for ln in sp.excerpt)
    assert sp.excerpt[0].endswith("Kernel panic - not syncing: sysrq triggered crash")


def test_console_clean_suite_run_has_no_splat() -> None:
    assert find_splats(read_console(DATA / "console-clean-suite-6.1-tcg.txt")) == []


def test_console_hung_guest_has_no_splat() -> None:
    # a hang shows nothing on the console: the no-progress timeout catches it
    assert find_splats(read_console(DATA / "console-hung-sleep-killed-6.1-tcg.txt")) == []


# Real reports, each from a public source, kept as the console printed them:
# - console-lockdep-circular-4.17-syzbot.txt, console-lockdep-recursive-4.16-syzbot.txt,
#   console-refcount-addition-on-0-5.15-syzbot.txt,
#   console-refcount-underflow-panic-6.11-arm-syzbot.txt: syzbot consoles kept by
#   google/syzkaller as pkg/report/testdata/linux/report/250, 234, 622 and 733 (their
#   TITLE/TYPE header lines dropped);
# - console-sleeping-in-atomic-6.9-lkp.txt and console-suspicious-rcu-usage-6.6-lkp.txt:
#   the kernel test robot's reports on linux-api, <202404251525.39b4af4e-lkp@intel.com>
#   and <202310210005.51e08d62-oliver.sang@intel.com> (archive
#   linux-mailinglist-archives/linux-api.vger.kernel.org.0);
# - console-kfence-use-after-free-6.2-lkml.txt: Jon Hunter on linux-kernel, 2023-03-20,
#   <b529cb69-0602-9eed-fc02-2f068707a006@nvidia.com> (arm64).
@pytest.mark.parametrize(("name", "kinds", "head"), [
    ("console-lockdep-circular-4.17-syzbot.txt", [SplatKind.LOCKDEP],
     "WARNING: possible circular locking dependency detected"),
    ("console-lockdep-recursive-4.16-syzbot.txt", [SplatKind.LOCKDEP],
     "WARNING: possible recursive locking detected"),
    ("console-suspicious-rcu-usage-6.6-lkp.txt", [SplatKind.RCU_USAGE],
     "WARNING: suspicious RCU usage"),
    ("console-sleeping-in-atomic-6.9-lkp.txt", [SplatKind.SLEEP_IN_ATOMIC] * 2,
     "BUG: sleeping function called from invalid context at include/linux/sched/mm.h:315"),
    ("console-refcount-addition-on-0-5.15-syzbot.txt", [SplatKind.REFCOUNT],
     "refcount_t: addition on 0; use-after-free."),
    ("console-refcount-underflow-panic-6.11-arm-syzbot.txt",
     [SplatKind.REFCOUNT, SplatKind.PANIC], "WARNING: CPU: 1 PID: 46 at lib/refcount.c:28"),
    ("console-kfence-use-after-free-6.2-lkml.txt", [SplatKind.KFENCE],
     "BUG: KFENCE: use-after-free read in pci_bus_release_domain_nr+0x10/0x70"),
])
def test_console_real_report_is_found_with_its_kind(name: str, kinds: list[SplatKind],
                                                    head: str) -> None:
    lines = read_console(DATA / name)
    splats = find_splats(lines)
    assert [s.kind for s in splats] == kinds
    assert splats[0].summary.startswith(f"kernel {kinds[0].value}: {head}")


def test_console_lockdep_report_keeps_its_locks_and_is_capped() -> None:
    (sp,) = find_splats(read_console(DATA / "console-lockdep-circular-4.17-syzbot.txt"))
    text = "\n".join(sp.excerpt)
    assert "is trying to acquire lock:" in text and "but task is already holding lock:" in text
    assert len(sp.excerpt) == EXCERPT_MAX_LINES  # 159 lines and no end marker in 4.17


def test_console_reports_end_at_their_task_end() -> None:
    # the robot's log has the same report twice, back to back: each ends at "</TASK>"
    a, b = find_splats(read_console(DATA / "console-sleeping-in-atomic-6.9-lkp.txt"))
    assert a.excerpt[-1].endswith("</TASK>") and b.line_no == len(a.excerpt) + 1
    assert any("kmem_cache_alloc" in ln for ln in a.excerpt)
    (rcu,) = find_splats(read_console(DATA / "console-suspicious-rcu-usage-6.6-lkp.txt"))
    assert any("suspicious rcu_dereference_check() usage!" in ln for ln in rcu.excerpt)
    assert rcu.excerpt[-1].endswith("</TASK>")


def test_console_kfence_report_keeps_access_and_allocation() -> None:
    (sp,) = find_splats(read_console(DATA / "console-kfence-use-after-free-6.2-lkml.txt"))
    assert sp.line_no == 3  # the BUG line, after the "=" rule and an unrelated line
    text = "\n".join(sp.excerpt)
    assert "Use-after-free read at 0x000000007f3b80eb (in kfence-#115):" in text
    assert "allocated by task 96" in text


def test_console_kfence_report_ends_at_its_closing_rule() -> None:
    lines = read_console(DATA / "console-kfence-use-after-free-6.2-lkml.txt")
    short = [ln for ln in lines if "(in kfence-#" in ln or "BUG: KFENCE" in ln
             or ln.endswith("=" * 66) or "Comm:" in ln] + ["[   20.0] after the report"]
    (sp,) = find_splats(short)
    assert sp.excerpt[-1].endswith("=" * 66) and "after the report" not in sp.excerpt[-1]


# One-line heads of the kernel's own report formats (the kernel prints these exactly).
@pytest.mark.parametrize(("line", "kind"), [
    ("[   12.3] WARNING: CPU: 0 PID: 1 at kernel/foo.c:12 foo+0x1/0x2", SplatKind.WARNING),
    ("[    1.0] BUG: kernel NULL pointer dereference, address: 0000000000000000",
     SplatKind.BUG),
    ("[    1.0] kernel BUG at mm/slub.c:100!", SplatKind.BUG),
    ("[    1.0] Oops: 0002 [#1] PREEMPT SMP NOPTI", SplatKind.OOPS),
    ("[    1.0] general protection fault, probably for non-canonical address", SplatKind.OOPS),
    ("[    1.0] BUG: KASAN: slab-out-of-bounds in foo+0x1/0x2", SplatKind.KASAN),
    ("[    1.0] UBSAN: array-index-out-of-bounds in lib/foo.c:3:4", SplatKind.UBSAN),
    ("[   30.0] rcu: INFO: rcu_preempt self-detected stall on CPU", SplatKind.RCU_STALL),
    ("[  242.0] INFO: task sh:107 blocked for more than 120 seconds.", SplatKind.HUNG_TASK),
    ("[   30.0] watchdog: BUG: soft lockup - CPU#0 stuck for 22s! [sh:1]", SplatKind.BUG),
    ("[    1.0] Kernel panic - not syncing: Fatal exception", SplatKind.PANIC),
    ("[    1.0] WARNING: inconsistent lock state", SplatKind.LOCKDEP),
    ("[    1.0] WARNING: possible irq lock inversion dependency detected", SplatKind.LOCKDEP),
    ("[    1.0] WARNING: bad unlock balance detected!", SplatKind.LOCKDEP),
    ("[    1.0][  T12] refcount_t: underflow; use-after-free.", SplatKind.REFCOUNT),
    ("[    1.0] BUG: KFENCE: out-of-bounds read in foo+0x1/0x2", SplatKind.KFENCE),
])
def test_console_each_report_kind_is_found(line: str, kind: SplatKind) -> None:
    assert [s.kind for s in find_splats(["boot", line, "after"])] == [kind]


def test_console_cut_here_takes_the_kind_of_the_next_line() -> None:
    lines = ["[ 1.0] ------------[ cut here ]------------",
             "[ 1.0] WARNING: CPU: 0 PID: 1 at kernel/foo.c:12 foo+0x1/0x2",
             "[ 1.0] Call Trace:", "[ 1.0] ---[ end trace 0000000000000000 ]---",
             "kapi-selftests: first test starting"]
    (sp,) = find_splats(lines)
    assert sp.kind is SplatKind.WARNING
    assert sp.line_no == 1
    assert len(sp.excerpt) == 4
    assert sp.summary.startswith("kernel WARNING: WARNING: CPU: 0")


def test_console_oops_then_panic_are_two_splats() -> None:
    lines = ["[1.0] BUG: kernel NULL pointer dereference", "[1.0] Oops: 0002 [#1]",
             "[1.0] Call Trace:", "[1.0] Kernel panic - not syncing: Fatal exception"]
    assert [s.kind for s in find_splats(lines)] == [SplatKind.BUG, SplatKind.PANIC]


def test_console_test_output_mentioning_bug_midline_is_not_a_splat() -> None:
    assert find_splats(["assert msg == 'BUG: x'", "E   WARNING: CPU: is fine here"]) == []


def test_console_excerpt_is_capped() -> None:
    lines = ["[1.0] BUG: unable to handle page fault"] + ["[1.0]  frame"] * 500
    (sp,) = find_splats(lines)
    assert len(sp.excerpt) == EXCERPT_MAX_LINES


def test_console_capture_writes_file_and_marks(tmp_path: Path) -> None:
    stream = io.BytesIO(b"boot\r\nkapi: init\nmore\npartial")
    cap = ConsoleCapture(stream, tmp_path / "c.log", markers=("kapi: init",)).start()
    cap.join(5)
    assert (tmp_path / "c.log").read_bytes() == b"boot\r\nkapi: init\nmore\npartial"
    assert "kapi: init" in cap.marks
    assert cap.last_output >= cap.started
    assert read_console(tmp_path / "c.log") == ["boot", "kapi: init", "more", "partial"]


def test_console_capture_flushes_before_the_stream_ends(tmp_path: Path) -> None:
    import os
    r, w = os.pipe()
    with os.fdopen(r, "rb") as rf:
        cap = ConsoleCapture(rf, tmp_path / "c.log").start()
        os.write(w, b"first line\n")
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not (tmp_path / "c.log").exists():
            time.sleep(0.01)
        while time.monotonic() < deadline and (tmp_path / "c.log").read_bytes() == b"":
            time.sleep(0.01)
        assert (tmp_path / "c.log").read_bytes() == b"first line\n"
        os.close(w)
        cap.join(5)


def test_console_missing_log_reads_empty(tmp_path: Path) -> None:
    assert read_console(tmp_path / "none.log") == []


def test_console_kapi_validator_warnings_are_not_splats() -> None:
    # KAPI_RUNTIME_CHECKS prints "Parameter ..." warnings for rejected calls (first
    # 300 lines of a real run of the suite on the KAPI kernel): expected, not a splat
    lines = read_console(DATA / "console-kapi-validator-warnings-7.2-tcg.txt")
    assert any(ln.lstrip("[ 0123456789.]").startswith("Parameter ") for ln in lines)
    assert find_splats(lines) == []
