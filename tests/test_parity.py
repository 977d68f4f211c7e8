"""bench.parity: the patched build at kernel parity, from a profiled run's calls and the stage's per-layer MACs."""

from __future__ import annotations

import pytest

from bench.parity import parity_extra


def call(name: str, macs: int, count: int, unit: str = "instructions") -> dict:
    return {"name": name, "macs": macs, unit: count}


# a float input's quantization, a stem, a depthwise layer, a 1x1 layer, then two layers after the stage
CALLS = [call("quantize", 0, 700), call("stem", 1000, 1500), call("dw", 400, 1000), call("pw", 800, 900),
         call("late", 2000, 2200), call("dense", 100, 150)]


@pytest.mark.parametrize("layer_macs, want", [
    # the stage's layers patch by patch: the stem 2x, the depthwise 1.5x, the 1x1 once
    ([[1000, 2000], [400, 600], [800, 800]], 1500 + 500),
    # cache mode: every layer once, parity is layer by layer
    ([[1000, 1000], [400, 400], [800, 800]], 0),
    # a stage of the first layer alone
    ([[1000, 3000]], 3000),
    # two layers of equal MACs: each call takes the ratio of the first unmatched one, in layer order
    ([[1000, 2000], [400, 800], [800, 800]], 1500 + 1000),
])
def test_parity_scales_the_stage_calls_by_their_patched_macs(layer_macs, want):
    assert parity_extra(CALLS, layer_macs) == want


def test_the_input_side_calls_take_the_input_reads_ratio():
    """The quantization before the stage's first layer: recompute mode reads 2.5x the input, so 1.5 x 700 more;
    without the figure (or in cache mode, 1x) it counts once."""
    layer_macs = [[1000, 2000], [400, 600], [800, 800]]
    assert parity_extra(CALLS, layer_macs, (400, 1000)) == 1050 + 1500 + 500
    assert parity_extra(CALLS, layer_macs, (400, 400)) == parity_extra(CALLS, layer_macs) == 1500 + 500
    # a call without MACs between the stage's layers (a residual add) counts once
    calls = [CALLS[0], CALLS[1], call("add", 0, 300), *CALLS[2:]]
    assert parity_extra(calls, layer_macs, (400, 1000)) == 1050 + 1500 + 500


def test_equal_macs_are_matched_in_order():
    calls = [call("a", 500, 1000), call("b", 500, 3000), call("c", 700, 10)]
    assert parity_extra(calls, [[500, 1000], [500, 500]]) == 1000


def test_cycles_count_as_instructions_do():
    calls = [call("stem", 1000, 1500, "cycles"), call("late", 2000, 2200, "cycles")]
    assert parity_extra(calls, [[1000, 2000]]) == 1500


@pytest.mark.parametrize("calls, layer_macs", [
    (CALLS, [[1000, 2000], [999, 1500]]),  # a stage layer no call has
    (CALLS, [[1000, 2000], [800, 900]]),  # the depthwise call comes before the stage's layers are all seen
    (CALLS, []),  # no stage
    ([], [[1000, 2000]]),  # no profiled calls
    ([call("stem", 1000, 1500), {"name": "x", "macs": 10}], [[1000, 2000]]),  # a call without a count
])
def test_no_figure_where_the_calls_do_not_match_the_stage(calls, layer_macs):
    assert parity_extra(calls, layer_macs) is None
