"""The seeded plan generator: deterministic per (seed, shard, batch), steerable, safe."""

from __future__ import annotations

import json
import random

from kapi_selftests.fuzz.coverage import Side, Target
from kapi_selftests.fuzz.generate import PlanGenerator
from kapi_selftests.oracle.spec import builtin_specs
from kapi_selftests.plan import (
    TOP_BUFS,
    Buf,
    BufKind,
    CallPlan,
    Fd,
    FdKind,
    Lit,
    plan_from_json,
    plan_json_text,
    plan_to_json,
)

SPECS = builtin_specs()


def test_same_seed_shard_batch_gives_the_same_plans() -> None:
    a = PlanGenerator(SPECS, 7, 0).batch(3, 100)
    b = PlanGenerator(SPECS, 7, 0).batch(3, 100)
    assert a == b


def test_shards_and_batches_differ() -> None:
    g = PlanGenerator(SPECS, 7, 0)
    assert g.batch(0, 50) != g.batch(1, 50)
    assert g.batch(0, 50) != PlanGenerator(SPECS, 7, 1).batch(0, 50)
    assert g.batch(0, 50) != PlanGenerator(SPECS, 8, 0).batch(0, 50)


def test_every_spec_gets_plans_and_they_round_trip_through_json() -> None:
    plans = PlanGenerator(SPECS, 1).batch(0, 300)
    assert {p.name for p in plans} == {"open", "close", "read", "write", "madvise"}
    assert all(plan_from_json(plan_to_json(p)) == p for p in plans)
    # the campaign's fast text form is the same JSON, twice (its argument cache warm)
    for _ in range(2):
        assert [plan_json_text(p) for p in plans] == \
            [json.dumps(plan_to_json(p), separators=(",", ":")) for p in plans]


def test_steering_aims_at_the_missing_goal() -> None:
    goal = Target("sys_madvise", "start", Side.INVALID)
    plans = PlanGenerator(SPECS, 1, steer_rate=1.0, error_rate=0.0).batch(0, 50, [goal])
    assert all(p.name == "madvise" for p in plans)
    assert all(isinstance(p.args[0], Buf) and p.args[0].kind in (BufKind.UNALIGNED,
                                                                 BufKind.SHORT) for p in plans)


def _assert_safe_madvise(plans: list[CallPlan]) -> int:
    from kapi_selftests import arch

    seen = 0
    for p in plans:
        if p.name != "madvise":
            continue
        seen += 1
        start, length, advice = p.args
        assert isinstance(length, Lit) and isinstance(advice, Lit)
        assert advice.value & 0xFFFFFFFF not in arch.MADV_UNSAFE
        inside = isinstance(start, Buf) and start.kind in (BufKind.MAPPED, BufKind.GUARD_TAIL) \
            and length.value <= start.size
        known = advice.value & 0xFFFFFFFF in arch.MADV.values()
        if not inside and known:
            assert advice.value & 0xFFFFFFFF in arch.MADV_HINTS or advice.value == 0
    return seen


def test_madvise_never_leaves_harness_mappings_with_destructive_advice() -> None:
    assert _assert_safe_madvise(PlanGenerator(SPECS, 2).batch(0, 2000)) > 100


def _mutants(seed: int, n: int) -> list[tuple[CallPlan, CallPlan]]:
    g = PlanGenerator(SPECS, seed)
    rng = random.Random(seed)
    bases = g.batch(0, n)
    return [(b, g.mutate(rng, b)) for b in bases]


def test_mutation_changes_one_or_two_arguments_and_keeps_the_call() -> None:
    pairs = _mutants(5, 3000)
    changed = 0
    for base, m in pairs:
        assert m.name == base.name and len(m.args) == len(base.args)
        diff = sum(a != b for a, b in zip(base.args, m.args, strict=True))
        # a buffer resized with its count is part of the same change; make_safe may
        # reset madvise's advice
        assert diff <= 3, (base.describe(), m.describe())
        changed += diff > 0
    assert changed > 0.8 * len(pairs)  # a redraw can land on the same value


def test_mutants_obey_the_harness_safety_rules() -> None:
    mutants = [m for _, m in _mutants(6, 4000)]
    g = PlanGenerator(SPECS, 6)
    rng = random.Random(1)
    deep = []
    for m in mutants[:500]:  # mutants of mutants, as a long campaign makes them
        for _ in range(20):
            m = g.mutate(rng, m)
        deep.append(m)
    assert _assert_safe_madvise(mutants + deep) > 100
    for p in mutants + deep:
        for a in p.args:
            if isinstance(a, Buf):
                assert a.size <= 1 << 20


