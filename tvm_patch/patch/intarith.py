"""TFLite integer arithmetic (int8 requantization), as TIR expressions and as numpy, bit for bit the same.

TFLite's reference kernels requantize with MultiplyByQuantizedMultiplier: a saturating rounding doubling
high multiply (SRDHM) followed by a rounding divide by a power of two (RDBPOT, round half away from
zero). That double rounding differs from `tvm.tirx.q_multiply_shift` (a single round-half-up of
x*m*2^-(31-s)) in rare ties, so the TIR here spells the TFLite steps out in int64.
`tvm_patch/quant.py` (the Relax integer lowering) must agree with these functions bit for bit.

`shift` follows TFLite: > 0 shifts left before the multiply, < 0 shifts right after it.
"""

from __future__ import annotations

import numpy as np
from tvm import tirx

INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1

# -- TIR ---------------------------------------------------------------------------------------------


def dtype_of(x: tirx.PrimExpr) -> str:
    """The dtype of a TIR expression (0.27 PrimExprs carry it as `.ty`)."""
    return str(x.ty)


def _i64(x: tirx.PrimExpr) -> tirx.PrimExpr:
    return x.astype("int64") if dtype_of(x) != "int64" else x


def _int(x: tirx.PrimExpr | int) -> int | None:
    """The value of a constant, else None."""
    if isinstance(x, int):
        return x
    return x.value if isinstance(x, tirx.IntImm) else None


def srdhm_tir(a: tirx.PrimExpr, b: tirx.PrimExpr | int) -> tirx.PrimExpr:
    """SaturatingRoundingDoublingHighMul(a, b) on int32 expressions, for a multiplier b >= 0.

    With b >= 0 (TFLite multipliers are 0 or in [2^30, 2^31)) the saturating case
    INT32_MIN * INT32_MIN cannot occur, and a*b >= 0 exactly when a >= 0 or b == 0.
    `a` appears twice in the result.
    """
    bc = _int(b)
    if bc is not None:
        b = tirx.const(bc, "int32")
    nonneg = (a >= 0) if bc is not None and bc > 0 else tirx.Or(a >= 0, b == 0)
    nudge = tirx.Select(nonneg, tirx.const(1 << 30, "int64"), tirx.const(1 - (1 << 30), "int64"))
    ab = _i64(a) * _i64(b)
    return tirx.truncdiv(ab + nudge, tirx.const(1 << 31, "int64")).astype("int32")


def rounding_divide_by_pot_tir(x: tirx.PrimExpr, exponent: tirx.PrimExpr | int) -> tirx.PrimExpr:
    """RoundingDivideByPOT(x, exponent): x / 2^exponent rounded half away from zero.

    int32, 0 <= exponent < 32. `x` appears three times in the result.
    """
    one = tirx.const(1, "int32")
    zero = tirx.const(0, "int32")
    ec = _int(exponent)
    if ec == 0:
        return x
    if ec is not None:
        mask = tirx.const((1 << ec) - 1, "int32")
        threshold = tirx.const(((1 << ec) - 1) >> 1, "int32") + tirx.Select(x < 0, one, zero)
        e = tirx.const(ec, "int32")
    else:
        # 2^e - 1 in int64 (1 << 31 does not fit int32); the result fits
        one64 = tirx.const(1, "int64")
        mask = (tirx.shift_left(one64, _i64(exponent)) - one64).astype("int32")
        threshold = tirx.shift_right(mask, one) + tirx.Select(x < 0, one, zero)
        e = exponent
    remainder = tirx.bitwise_and(x, mask)
    return tirx.shift_right(x, e) + tirx.Select(remainder > threshold, one, zero)


def left_shift_tir(x: tirx.PrimExpr, shift: tirx.PrimExpr | int) -> tirx.PrimExpr:
    """x * 2^max(shift, 0), the first step of MultiplyByQuantizedMultiplier (int64, wrapped to int32)."""
    sc = _int(shift)
    if sc is not None:
        return x if sc <= 0 else tirx.shift_left(_i64(x), tirx.const(sc, "int64")).astype("int32")
    left = tirx.max(shift, tirx.const(0, "int32"))
    return tirx.shift_left(_i64(x), _i64(left)).astype("int32")


