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

from tvm_patch.tir_util import is_call, uses_var

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
        if uses_var(cond, var) or not isinstance(pad, tirx.IntImm):
            return None
    if isinstance(inner, TensorLoad) and str(inner.ty) == "int8" and len(inner.indices) == 1:
        return inner, cond, pad
    return None


def _peel_lets(body: Any, var: tirx.Var) -> tuple[list[tirx.Stmt], Any]:
    """The loop-invariant bindings before the loop's one store (CSE puts them inside the loop: ``Bind``
    statements of a sequence, or ``LetStmt``), and the store; the bindings go first, unchanged."""
    if isinstance(body, tirx.SeqStmt):
        *binds, last = list(body.seq)
        if all(isinstance(b, tirx.Bind) and not uses_var(b.value, var) for b in binds):
            return binds, last
        return [], body
    if isinstance(body, tirx.LetStmt) and not uses_var(body.value, var):
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
        if any(uses_var(i, var) for i in store.indices) or not isinstance(prod, tirx.Mul):
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


def _reduction_extent(loop: tirx.For) -> int | None:
    """The extent of a serial loop from 0 long enough for a dot-product call, else None."""
    extent = _int(loop.extent)
    if loop.kind != tirx.ForKind.SERIAL or _int(loop.min) != 0 or extent is None or extent < MIN_DOT_LENGTH:
        return None
    return extent


def _only_loop(loop: tirx.For, extents: Any) -> tirx.For | None:
    """The loop's body when it is one loop from 0 with an extent in ``extents`` (no bindings first), else None."""
    lets, inner = _peel_lets(loop.body, loop.loop_var)
    if lets or not isinstance(inner, tirx.For) or _int(inner.min) != 0 or _int(inner.extent) not in extents:
        return None
    return inner


def _accumulation(stmt: Any) -> tuple[tirx.BufferStore, TensorLoad, tirx.Mul] | None:
    """(store, accumulator load, product) of ``acc[i] = acc[i] + x * y`` on a flat int32 buffer, else None."""
    if not isinstance(stmt, tirx.BufferStore) or str(stmt.buffer.dtype) != "int32" or len(stmt.indices) != 1:
        return None
    value = stmt.value
    if not isinstance(value, tirx.Add) or not isinstance(value.b, tirx.Mul):
        return None
    acc = value.a
    if not (isinstance(acc, TensorLoad) and acc.source.same_as(stmt.buffer) and len(acc.indices) == 1
            and tvm_ffi.structural_equal(acc.indices[0], stmt.indices[0])):
        return None
    return stmt, acc, value.b


def _rows_call(loop: tirx.For) -> tirx.Stmt | None:
    """A register-blocked reduction as one ``tvmp_dot_s8_rows{J}`` call, or None when it is not one:

        for k in range(K):
            for j in range(J):  acc[c + j] = acc[c + j] + int32(A[a + k]) * int32(W[w + j * S + k])

    (one activation vector against J weight rows S bytes apart: the schedule of ``export/blocking.py``). A
    padded activation read whose border test depends on neither loop becomes ``border ? rows call :
    tvmp_pad_rows(pad, ...)``, as for ``tvmp_dot_s8``."""
    extent, k = _reduction_extent(loop), loop.loop_var
    inner = _only_loop(loop, ROWS) if extent is not None else None
    if inner is None:
        return None
    rows, j = _int(inner.extent), inner.loop_var
    found = _accumulation(inner.body)
    if found is None:
        return None
    store, acc, prod = found
    base_acc = _unit_stride_base(store.indices[0], j)
    if base_acc is None or uses_var(base_acc, k):
        return None
    a, w = _int8_operand(prod.a, k), _int8_operand(prod.b, k)
    if a is None or w is None or w[1] is not None:
        return None
    (a_load, cond, pad), w_load = a, w[0]
    if uses_var(a_load.indices[0], j) or (cond is not None and uses_var(cond, j)):
        return None
    base_a = _unit_stride_base(a_load.indices[0], k)
    coeffs = tvm.sym.detect_linear_equation(w_load.indices[0], [j, k])
    if base_a is None or len(coeffs) != 3 or _int(coeffs[1]) != 1 or uses_var(coeffs[0], k) or uses_var(coeffs[0], j):
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


