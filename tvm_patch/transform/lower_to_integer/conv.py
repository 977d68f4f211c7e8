"""Convolutions, depthwise convolutions and dense layers (conv2d / matmul), with bias, requantization and
optional logistic epilogue."""

from __future__ import annotations

from typing import Any

import numpy as np

from tvm import relax

from tvm_patch import quant as Q
from tvm_patch.relax_util import op_name

from tvm_patch.transform.lower_to_integer.registry import register
from tvm_patch.transform.lower_to_integer.values import QT, FOp, Pending, QCtx, shape_of


@register("relax.nn.conv2d", "relax.matmul")
def lower_conv_op(lw: Any, ctx: QCtx, node: FOp) -> Pending:
    """A chain ending in the convolution or matmul itself (no bias)."""
    return lower_conv(lw, ctx, node, None)


def lower_conv(lw: Any, ctx: QCtx, acc: FOp, bias: Any, epilogue: str | None = None) -> Pending:
    call = acc.call
    name = op_name(call)
    x, w = acc.args
    if not isinstance(x, QT) or not isinstance(w, QT) or w.const is None:
        raise lw.unsupported(f"{name} whose weight is not a constant quantized tensor", acc.var)
    lw.require_per_tensor(x, name, acc.var)
    if np.any(w.zp != 0):
        raise lw.unsupported(f"{name} with non-zero weight zero point", acc.var)
    if w.dtype != "int8":
        raise lw.unsupported(f"{name} with {w.dtype} weights", acc.var)
    out_shape = shape_of(acc.var)
    if name == "relax.nn.conv2d":
        a = call.attrs
        klayout, olayout = str(a.kernel_layout), str(a.out_layout or a.data_layout)
        o_ax = klayout.index("O")
        out_c_axis = olayout.index("C")
    else:
        o_ax = len(w.shape) - 1
        out_c_axis = len(out_shape) - 1
        if len(w.shape) != 2:
            raise lw.unsupported("batched matmul with a constant weight", acc.var)
    n_out = w.shape[o_ax]
    wq = w.const.astype(np.int64)
    red_axes = tuple(i for i in range(wq.ndim) if i != o_ax)
    ws = np.moveaxis(w.scale, o_ax, 0).reshape(n_out, -1)
    if not np.all(ws == ws[:, :1]):
        raise lw.unsupported(f"{name} with weight scales not per output channel", acc.var)
    w_scales = ws[:, 0]
    wsum = wq.sum(axis=red_axes)  # per output channel

    # bias as int32 per output channel
    b = np.zeros(n_out, dtype=np.int64)
    if bias is not None:
        if isinstance(bias, QT):
            bv = bias.const.astype(np.int64) - bias.zp.astype(np.int64)
            if bv.size != n_out:
                raise lw.unsupported(f"{name} bias of {bv.size} values for {n_out} channels", acc.var)
            b = bv.reshape(-1)
        else:
            bf = np.asarray(bias.array, dtype=np.float64).reshape(-1)
            if bf.size != n_out:
                raise lw.unsupported(f"{name} bias of {bf.size} values for {n_out} channels", acc.var)
            real = float(np.float32(x.s)) * w_scales.astype(np.float64)
            b = np.array([Q.tflite_round(v) for v in bf / real], dtype=np.int64)
    if x.dtype not in ("int8", "uint8"):
        raise lw.unsupported(f"{name} on {x.dtype} activations", acc.var)
    zx = x.z - 128 if x.dtype == "uint8" else x.z  # uint8 activations are shifted to int8 first
    b_eff = b - zx * wsum
    if np.any(b_eff > Q.INT32_MAX) or np.any(b_eff < Q.INT32_MIN):
        raise lw.unsupported(f"{name} bias overflowing int32", acc.var)
    ort = lw.ort and epilogue is None
    # |acc| bound: above 2^24 onnxruntime's int32 -> float32 conversion rounds too
    acc_bound = int((np.abs(wq).sum(axis=red_axes) * 255 + np.abs(b)).max()) if wq.size else 0
    if ort:
        try:
            mult, shift = Q.ort_conv_multipliers(x.s, w_scales, ctx.so)
        except ValueError:
            raise lw.unsupported(f"{name} with an output scale too large for onnxruntime rounding",
                                    acc.var) from None
    else:
        mult, shift = Q.conv_multipliers(x.s, w_scales, ctx.so)
    per_tensor = bool(np.all(mult == mult[0]) and np.all(shift == shift[0]))
    if epilogue == "logistic":
        try:
            lm, ls = Q.acc_logistic_multipliers(x.s, w_scales)
        except ValueError:
            raise lw.unsupported(f"logistic of {name}: accumulator scale too large", acc.var) from None
        om, osh = Q.quantize_multiplier(2.0**-31 / float(np.float32(ctx.so)))

    def build(lo: int, hi: int) -> relax.Expr:
        bb = lw.builder_
        xin = lw.as_int8(x)
        wc = relax.const(w.const.astype(np.int8), "int8")
        if name == "relax.nn.conv2d":
            a = call.attrs
            pads = [int(p) for p in a.padding]
            if zx != 0 and any(pads):
                dl = str(a.data_layout)
                pw = [0] * (2 * len(dl))
                pw[2 * dl.index("H")], pw[2 * dl.index("H") + 1] = pads[0], pads[2]
                pw[2 * dl.index("W")], pw[2 * dl.index("W") + 1] = pads[1], pads[3]
                xin = bb.emit(relax.op.nn.pad(xin, pw, pad_value=float(zx)))
                pads = [0, 0, 0, 0]
            accv = bb.emit(relax.op.nn.conv2d(xin, wc, strides=list(a.strides), padding=pads,
                                              dilation=list(a.dilation), groups=int(a.groups),
                                              data_layout=str(a.data_layout), kernel_layout=str(a.kernel_layout),
                                              out_layout=str(a.out_layout or a.data_layout), out_dtype="int32"))
        else:
            accv = bb.emit(relax.op.matmul(xin, wc, out_dtype="int32"))
        bshape = [1] * len(out_shape)
        bshape[out_c_axis] = n_out
        bias_c = b_eff.astype(np.int32)
        if out_c_axis != len(out_shape) - 1:
            bias_c = bias_c.reshape(bshape)
        accv = bb.emit(relax.op.add(accv, relax.const(bias_c, "int32")))
        if epilogue == "logistic":
            return lw.emit_te(Q.acc_logistic_te, [accv, relax.const(lm, "int32"), relax.const(ls, "int32")],
                                 out_c_axis, om, osh, ctx.zo, lo, hi, ctx.dtype, name="q_conv_logistic")
        if ort:
            rec = {"op": "ort_requantize", "output_zero_point": ctx.zo, "axis": out_c_axis}
            if per_tensor:
                rq = lw.emit_te(Q.ort_requantize_te, [accv], int(mult[0]), int(shift[0]), ctx.zo, out_c_axis,
                                   acc_bound, name="ort_requantize", record={**rec, "mantissa": int(mult[0]),
                                                                  "shift": int(shift[0])})
            else:
                rq = lw.emit_te(Q.ort_requantize_te, [accv, relax.const(mult, "int32"),
                                                         relax.const(shift, "int32")],
                                   ctx.zo, out_c_axis, acc_bound, name="ort_requantize", record=rec)
        elif per_tensor:
            rq = lw.emit_te(Q.requantize_te, [accv], int(mult[0]), int(shift[0]), ctx.zo, out_c_axis,
                            name="requantize", record={"op": "requantize", "output_zero_point": ctx.zo,
                                                       "axis": out_c_axis, "multiplier": int(mult[0]),
                                                       "shift": int(shift[0])})
        else:
            rq = lw.emit_te(Q.requantize_te, [accv, relax.const(mult, "int32"), relax.const(shift, "int32")],
                               ctx.zo, out_c_axis, name="requantize",
                               record={"op": "requantize", "output_zero_point": ctx.zo, "axis": out_c_axis})
        cl = bb.emit(relax.op.clip(rq, lo, hi))
        return bb.emit(relax.op.astype(cl, ctx.dtype))

    return ctx.pending(build)
