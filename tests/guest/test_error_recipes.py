"""The fuzzer's error recipes (generate.ERROR_RECIPES) give their errno on the running
kernel: all of them issued in one batch (fresh fds, files and buffers per call, one
capture window), each judged like any other call (every check passes) and returning
exactly the error it aims at."""

from __future__ import annotations

import errno
import random

import pytest

from kapi_selftests.fuzz.generate import ERROR_RECIPES
from kapi_selftests.guest.harness import Harness
from kapi_selftests.records import CallCheck, EventSource

_KEYS = sorted(ERROR_RECIPES)
_results: dict[EventSource, dict[tuple[str, str], CallCheck]] = {}


def _checks(h: Harness) -> dict[tuple[str, str], CallCheck]:
    if h.source not in _results:
        plans = [ERROR_RECIPES[k](random.Random(1)) for k in _KEYS]
        _results[h.source] = dict(zip(_KEYS, h.run(plans).checks, strict=True))
    return _results[h.source]


@pytest.mark.parametrize("spec,name", _KEYS, ids=lambda v: str(v))
def test_error_recipe_returns_its_errno(any_harness: Harness, spec: str, name: str) -> None:
    check = _checks(any_harness)[(spec, name)]
    assert check.ok, check.explain()
    assert check.record.errno == getattr(errno, name), check.explain()
