"""Softmax over the last axis (TFLite's int8 kernel: exponential table, integer sum and reciprocal)."""

from __future__ import annotations

from typing import Any

import numpy as np

from tvm import relax

from tvm_patch import quant as Q

from tvm_patch.transform.lower_to_integer.registry import register
from tvm_patch.transform.lower_to_integer.values import FOp, Pending, QCtx


@register("relax.nn.softmax")
def lower_softmax(lw: Any, ctx: QCtx, node: FOp) -> Pending:
    x = lw.quantized_input(node, "softmax")
    if x.dtype != "int8":
        raise lw.unsupported(f"softmax on {x.dtype}", node.var)
    axis = int(node.call.attrs.axis) % len(x.shape)
    if axis != len(x.shape) - 1:
        raise lw.unsupported("softmax over a non-last axis", node.var)
    p = Q.softmax_params(x.s)
    table = Q.softmax_exp_table(p)
    native = ctx.dtype == "int8" and ctx.zo == -128 and np.float32(ctx.so) == np.float32(1.0 / 256)

    def build(lo: int, hi: int) -> relax.Expr:
        y = lw.emit_te(Q.softmax_te, [x.expr(), relax.const(table, "int32")], "int8",
                                  name="q_softmax")
        if native and (lo, hi) == (-128, 127):
            return y
        # TFLite's result is on scale 1/256, zero point -128: requantize to the requested parameters
        m, sh = Q.quantize_multiplier((1.0 / 256) / float(np.float32(ctx.so)))
        return lw.emit_te(Q.requantize_int_te, [y], -128, m, sh, ctx.zo, ctx.dtype, lo, hi,
                                     name="q_requantize")

    return ctx.pending(build)
