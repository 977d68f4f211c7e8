"""LowerToInteger: integer-only int8 inference, bit-exact with TensorFlow Lite Micro.

(The integer arithmetic itself, tvm_patch.quant, is tested in test_quant.py.)

* MLPerf Tiny models and the per-op fixtures: lowered, compiled for the host with LLVM, run on the Relax VM:
  every output (and every intermediate tensor of the MLPerf models) equal to tflite-micro's on 20 seeded
  random inputs;
* the Relax form the patch-stage pass relies on, activation clamp folding, UnsupportedOpError;
* ONNX QDQ (a model built here with onnx.helper, and the zoo's int8 models): agreement with onnxruntime.
"""

from __future__ import annotations

import glob
from pathlib import Path

import numpy as np
import pytest
import tvm
from tvm import relax

from conftest import FIXTURES, bindings, mlperf_tflite_files
from relay_passes import LowerToInteger, float_ops_remaining
from tvm_patch import quant as Q
from tvm_patch import zoo
from tvm_patch.errors import UnsupportedOpError
from tvm_patch.frontend.tflite_ext import tflite_to_relax
from tvm_patch.reference import (
    TfliteMicroRunner,
    compile_for_host,
    onnx_layerwise_agreement,
    random_inputs,
    relax_input_specs,
    tflite_operator_outputs,
    tflite_with_outputs,
    verify_against_reference,
)

N_INPUTS = 20
MLPERF = mlperf_tflite_files()
OP_FIXTURES = sorted(glob.glob(str(FIXTURES / "*.tflite")))


def _load_tflite(path: str | bytes) -> tvm.IRModule:
    data = path if isinstance(path, bytes) else Path(path).read_bytes()
    return tflite_to_relax(data, "test model")


def _op(value) -> str:
    op = getattr(value, "op", None)
    return getattr(op, "name", "") if op is not None else ""


class _Lowered:
    def __init__(self, path: str) -> None:
        self.path = path
        self.mod = LowerToInteger()(_load_tflite(path))
        self.run = compile_for_host(self.mod)


@pytest.fixture(scope="module", params=MLPERF or [None], ids=lambda p: Path(p).stem if p else "missing")
def mlperf(request):
    if request.param is None:
        pytest.skip("no MLPerf Tiny models in the shared folder")
    return _Lowered(request.param)


def _assert_bit_exact(run, path_or_bytes, mod, n=N_INPUTS, seed=0):
    ref = TfliteMicroRunner(path_or_bytes)
    checked = 0
    for xs in random_inputs(relax_input_specs(mod), n, seed):
        got, want = run(xs), ref(xs)
        assert len(got) == len(want)
        for g, w in zip(got, want):
            np.testing.assert_array_equal(np.asarray(g).reshape(w.shape), w)
            checked += w.size
    return checked


def test_mlperf_bit_exact_with_tflite_micro(mlperf):
    assert float_ops_remaining(mlperf.mod) == []
    assert _assert_bit_exact(mlperf.run, mlperf.path, mlperf.mod) > 0


def test_mlperf_every_layer_bit_exact(mlperf):
    """Every operator's output tensor, not only the (often saturated) softmax."""
    ops = tflite_operator_outputs(mlperf.path)
    data = tflite_with_outputs(mlperf.path, [t for _, t in ops])
    mod = LowerToInteger()(_load_tflite(data))
    assert float_ops_remaining(mod) == []
    assert _assert_bit_exact(compile_for_host(mod), data, mod, n=3, seed=1) > 0


@pytest.mark.parametrize("path", OP_FIXTURES or [None], ids=lambda p: Path(p).stem if p else "missing")
def test_op_fixture_bit_exact_with_tflite_micro(path):
    if path is None:
        pytest.skip("no fixtures in tests/fixtures/tflite yet")
    low = _Lowered(path)
    assert float_ops_remaining(low.mod) == [], Path(path).name
    assert _assert_bit_exact(low.run, path, low.mod) > 0


