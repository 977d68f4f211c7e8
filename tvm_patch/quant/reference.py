"""numpy references of TFLite's int8 kernels (the test oracle) and the compile-time tables (softmax's
exponentials, logistic and hard swish LUTs) the TE computes gather from."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from tvm_patch.quant.params import (AddParams, HardSwishParams, INT32_MAX, INT32_MIN, LOGISTIC_INPUT_INTEGER_BITS,
                                    LogisticParams, MulParams, QRANGE, SOFTMAX_ACCUMULATION_INTEGER_BITS,
                                    SOFTMAX_SCALED_DIFF_INTEGER_BITS, SoftmaxParams)
from tvm_patch.quant.fixedpoint import (NP, exp_on_negative_values, get_reciprocal, i64, logistic_fixed_point, mbqm,
                                        rdbpot, rescale, sat_lshift16, sdhm16, srdhm, srdhm16)


def srdhm_ref(a: Any, b: Any) -> np.ndarray:
    """numpy SaturatingRoundingDoublingHighMul on int32 values (returns int64 array of int32 values)."""
    return srdhm(NP, i64(a), i64(b))


def rounding_divide_by_pot_ref(x: Any, exponent: Any) -> np.ndarray:
    """numpy RoundingDivideByPOT."""
    return rdbpot(NP, i64(x), i64(exponent))


def multiply_by_quantized_multiplier_ref(x: Any, multiplier: Any, shift: Any) -> np.ndarray:
    """numpy MultiplyByQuantizedMultiplier (double rounding); multiplier/shift may broadcast (per channel)."""
    return mbqm(NP, i64(x), i64(multiplier), i64(shift))


def requantize_ref(
    acc: Any, multiplier: Any, shift: Any, output_zero_point: int, act_min: int, act_max: int
) -> np.ndarray:
    """Accumulator -> clamp(MBQM(acc) + zp): the tail of TFLite's int8 conv / depthwise / fully connected."""
    r = multiply_by_quantized_multiplier_ref(acc, multiplier, shift) + int(output_zero_point)
    return np.clip(r, act_min, act_max)


def add_ref(x1: Any, x2: Any, p: AddParams) -> np.ndarray:
    """numpy TFLite int8 ADD (broadcasting like numpy)."""
    v1 = (i64(x1) + p.input1_offset) << p.left_shift
    v2 = (i64(x2) + p.input2_offset) << p.left_shift
    s1 = mbqm(NP, NP.to32(v1), i64(p.input1_multiplier), i64(p.input1_shift))
    s2 = mbqm(NP, NP.to32(v2), i64(p.input2_multiplier), i64(p.input2_shift))
    raw = mbqm(NP, NP.to32(s1 + s2), i64(p.output_multiplier), i64(p.output_shift)) + p.output_offset
    return np.clip(raw, p.act_min, p.act_max)


def mul_ref(x1: Any, x2: Any, p: MulParams) -> np.ndarray:
    """numpy TFLite int8 MUL."""
    prod = NP.to32((i64(x1) + p.input1_offset) * (i64(x2) + p.input2_offset))
    raw = mbqm(NP, prod, i64(p.multiplier), i64(p.shift)) + p.output_offset
    return np.clip(raw, p.act_min, p.act_max)


def softmax_ref(x: Any, p: SoftmaxParams, output_dtype: str = "int8") -> np.ndarray:
    """numpy TFLite int8 softmax over the last axis (output scale 1/256, zero point = dtype min)."""
    x = i64(x)
    qmin, qmax = QRANGE[output_dtype]
    diff = x - x.max(axis=-1, keepdims=True)
    valid = diff >= p.diff_min
    d = np.maximum(diff, p.diff_min)
    rescaled = srdhm(NP, NP.to32(d << p.input_left_shift), i64(p.input_multiplier))
    e = exp_on_negative_values(NP, rescaled, SOFTMAX_SCALED_DIFF_INTEGER_BITS)
    contrib = np.where(valid, rescale(NP, e, 0, SOFTMAX_ACCUMULATION_INTEGER_BITS), 0)
    total = NP.to32(contrib.sum(axis=-1, keepdims=True))
    scale, nbits = get_reciprocal(NP, total, SOFTMAX_ACCUMULATION_INTEGER_BITS)
    bits = 8 if output_dtype in ("int8", "uint8") else 16
    out = rdbpot(NP, srdhm(NP, scale, e), nbits + 31 - bits) + qmin
    return np.where(valid, np.clip(out, qmin, qmax), qmin)


