"""Unit tests: the hypothesis profiles and seed, set before the modules that use them import."""

from __future__ import annotations

import pytest

from kapi_selftests.testing import hypothesis_profiles, hypothesis_seed

hypothesis_profiles()


@pytest.hookimpl(trylast=True)  # after hypothesis's plugin has read --hypothesis-seed
def pytest_configure(config: pytest.Config) -> None:
    hypothesis_seed(config)
