"""pytest glue shared by the root conftest and the in-guest suite: the skip/strict policy."""

from __future__ import annotations

import pytest

__all__ = ["require"]


def require(config: pytest.Config, reason: str | None) -> None:
    """Skip with ``reason`` (or, with ``--require-kapi``/``KAPI_STRICT=1``, fail) when a
    probe returned one; do nothing when it returned None."""
    if reason is None:
        return
    if config.getoption("--require-kapi", default=False):
        pytest.fail(f"required: {reason}", pytrace=False)
    pytest.skip(reason)
