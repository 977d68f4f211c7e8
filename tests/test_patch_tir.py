"""Patch-based stage PrimFuncs (tvm_patch.patch): results equal to numpy and to the unpatched TIR,
patch-sized allocations equal to the analytic figures, and MACs as the schedule performs them."""

from __future__ import annotations

import functools
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from tvm_patch.patch import (
    STAGE_INPUT,
    Add,
    AddQuant,
    Conv,
    ConvQuant,
    Stage,
    StageError,
    allocated_bytes,
    build_reference,
    build_stage,
    macs_by_patch,
    param_names,
    patch_input_size,
    patch_macs,
    per_patch_bytes,
    stage_macs,
)
from tvm_patch.patch.examples import mbv2_stage
from tvm_patch.patch.reference import compile_func, run_numpy, run_tvm
from tvm_patch.patch.regions import buffer_names, full_size_bytes, plan_patches, single_iteration_layers
from tvm_patch.patch.schedule import allocations, measured_macs_by_patch
from tvm_patch.quant import activation_range, multiply_by_quantized_multiplier_ref, quantize_multiplier
from tvm_patch.quant.fixedpoint import TEOps, mbqm

# -- helpers -----------------------------------------------------------------------------------------


def _close(y: np.ndarray, ref: np.ndarray) -> None:
    """float32 agreement: 1e-5 relative to the output's magnitude."""
    scale = max(1.0, float(np.abs(ref).max()))
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5 * scale)


