"""Unit tests of kapi_selftests.oracle.spec: built-in model, debugfs loaders, source hints.

The built-in model must agree with the real dumps in
tests/data/kapi-reference/debugfs/, staged here into the live layout
(``list``, ``specs/<name>``, ``specs-json/<name>``).
"""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import pytest
from datadir import REFERENCE

from kapi_selftests.errors import SpecError
from kapi_selftests.oracle.predict import predict
from kapi_selftests.oracle.spec import (
    ConstraintType,
    ParamFlag,
    ParamType,
    ReturnCheck,
    SpecSource,
    apply_hints,
    builtin_specs,
    find_source_hints,
    load_debugfs,
    missing_kapi_specs,
    parse_json_dump,
    parse_list,
    parse_source_hints,
    parse_text_dump,
)

REF = REFERENCE / "debugfs"
NAMES = ("sys_madvise", "sys_close", "sys_open", "sys_write", "sys_read")


def stage(tmp_path: Path, *, json: bool = True) -> Path:
    """Copy the reference dumps into the layout the kernel uses under debugfs."""
    root = tmp_path / "kapi"
    (root / "specs").mkdir(parents=True)
    (root / "specs-json").mkdir()
    shutil.copy(REF / "list.txt", root / "list")
    for n in NAMES:
        shutil.copy(REF / f"specs_{n}.txt", root / "specs" / n)
        if json:
            shutil.copy(REF / f"specs-json_{n}.json", root / "specs-json" / n)
    return root


def test_parse_list_names() -> None:
    assert parse_list((REF / "list.txt").read_text()) == NAMES


def test_builtin_specs_has_the_five_v4_specs() -> None:
    specs = builtin_specs()
    assert sorted(specs) == sorted(NAMES)
    assert {n: s.nr for n, s in specs.items()} == {
        "sys_read": 0, "sys_write": 1, "sys_open": 2, "sys_close": 3, "sys_madvise": 28}
    assert all(s.source is SpecSource.BUILTIN and not s.unknowns for s in specs.values())


@pytest.mark.parametrize("name", NAMES)
def test_builtin_model_agrees_with_debugfs_dumps(tmp_path: Path, name: str) -> None:
    loaded = load_debugfs(stage(tmp_path), builtin_hints=False)[name]
    model = builtin_specs()[name]
    assert loaded.nr == model.nr and loaded.nargs == model.nargs
    assert loaded.ret == model.ret
    assert [(e.code, e.name) for e in loaded.errors] == [(e.code, e.name) for e in model.errors]
    for got, want in zip(loaded.params, model.params, strict=True):
        # size_param is what the dumps cannot show; everything else must agree.
        if not got.size_param_known:
            want = replace(want, size_param=None, size_param_known=False)
        assert got == want


def test_debugfs_alone_says_what_it_cannot_know(tmp_path: Path) -> None:
    specs = load_debugfs(stage(tmp_path), builtin_hints=False)
    read = specs["sys_read"]
    assert not read.param("buf").size_param_known
    assert any("which parameter sizes" in u for u in read.unknowns)
    assert specs["sys_close"].unknowns == ()


def test_debugfs_gets_buffer_size_from_builtin_model(tmp_path: Path) -> None:
    specs = load_debugfs(stage(tmp_path))
    assert specs["sys_read"].param("buf").size_param == 2
    assert specs["sys_write"].unknowns == ()
    assert specs == {n: replace(s, errors=specs[n].errors, source=SpecSource.DEBUGFS,
                                filled=specs[n].filled)
                     for n, s in builtin_specs().items()}
    assert specs["sys_read"].filled == (
        "buf: sized by parameter 2 (from built-in model of the v4 spec)",)


def test_debugfs_text_only(tmp_path: Path) -> None:
    specs = load_debugfs(stage(tmp_path, json=False))
    assert specs["sys_read"].param("buf").flags == ParamFlag.OUT | ParamFlag.USER
    assert specs["sys_open"].ret.check is ReturnCheck.FD


def test_text_dump_fields() -> None:
    spec = parse_text_dump((REF / "specs_sys_open.txt").read_text())
    fn, flags, mode = spec.params
    assert (fn.type, fn.constraint, fn.ctype) == (ParamType.PATH, ConstraintType.USER_PATH,
                                                  "const char __user *")
    assert (flags.constraint, flags.valid_mask) == (ConstraintType.MASK, 0x7FFFC3)
    assert (mode.ctype, mode.valid_mask) == ("umode_t", 0o7777)
    madv = parse_text_dump((REF / "specs_sys_madvise.txt").read_text())
    assert [p.constraint for p in madv.params] == [
        ConstraintType.PAGE_ALIGNED, ConstraintType.RANGE, ConstraintType.NONE]
    assert madv.params[1].max_value == -1


def test_text_dump_rejects_garbage() -> None:
    with pytest.raises(SpecError, match="Name:"):
        parse_text_dump("hello\n")


def test_json_dump_truncated_is_spec_error() -> None:
    text = (REF / "specs-json_sys_read.json").read_text()
    with pytest.raises(SpecError, match="not valid JSON"):
        parse_json_dump(text[:500], origin="specs-json/sys_read")


def test_load_debugfs_missing_list(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="list"):
        load_debugfs(tmp_path)


