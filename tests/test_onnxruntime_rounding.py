"""LowerToInteger(rounding="onnxruntime"): onnxruntime's float32 requantization reproduced with integer
operations.

* `quant.ort_requantize_ref` / `ort_add_ref` equal the float32 computation (numpy float32) on random and
  near-tie values, and their TE versions equal them;
* crafted QDQ models whose accumulators sit next to rounding boundaries: the lowered model equals
  onnxruntime's int8 kernels (QLinearConv, QLinearAdd) bit for bit, where TFLite's arithmetic does not;
* a zoo int8 model: every layer bit-exact with onnxruntime's int8 kernels; the default rounding is unchanged.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from conftest import compile_te
from relay_passes import LowerToInteger, float_ops_remaining
from tvm_patch import quant as Q
from tvm_patch.reference import (
    ORT_INT8_KERNELS,
    OnnxRuntimeRunner,
    compile_for_host,
    onnx_layerwise_agreement,
    verify_against_reference,
)

f32 = np.float32


def _float32_requant(acc, scale, zp):
    return np.rint((np.asarray(acc).astype(f32) * scale).astype(f32)).astype(np.float64) + zp


def _near_ties(rng, scale, n):
    """Accumulators whose product with `scale` lies next to k + 1/2 (where the roundings matter)."""
    k = rng.integers(-300, 300, n) + 0.5
    return np.round(k / float(scale)).astype(np.int64) + rng.integers(-2, 3, n)


def test_float32_parts_and_multiplier():
    for x in (1.0, 0.75, 3e-5, 1e-9, 123.456):
        m, e = Q.float32_mantissa_exponent(x)
        assert 1 << 23 <= m < 1 << 24 and m * 2.0**e == float(f32(x))
    assert Q.ort_multiplier(0.0) == (0, 0)
    with pytest.raises(ValueError):
        Q.ort_multiplier(2.0**24)


def test_requantize_ref_equals_float32():
    rng = np.random.default_rng(0)
    for _ in range(200):
        scale = f32(10 ** rng.uniform(-9, 0.5))
        m, s = Q.ort_multiplier(scale)
        acc = np.concatenate([_near_ties(rng, scale, 3000), rng.integers(-(1 << 31), 1 << 31, 300)])
        acc = np.clip(acc, -(1 << 31), (1 << 31) - 1)
        want = np.clip(_float32_requant(acc, scale, 3), -128, 127)
        assert np.array_equal(Q.ort_requantize_ref(acc, m, s, 3, -128, 127), want)


def test_requantize_te_equals_ref():
    rng = np.random.default_rng(1)
    C = 8
    scales = (10 ** rng.uniform(-8, 0.3, C)).astype(f32)
    ms, ss = (np.array(v, np.int32) for v in zip(*[Q.ort_multiplier(s) for s in scales]))
    acc = np.stack([_near_ties(rng, s, 512) for s in scales], 1)
    acc[:64] = rng.integers(-(1 << 31), 1 << 31, (64, C))
    acc = np.clip(acc, -(1 << 31), (1 << 31) - 1).astype(np.int32)
    want = np.clip(_float32_requant(acc, scales, -5), -300, 300)
    run = compile_te(lambda a, m, s: Q.ort_requantize_te(a, m, s, -5, axis=1), [(acc.shape, "int32"), ((C,), "int32"),
                                                                                   ((C,), "int32")])
    assert np.array_equal(np.clip(run(acc, ms, ss), -300, 300), want)
    run = compile_te(lambda a: Q.ort_requantize_te(a, int(ms[2]), int(ss[2]), -5, acc_bound=1 << 20),
                      [(acc[:, 2:3].shape, "int32")])
    small = np.abs(acc[:, 2:3]) <= 1 << 24
    assert np.array_equal(np.clip(run(acc[:, 2:3]), -300, 300)[small], want[:, 2:3][small])


def _mlas_qlinear_add(qa, qb, sa, za, sb, zb, sc, zc):
    """MLAS's int8 QLinearAdd (FMA kernel) in numpy float32 (the float64 sum of the exact product and a
    float32 is exact here, so one rounding to float32 is the FMA's)."""
    ra, rb = f32(f32(sa) / f32(sc)), f32(f32(sb) / f32(sc))
    fixed = f32(f32(zc) - f32(f32(ra * f32(za)) + f32(rb * f32(zb))))
    t = (fixed + (qb.astype(f32) * rb).astype(f32)).astype(f32)
    return np.clip(np.rint((qa * np.float64(ra) + t.astype(np.float64)).astype(f32)), -128, 127)


