"""pytest glue shared by the root conftest and the in-guest suite: the skip/strict policy."""

from __future__ import annotations

import pytest

__all__ = ["require", "missing_vm_tools"]


def require(config: pytest.Config, reason: str | None) -> None:
    """Skip with ``reason`` (or, with ``--require-kapi``/``KAPI_STRICT=1``, fail) when a
    probe returned one; do nothing when it returned None."""
    if reason is None:
        return
    if config.getoption("--require-kapi", default=False):
        pytest.fail(f"required: {reason}", pytrace=False)
    pytest.skip(reason)


def missing_vm_tools() -> str | None:
    """Why no guest can boot here (no QEMU, no static busybox), or None."""
    import shutil

    from kapi_selftests.errors import MissingFeature
    from kapi_selftests.host import initramfs

    if shutil.which("qemu-system-x86_64") is None:
        return "qemu-system-x86_64 not installed (apt-get install qemu-system-x86)"
    try:
        initramfs.find_busybox()
    except MissingFeature as e:
        return str(e)
    return None
