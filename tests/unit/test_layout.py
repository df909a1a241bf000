"""The layout's rules, read from the code's own imports (``ast``; nothing is imported).

The packages are the stages of the data flow (docs/design.md), stacked in
:data:`LAYERS`: a module imports only its own package or the layers below it.
``host/`` boots guests and never loads guest code; ``trace/`` and ``oracle/`` are
pure and load neither side; ``plan.py`` and ``records.py`` carry what crosses
stages and touch no kernel interface. An import inside a function is allowed only
with a comment saying why (on its line, or on the line above its group of imports).
"""

from __future__ import annotations

import ast
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "kapi_selftests"
PKG = "kapi_selftests"

#: (from, to, why): no module under ``from`` may load one under ``to`` at import time,
#: directly or through others
NEVER = (
    ("host", "guest", "the host boots guests; guest modules load libc and touch tracefs"),
    ("trace", "guest", "decoding is pure: it runs on the host and offline"),
    ("trace", "host", "decoding is pure"),
    ("oracle", "guest", "the judge is pure: it runs on the host and offline"),
    ("oracle", "host", "the judge is pure"),
    ("records", "guest", "the records cross stages: nothing that touches the kernel"),
    ("records", "host", "the records cross stages"),
    ("fuzz.remote", "guest", "the host link runs on the host"),
    ("plan", "guest", "plans are what the guest is asked to make: they name no kernel state"),
    ("plan", "host", "plans cross stages"),
    ("link", "guest", "the host and the guest both speak the link"),
    ("link", "host", "the guest speaks the link too"),
)

#: the data flow from the bottom up: a module imports (at import time) only its own
#: layer's package or the layers below it; the docs/design.md map draws the same
LAYERS = (
    ("__init__", "arch", "errors", "cache"),  # facts and plumbing every layer uses
    ("plan", "report", "trace"),  # calls to make, results out, what the kernel traced
    ("records", "link"),  # calls made and judged; what the host and an agent exchange
    ("oracle",),  # predict and judge
    ("guest",),  # make and issue calls, capture
    ("fuzz",),  # generate, run campaigns, file findings
    ("gate",),  # one verdict from two kernels' runs
    ("host",),  # kernels and guests
    ("cmd", "testing"),  # subcommands, pytest glue
    ("cli", "__main__"),
)

#: modules that touch the kernel or the machine when imported (the records may not)
_KERNEL_FACING = {"ctypes", "fcntl", "mmap", "termios", "subprocess", "socket"}


@dataclass
class Module:
    name: str  # dotted, without the package: "guest.harness"
    imports: set[str] = field(default_factory=set)  # module-level, of this package
    std: set[str] = field(default_factory=set)  # module-level, top names of others
    unexplained: list[str] = field(default_factory=list)  # function-level, no comment


def _type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _targets(node: ast.Import | ast.ImportFrom, here: str,
             known: set[str]) -> tuple[set[str], set[str]]:
    """(modules of this package, other top-level names) that ``node`` imports."""
    ours: set[str] = set()
    other: set[str] = set()
    if isinstance(node, ast.Import):
        for a in node.names:
            (ours if a.name.startswith(PKG + ".") else other).add(
                a.name.removeprefix(PKG + ".") if a.name.startswith(PKG + ".") else
                a.name.split(".")[0])
        return ours, other
    if node.level:
        base = here.split(".")[:-node.level] if here else []
        mod = ".".join(base + ([node.module] if node.module else []))
    elif node.module == PKG or (node.module or "").startswith(PKG + "."):
        mod = (node.module or "").removeprefix(PKG).lstrip(".")
    else:
        other.add((node.module or "").split(".")[0])
        return ours, other
    for a in node.names:
        sub = f"{mod}.{a.name}" if mod else a.name
        ours.add(sub if sub in known else mod)
    ours.discard("")
    return ours, other


def _commented(lines: list[str], node: ast.stmt) -> bool:
    """A comment on the import's lines, or above its group of imports."""
    if any("#" in lines[i - 1] for i in range(node.lineno, (node.end_lineno or node.lineno) + 1)):
        return True
    i = node.lineno - 2
    while i >= 0:
        s = lines[i].strip()
        if s.startswith("#"):
            return True
        if not (s.startswith(("import ", "from ")) or s.endswith((",", "(")) or s == ")"):
            return False
        if "#" in s:
            return True
        i -= 1
    return False


def _visit(node: ast.AST, top: bool, m: Module, pkg_of: str, lines: list[str], where: str,
           known: set[str]) -> None:
    for child in ast.iter_child_nodes(node):
        if top and _type_checking(child):
            continue
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            ours, other = _targets(child, pkg_of + ".x" if pkg_of else "x", known)
            if top:
                m.imports |= ours
                m.std |= other
            elif not _commented(lines, child):
                m.unexplained.append(f"{where}:{child.lineno}: {lines[child.lineno - 1].strip()}")
            continue
        inner = isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        _visit(child, top and not inner, m, pkg_of, lines, where, known)


