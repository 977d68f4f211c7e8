"""Tests of the static arena planner: hand-made cases with known optima, properties over random sets."""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tvm_patch.memplan import (
    HEURISTICS,
    Buffer,
    DepthwiseInPlace,
    InPlace,
    InvalidPlanError,
    Plan,
    exact_search,
    first_fit_by_lifetime,
    greedy_by_size,
    lower_bound,
    plan_memory,
    validate,
)


# ---------------------------------------------------------------- hand-made cases with known optima


def test_chain_reuses_dead_memory():
    # A -> B -> C: C can take A's place once A is dead; optimum = widest step = 96 + 48.
    bufs = [Buffer("A", 96, 0, 1), Buffer("B", 48, 1, 2), Buffer("C", 96, 2, 3)]
    plan = plan_memory(bufs)
    validate(plan, bufs)
    assert lower_bound(bufs) == 144
    assert plan.arena_size == 144
    assert plan.offsets["A"] == plan.offsets["C"]
    assert plan.optimal


def test_greedy_by_size_is_beaten_by_exact_search():
    # B(80)@[1] and A(80)@[3,4] never meet, so greedy by size stacks both at 0; then C(48)@[2,3] goes to
    # 80 and D(48)@[0,2] clashes with B and C: 176 bytes. The optimum is the lower bound, 128:
    # B@0, D@80 (steps 0..2), C@0 (steps 2..3, after B), A@48 (steps 3..4, beside C).
    bufs = [Buffer("A", 80, 3, 4), Buffer("B", 80, 1, 1), Buffer("C", 48, 2, 3), Buffer("D", 48, 0, 2)]
    assert lower_bound(bufs) == 128
    assert greedy_by_size(bufs).arena_size == 176
    plan = plan_memory(bufs)
    validate(plan, bufs)
    assert plan.arena_size == 128
    assert plan.heuristic == "exact"
    assert plan.optimal
    assert plan.candidates["greedy_by_size"] == 176


def _inverted_residual() -> tuple[list[Buffer], list]:
    # MobileNetV2 block on a 16x16x8 int8 input, expansion 6: op1 expand (x -> e), op2 depthwise
    # (e -> d, with a one-channel scratch s), op3 project (d -> p), op4 residual add (p, x -> y).
    hw, c, t = 16 * 16, 8, 6
    bufs = [
        Buffer("x", hw * c, 0, 4),
        Buffer("e", hw * c * t, 1, 2),
        Buffer("d", hw * c * t, 2, 3),
        Buffer("s", hw, 2, 2),
        Buffer("p", hw * c, 3, 4),
        Buffer("y", hw * c, 4, 5),
    ]
    hints = [DepthwiseInPlace("e", "d"), InPlace("p", "y"), InPlace("x", "y")]
    return bufs, hints


def test_inverted_residual_without_hints():
    bufs, _ = _inverted_residual()
    plan = plan_memory(bufs)
    validate(plan, bufs)
    # Step 2 holds x, e, d and the scratch: 2048 + 12288 + 12288 + 256.
    assert lower_bound(bufs) == 26880
    assert plan.arena_size == 26880
    assert plan.aliases == ()


def test_inverted_residual_with_in_place_depthwise():
    bufs, hints = _inverted_residual()
    plan = plan_memory(bufs, hints)
    validate(plan, bufs)
    # d overlays e, so step 2 needs x + e + s = 14592; step 3 (x, d, p) needs 16384: the optimum.
    assert lower_bound(bufs, hints) == 16384
    assert plan.arena_size == 16384
    assert DepthwiseInPlace("e", "d") in plan.aliases
    assert plan.offsets["d"] == plan.offsets["e"]
    assert plan.optimal


def test_in_place_add_saves_the_output_buffer():
    # a, b -> add -> y: with y written into a, the arena holds two tensors, not three.
    bufs = [Buffer("a", 1024, 0, 1), Buffer("b", 1024, 0, 1), Buffer("y", 1024, 1, 2)]
    assert plan_memory(bufs).arena_size == 3072
    plan = plan_memory(bufs, [InPlace("a", "y")])
    validate(plan, bufs)
    assert plan.arena_size == 2048
    assert plan.offsets["y"] == plan.offsets["a"]
    assert plan.aliases == (InPlace("a", "y"),)


