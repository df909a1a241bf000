"""The running kernel's specs against a reference: one result per difference.

The oracle predicts calls from the kernel's own specs, so a wrong spec looks
self-consistent to every other test. Here the kernel's debugfs specs are compared
with the reference (``KAPI_REFERENCE_SPECS``: ``builtin``, a directory saved with
``kapi-selftests specs --save DIR``, or unset: the built-in v4 model when the kernel's
specs have its shape). Each difference is its own test, named by its class and what
changed: stricter, looser, stricter and looser, or a changed return check fail; a
text-only difference passes (its name says so). A spec with no difference passes as
"same rules". Collected from debugfs, so the tests are known before any runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from kapi_selftests.errors import KapiError
from kapi_selftests.oracle import reference
from kapi_selftests.oracle.spec import load_debugfs, missing_kapi_specs
from kapi_selftests.testing import require


@dataclass(frozen=True, slots=True)
class _Case:
    id: str
    diff: reference.SpecDifference | None = None
    skip: str | None = None  # a probe's reason: skip (fail with --require-kapi)
    error: str | None = None  # the reference the user chose cannot be used: fail


def _id(text: str) -> str:
    # KTAP reads '#' as a directive; nested brackets make node ids hard to select
    return " ".join(text.replace("[", "").replace("]", "").replace("#", "nr").split())


def _cases() -> list[_Case]:
    reason = missing_kapi_specs()
    if reason is not None:
        return [_Case("no-debugfs-specs", skip=reason)]
    try:
        kernel = load_debugfs()
    except KapiError as e:
        return [_Case("debugfs-specs-unreadable", error=str(e))]
    choice = reference.reference_choice()
    try:
        ref, what = reference.load_reference(choice, kernel)
    except KapiError as e:
        if choice:
            return [_Case("reference-unusable", error=f"{e} ({e.hint})" if e.hint else str(e))]
        return [_Case("no-reference", skip=str(e))]
    cases = [_Case(_id(f"{name}: same rules as the {what}"))
             for name in reference.same_rules(ref, kernel)]
    for d in reference.compare_to_reference(ref, kernel):
        cases.append(_Case(_id(f"{d.spec}: {d.cls.value}: {d.change}"), diff=d))
    return cases


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "case" in metafunc.fixturenames:
        cases = _cases()
        metafunc.parametrize("case", cases, ids=[c.id for c in cases])


def test_spec_against_reference(request: pytest.FixtureRequest, case: _Case) -> None:
    require(request.config, case.skip)
    if case.error is not None:
        pytest.fail(case.error, pytrace=False)
    d = case.diff
    if d is None:
        return  # the same rules as the reference
    assert not d.fails, (
        f"{d.spec} differs from the reference: {d.cls.value}: {d.change} ({d.why})")
