"""Unit tests: the hypothesis profiles and seed, set before the modules that use them import."""

from __future__ import annotations

import pytest

from kapi_selftests.testing import hypothesis_profiles, hypothesis_seed

hypothesis_profiles()


@pytest.hookimpl(trylast=True)  # after hypothesis's plugin has read --hypothesis-seed
def pytest_configure(config: pytest.Config) -> None:
    hypothesis_seed(config)


@pytest.fixture(autouse=True)
def _forget_the_accelerator_decision() -> object:
    """The process keeps its KVM decision (``qemu._CHOSEN``); a unit test that fakes one
    must not leave it to the VM tests of the same session (they booted KVM that aborts)."""
    from kapi_selftests.host import qemu

    yield
    qemu._CHOSEN.clear()
