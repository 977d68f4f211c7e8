"""Element-wise add / subtract / multiply of two quantized tensors (TFLite ADD, SUB, MUL), and a
convolution's bias add."""

from __future__ import annotations

from typing import Any

import numpy as np

from tvm import relax

from tvm_patch import quant as Q
from tvm_patch.relax_util import op_name
from tvm_patch.transform.lower_to_integer.conv import lower_conv
from tvm_patch.transform.lower_to_integer.registry import register
from tvm_patch.transform.lower_to_integer.values import QT, FOp, Pending, QCtx


@register("relax.add", "relax.subtract", "relax.multiply")
def lower_binary(lw: Any, ctx: QCtx, node: FOp) -> Pending:
    """A conv/matmul plus a constant bias, or the binary op of two quantized tensors."""
    name = op_name(node.call)
    a, b = node.args
    acc, bias = lw.split_conv_bias(node)
    if acc is not None:
        return lower_conv(lw, ctx, acc, bias)
    if isinstance(a, QT) and isinstance(b, QT):
        if name == "relax.multiply":
            return lower_mul(lw, ctx, node, a, b)
        return lower_add(lw, ctx, node, a, b, negate=name == "relax.subtract")
    raise lw.unsupported(f"{name} of {type(a).__name__}/{type(b).__name__}", node.var)


def lower_add(lw: Any, ctx: QCtx, node: FOp, a: QT, b: QT, negate: bool) -> Pending:
    what = "subtract" if negate else "add"
    lw.require_per_tensor(a, what, node.var)
    lw.require_per_tensor(b, what, node.var)
    if ctx.dtype != "int8" and ctx.dtype != "uint8":
        raise lw.unsupported(f"{what} to {ctx.dtype}", node.var)

    if lw.ort and not negate and a.dtype == b.dtype == ctx.dtype == "int8":
        def build_ort(lo: int, hi: int) -> relax.Expr:
            try:
                p = Q.ort_add_params(a.s, a.z, b.s, b.z, ctx.so, ctx.zo, (lo, hi), a.dtype)
            except ValueError as e:
                raise lw.unsupported(f"add with onnxruntime rounding ({e})", node.var) from None
            table = relax.const(np.asarray(p.b_table, dtype=np.int64), "int64")
            return lw.emit_te(Q.ort_add_te, [a.expr(), b.expr(), table], p, list(ctx.shape), ctx.dtype,
                                 name="ort_add")

        return ctx.pending(build_ort)

    def build(lo: int, hi: int) -> relax.Expr:
        p = Q.add_params(a.s, a.z, b.s, b.z, ctx.so, ctx.zo, (lo, hi), float32_ratios=negate)
        return lw.emit_te(Q.add_te, [a.expr(), b.expr()], p, list(ctx.shape), ctx.dtype, negate,
                                     name="q_sub" if negate else "q_add",
                                     record={"op": "q_sub" if negate else "q_add", **vars(p)})

    return ctx.pending(build)


def lower_mul(lw: Any, ctx: QCtx, node: FOp, a: QT, b: QT) -> Pending:
    lw.require_per_tensor(a, "multiply", node.var)
    lw.require_per_tensor(b, "multiply", node.var)

    def build(lo: int, hi: int) -> relax.Expr:
        p = Q.mul_params(a.s, a.z, b.s, b.z, ctx.so, ctx.zo, (lo, hi))
        return lw.emit_te(Q.mul_te, [a.expr(), b.expr()], p, list(ctx.shape), ctx.dtype,
                                     name="q_mul", record={"op": "q_mul", **vars(p)})

    return ctx.pending(build)
