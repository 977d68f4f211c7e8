"""Calls to the C micro-kernels of ``tvmp_kernels.h`` in place of the TIR loops they implement.

A TIR pass for the plain-C lowering: an innermost reduction loop

    for k in range(K):  acc[i] = acc[i] + int32(A[a + k]) * int32(W[w + k])

over two contiguous int8 vectors becomes ``acc[i] = tvmp_dot_s8(&A[a], &W[w], K, acc[i])``, which uses the
DSP extension's SXTB16 + SMLAD on Cortex-M4/M7 (two multiply-accumulates per instruction) and plain C
elsewhere. The integer result is the same for every order of summation, so the kernels stay bit-exact.
(``tvmp_requant`` calls come from the integer arithmetic itself: ``tvm_patch.quant.extern_requantization``.)
"""

from __future__ import annotations

from typing import Any

import tvm
import tvm_ffi
from tvm import tirx
from tvm.ir.expr import TensorLoad

DOT = "tvmp_dot_s8"
MIN_DOT_LENGTH = 4  # shorter loops gain nothing from a call


def _int(x: Any) -> int | None:
    return int(x.value) if isinstance(x, tirx.IntImm) else None


def _unit_stride_base(index: Any, var: tirx.Var) -> Any | None:
    """``index`` - ``var`` when ``index`` is ``var`` + something free of ``var``, else None."""
    coeffs = tvm.sym.detect_linear_equation(index, [var])
    if len(coeffs) != 2 or _int(coeffs[0]) != 1:
        return None
    return coeffs[1]


def _int8_operand(expr: Any) -> TensorLoad | None:
    """The int8 load under an int32 cast."""
    if isinstance(expr, tirx.Cast) and str(expr.ty) == "int32":
        inner = expr.value
        if isinstance(inner, TensorLoad) and str(inner.ty) == "int8" and len(inner.indices) == 1:
            return inner
    return None


def _dot_call(loop: tirx.For) -> tirx.Stmt | None:
    """The loop as one ``tvmp_dot_s8`` call, or None when it is not that reduction."""
    extent, start = _int(loop.extent), _int(loop.min)
    if loop.kind != tirx.ForKind.SERIAL or start != 0 or extent is None or extent < MIN_DOT_LENGTH:
        return None
    store = loop.body
    if not isinstance(store, tirx.BufferStore) or str(store.buffer.dtype) != "int32":
        return None
    var = loop.loop_var
    value = store.value
    if not isinstance(value, tirx.Add):
        return None
    for acc, prod in ((value.a, value.b), (value.b, value.a)):
        if not (isinstance(acc, TensorLoad) and acc.source.same_as(store.buffer)
                and len(acc.indices) == len(store.indices)
                and all(tvm_ffi.structural_equal(i, j) for i, j in zip(acc.indices, store.indices))):
            continue
        if any(_uses(i, var) for i in store.indices) or not isinstance(prod, tirx.Mul):
            return None
        a, w = _int8_operand(prod.a), _int8_operand(prod.b)
        if a is None or w is None:
            return None
        base_a, base_w = _unit_stride_base(a.indices[0], var), _unit_stride_base(w.indices[0], var)
        if base_a is None or base_w is None:
            return None
        call = tirx.call_extern("int32", DOT, tirx.address_of(tirx.BufferLoad(a.source, [base_a])),
                                tirx.address_of(tirx.BufferLoad(w.source, [base_w])), tirx.const(extent, "int32"),
                                acc)
        return tirx.BufferStore(store.buffer, call, list(store.indices))
    return None


def _uses(expr: Any, var: tirx.Var) -> bool:
    found = [False]

    def on_var(v: Any) -> tvm_ffi.WalkResult:
        if v.same_as(var):
            found[0] = True
            return tvm_ffi.WalkResult.INTERRUPT
        return tvm_ffi.WalkResult.ADVANCE

    tvm_ffi.structural_walk(expr, [(tirx.Var, on_var)], order="pre")
    return found[0]


def rewrite_dot_loops(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """``func`` with every contiguous int8 dot-product loop replaced by a ``tvmp_dot_s8`` call."""

    def on_for(loop: tirx.For) -> tirx.Stmt:
        return _dot_call(loop) or loop

    return tvm_ffi.structural_map(func, [(tirx.For, on_for)])


def MicroKernels() -> tvm.transform.Pass:  # noqa: N802 (TVM's naming of passes)
    """The pass form of ``rewrite_dot_loops``, for the plain-C lowering pipeline."""
    return tirx.transform.prim_func_pass(lambda f, _m, _c: rewrite_dot_loops(f), opt_level=0,
                                         name="tvm_patch.MicroKernels")