PX2_ROWS = {2: "tvmp_dot_s8_px2_rows2", 4: "tvmp_dot_s8_px2_rows4"}


def _px2_rows_call(loop: tirx.For) -> tirx.Stmt | None:
    """A register-blocked reduction over two pixels and J channels as one ``tvmp_dot_s8_px2_rows{J}`` call,
    or None when it is not one:

        for k in range(K):
            for p in range(2):
                for j in range(J):  acc[c + p * J + j] += int32(A[a + p * P + k]) * int32(W[w + j * S + k])

    (``export/blocking.block_pixels``; no padded read: a 1x1 convolution)."""
    extent, k = _reduction_extent(loop), loop.loop_var
    mid = _only_loop(loop, (2,)) if extent is not None else None
    inner = _only_loop(mid, PX2_ROWS) if mid is not None else None
    if inner is None:
        return None
    p, rows, j = mid.loop_var, _int(inner.extent), inner.loop_var
    found = _accumulation(inner.body)
    if found is None:
        return None
    store, acc, prod = found
    lin_acc = tvm.sym.detect_linear_equation(store.indices[0], [p, j, k])
    if len(lin_acc) != 4 or (_int(lin_acc[0]), _int(lin_acc[1]), _int(lin_acc[2])) != (rows, 1, 0):
        return None
    a, w = _int8_operand(prod.a, k), _int8_operand(prod.b, k)
    if a is None or w is None or w[1] is not None or (a[1] is not None and uses_var(a[1], j)):
        return None
    (a_load, cond, pad), w_load = a, w[0]
    lin_a = tvm.sym.detect_linear_equation(a_load.indices[0], [p, j, k])
    lin_w = tvm.sym.detect_linear_equation(w_load.indices[0], [p, j, k])
    if len(lin_a) != 4 or len(lin_w) != 4 or _int(lin_a[1]) != 0 or _int(lin_a[2]) != 1:
        return None
    if _int(lin_w[0]) != 0 or _int(lin_w[2]) != 1 or any(uses_var(c, v) for c in (*lin_a, *lin_w) for v in (p, j, k)):
        return None

    def addr(load: TensorLoad, index: Any) -> Any:
        return tirx.address_of(tirx.BufferLoad(load.source, [index]))

    w_ptr, ws, n = addr(w_load, lin_w[3]), tirx.Cast("int32", lin_w[1]), tirx.const(extent, "int32")
    pair = tirx.Evaluate(tirx.call_extern(
        "void", PX2_ROWS[rows], addr(a_load, lin_a[3]), tirx.Cast("int32", lin_a[0]), w_ptr, ws, n,
        tirx.address_of(tirx.BufferLoad(store.buffer, [lin_acc[3]]))))
    if cond is None:
        return pair
    # a padded tap (a k x k convolution's border): the pair when both pixels read the input, else each pixel alone,
    # its tap a rows call or the pad value times its weights' sums
    ana = tvm.sym.Analyzer()
    at = [ana.simplify(tvm_ffi.structural_map(cond, [(tirx.Var, lambda v, q=q: tirx.const(q, v.ty) if v.same_as(p) else v)]))
          for q in (0, 1)]
    alone = []
    for q in (0, 1):
        acc_q = tirx.address_of(tirx.BufferLoad(store.buffer, [lin_acc[3] + q * rows]))
        tap = tirx.call_extern("void", ROWS[rows], addr(a_load, lin_a[3] + q * lin_a[0]), w_ptr, ws, n, acc_q)
        border = tirx.call_extern("void", PAD_ROWS, tirx.Cast("int32", pad), w_ptr, ws, n, tirx.const(rows, "int32"), acc_q)
        alone.append(tirx.IfThenElse(at[q], tirx.Evaluate(tap), tirx.Evaluate(border)))
    return tirx.IfThenElse(tirx.And(at[0], at[1]), pair, tirx.SeqStmt(alone))


WINDOW = "tvmp_window_s8"


def _terms(cond: Any) -> list[Any]:
    """The comparisons of a conjunction, in order."""
    out, todo = [], [cond]
    while todo:
        c = todo.pop()
        if isinstance(c, tirx.And):
            todo += [c.b, c.a]
        else:
            out.append(c)
    return out


