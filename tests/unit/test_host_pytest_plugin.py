"""pytest --kernel: each guest result becomes a host item of the same name (boot faked)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kapi_selftests.host import pytest_plugin
from kapi_selftests.report import Outcome
from kapi_selftests.report import TestResult as Result

CONFTEST = '''
pytest_plugins = ["kapi_selftests.host.pytest_plugin"]

def pytest_addoption(parser):
    parser.addoption("--kernel", default=None)
    parser.addoption("--modules", default=None)
    parser.addoption("--require-kapi", action="store_true")
'''


class _Reports:
    def __init__(self) -> None:
        self.reports: list[Any] = []

    def pytest_runtest_logreport(self, report: Any) -> None:
        if report.when == "call" or report.outcome != "passed":
            self.reports.append(report)


def test_pytest_plugin_guest_results_become_host_items(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "conftest.py").write_text(CONFTEST)
    (tmp_path / "test_host_side.py").write_text("def test_here():\n    pass\n")
    booted: list[str] = []

    def fake_suite(config: pytest.Config) -> list[Result]:
        booted.append(config.getoption("--kernel"))
        return [Result("tests/guest/test_a.py::test_ok", Outcome.PASS),
                Result("tests/guest/test_a.py::test_bad", Outcome.FAIL, "assert 1 == 2",
                       ("E assert 1 == 2",)),
                Result("tests/guest/test_a.py::test_kapi", Outcome.SKIP,
                       "kernel has no kapi tracepoints"),
                Result("kernel-console", Outcome.FAIL, "kernel panic: x", ("[1.0] panic",))]

    monkeypatch.setattr(pytest_plugin, "_run_guest_suite", fake_suite)
    monkeypatch.delenv("KAPI_IN_GUEST", raising=False)
    monkeypatch.delenv("PYTEST_XDIST_TESTRUNUID", raising=False)
    rec = _Reports()
    rc = pytest.main([str(tmp_path), "--kernel", "/k/bzImage", "-p", "no:cacheprovider",
                      "-q"], plugins=[rec])
    assert rc == 1
    assert booted == ["/k/bzImage"]
    got = {r.nodeid.split("kernel[bzImage]::", 1)[-1].split("::")[-1] if "kernel[" not in
           r.nodeid else r.nodeid.split("kernel[bzImage]::", 1)[1]: r for r in rec.reports}
    assert got["test_here"].passed
    assert got["tests/guest/test_a.py::test_ok"].passed
    bad = got["tests/guest/test_a.py::test_bad"]
    assert bad.failed and "assert 1 == 2" in str(bad.longrepr)
    assert got["tests/guest/test_a.py::test_kapi"].skipped
    assert "kernel has no kapi tracepoints" in str(got["tests/guest/test_a.py::test_kapi"]
                                                   .longrepr)
    assert got["kernel-console"].failed and "panic" in str(got["kernel-console"].longrepr)
    assert all("kernel[bzImage]::" in r.nodeid for k, r in got.items() if k != "test_here")


def test_pytest_plugin_inactive_without_kernel(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "conftest.py").write_text(CONFTEST)
    (tmp_path / "test_host_side2.py").write_text("def test_here():\n    pass\n")
    monkeypatch.setattr(pytest_plugin, "_run_guest_suite",
                        lambda config: pytest.fail("must not boot"))
    assert pytest.main([str(tmp_path), "-p", "no:cacheprovider", "-q"]) == 0


def test_pytest_plugin_items_are_the_tests_of_every_guest(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    # several guests come back as one group each (KTAP subtests); the items are the tests
    from kapi_selftests.host import kernel, runner
    from kapi_selftests.report import group

    g0 = [Result("tests/guest/test_a.py::test_ok", Outcome.PASS),
          Result("guest0: kernel-console", Outcome.FAIL, "kernel BUG: x")]
    g1 = [Result("tests/guest/test_b.py::test_skip", Outcome.SKIP, "needs root")]
    monkeypatch.setattr(kernel, "find_kernel", lambda *a: kernel.KernelImage(
        image=tmp_path / "bzImage", kind=kernel.ImageKind.BZIMAGE, release="x",
        config=None, modules_dir=None))
    monkeypatch.setattr(runner, "run_guests",
                        lambda req: ([group("guest0", g0), group("guest1", g1)], []))

    class _Config:
        def getoption(self, name: str) -> Any:
            return {"--kernel": str(tmp_path / "bzImage"), "--accel": "tcg"}.get(name)

    got = pytest_plugin._run_guest_suite(_Config())  # type: ignore[arg-type]
    assert got == g0 + g1
