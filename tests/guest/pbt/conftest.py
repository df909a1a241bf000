"""The in-guest property-based tests (hypothesis): its profiles, loaded before they import.

The guest runs this directory after the rest of ``tests/guest``, whose tests never
import hypothesis, so the first results come before its import (see
``kapi_selftests.cmd.run``).
"""

from __future__ import annotations

import pytest

from kapi_selftests.testing import hypothesis_profiles, hypothesis_seed

hypothesis_profiles()


@pytest.hookimpl(trylast=True)  # after hypothesis's plugin has read --hypothesis-seed
def pytest_configure(config: pytest.Config) -> None:
    hypothesis_seed(config)