def _bounds(cond: Any, ry: tirx.Var, rx: tirx.Var) -> tuple[list[Any], list[Any], list[Any], list[Any]] | None:
    """A border test, a conjunction of comparisons each bounding ``ry`` or ``rx`` by an expression free of
    both, as (ry lower, ry upper, rx lower, rx upper) bound lists (lower inclusive, upper exclusive)."""
    out: tuple[list[Any], list[Any], list[Any], list[Any]] = ([], [], [], [])
    for t in _terms(cond):  # each as e <= 0
        if isinstance(t, tirx.LT):
            e = t.a - t.b + 1
        elif isinstance(t, tirx.LE):
            e = t.a - t.b
        elif isinstance(t, tirx.GT):
            e = t.b - t.a + 1
        elif isinstance(t, tirx.GE):
            e = t.b - t.a
        else:
            return None
        div = _tap_division(e, ry, rx)
        if div is not None:  # floor(tap / d) bounded (a stride-d tap, as TVM's simplifier writes it)
            var, d, t, e = div
            coeffs = tvm.sym.detect_linear_equation(e, [t, ry, rx])
            if len(coeffs) != 4 or _int(coeffs[1]) != 0 or _int(coeffs[2]) != 0 or _int(coeffs[0]) not in (-1, 1):
                return None
            c0 = coeffs[3]
            k = (0 if var.same_as(ry) else 2) + (_int(coeffs[0]) == 1)
            # t >= c0  <=>  tap >= d * c0;   t <= -c0  <=>  tap < d * (1 - c0)
            out[k].append(d * c0 if _int(coeffs[0]) == -1 else d * (1 - c0))
            continue
        coeffs = tvm.sym.detect_linear_equation(e, [ry, rx])
        if len(coeffs) != 3:
            return None
        cy, cx, c0 = _int(coeffs[0]), _int(coeffs[1]), coeffs[2]
        if (cy, cx) == (-1, 0):
            out[0].append(c0)  # ry >= c0
        elif (cy, cx) == (1, 0):
            out[1].append(1 - c0)  # ry <= -c0
        elif (cy, cx) == (0, -1):
            out[2].append(c0)
        elif (cy, cx) == (0, 1):
            out[3].append(1 - c0)
        else:
            return None
    return out


def _tap_division(e: Any, ry: tirx.Var, rx: tirx.Var) -> tuple[tirx.Var, int, tirx.Var, Any] | None:
    """(tap variable, d, t, ``e`` with ``t`` for floor(tap / d)) when ``e`` holds one ``tap >> s`` or
    ``floordiv(tap, d)`` term of a tap variable, else None."""
    found: list[tuple[Any, tirx.Var, int]] = []

    def on_node(n: Any) -> tvm_ffi.WalkResult:
        if isinstance(n, (tirx.RShift, tirx.FloorDiv)) and isinstance(n.a, tirx.Var) and _int(n.b) is not None:
            if n.a.same_as(ry) or n.a.same_as(rx):
                found.append((n, n.a, 2 ** _int(n.b) if isinstance(n, tirx.RShift) else _int(n.b)))
        return tvm_ffi.WalkResult.ADVANCE

    tvm_ffi.structural_walk(e, [(tirx.RShift, on_node), (tirx.FloorDiv, on_node)], order="pre")
    if len(found) != 1 or found[0][2] < 1:
        return None
    node, var, d = found[0]
    t = tirx.Var("t", "int32")
    return var, d, t, tvm_ffi.structural_map(e, [(type(node), lambda n: t if n.same_as(node) else n)])


