"""pytest glue shared by the conftests: the skip/strict policy, the hypothesis profiles."""

from __future__ import annotations

import os
import shutil

import pytest

from kapi_selftests.errors import MissingFeature

__all__ = ["require", "missing_vm_tools", "hypothesis_profiles", "hypothesis_seed",
           "DETERMINISTIC_PROFILES", "DEFAULT_SEED"]


def require(config: pytest.Config, reason: str | None) -> None:
    """Skip with ``reason`` (or, with ``--require-kapi``/``KAPI_STRICT=1``, fail) when a
    probe returned one; do nothing when it returned None."""
    if reason is None:
        return
    if config.getoption("--require-kapi", default=False):
        pytest.fail(f"required: {reason}", pytrace=False)
    pytest.skip(reason)


def missing_vm_tools() -> str | None:
    """Why no guest can boot here (no QEMU, no static busybox), or None."""

    # host side: the guest's conftest loads this module too
    from kapi_selftests.host import initramfs

    if shutil.which("qemu-system-x86_64") is None:
        return "qemu-system-x86_64 not installed (apt-get install qemu-system-x86)"
    try:
        initramfs.find_busybox()
    except MissingFeature as e:
        return str(e)
    return None


#: profiles whose runs draw the same examples every time unless a seed is given
DETERMINISTIC_PROFILES = ("ci",)
#: the seed of a deterministic profile's runs when none is given
DEFAULT_SEED = 0


def hypothesis_profiles() -> None:
    """Register the hypothesis profiles and load ``KAPI_HYPOTHESIS_PROFILE`` (``ci``).

    ``ci``: deterministic (seed 0 unless one is given, see :func:`hypothesis_seed`),
    20 examples, no shrinking (a failure costs no more than its finding); ``dev``: 200,
    shrunk; ``fuzz``: 20,000 and every phase. None of them sets
    hypothesis's ``derandomize``, which would make a given seed a no-op. The conftest
    of each directory whose tests use hypothesis calls this, so that a session
    collecting none of them never imports hypothesis (under TCG that import is seconds
    of a guest's time to its first test).
    """

    # hypothesis loads only in the processes that run tests
    from hypothesis import HealthCheck, Phase, settings

    quiet = [HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
    # ci does not shrink: a failure is reported as first found, at once (under TCG on a
    # broken kernel shrinking took minutes per test); the edges come first, so the first
    # failing example is mostly one edge already. dev and fuzz shrink it.
    settings.register_profile("ci", max_examples=20, deadline=None, print_blob=True,
                              phases=[Phase.explicit, Phase.reuse, Phase.generate],
                              suppress_health_check=quiet)
    # every profile names its phases: one registered while another is loaded inherits
    # from it (a second conftest calling this gave dev ci's phases, no shrinking)
    settings.register_profile("dev", max_examples=200, deadline=None, print_blob=True,
                              phases=[Phase.explicit, Phase.reuse, Phase.generate,
                                      Phase.shrink],
                              suppress_health_check=quiet)
    settings.register_profile(
        "fuzz", max_examples=20_000, deadline=None, print_blob=True,
        phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
        suppress_health_check=list(HealthCheck))
    settings.load_profile(os.environ.get("KAPI_HYPOTHESIS_PROFILE", "ci"))


def hypothesis_seed(config: pytest.Config) -> int | str:
    """Choose the run's hypothesis seed and make every test draw from it.

    The seed is ``--hypothesis-seed``, else ``KAPI_SEED``, else :data:`DEFAULT_SEED`
    under a deterministic profile (``ci``) and a random one under the others. It is
    stored as the ``--hypothesis-seed`` option, so every failure prints the line that
    replays it (the root conftest adds it), and forced on hypothesis as its own plugin
    does; a loaded profile that derandomizes (which would ignore the seed) is replaced
    by a copy that does not. For the conftests that call :func:`hypothesis_profiles`,
    from ``pytest_configure`` (after hypothesis's plugin: ``trylast``).

    :return: the seed
    """

    # hypothesis loads only in the processes that run tests
    from hypothesis import core, settings

    seed: int | str | None = getattr(config.option, "hypothesis_seed", None)
    if seed is None:
        seed = os.environ.get("KAPI_SEED") or None
    if seed is None:
        if settings.get_current_profile_name() in DETERMINISTIC_PROFILES:
            seed = DEFAULT_SEED
        else:
            seed = int.from_bytes(os.urandom(4), "little")
    try:
        seed = int(seed)
    except ValueError:
        pass  # hypothesis takes a string seed as it is
    config.option.hypothesis_seed = seed
    core.global_force_seed = seed  # type: ignore[assignment]  # as its plugin does
    current = settings.default
    if current is not None and current.derandomize:
        name = f"{settings.get_current_profile_name()}-seeded"
        settings.register_profile(name, current, derandomize=False)
        settings.load_profile(name)
    return seed
