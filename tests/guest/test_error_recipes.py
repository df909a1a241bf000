"""The fuzzer's error recipes (generate.ERROR_RECIPES) give their errno on the running
kernel: each is one call with the harness's fresh fds, files and buffers, judged like
any other (all checks pass) and returning exactly the error it aims at."""

from __future__ import annotations

import errno
import random

import pytest

from kapi_selftests.generate import ERROR_RECIPES
from kapi_selftests.harness import Harness


@pytest.mark.parametrize("spec,name", sorted(ERROR_RECIPES), ids=lambda v: str(v))
def test_error_recipe_returns_its_errno(any_harness: Harness, spec: str, name: str) -> None:
    plan = ERROR_RECIPES[(spec, name)](random.Random(1))
    result = any_harness.run([plan])
    (check,) = result.checks
    assert check.ok, check.explain()
    assert check.record.errno == getattr(errno, name), check.explain()
