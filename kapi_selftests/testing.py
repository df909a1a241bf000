"""pytest glue shared by the conftests: the skip/strict policy, the hypothesis profiles."""

from __future__ import annotations

import pytest

__all__ = ["require", "missing_vm_tools", "hypothesis_profiles", "hypothesis_seed"]


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
    import shutil

    from kapi_selftests.errors import MissingFeature
    from kapi_selftests.host import initramfs

    if shutil.which("qemu-system-x86_64") is None:
        return "qemu-system-x86_64 not installed (apt-get install qemu-system-x86)"
    try:
        initramfs.find_busybox()
    except MissingFeature as e:
        return str(e)
    return None


def hypothesis_profiles() -> None:
    """Register the hypothesis profiles and load ``KAPI_HYPOTHESIS_PROFILE`` (``ci``).

    ``ci``: derandomised, 20 examples; ``dev``: 200; ``fuzz``: 20,000 and every phase.
    The conftest of each directory whose tests use hypothesis calls this, so that a
    session collecting none of them never imports hypothesis (under TCG that import
    is seconds of a guest's time to its first test).
    """
    import os

    from hypothesis import HealthCheck, Phase, settings

    quiet = [HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
    settings.register_profile("ci", derandomize=True, max_examples=20, deadline=None,
                              print_blob=True, suppress_health_check=quiet)
    settings.register_profile("dev", max_examples=200, deadline=None, print_blob=True,
                              suppress_health_check=quiet)
    settings.register_profile(
        "fuzz", max_examples=20_000, deadline=None, print_blob=True,
        phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
        suppress_health_check=list(HealthCheck))
    settings.load_profile(os.environ.get("KAPI_HYPOTHESIS_PROFILE", "ci"))


def hypothesis_seed(config: pytest.Config) -> None:
    """Give the run a hypothesis seed (``--hypothesis-seed``, else a random one).

    Every failure then prints the line that replays it (the root conftest adds it).
    For the conftests that call :func:`hypothesis_profiles`, from ``pytest_configure``.
    """
    import os

    from hypothesis import core

    seed: int | str | None = getattr(config.option, "hypothesis_seed", None)
    if seed is None:  # none given (or no hypothesis plugin to take one)
        seed = config.option.hypothesis_seed = int.from_bytes(os.urandom(4), "little")
    try:
        seed = int(seed)
    except ValueError:
        pass  # hypothesis takes a string seed as it is
    core.global_force_seed = seed  # type: ignore[assignment]  # as its plugin does
