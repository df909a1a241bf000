"""A real boot of a stock kernel whose modules are compressed (``.ko.xz``).

Debian unstable's kernel (7.x) ships its modules as ``.ko.xz`` under
``usr/lib/modules/<release>`` next to ``vmlinuz`` and ``config``, and needs 9p and
netfs as modules: the guest boots only if the initramfs packs them decompressed in
dependency order. ``vm/get-stock-kernel --suite unstable --link stock-compressed``
fetches it (about 110 MB, 10-25 s here) into ``.cache/kernels/stock-compressed``;
``KAPI_COMPRESSED_KERNEL=PATH`` names another. Without one, or without QEMU, this
skips with the reason. One TCG guest, 40-60 s.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kapi_selftests.host import kernel, qemu, runner
from kapi_selftests.report import Outcome
from kapi_selftests.testing import missing_vm_tools

pytestmark = [pytest.mark.vm]

_COMPRESSED = Path(__file__).resolve().parents[2] / ".cache" / "kernels" / "stock-compressed"


@pytest.fixture(scope="module")
def compressed_kernel() -> kernel.KernelImage:
    path = Path(os.environ.get("KAPI_COMPRESSED_KERNEL") or _COMPRESSED)
    if not path.exists():
        pytest.skip(f"no kernel with compressed modules at {path}: run "
                    "vm/get-stock-kernel --suite unstable --link stock-compressed "
                    "(needs Debian unstable in the apt sources) or set KAPI_COMPRESSED_KERNEL")
    reason = missing_vm_tools()
    if reason:
        pytest.skip(reason)
    return kernel.find_kernel(path)


def test_compressed_modules_kernel_boots_and_runs_smoke(compressed_kernel: kernel.KernelImage,
                                                        tmp_path: Path) -> None:
    mods = kernel.guest_modules(compressed_kernel)
    suffixes = {s for s, _what in kernel.MODULE_COMPRESSIONS}
    compressed = [p for p in mods.paths if p.suffix in suffixes]
    # The premise: this kernel's guest boot needs compressed modules.
    assert compressed, f"{compressed_kernel.image}: guest modules {mods.paths} not compressed"
    config = qemu.GuestConfig(kernel=compressed_kernel.image, timeout_s=300)
    req = runner.SuiteRequest(kernel=compressed_kernel, config=config, work_dir=tmp_path,
                              keyword="smoke", guests=1)
    results, runs = runner.run_guests(req)
    run = runs[0]
    by_name = {r.name: r for r in results}
    smoke = by_name.get("tests/guest/test_smoke.py::test_smoke_tracefs_mounted")
    assert smoke is not None, f"guest test missing; results: {results}; console: {run.console}"
    assert smoke.outcome is Outcome.PASS, smoke
    assert run.status == 0 and not run.splats
    assert "insmod" not in run.console.read_text(errors="replace")  # /init's "insmod M failed"