def test_add_ref_and_te_equal_float32():
    rng = np.random.default_rng(2)
    qa = np.arange(-128, 128).reshape(-1, 1)
    qb = qa.reshape(1, -1)
    for _ in range(20):
        sa, sb, sc = (f32(v) for v in rng.uniform(0.005, 0.2, 3))
        za, zb, zc = (int(v) for v in rng.integers(-100, 100, 3))
        p = Q.ort_add_params(sa, za, sb, zb, sc, zc, (-128, 127))
        assert np.array_equal(Q.ort_add_ref(qa, qb, p), _mlas_qlinear_add(qa, qb, sa, za, sb, zb, sc, zc))
    run = compile_te(lambda a, b, t: Q.ort_add_te(a, b, t, p, (256, 256)),
                      [((256, 1), "int8"), ((1, 256), "int8"), ((256,), "int64")])
    got = run(qa.astype(np.int8), qb.astype(np.int8), np.asarray(p.b_table, np.int64))
    assert np.array_equal(got, Q.ort_add_ref(qa, qb, p))


# ----------------------------------------------------------------------------------------------------------
# Crafted QDQ models against onnxruntime's int8 kernels
# ----------------------------------------------------------------------------------------------------------


def _conv_near_ties_onnx(seed: int = 3):
    """Depthwise 1x1 QDQ conv, float input and output, 64 channels whose biases put the accumulator of
    input value 0 next to a rounding boundary of the output (so every rounding detail shows)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    M = 64
    sx, zx, sy, zy = f32(0.0213), -17, f32(0.0571), 4
    ws = rng.uniform(0.001, 0.02, M).astype(f32)
    ws[:8] = 2.0 ** rng.integers(-12, -6, 8)  # exact ties: half to even vs half away from zero
    sc = ((sx * ws) / sy).astype(f32)
    bias = np.zeros(M, np.int32)
    for c in range(M):
        a = np.arange(-int(120 / float(sc[c])), int(120 / float(sc[c])), dtype=np.int64)
        exact = a * (np.float64(sx) * np.float64(ws[c]) / np.float64(sy))
        ortv = np.rint((a.astype(f32) * sc[c]).astype(f32))
        tfl = np.sign(exact) * np.floor(np.abs(exact) + 0.5)
        d = np.nonzero(ortv != tfl)[0]
        bias[c] = (a[rng.choice(d)] if d.size else a[rng.integers(a.size)]) + zx
    inits = [numpy_helper.from_array(np.asarray(v), n) for v, n in (
        (sx, "sx"), (np.int8(zx), "zx"), (np.ones((M, 1, 1, 1), np.int8), "wq"), (ws, "ws"),
        (np.zeros(M, np.int8), "wz"), (bias, "bq"), ((sx * ws).astype(f32), "bs"), (np.zeros(M, np.int32), "bz"),
        (sy, "sy"), (np.int8(zy), "zy"))]
    nodes = [helper.make_node("QuantizeLinear", ["input", "sx", "zx"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "sx", "zx"], ["x"]),
             helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["w"], axis=0),
             helper.make_node("DequantizeLinear", ["bq", "bs", "bz"], ["b"], axis=0),
             helper.make_node("Conv", ["x", "w", "b"], ["c"], kernel_shape=[1, 1], group=M),
             helper.make_node("QuantizeLinear", ["c", "sy", "zy"], ["yq"]),
             helper.make_node("DequantizeLinear", ["yq", "sy", "zy"], ["output"])]
    g = helper.make_graph(nodes, "conv_ties", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, M, 16, 16])],
                          [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, M, 16, 16])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    x = np.broadcast_to(((np.arange(-128, 128) - zx) * sx).astype(f32).reshape(16, 16), (1, M, 16, 16)).copy()
    return m, x, float(sy)


def _add_onnx(sa=0.031, za=5, sb=0.067, zb=-20, sc=0.049, zc=7):
    from onnx import TensorProto, helper, numpy_helper

    inits = [numpy_helper.from_array(np.asarray(v), n) for v, n in (
        (f32(sa), "sa"), (f32(sb), "sb"), (f32(sc), "sc"), (np.int8(za), "za"), (np.int8(zb), "zb"), (np.int8(zc), "zc"))]
    nodes = [helper.make_node("QuantizeLinear", ["a_in", "sa", "za"], ["aq"]),
             helper.make_node("QuantizeLinear", ["b_in", "sb", "zb"], ["bq"]),
             helper.make_node("DequantizeLinear", ["aq", "sa", "za"], ["a"]),
             helper.make_node("DequantizeLinear", ["bq", "sb", "zb"], ["b"]),
             helper.make_node("Add", ["a", "b"], ["c"]),
             helper.make_node("QuantizeLinear", ["c", "sc", "zc"], ["cq"]),
             helper.make_node("DequantizeLinear", ["cq", "sc", "zc"], ["output"])]
    vi = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 256, 256]) for n in ("a_in", "b_in")]
    g = helper.make_graph(nodes, "add", vi, [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 256, 256])],
                          inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    q = np.arange(-128, 128)
    a = np.broadcast_to(((q - za) * f32(sa)).astype(f32).reshape(256, 1), (1, 256, 256)).copy()
    b = np.broadcast_to(((q - zb) * f32(sb)).astype(f32).reshape(1, 256), (1, 256, 256)).copy()
    return m, [a, b], sc


def _lowered(model, rounding):
    from tvm_patch import frontend

    low = LowerToInteger(rounding)(frontend.onnx_to_relax(model, "<test model>"))
    assert sorted(s.split(" = ")[1] for s in float_ops_remaining(low)) == \
        sorted(["relax.quantize"] * (len(low["main"].params)) + ["relax.dequantize"])
    return compile_for_host(low)


@pytest.mark.parametrize("case", ["conv", "add"])
def test_crafted_qdq_bit_exact_with_onnxruntime_int8_kernels(case):
    import onnx

    if case == "conv":
        model, x, step = _conv_near_ties_onnx()
        inputs = [x]
    else:
        model, inputs, step = _add_onnx()
    sess = OnnxRuntimeRunner(model, ORT_INT8_KERNELS)
    opt_ops = _optimized_ops(model)
    assert ("QLinearConv" if case == "conv" else "QLinearAdd") in opt_ops
    want = np.rint(sess(inputs)[0] / step)
    got_ort = np.rint(_lowered(model, "onnxruntime")(inputs)[0].reshape(want.shape) / step)
    got_tfl = np.rint(_lowered(model, "tflite")(inputs)[0].reshape(want.shape) / step)
    assert np.array_equal(got_ort, want)
    assert np.abs(got_tfl - want).max() <= 1
    if case == "conv":  # TFLite's arithmetic differs on these boundary values, so the test has teeth
        assert np.count_nonzero(got_tfl != want) > 0
    del onnx


def _optimized_ops(model) -> set[str]:
    import os
    import tempfile

    import onnx

    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "opt.onnx")
        o = ort.SessionOptions()
        o.optimized_model_filepath = path
        o.log_severity_level = 3
        for k, v in ORT_INT8_KERNELS.items():
            o.add_session_config_entry(k, v)
        ort.InferenceSession(model.SerializeToString(), o, providers=["CPUExecutionProvider"])
        return {n.op_type for n in onnx.load(path).graph.node}


def test_rounding_argument_is_checked():
    with pytest.raises(ValueError):
        LowerToInteger("nearest")


# ----------------------------------------------------------------------------------------------------------
# Zoo int8 models
# ----------------------------------------------------------------------------------------------------------


def test_zoo_every_layer_bit_exact_with_onnxruntime_int8_kernels():
    """mcunet-in0: each of the 56 quantized tensors (QLinearConv, QLinearAdd, QLinearGlobalAveragePool and
    the float Gemm) from onnxruntime's own inputs equals onnxruntime bit for bit."""
    from tvm_patch import zoo

    layers = onnx_layerwise_agreement(zoo.onnx_model("mcunet-in0", int8=True), n_inputs=2, rounding="onnxruntime",
                                      config=ORT_INT8_KERNELS)
    assert len(layers) > 40 and {x.op for x in layers} >= {"Conv", "Clip", "Add", "GlobalAveragePool", "Gemm"}
    assert all(x.n_equal == x.n_values for x in layers), [x for x in layers if x.n_equal != x.n_values]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mcunet-in0", "mcunet-in1", "mbv2-w0.35-r144", "proxyless-w0.25-r112"])
def test_zoo_end_to_end_within_one_step_with_onnxruntime_rounding(name):
    r = verify_against_reference(f"zoo:{name}:int8", "onnxruntime", n_inputs=20, rounding="onnxruntime",
                                 ort_config=ORT_INT8_KERNELS)
    assert r.max_diff_steps <= 1 and r.share_equal >= 0.999, r.summary()
    assert r.layers and r.layer_max_diff_steps == 0, r.summary()
    assert r.passed


@pytest.mark.parametrize("case", ["conv", "add"])
def test_onnxruntime_rounding_exports_to_plain_c(case, tmp_path):
    """`build --rounding onnxruntime`: the emulated float32 roundings are plain int64 C, bit-exact with TVM."""
    from tvm_patch import frontend
    from tvm_patch.export import export_model

    model = _conv_near_ties_onnx()[0] if case == "conv" else _add_onnx()[0]
    result = export_model(frontend.onnx_to_relax(model, "<test model>"), tmp_path / "out", check=True, seeds=(0, 1),
                          rounding="onnxruntime")
    assert result.check.passed and result.check.bit_exact, result.check.summary()
    assert "float" not in "".join(f.script() for n, f in result.program.funcs.items() if "quantize" not in n)
