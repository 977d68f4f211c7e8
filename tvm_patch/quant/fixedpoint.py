"""The fixed-point core, written once over two backends: `NumpyOps` (int64 arrays holding int32 values,
gemmlowp's literal formulations) and `TEOps` / `StagedTEOps` (TIR PrimExprs, shorter equivalent
formulations). gemmlowp / TFLite primitives: SRDHM, RDBPOT, MultiplyByQuantizedMultiplier, exp, logistic,
reciprocal; the 16-bit helpers of hard swish."""

from __future__ import annotations

import operator
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Sequence

import numpy as np
import tvm
import tvm_ffi
from tvm import te, tirx

from tvm_patch.quant.params import INT32_MAX, INT32_MIN


def _unchanged(x: Any) -> Any:
    """The identity: `bind` and `wrap` of the backends that inline every value."""
    return x


class NumpyOps:
    """numpy backend: every value is an int64 array whose content is an int32 (wrapped like C's casts).
    It uses gemmlowp's literal formulations, so tests comparing it with the TE backend (compact
    formulations) check the algebra too."""

    def srdhm(self, a, b):
        return _srdhm_literal(self, np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64))

    def rdbpot(self, x, e):
        return _rdbpot_literal(self, np.asarray(x, dtype=np.int64), np.asarray(e, dtype=np.int64))

    bind = wrap = staticmethod(_unchanged)  # values are inlined; no cast at the end

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
    lt = staticmethod(np.less)
    le = staticmethod(np.less_equal)
    gt = staticmethod(np.greater)
    ge = staticmethod(np.greater_equal)
    eq = staticmethod(np.equal)
    land = staticmethod(np.logical_and)
    minimum = staticmethod(np.minimum)
    maximum = staticmethod(np.maximum)

    @staticmethod
    def band(a, b):
        return np.bitwise_and(np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64))

    @staticmethod
    def shr(x, n):
        return np.right_shift(np.asarray(x, dtype=np.int64), np.asarray(n, dtype=np.int64))

    @staticmethod
    def shl(x, n):
        return np.left_shift(np.asarray(x, dtype=np.int64), np.asarray(n, dtype=np.int64))


def _expr_dtype(x: Any) -> str:
    """dtype of a TE TensorSlice (`.dtype`) or of a PrimExpr (TVM 0.27 PrimExprs carry it as `.ty`)."""
    return str(x.dtype if isinstance(x, te.TensorSlice) else x.ty)


class TEOps:
    """TIR backend: int32 PrimExprs, int64 where TFLite widens. Values are inlined (`bind` is the identity):
    fine for the short requantization chains; long fixed-point chains use `StagedTEOps`."""

    bind = wrap = staticmethod(_unchanged)  # values are inlined; no cast at the end
    is_tir = True  # may emit the `tvmp_requant` micro-kernel call (see `extern_requantization`)

    @classmethod
    def srdhm(cls, a, b):
        return _srdhm_compact(cls, a, b)

    @classmethod
    def rdbpot(cls, x, e):
        return _rdbpot_compact(cls, x, e)

    @staticmethod
    def c32(v: int):
        return tirx.const(int(v), "int32")

    @staticmethod
    def c64(v: int):
        return tirx.const(int(v), "int64")

    @staticmethod
    def to64(x: Any):
        if isinstance(x, (int, np.integer)):
            return tirx.const(int(x), "int64")
        return x if _expr_dtype(x) == "int64" else x.astype("int64")

    @staticmethod
    def to32(x: Any):
        if isinstance(x, (int, np.integer)):
            return tirx.const(int(x), "int32")
        return x if _expr_dtype(x) == "int32" else x.astype("int32")

    select = staticmethod(tirx.Select)
    lt = staticmethod(operator.lt)
    le = staticmethod(operator.le)
    gt = staticmethod(operator.gt)
    ge = staticmethod(operator.ge)
    eq = staticmethod(tirx.EQ)
    land = staticmethod(tirx.And)
    band = staticmethod(operator.and_)
    shr = staticmethod(operator.rshift)
    shl = staticmethod(operator.lshift)
    minimum = staticmethod(tirx.min)
    maximum = staticmethod(tirx.max)


