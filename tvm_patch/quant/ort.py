"""onnxruntime's requantization (LowerToInteger(rounding="onnxruntime")), emulated with integer operations.

onnxruntime's CPU int8 kernels (MLAS, x86-64) requantize in float32 (measured against onnxruntime 1.31 in
tests/test_onnxruntime_rounding.py):

* QLinearConv (and the symmetric conv / depthwise kernels): exact int32 accumulator, per output channel
  ``scale = float32(float32(x_scale * w_scale[c]) / y_scale)``, then ``float32(float(acc) * scale)``
  rounded half to even (cvtps2dq), plus the zero point, saturated;
* QLinearGlobalAveragePool: ``acc = sum - zp_x * n``, ``scale = float32(x_scale / float32(y_scale * n))``,
  the same rounding;
* QLinearAdd (int8, AVX2/AVX-512 kernel): ``rA = a_scale / c_scale``, ``rB = b_scale / c_scale``,
  ``F = zp_c - (rA * zp_a + rB * zp_b)`` (float32), ``y = rint(fma(a, rA, float32(F + float32(b * rB))))``
  on the raw int8 values, saturated.

Each float32 operation rounds an exactly known rational to 24 significant bits, half to even: with the
float32 constants split into integer mantissa and power of two at compile time, the same roundings are
integer shifts of an exact int64 value. `_ort_round_scaled` is that computation, written once over the
backends of this module (numpy reference, TE).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Sequence

import numpy as np
from tvm import te

from tvm_patch.quant.params import QRANGE
from tvm_patch.quant.fixedpoint import NP, TEOps, i64, is_int
from tvm_patch.quant.te import bcast_index, clamp32, sum_te


def float32_mantissa_exponent(x: float) -> tuple[int, int]:
    """A positive finite float32 ``x`` as ``m * 2**e`` with an integer ``m`` in [2^23, 2^24)."""
    f = float(np.float32(x))
    if not (f > 0.0 and math.isfinite(f)):
        raise ValueError(f"float32_mantissa_exponent({x!r}): needs a positive finite value")
    fr, ex = math.frexp(f)
    m = int(fr * (1 << 24))
    return m, ex - 24


def _as64(B, v):
    return B.c64(int(v)) if is_int(v) else B.to64(v)


def _rhe_shift(B, x, k):
    """round(x / 2^k), ties to even, for int64 0 <= x < 2^62 and k >= 0 (python int or int64 expression):
    ``(x + 2^(k-1) - 1 + bit k of x) >> k``; `x` appears twice (no exponential growth of TE expressions)."""
    if is_int(k):
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
        if is_int(s):
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
    acc = i64(acc)
    m, s = np.broadcast_arrays(i64(mantissa), i64(shift))
    r = _ort_round_scaled(NP, acc, np.broadcast_to(m, np.broadcast(acc, m).shape),
                          np.broadcast_to(s, np.broadcast(acc, s).shape), round_value=True)
    return np.clip(np.clip(r, -(1 << 30), 1 << 30) + int(output_zero_point), act_min, act_max)


def ort_requantize_te(acc: te.Tensor, mantissa: int | te.Tensor, shift: int | te.Tensor, output_zero_point: int,
                      axis: int = -1, acc_bound: int = 1 << 31) -> te.Tensor:
    """int32 accumulator -> rint(float32(float32(acc) * scale)) + zp as int32, all integer (the clamp and
    cast follow in Relax). `mantissa` / `shift`: python ints or 1-D int32 tensors indexed along `axis`.
    `acc_bound`: a bound of |acc| known at compile time; above 2^24 the int32 -> float32 conversion is
    rounded too (an extra stage)."""
    ax = axis % len(acc.shape)
    src = acc
    if acc_bound > 1 << 24:
        def conv(*i):
            B = TEOps()
            v = B.to64(acc[i])
            a = _round_to_float32_31(B, B.select(B.lt(v, B.c64(0)), B.c64(0) - v, v))
            a = B.minimum(a, B.c64((1 << 31) - 128))
            return B.to32(B.select(B.lt(v, B.c64(0)), B.c64(0) - a, a))

        src = te.compute(acc.shape, conv, name="ort_acc_to_float32")  # |result| <= 2^31 - 128: int32

    def f(*i):
        B = TEOps()
        m = mantissa if is_int(mantissa) else mantissa[i[ax]]
        s = shift if is_int(shift) else shift[i[ax]]
        return _sat64_to32(B, _ort_round_scaled(B, src[i], m, s)) + B.c32(output_zero_point)

    return te.compute(acc.shape, f, name="ort_requantize")


def ort_mean_te(x: te.Tensor, axes: Sequence[int], keepdims: bool, input_zero_point: int, mantissa: int,
                shift: int, output_zero_point: int, out_dtype: str, act_min: int, act_max: int) -> te.Tensor:
    """onnxruntime's QLinearGlobalAveragePool arithmetic over `axes`: int32 sum minus zp*n, float32 scale
    (`ort_mean_multiplier`) emulated exactly, plus zp, saturated."""
    shape = [int(d) for d in x.shape]
    axes = sorted(a % len(shape) for a in axes)
    n = int(np.prod([shape[a] for a in axes]))
    s, out_shape = sum_te(x, axes, keepdims)

    def f(*i):
        B = TEOps()
        v = s[i] - B.c32(int(input_zero_point) * n)
        r = _sat64_to32(B, _ort_round_scaled(B, v, mantissa, shift)) + B.c32(output_zero_point)
        return clamp32(r, act_min, act_max).astype(out_dtype)

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
    a, b = np.broadcast_arrays(i64(a), i64(b))
    tb = np.asarray(p.b_table, dtype=np.int64)[b - qmin]
    return np.clip(_ort_add_core(NP, a, tb, p), p.act_min, p.act_max)


def ort_add_te(a: te.Tensor, b: te.Tensor, b_table: te.Tensor, p: OrtAddParams, out_shape: Sequence[int],
               out_dtype: str = "int8") -> te.Tensor:
    """onnxruntime's int8 QLinearAdd, bit for bit, with integer operations (`ort_add_params`); `b_table` is
    the int64 constant ``p.b_table``."""
    qmin = QRANGE[p.in_dtype][0]

    def f(*i):
        B = TEOps()
        va = a[tuple(bcast_index(a.shape, i))].astype("int32")
        vb = b[tuple(bcast_index(b.shape, i))].astype("int32")
        r = _sat64_to32(B, _ort_add_core(B, va, b_table[vb - qmin], p))
        return clamp32(r, p.act_min, p.act_max).astype(out_dtype)

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
