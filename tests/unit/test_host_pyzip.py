"""The guest's Python zip: whole pure packages, single imported modules, no project, no .so."""

from __future__ import annotations

import zipfile
from pathlib import Path

from kapi_selftests.host import pyzip
from kapi_selftests.host.initramfs import GuestInit, render_init


def _tree(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)


def test_pyzip_entries_take_whole_packages_and_skip_ext_and_project(tmp_path: Path) -> None:
    lib, proj = tmp_path / "lib", tmp_path / "proj"
    _tree(lib, {"pure/__init__.py": "", "pure/a.py": "", "pure/lazy.py": "",
                "pure/vendor/data.txt": "x",
                "pure/tests/test_x.py": "", "ext/__init__.py": "", "ext/_c.so": "",
                "single.py": "", "unused.py": ""})
    _tree(proj, {"kapi_selftests/__init__.py": ""})
    mods = {"pure": str(lib / "pure/__init__.py"), "pure.a": str(lib / "pure/a.py"),
            "ext": str(lib / "ext/__init__.py"), "single": str(lib / "single.py"),
            "kapi_selftests": str(proj / "kapi_selftests/__init__.py")}
    got = pyzip._entries(mods, [str(lib), str(proj)], proj)
    assert sorted(got) == ["pure/__init__.py", "pure/a.py", "pure/lazy.py",
                           "pure/vendor/data.txt", "single.py"]


def test_pyzip_build_writes_importable_pycs(tmp_path: Path) -> None:
    import pytest
    mp = pytest.MonkeyPatch()
    lib = tmp_path / "lib"
    _tree(lib, {"zpkg/__init__.py": "X = 1\n", "zpkg/sub.py": "Y = 2\n"})
    mp.setattr(pyzip, "imported_files",
               lambda python, pp, project, work: {"zpkg": str(lib / "zpkg/__init__.py")})
    try:
        z = pyzip.build_pyzip(tmp_path / "cache", [str(lib)], tmp_path / "proj")
    finally:
        mp.undo()
    assert z is not None
    assert sorted(zipfile.ZipFile(z).namelist()) == ["zpkg/__init__.pyc", "zpkg/sub.pyc"]
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-S", "-c", "import zpkg.sub, zpkg; "
                          "print(zpkg.X + zpkg.sub.Y, zpkg.__file__)"],
                         env={"PYTHONPATH": str(z)}, capture_output=True, text=True, check=True)
    assert out.stdout.startswith("3 ") and ".zip" in out.stdout


def test_pyzip_init_binds_the_zip_after_the_tmpfs_on_run() -> None:
    text = render_init(GuestInit(argv=("true",), pyzip="/run/site-packages/kapi-py.zip"), 0)
    assert "mkdir -p $R/run/site-packages && $B touch $R/run/site-packages/kapi-py.zip " \
        "&& $B mount --bind /py.zip $R/run/site-packages/kapi-py.zip" in text
    assert text.index("--bind /py.zip") > text.index("for d in tmp run var/tmp")
