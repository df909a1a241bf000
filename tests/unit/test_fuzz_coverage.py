"""Coverage bookkeeping: sides per parameter from the oracle, listed errors, merge, JSON."""

from __future__ import annotations

from kapi_selftests.fuzz.coverage import Coverage, Side, Target, listed_errors, rejectable
from kapi_selftests.oracle.predict import MemoryFacts, UserString, predict
from kapi_selftests.oracle.spec import builtin_specs

SPECS = builtin_specs()
READ = SPECS["sys_read"]
MEM = MemoryFacts(strings=(UserString(0x10000, 5),))


def _cov() -> Coverage:
    return Coverage({"sys_read": READ, "sys_open": SPECS["sys_open"],
                     "sys_madvise": SPECS["sys_madvise"]})


def test_coverage_goals_only_rejectable_params_have_an_invalid_side() -> None:
    cov = _cov()
    assert Target("sys_madvise", "behavior", Side.VALID) in cov.sides
    assert Target("sys_madvise", "behavior", Side.INVALID) not in cov.sides
    assert Target("sys_read", "fd", Side.INVALID) in cov.sides
    assert not rejectable(SPECS["sys_madvise"].param("behavior"))


def test_coverage_accepted_call_hits_every_valid_side() -> None:
    cov = _cov()
    new = cov.add("sys_read", predict(READ, (3, 0x10000, 16), MEM), 0)
    assert {t.param for t in new} == {"fd", "buf", "count"}
    assert all(t.side is Side.VALID for t in new)


def test_coverage_rejection_counts_invalid_side_and_earlier_valid_sides_only() -> None:
    cov = _cov()
    pred = predict(READ, (3, 0, 16), MEM)  # NULL buf: rejected at buf
    assert pred.rejection is not None and pred.rejection.param == "buf"
    new = cov.add("sys_read", pred, 22)
    assert Target("sys_read", "fd", Side.VALID) in new
    assert Target("sys_read", "buf", Side.INVALID) in new
    assert cov.sides[Target("sys_read", "count", Side.VALID)] == 0
    assert cov.errors[("sys_read", 22)] == 1


def test_coverage_unlisted_error_is_kept_apart() -> None:
    cov = _cov()
    cov.add("sys_read", None, 999)
    assert cov.unlisted == {("sys_read", 999): 1}
    assert cov.calls["sys_read"] == 1


def test_coverage_figure_counts_sides_and_errors() -> None:
    cov = _cov()
    before = cov.figure()
    assert before.hit == 0 and before.total == len(cov.sides) + len(cov.errors)
    cov.add("sys_read", predict(READ, (3, 0x10000, 16), MEM), 9)
    after = cov.figure()
    assert after.sides_hit == 3 and after.errors_hit == 1
    assert 0 < after.ratio < 1
    assert "constraint sides 3/" in after.describe()


def test_coverage_json_round_trip_and_merge_add_up() -> None:
    a, b = _cov(), _cov()
    a.add("sys_read", predict(READ, (3, 0x10000, 16), MEM), 9)
    b.add("sys_read", predict(READ, (3, 0x10000, 16), MEM), 9)
    c = _cov()
    c.load_json(a.to_json())
    assert c.sides == a.sides and c.errors == a.errors
    c.merge(b)
    assert c.sides[Target("sys_read", "fd", Side.VALID)] == 2
    assert c.errors[("sys_read", 9)] == 2
    assert c.calls["sys_read"] == 2


def test_coverage_missing_shrinks_as_goals_are_hit() -> None:
    cov = _cov()
    n = len(cov.missing())
    cov.add("sys_read", predict(READ, (3, 0x10000, 16), MEM), 0)
    assert len(cov.missing()) == n - 3


def test_listed_errors_drop_kernel_internal_restart_codes() -> None:
    errs = listed_errors(READ)
    assert 512 not in errs and errs[9] == "EBADF"


def test_coverage_table_marks_unhit_sides() -> None:
    text = "\n".join(_cov().table())
    assert "### sys_read (0 calls)" in text
    assert "| fd | range [0, 2147483647] | **0** | **0** |" in text
    assert "| behavior | none | **0** | n/a |" in text


def test_coverage_add_many_counts_as_add_one_by_one() -> None:
    calls = [("sys_read", predict(READ, regs, MEM), err)
             for regs, err in (((3, 0x10000, 16), 0), ((3, 0, 16), 22), ((-1, 0x10000, 1), 22),
                               ((3, 0x10000, 16), 0), ((3, 0x10000, 16), 9))]
    calls += [("sys_read", None, 999), ("sys_open", None, 2), ("sys_nosuch", None, 1)]
    one, many = _cov(), _cov()
    new_one = [t for c in calls for t in one.add(*c)]
    new_many = many.add_many(calls)
    assert many.to_json() == one.to_json()
    assert set(new_many) == set(new_one) and len(new_many) == len(new_one)
    assert many.sides[Target("sys_read", "fd", Side.VALID)] == 4  # one rejected at fd
    assert many.sides[Target("sys_read", "fd", Side.INVALID)] == 1
