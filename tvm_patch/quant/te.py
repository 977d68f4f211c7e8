"""TE compute definitions of TFLite's int8 kernels, used by LowerToInteger through BlockBuilder.emit_te."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from tvm import te, tirx

from tvm_patch.quant.params import (AddParams, INT32_MAX, INT32_MIN, LOGISTIC_INPUT_INTEGER_BITS, MulParams, QRANGE,
                                    SOFTMAX_ACCUMULATION_INTEGER_BITS)
from tvm_patch.quant.fixedpoint import (StagedTEOps, TEOps, get_reciprocal, is_int, logistic_fixed_point, mbqm,
                                        rdbpot, rescale, srdhm)


def clamp32(x: Any, lo: int, hi: int) -> Any:
    """min(max(x, lo), hi) on an int32 PrimExpr."""
    return tirx.max(tirx.min(x, tirx.const(hi, "int32")), tirx.const(lo, "int32"))


def bcast_index(in_shape: Sequence[int], out_idx: Sequence[Any]) -> list:
    """Numpy broadcasting: index of an input element for an output index."""
    off = len(out_idx) - len(in_shape)
    return [0 if int(d) == 1 else out_idx[off + i] for i, d in enumerate(in_shape)]


def requantize_te(acc: te.Tensor, multiplier: int | te.Tensor, shift: int | te.Tensor, output_zero_point: int,
                  axis: int = -1) -> te.Tensor:
    """int32 accumulator -> MBQM(acc, m, shift) + zp (int32; the clamp and cast follow in Relax).

    `multiplier` / `shift` are python ints (per tensor) or 1-D int32 TE tensors indexed along `axis`."""
    ndim = len(acc.shape)
    ax = axis % ndim

    def f(*i):
        B = TEOps()
        m = multiplier if is_int(multiplier) else multiplier[i[ax]]
        s = shift if is_int(shift) else shift[i[ax]]
        return B.wrap(mbqm(B, acc[i], m, s) + B.c32(output_zero_point))

    return te.compute(acc.shape, f, name="requantize")


def requantize_int_te(x: te.Tensor, input_zero_point: int, multiplier: int, shift: int, output_zero_point: int,
                      out_dtype: str, act_min: int, act_max: int) -> te.Tensor:
    """Quantized tensor -> other (scale, zero point): TFLite QUANTIZE/Requantize arithmetic, one pass."""

    def f(*i):
        B = TEOps()
        v = x[i].astype("int32") - B.c32(input_zero_point)
        r = mbqm(B, v, multiplier, shift) + B.c32(output_zero_point)
        return B.wrap(clamp32(r, act_min, act_max)).astype(out_dtype)

    return te.compute(x.shape, f, name="q_requantize")


def add_te(a: te.Tensor, b: te.Tensor, p: AddParams, out_shape: Sequence[int], out_dtype: str = "int8",
           negate_b: bool = False) -> te.Tensor:
    """TFLite int8 ADD (SUB with `negate_b`), with numpy broadcasting, straight to the output dtype."""

    def f(*i):
        B = TEOps()
        va = a[tuple(bcast_index(a.shape, i))].astype("int32") + B.c32(p.input1_offset)
        vb = b[tuple(bcast_index(b.shape, i))].astype("int32") + B.c32(p.input2_offset)
        sa = mbqm(B, va * B.c32(1 << p.left_shift), p.input1_multiplier, p.input1_shift)
        sb = mbqm(B, vb * B.c32(1 << p.left_shift), p.input2_multiplier, p.input2_shift)
        raw = sa - sb if negate_b else sa + sb
        r = mbqm(B, raw, p.output_multiplier, p.output_shift) + B.c32(p.output_offset)
        return B.wrap(clamp32(r, p.act_min, p.act_max)).astype(out_dtype)

    return te.compute(tuple(out_shape), f, name="q_sub" if negate_b else "q_add")


def mul_te(a: te.Tensor, b: te.Tensor, p: MulParams, out_shape: Sequence[int], out_dtype: str = "int8") -> te.Tensor:
    """TFLite int8 MUL with numpy broadcasting."""

    def f(*i):
        B = TEOps()
        va = a[tuple(bcast_index(a.shape, i))].astype("int32") + B.c32(p.input1_offset)
        vb = b[tuple(bcast_index(b.shape, i))].astype("int32") + B.c32(p.input2_offset)
        r = mbqm(B, va * vb, p.multiplier, p.shift) + B.c32(p.output_offset)
        return B.wrap(clamp32(r, p.act_min, p.act_max)).astype(out_dtype)

    return te.compute(tuple(out_shape), f, name="q_mul")


def avg_pool2d_te(x: te.Tensor, pool_size: Sequence[int], strides: Sequence[int], padding: Sequence[int],
                  layout: str, act_min: int, act_max: int, out_dtype: str) -> te.Tensor:
    """TFLite int8 average pooling: window sum over in-bounds taps, divided by their count rounding half
    away from zero (input and output share scale and zero point). padding = (top, left, bottom, right)."""
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
        B = TEOps()
        if padded:
            cnt = B.bind(count_1d(i[hax], sh, pt, fh, H) * count_1d(i[wax], sw, pl, fw, W))
        else:
            cnt = tirx.const(fh * fw, "int32")
        a = B.bind(acc[i])
        half = tirx.truncdiv(cnt, 2)
        num = tirx.Select(a > 0, a + half, a - half)
        return B.wrap(clamp32(tirx.truncdiv(num, cnt), act_min, act_max)).astype(out_dtype)

    return te.compute(out_shape, f, name="q_avg_pool2d")


def sum_te(x: te.Tensor, axes: Sequence[int], keepdims: bool) -> tuple[te.Tensor, list[int]]:
    """The int32 sum of int8 ``x`` over ``axes`` (a MEAN's numerator) and its shape."""
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
    shape = [int(d) for d in x.shape]
    axes = sorted(a % len(shape) for a in axes)
    n = int(np.prod([shape[a] for a in axes]))
    qmin, qmax = QRANGE[out_dtype]
    qmin = qmin if act_min is None else int(act_min)
    qmax = qmax if act_max is None else int(act_max)
    s, out_shape = sum_te(x, axes, keepdims)

    def f(*i):
        B = TEOps()
        v = s[i] - B.c32(int(input_zero_point) * n)
        r = mbqm(B, v, multiplier, shift) + B.c32(output_zero_point)
        return B.wrap(clamp32(r, qmin, qmax)).astype(out_dtype)

    return te.compute(out_shape, f, name="q_mean")


def softmax_te(x: te.Tensor, exp_table: te.Tensor, out_dtype: str = "int8") -> te.Tensor:
    """TFLite int8 softmax over the last axis.

    The per-element exponential depends only on ``max - x`` (0..255), so it is read from `exp_table`
    (`softmax_exp_table`, the gemmlowp arithmetic evaluated at compile time); the per-row sum, the
    reciprocal (``GetReciprocal``: count leading zeros + three Newton-Raphson steps of gemmlowp) and the
    output scaling are integer TE stages."""
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
    sums = te.compute(rows, lambda *i: te.sum(rescale(TEOps, exps[i + (rk2,)], 0, acc_bits), axis=rk2),
                      name="sum_of_exps")

    def recip_f(*i):
        B = StagedTEOps(rows, i, "reciprocal")
        r, num_bits = get_reciprocal(B, sums[i], acc_bits)
        return [r, num_bits]

    recip, nbits = te.compute(rows, recip_f, name="reciprocal")

    def out_f(*i):
        r = i[:-1]
        v = rdbpot(TEOps, srdhm(TEOps, recip[r], exps[i]), nbits[r] + TEOps.c32(31 - bits)) + TEOps.c32(qmin)
        return clamp32(v, qmin, qmax).astype(out_dtype)

    return te.compute(shape, out_f, name="q_softmax")


def lut_te(x: te.Tensor, table: te.Tensor, in_dtype: str, out_dtype: str, name: str = "q_lut") -> te.Tensor:
    """Elementwise table lookup out = table[x - qmin(in_dtype)] (256-entry LUT for 8-bit inputs)."""
    qmin = QRANGE[in_dtype][0]
    return te.compute(x.shape, lambda *i: table[x[i].astype("int32") - qmin].astype(out_dtype), name=name)


def acc_logistic_te(acc: te.Tensor, multiplier: te.Tensor, shift: te.Tensor, axis: int, out_multiplier: int,
                    out_shift: int, output_zero_point: int, act_min: int, act_max: int, out_dtype: str) -> te.Tensor:
    """Logistic of a convolution accumulator, all integer: acc * m[c] >> (31 - shift[c]) (rounded, saturated
    to int32) is the Q4.27 input of gemmlowp's fixed-point logistic (as in TFLite's int8 LOGISTIC), whose
    Q0.31 result is requantized to the output. For graphs (ONNX QDQ) that apply a sigmoid to a convolution
    without quantizing in between, e.g. squeeze-excite gates; TFLite always quantizes the conv first."""
    shape = [int(d) for d in acc.shape]
    ax = axis % len(shape)
    qmin, qmax = QRANGE[out_dtype]

    def f(*i):
        B = StagedTEOps(shape, i, "acc_logistic")
        tr = B.to64(TEOps.c32(31) - shift[i[ax]])
        prod = B.to64(acc[i]) * B.to64(multiplier[i[ax]])
        r = B.shr(prod + B.shl(B.c64(1), tr - B.c64(1)), tr)
        q4 = B.bind(B.to32(B.maximum(B.minimum(r, B.c64(INT32_MAX)), B.c64(INT32_MIN))))
        q0 = B.bind(logistic_fixed_point(B, q4, LOGISTIC_INPUT_INTEGER_BITS))
        o = mbqm(B, q0, out_multiplier, out_shift) + B.c32(output_zero_point)
        return clamp32(o, max(qmin, act_min), min(qmax, act_max)).astype(out_dtype)

    return te.compute(shape, f, name="q_conv_logistic")
