"""Concatenation: inputs whose parameters differ from the output's are requantized first."""

from __future__ import annotations

from typing import Any

import numpy as np

from tvm import relax

from tvm_patch import quant as Q

from tvm_patch.transform.lower_to_integer.registry import register
from tvm_patch.transform.lower_to_integer.values import QT, FOp, Pending, QCtx


@register("relax.concat")
def lower_concat(lw: Any, ctx: QCtx, node: FOp) -> Pending:
    qts = node.args
    if not all(isinstance(q, QT) for q in qts):
        raise lw.unsupported("concat of non-quantized tensors", node.var)
    for q in qts:
        lw.require_per_tensor(q, "concat", node.var)
    axis = int(node.call.attrs.axis)

    def build(lo: int, hi: int) -> relax.Expr:
        parts = []
        qmin, qmax = Q.QRANGE[ctx.dtype]
        for q in qts:
            if np.float32(q.s) == np.float32(ctx.so) and q.z == ctx.zo and q.dtype == ctx.dtype:
                parts.append(q.expr())
            else:
                m, sh = Q.quantize_multiplier(float(np.float32(q.s)) / float(np.float32(ctx.so)))
                parts.append(lw.emit_te(Q.requantize_int_te, [q.expr()], q.z, m, sh, ctx.zo, ctx.dtype,
                                                   qmin, qmax, name="q_requantize"))
        y = lw.builder_.emit(relax.op.concat(parts, axis=axis))
        if (lo, hi) != (qmin, qmax):
            y = lw.builder_.emit(relax.op.clip(y, lo, hi))
        return y

    return ctx.pending(build)
