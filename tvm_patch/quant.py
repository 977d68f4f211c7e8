"""Integer arithmetic of TFLite's int8 kernels: parameters, numpy references and TE expressions.

Why this module exists: an int8 network on a microcontroller must not touch floats, and to be useful its
outputs must equal TensorFlow Lite Micro's bit for bit. TFLite (Micro) fixes the arithmetic precisely:

* a real multiplier ``M`` becomes ``(quantized_multiplier, shift)`` by ``QuantizeMultiplier`` (frexp, round
  half away from zero to Q31, shift > 0 is a left shift);
* ``MultiplyByQuantizedMultiplier(x, m, shift)`` (default "double rounding" build) is
  ``RoundingDivideByPOT(SaturatingRoundingDoublingHighMul(x * 2**max(shift, 0), m), max(-shift, 0))``:
  two roundings, both half away from zero;
* softmax and logistic run gemmlowp fixed-point math (``exp_on_negative_values``,
  ``one_over_one_plus_x_for_x_in_0_1``, ``logistic``), hard swish 16-bit fixed point, average pooling
  rounds half away from zero, MEAN folds ``1/n`` into the multiplier, ADD rescales both inputs after a
  left shift of 20.

TVM's own ``topi.fixed_point_multiply`` lowers to ``T.q_multiply_shift``, which rounds once, half up
(towards +inf) on a 64-bit product: it differs from TFLite on negative ties and wherever the two roundings of
TFLite differ from one (``test_lower_to_integer.py`` shows a counterexample). So the arithmetic is written
here once, generically over a small backend (`_NumpyOps` on int64 arrays holding int32 values, `_TEOps` on
``PrimExpr``), and instantiated twice: the ``*_ref`` functions (numpy, reference and test oracle) and the
``*_te`` functions (TE compute definitions the Relax pass emits with ``BlockBuilder.emit_te``). The numpy
backend keeps gemmlowp's literal formulations, the TE backend uses shorter equivalent ones (checked equal
by the tests). Element-wise functions of one int8 value (logistic, hard swish) and softmax's exponential
of ``x - max`` have only 256 possible inputs: their exact integer arithmetic is evaluated at compile time
into a table that the TE gathers from (as TFLite's optimized kernels do); softmax's sum, reciprocal and
scaling stay TE arithmetic. Everything is integer at run time; floats appear only in the compile-time
parameter derivation, where TFLite's Prepare() uses them.
"""

from __future__ import annotations

import math
from fractions import Fraction
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
from contextlib import contextmanager
from contextvars import ContextVar

if TYPE_CHECKING:
    from tvm import te

INT32_MIN = -(1 << 31)
INT32_MAX = (1 << 31) - 1

QRANGE = {"int8": (-128, 127), "uint8": (0, 255), "int16": (-32768, 32767), "int32": (INT32_MIN, INT32_MAX)}

# ----------------------------------------------------------------------------------------------------------
# Compile-time parameters (TFLite Prepare() semantics; doubles where TFLite uses doubles)
# ----------------------------------------------------------------------------------------------------------


def tflite_round(x: float) -> int:
    """Round half away from zero (``std::round``), as TfLiteRound does."""
    return int(math.copysign(math.floor(abs(x) + 0.5), x))


def quantize_multiplier(real_multiplier: float) -> tuple[int, int]:
    """TFLite ``QuantizeMultiplier``: real multiplier -> (int32 Q31 multiplier, shift; > 0 means left shift)."""
    if real_multiplier == 0.0:
        return 0, 0
    q, shift = math.frexp(real_multiplier)
    q_fixed = tflite_round(q * (1 << 31))
    if q_fixed > (1 << 31):
        raise ValueError(f"quantize_multiplier({real_multiplier!r}): Q31 overflow")
    if q_fixed == (1 << 31):
        q_fixed //= 2
        shift += 1
    if q_fixed > INT32_MAX:
        raise ValueError(f"quantize_multiplier({real_multiplier!r}): multiplier does not fit int32")
    if shift < -31:  # flush tiny multipliers to zero, as TFLite does
        return 0, 0
    return int(q_fixed), int(shift)


def quantize_multiplier_smaller_than_one_exp(real_multiplier: float) -> tuple[int, int]:
    """TFLite ``QuantizeMultiplierSmallerThanOneExp``: 0 < m < 1, returns (multiplier, shift <= 0)."""
    if not 0.0 < real_multiplier < 1.0:
        raise ValueError(f"multiplier {real_multiplier!r} not in (0, 1)")
    m, s = quantize_multiplier(real_multiplier)
    if s > 0:
        raise ValueError(f"multiplier {real_multiplier!r} gave a left shift {s}")
    return m, s


def quantize_multiplier_greater_than_one(real_multiplier: float) -> tuple[int, int]:
    """TFLite ``QuantizeMultiplierGreaterThanOne``: m > 1, returns (multiplier, left shift >= 0)."""
    if not real_multiplier > 1.0:
        raise ValueError(f"multiplier {real_multiplier!r} not > 1")
    m, s = quantize_multiplier(real_multiplier)
    if s < 0:
        raise ValueError(f"multiplier {real_multiplier!r} gave a right shift {s}")
    return m, s


def quantize_real_to_q(value: float, scale: float, zero_point: int) -> int:
    """TFLite's ``Quantize`` helper of kernel_util: ``zp + round(f / scale)`` with float32 division."""
    return int(zero_point) + tflite_round(float(np.float32(value) / np.float32(scale)))


def activation_range(
    scale: float, zero_point: int, lo: float | None, hi: float | None, dtype: str = "int8"
) -> tuple[int, int]:
    """TFLite ``CalculateActivationRangeQuantized``: fold a real clamp [lo, hi] (None = open) into q bounds."""
    qmin, qmax = QRANGE[dtype]
    amin = qmin if lo is None or math.isinf(lo) else max(qmin, quantize_real_to_q(lo, scale, zero_point))
    amax = qmax if hi is None or math.isinf(hi) else min(qmax, quantize_real_to_q(hi, scale, zero_point))
    return int(amin), int(amax)


def conv_multipliers(
    input_scale: float, weight_scales: Sequence[float] | np.ndarray, output_scale: float
) -> tuple[np.ndarray, np.ndarray]:
    """Per-output-channel (multiplier, shift) of conv / depthwise / fully connected (TFLite
    ``PopulateConvolutionQuantizationParams``: double(in) * double(w[c]) / double(out))."""
    ms, ss = [], []
    for w in np.asarray(weight_scales, dtype=np.float32).reshape(-1):
        real = float(np.float32(input_scale)) * float(w) / float(np.float32(output_scale))
        m, s = quantize_multiplier(real)
        ms.append(m)
        ss.append(s)
    return np.asarray(ms, dtype=np.int32), np.asarray(ss, dtype=np.int32)


@dataclass(frozen=True)
class AddParams:
    """Integer parameters of TFLite's int8 ADD/SUB (``CalculateOpDataAdd``)."""

    input1_offset: int
    input2_offset: int
    output_offset: int
    left_shift: int
    input1_multiplier: int
    input1_shift: int
    input2_multiplier: int
    input2_shift: int
    output_multiplier: int
    output_shift: int
    act_min: int
    act_max: int


def add_params(
    s1: float, z1: int, s2: float, z2: int, so: float, zo: int, act: tuple[int, int], left_shift: int = 20,
    float32_ratios: bool = False,
) -> AddParams:
    """Derive TFLite ADD parameters: both inputs rescaled to twice the larger input scale after ``<< 20``.

    ADD computes the ratios in double; SUB (`float32_ratios`) computes them in float32, then widens."""
    if float32_ratios:
        f1, f2, fo = np.float32(s1), np.float32(s2), np.float32(so)
        twice = np.float32(2) * max(f1, f2)
        r1, r2 = float(f1 / twice), float(f2 / twice)
        ro = float(twice / (np.float32(1 << left_shift) * fo))
    else:
        s1d, s2d, sod = float(np.float32(s1)), float(np.float32(s2)), float(np.float32(so))
        twice_max = 2.0 * max(s1d, s2d)
        r1, r2 = s1d / twice_max, s2d / twice_max
        ro = twice_max / ((1 << left_shift) * sod)
    m1, sh1 = quantize_multiplier_smaller_than_one_exp(r1)
    m2, sh2 = quantize_multiplier_smaller_than_one_exp(r2)
    mo, sho = quantize_multiplier_smaller_than_one_exp(ro)
    return AddParams(-int(z1), -int(z2), int(zo), left_shift, m1, sh1, m2, sh2, mo, sho, act[0], act[1])


@dataclass(frozen=True)
class MulParams:
    """Integer parameters of TFLite's int8 MUL."""

    input1_offset: int
    input2_offset: int
    output_offset: int
    multiplier: int
    shift: int
    act_min: int
    act_max: int


def mul_params(s1: float, z1: int, s2: float, z2: int, so: float, zo: int, act: tuple[int, int]) -> MulParams:
    """Derive TFLite MUL parameters: one multiplier s1 * s2 / so (doubles)."""
    real = float(np.float32(s1)) * float(np.float32(s2)) / float(np.float32(so))
    m, s = quantize_multiplier(real)
    return MulParams(-int(z1), -int(z2), int(zo), m, s, act[0], act[1])