def test_depthwise_shift_places_output_inside_input():
    # A stride-2 depthwise whose caller proved a 64-byte shift safe: d lies inside e's range.
    bufs = [Buffer("e", 512, 0, 1), Buffer("d", 128, 1, 2), Buffer("other", 256, 1, 1)]
    plan = plan_memory(bufs, [DepthwiseInPlace("e", "d", 64)])
    validate(plan, bufs)
    assert plan.arena_size == 768
    assert plan.offsets["d"] - plan.offsets["e"] == 64


def test_alignment_rounds_offsets_and_arena():
    bufs = [Buffer("a", 10, 0, 1), Buffer("b", 10, 1, 2), Buffer("c", 3, 1, 1)]
    for align in (1, 4, 16, 64):
        plan = plan_memory(bufs, alignment=align)
        validate(plan, bufs)
        assert all(o % align == 0 for o in plan.offsets.values())
        assert plan.arena_size % align == 0
    assert plan_memory(bufs, alignment=1).arena_size == 23
    assert plan_memory(bufs, alignment=16).arena_size == 48


def test_zero_size_and_single_buffers():
    assert plan_memory([]).arena_size == 0
    bufs = [Buffer("z", 0, 0, 3), Buffer("a", 100, 0, 3)]
    plan = plan_memory(bufs)
    validate(plan, bufs)
    assert plan.arena_size == 112


# ---------------------------------------------------------------- validate and hint checks


def test_validate_rejects_overlap_of_live_buffers():
    bufs = [Buffer("a", 64, 0, 1), Buffer("b", 64, 1, 2)]
    bad = Plan(offsets={"a": 0, "b": 32}, arena_size=96, alignment=16, heuristic="hand")
    with pytest.raises(InvalidPlanError, match="overlaps"):
        validate(bad, bufs)
    # The same overlap at the hinted exact placement is allowed, at another placement it is not.
    ok = Plan(offsets={"a": 0, "b": 0}, arena_size=64, alignment=16, heuristic="hand", hints=(InPlace("a", "b"),))
    validate(ok, bufs)
    shifted = Plan(offsets={"a": 0, "b": 32}, arena_size=96, alignment=16, heuristic="hand", hints=(InPlace("a", "b"),))
    with pytest.raises(InvalidPlanError):
        validate(shifted, bufs)


def test_validate_rejects_misalignment_and_out_of_arena():
    bufs = [Buffer("a", 64, 0, 0)]
    with pytest.raises(InvalidPlanError, match="aligned"):
        validate(Plan(offsets={"a": 8}, arena_size=80, alignment=16, heuristic="hand"), bufs)
    with pytest.raises(InvalidPlanError, match="exceeds"):
        validate(Plan(offsets={"a": 16}, arena_size=64, alignment=16, heuristic="hand"), bufs)
    with pytest.raises(InvalidPlanError, match="no offset"):
        validate(Plan(offsets={}, arena_size=64, alignment=16, heuristic="hand"), bufs)


def test_hint_preconditions():
    bufs = [Buffer("a", 64, 0, 1), Buffer("b", 128, 1, 2), Buffer("c", 32, 2, 3)]
    with pytest.raises(ValueError, match="larger"):
        plan_memory(bufs, [InPlace("a", "b")])
    with pytest.raises(ValueError, match="last"):
        plan_memory(bufs, [InPlace("a", "c")])
    with pytest.raises(ValueError, match="multiple"):
        plan_memory(bufs, [DepthwiseInPlace("a", "b", 8)])
    with pytest.raises(ValueError, match="unknown"):
        plan_memory(bufs, [InPlace("a", "zz")])
    with pytest.raises(ValueError, match="duplicate"):
        plan_memory(bufs + [Buffer("a", 1, 0, 0)])


# ---------------------------------------------------------------- exactness against independent references