def _input(stage: Stage, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if stage.dtype == "int8":
        return rng.integers(-128, 128, stage.input_shape).astype("int8")
    return rng.standard_normal(stage.input_shape).astype("float32")


def _check_memory_and_macs(stage: Stage, patches: tuple[int, int], func) -> None:
    """Every buffer compacts to its analytic patch size; MACs read off the loop nest equal the analytic ones."""
    expected = per_patch_bytes(stage, patches)
    buffers = {k: v for k, v in expected.items() if k not in ("total", "peak")}
    assert allocations(func) == buffers
    # degenerate stages (a loop nest of one iteration) get temporaries hoisted by TVM: up to all of them more
    temps = set(buffers) - set(buffer_names(stage).values())
    slack = sum(buffers[n] for n in temps) if single_iteration_layers(stage, patches) else 0
    assert expected["total"] <= allocated_bytes(func, storage_rewrite=False) <= expected["total"] + slack
    assert expected["peak"] - slack <= allocated_bytes(func) <= sum(buffers.values())
    np.testing.assert_array_equal(measured_macs_by_patch(func, stage), macs_by_patch(stage, patches))


def _check_stage(stage: Stage, patches: tuple[int, int], x: np.ndarray | None = None) -> None:
    """Patched PrimFunc == numpy reference (float: 1e-5 relative; int8: bit exact), plus memory and MACs."""
    func = build_stage(stage, patches)
    x = _input(stage) if x is None else x
    y = run_tvm(compile_func(func, fast=True), stage, x)
    ref = run_numpy(stage, x)
    if stage.dtype == "int8":
        np.testing.assert_array_equal(y, ref)
    else:
        _close(y, ref)
    _check_memory_and_macs(stage, patches, func)


def _rand(rng, *shape, scale=None):
    scale = scale if scale is not None else 1.0 / np.sqrt(max(1, int(np.prod(shape[1:]))))
    return (rng.standard_normal(shape) * scale).astype("float32")


# -- the MobileNetV2 head of the paper ---------------------------------------------------------------


@pytest.mark.parametrize("layout,padding", [("NCHW", "symmetric"), ("NHWC", "same")])
def test_mbv2_224_4x4_patch_input_is_75(layout: str, padding: str) -> None:
    """MobileNetV2 224x224, stem + 4 inverted residual blocks, 4x4 patches: 75x75 input patches (paper)."""
    stage = mbv2_stage(224, blocks=5, layout=layout, padding=padding)
    assert stage.output_shape == ((1, 32, 28, 28) if layout == "NCHW" else (1, 28, 28, 32))
    assert patch_input_size(stage, (4, 4)) == (75, 75)
    expected = per_patch_bytes(stage, (4, 4))
    assert expected["input_patch"] == 3 * 75 * 75 * 4
    func = build_stage(stage, (4, 4))
    assert allocations(func) == {k: v for k, v in expected.items() if k not in ("total", "peak")}
    # computed over in-image regions only, the paper gives about +31 % MACs for this stage
    overhead = patch_macs(stage, (4, 4)) / stage_macs(stage) - 1
    assert 0.29 < overhead < 0.33
    np.testing.assert_array_equal(measured_macs_by_patch(func, stage), macs_by_patch(stage, (4, 4)))


@functools.lru_cache(maxsize=None)
def _mbv2_reference(res: int, layout: str, dtype: str):
    stage = mbv2_stage(res, blocks=5, layout=layout, dtype=dtype, padding="symmetric" if layout == "NCHW" else "same")
    x = _input(stage, seed=1)
    ref = run_tvm(compile_func(build_reference(stage), fast=True), stage, x)
    return stage, x, ref


@pytest.mark.parametrize(
    "layout,res,p",
    [("NCHW", 96, 2), ("NCHW", 96, 3), ("NCHW", 112, 4), ("NHWC", 112, 2), ("NHWC", 112, 3), ("NHWC", 96, 4)],
)
def test_mbv2_patched_equals_reference(layout: str, res: int, p: int) -> None:
    """The patched MbV2 head equals the unpatched TIR and numpy; 112 -> 14x14 output: 3, 4 do not divide."""
    stage, x, ref = _mbv2_reference(res, layout, "float32")
    func = build_stage(stage, (p, p))
    y = run_tvm(compile_func(func, fast=True), stage, x)
    _close(y, ref)
    _close(y, run_numpy(stage, x))
    _check_memory_and_macs(stage, (p, p), func)
    expected = per_patch_bytes(stage, (p, p))
    full = sum(full_size_bytes(stage).values())
    assert expected["total"] < full / 2 and expected["peak"] < full / 4


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_mbv2_int8_bit_exact(layout: str) -> None:
    """int8 MbV2 head (TFLite requantization, residual adds): patched == unpatched TIR == numpy, bit for bit."""
    stage, x, ref = _mbv2_reference(64, layout, "int8")
    func = build_stage(stage, (3, 3))
    y = run_tvm(compile_func(func, fast=True), stage, x)
    np.testing.assert_array_equal(y, ref)
    np.testing.assert_array_equal(y, run_numpy(stage, x))
    _check_memory_and_macs(stage, (3, 3), func)


# -- targeted cases ----------------------------------------------------------------------------------


def _targeted_cases():
    rng = np.random.default_rng(7)
    cases = {}
    # 7x7 output, 3x3 patches (tiles 3, 3, 1), padding on every border
    cases["7x7_out_3x3_patches"] = (
        Stage((1, 3, 7, 7), (Conv(_rand(rng, 4, 3, 3, 3), _rand(rng, 4), padding=1, activation="relu"),
                             Conv(_rand(rng, 5, 4, 3, 3), None, padding=1))),
        (3, 3),
    )
    for k in (1, 3, 5, 7):  # stride 2 with each kernel size, asymmetric padding
        pad = (k // 2, k // 2, max(0, k // 2 - 1), k // 2)
        cases[f"stride2_k{k}"] = (
            Stage(
                (1, 2, 19, 17),
                (
                    Conv(_rand(rng, 3, 2, k, k), _rand(rng, 3), stride=2, padding=pad, activation="relu6"),
                    Conv(_rand(rng, 3, 1, 3, 3), _rand(rng, 3), padding=1, groups=3),
                ),
            ),
            (2, 3),
        )
    # NHWC, TFLite depthwise weight (kh, kw, C*mult, 1) with channel multiplier 2, then a residual block
    cases["nhwc_dw_hwoi_mult2_residual"] = (
        Stage((1, 11, 13, 3), (Conv(_rand(rng, 3, 3, 3, 4), _rand(rng, 4), padding=1, activation="relu6"),
                               Conv(_rand(rng, 3, 3, 8, 1), _rand(rng, 8), padding=1, groups=4, activation="relu"),
                               Conv(_rand(rng, 1, 1, 8, 4), _rand(rng, 4)),
                               Add(other=0, activation="relu")), layout="NHWC"),
        (3, 2),
    )
    # explicit kernel layout, the stage input reused by a later add, batch 2
    cases["ihwo_kernel_input_residual_batch2"] = (
        Stage(
            (2, 4, 9, 10),
            (
                Conv(_rand(rng, 4, 4, 3, 3).transpose(1, 2, 3, 0).copy(), None, padding=1, kernel_layout="IHWO"),
                Add(other=STAGE_INPUT),
            ),
        ),
        (2, 2),
    )
    # a branch: layer 2 reads layer 0, not layer 1
    cases["branch"] = (
        Stage((1, 2, 12, 12), (Conv(_rand(rng, 3, 2, 3, 3), None, padding=1),
                               Conv(_rand(rng, 3, 3, 5, 5), None, padding=2),
                               Conv(_rand(rng, 3, 3, 1, 1), None, input=0),
                               Add(other=1))),
        (4, 3),
    )
    return cases


_CASES = _targeted_cases()


@pytest.mark.parametrize("name", sorted(_CASES))
def test_targeted(name: str) -> None:
    stage, patches = _CASES[name]
    _check_stage(stage, patches)


def test_border_patches_skip_padding() -> None:
    """A single conv recomputes nothing: patched MACs == layer-by-layer MACs, and corner patches do fewer."""
    rng = np.random.default_rng(3)
    stage = Stage((1, 2, 12, 12), (Conv(_rand(rng, 3, 2, 5, 5), None, padding=2),))
    assert patch_macs(stage, (3, 3)) == stage_macs(stage)
    stage2 = Stage(
        (1, 2, 12, 12), (Conv(_rand(rng, 3, 2, 3, 3), None, padding=1), Conv(_rand(rng, 3, 3, 3, 3), None, padding=1))
    )
    m = macs_by_patch(stage2, (3, 3))
    # first conv: corner patch computes 5x5 of its 6x6 region, interior the full 6x6
    assert m[0, 0] < m[0, 1] < m[1, 1]
    per_out = 3 * 2 * 9  # layer-0 MACs per output pixel
    second = 16 * 3 * 3 * 9
    assert m[1, 1] == 36 * per_out + second and m[0, 0] == 25 * per_out + second


def test_params_are_buffers_in_order() -> None:
    """Weights and biases are buffer parameters (not constants), in the documented order."""
    stage = mbv2_stage(32, blocks=2, dtype="int8")
    func = build_stage(stage, (2, 2))
    names = [p.name for p in func.params]
    assert names == ["input", *param_names(stage), "output"]
    ref = build_reference(stage)
    assert [p.name for p in ref.params] == names


def test_stage_errors() -> None:
    rng = np.random.default_rng(0)
    w = _rand(rng, 4, 3, 3, 3)
    with pytest.raises(StageError):
        Stage((1, 5, 8, 8), (Conv(w),))  # 3 input channels expected
    with pytest.raises(StageError):
        Stage((1, 3, 8, 8), (Conv(w), Add(other=3)))  # later value
    with pytest.raises(StageError):
        Stage((1, 3, 8, 8), (Conv(w), Conv(_rand(rng, 2, 3, 1, 1), input=STAGE_INPUT)))  # layer 0 unused
    with pytest.raises(StageError):
        Stage((1, 3, 8, 8), (Conv(w),), dtype="int8")  # no quantization parameters
    with pytest.raises(StageError):
        Stage((1, 3, 2, 2), (Conv(w),))  # kernel larger than the input
    with pytest.raises(StageError):
        plan_patches(Stage((1, 3, 8, 8), (Conv(w),)), (7, 1))  # more patches than output rows


# -- int8 arithmetic ---------------------------------------------------------------------------------


def _mbqm_python(x: int, m: int, shift: int) -> int:
    """TFLite MultiplyByQuantizedMultiplier in plain Python integers (gemmlowp definitions)."""
    left, right = max(shift, 0), max(-shift, 0)
    a = ((x << left) + 2**31) % 2**32 - 2**31
    if a == m == -(2**31):
        high = 2**31 - 1
    else:
        num = a * m + ((1 << 30) if a * m >= 0 else 1 - (1 << 30))
        high = abs(num) // 2**31 * (1 if num >= 0 else -1)  # C++ division truncates toward zero
    mask = (1 << right) - 1
    remainder = high & mask
    threshold = (mask >> 1) + (1 if high < 0 else 0)
    return (high >> right) + (1 if remainder > threshold else 0)


def test_int_arithmetic_tir_numpy_python_agree() -> None:
    """The TIR requantization == the numpy reference == plain-Python TFLite semantics, bit for bit."""
    import tvm
    from tvm import te

    rng = np.random.default_rng(0)
    n = 4000
    edge = [0, 1, -1, 2**31 - 1, -(2**31), 2**20, -(2**20), 12345, -12345, 3, -3, 2**30, -(2**30)]
    edge = np.array(edge, dtype=np.int64)
    x = np.concatenate([edge, rng.integers(-(2**31), 2**31, n - len(edge))]).astype(np.int32)
    m = np.concatenate([[0, 1 << 30, 2**31 - 1], rng.integers(1 << 30, 2**31, n - 3)]).astype(np.int32)
    shift = rng.integers(-31, 1, n).astype(np.int32)
    shift[::7] = rng.integers(0, 4, len(shift[::7]))  # some left shifts (small x so they do not wrap)
    x[::7] = np.clip(x[::7], -(2**20), 2**20)
    ref = multiply_by_quantized_multiplier_ref(x, m, shift)
    python = np.array([_mbqm_python(int(a), int(b), int(c)) for a, b, c in zip(x, m, shift)])
    np.testing.assert_array_equal(ref, python)

    X, M, S = (te.placeholder((n,), "int32", name) for name in "xms")
    out = te.compute((n,), lambda i: mbqm(TEOps, X(i), M(i), S(i)), name="out")
    func = compile_func(te.create_prim_func([X, M, S, out]), fast=True)
    y = tvm.runtime.empty((n,), "int32")
    func(*(tvm.runtime.tensor(a) for a in (x, m, shift)), y)
    np.testing.assert_array_equal(y.numpy(), ref)


def _activation_range(activation: str, scale: float, zero_point: int) -> tuple[int, int]:
    """int8 clamp bounds of none / relu / relu6 (TFLite CalculateActivationRangeQuantized)."""
    bounds = {"none": (None, None), "relu": (0.0, None), "relu6": (0.0, 6.0)}[activation]
    return activation_range(scale, zero_point, *bounds)


def test_quantized_activation_range() -> None:
    assert _activation_range("relu6", 6.0 / 255, -128) == (-128, 127)
    assert _activation_range("relu6", 0.05, -10) == (-10, 110)
    assert _activation_range("relu", 0.05, -10) == (-10, 127)
    assert quantize_multiplier(0.5) == (1 << 30, 0)
    assert quantize_multiplier(0.25) == (1 << 30, -1)


# -- property test over random conv stacks -----------------------------------------------------------


def _conv_quant(rng, zp_in: int, fan_in: int, cout: int, act: str) -> ConvQuant:
    """Random int8 conv parameters that keep outputs spread over the int8 range."""
    reals = 30.0 / (128 * 74 * np.sqrt(fan_in)) * rng.uniform(0.5, 2.0, cout)
    mults, shifts = zip(*(quantize_multiplier(float(r)) for r in reals))
    zp_out = int(rng.integers(-20, 20))
    lo, hi = _activation_range(act, float(rng.uniform(0.02, 0.1)), zp_out)
    return ConvQuant(zp_in, zp_out, np.array(mults), np.array(shifts), 0, lo, hi)


def _add_quant(rng, zp_a: int, zp_b: int, act: str) -> AddQuant:
    (m1, s1), (m2, s2) = (quantize_multiplier(float(r)) for r in rng.uniform(0.2, 0.5, 2))
    mo, so = quantize_multiplier(float(rng.uniform(1.0, 2.0)) / (1 << 20))
    zp = int(rng.integers(-20, 20))
    lo, hi = _activation_range(act, 0.05, zp)
    return AddQuant((zp_a, zp_b), (m1, m2), (s1, s2), zp, mo, so, 20, lo, hi)


@st.composite
def random_stages(draw, dtype: str = "float32"):
    """A random stack of dense / depthwise / pointwise convs and residual adds, tiny shapes."""
    layout = draw(st.sampled_from(["NCHW", "NHWC"]))
    c, h, w = draw(st.integers(1, 8)), draw(st.integers(5, 23)), draw(st.integers(5, 23))
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    shapes = {STAGE_INPUT: (c, h, w)}
    zps = {STAGE_INPUT: int(rng.integers(-20, 20))}  # int8: each value's zero point
    layers = []
    for i in range(draw(st.integers(1, 4))):
        cin, hi, wi = shapes[i - 1]
        same = [v for v, s in shapes.items() if s == (cin, hi, wi) and v != i - 1]
        kinds = ["conv", "depthwise", "pointwise"] + (["add"] if same else [])
        kind = draw(st.sampled_from(kinds))
        act = draw(st.sampled_from(["none", "relu", "relu6"]))
        if kind == "add":
            other = draw(st.sampled_from(same))
            quant = _add_quant(rng, zps[i - 1], zps[other], act) if dtype == "int8" else None
            layers.append(Add(other=other, activation=act, quant=quant))
            shapes[i] = (cin, hi, wi)
            zps[i] = quant.output_zero_point if quant else 0
            event("add")
            continue
        k = 1 if kind == "pointwise" else draw(st.integers(1, min(7, hi, wi)))
        s = draw(st.integers(1, 2))
        pad = tuple(draw(st.integers(0, k - 1)) for _ in range(4)) if k > 1 else (0, 0, 0, 0)
        if kind == "depthwise":
            groups, cout = cin, cin * draw(st.integers(1, 2))
        else:
            groups, cout = 1, draw(st.integers(1, 8))
        event(f"{kind} k{k} s{s}")
        weight = _rand(rng, cout, cin // groups, k, k)
        bias = _rand(rng, cout, scale=0.1) if draw(st.booleans()) else None
        quant = None
        if dtype == "int8":
            weight = rng.integers(-127, 128, weight.shape).astype(np.int8)
            bias = rng.integers(-3000, 3000, cout).astype(np.int32) if bias is not None else None
            quant = _conv_quant(rng, zps[i - 1], weight[0].size, cout, act)
        if layout == "NHWC":
            weight = weight.transpose(2, 3, 0, 1).copy() if groups > 1 else weight.transpose(2, 3, 1, 0).copy()
        layers.append(Conv(weight, bias, s, pad, groups, act, quant=quant))
        shapes[i] = (cout, (hi + pad[0] + pad[2] - k) // s + 1, (wi + pad[1] + pad[3] - k) // s + 1)
        zps[i] = quant.output_zero_point if quant else 0
    shape = (1, c, h, w) if layout == "NCHW" else (1, h, w, c)
    stage = Stage(shape, tuple(layers), layout, dtype)
    _, ho, wo = shapes[len(layers) - 1]
    patches = (draw(st.integers(1, min(4, ho))), draw(st.integers(1, min(4, wo))))
    event(layout)
    event("patches divide the output" if ho % patches[0] == 0 and wo % patches[1] == 0 else "patches do not divide")
    return stage, patches


def _property(case) -> None:
    stage, patches = case
    try:
        plan_patches(stage, patches)
    except StageError as e:  # two paths of different strides into one add (not a real CNN shape)
        assume("different strides" not in str(e))
        raise
    _check_stage(stage, patches)
    if len(stage.layers) == 1:
        assert patch_macs(stage, patches) == stage_macs(stage)  # one conv: no halo is recomputed


_EXAMPLES = int(os.environ.get("PATCH_EXAMPLES", 300))
_SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@settings(max_examples=_EXAMPLES, **_SETTINGS)
@given(random_stages())
def test_random_stacks(case) -> None:
    """float32: random conv stacks, patched == numpy, allocations and MACs == analytic."""
    _property(case)


@settings(max_examples=max(1, _EXAMPLES // 4), **_SETTINGS)
@given(random_stages("int8"))
def test_random_stacks_int8(case) -> None:
    """int8: random conv stacks with random TFLite quantization, patched == numpy bit for bit."""
    _property(case)
