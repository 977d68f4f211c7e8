"""LowerToInteger: integer-only int8 inference, bit-exact with TensorFlow Lite Micro.

* the integer helpers of tvm_patch.quant against exact rational definitions and pure-Python renderings of
  TFLite's C code (hypothesis), and their TE versions against the numpy ones;
* the numpy references of softmax / logistic / hard swish against tflite-micro itself on fixtures whose
  quantization parameters are rewritten (many scales, zero points, softmax beta);
* MLPerf Tiny models and the per-op fixtures: lowered, compiled for the host with LLVM, run on the Relax VM:
  every output (and every intermediate tensor of the MLPerf models) equal to tflite-micro's on 20 seeded
  random inputs;
* the Relax form the patch-stage pass relies on, activation clamp folding, UnsupportedOpError;
* ONNX QDQ (a model built here with onnx.helper, and the zoo's int8 models): agreement with onnxruntime.
"""

from __future__ import annotations

import glob
import math
import os
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")
hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from tvm import relax, te  # noqa: E402

from relay_passes import LowerToInteger, float_ops_remaining  # noqa: E402
from tvm_patch import quant as Q  # noqa: E402
from tvm_patch.errors import UnsupportedOpError  # noqa: E402
from tvm_patch.reference import (  # noqa: E402
    TfliteMicroRunner,
    compile_for_host,
    onnx_layerwise_agreement,
    random_inputs,
    relax_input_specs,
    tflite_operator_outputs,
    tflite_with_outputs,
    verify_against_reference,
)

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures" / "tflite"
N_INPUTS = 20
INT32_MIN, INT32_MAX = -(1 << 31), (1 << 31) - 1
LLVM = {"kind": "llvm"}


def _shared_models() -> Path:
    env = os.environ.get("TVM_PATCH_SHARED_MODELS")
    return Path(env) if env else REPO.parent / "shared" / "models"


MLPERF = sorted(glob.glob(str(_shared_models() / "mlperf_tiny" / "*.tflite")))
OP_FIXTURES = sorted(glob.glob(str(FIXTURES / "*.tflite")))


def _load_tflite(path: str | bytes) -> tvm.IRModule:
    from tvm_patch.frontend.tflite_ext import tflite_to_relax

    data = path if isinstance(path, bytes) else Path(path).read_bytes()
    return tflite_to_relax(data, "test model")


def _bindings(mod: tvm.IRModule, name: str = "main") -> list:
    out = []
    for blk in mod[name].body.blocks:
        out.extend(blk.bindings)
    return out


def _op(value) -> str:
    op = getattr(value, "op", None)
    return getattr(op, "name", "") if op is not None else ""


def _compile_te(fn, shapes_dtypes):
    phs = [te.placeholder(s, d, name=f"in{i}") for i, (s, d) in enumerate(shapes_dtypes)]
    out = fn(*phs)
    f = tvm.compile(te.create_prim_func([*phs, out]), target=tvm.target.Target(LLVM))

    def run(*arrays):
        o = tvm.runtime.empty([int(d) for d in out.shape], str(out.dtype))
        f(*[tvm.runtime.tensor(np.ascontiguousarray(a)) for a in arrays], o)
        return o.numpy()

    return run


# ----------------------------------------------------------------------------------------------------------
# Pure-Python renderings of TFLite's C code and exact rational definitions (test oracles)
# ----------------------------------------------------------------------------------------------------------


