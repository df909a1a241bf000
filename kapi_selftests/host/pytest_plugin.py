"""pytest on the host with ``--kernel PATH``: run the in-guest suite in a guest, report it here.

Registered from the root ``conftest.py``. With ``--kernel``, ``tests/guest`` is not
collected on the host; instead the guest is booted once at collection time and
every guest test becomes a host item of the same name (under
``kernel[<release>]::``) that passes, skips with its reason or fails with its
message. A kernel splat, a hang or a lost guest is one more failing item.
Under pytest-xdist the first worker boots and the others read its results.
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kapi_selftests.errors import KapiError
from kapi_selftests.report import Outcome, TestResult, leaves

_GUEST_DIR = Path(__file__).resolve().parents[2] / "tests" / "guest"


class GuestTestFailed(Exception):
    """A test that failed in the guest (its message and traceback text)."""


class GuestItem(pytest.Item):
    """One in-guest test, replayed on the host from its recorded result."""

    def __init__(self, *, result: TestResult, **kw: Any) -> None:
        super().__init__(**kw)
        self.result = result

    def runtest(self) -> None:
        r = self.result
        if r.outcome is Outcome.SKIP:
            pytest.skip(r.reason)
        if r.outcome in (Outcome.FAIL, Outcome.ERROR):
            raise GuestTestFailed("\n".join((r.reason, *r.diagnostics)))

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException],
                     style: Any = None) -> str:
        if isinstance(excinfo.value, GuestTestFailed):
            return f"[in guest] {excinfo.value}"
        return str(super().repr_failure(excinfo))

    def reportinfo(self) -> tuple[str, int | None, str]:
        return "guest", None, self.name


def _run_guest_suite(config: pytest.Config) -> list[TestResult]:
    """Boot the guest and return host results (LostGuest becomes one ERROR result)."""
    # only with --kernel: a plain pytest run never boots a guest
    from kapi_selftests.host import kernel, qemu, runner

    try:
        kimg = kernel.find_kernel(config.getoption("--kernel"), config.getoption("--modules"))
        cfg = qemu.config_from_env(qemu.GuestConfig(
            kernel=kimg.image, accel=qemu.Accel(config.getoption("--accel"))))
        req = runner.SuiteRequest(kernel=kimg, config=cfg, runner=config.getoption("--runner"),
                                  require_kapi=bool(config.getoption("--require-kapi")))
        results, _runs = runner.run_guests(req)
        return leaves(results)  # several guests: one group each; an item per test
    except KapiError as e:
        hint = f" (hint: {e.hint})" if e.hint else ""
        return [TestResult(name="guest", outcome=Outcome.ERROR, reason=f"{e}{hint}")]


def _shared_results(config: pytest.Config) -> list[TestResult]:
    # xdist workers of one run share PYTEST_XDIST_TESTRUNUID: one boots, the rest read.
    uid = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    if uid is None:
        return _run_guest_suite(config)
    base = Path(tempfile.gettempdir()) / f"kapi-pytest-{uid}"
    base.mkdir(exist_ok=True)
    with (base / "lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        done = base / "results.json"
        if done.is_file():
            return [TestResult(name=d["name"], outcome=Outcome(d["outcome"]),
                               reason=d["reason"], diagnostics=tuple(d["diagnostics"]))
                    for d in json.loads(done.read_text())]
        results = _run_guest_suite(config)
        done.write_text(json.dumps([{"name": r.name, "outcome": r.outcome.value,
                                     "reason": r.reason, "diagnostics": list(r.diagnostics)}
                                    for r in results]))
        return results


class GuestSuite(pytest.Collector):
    """The in-guest suite of one kernel; collecting it boots the guest."""

    def collect(self) -> Iterator[pytest.Item]:
        for r in _shared_results(self.config):
            yield GuestItem.from_parent(self, name=r.name, result=r)


class KernelSession:
    """The plugin object active when ``--kernel`` is given on the host."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config

    def pytest_ignore_collect(self, collection_path: Path, config: pytest.Config
                              ) -> bool | None:
        # the guest tests run in the guest, not on the host
        if collection_path == _GUEST_DIR or _GUEST_DIR in collection_path.parents:
            return True
        return None

    @pytest.hookimpl(tryfirst=True)
    def pytest_collection_modifyitems(self, session: pytest.Session, config: pytest.Config,
                                      items: list[pytest.Item]) -> None:
        name = f"kernel[{Path(config.getoption('--kernel')).name}]"
        suite = GuestSuite.from_parent(session, name=name)
        items.extend(suite.collect())


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("--kernel", default=None) and not os.environ.get("KAPI_IN_GUEST"):
        config.pluginmanager.register(KernelSession(config), "kapi-kernel-session")
