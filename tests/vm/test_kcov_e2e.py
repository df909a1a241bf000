"""``fuzz --kernel --kcov`` in real guests: a KCOV kernel guides a campaign; a kernel
without KCOV is refused with the reason.

The KCOV kernel comes from ``KAPI_KCOV_KERNEL`` (build it with ``build-kernel
--config vm/kapi.config --config vm/kcov.config``); without it that test skips.
The refusal boots the stock kernel (what CI has), with the host's check of its
config skipped, so that the guest has to tell: 10-20 s.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from kapi_selftests import cli
from kapi_selftests.cmd import fuzz as fuzz_cmd
from kapi_selftests.errors import KSFT_PASS, KSFT_SKIP
from kapi_selftests.fuzz import kcov
from kapi_selftests.host import kernel
from kapi_selftests.testing import missing_vm_tools

pytestmark = [pytest.mark.vm]


@pytest.fixture(scope="module")
def kcov_kernel() -> kernel.KernelImage:
    path = os.environ.get("KAPI_KCOV_KERNEL")
    if not path:
        pytest.skip("no KCOV kernel: set KAPI_KCOV_KERNEL to one built with vm/kcov.config")
    reason = missing_vm_tools()
    if reason:
        pytest.skip(reason)
    k = kernel.find_kernel(path)
    if k.config is not None and kernel.read_kconfig(k.config).get("CONFIG_KCOV") != "y":
        pytest.fail(f"KAPI_KCOV_KERNEL={path}: CONFIG_KCOV is not set in {k.config}")
    return k


def test_kcov_campaign_keeps_calls_that_reach_new_kernel_code(
        kcov_kernel: kernel.KernelImage, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "camp"
    rc = cli.main(["fuzz", "--kernel", str(kcov_kernel.image), "--kcov", "--calls", "12000",
                   "--seed", "1", "--out", str(out), "--json"])
    summary = json.loads(capsys.readouterr().out)
    assert rc == KSFT_PASS, summary
    assert summary["calls"] == 12000 and summary["findings"] == []
    k = summary["kcov"]
    edges, corpus = k["edges"], k["corpus"]
    assert edges > 2000 and corpus > 20 and k["pcs"] > 2000
    # named from the build directory's System.map: the validator ran, and the kernel
    # functions of the five syscalls' paths
    assert k["functions"] > 200
    assert "kapi_validate_syscall_params" in k["kapi_functions"]["reached"]
    assert "kapi_print_spec" in k["kapi_functions"]["not_reached"]  # no syscall prints a spec
    shard = out / "shard-0"
    assert kcov.union_edges([shard]) == edges
    assert len((shard / kcov.CORPUS_FILE).read_text().splitlines()) == corpus
    state = json.loads((shard / "state.json").read_text())
    assert state["kcov"]["edges"] == edges and state["kcov"]["pcs_per_call"] > 50
    assert f"kernel coverage (KCOV): {edges} distinct kernel edges" in \
        (out / "report.md").read_text()


def test_kcov_on_a_kernel_without_it_is_refused_by_the_guest(
        vm_kernel: kernel.KernelImage, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    # The host's check of the kernel's config is skipped (a kernel whose config is not
    # beside it): the agent in the guest finds no KCOV and says so; no crash, no restart.
    if vm_kernel.config is not None and \
            kernel.read_kconfig(vm_kernel.config).get("CONFIG_KCOV") == "y":
        pytest.skip(f"{vm_kernel.image} has KCOV")
    monkeypatch.setattr(fuzz_cmd, "_check_kcov_config", lambda kimg: None)
    rc = cli.main(["fuzz", "--kernel", str(vm_kernel.image), "--kcov", "--calls", "100",
                   "--out", str(tmp_path / "camp")])
    err = capsys.readouterr().err
    assert rc == KSFT_SKIP, err
    assert "agent: kernel has no KCOV" in err and "vm/kcov.config" in err
    assert not (tmp_path / "camp" / "shard-0" / "crashes.jsonl").exists()  # not a crash