def test_stock_tvm_tflite_import_is_lowered_bit_exact():
    """TVM's own from_tflite (not tvm_patch's extension): its int32 truncating average pool is replaced."""
    if not MLPERF:
        pytest.skip("no MLPerf Tiny models")
    import tflite
    from tvm.relax.frontend.tflite import from_tflite

    kws = next((p for p in MLPERF if "kws" in p), MLPERF[0])
    stock = from_tflite(tflite.Model.GetRootAsModel(Path(kws).read_bytes(), 0))
    assert any(_op(b.value) == "relax.nn.avg_pool2d" for b in bindings(stock))
    low = LowerToInteger()(stock)
    assert not any(_op(b.value) == "relax.nn.avg_pool2d" for b in bindings(low))
    assert float_ops_remaining(low) == []
    assert _assert_bit_exact(compile_for_host(low), kws, low) > 0


def test_verify_against_reference_tflite():
    if not MLPERF:
        pytest.skip("no MLPerf Tiny models")
    kws = next((p for p in MLPERF if "kws" in p), MLPERF[0])
    r = verify_against_reference(kws, "tflite-micro", n_inputs=3)
    assert r.passed and r.share_equal == 1.0 and r.max_abs_diff == 0
    assert r.n_values > 0 and "PASS" in r.summary()


def _add_fixture_as_sub() -> bytes:
    """The add_relu6 fixture with its ADD turned into a SUB (same fused relu6)."""
    import flatbuffers
    from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as schema

    data = (FIXTURES / "add_relu6.tflite").read_bytes()
    m = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(data, 0))
    for op in m.subgraphs[0].operators:
        code = m.operatorCodes[op.opcodeIndex]
        if max(code.builtinCode, code.deprecatedBuiltinCode) == schema.BuiltinOperator.ADD:
            sub = schema.OperatorCodeT()
            sub.builtinCode = sub.deprecatedBuiltinCode = schema.BuiltinOperator.SUB
            sub.version = 1
            m.operatorCodes.append(sub)
            op.opcodeIndex = len(m.operatorCodes) - 1
            opts = schema.SubOptionsT()
            opts.fusedActivationFunction = op.builtinOptions.fusedActivationFunction
            op.builtinOptionsType, op.builtinOptions = schema.BuiltinOptions.SubOptions, opts
    b = flatbuffers.Builder(len(data) + 1024)
    b.Finish(m.Pack(b), file_identifier=b"TFL3")
    return bytes(b.Output())


@pytest.mark.skipif(not (FIXTURES / "add_relu6.tflite").exists(), reason="add fixture not generated")
def test_sub_lowered_bit_exact_with_tflite_micro(tmp_path):
    """TFLite SUB computes its multipliers in float32 (ADD in double): lowered, compiled, bit-exact."""
    path = tmp_path / "sub.tflite"
    path.write_bytes(_add_fixture_as_sub())
    low = _Lowered(str(path))
    assert any(_op(b.value) == "relax.call_tir" and b.value.args[0].name_hint.startswith("q_sub")
               for b in bindings(low.mod))
    assert _assert_bit_exact(low.run, str(path), low.mod) > 0


# ----------------------------------------------------------------------------------------------------------
# The Relax form
# ----------------------------------------------------------------------------------------------------------


def _consumers(bindings):
    uses = {}
    for b in bindings:
        for v in relax.analysis.free_vars(b.value):
            uses.setdefault(v, []).append(b)
    return uses


def test_conv_chain_form(mlperf):
    """conv2d(int8, int8, out int32) -> add(int32 const) -> call_tir requantize -> clip -> astype int8."""
    bs = bindings(mlperf.mod)
    uses = _consumers(bs)
    convs = [b for b in bs if _op(b.value) in ("relax.nn.conv2d", "relax.matmul")]
    assert convs
    for b in convs:
        assert str(b.value.args[0].ty.dtype) == "int8" and str(b.value.args[1].ty.dtype) == "int8"
        assert str(b.var.ty.dtype) == "int32"
        (add,) = uses[b.var]
        assert _op(add.value) == "relax.add" and isinstance(add.value.args[1], tvm.ir.expr.Constant)
        assert str(add.value.args[1].ty.dtype) == "int32"
        (rq,) = uses[add.var]
        assert _op(rq.value) == "relax.call_tir" and rq.value.args[0].name_hint.startswith("requantize")
        (clip,) = uses[rq.var]
        assert _op(clip.value) == "relax.clip" and str(clip.var.ty.dtype) == "int32"
        (cast,) = uses[clip.var]
        assert _op(cast.value) == "relax.astype" and str(cast.var.ty.dtype) == "int8"
    # nothing of the float chains is left
    assert not any(_op(b.value) in ("relax.quantize", "relax.dequantize") for b in bs)