def mean_multiplier(input_scale: float, output_scale: float, num_elements: int) -> tuple[int, int]:
    """TFLite int8 MEAN: QuantizeMultiplier(in/out), then 1/n folded into the multiplier as the kernel does."""
    m, s = quantize_multiplier(float(np.float32(input_scale)) / float(np.float32(output_scale)))
    n = int(num_elements)
    sh = n.bit_length() - 1  # floor(log2(n)) = 63 - clz64(n)
    sh = min(sh, 32)
    sh = min(sh, 31 + s)
    m = (m << sh) // n  # int64 division of non-negative values
    if m > INT32_MAX:
        raise ValueError("mean multiplier overflow")
    return int(m), int(s - sh)


def calculate_input_radius(input_integer_bits: int, input_left_shift: int, total_signed_bits: int = 31) -> int:
    """TFLite ``CalculateInputRadius`` (double arithmetic, floor)."""
    max_input_rescaled = (
        1.0 * ((1 << input_integer_bits) - 1) * float(1 << (total_signed_bits - input_integer_bits))
        / float(1 << input_left_shift)
    )
    return int(math.floor(max_input_rescaled))


@dataclass(frozen=True)
class SoftmaxParams:
    """Integer parameters of TFLite's int8 softmax (``CalculateSoftmaxParams``)."""

    input_multiplier: int
    input_left_shift: int
    diff_min: int


SOFTMAX_SCALED_DIFF_INTEGER_BITS = 5
SOFTMAX_ACCUMULATION_INTEGER_BITS = 12


def softmax_params(input_scale: float, beta: float = 1.0) -> SoftmaxParams:
    """``PreprocessSoftmaxScaling`` (double rounding build: cap at 2^31 - 1) and ``diff_min``."""
    real = min(float(beta) * float(np.float32(input_scale)) * float(1 << (31 - SOFTMAX_SCALED_DIFF_INTEGER_BITS)),
               float((1 << 31) - 1))
    m, ls = quantize_multiplier_greater_than_one(real)
    diff_min = -calculate_input_radius(SOFTMAX_SCALED_DIFF_INTEGER_BITS, ls)
    return SoftmaxParams(m, ls, diff_min)


@dataclass(frozen=True)
class LogisticParams:
    """Integer parameters of TFLite Micro's int8 logistic (``CalculateArithmeticOpDataLogistic``)."""

    input_zero_point: int
    input_multiplier: int
    input_left_shift: int
    input_range_radius: int


LOGISTIC_INPUT_INTEGER_BITS = 4


def logistic_params(input_scale: float, input_zero_point: int) -> LogisticParams:
    """frexp of ``scale * 2^(31-4)``; note TFLM does not renormalise a Q31 overflow here (it cannot occur
    for float32 scales)."""
    real = float(np.float32(input_scale)) * float(1 << (31 - LOGISTIC_INPUT_INTEGER_BITS))
    q, ls = math.frexp(real)
    m = tflite_round(q * (1 << 31))
    radius = calculate_input_radius(LOGISTIC_INPUT_INTEGER_BITS, ls, 31)
    return LogisticParams(int(input_zero_point), int(m), int(ls), int(radius))


# ----------------------------------------------------------------------------------------------------------
# Backends: the same arithmetic on numpy int64 arrays (holding int32 values) and on TIR PrimExprs
# ----------------------------------------------------------------------------------------------------------


class _NumpyOps:
    """numpy backend: every value is an int64 array whose content is an int32 (wrapped like C's casts).
    It uses gemmlowp's literal formulations, so tests comparing it with the TE backend (compact
    formulations) check the algebra too."""

    def srdhm(self, a, b):
        return _srdhm_literal(self, np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64))

    def rdbpot(self, x, e):
        return _rdbpot_literal(self, np.asarray(x, dtype=np.int64), np.asarray(e, dtype=np.int64))

    @staticmethod
    def bind(x: Any) -> Any:
        return x

    @staticmethod
    def wrap(x: Any) -> Any:
        return x

    @staticmethod
    def c32(v: int) -> np.ndarray:
        return np.int64(v)

    @staticmethod
    def c64(v: int) -> np.ndarray:
        return np.int64(v)

    @staticmethod
    def to64(x: Any) -> np.ndarray:
        return np.asarray(x, dtype=np.int64)

    @staticmethod
    def to32(x: Any) -> np.ndarray:
        x = np.asarray(x, dtype=np.int64)
        return ((x + (1 << 31)) & 0xFFFFFFFF) - (1 << 31)

    select = staticmethod(np.where)

    @staticmethod
    def lt(a, b):
        return np.less(a, b)

    @staticmethod
    def le(a, b):
        return np.less_equal(a, b)

    @staticmethod
    def gt(a, b):
        return np.greater(a, b)

    @staticmethod
    def ge(a, b):
        return np.greater_equal(a, b)

    @staticmethod
    def eq(a, b):
        return np.equal(a, b)

    @staticmethod
    def land(a, b):
        return np.logical_and(a, b)

    @staticmethod
    def band(a, b):
        return np.bitwise_and(np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64))

    @staticmethod
    def shr(x, n):
        return np.right_shift(np.asarray(x, dtype=np.int64), np.asarray(n, dtype=np.int64))

    @staticmethod
    def shl(x, n):
        return np.left_shift(np.asarray(x, dtype=np.int64), np.asarray(n, dtype=np.int64))

    @staticmethod
    def minimum(a, b):
        return np.minimum(a, b)

    @staticmethod
    def maximum(a, b):
        return np.maximum(a, b)


def _expr_dtype(x: Any) -> str:
    """dtype of a PrimExpr (TVM 0.27 exposes it as `.ty`, older versions as `.dtype`)."""
    d = getattr(x, "dtype", None)
    return str(d if d is not None else x.ty)


class _TEOps:
    """TIR backend: int32 PrimExprs, int64 where TFLite widens. Values are inlined (`bind` is the identity):
    fine for the short requantization chains; long fixed-point chains use `_StagedTEOps`."""

    is_tir = True

    @staticmethod
    def bind(x: Any) -> Any:
        return x

    @staticmethod
    def wrap(x: Any) -> Any:
        return x

    @classmethod
    def srdhm(cls, a, b):
        return _srdhm_compact(cls, a, b)

    @classmethod
    def rdbpot(cls, x, e):
        return _rdbpot_compact(cls, x, e)

    @staticmethod
    def c32(v: int):
        from tvm import tirx

        return tirx.const(int(v), "int32")

    @staticmethod
    def c64(v: int):
        from tvm import tirx

        return tirx.const(int(v), "int64")

    @staticmethod
    def to64(x: Any):
        from tvm import tirx

        if isinstance(x, (int, np.integer)):
            return tirx.const(int(x), "int64")
        return x if _expr_dtype(x) == "int64" else x.astype("int64")

    @staticmethod
    def to32(x: Any):
        from tvm import tirx

        if isinstance(x, (int, np.integer)):
            return tirx.const(int(x), "int32")
        return x if _expr_dtype(x) == "int32" else x.astype("int32")

    @staticmethod
    def select(c, a, b):
        from tvm import tirx

        return tirx.Select(c, a, b)

    @staticmethod
    def lt(a, b):
        return a < b

    @staticmethod
    def le(a, b):
        return a <= b

    @staticmethod
    def gt(a, b):
        return a > b

    @staticmethod
    def ge(a, b):
        return a >= b

    @staticmethod
    def eq(a, b):
        from tvm import tirx

        return tirx.EQ(a, b)

    @staticmethod
    def land(a, b):
        from tvm import tirx

        return tirx.And(a, b)

    @staticmethod
    def band(a, b):
        return a & b

    @staticmethod
    def shr(x, n):
        return x >> n

    @staticmethod
    def shl(x, n):
        return x << n

    @staticmethod
    def minimum(a, b):
        from tvm import tirx

        return tirx.min(a, b)

    @staticmethod
    def maximum(a, b):
        from tvm import tirx

        return tirx.max(a, b)


class _StagedTEOps(_TEOps):
    """TIR backend for long fixed-point chains: every bound value becomes its own TE stage over `shape`
    (indexed by the enclosing compute's `index` vars), so expressions stay small. TIR `Let` would do the
    same but s_tir's CompactBufferAllocation expands let values exponentially."""

    def __init__(self, shape: Sequence[int], index: Sequence[Any], prefix: str) -> None:
        self.shape, self.index, self.prefix, self.count = list(shape), list(index), prefix, 0

    def bind(self, x: Any) -> Any:
        import tvm_ffi
        from tvm import te, tirx

        if _is_int(x) or isinstance(x, (tirx.Var, tirx.IntImm)):
            return x
        outer = self.index

        def f(*j):
            def sub(v):
                for o, n in zip(outer, j):
                    if v.same_as(o):
                        return n
                return v

            return tvm_ffi.structural_map(x, (tirx.Var, sub))

        self.count += 1
        t = te.compute(self.shape, f, name=f"{self.prefix}_{self.count}")
        return t[tuple(outer)]


_NP = _NumpyOps()