def right_shift_amount_tir(shift: tirx.PrimExpr | int) -> tirx.PrimExpr | int:
    """max(-shift, 0): the rounding right shift of MultiplyByQuantizedMultiplier."""
    sc = _int(shift)
    if sc is not None:
        return max(-sc, 0)
    zero = tirx.const(0, "int32")
    return tirx.max(zero - shift, zero)


def multiply_by_quantized_multiplier_tir(
    x: tirx.PrimExpr, multiplier: tirx.PrimExpr | int, shift: tirx.PrimExpr | int
) -> tirx.PrimExpr:
    """TFLite MultiplyByQuantizedMultiplier(x, multiplier, shift) on int32 expressions (multiplier >= 0).

    = RDBPOT(SRDHM(x << max(shift, 0), multiplier), max(-shift, 0)). The left shift is done in int64
    and wrapped to int32 (TFLite does it in int32; it never overflows for real models). `x` appears six
    times in the result: for a large x, store the SRDHM result first (as `te_stage` does, in a
    one-element buffer). Let-binding is not an option: Let variables trip NarrowDataType's bound
    memoization in TVM 0.27 ("Detected bound ... conflicts with memorization").
    """
    return rounding_divide_by_pot_tir(srdhm_tir(left_shift_tir(x, shift), multiplier), right_shift_amount_tir(shift))


# -- numpy -------------------------------------------------------------------------------------------


def srdhm(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """SaturatingRoundingDoublingHighMul on int32 arrays (numpy reference, any b)."""
    a = np.asarray(a, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    ab = a * b
    nudge = np.where(ab >= 0, 1 << 30, 1 - (1 << 30))
    num = ab + nudge
    high = np.where(num >= 0, num // (1 << 31), -((-num) // (1 << 31)))  # truncating division
    overflow = (a == b) & (a == INT32_MIN)
    return np.where(overflow, INT32_MAX, high).astype(np.int32)


def rounding_divide_by_pot(x: np.ndarray, exponent: np.ndarray) -> np.ndarray:
    """RoundingDivideByPOT on int32 arrays (numpy reference)."""
    x = np.asarray(x, dtype=np.int64)
    e = np.asarray(exponent, dtype=np.int64)
    mask = (np.int64(1) << e) - 1
    remainder = x & mask
    threshold = (mask >> 1) + (x < 0)
    return ((x >> e) + (remainder > threshold)).astype(np.int32)


def multiply_by_quantized_multiplier(x: np.ndarray, multiplier: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """TFLite MultiplyByQuantizedMultiplier on int32 arrays (numpy reference), broadcasting."""
    x = np.asarray(x, dtype=np.int64)
    shift = np.asarray(shift, dtype=np.int64)
    left = np.maximum(shift, 0)
    right = np.maximum(-shift, 0)
    shifted = (x << left).astype(np.int32)  # wraps like the TIR version
    return rounding_divide_by_pot(srdhm(shifted, multiplier), right)


def _round_half_away(x: float) -> int:
    """std::round (TfLiteRound): halves away from zero; Python's round() is half-to-even."""
    return int(np.sign(x) * np.floor(abs(x) + 0.5))


def quantize_multiplier(real: float) -> tuple[int, int]:
    """TFLite QuantizeMultiplier: real = multiplier * 2^(shift - 31), multiplier in [2^30, 2^31)."""
    if real == 0.0:
        return 0, 0
    mant, exp = np.frexp(real)
    q = _round_half_away(mant * (1 << 31))
    if q == 1 << 31:
        q //= 2
        exp += 1
    if exp < -31:
        return 0, 0
    return q, int(exp)


def quantized_activation_range(activation: str, scale: float, zero_point: int) -> tuple[int, int]:
    """TFLite CalculateActivationRangeQuantized for int8: the clamp bounds of none / relu / relu6."""
    lo, hi = -128, 127
    if activation == "relu":
        lo = max(lo, zero_point)
    elif activation == "relu6":
        lo = max(lo, zero_point)
        hi = min(hi, zero_point + _round_half_away(6.0 / scale))
    elif activation != "none":
        raise ValueError(f"unknown activation {activation!r}")
    return lo, hi
