"""What the VM tests share: the kernel they boot."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kapi_selftests.host import kernel
from kapi_selftests.testing import missing_vm_tools

_STOCK = Path(__file__).resolve().parents[2] / ".cache" / "kernels" / "stock"


@pytest.fixture(scope="module")
def vm_kernel(request: pytest.FixtureRequest) -> kernel.KernelImage:
    """``--kernel``, else ``KAPI_KERNEL``, else the stock kernel ``.ci/setup`` fetched."""
    path = request.config.getoption("--kernel") or os.environ.get("KAPI_KERNEL")
    if not path:
        if not _STOCK.exists():
            pytest.skip("no kernel to boot: pass --kernel, set KAPI_KERNEL, or run "
                        "vm/get-stock-kernel")
        path = str(_STOCK)
    reason = missing_vm_tools()
    if reason:
        pytest.skip(reason)
    return kernel.find_kernel(path, request.config.getoption("--modules"))
