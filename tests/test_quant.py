"""tvm_patch.quant: TFLite's integer arithmetic, bit for bit.

* the integer helpers against exact rational definitions and pure-Python renderings of TFLite's C code
  (hypothesis), and their TE versions against the numpy ones;
* the numpy references of add / mul / mean / softmax / logistic / hard swish against tflite-micro itself on
  fixtures whose quantization parameters are rewritten (many scales, zero points, softmax beta).
"""

from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import FIXTURES, compile_te
from tvm_patch import quant as Q
from tvm_patch.reference import TfliteMicroRunner

INT32_MIN, INT32_MAX = -(1 << 31), (1 << 31) - 1


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


@pytest.fixture(scope="module")
def te_mbqm():
    """TE (compact formulation) MultiplyByQuantizedMultiplier with per-element multiplier and shift."""
    return compile_te(lambda x, m, s: Q.requantize_te(x, m, s, 0, axis=0),
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
        run = compile_te(lambda x: Q.requantize_te(x, m, s, 7), [((640,), "int32")])
        want = (Q.multiply_by_quantized_multiplier_ref(xs, m, s) + 7 + (1 << 31)) % (1 << 32) - (1 << 31)
        np.testing.assert_array_equal(run(xs), want, err_msg=f"{m},{s}")


def test_topi_fixed_point_multiply_rounds_differently_from_tflite():
    """Why tvm_patch.quant has its own TE: topi's single half-up rounding differs from TFLite's double
    rounding (here 0.25 -> 0 in TVM, 1 in TFLite; -0.5 -> 0 in TVM, -1 in TFLite)."""
    from tvm import topi

    xs = np.arange(-8, 9, dtype=np.int32)
    run = compile_te(lambda x: topi.fixed_point_multiply(x, 1 << 30, -1), [((17,), "int32")])
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
    run = compile_te(lambda a, mm, ss: Q.acc_logistic_te(a, mm, ss, 1, om, osh, -128, -128, 127, "int8"),
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
    return compile_te(lambda x, t: Q.softmax_te(x, t), [((16, 12), "int8"), ((256,), "int32")])


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
