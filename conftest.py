"""Root pytest configuration: options, markers, hypothesis profiles, skip/strict policy.

- ``--kernel PATH``: boot PATH in a QEMU guest and run the in-guest suite there
  (see :mod:`kapi_selftests.host`); without it, guest tests run on this kernel.
- ``--require-kapi`` (or ``KAPI_STRICT=1``): a missing kapi tracepoint or spec
  fails instead of skipping, so a misconfigured kernel cannot pass as all-skipped.
- Hypothesis profiles ``ci`` (deterministic, bounded), ``dev`` and ``fuzz`` (long);
  choose with ``KAPI_HYPOTHESIS_PROFILE``. They are registered by the conftests of
  the directories whose tests use hypothesis (``tests/unit``, ``tests/guest/pbt``):
  a session that collects none of them never imports it. Those conftests also
  choose the seed every test draws from (``--hypothesis-seed``, else ``KAPI_SEED``,
  else 0 under ``ci`` and a random one under the others: see
  ``kapi_selftests.testing.hypothesis_seed``); a failing test prints the line that
  replays it with that seed.
"""

from __future__ import annotations

import os

import pytest

# --kernel on the host: boot the guest and report each in-guest test here
pytest_plugins = ["kapi_selftests.host.pytest_plugin"]


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("kapi-selftests")
    group.addoption("--kernel", metavar="PATH", default=os.environ.get("KAPI_KERNEL") or None,
                    help="boot this kernel (bzImage, build dir, PVH vmlinux, extracted "
                         "package) in QEMU and run the in-guest suite there (default: "
                         "KAPI_KERNEL)")
    group.addoption("--modules", metavar="DIR", default=None,
                    help="modules directory of a modular (distribution) kernel")
    group.addoption("--accel", choices=("auto", "kvm", "tcg"),
                    default=os.environ.get("KAPI_ACCEL") or "auto",
                    help="with --kernel: auto (default, or KAPI_ACCEL) takes KVM once it has "
                         "been seen to boot a kernel on this host boot, else TCG")
    group.addoption("--runner", choices=("qemu", "vng"), default="qemu",
                    help="with --kernel: boot with QEMU directly (default) or virtme-ng")
    group.addoption("--require-kapi", action="store_true",
                    default=os.environ.get("KAPI_STRICT") == "1",
                    help="fail instead of skip when the kapi tracepoints or specs are missing")



@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    outcome = yield
    rep = outcome.get_result()
    if rep.failed and call.when == "call":
        # the seed the hypothesis conftests chose and forced on every test (None: the
        # test's directory uses none)
        seed = getattr(item.config.option, "hypothesis_seed", None)
        if seed is None:
            rep.sections.append(("replay", f"python -m pytest '{item.nodeid}'"))
            return
        profile = os.environ.get("KAPI_HYPOTHESIS_PROFILE", "ci")
        rep.sections.append((
            "replay",
            f"seed {seed}: KAPI_HYPOTHESIS_PROFILE={profile} python -m pytest "
            f"'{item.nodeid}' --hypothesis-seed={seed}",
        ))
