"""Max pooling and table lookups (int8 hard swish) inside a patch stage (issue 11).

Random stages with max pools (kernels 2 / 3, strides 1 / 2, SAME and VALID padding, odd sizes, a pool and a
padded conv reading the same value, whose ring then holds the conv's zero point): the patched PrimFunc in
recompute and cache mode, and the cached numpy executor, equal the layer-by-layer reference bit for bit; the pool
semantics against a direct count; real models (det_net, pool_net: SAME max pools and hard swish in the stage)
patched and compared with TensorFlow Lite Micro; the C header's names of inputs and outputs.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tvm import relax

from conftest import FIXTURES, bindings
from onnx import helper
from onnx_graphs import OnnxBuilder
from tvm_patch.errors import TvmPatchError
from tvm_patch.export import export_model
from tvm_patch.export.io_names import c_identifier, io_c_names
from tvm_patch.frontend import load, onnx_to_relax
from tvm_patch.graph import build_graph
from tvm_patch.names import STAGE_FUNC
from tvm_patch.patch import Add, AddQuant, Conv, ConvQuant, Stage, build_stage, per_patch_bytes
from tvm_patch.patch.cache_stage import build_cached_stage
from tvm_patch.patch.examples import _same_pad
from tvm_patch.patch.from_graph import lower_for_patching, stage_from_graph
from tvm_patch.patch.reference import compile_func, run_numpy, run_numpy_cached, run_tvm
from tvm_patch.patch.regions import halo_macs, macs_by_patch, plan_patches, stage_macs
from tvm_patch.patch.schedule import allocations, measured_macs_by_patch
from tvm_patch.patch.stage import Lookup, MaxPool, StageError
from tvm_patch.patch.te_stage import pad_value
from tvm_patch.quant.params import quantize_multiplier
from tvm_patch.reference import verify_against_reference
from tvm_patch.report import profile
from tvm_patch.split import check_split
from tvm_patch.transform.lower_to_integer import lower_to_integer
from tvm_patch.transform.patch_stage import PatchStage
from tvm_patch.verify import verify_patch

MODELS = FIXTURES / "models"
DET = MODELS / "det_net.tflite"
POOL_NET = MODELS / "pool_net.tflite"
SE = MODELS / "se_net.tflite"
LOGISTIC_NET = MODELS / "logistic_net.tflite"


@st.composite
def pool_stages(draw, dtype: str | None = None) -> tuple[Stage, np.ndarray, tuple[int, int]]:
    """A random stage of convs and max pools (kernel 2 / 3, stride 1 / 2, SAME or VALID, odd sizes), with
    "branch" blocks where a max pool and a padded conv read the same value (the value's ring then holds the
    conv's zero point, up to 127, which the pool must not see), an input and a patch split."""
    dtype = dtype or draw(st.sampled_from(["float32", "int8"]))
    layout = draw(st.sampled_from(["NCHW", "NHWC"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    c = draw(st.integers(1, 3))
    h, w = draw(st.integers(5, 17)), draw(st.integers(5, 17))
    layers: list = []
    shapes = {-1: (c, h, w)}

    def conv(src: int, cout: int, k: int, s: int, zp_in: int) -> Conv:
        cin = shapes[src][0]
        shape = (cout, cin, k, k) if layout == "NCHW" else (k, k, cin, cout)
        if dtype == "float32":  # small integers: every sum exact
            return Conv(rng.integers(-2, 3, shape).astype("float32"), rng.integers(-3, 4, cout).astype("float32"),
                        s, k // 2, input=src, activation=draw(st.sampled_from(["none", "relu"])))
        mults, shifts = zip(*(quantize_multiplier(float(r)) for r in rng.uniform(0.002, 0.02, cout)))
        q = ConvQuant(zp_in, int(rng.integers(-10, 10)), np.array(mults), np.array(shifts), 0, -128, 127)
        return Conv(rng.integers(-127, 128, shape).astype("int8"), rng.integers(-500, 500, cout).astype("int32"),
                    s, k // 2, input=src, quant=q)

    def zp_out(v: int) -> int:
        return 0 if dtype == "float32" or v < 0 else (layers[v].quant.output_zero_point
                                                      if isinstance(layers[v], Conv) else 0)

    def add(shape, *layer) -> int:
        for la in layer:
            layers.append(la)
        shapes[len(layers) - 1] = shape
        return len(layers) - 1

    for _ in range(draw(st.integers(1, 4))):
        cur = len(layers) - 1
        cin, hh, ww = shapes[cur]
        kind = draw(st.sampled_from(["conv", "pool", "pool", "branch"]))
        if kind == "conv":
            k, s = draw(st.sampled_from([1, 3])), draw(st.sampled_from([1, 2]))
            add((cin, (hh - 1) // s + 1, (ww - 1) // s + 1), conv(cur, cin, k, s, zp_out(cur)))
        elif kind == "pool":
            k, s = draw(st.sampled_from([2, 3])), draw(st.sampled_from([1, 2]))
            if draw(st.booleans()):  # SAME (TFLite): may pad after only, or more after than before
                (pt, pb), (pl, pr) = _same_pad(hh, k, s), _same_pad(ww, k, s)
            else:  # VALID
                if min(hh, ww) < k:
                    continue
                pt = pb = pl = pr = 0
            lo, hi = (-128, 127) if dtype == "float32" else sorted(int(v) for v in rng.integers(-128, 128, 2))
            pool = MaxPool(k, s, (pt, pl, pb, pr), act_min=lo, act_max=hi,
                           activation=draw(st.sampled_from(["none", "relu"])) if dtype == "float32" else "none")
            add((cin, (hh + pt + pb - k) // s + 1, (ww + pl + pr - k) // s + 1), pool)
        else:  # max pool 3x3 s1 SAME and a padded 3x3 conv on the same value, added
            pool = add((cin, hh, ww), MaxPool(3, 1, 1, input=cur))
            cv = add((cin, hh, ww), conv(cur, cin, 3, 1, int(rng.integers(100, 128)) if dtype == "int8" else 0))
            q = None
            if dtype == "int8":
                m, sh = quantize_multiplier(0.5)
                mo, so = quantize_multiplier(1.0 / (1 << 20) / 0.6)
                q = AddQuant((zp_out(cur), zp_out(cv)), (m, m), (sh, sh), 0, mo, so)
            add((cin, hh, ww), Add(cv, input=pool, quant=q))
    if not layers:
        layers.append(MaxPool(2, 1, (0, 0, 1, 1)))
    in_shape = (1, c, h, w) if layout == "NCHW" else (1, h, w, c)
    stage = Stage(in_shape, tuple(layers), layout, dtype)
    _, ho, wo = stage.value_shape(len(stage.layers) - 1)
    patches = (draw(st.integers(1, min(4, ho))), draw(st.integers(1, min(4, wo))))
    x = (rng.integers(-3, 4, in_shape).astype("float32") if dtype == "float32"
         else rng.integers(-128, 128, in_shape).astype("int8"))
    return stage, x, patches


def _naive_max_pool(x: np.ndarray, k: int, s: int, pad: tuple[int, int, int, int]) -> np.ndarray:
    """NCHW max pool by definition: each output the max of its window's in-image elements."""
    n, c, h, w = x.shape
    pt, pl, pb, pr = pad
    ho, wo = (h + pt + pb - k) // s + 1, (w + pl + pr - k) // s + 1
    out = np.empty((n, c, ho, wo), x.dtype)
    for i in range(ho):
        for j in range(wo):
            ys = range(max(0, i * s - pt), min(h, i * s - pt + k))
            xs = range(max(0, j * s - pl), min(w, j * s - pl + k))
            out[:, :, i, j] = x[:, :, ys.start:ys.stop, xs.start:xs.stop].max(axis=(2, 3))
    return out


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pool_stages())
def test_pool_stages_patched_in_numpy(case):
    """The cached (cache mode) numpy executor equals the layer-by-layer reference, computes every live element
    once (checked inside), performs the MACs `regions` predicts (a max pool counts none, as in the profile) and
    reads every cache entry it writes."""
    stage, x, patches = case
    run = run_numpy_cached(stage, x, patches)
    assert np.array_equal(run.output, run_numpy(stage, x))
    assert run.macs == halo_macs(stage, patches, "cache") <= stage_macs(stage)
    assert halo_macs(stage, patches, "cache") <= halo_macs(stage, patches)
    assert not any(run.unread_cache_elements.values())


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pool_stages())
def test_pool_stages_patched_primfuncs_bit_exact(case):
    """Recompute and cache mode PrimFuncs equal the layer-by-layer reference bit for bit (float32 stages have
    small integer weights and inputs: exact too); every buffer compacts to its analytic size and the MACs read
    off the loop nest are the analytic ones."""
    stage, x, patches = case
    ref = run_numpy(stage, x)
    func = build_stage(stage, patches)
    assert np.array_equal(run_tvm(compile_func(func, fast=True), stage, x), ref)
    assert allocations(func) == {k: v for k, v in per_patch_bytes(stage, patches).items() if k not in ("total", "peak")}
    np.testing.assert_array_equal(measured_macs_by_patch(func, stage), macs_by_patch(stage, patches))
    assert np.array_equal(run_tvm(compile_func(build_cached_stage(stage, patches), fast=True), stage, x), ref)


@pytest.mark.parametrize("k,s,pad", [(3, 2, (1, 1, 1, 1)), (2, 1, (0, 0, 1, 1)), (3, 2, (0, 0, 1, 1)), (3, 1, 1)])
def test_max_pool_never_sees_the_ring(k, s, pad):
    """The input is read by a max pool and by a conv of the same window whose input zero point is 127: the
    input's ring holds 127, above every image value (all negative). The pool, patched (3x2 patches, both modes),
    still takes the max over in-image elements only; alone, it equals a direct count."""
    rng = np.random.default_rng(5)
    x = rng.integers(-128, 0, (1, 2, 11, 9)).astype("int8")
    pool = MaxPool(k, s, pad)
    assert np.array_equal(run_numpy(Stage(x.shape, (pool,), "NCHW", "int8"), x), _naive_max_pool(x, k, s, pool.padding))
    m, sh = quantize_multiplier(0.004)
    ma, sa = quantize_multiplier(0.5)
    mo, so = quantize_multiplier(1.0 / (1 << 20) / 0.6)
    conv = Conv(rng.integers(-127, 128, (2, 2, k, k)).astype("int8"), None, s, pad, input=-1,
                quant=ConvQuant(127, -20, np.array([m]), np.array([sh])))
    stage = Stage(x.shape, (pool, conv, Add(1, input=0, quant=AddQuant((0, -20), (ma, ma), (sa, sa), 0, mo, so))),
                  "NCHW", "int8")
    assert int(pad_value(stage, -1).value) == 127
    ref = run_numpy(stage, x)
    for build in (build_stage, build_cached_stage):
        assert np.array_equal(run_tvm(compile_func(build(stage, (3, 2)), fast=True), stage, x), ref)


def test_stage_layer_checks():
    with pytest.raises(StageError, match="reaches a whole 2x2 window"):
        MaxPool(2, 2, (2, 0, 0, 0))
    with pytest.raises(StageError, match="256 int8 values"):
        Lookup(np.zeros(255, "int8"))
    with pytest.raises(StageError, match="needs an int8 stage"):
        Stage((1, 1, 4, 4), (Lookup(np.zeros(256, "int8")),))


def test_lookup_layer_in_a_stage():
    """Conv -> table lookup (an arbitrary 256-entry table) -> 3x3 conv, int8, NHWC: patched in both modes bit for
    bit; the lookup is elementwise (no halo of its own, no MACs) and may write over its input in the analytic
    peak."""
    rng = np.random.default_rng(3)
    m, sh = zip(*(quantize_multiplier(0.01) for _ in range(4)))
    q = ConvQuant(-5, 3, np.array(m), np.array(sh))
    table = rng.integers(-128, 128, 256).astype("int8")
    stage = Stage((1, 13, 11, 3), (
        Conv(rng.integers(-127, 128, (3, 3, 3, 4)).astype("int8"), rng.integers(-99, 99, 4).astype("int32"), 2, 1,
             quant=q),
        Lookup(table, kind="hard_swish"),
        Conv(rng.integers(-127, 128, (3, 3, 4, 4)).astype("int8"), None, 1, 1, quant=ConvQuant(
            7, 0, np.array(m), np.array(sh))),
    ), "NHWC", "int8")
    x = rng.integers(-128, 128, stage.input_shape).astype("int8")
    ref = run_numpy(stage, x)
    plain = Stage(stage.input_shape, stage.layers[:1], "NHWC", "int8")
    assert np.array_equal(run_numpy(Stage(stage.input_shape, stage.layers[:2], "NHWC", "int8"), x),
                          table[run_numpy(plain, x).astype(np.int64) + 128])
    for build in (build_stage, build_cached_stage):
        assert np.array_equal(run_tvm(compile_func(build(stage, (2, 3)), fast=True), stage, x), ref)
    plan = plan_patches(stage, (2, 3))
    assert plan.region_shape(0) == plan.region_shape(1)
    assert halo_macs(stage, (2, 3)) == halo_macs(Stage(stage.input_shape, (stage.layers[0], stage.layers[2]),
                                                        "NHWC", "int8"), (2, 3))


# ---------------------------------------------------------------- real models


@pytest.fixture(scope="module")
def pool_net():
    return lower_to_integer(load(str(POOL_NET)).mod)


def test_pool_net_stage_layers(pool_net):
    """pool_net's first 8 layers as a stage: conv, hard swish table, SAME max pool 3x3/2 (padding 1 on every
    side: odd 19x23), the residual block with a hard-swish depthwise, SAME max pool 2x2/1 (padding after only),
    conv."""
    low = lower_for_patching(load(str(POOL_NET)).mod)
    graph = build_graph(low)
    stage, _ = stage_from_graph(graph, 8, low["main"])
    kinds = [type(la).__name__ for la in stage.layers]
    assert kinds == ["Conv", "Lookup", "MaxPool", "Conv", "Conv", "Lookup", "Conv", "Add", "MaxPool", "Conv"]
    pools = [la for la in stage.layers if isinstance(la, MaxPool)]
    assert [(p.kernel, p.stride, p.padding) for p in pools] == [((3, 3), (2, 2), (1, 1, 1, 1)),
                                                                 ((2, 2), (1, 1), (0, 0, 1, 1))]
    assert {la.kind for la in stage.layers if isinstance(la, Lookup)} == {"hard_swish"}
    why = check_split(graph, 9)
    assert "global reduction" in why and "stage must end before it" in why


@pytest.mark.parametrize("split,patches,halo", [("auto", 2, "recompute"),
                                                pytest.param(8, 3, "cache", marks=pytest.mark.slow)])
def test_pool_net_patched_bit_exact_with_tflite_micro(pool_net, split, patches, halo):
    """pool_net patched (SAME max pools and hard swish tables in the stage) against TFLite Micro, bit for bit;
    auto reaches past the first max pool."""
    mod = PatchStage(split, patches, halo)(pool_net)
    assert any(gv.name_hint == STAGE_FUNC for gv in mod.functions)
    res = verify_against_reference(str(POOL_NET), "tflite-micro", n_inputs=2, lowered=mod)
    assert res.passed and res.n_equal == res.n_values == 2 * 10


def test_pool_net_profile_auto_split_past_the_pool():
    res = profile(str(POOL_NET), patches=2, split="auto", tir=False)
    pb = res["patch_based"]
    assert pb["split"] == 2 and res["layers"][1]["op"] == "max_pool2d"  # conv + hard swish, then the 3x3/2 pool
    assert pb["reduction"] > 2 and pb["mac_overhead"] > 0
    # an explicit split through the hard-swish depthwise and both pools, named on the model as imported
    assert profile(str(POOL_NET), patches=2, split=8, tir=False)["patch_based"]["split"] == 8


def test_logistic_in_a_stage_bit_exact_with_tflite_micro():
    """TFLite's int8 LOGISTIC after the stem convolution is a `Lookup` too: logistic_net's stage through it, the
    depthwise and a VALID max pool (split 4, 2x2 patches) is bit-exact with TFLite Micro."""
    low = lower_to_integer(load(str(LOGISTIC_NET)).mod)
    folded = relax.transform.FoldConstant()(low)
    stage, _ = stage_from_graph(build_graph(folded), 4, folded["main"])
    assert [type(la).__name__ for la in stage.layers] == ["Conv", "Lookup", "Conv", "MaxPool", "Conv"]
    assert stage.layers[1].kind == "logistic"
    mod = PatchStage(4, 2)(low)
    res = verify_against_reference(str(LOGISTIC_NET), "tflite-micro", n_inputs=2, lowered=mod)
    assert res.passed and res.n_equal == res.n_values == 2 * 10


def test_det_net_auto_split_past_the_max_pool_bit_exact_with_tflite_micro():
    """det_net, 2x2 patches, auto split: the network peak is after the stage (the concat at 16x20) whether the
    stage ends before or after the first max pool, at the same MACs; the tie goes to the smaller stage peak, so
    the stage runs through the max pool (split 2). Patched, bit-exact with TFLite Micro."""
    mod = PatchStage("auto", 2)(lower_to_integer(load(str(DET)).mod))
    calls = [b.value for b in bindings(mod) if isinstance(b.value, relax.Call) and b.value.args
             and getattr(b.value.args[0], "name_hint", "") == STAGE_FUNC]
    assert len(calls) == 1  # the stage ends at the max pool's 16x20 output (layer 1 would end at 32x40)
    assert tuple(int(d) for d in calls[0].ty.shape.values) == (1, 16, 20, 8)
    res = verify_against_reference(str(DET), "tflite-micro", n_inputs=1, lowered=mod)
    assert res.passed and res.n_equal == res.n_values == 480 + 120 + 1920


def test_se_net_stage_with_hard_swish_stops_before_the_squeeze():
    """se_net: the stem's hard swish is a table in the stage; the squeeze-and-excitation MEAN cannot be patched
    and the split is refused saying why."""
    low = lower_for_patching(load(str(SE)).mod)
    graph = build_graph(low)
    stage, _ = stage_from_graph(graph, 1, low["main"])
    assert [type(la).__name__ for la in stage.layers] == ["Conv", "Lookup"]
    with pytest.raises(TvmPatchError, match=r"split 4: layer 4 b2\.3 \(global_pool2d\) cannot be computed patch by "
                                            r"patch: it is a global reduction"):
        PatchStage(4, 2)(low)


# ---------------------------------------------------------------- C names of tvmp_run's buffers


def test_io_c_names():
    assert c_identifier("StatefulPartitionedCall:1") == "StatefulPartitionedCall_1"
    assert [c_identifier(n) for n in ("1abc", "int", "memcpy", "tvmp_arena", "TVMP_X", "_x", "", "a" * 64)] == \
        [None] * 8
    # single buffers keep input / output; several take the model's names, index names where unusable or clashing
    assert io_c_names(1, 1, ["x:0"], ["y"]) == (["input"], ["output"])
    assert io_c_names(2, 3, ["img", "img"], ["boxes:0", "output0", "for"]) == \
        (["input0", "input1"], ["boxes_0", "output1", "output2"])  # output0 is output 0's index name
    assert io_c_names(1, 2, ["x"], ["a-b", "a_b"]) == (["input"], ["output0", "output1"])
    assert io_c_names(1, 2, ["x"], ["output0", "score"]) == (["input"], ["output0", "score"])
    assert io_c_names(1, 2, ["x"], ["output1", "score"]) == (["input"], ["output0", "score"])
    assert io_c_names(2, 1, ["input", "mask"], ["y"]) == (["input", "mask"], ["output"])
    assert io_c_names(1, 2) == (["input"], ["output0", "output1"])  # no names known (an IRModule)


# ---------------------------------------------------------------- float32 ONNX (NCHW) max pools


def _onnx_pool_net(ceil: bool = False):
    """conv 3x3 relu -> MaxPool 3x3/2 pads 1 -> conv 3x3 relu6 -> MaxPool 2x2/1 pads (0, 0, 1, 1) -> conv 1x1
    -> head, float32 NCHW, 17x15 input; `ceil`: the first pool in ceil mode 2x2/2 (15 -> 8 columns, floor 7)."""
    b = OnnxBuilder((1, 3, 17, 15), seed=4)
    x = b.conv("input", 3, 4, 3, act="relu")
    attrs = dict(kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1) if ceil else \
        dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    b.nodes.append(helper.make_node("MaxPool", [x], ["pool1"], **attrs))
    x = b.conv("pool1", 4, 4, 3)
    b.nodes.append(helper.make_node("MaxPool", [x], ["pool2"], kernel_shape=[2, 2], pads=[0, 0, 1, 1]))
    x = b.conv("pool2", 4, 6, 1, act=None)
    return b.model(b.head(x, 6, 5), [1, 5])


def test_float_onnx_max_pools_patched():
    """A float32 NCHW ONNX model with two MaxPool layers (3x3/2 with symmetric pads, 2x2/1 padded after only):
    the stage through both pools (2x2 patches) equals the unpatched module; a ceil-mode pool that adds a window
    ends the stage, saying so."""
    mod = relax.transform.FoldConstant()(onnx_to_relax(_onnx_pool_net(), "pool.onnx"))
    graph = build_graph(mod)
    assert [la.op for la in graph.layers[:5]] == ["conv2d", "max_pool2d", "conv2d", "max_pool2d", "conv2d"]
    stage, _ = stage_from_graph(graph, 5, mod["main"])
    assert [type(la).__name__ for la in stage.layers] == ["Conv", "MaxPool", "Conv", "MaxPool", "Conv"]
    assert [la.activation for la in stage.layers] == ["relu", "none", "relu6", "none", "none"]
    res = verify_patch(mod, 2, 5, n_inputs=1)
    assert res.passed, res
    ceil = build_graph(onnx_to_relax(_onnx_pool_net(ceil=True), "ceil.onnx"))
    assert "(max_pool2d with a ceil-mode window) cannot be computed patch by patch" in check_split(ceil, 2)


def test_pool_net_patched_c_export_bit_exact(tmp_path):
    """The C export of pool_net with its stage through the hard swish table and the SAME max pool (auto split,
    2x2 patches): bit-exact with TVM; the arena is the analytic patched peak but for the 16-byte alignment of
    the (at most three) buffers live at once (3,984 B against 3,967 B)."""
    result = export_model(str(POOL_NET), tmp_path / "out", patches=2, split="auto", check=True, seeds=(0,))
    assert result.check.bit_exact and result.plan["split_layers"] == 2
    assert result.arena_bytes <= result.analytic_patch_peak_bytes + 3 * 16