def test_zero_point_padding_and_relu6_folding():
    """conv with input zero point != 0 and padding: explicit pad with the zero point, conv unpadded;
    the frontend's int8 clip of the fused relu6 is folded into the int32 clip."""
    path = FIXTURES / "mini_mcunet.tflite"
    relu6 = FIXTURES / "conv2d_3x3_s1_relu6.tflite"
    if not relu6.exists():
        pytest.skip("fixtures not generated")
    mod = LowerToInteger()(_load_tflite(str(relu6)))
    bs = bindings(mod)
    clips = [b for b in bs if _op(b.value) == "relax.clip"]
    assert len(clips) == 1 and str(clips[0].var.ty.dtype) == "int32"
    import tflite

    g = tflite.Model.GetRootAsModel(relu6.read_bytes(), 0).Subgraphs(0)
    q = g.Tensors(g.Outputs(0)).Quantization()
    want = Q.activation_range(float(q.Scale(0)), int(q.ZeroPoint(0)), 0.0, 6.0)
    assert (int(clips[0].value.args[1].value), int(clips[0].value.args[2].value)) == want
    if path.exists():
        bs = bindings(LowerToInteger()(_load_tflite(str(path))))
        for b in bs:
            if _op(b.value) == "relax.nn.conv2d":
                assert all(int(p) == 0 for p in b.value.attrs.padding)