def read_package(root: Path) -> dict[str, Module]:
    """Every module of the package under ``root``, with what it imports and how."""
    files = {".".join(p.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
             .removesuffix("__init__"): p for p in root.rglob("*.py")}
    mods: dict[str, Module] = {}
    for name, path in files.items():
        text = path.read_text()
        pkg_of = name if path.name == "__init__.py" else name.rpartition(".")[0]
        m = mods[name] = Module(name)
        _visit(ast.parse(text), True, m, pkg_of, text.splitlines(),
               str(path.relative_to(root.parent)), set(files))
    return mods


def reaches(mods: dict[str, Module], start: str) -> dict[str, list[str]]:
    """Every module ``start`` loads at import time, with one chain that loads it."""
    seen: dict[str, list[str]] = {start: [start]}
    todo = [start]
    while todo:
        cur = todo.pop()
        for nxt in sorted(mods[cur].imports):
            if nxt in mods and nxt not in seen:
                seen[nxt] = seen[cur] + [nxt]
                todo.append(nxt)
    return seen


def _under(name: str, part: str) -> bool:
    return name == part or name.startswith(part + ".")


def broken_rules(mods: dict[str, Module]) -> list[str]:
    out = []
    for src, dst, why in NEVER:
        for name in sorted(mods):
            if not _under(name, src):
                continue
            for target, chain in reaches(mods, name).items():
                if _under(target, dst):
                    out.append(f"{src} -> {dst} ({why}): " + " -> ".join(chain))
                    break
    for name in sorted(mods):
        for pure in ("records", "plan"):
            if _under(name, pure) and mods[name].std & _KERNEL_FACING:
                out.append(f"{pure} imports {sorted(mods[name].std & _KERNEL_FACING)}")
    return out


def _layer(name: str) -> int:
    for i, parts in enumerate(LAYERS):
        if any(_under(name, p) for p in parts):
            return i
    raise AssertionError(f"{name} is on no layer of LAYERS: place it")


def upward_imports(mods: dict[str, Module]) -> list[str]:
    """Imports from a layer to one above it, or across packages within one layer."""
    out = []
    for name in sorted(mods):
        for target in sorted(mods[name].imports & set(mods)):
            a, b = _layer(name), _layer(target)
            top = name.split(".")[0]
            if b > a or (b == a and a > 0 and top != target.split(".")[0]
                         and (top, target) != ("__main__", "cli")):
                out.append(f"{name} -> {target}")
    return out


def unexplained_imports(mods: dict[str, Module]) -> list[str]:
    return [u for m in mods.values() for u in m.unexplained]


# -- the rules on the tree -----------------------------------------------------

def test_no_stage_loads_what_it_must_not() -> None:
    assert broken_rules(read_package(ROOT)) == []


def test_every_import_runs_down_the_layers() -> None:
    assert upward_imports(read_package(ROOT)) == []


def test_every_import_inside_a_function_says_why() -> None:
    assert unexplained_imports(read_package(ROOT)) == []


def test_every_stage_package_says_its_job() -> None:
    for pkg in ("guest", "trace", "oracle", "fuzz", "gate", "host", "cmd"):
        init = ROOT / pkg / "__init__.py"
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc and len(doc.splitlines()[0]) > 20, f"{init} has no docstring saying its job"


def test_the_pure_stages_load_no_kernel_interface() -> None:
    # In a fresh interpreter: importing the judge and the decoder loads no ctypes libc
    # wrapper and no guest module (the static rules above, seen at run time once).
    import subprocess  # a child interpreter: this one has loaded everything already

    code = ("import sys, kapi_selftests.oracle.checks, kapi_selftests.oracle.bulk, "
            "kapi_selftests.trace.pairing, kapi_selftests.records, kapi_selftests.host.runner\n"
            "print(sorted(m for m in sys.modules if m.startswith('kapi_selftests.guest')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT.parent).stdout.strip()
    assert out == "[]"


def test_every_import_of_the_package_resolves() -> None:
    # After a move an import of the old place fails only when its code runs (a test in the
    # guest, say): every ``from kapi_selftests...`` in the repository is resolved here.
    import importlib.util  # resolving names needs the modules loaded: only this test does

    repo = ROOT.parent
    missing = []
    for path in sorted(p for d in ("kapi_selftests", "tests", "bench") for p in
                       (repo / d).rglob("*.py")) + [repo / "conftest.py"]:
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.ImportFrom) and node.level == 0 and node.module
                    and node.module.split(".")[0] == PKG):
                continue
            mod = importlib.import_module(node.module)
            for a in node.names:
                if not hasattr(mod, a.name) and \
                        importlib.util.find_spec(f"{node.module}.{a.name}") is None:
                    missing.append(f"{path.relative_to(repo)}:{node.lineno}: "
                                   f"{node.module}.{a.name}")
    assert missing == []