class StagedTEOps(TEOps):
    """TIR backend for long fixed-point chains: every bound value becomes its own TE stage over `shape`
    (indexed by the enclosing compute's `index` vars), so expressions stay small. TIR `Let` would do the
    same but s_tir's CompactBufferAllocation expands let values exponentially."""

    def __init__(self, shape: Sequence[int], index: Sequence[Any], prefix: str) -> None:
        self.shape, self.index, self.prefix, self.count = list(shape), list(index), prefix, 0

    def bind(self, x: Any) -> Any:
        if is_int(x) or isinstance(x, (tirx.Var, tirx.IntImm)):
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


NP = NumpyOps()


def is_int(x: Any) -> bool:
    return isinstance(x, (int, np.integer))


def const_value(x: Any) -> int | None:
    """The value of a python / numpy / TIR integer constant, else None."""
    if is_int(x):
        return int(x)
    if type(x).__name__ == "IntImm":
        return int(x.value)
    return None


def srdhm(B, a, b):
    """SaturatingRoundingDoublingHighMul(int32 a, int32 b): round(a*b / 2^31), the only overflow
    (-2^31 * -2^31) saturating to 2^31 - 1."""
    return B.srdhm(a, b)


def rdbpot(B, x, exponent):
    """RoundingDivideByPOT(int32 x, 0 <= exponent <= 31): arithmetic shift right rounding half away from 0."""
    if is_int(exponent) and int(exponent) == 0:
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
    ca, cb = const_value(a), const_value(b)
    if ca is not None and ca != INT32_MIN or cb is not None and cb != INT32_MIN:
        return B.to32(q)
    return B.to32(B.minimum(q, B.c64(INT32_MAX)))


def _rdbpot_compact(B, x, exponent):
    """Equal to `_rdbpot_literal` for all int32 x and 0 <= e <= 31: (x + ((2^e - [x < 0]) >> 1)) >> e,
    evaluated in 64 bits."""
    neg = B.select(B.lt(x, B.c32(0)), B.c64(1), B.c64(0))
    if is_int(exponent):
        e = int(exponent)
        bias = B.c64(1 << (e - 1)) - neg
        ex = B.c64(e)
    else:
        ex = B.to64(exponent)
        bias = B.shr(B.shl(B.c64(1), ex) - neg, B.c64(1))
    return B.to32(B.shr(B.to64(x) + bias, ex))


def mbqm_shifts(B, shift):
    """(left, right) = (max(shift, 0), max(-shift, 0)): TFLite's shift split into the shift before SRDHM and
    the rounding shift after it (python ints for a constant shift)."""
    if is_int(shift):
        return max(int(shift), 0), max(-int(shift), 0)
    sh = B.bind(B.to32(shift))
    return B.maximum(sh, B.c32(0)), B.maximum(B.c32(0) - sh, B.c32(0))


def mbqm_high(B, x, multiplier, left):
    """The first rounding of MultiplyByQuantizedMultiplier: SRDHM(x * 2^left, m), the int32 multiply by 2^left
    wrapping as in C. The patch stage stores it before the second rounding (`rdbpot` by the right shift)."""
    if is_int(left):
        xs = x if left == 0 else B.to32(B.shl(B.to64(x), B.c64(left)))
    else:
        xs = B.to32(B.shl(B.to64(x), B.to64(left)))
    return srdhm(B, xs, multiplier)


def mbqm(B, x, multiplier, shift):
    """MultiplyByQuantizedMultiplier(int32 x, m, shift) of TFLite's default (double rounding) build."""
    if _EXTERN_REQUANT.get() and getattr(B, "is_tir", False):
        return tirx.call_pure_extern("int32", REQUANT_EXTERN, B.to32(x), B.to32(multiplier), B.to32(shift))
    left, right = mbqm_shifts(B, shift)
    return rdbpot(B, mbqm_high(B, x, multiplier, left), right)