def _c_div(a: int, b: int) -> int:
    """C integer division (truncates towards zero)."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b > 0) else -q


def _wrap32(v: int) -> int:
    return ((v + (1 << 31)) & 0xFFFFFFFF) - (1 << 31)


def _srdhm_c(a: int, b: int) -> int:
    if a == b == INT32_MIN:
        return INT32_MAX
    ab = a * b
    nudge = (1 << 30) if ab >= 0 else 1 - (1 << 30)
    return _c_div(ab + nudge, 1 << 31)


def _rdbpot_c(x: int, e: int) -> int:
    mask = (1 << e) - 1
    threshold = (mask >> 1) + (1 if x < 0 else 0)
    return (x >> e) + (1 if (x & mask) > threshold else 0)


def _mbqm_c(x: int, m: int, shift: int) -> int:
    left, right = max(shift, 0), max(-shift, 0)
    return _rdbpot_c(_srdhm_c(_wrap32(x * (1 << left)), m), right)


def _round_half_away(fr: Fraction) -> int:
    f = math.floor(abs(fr) + Fraction(1, 2))
    return f if fr >= 0 else -f


int32s = st.integers(INT32_MIN, INT32_MAX)
edge_int32 = st.sampled_from([INT32_MIN, INT32_MIN + 1, -(1 << 30), -3, -2, -1, 0, 1, 2, 3, 1 << 30, INT32_MAX])
any_int32 = st.one_of(int32s, edge_int32)
multipliers = st.one_of(st.integers(1 << 30, INT32_MAX), st.sampled_from([0, 1 << 30, INT32_MAX, 1518500250]))


# ----------------------------------------------------------------------------------------------------------
# QuantizeMultiplier and the rounding multiply
# ----------------------------------------------------------------------------------------------------------


@given(st.floats(min_value=2.0**-31, max_value=2.0**20, allow_nan=False, allow_infinity=False))
@settings(max_examples=300, deadline=None)
def test_quantize_multiplier_is_q31_within_half_an_ulp(real):
    m, shift = Q.quantize_multiplier(real)
    assert 1 << 30 <= m <= INT32_MAX
    # real = m * 2^(shift - 31) up to rounding of m (half a unit of m)
    err = abs(Fraction(real) - Fraction(m) * Fraction(2) ** (shift - 31))
    assert err <= Fraction(2) ** (shift - 32)


def test_quantize_multiplier_edges():
    assert Q.quantize_multiplier(0.0) == (0, 0)
    assert Q.quantize_multiplier(1.0) == (1 << 30, 1)
    assert Q.quantize_multiplier(0.5) == (1 << 30, 0)
    assert Q.quantize_multiplier(0.75) == (3 << 29, 0)
    # q rounds up to 2^31: renormalised to 2^30 with one more shift
    assert Q.quantize_multiplier(1.0 - 2.0**-40) == (1 << 30, 1)
    assert Q.quantize_multiplier((2**31 - 1) / 2**31) == (INT32_MAX, 0)
    # below 2^-32 TFLite flushes to zero
    assert Q.quantize_multiplier(2.0**-40) == (0, 0)
    assert Q.quantize_multiplier(2.0**-32) == (1 << 30, -31)
    m, s = Q.quantize_multiplier(-0.3)
    assert m < 0 and s == -1
    with pytest.raises(ValueError):
        Q.quantize_multiplier_smaller_than_one_exp(1.0)
    with pytest.raises(ValueError):
        Q.quantize_multiplier_greater_than_one(0.5)


@given(any_int32, any_int32)
@settings(max_examples=400, deadline=None)
def test_srdhm_matches_c_code_and_rounds_half_up(a, b):
    got = int(Q.srdhm_ref(a, b))
    assert got == _srdhm_c(a, b)
    if not a == b == INT32_MIN:
        assert got == math.floor(Fraction(a * b, 1 << 31) + Fraction(1, 2))
    else:
        assert got == INT32_MAX


@given(any_int32, st.integers(0, 31))
@settings(max_examples=400, deadline=None)
def test_rounding_divide_by_pot_rounds_half_away_from_zero(x, e):
    got = int(Q.rounding_divide_by_pot_ref(x, e))
    assert got == _rdbpot_c(x, e)
    assert got == _round_half_away(Fraction(x, 1 << e))


@given(any_int32, multipliers, st.integers(-31, 30))
@settings(max_examples=400, deadline=None)
def test_multiply_by_quantized_multiplier_matches_c_code(x, m, shift):
    assert int(Q.multiply_by_quantized_multiplier_ref(x, m, shift)) == _mbqm_c(x, m, shift)


@given(st.integers(-(1 << 24), 1 << 24), st.floats(min_value=1e-6, max_value=0.99))
@settings(max_examples=200, deadline=None)
def test_requantize_is_within_one_of_the_real_product(acc, real):
    """Double rounding: never more than one step from round(acc * real)."""
    m, s = Q.quantize_multiplier(real)
    got = int(Q.multiply_by_quantized_multiplier_ref(acc, m, s))
    assert abs(got - acc * real) <= 1.0


@given(st.lists(st.tuples(any_int32, multipliers, st.integers(-31, 30)), min_size=1, max_size=32),
       st.floats(min_value=2.0**-31, max_value=2.0**20))
@settings(max_examples=100, deadline=None)
def test_agrees_with_patch_stage_integer_arithmetic(triples, real):
    """The patch-stage pass (tvm_patch.patch.intarith) must requantize exactly like this lowering."""
    intarith = pytest.importorskip("tvm_patch.patch.intarith")
    x, m, s = (np.array(v, dtype=np.int64) for v in zip(*triples))
    np.testing.assert_array_equal(intarith.multiply_by_quantized_multiplier(x, m, s),
                                  Q.multiply_by_quantized_multiplier_ref(x, m, s))
    assert tuple(intarith.quantize_multiplier(real)) == Q.quantize_multiplier(real)


@pytest.fixture(scope="module")
def te_mbqm():
    """TE (compact formulation) MultiplyByQuantizedMultiplier with per-element multiplier and shift."""
    return _compile_te(lambda x, m, s: Q.requantize_te(x, m, s, 0, axis=0),
                       [((64,), "int32"), ((64,), "int32"), ((64,), "int32")])


@given(st.lists(st.tuples(any_int32, multipliers, st.integers(-31, 30)), min_size=64, max_size=64))
@settings(max_examples=60, deadline=None)
def test_te_multiply_by_quantized_multiplier_equals_numpy(te_mbqm, triples):
    x, m, s = (np.array(v, dtype=np.int64) for v in zip(*triples))
    got = te_mbqm(x.astype(np.int32), m.astype(np.int32), s.astype(np.int32))
    want = Q.multiply_by_quantized_multiplier_ref(x, m, s)
    np.testing.assert_array_equal(got, want)


def test_te_constant_shift_paths_equal_numpy():
    xs = np.concatenate([np.arange(-300, 300), [INT32_MIN, INT32_MAX, INT32_MIN + 1, -(1 << 30), (1 << 30)]])
    xs = np.resize(xs, 640).astype(np.int32)
    for m, s in [(INT32_MAX, 0), (INT32_MAX, -31), (1 << 30, -1), (1 << 30, 1), (1518500250, -5),
                 (1431655765, 3), (0, 0), (1 << 30, 30)]:
        run = _compile_te(lambda x: Q.requantize_te(x, m, s, 7), [((640,), "int32")])
        want = (Q.multiply_by_quantized_multiplier_ref(xs, m, s) + 7 + (1 << 31)) % (1 << 32) - (1 << 31)
        np.testing.assert_array_equal(run(xs), want, err_msg=f"{m},{s}")


def test_topi_fixed_point_multiply_rounds_differently_from_tflite():
    """Why tvm_patch.quant has its own TE: topi's single half-up rounding differs from TFLite's double
    rounding (here 0.25 -> 0 in TVM, 1 in TFLite; -0.5 -> 0 in TVM, -1 in TFLite)."""
    from tvm import topi

    xs = np.arange(-8, 9, dtype=np.int32)
    run = _compile_te(lambda x: topi.fixed_point_multiply(x, 1 << 30, -1), [((17,), "int32")])
    tvm_out = run(xs)
    tfl = Q.multiply_by_quantized_multiplier_ref(xs, 1 << 30, -1)
    assert np.any(tvm_out != tfl)
    assert tfl[list(xs).index(1)] == 1 and tvm_out[list(xs).index(1)] == 0


def test_te_conv_logistic_equals_numpy():
    rng = np.random.default_rng(3)
    acc = rng.integers(-(1 << 22), 1 << 22, (1, 8, 1, 1)).astype(np.int32)
    acc[0, :4, 0, 0] = [0, INT32_MAX, INT32_MIN, -1]
    m, s = Q.acc_logistic_multipliers(0.02, rng.uniform(1e-3, 5e-2, 8))
    om, osh = Q.quantize_multiplier(2.0**-31 * 256)
    run = _compile_te(lambda a, mm, ss: Q.acc_logistic_te(a, mm, ss, 1, om, osh, -128, -128, 127, "int8"),
                      [((1, 8, 1, 1), "int32"), ((8,), "int32"), ((8,), "int32")])
    got = run(acc, m, s)
    want = Q.acc_logistic_ref(acc, m.reshape(1, 8, 1, 1), s.reshape(1, 8, 1, 1), om, osh, -128, -128, 127)
    np.testing.assert_array_equal(got, want)
    assert got[0, 0, 0, 0] == 0 and got[0, 1, 0, 0] == 127 and got[0, 2, 0, 0] == -128  # sigmoid 0.5, ~1, ~0


def test_activation_range_folds_relu6_like_tflite():
    assert Q.activation_range(0.05, -128, 0.0, 6.0) == (-128, -8)
    assert Q.activation_range(0.05, 10, 0.0, None) == (10, 127)
    assert Q.activation_range(0.01, 0, -1.0, 1.0) == (-100, 100)
    assert Q.activation_range(1.0, 0, None, None, "uint8") == (0, 255)


def test_mean_multiplier_folds_one_over_n():
    m, s = Q.mean_multiplier(0.1, 0.05, 64)
    assert abs(m * 2.0 ** (s - 31) - 2.0 / 64) < 1e-8


# ----------------------------------------------------------------------------------------------------------
# softmax / logistic / hard swish: TE vs numpy, numpy vs tflite-micro with rewritten quantization
# ----------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def te_softmax():
    """Compiled TFLite softmax over rows of 12 (the scale enters only through the exp table input)."""
    return _compile_te(lambda x, t: Q.softmax_te(x, t), [((16, 12), "int8"), ((256,), "int32")])


@given(st.floats(min_value=1e-3, max_value=8.0), st.integers(0, 2**32 - 1))
@settings(max_examples=40, deadline=None)
def test_te_softmax_equals_numpy(te_softmax, scale, seed):
    p = Q.softmax_params(scale)
    x = np.random.default_rng(seed).integers(-128, 128, (16, 12)).astype(np.int8)
    x[0] = 7  # uniform row
    x[1] = np.linspace(-128, 127, 12).astype(np.int8)  # rows spanning diff_min
    np.testing.assert_array_equal(te_softmax(x, Q.softmax_exp_table(p)), Q.softmax_ref(x, p))


def _rewrite_quant(path: Path, params: dict[int, tuple[float, int]], beta: float | None = None,
                   outputs: list[int] | None = None) -> bytes:
    """A copy of a .tflite fixture with other (scale, zero point) on some tensors (and softmax beta, and
    other graph outputs)."""
    import flatbuffers
    from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as schema

    data = path.read_bytes()
    m = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(data, 0))
    g = m.subgraphs[0]
    for idx, (scale, zp) in params.items():
        g.tensors[idx].quantization.scale = [float(scale)]
        g.tensors[idx].quantization.zeroPoint = [int(zp)]
    if beta is not None:
        g.operators[0].builtinOptions.beta = float(beta)
    if outputs is not None:
        g.outputs = list(outputs)
    b = flatbuffers.Builder(len(data) + 1024)
    b.Finish(m.Pack(b), file_identifier=b"TFL3")
    return bytes(b.Output())


def _io(path: Path) -> tuple[int, int]:
    import tflite

    g = tflite.Model.GetRootAsModel(path.read_bytes(), 0).Subgraphs(0)
    return int(g.Inputs(0)), int(g.Outputs(0))


def _all_int8(shape: tuple[int, ...]) -> np.ndarray:
    n = int(np.prod(shape))
    return np.resize(np.arange(-128, 128, dtype=np.int8), n).reshape(shape)


def _op_tensors(path: Path, op_name: str) -> tuple[list[int], int]:
    """(input tensor indices, output tensor index) of the first `op_name` operator of a .tflite."""
    import tflite

    m = tflite.Model.GetRootAsModel(path.read_bytes(), 0)
    g = m.Subgraphs(0)
    names = {v: k for k, v in tflite.BuiltinOperator.__dict__.items() if not k.startswith("_")}
    for i in range(g.OperatorsLength()):
        op = g.Operators(i)
        oc = m.OperatorCodes(op.OpcodeIndex())
        if names[max(oc.BuiltinCode(), oc.DeprecatedBuiltinCode())] == op_name:
            return [int(op.Inputs(k)) for k in range(op.InputsLength())], int(op.Outputs(0))
    raise LookupError(op_name)


scales = st.floats(min_value=2e-3, max_value=0.2)
zero_points = st.integers(-128, 127)


@pytest.mark.skipif(not (FIXTURES / "add_relu6.tflite").exists(), reason="add fixture not generated")
@given(scales, zero_points, scales, zero_points, scales, zero_points, st.integers(0, 10_000))
@settings(max_examples=30, deadline=None)
def test_add_reference_equals_tflite_micro(s1, z1, s2, z2, so, zo, seed):
    """TFLite ADD (left shift 20, three multipliers, fused relu6) on the tensors tflite-micro feeds it."""
    path = FIXTURES / "add_relu6.tflite"
    (a, b), o = _op_tensors(path, "ADD")
    data = _rewrite_quant(path, {a: (s1, z1), b: (s2, z2), o: (so, zo)}, outputs=[a, b, o])
    x = np.random.default_rng(seed).integers(-128, 128, (1, 8, 8, 4)).astype(np.int8)
    xa, xb, y = TfliteMicroRunner(data)([x])
    p = Q.add_params(s1, z1, s2, z2, so, zo, Q.activation_range(so, zo, 0.0, 6.0))
    np.testing.assert_array_equal(Q.add_ref(xa, xb, p), y)


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
               for b in _bindings(low.mod))
    assert _assert_bit_exact(low.run, str(path), low.mod) > 0


@pytest.mark.skipif(not (FIXTURES / "mul_se.tflite").exists(), reason="mul fixture not generated")
@given(scales, zero_points, scales, scales, zero_points, st.integers(0, 10_000))
@settings(max_examples=30, deadline=None)
def test_mul_reference_equals_tflite_micro(s1, z1, s2, so, zo, seed):
    """TFLite MUL; its second input is a LOGISTIC output, whose zero point tflite-micro requires at -128."""
    path = FIXTURES / "mul_se.tflite"
    z2 = -128
    (a, b), o = _op_tensors(path, "MUL")
    data = _rewrite_quant(path, {a: (s1, z1), b: (s2, z2), o: (so, zo)}, outputs=[a, b, o])
    x = np.random.default_rng(seed).integers(-128, 128, (1, 8, 8, 4)).astype(np.int8)
    xa, xb, y = TfliteMicroRunner(data)([x])
    p = Q.mul_params(s1, z1, s2, z2, so, zo, (-128, 127))
    np.testing.assert_array_equal(Q.mul_ref(xa, xb, p), y)


@pytest.mark.skipif(not (FIXTURES / "mean.tflite").exists(), reason="mean fixture not generated")
@given(scales, zero_points, scales, zero_points, st.integers(0, 10_000))
@settings(max_examples=30, deadline=None)
def test_mean_reference_equals_tflite_micro(si, zi, so, zo, seed):
    path = FIXTURES / "mean.tflite"
    (i, _axes), o = _op_tensors(path, "MEAN")
    ref = TfliteMicroRunner(_rewrite_quant(path, {i: (si, zi), o: (so, zo)}))
    x = np.random.default_rng(seed).integers(-128, 128, (1, 8, 8, 4)).astype(np.int8)
    m, s = Q.mean_multiplier(si, so, 64)
    np.testing.assert_array_equal(Q.mean_ref(x, (1, 2), zi, m, s, zo), ref([x])[0])


@pytest.mark.skipif(not (FIXTURES / "softmax.tflite").exists(), reason="softmax fixture not generated")
@given(st.floats(min_value=2e-3, max_value=4.0), st.sampled_from([1.0, 0.5, 2.0, 0.1]), st.integers(0, 10_000))
@settings(max_examples=40, deadline=None)
def test_softmax_reference_equals_tflite_micro(scale, beta, seed):
    path = FIXTURES / "softmax.tflite"
    i, _ = _io(path)
    ref = TfliteMicroRunner(_rewrite_quant(path, {i: (scale, 0)}, beta=beta))
    x = np.random.default_rng(seed).integers(-128, 128, (1, 16)).astype(np.int8)
    np.testing.assert_array_equal(Q.softmax_ref(x, Q.softmax_params(scale, beta)), ref([x])[0])


@pytest.mark.skipif(not (FIXTURES / "logistic.tflite").exists(), reason="logistic fixture not generated")
@given(st.floats(min_value=1e-3, max_value=2.0), st.integers(-128, 127))
@settings(max_examples=40, deadline=None)
def test_logistic_table_equals_tflite_micro(scale, zp):
    path = FIXTURES / "logistic.tflite"
    i, _ = _io(path)
    ref = TfliteMicroRunner(_rewrite_quant(path, {i: (scale, zp)}))
    x = _all_int8((1, 8, 8, 4))
    table = Q.logistic_table(Q.logistic_params(scale, zp))
    np.testing.assert_array_equal(table[x.astype(np.int64) + 128], ref([x])[0])


@pytest.mark.skipif(not (FIXTURES / "hard_swish.tflite").exists(), reason="hard_swish fixture not generated")
@given(st.floats(min_value=5e-3, max_value=0.2), st.integers(-128, 127), st.floats(min_value=0.01, max_value=0.2),
       st.integers(-128, 127))
@settings(max_examples=40, deadline=None)
def test_hard_swish_table_equals_tflite_micro(s_in, z_in, s_out, z_out):
    path = FIXTURES / "hard_swish.tflite"
    i, o = _io(path)
    try:
        p = Q.hard_swish_params(s_in, z_in, s_out, z_out)
    except ValueError:  # output multiplier > 1: TFLite refuses these too
        return
    ref = TfliteMicroRunner(_rewrite_quant(path, {i: (s_in, z_in), o: (s_out, z_out)}))
    x = _all_int8((1, 8, 8, 4))
    np.testing.assert_array_equal(Q.hard_swish_table(p)[x.astype(np.int64) + 128], ref([x])[0])


# ----------------------------------------------------------------------------------------------------------
# Whole models: bit-exact with tflite-micro
# ----------------------------------------------------------------------------------------------------------


class _Lowered:
    def __init__(self, path: str) -> None:
        self.path = path
        self.mod = LowerToInteger()(_load_tflite(path))
        self.run = compile_for_host(self.mod)


@pytest.fixture(scope="module", params=MLPERF or [None], ids=lambda p: Path(p).stem if p else "missing")
def mlperf(request):
    if request.param is None:
        pytest.skip(f"no MLPerf Tiny models under {_shared_models()}")
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
    assert any(_op(b.value) == "relax.nn.avg_pool2d" for b in _bindings(stock))
    low = LowerToInteger()(stock)
    assert not any(_op(b.value) == "relax.nn.avg_pool2d" for b in _bindings(low))
    assert float_ops_remaining(low) == []
    assert _assert_bit_exact(compile_for_host(low), kws, low) > 0


def test_verify_against_reference_tflite():
    if not MLPERF:
        pytest.skip("no MLPerf Tiny models")
    kws = next((p for p in MLPERF if "kws" in p), MLPERF[0])
    r = verify_against_reference(kws, "tflite-micro", n_inputs=3)
    assert r.passed and r.share_equal == 1.0 and r.max_abs_diff == 0
    assert r.n_values > 0 and "PASS" in r.summary()


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
    bs = _bindings(mlperf.mod)
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
    bs = _bindings(mod)
    clips = [b for b in bs if _op(b.value) == "relax.clip"]
    assert len(clips) == 1 and str(clips[0].var.ty.dtype) == "int32"
    import tflite

    g = tflite.Model.GetRootAsModel(relu6.read_bytes(), 0).Subgraphs(0)
    q = g.Tensors(g.Outputs(0)).Quantization()
    want = Q.activation_range(float(q.Scale(0)), int(q.ZeroPoint(0)), 0.0, 6.0)
    assert (int(clips[0].value.args[1].value), int(clips[0].value.args[2].value)) == want
    if path.exists():
        bs = _bindings(LowerToInteger()(_load_tflite(str(path))))
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
    assert float_ops_remaining(low) == ["main:" + _bindings(low)[0].var.name + " = relax.nn.relu"]


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
    try:
        from tvm_patch import zoo
    except ImportError:
        pytest.skip("tvm_patch.zoo not available")
    if name not in zoo.names():
        pytest.skip(f"zoo has no {name}")
    return f"zoo:{name}:int8"


def test_zoo_int8_layers_within_one_step():
    """Every quantized tensor of a zoo model, computed from onnxruntime's own int8 inputs (one compile)."""
    pytest.importorskip("onnxruntime")
    from tvm_patch import zoo

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
