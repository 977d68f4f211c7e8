"""Compile-time parameters of TFLite's int8 kernels (TFLite Prepare() semantics; doubles where TFLite uses
doubles): multipliers and shifts, activation ranges, the per-op parameter records."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np


INT32_MIN = -(1 << 31)


INT32_MAX = (1 << 31) - 1


QRANGE = {"int8": (-128, 127), "uint8": (0, 255), "int16": (-32768, 32767), "int32": (INT32_MIN, INT32_MAX)}


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