# The C micro-kernel that computes `mbqm` (tvm_patch/codegen/tvmp_kernels.h), for the C export's kernels.
REQUANT_EXTERN = "tvmp_requant"
# ... and the one that computes it for a bounded x and a shift <= 0 (`mbqm_proven`; codegen.requant_kernels)
REQUANT_NARROW_EXTERN = "tvmp_requant_rs_narrow"
# ... and the one that computes it for a bounded x and a right shift only (`mbqm_bounded`)
REQUANT_BOUNDED_EXTERN = "tvmp_requant_rb"
# ... and the one that also adds the output zero point (`mbqm_bounded_zp`)
REQUANT_ZP_EXTERN = "tvmp_requant_rbz"
# ... and that one on the right shift (-shift) the export stores per channel (export/packed_constants.py)
REQUANT_ZP_RIGHT_EXTERN = "tvmp_requant_rbzr"
# |x| at most this: 2 x fits int32 (the SMMULR of tvmp_srdhm_narrow) and x * m / 2^31 plus a rounding half (<= 2^30)
# does too; the one accumulator bound of both bounded requantizations (patch stage here, per-layer kernels in
# codegen.requant_kernels.narrow_requant)
BOUNDED_ACC_MAX = (1 << 30) - 1


def mbqm_bounded(B, x, multiplier, shift):
    """`mbqm` for an x known to satisfy |x| <= BOUNDED_ACC_MAX, a shift known to lie in [-31, -1] and a multiplier
    >= 0 (facts the caller proves from its constants: a patch-stage convolution's weights, biases, shifts and
    multipliers): the same value,
    which the C micro-kernel `tvmp_requant_rb` computes with one rounding add instead of TFLite's mask and
    comparison (|SRDHM(x, m)| <= |x|, so adding 2^(right - 1) cannot overflow). The expression elsewhere."""
    if _EXTERN_REQUANT.get() and getattr(B, "is_tir", False):
        return tirx.call_pure_extern("int32", REQUANT_BOUNDED_EXTERN, B.to32(x), B.to32(multiplier), B.to32(shift))
    return mbqm(B, x, multiplier, shift)


def zero_point_fits(bound: int, zp: int, right: int) -> bool:
    """Whether `tvmp_requant_rbz` (the zero point in the rounding addend) is exact for every |x| <= bound, output zero
    point zp and right shifts up to `right` (1..31): its addend zp 2^right + 2^(right - 1) and the sum before the
    shift fit int32, |x| + 1 + |zp| 2^right + 2^(right - 1) + 1 <= 2^31 - 1 and |2 zp + 1| 2^right <= 2^31 - 1."""
    return (1 <= right <= 31 and bound + 2 + abs(zp) * 2**right + 2 ** (right - 1) <= INT32_MAX
            and abs(2 * zp + 1) * 2**right <= INT32_MAX)


def mbqm_bounded_zp(B, x, multiplier, shift, zp: int):
    """`mbqm_bounded` plus the output zero point zp, for an x and shifts where also `zero_point_fits` (the caller
    proves it from its constants): one `tvmp_requant_rbz` call in the C export's kernels, the expression elsewhere."""
    if _EXTERN_REQUANT.get() and getattr(B, "is_tir", False):
        return tirx.call_pure_extern("int32", REQUANT_ZP_EXTERN, B.to32(x), B.to32(multiplier), B.to32(shift), B.c32(zp))
    return mbqm(B, x, multiplier, shift) + B.c32(zp)


def mbqm_proven(B, x, multiplier: int, shift: int, bound: int, zp: int = 0):
    """`mbqm`(x, multiplier, shift) + zp for constants and an x its caller proves |x| <= bound: in the C export's
    kernels the cheapest call those facts allow (`tvmp_requant_rbz` where also `zero_point_fits`, else
    `tvmp_requant_rb` for a shift in [-31, -1] and a multiplier >= 0, `tvmp_requant_rs_narrow` for a shift <= 0,
    all for bound <= BOUNDED_ACC_MAX; else `tvmp_requant`), the same value."""
    narrow = bound <= BOUNDED_ACC_MAX
    if narrow and -31 <= shift <= -1 and multiplier >= 0:
        if zp and zero_point_fits(bound, zp, -shift):
            return mbqm_bounded_zp(B, x, multiplier, shift, zp)
        value = mbqm_bounded(B, x, multiplier, shift)
    elif narrow and shift <= 0 and _EXTERN_REQUANT.get() and getattr(B, "is_tir", False):
        value = tirx.call_pure_extern("int32", REQUANT_NARROW_EXTERN, B.to32(x), B.c32(multiplier), B.c32(shift))
    else:
        value = mbqm(B, x, multiplier, shift)
    return value + B.c32(zp) if zp else value