def _is_int(x: Any) -> bool:
    return isinstance(x, (int, np.integer))


def _const_value(x: Any) -> int | None:
    """The value of a python / numpy / TIR integer constant, else None."""
    if _is_int(x):
        return int(x)
    if type(x).__name__ == "IntImm":
        return int(x.value)
    return None


# ---- gemmlowp / TFLite primitives, written once --------------------------------------------------------


def _srdhm(B, a, b):
    """SaturatingRoundingDoublingHighMul(int32 a, int32 b): round(a*b / 2^31), the only overflow
    (-2^31 * -2^31) saturating to 2^31 - 1."""
    return B.srdhm(a, b)


def _rdbpot(B, x, exponent):
    """RoundingDivideByPOT(int32 x, 0 <= exponent <= 31): arithmetic shift right rounding half away from 0."""
    if _is_int(exponent) and int(exponent) == 0:
        return x
    return B.rdbpot(x, exponent)


def _srdhm_literal(B, a, b):
    """gemmlowp's formulation: nudge by +-2^30, then C's truncating int64 division by 2^31."""
    ab = B.to64(a) * B.to64(b)
    t = ab + B.select(B.ge(ab, B.c64(0)), B.c64(1 << 30), B.c64(1 - (1 << 30)))
    q = B.to32(B.shr(t + B.select(B.lt(t, B.c64(0)), B.c64((1 << 31) - 1), B.c64(0)), B.c64(31)))
    overflow = B.land(B.eq(a, B.c32(INT32_MIN)), B.eq(b, B.c32(INT32_MIN)))
    return B.select(overflow, B.c32(INT32_MAX), q)


def _rdbpot_literal(B, x, exponent):
    """gemmlowp's formulation: mask, remainder, threshold (+1 for negative x)."""
    ex = B.to64(exponent)
    mask = B.shl(B.c64(1), ex) - B.c64(1)
    remainder = B.band(x, mask)
    threshold = B.shr(mask, B.c64(1)) + B.select(B.lt(x, B.c64(0)), B.c64(1), B.c64(0))
    return B.shr(x, ex) + B.select(B.gt(remainder, threshold), B.c64(1), B.c64(0))


def _srdhm_compact(B, a, b):
    """Equal to `_srdhm_literal` for all int32 a, b: the nudge and the truncation combine into
    floor((a*b + 2^30) / 2^31) (one 64-bit multiply-add and an arithmetic shift); the single overflow
    (a = b = -2^31 gives 2^31) is the only result above 2^31 - 1, so a min saturates it."""
    q = B.shr(B.to64(a) * B.to64(b) + B.c64(1 << 30), B.c64(31))
    ca, cb = _const_value(a), _const_value(b)
    if ca is not None and ca != INT32_MIN or cb is not None and cb != INT32_MIN:
        return B.to32(q)
    return B.to32(B.minimum(q, B.c64(INT32_MAX)))


def _rdbpot_compact(B, x, exponent):
    """Equal to `_rdbpot_literal` for all int32 x and 0 <= e <= 31: (x + ((2^e - [x < 0]) >> 1)) >> e,
    evaluated in 64 bits."""
    neg = B.select(B.lt(x, B.c32(0)), B.c64(1), B.c64(0))
    if _is_int(exponent):
        e = int(exponent)
        bias = B.c64(1 << (e - 1)) - neg
        ex = B.c64(e)
    else:
        ex = B.to64(exponent)
        bias = B.shr(B.shl(B.c64(1), ex) - neg, B.c64(1))
    return B.to32(B.shr(B.to64(x) + bias, ex))


REQUANT_EXTERN = "tvmp_requant"
_EXTERN_REQUANT: ContextVar[bool] = ContextVar("tvmp_extern_requant", default=False)


@contextmanager
def extern_requantization():
    """Inside: TIR built from this module calls the C micro-kernel `tvmp_requant` (tvm_patch/codegen/
    tvmp_kernels.h) for MultiplyByQuantizedMultiplier instead of spelling it out (the C export's kernels)."""
    token = _EXTERN_REQUANT.set(True)
    try:
        yield
    finally:
        _EXTERN_REQUANT.reset(token)


def expand_extern_requantization(func):
    """The PrimFunc with every `tvmp_requant` call replaced by the TIR expression it stands for."""
    import tvm
    import tvm_ffi
    from tvm import tirx

    def on_call(c):
        if not (isinstance(c.op, tvm.ir.Op) and c.op.name == "tirx.call_pure_extern"):
            return c
        if str(c.args[0].value) != REQUANT_EXTERN:
            return c
        x, m, s = c.args[1:]
        mv, sv = _const_value(m), _const_value(s)
        return _mbqm(_TEOps, x, m if mv is None else mv, s if sv is None else sv)

    return tvm_ffi.structural_map(func, [(tvm.ir.Call, on_call)])


def _mbqm(B, x, multiplier, shift):
    """MultiplyByQuantizedMultiplier(int32 x, m, shift) of TFLite's default (double rounding) build."""
    if _EXTERN_REQUANT.get() and getattr(B, "is_tir", False):
        from tvm import tirx

        return tirx.call_pure_extern("int32", REQUANT_EXTERN, B.to32(x), B.to32(multiplier), B.to32(shift))
    if _is_int(shift):
        ls, rs = max(int(shift), 0), max(-int(shift), 0)
        xs = x if ls == 0 else B.to32(B.shl(B.to64(x), B.c64(ls)))  # int32 multiply by 2^ls (wraps in C)
    else:
        sh = B.bind(B.to32(shift))
        ls = B.maximum(sh, B.c32(0))
        rs = B.maximum(B.c32(0) - sh, B.c32(0))
        xs = B.to32(B.shl(B.to64(x), B.to64(ls)))
    return _rdbpot(B, _srdhm(B, xs, multiplier), rs)


def _sat_shift_left(B, x, exponent: int):
    """gemmlowp SaturatingRoundingMultiplyByPOT<exponent > 0>: left shift saturating to int32."""
    x = B.bind(x)
    thr = (1 << (31 - exponent)) - 1
    shifted = B.to32(B.shl(B.to64(x), B.c64(exponent)))
    r = B.select(B.gt(x, B.c32(thr)), B.c32(INT32_MAX), shifted)
    return B.select(B.lt(x, B.c32(-thr)), B.c32(INT32_MIN), r)


def _rescale(B, x, src_int_bits: int, dst_int_bits: int):
    """gemmlowp Rescale<dst>(FixedPoint<src>): multiply the raw value by 2^(src - dst)."""
    e = src_int_bits - dst_int_bits
    if e > 0:
        return _sat_shift_left(B, x, e)
    if e < 0:
        return _rdbpot(B, x, -e)
    return x


def _rounding_half_sum(B, a, b):
    """gemmlowp RoundingHalfSum(int32, int32): (a + b + sign) / 2 in int64, truncating."""
    s = B.bind(B.to64(a) + B.to64(b))
    t = B.bind(s + B.select(B.ge(s, B.c64(0)), B.c64(1), B.c64(-1)))
    half = B.select(B.lt(t, B.c64(0)), B.c64(0) - B.shr(B.c64(0) - t, B.c64(1)), B.shr(t, B.c64(1)))
    return B.to32(half)


def _exp_on_interval_between_negative_one_quarter_and_0_excl(B, a):
    """gemmlowp's 4th-order Taylor expansion of exp around -1/8, Q0.31 in and out."""
    constant_term = B.c32(1895147668)  # exp(-1/8)
    constant_1_over_3 = B.c32(715827883)
    x = B.bind(a + B.c32(1 << 28))  # a + 1/8
    x2 = B.bind(_srdhm(B, x, x))
    x3 = _srdhm(B, x2, x)
    x4 = _srdhm(B, x2, x2)
    x4_over_4 = _rdbpot(B, x4, 2)
    poly = _rdbpot(B, _srdhm(B, x4_over_4 + x3, constant_1_over_3) + x2, 1)
    return constant_term + _srdhm(B, constant_term, x + poly)


_EXP_BARREL = ((-2, 1672461947), (-1, 1302514674), (0, 790015084), (1, 290630308), (2, 39332535), (3, 720401),
               (4, 242))


def _exp_on_negative_values(B, a, integer_bits: int):
    """gemmlowp exp_on_negative_values: FixedPoint<int32, integer_bits> (a <= 0) -> Q0.31."""
    a = B.bind(a)
    frac = 31 - integer_bits
    one_quarter = 1 << (frac - 2)
    a_mod_quarter_minus_one_quarter = B.bind(B.band(a, B.c32(one_quarter - 1)) - B.c32(one_quarter))
    result = B.bind(_exp_on_interval_between_negative_one_quarter_and_0_excl(
        B, _rescale(B, a_mod_quarter_minus_one_quarter, integer_bits, 0)))
    remainder = B.bind(a_mod_quarter_minus_one_quarter - a)
    for exponent, multiplier in _EXP_BARREL:
        if integer_bits > exponent:
            bit = B.c32(1 << (frac + exponent))
            result = B.bind(B.select(B.eq(B.band(remainder, bit), B.c32(0)), result,
                                     _srdhm(B, result, B.c32(multiplier))))
    if integer_bits > 5:
        clamp = -(1 << (36 - integer_bits))
        result = B.select(B.lt(a, B.c32(clamp)), B.c32(0), result)
    return B.select(B.eq(a, B.c32(0)), B.c32(INT32_MAX), result)


