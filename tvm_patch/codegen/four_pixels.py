"""Four pixels a weight word: a 1x1 convolution's two widened pixel pairs on int8 weights in one call.

A 1x1 convolution over four output pixels (mcunet-in0's 2 x 2 layers) runs, after ``WidenPixelPairs`` and with
its weights left int8 (``board_build.fit_wide`` narrows them where Flash is short),

    for yy in range(2):                                  # the two pixel pairs
        q = widen(&A[a(yy)], ...)                        # tvmp_widen_px2 / tvmp_widen_px2_planes
        for f in range(F):                               # blocks of J output channels
            init(acc, yy, f)
            tvmp_dot_q15_px2_rows{J}(q, &W[w(f)], S, K, acc)
            epilogue(acc, yy, f)

so each int8 weight word is loaded and sign-extended (SXTB16) twice, once per pair. ``four_pixels`` turns such a
loop into

    for yy in range(2): widen(&A[a(yy)], ..., &q4[yy K])  # both pairs widened once, before the channel loop
    for f in range(F):
        for yy in range(2): init(acc4[yy 2J ...], yy, f)
        tvmp_dot_q15_px4_rows{J}(q4, &W[w(f)], S, K, acc4)  # each weight word loaded and extended once
        for yy in range(2): epilogue(acc4[yy 2J ...], yy, f)

(``tvmp_kernels.h``: per four input channels one LDR and two SXTB16 for the weights, four LDRD for the pixels'
words, eight SMLAD). Exact: the same products in the same sums, the same epilogue per output. The order changes:
every read of the activations moves to the start of the kernel, where they hold the input (nothing of the kernel
has stored yet), and the outputs are stored in another order; so only in a kernel whose parameters do not overlap
(``tirx.noalias``, no ``ALIASED_PARAMS``: restrict everywhere), where no store reaches a byte another iteration
reads. Only weights kept int8 (the widened-weights pair ``tvmp_dot_q15w_px2_rows*`` already skips the
SXTB16): the pass runs after ``WidenWeights``. The four pixels' words are a C local of 2 K words (``WIDE4_NAME``,
up to ``MAX_WIDE4_BYTES``: mcunet-in0's 672 channels), on the stack as the pair's. Loops of exactly two pairs: longer
ones as quads and an odd last pair measured faster on mcunet-in0's 3 x 3 layers but grew the F412 firmware's code
past its Flash, which then kept another layer's weights int8 (network +0.3 %; docs/kernels.md, round 36).
"""

from __future__ import annotations

from typing import Any

import tvm
import tvm_ffi
from tvm import tirx
from tvm.ir.expr import TensorLoad

from tvm_patch.codegen.micro_kernels import _extern_name, _int
from tvm_patch.codegen.widen_kernels import MAX_WIDE_BYTES, Q15_PX2_ROWS, WIDEN, WIDEN_PLANES, _drop_unread
from tvm_patch.names import ALIASED_PARAMS
from tvm_patch.tir_util import address_load, flat_seq, seq, substitute_vars, uses_var

__all__ = ["FourPixels", "MAX_WIDE4_BYTES", "Q15_PX4_ROWS", "WIDE4_NAME", "four_pixels"]

Q15_PX4_ROWS = {rows: name.replace("_px2_", "_px4_") for rows, name in Q15_PX2_ROWS.items()}
WIDE4_NAME = "px4_q15"  # the four pixels' widened words (two pairs), a C local
MAX_WIDE4_BYTES = 2 * MAX_WIDE_BYTES  # two pairs of up to 672 channels (mcunet-in0's last 1x1 layer)
_ROWS = {name: rows for rows, name in Q15_PX2_ROWS.items()}


def _buffer_of(arg: Any) -> Any | None:
    """(buffer, index) of ``&B[i]``, else None."""
    load = address_load(arg)
    return (load.source, load.indices[0]) if load is not None else None


def _rebase(stmt: Any, acc: Any, acc4: Any, offset: Any) -> Any:
    """``stmt`` with every access of ``acc`` an access of ``acc4`` ``offset`` elements further."""

    def on_load(ld: Any) -> Any:
        if ld.source.same_as(acc):
            return tirx.BufferLoad(acc4, [ld.indices[0] + offset])
        return ld

    def on_store(st: Any) -> Any:
        if st.buffer.same_as(acc):
            return tirx.BufferStore(acc4, st.value, [st.indices[0] + offset])
        return st

    return tvm_ffi.structural_map(stmt, [(TensorLoad, on_load), (tirx.BufferStore, on_store)])


def _each_pair(stmts: list[Any], yy: Any, acc: Any, acc4: Any, size: int) -> Any:
    """``for yy' in range(2): stmts`` (``yy`` renamed), on ``acc4``'s part of pair yy'."""
    v = tirx.Var(yy.name + "_p", yy.ty)
    body = seq([_rebase(substitute_vars(st, {yy: v}), acc, acc4, tirx.Cast("int32", v) * size) for st in stmts])
    return tirx.For(v, tirx.const(0, str(v.ty)), tirx.const(2, str(v.ty)), tirx.ForKind.SERIAL, body)