def _qdq_module(float_op):
    """main(x int8[1, 8]) = quantize(float_op(dequantize(x)))."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 8), "int8"))
    with bb.function("main", [x]):
        with bb.dataflow():
            d = bb.emit(relax.op.dequantize(x, relax.const(np.float32(0.1)), relax.const(np.int32(3))))
            f = bb.emit(float_op(d))
            out = bb.emit_output(relax.op.quantize(f, relax.const(np.float32(0.05)), relax.const(np.int32(-2)),
                                                   out_dtype="int8"))
        bb.emit_func_output(out)
    return bb.get()


def test_unsupported_quantized_op_raises_with_op_and_binding():
    with pytest.raises(UnsupportedOpError) as e:
        LowerToInteger()(_qdq_module(relax.op.exp))
    assert "relax.exp" in str(e.value) and "main:" in str(e.value)


def test_requantize_chain_and_clip_fold():
    mod = _qdq_module(lambda d: relax.op.clip(d, 0.0, 0.5))
    low = LowerToInteger()(mod)
    assert float_ops_remaining(low) == []
    x = np.arange(-128, 128, 32, dtype=np.int8).reshape(1, 8)
    (y,) = compile_for_host(low)([x])
    m, s = Q.quantize_multiplier(float(np.float32(0.1)) / float(np.float32(0.05)))
    lo, hi = Q.activation_range(0.05, -2, 0.0, 0.5)
    want = Q.requantize_ref(x.astype(np.int64) - 3, m, s, -2, lo, hi)
    np.testing.assert_array_equal(y, want)


def test_float_model_is_left_alone():
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 8), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(relax.op.nn.relu(x))
        bb.emit_func_output(out)
    low = LowerToInteger()(bb.get())
    assert float_ops_remaining(low) == ["main:" + bindings(low)[0].var.name + " = relax.nn.relu"]


# ----------------------------------------------------------------------------------------------------------
# ONNX QDQ vs onnxruntime
# ----------------------------------------------------------------------------------------------------------


def _qdq_onnx(seed: int = 0):
    """A small QDQ model as onnxruntime's quantizer writes them: conv + relu, depthwise conv + Clip(0, 6),
    residual add, two squeeze-excite gates (global pool -> sigmoid -> mul, and global pool -> 1x1 conv ->
    sigmoid -> mul without a quantize between conv and sigmoid), global pool, Gemm; per-channel int8 weights,
    int32 biases, float input and output."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, inits = [], []

    def init(name, arr):
        inits.append(numpy_helper.from_array(np.asarray(arr), name))
        return name

    def qdq(x, s, z, name):
        init(name + "_s", np.float32(s))
        init(name + "_z", np.int8(z))
        nodes.append(helper.make_node("QuantizeLinear", [x, name + "_s", name + "_z"], [name + "_q"]))
        nodes.append(helper.make_node("DequantizeLinear", [name + "_q", name + "_s", name + "_z"], [name + "_dq"]))
        return name + "_dq"

    def weight(shape, name, in_scale):
        w = rng.normal(0, 0.3, shape).astype(np.float32)
        s = (np.abs(w).reshape(shape[0], -1).max(1) / 127).astype(np.float32)
        init(name + "_wq", np.clip(np.round(w / s.reshape(-1, *[1] * (len(shape) - 1))), -127, 127).astype(np.int8))
        init(name + "_ws", s)
        init(name + "_wz", np.zeros(shape[0], np.int8))
        nodes.append(helper.make_node("DequantizeLinear", [name + "_wq", name + "_ws", name + "_wz"], [name + "_w"],
                                      axis=0))
        bs = (np.float32(in_scale) * s).astype(np.float32)
        init(name + "_bq", np.round(rng.normal(0, 0.1, shape[0]) / bs).astype(np.int32))
        init(name + "_bs", bs)
        init(name + "_bz", np.zeros(shape[0], np.int32))
        nodes.append(helper.make_node("DequantizeLinear", [name + "_bq", name + "_bs", name + "_bz"], [name + "_b"],
                                      axis=0))
        return name + "_w", name + "_b"

    x = qdq("input", 0.02, 3, "in")
    w, b = weight((8, 3, 3, 3), "c1", 0.02)
    nodes.append(helper.make_node("Conv", [x, w, b], ["c1"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]))
    nodes.append(helper.make_node("Relu", ["c1"], ["c1r"]))
    y1 = qdq("c1r", 0.03, -128, "a1")
    w, b = weight((8, 1, 3, 3), "c2", 0.03)
    nodes.append(helper.make_node("Conv", [y1, w, b], ["c2"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], group=8))
    init("lo", np.float32(0.0))
    init("hi", np.float32(6.0))
    nodes.append(helper.make_node("Clip", ["c2", "lo", "hi"], ["c2r"]))
    y2 = qdq("c2r", 0.025, -128, "a2")
    nodes.append(helper.make_node("Add", [y1, y2], ["add"]))
    y3 = qdq("add", 0.05, -20, "a3")
    nodes.append(helper.make_node("GlobalAveragePool", [y3], ["gap"]))
    g = qdq("gap", 0.02, -40, "a4")
    nodes.append(helper.make_node("Sigmoid", [g], ["sig"]))
    sg = qdq("sig", 1 / 256, -128, "a5")
    nodes.append(helper.make_node("Mul", [y3, sg], ["mul"]))
    y4 = qdq("mul", 0.03, -60, "a6")
    # a second squeeze-excite gate as the zoo exports them: sigmoid straight on a 1x1 conv
    nodes.append(helper.make_node("GlobalAveragePool", [y4], ["gap_b"]))
    gb = qdq("gap_b", 0.01, -30, "a6b")
    w, b = weight((8, 8, 1, 1), "se", 0.01)
    nodes.append(helper.make_node("Conv", [gb, w, b], ["se"], kernel_shape=[1, 1]))
    nodes.append(helper.make_node("Sigmoid", ["se"], ["se_sig"]))
    sgb = qdq("se_sig", 1 / 256, -128, "a6c")
    nodes.append(helper.make_node("Mul", [y4, sgb], ["mul_b"]))
    y4 = qdq("mul_b", 0.03, -60, "a6d")
    nodes.append(helper.make_node("GlobalAveragePool", [y4], ["gap2"]))
    g2 = qdq("gap2", 0.02, -50, "a7")
    nodes.append(helper.make_node("Flatten", [g2], ["flat"]))
    w, b = weight((10, 8), "fc", 0.02)
    nodes.append(helper.make_node("Gemm", ["flat", w, b], ["logits"], transB=1))
    out = qdq("logits", 0.05, 0, "a8")
    nodes.append(helper.make_node("Identity", [out], ["output"]))
    graph = helper.make_graph(nodes, "qdq", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 16, 16])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def test_onnx_qdq_against_onnxruntime():
    pytest.importorskip("onnxruntime")
    r = verify_against_reference(_qdq_onnx(), "onnxruntime", n_inputs=N_INPUTS)
    # only the model's own float boundary remains: quantize of the float input, dequantize of the output
    assert sorted(s.split(" = ")[1] for s in r.float_ops) == ["relax.dequantize", "relax.quantize"]
    assert r.max_diff_steps is not None and r.max_diff_steps <= 1
    assert r.share_equal >= 0.8
    assert r.layers and r.layer_max_diff_steps <= 1 and r.layer_share_equal >= 0.97
    assert r.passed


