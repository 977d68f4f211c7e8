"""Requantization (quantize(dequantize(x)) and data movement changing parameters), and call_tir PrimFuncs:
the ONNX importer's constant Pad (requantized) and TVM's hard swish (a table)."""

from __future__ import annotations

from typing import Any

import numpy as np
import tvm_ffi
from tvm import relax

from tvm_patch import quant as Q
from tvm_patch.relax_util import call_tir_name
from tvm_patch.transform.lower_to_integer.lut import lower_lut
from tvm_patch.transform.lower_to_integer.registry import register
from tvm_patch.transform.lower_to_integer.values import QT, FOp, Pending, QCtx, shape_of, ty


@register("relax.call_tir")
def lower_call_tir(lw: Any, ctx: QCtx, node: FOp) -> Pending:
    """TVM's hard_swish PrimFunc (a table) or a PrimFunc that only pads (the pad on the integer tensor)."""
    if call_tir_name(node.call).startswith("hard_swish"):
        return lower_lut(lw, ctx, node, "hard_swish")
    padded = pad_of_call_tir(lw, node)
    if padded is not None:
        return lower_requantize(lw, ctx, padded)
    raise lw.unsupported(f"call_tir {call_tir_name(node.call)}", node.var)


def lower_requantize(lw: Any, ctx: QCtx, qt: QT) -> Pending:
    lw.require_per_tensor(qt, "requantize", ctx.var)
    same = np.float32(qt.s) == np.float32(ctx.so) and qt.z == ctx.zo and qt.dtype == ctx.dtype
    m, sh = Q.quantize_multiplier(float(np.float32(qt.s)) / float(np.float32(ctx.so)))

    def build(lo: int, hi: int) -> relax.Expr:
        x = qt.expr()
        qmin, qmax = Q.QRANGE[ctx.dtype]
        if same and (lo, hi) == (qmin, qmax):
            return x
        if same:
            return lw.builder_.emit(relax.op.clip(x, lo, hi))
        if lw.ort and qt.dtype in ("int8", "uint8"):
            t = Q.ort_requantize_table(qt.s, qt.z, ctx.so, ctx.zo, qt.dtype, ctx.dtype, lo, hi)
            return lw.emit_te(Q.lut_te, [x, relax.const(t, ctx.dtype)], qt.dtype, ctx.dtype, "ort_requantize",
                                 name="ort_requantize")
        return lw.emit_te(Q.requantize_int_te, [x], qt.z, m, sh, ctx.zo, ctx.dtype, lo, hi,
                                     name="q_requantize")

    return ctx.pending(build)


def pad_of_call_tir(lw: Any, node: FOp) -> QT | None:
    """A call_tir whose PrimFunc only pads its one quantized input with a constant (the ONNX importer's
    Pad): the same padding on the integer tensor, pad value quantized. None for anything else."""
    args = node.args[1:]
    if len(args) != 1 or not isinstance(args[0], QT) or not args[0].per_tensor:
        return None
    qt = args[0]
    pf = lw.mod[node.call.args[0]]
    nodes: list = []
    tvm_ffi.structural_walk(pf.body, lambda x: nodes.append(x))
    kinds = [type(x).__name__ for x in nodes]
    loads = [x for x in nodes if type(x).__name__ in ("TensorLoad", "BufferLoad")]
    consts = [x for x in nodes if type(x).__name__ == "FloatImm"]
    arith = {"Add", "Mul", "Div", "FloorDiv", "Mod", "Max", "Min", "Cast"}
    if len(loads) != 1 or len(consts) != 1 or kinds.count("BufferStore") != 1 or \
            kinds.count("For") != len(qt.shape):
        return None
    if any(k in arith for k in kinds) or any(k == "Sub" and str(ty(x)) not in ("int32", "int64")
                                             for k, x in zip(kinds, nodes)):
        return None
    before = []
    for idx in loads[0].indices:
        if type(idx).__name__ == "Var":
            before.append(0)
        elif type(idx).__name__ == "Sub" and type(idx.b).__name__ == "IntImm" and type(idx.a).__name__ == "Var":
            before.append(int(idx.b.value))
        else:
            return None
    out_shape = shape_of(node.var)
    if len(before) != len(qt.shape) or len(out_shape) != len(qt.shape):
        return None
    after = [o - i - b for o, i, b in zip(out_shape, qt.shape, before)]
    if any(v < 0 for v in before + after):
        return None
    qv = Q.quantize_real_to_q(float(consts[0].value), qt.s, qt.z)
    lo, hi = Q.QRANGE[qt.dtype]
    pads = [v for pair in zip(before, after) for v in pair]

    def make() -> relax.Expr:
        return lw.builder_.emit(relax.op.nn.pad(qt.expr(), pads, pad_value=float(min(max(qv, lo), hi))))

    return QT(qt.scale, qt.zp, qt.dtype, out_shape, make=make, where=lw.where(node.var))