def _four(loop: tirx.For) -> tuple[tirx.Stmt, Any] | None:
    """(``loop`` (two pixel pairs, see the module doc) as one channel loop over both, the pairs' accumulator
    buffer it no longer uses), else None."""
    if loop.kind != tirx.ForKind.SERIAL or _int(loop.min) != 0 or _int(loop.extent) != 2:
        return None
    yy = loop.loop_var
    flat = flat_seq(loop.body)
    if len(flat) != 3 or not isinstance(flat[0], tirx.AllocBuffer) or not isinstance(flat[1], tirx.Evaluate):
        return None
    alloc, widen, chan = flat
    q = alloc.buffer
    if _extern_name(widen.value) not in (WIDEN, WIDEN_PLANES) or not isinstance(chan, tirx.For):
        return None
    wargs = list(widen.value.args)[1:]  # (a, as|cs, n, q)
    n = _int(wargs[2])
    qa = _buffer_of(wargs[3])
    if n is None or qa is None or not qa[0].same_as(q) or _int(qa[1]) != 0 or n * 8 > MAX_WIDE4_BYTES:
        return None
    if any(uses_var(a, yy) for a in wargs[1:]) or chan.kind != tirx.ForKind.SERIAL or uses_var(chan.extent, yy):
        return None
    body = flat_seq(chan.body)
    calls = [i for i, st in enumerate(body) if isinstance(st, tirx.Evaluate) and _extern_name(st.value) in _ROWS]
    if len(calls) != 1 or any(isinstance(st, (tirx.Bind, tirx.LetStmt, tirx.AllocBuffer)) for st in body):
        return None
    i = calls[0]
    call = body[i].value
    name = _extern_name(call)
    rows = _ROWS[name]
    cq, w, ws, cn, cacc = list(call.args)[1:]
    qc, accp = _buffer_of(cq), _buffer_of(cacc)
    if qc is None or not qc[0].same_as(q) or _int(qc[1]) != 0 or _int(cn) != n or accp is None or _int(accp[1]) != 0:
        return None
    if any(uses_var(x, yy) for x in (w, ws)):
        return None
    acc = accp[0]
    size = 2 * rows  # a pair's accumulators: acc[p * rows + j]
    if len(acc.shape) != 1 or _int(acc.shape[0]) != size or str(acc.dtype) != "int32":
        return None
    # nothing but the calls reads the pair's words
    reads = [0]

    def on_load(ld: Any) -> tvm_ffi.WalkResult:
        if ld.source.same_as(q):
            reads[0] += 1
        return tvm_ffi.WalkResult.ADVANCE

    tvm_ffi.structural_walk(chan.body, [(TensorLoad, on_load)], order="pre")
    if reads[0] != 1:
        return None
    q4 = tirx.decl_buffer((2 * n,), "uint32", WIDE4_NAME)
    acc4 = tirx.decl_buffer((2 * size,), "int32", acc.name + "_px4")
    vw = tirx.Var(yy.name + "_w", yy.ty)
    widen4 = tirx.Evaluate(tirx.call_extern(
        "void", widen.value.args[0].value, *[substitute_vars(a, {yy: vw}) for a in wargs[:3]],
        tirx.address_of(tirx.BufferLoad(q4, [tirx.Cast("int32", vw) * n]))))
    widen_loop = tirx.For(vw, tirx.const(0, str(vw.ty)), tirx.const(2, str(vw.ty)), tirx.ForKind.SERIAL, widen4)
    dot = tirx.Evaluate(tirx.call_extern(
        "void", Q15_PX4_ROWS[rows], tirx.address_of(tirx.BufferLoad(q4, [tirx.const(0, "int32")])), w, ws, cn,
        tirx.address_of(tirx.BufferLoad(acc4, [tirx.const(0, "int32")]))))
    parts = []
    if body[:i]:
        parts.append(_each_pair(body[:i], yy, acc, acc4, size))
    parts.append(dot)
    if body[i + 1:]:
        parts.append(_each_pair(body[i + 1:], yy, acc, acc4, size))
    new_chan = tirx.For(chan.loop_var, chan.min, chan.extent, chan.kind, seq(parts))
    return tirx.SeqStmt([tirx.AllocBuffer(q4), tirx.AllocBuffer(acc4), widen_loop, new_chan]), acc


def four_pixels(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """``func`` with each loop over two widened pixel pairs on int8 weights as one four-pixel channel loop (the
    module doc), where its parameters do not overlap."""
    attrs = func.attrs
    if attrs is None or ALIASED_PARAMS in attrs or not bool(attrs.get("tirx.noalias", False)):
        return func
    accs: list[Any] = []

    def on_for(loop: tirx.For) -> Any:
        found = _four(loop)
        if found is None:
            return loop
        accs.append(found[1])
        return found[0]

    out = tvm_ffi.structural_map(func, [(tirx.For, on_for)])
    return _drop_unread(out, accs) if accs else out  # the pairs' accumulators, no longer read


def FourPixels() -> tvm.transform.Pass:  # noqa: N802 (TVM's naming of passes)
    """The pass form of ``four_pixels``, after ``MergeTaps`` in the plain-C lowering."""
    return tirx.transform.prim_func_pass(lambda f, _m, _c: four_pixels(f), opt_level=0, name="tvm_patch.FourPixels")