def _qdq_data_movement_onnx():
    """QDQ MaxPool, Resize (nearest), Concat of tensors with different quantization, Pad (imported as a
    call_tir PrimFunc), Transpose, Reshape."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits = [], []

    def init(name, arr):
        inits.append(numpy_helper.from_array(np.asarray(arr), name))

    def qdq(x, s, z, name):
        init(name + "_s", np.float32(s))
        init(name + "_z", np.int8(z))
        nodes.append(helper.make_node("QuantizeLinear", [x, name + "_s", name + "_z"], [name + "_q"]))
        nodes.append(helper.make_node("DequantizeLinear", [name + "_q", name + "_s", name + "_z"], [name + "_dq"]))
        return name + "_dq"

    x = qdq("input", 0.02, 3, "in")
    nodes.append(helper.make_node("MaxPool", [x], ["mp"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]))
    a = qdq("mp", 0.02, 3, "a1")
    init("sc", np.array([1, 1, 2, 2], np.float32))
    nodes.append(helper.make_node("Resize", [a, "", "sc"], ["rs"], mode="nearest"))
    b = qdq("rs", 0.02, 3, "a2")
    nodes.append(helper.make_node("Concat", [x, b], ["cat"], axis=1))
    c = qdq("cat", 0.03, -5, "a3")
    init("pads", np.array([0, 0, 1, 2, 0, 0, 2, 1], np.int64))
    nodes.append(helper.make_node("Pad", [c, "pads"], ["pad"], mode="constant"))
    d = qdq("pad", 0.03, -5, "a4")
    nodes.append(helper.make_node("Transpose", [d], ["tr"], perm=[0, 2, 3, 1]))
    e = qdq("tr", 0.03, -5, "a5")
    init("shp", np.array([1, -1], np.int64))
    nodes.append(helper.make_node("Reshape", [e, "shp"], ["rsh"]))
    f = qdq("rsh", 0.03, -5, "a6")
    nodes.append(helper.make_node("Identity", [f], ["output"]))
    graph = helper.make_graph(nodes, "dm", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 4, 8, 8])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 968])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def test_onnx_qdq_data_movement_is_exact():
    pytest.importorskip("onnxruntime")
    r = verify_against_reference(_qdq_data_movement_onnx(), "onnxruntime", n_inputs=5)
    assert sorted(s.split(" = ")[1] for s in r.float_ops) == ["relax.dequantize", "relax.quantize"]
    moved = [x for x in r.layers if x.op in ("MaxPool", "Resize", "Pad", "Transpose", "Reshape")]
    assert len(moved) == 5 and all(x.n_equal == x.n_values for x in moved)
    assert r.layer_max_diff_steps <= 1 and r.max_diff_steps <= 1 and r.passed


def _zoo_int8(name: str):
    if name not in zoo.names():
        pytest.skip(f"zoo has no {name}")
    return f"zoo:{name}:int8"


def test_zoo_int8_layers_within_one_step():
    """Every quantized tensor of a zoo model, computed from onnxruntime's own int8 inputs (one compile)."""
    pytest.importorskip("onnxruntime")
    layers = onnx_layerwise_agreement(zoo.onnx_model(_zoo_int8("mcunet-in0").split(":")[1], int8=True), n_inputs=2)
    assert len(layers) > 40
    assert {x.op for x in layers} >= {"Conv", "Clip", "Add", "GlobalAveragePool", "Gemm"}
    assert max(x.max_diff_steps for x in layers) <= 1
    assert sum(x.n_equal for x in layers) / sum(x.n_values for x in layers) >= 0.99


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mcunet-in1", "mcunet-in2", "mcunet-in3", "mcunet-in4", "mbv2-w0.3-r80",
                                  "mbv2-w0.35-r144", "proxyless-w0.25-r112", "proxyless-w0.3-r176"])
def test_zoo_int8_all_layers_within_one_step(name):
    pytest.importorskip("onnxruntime")
    r = verify_against_reference(_zoo_int8(name), "onnxruntime", n_inputs=N_INPUTS)
    assert r.layers and r.layer_max_diff_steps <= 1, r.summary()
    assert r.passed
