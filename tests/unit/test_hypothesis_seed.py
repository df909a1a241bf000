"""The hypothesis seed: the ``ci`` profile draws the same examples every run, a given
seed (``--hypothesis-seed`` or ``KAPI_SEED``) really drives what is drawn, and the
replay line a failure prints reproduces the failing example.

Each run is pytest in a subprocess, on a small test file in a temporary directory
whose conftest is the project's root conftest followed by what tests/unit/conftest.py
adds (the profiles and the seed), so the replay line is the one a user would see.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# test_draws logs what it is given; test_fails_on_some fails on about one number in two,
# chosen by a hash, with no shrinking: the example it reports is the first failing one
# drawn, which depends on the seed (numbers below 64, among them the 0 hypothesis tries
# first whatever the seed, never fail)
PROPERTY = '''
import hashlib
import os

from hypothesis import Phase, given, settings, strategies as st


@given(st.integers(0, 2**64))
def test_draws(x):
    with open(os.environ["DRAWS"], "a") as f:
        f.write(f"{x}\\n")


@settings(phases=[Phase.generate])
@given(st.integers(0, 2**64))
def test_fails_on_some(x):
    assert x < 64 or hashlib.sha256(str(x).encode()).digest()[0] % 2, f"drawn {x}"
'''

CONFTEST_TAIL = '''

# no patch file of the failing example: hypothesis imports libcst for it, a second of
# start-up per failing run that has nothing to do with the seed
import sys  # noqa: E402

sys.modules["hypothesis.extra._patching"] = None  # type: ignore[assignment]

# as tests/unit/conftest.py
from kapi_selftests.testing import hypothesis_profiles, hypothesis_seed  # noqa: E402

hypothesis_profiles()


@pytest.hookimpl(trylast=True)
def pytest_configure(config):
    hypothesis_seed(config)
'''

FALSIFYING = re.compile(r"^FAILED test_property.py::test_fails_on_some - AssertionError: "
                        r"drawn (\d+)$", re.M)
REPLAY = re.compile(r"^seed (\S+): (KAPI_HYPOTHESIS_PROFILE=\S+ python -m pytest .*)$", re.M)


@dataclass(frozen=True)
class Run:
    draws: tuple[int, ...]  # what test_draws was given, in order (none in a replay)
    falsifying: int  # test_fails_on_some's failing example
    seed: str  # the seed the replay line names
    replay: str  # the replay line's command


class Project:
    """A temporary project holding the property file; runs pytest on it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "conftest.py").write_text((ROOT / "conftest.py").read_text() + CONFTEST_TAIL)
        (root / "test_property.py").write_text(PROPERTY)
        self.n = 0

    def start(self, argv: list[str], **env: str) -> tuple[subprocess.Popen[str], Path]:
        self.n += 1
        draws = self.root / f"draws-{self.n}"
        clean = {k: v for k, v in os.environ.items()
                 if not k.startswith(("KAPI_", "HYPOTHESIS", "PYTEST_"))}
        clean.update(PYTHONPATH=str(ROOT), DRAWS=str(draws), **env)
        if argv[:1] == ["python"]:
            argv = [sys.executable, *argv[1:]]
        else:
            argv = [sys.executable, "-m", "pytest", *argv]
        return subprocess.Popen([*argv, "-p", "no:cacheprovider"], cwd=self.root, env=clean,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True), draws

    @staticmethod
    def finish(started: tuple[subprocess.Popen[str], Path]) -> Run:
        proc, draws = started
        out, _ = proc.communicate(timeout=600)
        falsifying, replay = FALSIFYING.search(out), REPLAY.search(out)
        assert proc.returncode == 1 and falsifying and replay, out
        lines = draws.read_text().split() if draws.exists() else []
        return Run(tuple(map(int, lines)), int(falsifying.group(1)), replay.group(1),
                   replay.group(2))

    def start_replay(self, run: Run) -> tuple[subprocess.Popen[str], Path]:
        """Run the replay line as printed: ``VAR=value python -m pytest ...``."""
        words = shlex.split(run.replay)
        assigned = [w for w in words if re.match(r"^[A-Z_]+=", w)]
        env = dict(w.split("=", 1) for w in assigned)
        return self.start([w for w in words if w not in assigned], **env)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Run]:
    # every run of the module at once, in two waves (a replay needs its run's line):
    # a pytest start-up is seconds on a loaded machine
    project = Project(tmp_path_factory.mktemp("seeded"))
    first = {"default": project.start(["test_property.py"]),
             "seed_1": project.start(["test_property.py", "--hypothesis-seed=1"]),
             "env_1": project.start(["test_property.py"], KAPI_SEED="1")}
    out = {name: project.finish(s) for name, s in first.items()}
    second = {f"replay_{name}": project.start_replay(out[name]) for name in ("default", "seed_1")}
    out.update({name: project.finish(s) for name, s in second.items()})
    return out


def test_hypothesis_seed_ci_default_is_seed_0_and_replays(runs: dict[str, Run]) -> None:
    default, replayed = runs["default"], runs["replay_default"]
    assert default.seed == "0" and "--hypothesis-seed=0" in default.replay
    assert len(default.draws) == 20
    assert replayed.seed == "0" and replayed.falsifying == default.falsifying


def test_hypothesis_seed_different_seeds_draw_different_examples(runs: dict[str, Run]) -> None:
    assert runs["seed_1"].draws != runs["default"].draws
    assert runs["seed_1"].falsifying != runs["default"].falsifying


def test_hypothesis_seed_same_seed_draws_the_same_from_option_or_env(
        runs: dict[str, Run]) -> None:
    option, env = runs["seed_1"], runs["env_1"]
    assert option.seed == env.seed == "1"
    assert env.draws == option.draws and env.falsifying == option.falsifying


def test_hypothesis_seed_replay_line_reproduces_the_failing_example(
        runs: dict[str, Run]) -> None:
    run, replayed = runs["seed_1"], runs["replay_seed_1"]
    assert "--hypothesis-seed=1" in run.replay and "::test_fails_on_some" in run.replay
    assert replayed.seed == "1" and replayed.falsifying == run.falsifying


def _last_falsifying(profile: str) -> tuple[int, int]:
    # (the last value the property saw, how many it saw) under ``profile``
    from hypothesis import given
    from hypothesis import settings as hsettings
    from hypothesis import strategies as hst

    seen: list[int] = []
    prof = hsettings.get_profile(profile)

    # the profile's own phases and budget, nothing else of the session's (its seed)
    @hsettings(max_examples=prof.max_examples, phases=prof.phases, database=None,
               derandomize=True, deadline=None)
    @given(hst.integers(0, 10**9))
    def prop(x: int) -> None:
        seen.append(x)
        assert x < 1000

    try:
        prop()
    except AssertionError:
        pass
    return seen[-1], len(seen)


def test_ci_reports_the_first_failure_unshrunk_and_dev_shrinks_it() -> None:
    ci, ci_runs = _last_falsifying("ci")
    dev, _ = _last_falsifying("dev")
    assert dev == 1000  # shrunk to the boundary
    assert ci != 1000 and ci_runs <= 20  # as first drawn, stopped there