def _one_over_one_plus_x_for_x_in_0_1(B, a):
    """gemmlowp: 1/(1+x) for x in [0, 1) by three Newton-Raphson steps, Q0.31 in and out."""
    half_denominator = B.bind(_rounding_half_sum(B, a, B.c32(INT32_MAX)))
    c48_17 = B.c32(1515870810)  # 48/17 in Q2.29
    cneg32_17 = B.c32(-1010580540)  # -32/17 in Q2.29
    one_f2 = B.c32(1 << 29)
    x = B.bind(c48_17 + _srdhm(B, half_denominator, cneg32_17))
    for _ in range(3):
        half_denominator_times_x = _srdhm(B, half_denominator, x)
        one_minus = one_f2 - half_denominator_times_x
        x = B.bind(x + _rescale(B, _srdhm(B, x, one_minus), 4, 2))
    return _rescale(B, x, 1, 0)  # ExactMulByPot<-1>: Q2.29 read as Q1.30, then Rescale<0>


def _logistic_fixed_point(B, a, integer_bits: int):
    """gemmlowp logistic: FixedPoint<int32, integer_bits> -> Q0.31."""
    a = B.bind(a)
    positive = B.gt(a, B.c32(0))
    abs_input = B.select(positive, a, B.c32(0) - a)
    r_pos = B.bind(_one_over_one_plus_x_for_x_in_0_1(
        B, _exp_on_negative_values(B, B.c32(0) - abs_input, integer_bits)))
    r_neg = B.c32(INT32_MAX) - r_pos
    return B.select(B.eq(a, B.c32(0)), B.c32(1 << 30), B.select(positive, r_pos, r_neg))


def _count_leading_zeros_positive(B, x):
    """Leading zeros of a positive int32 seen as uint32 (a select ladder: portable to any backend)."""
    n = B.c32(0)
    v = B.bind(B.to64(x))
    for bits in (16, 8, 4, 2, 1):
        small = B.lt(v, B.c64(1 << (32 - bits)))
        n = B.bind(n + B.select(small, B.c32(bits), B.c32(0)))
        v = B.bind(B.select(small, B.shl(v, B.c64(bits)), v))
    return n


def _get_reciprocal(B, x, x_integer_digits: int):
    """TFLite GetReciprocal: (1/x as Q0.31 scaled into [0.5, 1), num_bits_over_unit) for x > 0."""
    x = B.bind(x)
    headroom_plus_one = B.bind(_count_leading_zeros_positive(B, x))
    num_bits_over_unit = B.c32(x_integer_digits) - headroom_plus_one
    shifted_sum_minus_one = B.to32(B.shl(B.to64(x), B.to64(headroom_plus_one)) - B.c64(1 << 31))
    return _one_over_one_plus_x_for_x_in_0_1(B, shifted_sum_minus_one), num_bits_over_unit


# ----------------------------------------------------------------------------------------------------------
# Public numpy references
# ----------------------------------------------------------------------------------------------------------


def _i64(x: Any) -> np.ndarray:
    return np.asarray(x, dtype=np.int64)


def srdhm_ref(a: Any, b: Any) -> np.ndarray:
    """numpy SaturatingRoundingDoublingHighMul on int32 values (returns int64 array of int32 values)."""
    return _srdhm(_NP, _i64(a), _i64(b))


def rounding_divide_by_pot_ref(x: Any, exponent: Any) -> np.ndarray:
    """numpy RoundingDivideByPOT."""
    return _rdbpot(_NP, _i64(x), _i64(exponent))


def multiply_by_quantized_multiplier_ref(x: Any, multiplier: Any, shift: Any) -> np.ndarray:
    """numpy MultiplyByQuantizedMultiplier (double rounding); multiplier/shift may broadcast (per channel)."""
    return _mbqm(_NP, _i64(x), _i64(multiplier), _i64(shift))


def requantize_ref(
    acc: Any, multiplier: Any, shift: Any, output_zero_point: int, act_min: int, act_max: int
) -> np.ndarray:
    """Accumulator -> clamp(MBQM(acc) + zp): the tail of TFLite's int8 conv / depthwise / fully connected."""
    r = multiply_by_quantized_multiplier_ref(acc, multiplier, shift) + int(output_zero_point)
    return np.clip(r, act_min, act_max)


def add_ref(x1: Any, x2: Any, p: AddParams) -> np.ndarray:
    """numpy TFLite int8 ADD (broadcasting like numpy)."""
    v1 = (_i64(x1) + p.input1_offset) << p.left_shift
    v2 = (_i64(x2) + p.input2_offset) << p.left_shift
    s1 = _mbqm(_NP, _NP.to32(v1), _i64(p.input1_multiplier), _i64(p.input1_shift))
    s2 = _mbqm(_NP, _NP.to32(v2), _i64(p.input2_multiplier), _i64(p.input2_shift))
    raw = _mbqm(_NP, _NP.to32(s1 + s2), _i64(p.output_multiplier), _i64(p.output_shift)) + p.output_offset
    return np.clip(raw, p.act_min, p.act_max)


def mul_ref(x1: Any, x2: Any, p: MulParams) -> np.ndarray:
    """numpy TFLite int8 MUL."""
    prod = _NP.to32((_i64(x1) + p.input1_offset) * (_i64(x2) + p.input2_offset))
    raw = _mbqm(_NP, prod, _i64(p.multiplier), _i64(p.shift)) + p.output_offset
    return np.clip(raw, p.act_min, p.act_max)


def softmax_ref(x: Any, p: SoftmaxParams, output_dtype: str = "int8") -> np.ndarray:
    """numpy TFLite int8 softmax over the last axis (output scale 1/256, zero point = dtype min)."""
    x = _i64(x)
    qmin, qmax = QRANGE[output_dtype]
    diff = x - x.max(axis=-1, keepdims=True)
    valid = diff >= p.diff_min
    d = np.maximum(diff, p.diff_min)
    rescaled = _srdhm(_NP, _NP.to32(d << p.input_left_shift), _i64(p.input_multiplier))
    e = _exp_on_negative_values(_NP, rescaled, SOFTMAX_SCALED_DIFF_INTEGER_BITS)
    contrib = np.where(valid, _rescale(_NP, e, 0, SOFTMAX_ACCUMULATION_INTEGER_BITS), 0)
    total = _NP.to32(contrib.sum(axis=-1, keepdims=True))
    scale, nbits = _get_reciprocal(_NP, total, SOFTMAX_ACCUMULATION_INTEGER_BITS)
    bits = 8 if output_dtype in ("int8", "uint8") else 16
    out = _rdbpot(_NP, _srdhm(_NP, scale, e), nbits + 31 - bits) + qmin
    return np.where(valid, np.clip(out, qmin, qmax), qmin)


def logistic_ref(x: Any, p: LogisticParams) -> np.ndarray:
    """numpy TFLite Micro int8 logistic (output scale 1/256, zero point -128)."""
    v = _i64(x) - p.input_zero_point
    clamped = np.clip(v, -p.input_range_radius + 1, p.input_range_radius - 1)
    q4 = _mbqm(_NP, clamped, _i64(p.input_multiplier), _i64(p.input_left_shift))
    q0 = _logistic_fixed_point(_NP, q4, LOGISTIC_INPUT_INTEGER_BITS)
    out = np.clip(_rdbpot(_NP, q0, 31 - 8) - 128, -128, 127)
    out = np.where(v <= -p.input_range_radius, -128, out)
    return np.where(v >= p.input_range_radius, 127, out)


def mean_ref(x: Any, axes: Sequence[int], input_zero_point: int, multiplier: int, shift: int,
             output_zero_point: int, dtype: str = "int8", keepdims: bool = True) -> np.ndarray:
    """numpy TFLite int8 MEAN (multiplier/shift from `mean_multiplier`)."""
    x = _i64(x)
    n = int(np.prod([x.shape[a] for a in axes]))
    s = _NP.to32(x.sum(axis=tuple(axes), keepdims=keepdims) - int(input_zero_point) * n)
    qmin, qmax = QRANGE[dtype]
    return np.clip(_mbqm(_NP, s, _i64(multiplier), _i64(shift)) + int(output_zero_point), qmin, qmax)