_EXTERN_REQUANT: ContextVar[bool] = ContextVar("tvmp_extern_requant", default=False)


# A compiler barrier (tvmp_kernels.h) the patch stage puts between its layers' loop nests in the C export's kernels
BARRIER_EXTERN = "tvmp_barrier"


def c_barrier() -> Any:
    """Under `extern_requantization` (the C export's kernels): a `tvmp_barrier()` statement, after which GCC keeps no
    memory value in a register (a hint for its register allocation: the patch stage's one long function otherwise
    keeps values of one layer's nest live, spilled, across the next); None elsewhere. `expand_extern_requantization`
    drops it for TVM's own build."""
    if not _EXTERN_REQUANT.get():
        return None
    return tirx.Evaluate(tirx.call_extern("void", BARRIER_EXTERN))


def is_c_barrier(stmt: Any) -> bool:
    """Whether ``stmt`` is a `c_barrier` statement."""
    v = stmt.value if isinstance(stmt, tirx.Evaluate) else None
    return isinstance(v, tvm.ir.Call) and isinstance(v.op, tvm.ir.Op) and v.op.name.endswith("call_extern") \
        and str(v.args[0].value) == BARRIER_EXTERN


@contextmanager
def extern_requantization() -> Iterator[None]:
    """Inside: TIR built by `mbqm` calls the C micro-kernel `tvmp_requant` instead of spelling it out (the C
    export's kernels); `expand_extern_requantization` turns the calls back for TVM's own build."""
    token = _EXTERN_REQUANT.set(True)
    try:
        yield
    finally:
        _EXTERN_REQUANT.reset(token)