def test_load_debugfs_json_disagrees(tmp_path: Path) -> None:
    root = stage(tmp_path)
    (root / "specs-json" / "sys_read").write_text(
        (REF / "specs-json_sys_write.json").read_text())
    with pytest.raises(SpecError, match="JSON name"):
        load_debugfs(root)


def test_missing_kapi_specs(tmp_path: Path) -> None:
    assert missing_kapi_specs(stage(tmp_path)) is None
    (tmp_path / "empty").mkdir()
    reason = missing_kapi_specs(tmp_path / "empty" / "kapi")
    assert reason is not None and "CONFIG_KAPI_SPEC_DEBUGFS" in reason
    reason = missing_kapi_specs(tmp_path / "nope" / "kapi")
    assert reason is not None and "debugfs" in reason


NEW_SYSCALL_TEXT = """\
Kernel API Specification
========================

Name: sys_frob
Version: 1
Description: frobnicate
Context flags: PROCESS

Parameters (3):
  [0] dfd:
    type: fd (int dfd)
    flags: IN
    description: x

  [1] vec:
    type: user_ptr (const struct frob __user * vec)
    flags: IN USER
    description: x
    constraints:

  [2] n:
    type: uint (unsigned int n)
    flags: IN
    description: x
    constraints:
      type: range
      min: 1
      max: 64

Return value:
  type: KAPI_TYPE_INT
  success: == 0

Errors (1):
  EINVAL (-22): x
    condition: bad
"""


def test_later_syscall_gets_an_oracle_from_its_spec() -> None:
    spec = parse_text_dump(NEW_SYSCALL_TEXT)
    spec = replace(spec, nr=999)
    assert [p.ctype for p in spec.params] == ["int", "const struct frob __user *",
                                              "unsigned int"]
    p = predict(spec, (2**64 - 100, 0x1000, 0x100000004))
    assert p.params == "dfd=-100, vec=0x1000, n=0x4"
    assert not p.rejected  # AT_FDCWD passes the fd check; n=4 after the cast
    assert predict(spec, (3, 0x1000, 65)).rejected
    assert predict(spec, (3, 0x1000, 0xFFFFFFFF)).undetermined is None


DSL = """
/**
 * sys_frob - frobnicate
 * @dfd: dir
 * @vec: vector
 * @n: count
 *
 * contexts: process
 *
 * param: dfd
 *   type: fd, input
 *   constraint-type: range(0, INT_MAX)
 *
 * param: vec
 *   type: user_ptr, input
 *   constraint-type: buffer(2)
 *
 * param: n
 *   type: uint, input
 *   constraint-type: enum(1, 2, 4)
 *
 * return:
 *   type: int
 */
SYSCALL_DEFINE3(frob, int, dfd, const struct frob __user *, vec, unsigned int, n)
"""


def test_source_hints_fill_buffer_size_param(tmp_path: Path) -> None:
    hints = parse_source_hints(DSL)
    assert hints["sys_frob"]["vec"].size_param == 2
    assert hints["sys_frob"]["n"].enum_values == (1, 2, 4)
    spec = apply_hints(parse_text_dump(NEW_SYSCALL_TEXT), hints["sys_frob"])
    assert spec.param("vec").size_param == 2 and spec.unknowns == ()
    (tmp_path / "fs").mkdir()
    (tmp_path / "fs" / "frob.c").write_text(DSL)
    assert find_source_hints(tmp_path, ["sys_frob"]) == hints
    with pytest.raises(SpecError):
        find_source_hints(tmp_path / "missing")


def test_spec_to_dict_is_json_ready() -> None:
    import json

    d = builtin_specs()["sys_read"].to_dict()
    assert json.loads(json.dumps(d))["params"][1]["size_param"] == 2


def test_cli_specs_builtin_text(capsys: pytest.CaptureFixture[str]) -> None:
    from kapi_selftests.cli import main

    assert main(["specs", "--builtin", "sys_read"]) == 0
    out = capsys.readouterr().out
    assert "sys_read (nr 0" in out and "buffer sized by param 2" in out
    assert "only min checked" in out


def test_cli_specs_debugfs_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from kapi_selftests.cli import main

    assert main(["specs", "--debugfs", str(stage(tmp_path)), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [d["name"] for d in data] == list(NAMES)


def test_cli_specs_missing_debugfs_skips(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    from kapi_selftests.cli import main

    assert main(["specs", "--debugfs", str(tmp_path)]) == 4
    assert "--builtin" in capsys.readouterr().err
    assert main(["specs", "--builtin", "sys_nope"]) == 2


def test_text_dump_survives_multiline_prose() -> None:
    text = (REF / "specs_sys_read.txt").read_text()
    text = text.replace("    description: [prose elided]\n",
                        "    description: first line\nsecond line at column 0\n"
                        "  [9] looks: like a parameter but is prose\n", 1)
    text = text.replace("Examples:\n[prose elided]",
                        "Examples:\n  EFOO (-1): not an error entry\n  [0] x:", 1)
    assert parse_text_dump(text) == parse_text_dump((REF / "specs_sys_read.txt").read_text())


def test_text_dump_parameter_count_checked() -> None:
    text = (REF / "specs_sys_read.txt").read_text().replace("Parameters (3):",
                                                             "Parameters (4):")
    with pytest.raises(SpecError, match="Parameters"):
        parse_text_dump(text)
