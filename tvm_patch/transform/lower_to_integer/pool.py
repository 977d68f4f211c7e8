"""Average pooling (windowed and global), MEAN, and TVM's own int32 import of TFLite's AVERAGE_POOL_2D."""

from __future__ import annotations

from typing import Any

import numpy as np

from tvm import relax

from tvm_patch import quant as Q

from tvm_patch.transform.lower_to_integer.registry import register
from tvm_patch.transform.lower_to_integer.values import QT, FOp, Pending, QCtx, ints, pool_padding, shape_of


def check_pool_attrs(lw: Any, var: Any, a: Any) -> None:
    if any(int(d) != 1 for d in a.dilation) or bool(a.ceil_mode):
        raise lw.unsupported("avg_pool2d with dilation or ceil_mode", var)
    if bool(a.count_include_pad) and any(int(p) for p in a.padding):
        raise lw.unsupported("avg_pool2d counting padding", var)


def lower_stock_avg_pool(lw: Any, var: Any, call: Any) -> Pending:
    pool = lw.orig[call.args[0]]
    src = lw.orig[pool.args[0]].args[0]
    dt = str(call.attrs.dtype)
    qmin, qmax = Q.QRANGE[dt]
    a = pool.attrs
    check_pool_attrs(lw, var, a)

    def build(lo: int, hi: int) -> relax.Expr:
        return lw.emit_te(Q.avg_pool2d_te, [lw.materialize(src)], ints(a.pool_size), ints(a.strides),
                                     pool_padding(a), str(a.layout), lo, hi, dt,
                                     name="q_avg_pool2d")

    return Pending(build, qmin, qmax, dt, shape_of(var))


@register("relax.mean")
def lower_mean(lw: Any, ctx: QCtx, node: FOp) -> Pending:
    x = lw.quantized_input(node, "mean")
    a = node.call.attrs
    axes = list(range(len(x.shape))) if a.axis is None else [int(v) % len(x.shape) for v in a.axis]
    n = int(np.prod([x.shape[i] for i in axes]))
    keep = bool(a.keepdims)
    if lw.ort:
        return _ort_mean(lw, ctx, x, axes, keep, n)
    m, sh = Q.mean_multiplier(x.s, ctx.so, n)

    def build(lo: int, hi: int) -> relax.Expr:
        return lw.emit_te(Q.mean_te, [x.expr()], axes, keep, x.z, m, sh, ctx.zo, ctx.dtype, lo, hi,
                                     name="q_mean")

    return ctx.pending(build)


@register("relax.nn.avg_pool2d")
def lower_avg_pool(lw: Any, ctx: QCtx, node: FOp) -> Pending:
    x = lw.quantized_input(node, "avg_pool2d")
    a = node.call.attrs
    check_pool_attrs(lw, node.var, a)
    if not (np.float32(x.s) == np.float32(ctx.so) and x.z == ctx.zo and x.dtype == ctx.dtype):
        if any(int(p) for p in a.padding):
            raise lw.unsupported("avg_pool2d with padding and different input/output quantization",
                                    node.var)
        return _lower_pool_as_mean(lw, ctx, node, x)

    def build(lo: int, hi: int) -> relax.Expr:
        return lw.emit_te(Q.avg_pool2d_te, [x.expr()], ints(a.pool_size), ints(a.strides),
                                     pool_padding(a), str(a.layout), lo, hi, ctx.dtype,
                                     name="q_avg_pool2d")

    return ctx.pending(build)


def _lower_pool_as_mean(lw: Any, ctx: QCtx, node: FOp, x: QT) -> Pending:
    """Average pooling that also rescales: TFLite MEAN arithmetic per window (constant count)."""
    a = node.call.attrs
    layout = str(a.layout)
    H, W = x.shape[layout.index("H")], x.shape[layout.index("W")]
    if [int(v) for v in a.pool_size] == [H, W]:
        axes = [layout.index("H"), layout.index("W")]
        if lw.ort:
            return _ort_mean(lw, ctx, x, axes, True, H * W)
        m, sh = Q.mean_multiplier(x.s, ctx.so, H * W)

        def build(lo: int, hi: int) -> relax.Expr:
            return lw.emit_te(Q.mean_te, [x.expr()], axes, True, x.z, m, sh, ctx.zo, ctx.dtype, lo,
                                         hi, name="q_mean")

        return ctx.pending(build)
    raise lw.unsupported("windowed avg_pool2d with different input/output quantization", node.var)


def _ort_mean(lw: Any, ctx: QCtx, x: QT, axes: list[int], keep: bool, n: int) -> Pending:
    """Mean / global average pooling with onnxruntime's QLinearGlobalAveragePool arithmetic."""
    zx = x.z - 128 if x.dtype == "uint8" else x.z
    m, sh = Q.ort_mean_multiplier(x.s, ctx.so, n)

    def build(lo: int, hi: int) -> relax.Expr:
        return lw.emit_te(Q.ort_mean_te, [lw.as_int8(x)], axes, keep, zx, m, sh, ctx.zo, ctx.dtype, lo, hi,
                             name="ort_mean")

    return ctx.pending(build)
