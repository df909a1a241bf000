"""Stock kernel fetching: what apt is asked, for bookworm's layout and unstable's split one.

apt is replaced at the process boundary (``stock._run``) by the answers apt-cache gave
on this project's machine (bookworm with unstable pinned at 100, December 2026).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from host_elf import bzimage

from kapi_selftests.errors import MissingFeature, UsageError
from kapi_selftests.host import stock

_META_UNSTABLE = """linux-image-amd64
  Depends: linux-base-amd64
  Depends: linux-image-7.2.13+deb14-amd64
"""
_META_BOOKWORM = """linux-image-amd64
  Depends: linux-image-6.1.0-57-amd64
"""
_IMAGE_UNSTABLE = """linux-image-7.2.13+deb14-amd64
  PreDepends: linux-base
 |Depends: dracut
 |Depends: initramfs-tools
  Depends: <linux-initramfs-tool>
    dracut
  Depends: linux-base-7.2.13+deb14-amd64
  Depends: linux-binary-7.2.13+deb14-amd64
  Depends: linux-modules-7.2.13+deb14-amd64
  Breaks: fwupdate
"""
_IMAGE_BOOKWORM = """linux-image-6.1.0-57-amd64
  Depends: kmod
  Depends: linux-base
 |Depends: initramfs-tools
  Conflicts: linux-image-6.1.0-57-amd64-unsigned
"""
_APT = {
    ("apt-cache", "depends", "-t", "unstable", "linux-image-amd64"): _META_UNSTABLE,
    ("apt-cache", "depends", "linux-image-amd64"): _META_BOOKWORM,
    ("apt-cache", "depends", "-t", "unstable", "linux-image-7.2.13+deb14-amd64"):
        _IMAGE_UNSTABLE,
    ("apt-cache", "depends", "linux-image-6.1.0-57-amd64"): _IMAGE_BOOKWORM,
}


def _fake_apt(calls: list[list[str]]):  # type: ignore[no-untyped-def]
    def run(argv: list[str], cwd: Path | None = None) -> str:
        calls.append(argv)
        if argv[:2] == ["apt-get", "download"]:
            assert cwd is not None
            for pkg in argv[2:]:
                if pkg.startswith("linux-"):
                    (cwd / f"{pkg}_1_amd64.deb").write_bytes(b"")
            return ""
        if argv[0] == "dpkg":
            # linux-binary-R holds usr/lib/modules/R/vmlinuz
            if "linux-binary-" in argv[2]:
                d = Path(argv[3]) / f"usr/lib/modules/{rel_of(argv[2])}"
                d.mkdir(parents=True, exist_ok=True)
                (d / "vmlinuz").write_bytes(bzimage(rel_of(argv[2])))
            return ""
        return _APT[tuple(argv)]
    return run


def rel_of(deb: str) -> str:
    return Path(deb).name.split("_")[0].removeprefix("linux-binary-")


def test_stock_resolves_from_a_suite_with_t(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[list[str]] = []
    monkeypatch.setattr(stock, "_run", _fake_apt(calls))
    assert stock.resolve_stock_package(suite="unstable") == "linux-image-7.2.13+deb14-amd64"
    assert stock.resolve_stock_package() == "linux-image-6.1.0-57-amd64"
    assert calls[0] == ["apt-cache", "depends", "-t", "unstable", "linux-image-amd64"]


def test_stock_parts_of_a_split_image_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stock, "_run", _fake_apt([]))
    assert stock.package_parts("linux-image-7.2.13+deb14-amd64", "unstable") == [
        "linux-image-7.2.13+deb14-amd64", "linux-base-7.2.13+deb14-amd64",
        "linux-binary-7.2.13+deb14-amd64", "linux-modules-7.2.13+deb14-amd64"]
    assert stock.package_parts("linux-image-6.1.0-57-amd64") == ["linux-image-6.1.0-57-amd64"]


def test_stock_fetch_from_suite_downloads_every_part_and_links(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[list[str]] = []
    monkeypatch.setattr(stock, "_run", _fake_apt(calls))
    dest = stock.fetch_stock_kernel(tmp_path, suite="unstable", link="stock-compressed")
    dl = next(c for c in calls if c[:2] == ["apt-get", "download"])
    assert dl[2:4] == ["-t", "unstable"] and len(dl) == 8
    assert sum(c[0] == "dpkg" for c in calls) == 4
    assert (tmp_path / "stock-compressed").resolve() == dest.resolve()
    assert (dest / "usr/lib/modules/7.2.13+deb14-amd64/vmlinuz").is_file()
    assert not (tmp_path / "stock").exists()
    calls.clear()
    assert stock.fetch_stock_kernel(tmp_path, suite="unstable", link="stock-compressed") == dest
    assert not any(c[0] in ("apt-get", "dpkg") for c in calls)  # extracted once


def test_stock_package_without_an_image_is_one_clear_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stock, "_run", _fake_apt([]))
    with pytest.raises(MissingFeature, match="no boot/vmlinuz-"):
        stock.fetch_stock_kernel(tmp_path, "linux-image-6.1.0-57-amd64")
    assert not (tmp_path / "linux-image-6.1.0-57-amd64").exists()


@pytest.mark.parametrize("link", ["", "../x", ".hidden"])
def test_stock_bad_link_name_is_usage_error(tmp_path: Path, link: str) -> None:
    with pytest.raises(UsageError, match="link name"):
        stock.fetch_stock_kernel(tmp_path, "linux-image-6.1.0-57-amd64", link=link)


def test_get_stock_kernel_unknown_suite_is_one_line(tmp_path: Path) -> None:
    script = Path(__file__).resolve().parents[2] / "vm" / "get-stock-kernel"
    proc = subprocess.run([str(script), "--cache", str(tmp_path), "--suite", "no-such-suite"],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 4, proc.stderr
    assert proc.stderr.startswith("get-stock-kernel: error: ")
    assert "Traceback" not in proc.stderr
