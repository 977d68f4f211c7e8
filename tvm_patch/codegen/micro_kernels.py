"""Calls to the C micro-kernels of ``tvmp_kernels.h`` in place of the TIR loops they implement.

A TIR pass for the plain-C lowering: an innermost reduction loop

    for k in range(K):  acc[i] = acc[i] + int32(A[a + k]) * int32(W[w + k])

over two contiguous int8 vectors becomes ``acc[i] = tvmp_dot_s8(&A[a], &W[w], K, acc[i])``, which uses the
DSP extension's SXTB16 + SMLAD on Cortex-M4/M7 (two multiply-accumulates per instruction) and plain C
elsewhere. When the activation read is a padded one, ``if_then_else(border test, A[a + k], pad)`` with a test
that does not depend on ``k`` (a convolution tap), the border case becomes ``acc + pad * tvmp_sum_s8(&W[w], K)``. The integer result is the same for every order of summation, so the kernels stay bit-exact.
(``tvmp_requant`` calls come from the integer arithmetic itself: ``tvm_patch.quant.extern_requantization``.)
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import tvm
import tvm_ffi
from tvm import tirx
from tvm.ir.expr import TensorLoad

_ENABLED: ContextVar[bool] = ContextVar("tvmp_micro_kernels", default=True)


def micro_kernels_enabled() -> bool:
    """Whether the export uses the micro-kernels (the default) or plain TVM kernels (``plain_kernels()``)."""
    return _ENABLED.get()


@contextmanager
def plain_kernels() -> Iterator[None]:
    """Inside: the C export emits TVM's own kernels only (no micro-kernel call, no weight re-layout, no pixel
    copy): the baseline the micro-kernels are measured against (``tvm-patch build --kernels plain``)."""
    token = _ENABLED.set(False)
    try:
        yield
    finally:
        _ENABLED.reset(token)


DOT = "tvmp_dot_s8"
SUM = "tvmp_sum_s8"
MIN_DOT_LENGTH = 4  # shorter loops gain nothing from a call


def _int(x: Any) -> int | None:
    return int(x.value) if isinstance(x, tirx.IntImm) else None


def _unit_stride_base(index: Any, var: tirx.Var) -> Any | None:
    """``index`` - ``var`` when ``index`` is ``var`` + something free of ``var``, else None."""
    coeffs = tvm.sym.detect_linear_equation(index, [var])
    if len(coeffs) != 2 or _int(coeffs[0]) != 1:
        return None
    return coeffs[1]


def _int8_operand(expr: Any, var: tirx.Var) -> tuple[TensorLoad, Any, Any] | None:
    """(load, condition, pad value) of an int8 load under an int32 cast, possibly guarded by a border test
    that does not depend on ``var`` (``if_then_else(cond, load, pad)``; condition None when unguarded)."""
    if not (isinstance(expr, tirx.Cast) and str(expr.ty) == "int32"):
        return None
    inner, cond, pad = expr.value, None, None
    if isinstance(inner, tvm.ir.Call) and isinstance(inner.op, tvm.ir.Op) and inner.op.name.endswith(".if_then_else"):
        cond, inner, pad = inner.args
        if _uses(cond, var) or not isinstance(pad, tirx.IntImm):
            return None
    if isinstance(inner, TensorLoad) and str(inner.ty) == "int8" and len(inner.indices) == 1:
        return inner, cond, pad
    return None


def _peel_lets(body: Any, var: tirx.Var) -> tuple[list[tirx.Stmt], Any]:
    """The loop-invariant bindings before the loop's one store (CSE puts them inside the loop: ``Bind``
    statements of a sequence, or ``LetStmt``), and the store; the bindings go first, unchanged."""
    if isinstance(body, tirx.SeqStmt):
        *binds, last = list(body.seq)
        if all(isinstance(b, tirx.Bind) and not _uses(b.value, var) for b in binds):
            return binds, last
        return [], body
    if isinstance(body, tirx.LetStmt) and not _uses(body.value, var):
        binds, inner = _peel_lets(body.body, var)
        return [tirx.Bind(body.var, body.value), *binds], inner
    return [], body


def _dot_call(loop: tirx.For) -> tirx.Stmt | None:
    """The loop as one ``tvmp_dot_s8`` call, or None when it is not that reduction."""
    extent, start = _int(loop.extent), _int(loop.min)
    if loop.kind != tirx.ForKind.SERIAL or start != 0 or extent is None or extent < MIN_DOT_LENGTH:
        return None
    var = loop.loop_var
    lets, store = _peel_lets(loop.body, var)
    if not isinstance(store, tirx.BufferStore) or str(store.buffer.dtype) != "int32":
        return None
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
        a, w = _int8_operand(prod.a, var), _int8_operand(prod.b, var)
        if a is None or w is None or w[1] is not None:
            return None
        (a_load, cond, pad), w_load = a, w[0]
        base_a, base_w = _unit_stride_base(a_load.indices[0], var), _unit_stride_base(w_load.indices[0], var)
        if base_a is None or base_w is None:
            return None
        k = tirx.const(extent, "int32")
        w_ptr = tirx.address_of(tirx.BufferLoad(w_load.source, [base_w]))
        new = tirx.call_extern("int32", DOT, tirx.address_of(tirx.BufferLoad(a_load.source, [base_a])), w_ptr, k, acc)
        if cond is not None:  # a border tap reads the pad value for every channel
            border = acc + tirx.Cast("int32", pad) * tirx.call_extern("int32", SUM, w_ptr, k)
            new = tirx.if_then_else(cond, new, border)
        stmt: tirx.Stmt = tirx.BufferStore(store.buffer, new, list(store.indices))
        return tirx.SeqStmt([*lets, stmt]) if lets else stmt
    return None


ROWS = {2: "tvmp_dot_s8_rows2", 4: "tvmp_dot_s8_rows4"}
PAD_ROWS = "tvmp_pad_rows"


def _rows_call(loop: tirx.For) -> tirx.Stmt | None:
    """A register-blocked reduction as one ``tvmp_dot_s8_rows{J}`` call, or None when it is not one:

        for k in range(K):
            for j in range(J):  acc[c + j] = acc[c + j] + int32(A[a + k]) * int32(W[w + j * S + k])

    (one activation vector against J weight rows S bytes apart: the schedule of ``export/blocking.py``). A
    padded activation read whose border test depends on neither loop becomes ``border ? rows call :
    tvmp_pad_rows(pad, ...)``, as for ``tvmp_dot_s8``."""
    extent, start = _int(loop.extent), _int(loop.min)
    if loop.kind != tirx.ForKind.SERIAL or start != 0 or extent is None or extent < MIN_DOT_LENGTH:
        return None
    k = loop.loop_var
    lets, inner = _peel_lets(loop.body, k)
    if lets or not isinstance(inner, tirx.For) or _int(inner.min) != 0 or _int(inner.extent) not in ROWS:
        return None
    rows, j = _int(inner.extent), inner.loop_var
    store = inner.body
    if not isinstance(store, tirx.BufferStore) or str(store.buffer.dtype) != "int32" or len(store.indices) != 1:
        return None
    value = store.value
    if not isinstance(value, tirx.Add) or not isinstance(value.b, tirx.Mul):
        return None
    acc, prod = value.a, value.b
    if not (isinstance(acc, TensorLoad) and acc.source.same_as(store.buffer) and len(acc.indices) == 1
            and tvm_ffi.structural_equal(acc.indices[0], store.indices[0])):
        return None
    base_acc = _unit_stride_base(store.indices[0], j)
    if base_acc is None or _uses(base_acc, k):
        return None
    a, w = _int8_operand(prod.a, k), _int8_operand(prod.b, k)
    if a is None or w is None or w[1] is not None:
        return None
    (a_load, cond, pad), w_load = a, w[0]
    if _uses(a_load.indices[0], j) or (cond is not None and _uses(cond, j)):
        return None
    base_a = _unit_stride_base(a_load.indices[0], k)
    coeffs = tvm.sym.detect_linear_equation(w_load.indices[0], [j, k])
    if base_a is None or len(coeffs) != 3 or _int(coeffs[1]) != 1 or _uses(coeffs[0], k) or _uses(coeffs[0], j):
        return None
    stride, base_w = coeffs[0], coeffs[2]

    def addr(load: TensorLoad, index: Any) -> Any:
        return tirx.address_of(tirx.BufferLoad(load.source, [index]))

    w_ptr, ws, n = addr(w_load, base_w), tirx.Cast("int32", stride), tirx.const(extent, "int32")
    acc_ptr = tirx.address_of(tirx.BufferLoad(store.buffer, [base_acc]))
    call = tirx.Evaluate(tirx.call_extern("void", ROWS[rows], addr(a_load, base_a), w_ptr, ws, n, acc_ptr))
    if cond is None:
        return call
    # a border tap reads the pad value for every channel: acc[j] += pad * sum(row j)
    border = tirx.call_extern("void", PAD_ROWS, tirx.Cast("int32", pad), w_ptr, ws, n, tirx.const(rows, "int32"), acc_ptr)
    return tirx.IfThenElse(cond, call, tirx.Evaluate(border))


def _uses(expr: Any, var: tirx.Var) -> bool:
    found = [False]

    def on_var(v: Any) -> tvm_ffi.WalkResult:
        found[0] = found[0] or v.same_as(var)
        return tvm_ffi.WalkResult.ADVANCE

    tvm_ffi.structural_walk(expr, [(tirx.Var, on_var)], order="pre")
    return found[0]


def rewrite_dot_loops(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """``func`` with every contiguous int8 dot-product loop replaced by a ``tvmp_dot_s8`` call, and every
    register-blocked one by a ``tvmp_dot_s8_rows{J}`` call."""

    def on_for(loop: tirx.For) -> tirx.Stmt:
        return _dot_call(loop) or _rows_call(loop) or loop

    return tvm_ffi.structural_map(func, [(tirx.For, on_for)])


def MicroKernels() -> tvm.transform.Pass:  # noqa: N802 (TVM's naming of passes)
    """The pass form of ``rewrite_dot_loops``, for the plain-C lowering pipeline."""
    return tirx.transform.prim_func_pass(lambda f, _m, _c: rewrite_dot_loops(f), opt_level=0,
                                         name="tvm_patch.MicroKernels")
