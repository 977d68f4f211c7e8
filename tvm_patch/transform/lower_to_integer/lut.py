"""Element-wise functions of one int8 value as 256-entry tables: logistic (also straight on a convolution)
and hard swish."""

from __future__ import annotations

from typing import Any

import numpy as np

from tvm import relax

from tvm_patch import quant as Q

from tvm_patch.transform.lower_to_integer.conv import lower_conv
from tvm_patch.transform.lower_to_integer.registry import register
from tvm_patch.transform.lower_to_integer.values import QT, FOp, Pending, QCtx


@register("relax.sigmoid")
def lower_sigmoid(lw: Any, ctx: QCtx, node: FOp) -> Pending:
    """Logistic: on a conv / dense accumulator when no quantize sits between (squeeze-excite gates in QDQ),
    else a table."""
    inner = node.args[0]
    if isinstance(inner, FOp):
        acc, bias = lw.split_conv_bias(inner)
        if acc is not None:
            return lower_conv(lw, ctx, acc, bias, epilogue="logistic")
    return lower_lut(lw, ctx, node, "logistic")


def lower_lut(lw: Any, ctx: QCtx, node: FOp, kind: str) -> Pending:
    x = node.args[-1] if kind == "hard_swish" else node.args[0]
    if kind == "hard_swish":
        x = next((a for a in node.args if isinstance(a, QT)), None)
    if not isinstance(x, QT):
        raise lw.unsupported(f"{kind} of a non-quantized tensor", node.var)
    lw.require_per_tensor(x, kind, node.var)
    if x.dtype not in ("int8", "uint8"):
        raise lw.unsupported(f"{kind} on {x.dtype}", node.var)
    if kind == "logistic":
        if x.dtype == "int8" and ctx.dtype == "int8" and ctx.zo == -128:
            # TFLite Micro's kernel (it checks only the output zero point, assumes scale 1/256)
            table = Q.logistic_table(Q.logistic_params(x.s, x.z), "int8")
        else:
            table = Q.float_function_table(lambda v: 1.0 / (1.0 + np.exp(-v.astype(np.float64))), x.s, x.z,
                                           ctx.so, ctx.zo, x.dtype, ctx.dtype)
    else:
        if x.dtype == ctx.dtype:
            table = Q.hard_swish_table(Q.hard_swish_params(x.s, x.z, ctx.so, ctx.zo), ctx.dtype)
        else:
            raise lw.unsupported("hard_swish changing dtype", node.var)

    def build(lo: int, hi: int) -> relax.Expr:
        t = np.clip(table.astype(np.int64), lo, hi).astype(ctx.dtype)
        return lw.emit_te(Q.lut_te, [x.expr(), relax.const(t, ctx.dtype)], x.dtype, ctx.dtype,
                                     f"q_{kind}", name=f"q_{kind}")

    return ctx.pending(build)