def _unresolved(text: str) -> list[str]:
    """The ``kapi_selftests.x.y`` names and ``kapi_selftests/x/y.py`` paths in ``text``
    that name nothing in the package."""
    import importlib  # resolving names needs the modules loaded: only these tests do

    out = []
    for ref in sorted(set(re.findall(r"kapi_selftests(?:\.[A-Za-z_]\w*)+", text))):
        parts = ref.split(".")
        for i in range(len(parts), 0, -1):
            try:
                obj: object = importlib.import_module(".".join(parts[:i]))
            except ImportError:
                continue
            try:
                for a in parts[i:]:
                    obj = getattr(obj, a)
            except AttributeError:
                out.append(ref)
            break
    out += [p for p in sorted(set(re.findall(r"kapi_selftests/[\w/]+\.py", text)))
            if not (ROOT.parent / p).is_file()]
    return out


def test_the_docs_name_what_exists() -> None:
    # docs, READMEs and docstrings name modules, functions and files after a move
    repo = ROOT.parent
    texts = [repo / "README.md", repo / "bench" / "README.md", repo / "vm" / "README.md",
             *sorted((repo / "docs").glob("*.md")), *sorted(ROOT.rglob("*.py"))]
    stale = [f"{p.relative_to(repo)}: {ref}" for p in texts for ref in _unresolved(p.read_text())]
    assert stale == []


def test_a_stale_doc_name_is_found() -> None:
    text = ("see :func:`kapi_selftests.trace.pairing.pair` and kapi_selftests/guest/harness.py; "
            "not kapi_selftests.pairing.pair, kapi_selftests.oracle.predict.no_such_name "
            "or kapi_selftests/cexec.py")
    assert _unresolved(text) == ["kapi_selftests.oracle.predict.no_such_name",
                                 "kapi_selftests.pairing.pair", "kapi_selftests/cexec.py"]


# -- the checker, seen to fail ---------------------------------------------------

def _tree(tmp: Path, files: dict[str, str]) -> dict[str, Module]:
    for rel, text in files.items():
        p = tmp / PKG / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return read_package(tmp / PKG)


_BASE = {"__init__.py": "", "host/__init__.py": "", "guest/__init__.py": "",
         "oracle/__init__.py": "", "trace/__init__.py": ""}


@pytest.mark.parametrize(("files", "expect"), [
    # straight: host imports guest
    ({"host/runner.py": "from kapi_selftests.guest import harness\n",
      "guest/harness.py": ""}, "host -> guest"),
    # through a third module that is allowed on its own
    ({"host/runner.py": "from kapi_selftests import records\n",
      "records.py": "import kapi_selftests.oracle.checks\n",
      "oracle/checks.py": "from kapi_selftests.guest.syscalls import invoke\n",
      "guest/syscalls.py": "import ctypes\n"}, "oracle -> guest"),
    # relative import
    ({"trace/events.py": "from ..guest import tracefs\n", "guest/tracefs.py": ""},
     "trace -> guest"),
    # records touching the kernel
    ({"records.py": "import ctypes\n"}, "records imports ['ctypes']"),
])
def test_a_broken_rule_is_found(tmp_path: Path, files: dict[str, str], expect: str) -> None:
    found = broken_rules(_tree(tmp_path, {**_BASE, **files}))
    assert any(expect in f for f in found), found


def test_an_upward_import_is_found(tmp_path: Path) -> None:
    mods = _tree(tmp_path, {**_BASE,
                            "trace/pairing.py": "from kapi_selftests.records import Batch\n",
                            "records.py": "from kapi_selftests.trace import pairing\n",
                            "oracle/checks.py": "from kapi_selftests.records import Batch\n",
                            "link/__init__.py": "", "link/shm.py":
                            "from kapi_selftests.records import Batch\n"})
    assert upward_imports(mods) == ["link.shm -> records", "trace.pairing -> records"]


def test_type_checking_imports_and_allowed_ones_are_not_rules_broken(tmp_path: Path) -> None:
    mods = _tree(tmp_path, {**_BASE,
                            "records.py": "from typing import TYPE_CHECKING\n"
                                          "if TYPE_CHECKING:\n"
                                          "    from kapi_selftests.guest import harness\n",
                            "guest/harness.py": "from kapi_selftests.oracle import checks\n",
                            "oracle/checks.py": "from kapi_selftests import records\n"})
    assert broken_rules(mods) == []


def test_an_unexplained_import_in_a_function_is_found(tmp_path: Path) -> None:
    mods = _tree(tmp_path, {**_BASE, "oracle/checks.py":
                            "def f():\n"
                            "    import json\n"
                            "    return json\n"
                            "def g():\n"
                            "    # numpy is slow to import: only the bulk pass needs it\n"
                            "    import numpy\n"
                            "    import os\n"
                            "    return numpy, os\n"
                            "def h():\n"
                            "    import shutil  # optional dependency\n"
                            "    return shutil\n"})
    assert unexplained_imports(mods) == [f"{PKG}/oracle/checks.py:2: import json"]