def expand_extern_requantization(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """``func`` with every `tvmp_requant` (and `tvmp_requant_rb`, `tvmp_requant_rbz`) call replaced by the TIR
    expression it stands for, and no `c_barrier` (a no-op there)."""

    def on_call(c: Any) -> Any:
        if not (isinstance(c.op, tvm.ir.Op) and c.op.name.endswith("call_pure_extern")
                and str(c.args[0].value) in (REQUANT_EXTERN, REQUANT_NARROW_EXTERN, REQUANT_BOUNDED_EXTERN,
                                             REQUANT_ZP_EXTERN)):
            return c
        x, m, s = c.args[1:4]
        mv, sv = const_value(m), const_value(s)
        value = mbqm(TEOps, x, m if mv is None else mv, s if sv is None else sv)
        return value + c.args[4] if str(c.args[0].value) == REQUANT_ZP_EXTERN else value

    def on_evaluate(e: Any) -> Any:
        return tirx.Evaluate(tirx.const(0, "int32")) if is_c_barrier(e) else e

    return tvm_ffi.structural_map(func, [(tvm.ir.Call, on_call), (tirx.Evaluate, on_evaluate)])


def _sat_shift_left(B, x, exponent: int):
    """gemmlowp SaturatingRoundingMultiplyByPOT<exponent > 0>: left shift saturating to int32."""
    x = B.bind(x)
    thr = (1 << (31 - exponent)) - 1
    shifted = B.to32(B.shl(B.to64(x), B.c64(exponent)))
    r = B.select(B.gt(x, B.c32(thr)), B.c32(INT32_MAX), shifted)
    return B.select(B.lt(x, B.c32(-thr)), B.c32(INT32_MIN), r)


def rescale(B, x, src_int_bits: int, dst_int_bits: int):
    """gemmlowp Rescale<dst>(FixedPoint<src>): multiply the raw value by 2^(src - dst)."""
    e = src_int_bits - dst_int_bits
    if e > 0:
        return _sat_shift_left(B, x, e)
    if e < 0:
        return rdbpot(B, x, -e)
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
    x2 = B.bind(srdhm(B, x, x))
    x3 = srdhm(B, x2, x)
    x4 = srdhm(B, x2, x2)
    x4_over_4 = rdbpot(B, x4, 2)
    poly = rdbpot(B, srdhm(B, x4_over_4 + x3, constant_1_over_3) + x2, 1)
    return constant_term + srdhm(B, constant_term, x + poly)


_EXP_BARREL = ((-2, 1672461947), (-1, 1302514674), (0, 790015084), (1, 290630308), (2, 39332535), (3, 720401),
               (4, 242))


def exp_on_negative_values(B, a, integer_bits: int):
    """gemmlowp exp_on_negative_values: FixedPoint<int32, integer_bits> (a <= 0) -> Q0.31."""
    a = B.bind(a)
    frac = 31 - integer_bits
    one_quarter = 1 << (frac - 2)
    a_mod_quarter_minus_one_quarter = B.bind(B.band(a, B.c32(one_quarter - 1)) - B.c32(one_quarter))
    result = B.bind(_exp_on_interval_between_negative_one_quarter_and_0_excl(
        B, rescale(B, a_mod_quarter_minus_one_quarter, integer_bits, 0)))
    remainder = B.bind(a_mod_quarter_minus_one_quarter - a)
    for exponent, multiplier in _EXP_BARREL:
        if integer_bits > exponent:
            bit = B.c32(1 << (frac + exponent))
            result = B.bind(B.select(B.eq(B.band(remainder, bit), B.c32(0)), result,
                                     srdhm(B, result, B.c32(multiplier))))
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
    x = B.bind(c48_17 + srdhm(B, half_denominator, cneg32_17))
    for _ in range(3):
        half_denominator_times_x = srdhm(B, half_denominator, x)
        one_minus = one_f2 - half_denominator_times_x
        x = B.bind(x + rescale(B, srdhm(B, x, one_minus), 4, 2))
    return rescale(B, x, 1, 0)  # ExactMulByPot<-1>: Q2.29 read as Q1.30, then Rescale<0>


def logistic_fixed_point(B, a, integer_bits: int):
    """gemmlowp logistic: FixedPoint<int32, integer_bits> -> Q0.31."""
    a = B.bind(a)
    positive = B.gt(a, B.c32(0))
    abs_input = B.select(positive, a, B.c32(0) - a)
    r_pos = B.bind(_one_over_one_plus_x_for_x_in_0_1(
        B, exp_on_negative_values(B, B.c32(0) - abs_input, integer_bits)))
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


def get_reciprocal(B, x, x_integer_digits: int):
    """TFLite GetReciprocal: (1/x as Q0.31 scaled into [0.5, 1), num_bits_over_unit) for x > 0."""
    x = B.bind(x)
    headroom_plus_one = B.bind(_count_leading_zeros_positive(B, x))
    num_bits_over_unit = B.c32(x_integer_digits) - headroom_plus_one
    shifted_sum_minus_one = B.to32(B.shl(B.to64(x), B.to64(headroom_plus_one)) - B.c64(1 << 31))
    return _one_over_one_plus_x_for_x_in_0_1(B, shifted_sum_minus_one), num_bits_over_unit


def i64(x: Any) -> np.ndarray:
    return np.asarray(x, dtype=np.int64)


def srdhm16(a: np.ndarray, b: Any) -> np.ndarray:
    """gemmlowp SaturatingRoundingDoublingHighMul for int16."""
    a, b = i64(a), i64(b)
    ab = a * b
    t = ab + np.where(ab >= 0, 1 << 14, 1 - (1 << 14))
    q = np.sign(t) * (np.abs(t) >> 15)  # C division truncates
    return np.where((a == b) & (a == -32768), 32767, q)


def sdhm16(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """TFLite SaturatingDoublingHighMul for int16 (truncating, not rounding)."""
    a, b = i64(a), i64(b)
    ab = a * b
    q = np.sign(ab) * (np.abs(ab) >> 15)
    return np.where((a == b) & (a == -32768), 32767, q)


def sat_lshift16(v: np.ndarray, amount: int) -> np.ndarray:
    return np.clip(i64(v) * (1 << amount), -32768, 32767)