def test_mutated_buffers_follow_their_count() -> None:
    for _, m in _mutants(7, 3000):
        if m.name in ("read", "write") and isinstance(m.args[1], Buf):
            count = m.args[2]
            assert isinstance(count, Lit)
            want = count.value if count.value <= 1 << 20 else 64 << 10
            if m.args[1].kind in TOP_BUFS:  # the harness owns one page up there
                want = min(want, 4096)
            assert m.args[1].size == want, m.describe()


def test_corpus_gets_the_mutate_rate_share_and_replays_from_the_seed() -> None:
    corpus = [CallPlan("read", (Fd(FdKind.PIPE_READ), Buf(BufKind.MAPPED, 7), Lit(7)))]
    g = PlanGenerator(SPECS, 3, steer_rate=0.0, error_rate=0.0)
    a = g.batch(0, 2000, corpus=corpus, mutate_rate=0.5)
    assert a == PlanGenerator(SPECS, 3, steer_rate=0.0, error_rate=0.0).batch(
        0, 2000, corpus=corpus, mutate_rate=0.5)
    # mutants of the one entry: reads with at least two of its three arguments
    near = [p for p in a if p.name == "read"
            and sum(x == y for x, y in zip(p.args, corpus[0].args, strict=True)) >= 1]
    assert 0.4 * len(a) < len(near) < 0.7 * len(a)  # 0.5, plus random reads that match
    plain = g.batch(0, 2000, corpus=corpus, mutate_rate=0.0)
    assert plain == g.batch(0, 2000)  # rate 0: the corpus changes nothing


def test_steering_gives_up_on_a_goal_after_its_attempts() -> None:
    from kapi_selftests.fuzz.generate import STEER_ATTEMPTS

    goal = Target("sys_read", "count", Side.INVALID)  # never the rejected parameter
    tries: dict[Target, int] = {}
    g = PlanGenerator(SPECS, 1, steer_rate=1.0, error_rate=0.0)
    g.batch(0, STEER_ATTEMPTS, [goal], tries)
    assert tries[goal] == STEER_ATTEMPTS
    names = {p.name for p in g.batch(1, 100, [goal], tries)}
    assert names != {"read"}  # no longer steered: every spec again
    assert tries[goal] == STEER_ATTEMPTS


def test_huge_counts_get_a_bounded_buffer() -> None:
    for p in PlanGenerator(SPECS, 4).batch(0, 1000):
        for a in p.args:
            if isinstance(a, Buf):
                assert a.size <= 1 << 20


def test_error_recipes_aim_at_listed_errors_only() -> None:
    import errno
    import random

    from kapi_selftests.fuzz.generate import ERROR_RECIPES

    shapes = set()
    for (spec, name), recipe in ERROR_RECIPES.items():
        assert any(abs(e.code) == getattr(errno, name) for e in SPECS[spec].errors), (spec, name)
        plan = recipe(random.Random(0))
        assert f"sys_{plan.name}" == spec
        shapes.add((plan.name, plan.args[0]))
    plans = PlanGenerator(SPECS, 3, error_rate=1.0).batch(0, 300)
    assert {(p.name, p.args[0]) for p in plans} == shapes  # only recipes, and all of them
    # the same seed, the same calls: recipes do not look at what the kernel returned
    assert PlanGenerator(SPECS, 3, error_rate=1.0).batch(0, 300) == plans


def test_cheaper_corpus_entries_are_mutated_more_often() -> None:
    # two entries, one of which ran ten times the kernel code: of two drawn, the
    # cheaper is mutated (3 of 4 mutations, where a uniform choice gives 1 of 2)
    cheap = CallPlan("close", (Fd(FdKind.PIPE_READ),))
    dear = CallPlan("read", (Fd(FdKind.PIPE_READ), Buf(BufKind.MAPPED, 7), Lit(7)))
    g = PlanGenerator(SPECS, 3, steer_rate=0.0, error_rate=0.0)
    plans = g.batch(0, 4000, corpus=[cheap, dear], costs=[100, 1000], mutate_rate=1.0)
    closes = sum(p.name == "close" for p in plans)
    assert 0.7 * len(plans) < closes < 0.8 * len(plans)
    even = g.batch(0, 4000, corpus=[cheap, dear], mutate_rate=1.0)  # no costs: uniform
    assert 0.45 * len(even) < sum(p.name == "close" for p in even) < 0.55 * len(even)