def logistic_ref(x: Any, p: LogisticParams) -> np.ndarray:
    """numpy TFLite Micro int8 logistic (output scale 1/256, zero point -128)."""
    v = i64(x) - p.input_zero_point
    clamped = np.clip(v, -p.input_range_radius + 1, p.input_range_radius - 1)
    q4 = mbqm(NP, clamped, i64(p.input_multiplier), i64(p.input_left_shift))
    q0 = logistic_fixed_point(NP, q4, LOGISTIC_INPUT_INTEGER_BITS)
    out = np.clip(rdbpot(NP, q0, 31 - 8) - 128, -128, 127)
    out = np.where(v <= -p.input_range_radius, -128, out)
    return np.where(v >= p.input_range_radius, 127, out)


def mean_ref(x: Any, axes: Sequence[int], input_zero_point: int, multiplier: int, shift: int,
             output_zero_point: int, dtype: str = "int8", keepdims: bool = True) -> np.ndarray:
    """numpy TFLite int8 MEAN (multiplier/shift from `mean_multiplier`)."""
    x = i64(x)
    n = int(np.prod([x.shape[a] for a in axes]))
    s = NP.to32(x.sum(axis=tuple(axes), keepdims=keepdims) - int(input_zero_point) * n)
    qmin, qmax = QRANGE[dtype]
    return np.clip(mbqm(NP, s, i64(multiplier), i64(shift)) + int(output_zero_point), qmin, qmax)


def avg_pool_round_ref(acc: Any, count: Any) -> np.ndarray:
    """TFLite's average-pool rounding of a window sum: half away from zero, C division."""
    acc, count = i64(acc), i64(count)
    num = np.where(acc > 0, acc + count // 2, acc - count // 2)
    return np.sign(num) * (np.abs(num) // count)


def softmax_exp_table(p: SoftmaxParams) -> np.ndarray:
    """exp(-(d)) in Q0.31 for d = max - x in [0, 255], exactly as TFLite's int8 softmax computes it
    (0 where TFLite skips the element: x - max < diff_min). int32[256]."""
    diff = -np.arange(256, dtype=np.int64)
    d = np.maximum(diff, p.diff_min)
    rescaled = srdhm(NP, NP.to32(d << p.input_left_shift), i64(p.input_multiplier))
    e = exp_on_negative_values(NP, rescaled, SOFTMAX_SCALED_DIFF_INTEGER_BITS)
    return np.where(diff >= p.diff_min, e, 0).astype(np.int32)


def logistic_table(p: LogisticParams, in_dtype: str = "int8") -> np.ndarray:
    """TFLite Micro's int8 logistic evaluated for every input value (`logistic_ref`): int8[256], entry k
    for input value qmin + k."""
    qmin, qmax = QRANGE[in_dtype]
    return logistic_ref(np.arange(qmin, qmax + 1), p).astype(np.int8)


def hard_swish_ref(x: Any, p: HardSwishParams, dtype: str = "int8") -> np.ndarray:
    """numpy TFLite int8 HARD_SWISH (reference kernel arithmetic, int16 fixed point)."""
    qmin, qmax = QRANGE[dtype]
    v = i64(x) - p.input_zero_point
    hires = v * (1 << 7)
    preshift_out = srdhm16(hires, p.output_multiplier_fixedpoint_int16)
    r = hires
    if p.reluish_multiplier_exponent > 0:
        r = sat_lshift16(r, p.reluish_multiplier_exponent - 1)
    r = srdhm16(r, p.reluish_multiplier_fixedpoint_int16)
    if p.reluish_multiplier_exponent > 0:
        r = sat_lshift16(r, 1)
    if p.reluish_multiplier_exponent < 0:
        r = rounding_divide_by_pot_ref(r, -p.reluish_multiplier_exponent)
    r = (r + (1 << 15)) >> 1
    pre = sdhm16(r, preshift_out)
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


def acc_logistic_ref(acc: Any, multiplier: Any, shift: Any, out_multiplier: int, out_shift: int,
                     output_zero_point: int, act_min: int, act_max: int) -> np.ndarray:
    """numpy version of `acc_logistic_te` (multiplier/shift broadcast against acc)."""
    acc, m, s = i64(acc), i64(multiplier), i64(shift)
    tr = 31 - s
    r = (acc * m + (np.int64(1) << (tr - 1))) >> tr
    q4 = np.clip(r, INT32_MIN, INT32_MAX)
    q0 = logistic_fixed_point(NP, q4, LOGISTIC_INPUT_INTEGER_BITS)
    return np.clip(mbqm(NP, q0, i64(out_multiplier), i64(out_shift)) + int(output_zero_point), act_min, act_max)