def _window_call(loop: tirx.For) -> tirx.Stmt | None:
    """A convolution window as one ``tvmp_window_s8`` call, or None when it is not one:

        for ry in range(KH):
            for rx in range(KW):
                acc[i] = acc[i] + int32(if_then_else(border(ry, rx), P[p + ry * SY + rx * SX], pad))
                                  * int32(W[w + ry * WY + rx * WX])

    (a depthwise convolution's taps; the border test bounds ry and rx separately, as padding does). The C
    kernel runs an interior window without any test and unrolled, a border window with the bounds."""
    kh, kw = _int(loop.extent), None
    if loop.kind != tirx.ForKind.SERIAL or _int(loop.min) != 0 or kh is None:
        return None
    ry = loop.loop_var
    lets, inner = _peel_lets(loop.body, ry)
    if lets or not isinstance(inner, tirx.For) or _int(inner.min) != 0 or _int(inner.extent) is None:
        return None
    kw, rx = _int(inner.extent), inner.loop_var
    lets, store = _peel_lets(inner.body, rx)
    if lets or not isinstance(store, tirx.BufferStore) or str(store.buffer.dtype) != "int32":
        return None
    if kh * kw < 2 or any(uses_var(i, v) for i in store.indices for v in (ry, rx)):
        return None
    value = store.value
    if not isinstance(value, tirx.Add) or not isinstance(value.b, tirx.Mul):
        return None
    acc, prod = value.a, value.b
    if not (isinstance(acc, TensorLoad) and acc.source.same_as(store.buffer)
            and all(tvm_ffi.structural_equal(i, j) for i, j in zip(acc.indices, store.indices))):
        return None
    operands = []
    for side in (prod.a, prod.b):
        if not (isinstance(side, tirx.Cast) and str(side.ty) == "int32"):
            return None
        inner_v, cond, pad = side.value, None, tirx.const(0, "int32")
        if isinstance(inner_v, tvm.ir.Call) and isinstance(inner_v.op, tvm.ir.Op) and inner_v.op.name.endswith(".if_then_else"):
            cond, inner_v, pad = inner_v.args
            if not isinstance(pad, tirx.IntImm):
                return None
        if not (isinstance(inner_v, TensorLoad) and str(inner_v.ty) == "int8" and len(inner_v.indices) == 1):
            return None
        operands.append((inner_v, cond, pad))
    if operands[0][1] is None and operands[1][1] is not None:
        operands.reverse()
    (p_load, cond, pad), (w_load, w_cond, _) = operands
    if w_cond is not None:
        return None
    lin_p = tvm.sym.detect_linear_equation(p_load.indices[0], [ry, rx])
    lin_w = tvm.sym.detect_linear_equation(w_load.indices[0], [ry, rx])
    if len(lin_p) != 3 or len(lin_w) != 3 or any(_int(c) is None for c in (*lin_p[:2], *lin_w[:2])):
        return None
    if cond is None:
        bounds = ([], [], [], [])
    else:
        found = _bounds(cond, ry, rx)
        if found is None:
            return None
        bounds = found
    lo_y, hi_y, lo_x, hi_x = (tirx.const(0, "int32"), tirx.const(kh, "int32"), tirx.const(0, "int32"),
                              tirx.const(kw, "int32"))
    for b in bounds[0]:
        lo_y = tirx.max(lo_y, b)
    for b in bounds[1]:
        hi_y = tirx.min(hi_y, b)
    for b in bounds[2]:
        lo_x = tirx.max(lo_x, b)
    for b in bounds[3]:
        hi_x = tirx.min(hi_x, b)

    ana = tvm.sym.Analyzer()
    lo_y, hi_y, lo_x, hi_x = (ana.simplify(b) for b in (lo_y, hi_y, lo_x, hi_x))

    def base(load: TensorLoad) -> Any:
        return tirx.address_of(tirx.BufferLoad(load.source, [tirx.const(0, load.indices[0].ty.dtype)]))

    i32 = [tirx.Cast("int32", x) for x in (lin_p[2], lin_p[0], lin_p[1])]
    w32 = [tirx.Cast("int32", x) for x in (lin_w[2], lin_w[0], lin_w[1])]
    call = tirx.call_extern("int32", WINDOW, base(p_load), *i32, base(w_load), *w32, tirx.const(kh, "int32"),
                            tirx.const(kw, "int32"), lo_y, hi_y, lo_x, hi_x, tirx.Cast("int32", pad), acc)
    return tirx.BufferStore(store.buffer, call, list(store.indices))


def _extern_name(expr: Any) -> str | None:
    """The callee of a ``call_extern``, else None."""
    if is_call(expr, ".call_extern") and expr.args and isinstance(expr.args[0], tvm.ir.expr.StringImm):
        return str(expr.args[0].value)
    return None


