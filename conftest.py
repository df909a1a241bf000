"""Root pytest configuration: options, markers, hypothesis profiles, skip/strict policy.

- ``--kernel PATH``: boot PATH in a QEMU guest and run the in-guest suite there
  (see :mod:`kapi_selftests.host`); without it, guest tests run on this kernel.
- ``--require-kapi`` (or ``KAPI_STRICT=1``): a missing kapi tracepoint or spec
  fails instead of skipping, so a misconfigured kernel cannot pass as all-skipped.
- Hypothesis profiles ``ci`` (derandomised, bounded), ``dev`` and ``fuzz`` (long);
  choose with ``--hypothesis-profile`` or ``KAPI_HYPOTHESIS_PROFILE``.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, Phase, settings

# --kernel on the host: boot the guest and report each in-guest test here
pytest_plugins = ["kapi_selftests.host.pytest_plugin"]

settings.register_profile(
    "ci", derandomize=True, max_examples=20, deadline=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.register_profile(
    "dev", max_examples=200, deadline=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.register_profile(
    "fuzz", max_examples=20_000, deadline=None, print_blob=True,
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
    suppress_health_check=list(HealthCheck),
)
settings.load_profile(os.environ.get("KAPI_HYPOTHESIS_PROFILE", "ci"))


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("kapi-selftests")
    group.addoption("--kernel", metavar="PATH", default=os.environ.get("KAPI_KERNEL") or None,
                    help="boot this kernel (bzImage, build dir, PVH vmlinux, extracted "
                         "package) in QEMU and run the in-guest suite there (default: "
                         "KAPI_KERNEL)")
    group.addoption("--modules", metavar="DIR", default=None,
                    help="modules directory of a modular (distribution) kernel")
    group.addoption("--require-kapi", action="store_true",
                    default=os.environ.get("KAPI_STRICT") == "1",
                    help="fail instead of skip when the kapi tracepoints or specs are missing")



def pytest_configure(config: pytest.Config) -> None:
    # A seed for every run, so that every failure can print the line that replays it.
    if getattr(config.option, "hypothesis_seed", None) is None:
        config.option.hypothesis_seed = int.from_bytes(os.urandom(4), "little")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    outcome = yield
    rep = outcome.get_result()
    if rep.failed and call.when == "call":
        seed = item.config.option.hypothesis_seed
        profile = os.environ.get("KAPI_HYPOTHESIS_PROFILE", "ci")
        rep.sections.append((
            "replay",
            f"seed {seed}: KAPI_HYPOTHESIS_PROFILE={profile} python -m pytest "
            f"'{item.nodeid}' --hypothesis-seed={seed}",
        ))