def avg_pool_round_ref(acc: Any, count: Any) -> np.ndarray:
    """TFLite's average-pool rounding of a window sum: half away from zero, C division."""
    acc, count = _i64(acc), _i64(count)
    num = np.where(acc > 0, acc + count // 2, acc - count // 2)
    return np.sign(num) * (np.abs(num) // count)


# ----------------------------------------------------------------------------------------------------------
# TE compute definitions (used by the LowerToInteger Relax pass through BlockBuilder.emit_te)
# ----------------------------------------------------------------------------------------------------------


def _te():
    from tvm import te, tirx

    return te, tirx


def _clamp32(x, lo: int, hi: int):
    _, tirx = _te()
    return tirx.max(tirx.min(x, tirx.const(hi, "int32")), tirx.const(lo, "int32"))


def _bcast_index(in_shape: Sequence[int], out_idx: Sequence[Any]) -> list:
    """Numpy broadcasting: index of an input element for an output index."""
    off = len(out_idx) - len(in_shape)
    return [0 if int(d) == 1 else out_idx[off + i] for i, d in enumerate(in_shape)]


def requantize_te(acc: te.Tensor, multiplier: int | te.Tensor, shift: int | te.Tensor, output_zero_point: int,
                  axis: int = -1) -> te.Tensor:
    """int32 accumulator -> MBQM(acc, m, shift) + zp (int32; the clamp and cast follow in Relax).

    `multiplier` / `shift` are python ints (per tensor) or 1-D int32 TE tensors indexed along `axis`."""
    te, _ = _te()
    ndim = len(acc.shape)
    ax = axis % ndim

    def f(*i):
        B = _TEOps()
        m = multiplier if _is_int(multiplier) else multiplier[i[ax]]
        s = shift if _is_int(shift) else shift[i[ax]]
        return B.wrap(_mbqm(B, acc[i], m, s) + B.c32(output_zero_point))

    return te.compute(acc.shape, f, name="requantize")


def requantize_int_te(x: te.Tensor, input_zero_point: int, multiplier: int, shift: int, output_zero_point: int,
                      out_dtype: str, act_min: int, act_max: int) -> te.Tensor:
    """Quantized tensor -> other (scale, zero point): TFLite QUANTIZE/Requantize arithmetic, one pass."""
    te, _ = _te()

    def f(*i):
        B = _TEOps()
        v = x[i].astype("int32") - B.c32(input_zero_point)
        r = _mbqm(B, v, multiplier, shift) + B.c32(output_zero_point)
        return B.wrap(_clamp32(r, act_min, act_max)).astype(out_dtype)

    return te.compute(x.shape, f, name="q_requantize")


def add_te(a: te.Tensor, b: te.Tensor, p: AddParams, out_shape: Sequence[int], out_dtype: str = "int8",
           negate_b: bool = False) -> te.Tensor:
    """TFLite int8 ADD (SUB with `negate_b`), with numpy broadcasting, straight to the output dtype."""
    te, _ = _te()

    def f(*i):
        B = _TEOps()
        va = a[tuple(_bcast_index(a.shape, i))].astype("int32") + B.c32(p.input1_offset)
        vb = b[tuple(_bcast_index(b.shape, i))].astype("int32") + B.c32(p.input2_offset)
        sa = _mbqm(B, va * B.c32(1 << p.left_shift), p.input1_multiplier, p.input1_shift)
        sb = _mbqm(B, vb * B.c32(1 << p.left_shift), p.input2_multiplier, p.input2_shift)
        raw = sa - sb if negate_b else sa + sb
        r = _mbqm(B, raw, p.output_multiplier, p.output_shift) + B.c32(p.output_offset)
        return B.wrap(_clamp32(r, p.act_min, p.act_max)).astype(out_dtype)

    return te.compute(tuple(out_shape), f, name="q_sub" if negate_b else "q_add")


def mul_te(a: te.Tensor, b: te.Tensor, p: MulParams, out_shape: Sequence[int], out_dtype: str = "int8") -> te.Tensor:
    """TFLite int8 MUL with numpy broadcasting."""
    te, _ = _te()

    def f(*i):
        B = _TEOps()
        va = a[tuple(_bcast_index(a.shape, i))].astype("int32") + B.c32(p.input1_offset)
        vb = b[tuple(_bcast_index(b.shape, i))].astype("int32") + B.c32(p.input2_offset)
        r = _mbqm(B, va * vb, p.multiplier, p.shift) + B.c32(p.output_offset)
        return B.wrap(_clamp32(r, p.act_min, p.act_max)).astype(out_dtype)

    return te.compute(tuple(out_shape), f, name="q_mul")


def avg_pool2d_te(x: te.Tensor, pool_size: Sequence[int], strides: Sequence[int], padding: Sequence[int],
                  layout: str, act_min: int, act_max: int, out_dtype: str) -> te.Tensor:
    """TFLite int8 average pooling: window sum over in-bounds taps, divided by their count rounding half
    away from zero (input and output share scale and zero point). padding = (top, left, bottom, right)."""
    te, tirx = _te()
    hax, wax = layout.index("H"), layout.index("W")
    shape = [int(d) for d in x.shape]
    H, W = shape[hax], shape[wax]
    fh, fw = int(pool_size[0]), int(pool_size[1])
    sh, sw = int(strides[0]), int(strides[1])
    pt, pl, pb, pr = (int(v) for v in padding)
    OH = (H + pt + pb - fh) // sh + 1
    OW = (W + pl + pr - fw) // sw + 1
    out_shape = list(shape)
    out_shape[hax], out_shape[wax] = OH, OW
    rh = te.reduce_axis((0, fh), name="rh")
    rw = te.reduce_axis((0, fw), name="rw")
    padded = bool(pt or pl or pb or pr)

    def window_sum(*i):
        idx = list(i)
        ih = i[hax] * sh + rh - pt
        iw = i[wax] * sw + rw - pl
        idx[hax], idx[wax] = ih, iw
        v = x[tuple(idx)].astype("int32")
        if padded:
            inb = tirx.all(ih >= 0, ih < H, iw >= 0, iw < W)
            v = tirx.if_then_else(inb, v, tirx.const(0, "int32"))
        return te.sum(v, axis=[rh, rw])

    acc = te.compute(out_shape, window_sum, name="pool_sum")

    def count_1d(o, stride, pad, f, n):
        start = o * stride - pad
        return tirx.min(start + f, n) - tirx.max(start, 0)

    def f(*i):
        B = _TEOps()
        if padded:
            cnt = B.bind(count_1d(i[hax], sh, pt, fh, H) * count_1d(i[wax], sw, pl, fw, W))
        else:
            cnt = tirx.const(fh * fw, "int32")
        a = B.bind(acc[i])
        half = tirx.truncdiv(cnt, 2)
        num = tirx.Select(a > 0, a + half, a - half)
        return B.wrap(_clamp32(tirx.truncdiv(num, cnt), act_min, act_max)).astype(out_dtype)

    return te.compute(out_shape, f, name="q_avg_pool2d")


def _sum_te(x: te.Tensor, axes: Sequence[int], keepdims: bool) -> tuple[te.Tensor, list[int]]:
    """The int32 sum of int8 ``x`` over ``axes`` (a MEAN's numerator) and its shape."""
    te, _ = _te()
    shape = [int(d) for d in x.shape]
    axes = sorted(a % len(shape) for a in axes)
    raxes = {a: te.reduce_axis((0, shape[a]), name=f"r{a}") for a in axes}
    out_shape = [1 if a in raxes else d for a, d in enumerate(shape)] if keepdims else \
        [d for a, d in enumerate(shape) if a not in raxes]

    def sum_f(*i):
        idx, k = [], 0
        for a in range(len(shape)):
            if a in raxes:
                idx.append(raxes[a])
                if keepdims:
                    k += 1
            else:
                idx.append(i[k])
                k += 1
        return te.sum(x[tuple(idx)].astype("int32"), axis=[raxes[a] for a in axes])

    return te.compute(out_shape, sum_f, name="mean_sum"), out_shape


def mean_te(x: te.Tensor, axes: Sequence[int], keepdims: bool, input_zero_point: int, multiplier: int, shift: int,
            output_zero_point: int, out_dtype: str, act_min: int | None = None,
            act_max: int | None = None) -> te.Tensor:
    """TFLite int8 MEAN over `axes`: int32 sum, minus zp*n, MBQM with 1/n folded in, plus zp, saturate
    (to [act_min, act_max] when a later clamp was folded in)."""
    te, _ = _te()
    shape = [int(d) for d in x.shape]
    axes = sorted(a % len(shape) for a in axes)
    n = int(np.prod([shape[a] for a in axes]))
    qmin, qmax = QRANGE[out_dtype]
    qmin = qmin if act_min is None else int(act_min)
    qmax = qmax if act_max is None else int(act_max)
    s, out_shape = _sum_te(x, axes, keepdims)

    def f(*i):
        B = _TEOps()
        v = s[i] - B.c32(int(input_zero_point) * n)
        r = _mbqm(B, v, multiplier, shift) + B.c32(output_zero_point)
        return B.wrap(_clamp32(r, qmin, qmax)).astype(out_dtype)

    return te.compute(out_shape, f, name="q_mean")


def softmax_exp_table(p: SoftmaxParams) -> np.ndarray:
    """exp(-(d)) in Q0.31 for d = max - x in [0, 255], exactly as TFLite's int8 softmax computes it
    (0 where TFLite skips the element: x - max < diff_min). int32[256]."""
    diff = -np.arange(256, dtype=np.int64)
    d = np.maximum(diff, p.diff_min)
    rescaled = _srdhm(_NP, _NP.to32(d << p.input_left_shift), _i64(p.input_multiplier))
    e = _exp_on_negative_values(_NP, rescaled, SOFTMAX_SCALED_DIFF_INTEGER_BITS)
    return np.where(diff >= p.diff_min, e, 0).astype(np.int32)


def softmax_te(x: te.Tensor, exp_table: te.Tensor, out_dtype: str = "int8") -> te.Tensor:
    """TFLite int8 softmax over the last axis.

    The per-element exponential depends only on ``max - x`` (0..255), so it is read from `exp_table`
    (`softmax_exp_table`, the gemmlowp arithmetic evaluated at compile time); the per-row sum, the
    reciprocal (``GetReciprocal``: count leading zeros + three Newton-Raphson steps of gemmlowp) and the
    output scaling are integer TE stages."""
    te, tirx = _te()
    shape = [int(d) for d in x.shape]
    depth = shape[-1]
    rows = shape[:-1]
    qmin, qmax = QRANGE[out_dtype]
    bits = 8 if out_dtype in ("int8", "uint8") else 16
    acc_bits = SOFTMAX_ACCUMULATION_INTEGER_BITS
    rk = te.reduce_axis((0, depth), name="k")
    row_max = te.compute(rows, lambda *i: te.max(x[i + (rk,)].astype("int32"), axis=rk), name="row_max")
    exps = te.compute(shape, lambda *i: exp_table[row_max[i[:-1]] - x[i].astype("int32")], name="exp_q0")
    rk2 = te.reduce_axis((0, depth), name="k2")
    sums = te.compute(rows, lambda *i: te.sum(_rescale(_TEOps, exps[i + (rk2,)], 0, acc_bits), axis=rk2),
                      name="sum_of_exps")

    def recip_f(*i):
        B = _StagedTEOps(rows, i, "reciprocal")
        r, num_bits = _get_reciprocal(B, sums[i], acc_bits)
        return [r, num_bits]

    recip, nbits = te.compute(rows, recip_f, name="reciprocal")

    def out_f(*i):
        r = i[:-1]
        v = _rdbpot(_TEOps, _srdhm(_TEOps, recip[r], exps[i]), nbits[r] + _TEOps.c32(31 - bits)) + _TEOps.c32(qmin)
        return _clamp32(v, qmin, qmax).astype(out_dtype)

    return te.compute(shape, out_f, name="q_softmax")


def logistic_table(p: LogisticParams, in_dtype: str = "int8") -> np.ndarray:
    """TFLite Micro's int8 logistic evaluated for every input value (`logistic_ref`): int8[256], entry k
    for input value qmin + k."""
    qmin, qmax = QRANGE[in_dtype]
    return logistic_ref(np.arange(qmin, qmax + 1), p).astype(np.int8)


def lut_te(x: te.Tensor, table: te.Tensor, in_dtype: str, out_dtype: str, name: str = "q_lut") -> te.Tensor:
    """Elementwise table lookup out = table[x - qmin(in_dtype)] (256-entry LUT for 8-bit inputs)."""
    te, _ = _te()
    qmin = QRANGE[in_dtype][0]
    return te.compute(x.shape, lambda *i: table[x[i].astype("int32") - qmin].astype(out_dtype), name=name)


# ----------------------------------------------------------------------------------------------------------
# HARD_SWISH (TFLite int8 reference: 16-bit fixed point)
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HardSwishParams:
    """Integer parameters of TFLite Micro's int8 HARD_SWISH (``HardSwishPrepare``)."""

    input_zero_point: int
    output_zero_point: int
    output_multiplier_fixedpoint_int16: int
    output_multiplier_exponent: int
    reluish_multiplier_fixedpoint_int16: int
    reluish_multiplier_exponent: int


def downscale_int32_to_int16_multiplier(m: int) -> int:
    """TFLite ``DownScaleInt32ToInt16Multiplier``: Q31 -> Q15, rounding, saturating at 2^15 - 1."""
    if m >= INT32_MAX - (1 << 15):
        return (1 << 15) - 1
    return (int(m) + (1 << 15)) >> 16


def hard_swish_params(input_scale: float, input_zero_point: int, output_scale: float,
                      output_zero_point: int) -> HardSwishParams:
    """Multipliers as TFLite Micro derives them (float32 products and quotients, then doubles)."""
    hires_input_scale = np.float32(1.0 / 128.0) * np.float32(input_scale)
    reluish_scale = np.float32(3.0) / np.float32(32768.0)
    om, oe = quantize_multiplier(float(np.float32(hires_input_scale / np.float32(output_scale))))
    rm, re = quantize_multiplier(float(np.float32(hires_input_scale / reluish_scale)))
    if oe > 0:
        raise ValueError("hard_swish: output multiplier exponent > 0 (TFLite refuses these scales)")
    return HardSwishParams(int(input_zero_point), int(output_zero_point), downscale_int32_to_int16_multiplier(om),
                           oe, downscale_int32_to_int16_multiplier(rm), re)


def _srdhm16(a: np.ndarray, b: Any) -> np.ndarray:
    """gemmlowp SaturatingRoundingDoublingHighMul for int16."""
    a, b = _i64(a), _i64(b)
    ab = a * b
    t = ab + np.where(ab >= 0, 1 << 14, 1 - (1 << 14))
    q = np.sign(t) * (np.abs(t) >> 15)  # C division truncates
    return np.where((a == b) & (a == -32768), 32767, q)


def _sdhm16(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """TFLite SaturatingDoublingHighMul for int16 (truncating, not rounding)."""
    a, b = _i64(a), _i64(b)
    ab = a * b
    q = np.sign(ab) * (np.abs(ab) >> 15)
    return np.where((a == b) & (a == -32768), 32767, q)


def _sat_lshift16(v: np.ndarray, amount: int) -> np.ndarray:
    return np.clip(_i64(v) * (1 << amount), -32768, 32767)


def hard_swish_ref(x: Any, p: HardSwishParams, dtype: str = "int8") -> np.ndarray:
    """numpy TFLite int8 HARD_SWISH (reference kernel arithmetic, int16 fixed point)."""
    qmin, qmax = QRANGE[dtype]
    v = _i64(x) - p.input_zero_point
    hires = v * (1 << 7)
    preshift_out = _srdhm16(hires, p.output_multiplier_fixedpoint_int16)
    r = hires
    if p.reluish_multiplier_exponent > 0:
        r = _sat_lshift16(r, p.reluish_multiplier_exponent - 1)
    r = _srdhm16(r, p.reluish_multiplier_fixedpoint_int16)
    if p.reluish_multiplier_exponent > 0:
        r = _sat_lshift16(r, 1)
    if p.reluish_multiplier_exponent < 0:
        r = rounding_divide_by_pot_ref(r, -p.reluish_multiplier_exponent)
    r = (r + (1 << 15)) >> 1
    pre = _sdhm16(r, preshift_out)
    out = rounding_divide_by_pot_ref(pre, -p.output_multiplier_exponent) + p.output_zero_point
    out = ((out + 32768) & 0xFFFF) - 32768  # the kernel adds the zero point in int16
    return np.clip(out, qmin, qmax)


def hard_swish_table(p: HardSwishParams, dtype: str = "int8") -> np.ndarray:
    """`hard_swish_ref` for every input value: [256], entry k for input qmin + k."""
    qmin, qmax = QRANGE[dtype]
    return hard_swish_ref(np.arange(qmin, qmax + 1), p, dtype).astype(dtype)


def float_function_table(fn: Any, input_scale: float, input_zero_point: int, output_scale: float,
                         output_zero_point: int, in_dtype: str = "int8", out_dtype: str = "int8") -> np.ndarray:
    """A 256-entry LUT of a real function populated like TFLite's ``LUTPopulateInt8``: dequantize in
    float32, apply `fn`, ``round(y / output_scale) + zp`` (half away from zero), saturate. The float math
    happens at compile time only."""
    qmin, qmax = QRANGE[in_dtype]
    omin, omax = QRANGE[out_dtype]
    vals = np.arange(qmin, qmax + 1)
    deq = np.float32(input_scale) * (vals - int(input_zero_point)).astype(np.float32)
    y = np.asarray(fn(deq), dtype=np.float32)
    inv = np.float32(1.0) / np.float32(output_scale)
    r = y * inv
    rounded = np.sign(r) * np.floor(np.abs(r).astype(np.float64) + 0.5)
    return np.clip(rounded + int(output_zero_point), omin, omax).astype(out_dtype)


def acc_logistic_multipliers(input_scale: float, weight_scales: Sequence[float] | np.ndarray
                             ) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (multiplier, shift) taking a conv accumulator (real = acc * s_in * s_w[c]) to the Q4.27
    fixed point that gemmlowp's logistic reads (real * 2^27)."""
    ms, ss = [], []
    for w in np.asarray(weight_scales, dtype=np.float32).reshape(-1):
        m, s = quantize_multiplier(float(np.float32(input_scale)) * float(w) * float(1 << 27))
        if s >= 31:
            raise ValueError("accumulator scale too large for a Q4.27 logistic input")
        ms.append(m)
        ss.append(s)
    return np.asarray(ms, dtype=np.int32), np.asarray(ss, dtype=np.int32)


def acc_logistic_te(acc: te.Tensor, multiplier: te.Tensor, shift: te.Tensor, axis: int, out_multiplier: int,
                    out_shift: int, output_zero_point: int, act_min: int, act_max: int, out_dtype: str) -> te.Tensor:
    """Logistic of a convolution accumulator, all integer: acc * m[c] >> (31 - shift[c]) (rounded, saturated
    to int32) is the Q4.27 input of gemmlowp's fixed-point logistic (as in TFLite's int8 LOGISTIC), whose
    Q0.31 result is requantized to the output. For graphs (ONNX QDQ) that apply a sigmoid to a convolution
    without quantizing in between, e.g. squeeze-excite gates; TFLite always quantizes the conv first."""
    te, tirx = _te()
    shape = [int(d) for d in acc.shape]
    ax = axis % len(shape)
    qmin, qmax = QRANGE[out_dtype]

    def f(*i):
        B = _StagedTEOps(shape, i, "acc_logistic")
        tr = B.to64(_TEOps.c32(31) - shift[i[ax]])
        prod = B.to64(acc[i]) * B.to64(multiplier[i[ax]])
        r = B.shr(prod + B.shl(B.c64(1), tr - B.c64(1)), tr)
        q4 = B.bind(B.to32(B.maximum(B.minimum(r, B.c64(INT32_MAX)), B.c64(INT32_MIN))))
        q0 = B.bind(_logistic_fixed_point(B, q4, LOGISTIC_INPUT_INTEGER_BITS))
        o = _mbqm(B, q0, out_multiplier, out_shift) + B.c32(output_zero_point)
        return _clamp32(o, max(qmin, act_min), min(qmax, act_max)).astype(out_dtype)

    return te.compute(shape, f, name="q_conv_logistic")


def acc_logistic_ref(acc: Any, multiplier: Any, shift: Any, out_multiplier: int, out_shift: int,
                     output_zero_point: int, act_min: int, act_max: int) -> np.ndarray:
    """numpy version of `acc_logistic_te` (multiplier/shift broadcast against acc)."""
    acc, m, s = _i64(acc), _i64(multiplier), _i64(shift)
    tr = 31 - s
    r = (acc * m + (np.int64(1) << (tr - 1))) >> tr
    q4 = np.clip(r, INT32_MIN, INT32_MAX)
    q0 = _logistic_fixed_point(_NP, q4, LOGISTIC_INPUT_INTEGER_BITS)
    return np.clip(_mbqm(_NP, q0, _i64(out_multiplier), _i64(out_shift)) + int(output_zero_point), act_min, act_max)


# ----------------------------------------------------------------------------------------------------------
# onnxruntime's requantization (LowerToInteger(rounding="onnxruntime")), emulated with integer operations
# ----------------------------------------------------------------------------------------------------------
#
# onnxruntime's CPU int8 kernels (MLAS, x86-64) requantize in float32 (measured against onnxruntime 1.31 in
# tests/test_onnxruntime_rounding.py):
#
# * QLinearConv (and the symmetric conv / depthwise kernels): exact int32 accumulator, per output channel
#   ``scale = float32(float32(x_scale * w_scale[c]) / y_scale)``, then ``float32(float(acc) * scale)``
#   rounded half to even (cvtps2dq), plus the zero point, saturated;
# * QLinearGlobalAveragePool: ``acc = sum - zp_x * n``, ``scale = float32(x_scale / float32(y_scale * n))``,
#   the same rounding;
# * QLinearAdd (int8, AVX2/AVX-512 kernel): ``rA = a_scale / c_scale``, ``rB = b_scale / c_scale``,
#   ``F = zp_c - (rA * zp_a + rB * zp_b)`` (float32), ``y = rint(fma(a, rA, float32(F + float32(b * rB))))``
#   on the raw int8 values, saturated.
#
# Each float32 operation rounds an exactly known rational to 24 significant bits, half to even: with the
# float32 constants split into integer mantissa and power of two at compile time, the same roundings are
# integer shifts of an exact int64 value. `_ort_round_scaled` is that computation, written once over the
# backends of this module (numpy reference, TE).


def float32_mantissa_exponent(x: float) -> tuple[int, int]:
    """A positive finite float32 ``x`` as ``m * 2**e`` with an integer ``m`` in [2^23, 2^24)."""
    f = float(np.float32(x))
    if not (f > 0.0 and math.isfinite(f)):
        raise ValueError(f"float32_mantissa_exponent({x!r}): needs a positive finite value")
    fr, ex = math.frexp(f)
    m = int(fr * (1 << 24))
    return m, ex - 24


def _as64(B, v):
    return B.c64(int(v)) if _is_int(v) else B.to64(v)


def _rhe_shift(B, x, k):
    """round(x / 2^k), ties to even, for int64 0 <= x < 2^62 and k >= 0 (python int or int64 expression):
    ``(x + 2^(k-1) - 1 + bit k of x) >> k``; `x` appears twice (no exponential growth of TE expressions)."""
    if _is_int(k):
        k = int(k)
        if k == 0:
            return x
        return B.shr(x + B.c64((1 << (k - 1)) - 1) + B.band(B.shr(x, B.c64(k)), B.c64(1)), B.c64(k))
    bias = B.select(B.gt(k, B.c64(0)),
                    B.shr(B.shl(B.c64(1), k), B.c64(1)) - B.c64(1) + B.band(B.shr(x, k), B.c64(1)), B.c64(0))
    return B.shr(x + bias, k)


ORT_SATURATED = 1 << 10
"""What `_round_fixed` returns for results of 2^10 and above (int8 outputs saturate far below)."""


def _round_fixed(B, p, s):
    """``rint(float32(p * 2^-s))`` (both roundings half to even) for int64 0 <= p < 2^62, 0 <= s <= 62,
    exact for results below 2^10 and `ORT_SATURATED` above.

    In the binade [2^j, 2^(j+1)) of the real value float32 keeps the multiples of 2^(j-23), i.e. p is first
    rounded at bit k = s + j - 23, then at bit s: one pair of constant shifts per binade j = -1 .. 9 (below
    0.5 both roundings give 0), chosen by comparisons of p with 2^(s+j). No count-leading-zeros needed."""
    res = B.c64(ORT_SATURATED)
    for j in range(9, -2, -1):
        if _is_int(s):
            k = max(int(s) + j - 23, 0)
            q1 = _rhe_shift(B, p, k)
            y = _rhe_shift(B, q1, int(s) - k)
            thr = B.c64(1 << min(int(s) + j + 1, 62))
        else:
            s64 = B.to64(s)
            k = B.maximum(s64 + B.c64(j - 23), B.c64(0))
            q1 = _rhe_shift(B, p, k)
            y = _rhe_shift(B, q1, s64 - k)
            thr = B.shl(B.c64(1), B.minimum(s64 + B.c64(j + 1), B.c64(62)))
        res = B.select(B.lt(p, thr), y, res)
    return res


def _round_to_float32_31(B, a):
    """float32(a) for int64 0 <= a <= 2^31 (ties to even), as an integer."""
    out = a
    for bits in range(25, 33):
        k = bits - 24
        out = B.select(B.ge(a, B.c64(1 << (bits - 1))), B.shl(_rhe_shift(B, a, k), B.c64(k)), out)
    return out


def _ort_round_scaled(B, value, mantissa, shift, round_value: bool = False):
    """``rint(float32(float32(value) * m * 2^-shift))`` for an int32 `value`, 0 <= m < 2^24, 0 <= shift <= 62:
    int64, exact below 2^10 in magnitude (`_round_fixed`). `round_value`: also round |value| > 2^24 to
    float32 first (only needed when the accumulator can exceed 2^24; callers know the bound)."""
    v = B.bind(B.to64(value))
    neg = B.bind(B.lt(v, B.c64(0)))
    a = B.bind(B.select(neg, B.c64(0) - v, v))
    if round_value:
        a = B.bind(_round_to_float32_31(B, a))
    r = B.bind(_round_fixed(B, B.bind(a * _as64(B, mantissa)), shift))
    return B.select(neg, B.c64(0) - r, r)


def _sat64_to32(B, x):
    lim = 1 << 30
    return B.to32(B.maximum(B.minimum(x, B.c64(lim)), B.c64(-lim)))


def ort_multiplier(real_multiplier: float) -> tuple[int, int]:
    """A float32 multiplier as (mantissa in [2^23, 2^24), right shift in [0, 62]) for `ort_requantize_*`;
    (0, 0) for 0. Multipliers of 2^23 and above (never met in requantization) are refused."""
    f = float(np.float32(real_multiplier))
    if f == 0.0:
        return 0, 0
    m, e = float32_mantissa_exponent(f)
    if e > 0:
        raise ValueError(f"onnxruntime multiplier {real_multiplier!r} too large")
    return m, min(-e, 62)


def ort_conv_multipliers(input_scale: float, weight_scales: Sequence[float] | np.ndarray,
                         output_scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Per output channel (mantissa, shift) of QLinearConv's float32 output scale
    ``float32(float32(x_scale * w_scale[c]) / y_scale)``."""
    sx, sy = np.float32(input_scale), np.float32(output_scale)
    ms, ss = [], []
    for w in np.asarray(weight_scales, dtype=np.float32).reshape(-1):
        m, s = ort_multiplier(float(np.float32(np.float32(sx * w) / sy)))
        ms.append(m)
        ss.append(s)
    return np.asarray(ms, dtype=np.int32), np.asarray(ss, dtype=np.int32)


def ort_mean_multiplier(input_scale: float, output_scale: float, num_elements: int) -> tuple[int, int]:
    """(mantissa, shift) of QLinearGlobalAveragePool's ``float32(x_scale / float32(y_scale * n))``."""
    sx, sy = np.float32(input_scale), np.float32(output_scale)
    return ort_multiplier(float(np.float32(sx / np.float32(sy * np.float32(num_elements)))))


def ort_requantize_ref(acc: Any, mantissa: Any, shift: Any, output_zero_point: int, act_min: int,
                       act_max: int) -> np.ndarray:
    """numpy: ``clamp(rint(float32(float32(acc) * scale)) + zp)``, scale = mantissa * 2^-shift (broadcast)."""
    acc = _i64(acc)
    m, s = np.broadcast_arrays(_i64(mantissa), _i64(shift))
    r = _ort_round_scaled(_NP, acc, np.broadcast_to(m, np.broadcast(acc, m).shape),
                          np.broadcast_to(s, np.broadcast(acc, s).shape), round_value=True)
    return np.clip(np.clip(r, -(1 << 30), 1 << 30) + int(output_zero_point), act_min, act_max)


def ort_requantize_te(acc: te.Tensor, mantissa: int | te.Tensor, shift: int | te.Tensor, output_zero_point: int,
                      axis: int = -1, acc_bound: int = 1 << 31) -> te.Tensor:
    """int32 accumulator -> rint(float32(float32(acc) * scale)) + zp as int32, all integer (the clamp and
    cast follow in Relax). `mantissa` / `shift`: python ints or 1-D int32 tensors indexed along `axis`.
    `acc_bound`: a bound of |acc| known at compile time; above 2^24 the int32 -> float32 conversion is
    rounded too (an extra stage)."""
    te, _ = _te()
    ax = axis % len(acc.shape)
    src = acc
    if acc_bound > 1 << 24:
        def conv(*i):
            B = _TEOps()
            v = B.to64(acc[i])
            a = _round_to_float32_31(B, B.select(B.lt(v, B.c64(0)), B.c64(0) - v, v))
            a = B.minimum(a, B.c64((1 << 31) - 128))
            return B.to32(B.select(B.lt(v, B.c64(0)), B.c64(0) - a, a))

        src = te.compute(acc.shape, conv, name="ort_acc_to_float32")  # |result| <= 2^31 - 128: int32

    def f(*i):
        B = _TEOps()
        m = mantissa if _is_int(mantissa) else mantissa[i[ax]]
        s = shift if _is_int(shift) else shift[i[ax]]
        return _sat64_to32(B, _ort_round_scaled(B, src[i], m, s)) + B.c32(output_zero_point)

    return te.compute(acc.shape, f, name="ort_requantize")


def ort_mean_te(x: te.Tensor, axes: Sequence[int], keepdims: bool, input_zero_point: int, mantissa: int,
                shift: int, output_zero_point: int, out_dtype: str, act_min: int, act_max: int) -> te.Tensor:
    """onnxruntime's QLinearGlobalAveragePool arithmetic over `axes`: int32 sum minus zp*n, float32 scale
    (`ort_mean_multiplier`) emulated exactly, plus zp, saturated."""
    te, _ = _te()
    shape = [int(d) for d in x.shape]
    axes = sorted(a % len(shape) for a in axes)
    n = int(np.prod([shape[a] for a in axes]))
    s, out_shape = _sum_te(x, axes, keepdims)

    def f(*i):
        B = _TEOps()
        v = s[i] - B.c32(int(input_zero_point) * n)
        r = _sat64_to32(B, _ort_round_scaled(B, v, mantissa, shift)) + B.c32(output_zero_point)
        return _clamp32(r, act_min, act_max).astype(out_dtype)

    return te.compute(out_shape, f, name="ort_mean")


@dataclass(frozen=True)
class OrtAddParams:
    """onnxruntime QLinearAdd (int8 FMA kernel) as integers: y = rint(a * a_mult * 2^e + b_table[b] * 2^e)
    with the exact products and one rounding to float32 before the final rounding; ``shift = -e``."""

    a_multiplier: int
    b_table: tuple[int, ...]  # 256 entries, for b = qmin .. qmax
    shift: int
    in_dtype: str
    act_min: int
    act_max: int


def _float32_ulp_exponent(x: np.float32) -> int | None:
    """Exponent of the last mantissa bit of a float32 (None for 0)."""
    if float(x) == 0.0:
        return None
    return float32_mantissa_exponent(abs(float(x)))[1]


def ort_add_params(sa: float, za: int, sb: float, zb: int, sc: float, zc: int, act: tuple[int, int],
                   in_dtype: str = "int8") -> OrtAddParams:
    """Derive `OrtAddParams` from the float32 computation of MLAS's QLinearAdd kernel: ``rA = sa / sc``,
    ``rB = sb / sc``, ``F = zc - (rA * za + rB * zb)``, per b value ``T[b] = float32(F + float32(b * rB))``;
    everything is then an integer multiple of one power of two 2^e."""
    f32 = np.float32
    ra, rb = f32(f32(sa) / f32(sc)), f32(f32(sb) / f32(sc))
    fixed = f32(f32(zc) - f32(f32(ra * f32(za)) + f32(rb * f32(zb))))
    qmin, qmax = QRANGE[in_dtype]
    bs = np.arange(qmin, qmax + 1)
    table = (fixed + (bs.astype(f32) * rb).astype(f32)).astype(f32)
    exps = [e for e in (_float32_ulp_exponent(ra), _float32_ulp_exponent(rb), _float32_ulp_exponent(fixed))
            if e is not None]
    e = min(exps)
    if e > 0:
        raise ValueError("onnxruntime add: scale ratios too large")
    ma, ea = float32_mantissa_exponent(float(ra))
    a_mult = ma << (ea - e)
    ints = []
    for t in table:
        fr = Fraction(float(t)) / Fraction(2) ** e
        if fr.denominator != 1:
            raise AssertionError("float32 table entry not on the common grid")
        ints.append(int(fr))
    bound = max(abs(v) for v in ints) + a_mult * 128
    if bound >= 1 << 62 or -e > 62:
        raise ValueError("onnxruntime add: scale ratios too far apart for int64 emulation")
    return OrtAddParams(int(a_mult), tuple(ints), int(-e), in_dtype, int(act[0]), int(act[1]))


def _ort_add_core(B, a, tb, p: OrtAddParams):
    v = B.bind(B.to64(a) * B.c64(p.a_multiplier) + B.to64(tb))
    neg = B.bind(B.lt(v, B.c64(0)))
    r = B.bind(_round_fixed(B, B.bind(B.select(neg, B.c64(0) - v, v)), p.shift))
    return B.select(neg, B.c64(0) - r, r)


def ort_add_ref(a: Any, b: Any, p: OrtAddParams) -> np.ndarray:
    """numpy `ort_add_te` (broadcasting like numpy)."""
    qmin = QRANGE[p.in_dtype][0]
    a, b = np.broadcast_arrays(_i64(a), _i64(b))
    tb = np.asarray(p.b_table, dtype=np.int64)[b - qmin]
    return np.clip(_ort_add_core(_NP, a, tb, p), p.act_min, p.act_max)


def ort_add_te(a: te.Tensor, b: te.Tensor, b_table: te.Tensor, p: OrtAddParams, out_shape: Sequence[int],
               out_dtype: str = "int8") -> te.Tensor:
    """onnxruntime's int8 QLinearAdd, bit for bit, with integer operations (`ort_add_params`); `b_table` is
    the int64 constant ``p.b_table``."""
    te, _ = _te()
    qmin = QRANGE[p.in_dtype][0]

    def f(*i):
        B = _TEOps()
        va = a[tuple(_bcast_index(a.shape, i))].astype("int32")
        vb = b[tuple(_bcast_index(b.shape, i))].astype("int32")
        r = _sat64_to32(B, _ort_add_core(B, va, b_table[vb - qmin], p))
        return _clamp32(r, p.act_min, p.act_max).astype(out_dtype)

    return te.compute(tuple(out_shape), f, name="ort_add")


def ort_requantize_table(input_scale: float, input_zero_point: int, output_scale: float, output_zero_point: int,
                         in_dtype: str, out_dtype: str, act_min: int, act_max: int) -> np.ndarray:
    """DequantizeLinear then QuantizeLinear as onnxruntime computes them in float32 (``(x - zp) * scale``,
    then ``rint(v / y_scale) + zp``), for every input value: a 256-entry table (compile time only)."""
    qmin, qmax = QRANGE[in_dtype]
    x = np.arange(qmin, qmax + 1)
    v = (x - int(input_zero_point)).astype(np.float32) * np.float32(input_scale)
    q = np.rint((v.astype(np.float32) / np.float32(output_scale)).astype(np.float32)).astype(np.int64)
    return np.clip(q + int(output_zero_point), act_min, act_max).astype(out_dtype)