def _fused_taps(loop: tirx.For) -> tirx.For | None:
    """``for rx in range(X): for rc in range(C): body`` as one loop ``for f in range(X * C)`` when every index
    of the body moves by C times as much with ``rx`` as with ``rc`` (NHWC input columns x channels against
    OHWI weights: one contiguous run of X * C bytes in both), so a stem's few input channels still make one
    dot product per kernel row; else None. Nothing else in the body may use ``rx`` or ``rc``."""
    x = _int(loop.extent)
    if _int(loop.min) != 0 or x is None or loop.kind != tirx.ForKind.SERIAL:
        return None
    lets, inner = _peel_lets(loop.body, loop.loop_var)
    c = _int(inner.extent) if isinstance(inner, tirx.For) and not lets else None
    if c is None or _int(inner.min) != 0 or inner.kind != tirx.ForKind.SERIAL or x * c < MIN_DOT_LENGTH:
        return None
    rx, rc, f = loop.loop_var, inner.loop_var, tirx.Var("f", loop.loop_var.ty)
    bad: list[Any] = []

    def index(i: Any) -> Any:
        if not (uses_var(i, rx) or uses_var(i, rc)):
            return i
        coeffs = tvm.sym.detect_linear_equation(i, [rx, rc])
        if len(coeffs) != 3 or _int(coeffs[1]) is None or _int(coeffs[0]) != c * _int(coeffs[1]):
            bad.append(i)
            return i
        return coeffs[2] + f * coeffs[1]

    def on_load(ld: Any) -> Any:
        return tirx.BufferLoad(ld.source, [index(i) for i in ld.indices]) if len(ld.indices) == 1 else ld

    def on_store(st: Any) -> Any:
        return tirx.BufferStore(st.buffer, st.value, [index(i) for i in st.indices]) if len(st.indices) == 1 else st

    body = tvm_ffi.structural_map(inner.body, [(TensorLoad, on_load), (tirx.BufferStore, on_store)])
    if bad or uses_var(body, rx) or uses_var(body, rc):
        return None
    return tirx.For(f, tirx.const(0, str(f.ty)), tirx.const(x * c, str(f.ty)), tirx.ForKind.SERIAL, body)


def rewrite_dot_loops(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """``func`` with every contiguous int8 dot-product loop replaced by a ``tvmp_dot_s8`` call, every
    register-blocked one by a ``tvmp_dot_s8_rows{J}`` call, every convolution window by ``tvmp_window_s8`` and
    every int8 clamp by ``tvmp_sat_s8``."""

    def on_for(loop: tirx.For) -> tirx.Stmt:
        found = _dot_call(loop) or _rows_call(loop) or _px2_rows_call(loop) or _window_call(loop)
        if found is None:
            fused = _fused_taps(loop)
            found = (_dot_call(fused) or _rows_call(fused) or _px2_rows_call(fused)) if fused is not None else None
        return found or loop

    return tvm_ffi.structural_map(func, [(tirx.For, on_for), (tirx.Max, _saturate), (tirx.Min, _saturate)])


SAT = "tvmp_sat_s8"


def _saturate(node: Any) -> Any:
    """``max(min(x, 127), -128)`` (or ``min(max(x, -128), 127)``) on int32 as one ``tvmp_sat_s8(x)``: an
    epilogue's int8 clamp, one SSAT on Cortex-M4/M7."""
    inner_type, bounds = (tirx.Min, (-128, 127)) if isinstance(node, tirx.Max) else (tirx.Max, (127, -128))
    inner = node.a
    if str(node.ty) != "int32" or not isinstance(inner, inner_type):
        return node
    if _int(node.b) != bounds[0] or _int(inner.b) != bounds[1]:
        return node
    return tirx.call_pure_extern("int32", SAT, inner.a)


def MicroKernels() -> tvm.transform.Pass:  # noqa: N802 (TVM's naming of passes)
    """The pass form of ``rewrite_dot_loops``, for the plain-C lowering pipeline."""
    return tirx.transform.prim_func_pass(lambda f, _m, _c: rewrite_dot_loops(f), opt_level=0,
                                         name="tvm_patch.MicroKernels")