def _brute_force(bufs: list[Buffer], grid: int) -> int:
    """Smallest arena over every assignment of grid-aligned offsets (an independent reference)."""
    total = sum(b.size for b in bufs)
    slots = range(0, total + 1, grid)
    best = total
    pairs = [(i, j) for i, j in itertools.combinations(range(len(bufs)), 2) if bufs[i].lives_with(bufs[j])]
    for offs in itertools.product(slots, repeat=len(bufs)):
        top = max(o + b.size for o, b in zip(offs, bufs))
        if top >= best:
            continue
        if all(offs[i] + bufs[i].size <= offs[j] or offs[j] + bufs[j].size <= offs[i] for i, j in pairs):
            best = top
    return best


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 3), st.integers(0, 4), st.integers(0, 2)), min_size=2, max_size=4))
def test_exact_search_matches_brute_force(spec):
    bufs = [Buffer(f"b{i}", 16 * s, f, f + d) for i, (s, f, d) in enumerate(spec)]
    plan, finished = exact_search(bufs, alignment=16)
    assert finished and plan is not None
    validate(plan, bufs)
    assert plan.arena_size == _brute_force(bufs, 16)


def _perfect_packing(rng: random.Random, steps: int, height: int, cuts: int) -> list[Buffer]:
    """Slice the rectangle steps x height (in 16-byte units) into pieces: a set whose optimum is height."""
    rects = [(0, steps, 0, height)]
    for _ in range(cuts):
        i = rng.randrange(len(rects))
        t0, t1, m0, m1 = rects[i]
        if rng.random() < 0.5 and t1 - t0 > 1:
            t = rng.randrange(t0 + 1, t1)
            rects[i : i + 1] = [(t0, t, m0, m1), (t, t1, m0, m1)]
        elif m1 - m0 > 1:
            m = rng.randrange(m0 + 1, m1)
            rects[i : i + 1] = [(t0, t1, m0, m), (t0, t1, m, m1)]
    return [Buffer(f"r{k}", 16 * (m1 - m0), t0, t1 - 1) for k, (t0, t1, m0, m1) in enumerate(rects)]


@pytest.mark.parametrize("seed", range(12))
def test_perfect_packings_reach_their_known_optimum(seed):
    rng = random.Random(seed)
    bufs = _perfect_packing(rng, steps=6, height=12, cuts=rng.randint(3, 8))
    assert lower_bound(bufs) == 16 * 12
    plan = plan_memory(bufs, exact_limit=10, exact_node_limit=500_000)
    validate(plan, bufs)
    assert plan.arena_size >= 16 * 12
    if len(bufs) <= 8:
        assert plan.arena_size == 16 * 12, (plan.candidates, bufs)


# ---------------------------------------------------------------- random property test


@st.composite
def _problems(draw):
    n = draw(st.integers(1, 14))
    bufs = []
    for i in range(n):
        first = draw(st.integers(0, 12))
        bufs.append(Buffer(f"t{i}", draw(st.integers(0, 3000)), first, first + draw(st.integers(0, 5))))
    alignment = draw(st.sampled_from([1, 4, 8, 16, 32]))
    hints = []
    for a, b in itertools.permutations(bufs, 2):
        if a.last == b.first and draw(st.integers(0, 3)) == 0:
            if b.size <= a.size and draw(st.booleans()):
                hints.append(InPlace(a.name, b.name))
            else:
                hints.append(DepthwiseInPlace(a.name, b.name, alignment * draw(st.integers(-4, 4))))
    return bufs, hints, alignment


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_problems())
def test_random_plans_are_valid_and_no_worse_than_the_baselines(problem):
    bufs, hints, alignment = problem
    plan = plan_memory(bufs, hints, alignment=alignment)
    validate(plan, bufs)
    assert plan.arena_size >= lower_bound(bufs, hints)
    assert plan.arena_size <= greedy_by_size(bufs, hints, alignment).arena_size
    assert plan.arena_size <= first_fit_by_lifetime(bufs, hints, alignment).arena_size
    assert plan.arena_size % alignment == 0
    for b in bufs:
        off = plan.offsets[b.name]
        assert off % alignment == 0
        assert 0 <= off and off + b.size <= plan.arena_size
    for h in plan.aliases:
        assert plan.offsets[h.dst] - plan.offsets[h.src] == h.shift
    # Every heuristic on its own must give a valid plan too.
    for fn in HEURISTICS.values():
        for prefer in (False, True):
            validate(fn(bufs, hints, alignment, prefer_alias=prefer), bufs)
