"""A low-K 1x1 convolution computed channel by channel along a row of pixel pairs, its epilogue fused.

After ``WidenPixelPairs`` and ``WidenWeights`` a 1x1 convolution's pair loop reads

    for x in range(X):                        # pixel pairs
        widen(A + a(x), S, K, q)              # the pair's K channels, widened once (tvmp_widen_px2[_planes])
        for f in range(C // J):               # blocks of J output channels
            acc[p * J + j] = B(f, j)                                    (p < 2, j < J)
            tvmp_dot_q15w_px2_rows{J}(q, W + w(f), ws, K, acc)
            out[o(f, j, x) + p * os] = int8(sat(requant_rbzr(acc[p * J + j], M(f, j), R(f, j), Z(f, j))))

With few input channels (K <= MAX_K) the epilogue dominates: each output reloads its channel's multiplier and
shift, each block its biases and weights. ``channel_rows`` turns the nest inside out: the pairs of a chunk of the
row are widened first (a C local of chunk x K words, ``WIDE_NAME``: on the stack, as ``WidenPixelPairs``' pair),
then one ``tvmp_row_q15w_px2`` call per output channel runs along them with the channel's constants (and, with
K <= 8, its weights) in registers (tvmp_kernels.h). mcunet-in3's 88 x 88, 8 -> 24 layer on the emulated M7:
3,613,575 -> 2,797,635 instructions (docs/kernels.md, round 22). Where the rows of a plane follow one another (an
NCHW or NHWC 1x1 convolution's planes) the row and pair loops are first taken as one loop (``_fused_rows``), so
short rows (12 x 12: six pairs) still make long chunks (round 24).

Exact: every output is the same bias plus the same products requantized by the same call (integer sums do not
depend on their order). The reads move earlier: a chunk's pairs are all widened before any of its outputs is
stored. In an in-place kernel that is still safe: a read that saw its input unclobbered after the stores of every
earlier pair (the kernel's in-place proof) sees it after fewer stores too, and every store writes what it wrote.

A patch stage's rows have a length that depends on the patch (its in-image part, cache mode's new columns): such a
row is one chunk, its local sized for the most pairs the row can have (``_Context.bound``: TVM's analyzer over the
loops' ranges and the lets), and the calls take its length at run time. vww's cache stage, its 8 -> 16 layer on
rows of up to 13 pixels: 706,894 -> 551,441 instructions on the emulated M7 (docs/kernels.md, round 26). The
stage's epilogue stores through a one-element scratch (``t[0] = requant(...); out = sat(t[0])``): read as one store.

Matched only in exactly that shape (anything else is left as it is): the widened pair a C local read by nothing
but the dot call, the accumulators initialized and read per (pixel, row) as above, the epilogue the plain
``tvmp_sat_s8(tvmp_requant_rbzr(...))`` store whose constants do not depend on the pixel, the output's two pixels
``os`` apart and the next pair ``2 os`` further.
"""

from __future__ import annotations

import itertools
from typing import Any

import tvm
import tvm_ffi
from tvm import tirx
from tvm.ir.expr import TensorLoad

from tvm_patch.codegen.micro_kernels import SAT, _extern_name, _int
from tvm_patch.codegen.wide_weights import WIDE_CALLS
from tvm_patch.codegen.widen_kernels import MAX_WIDE_BYTES, Q15_PX2_ROWS, WIDE_NAME, WIDEN, WIDEN_PLANES, _drop_unread
from tvm_patch.quant.fixedpoint import REQUANT_ZP_RIGHT_EXTERN
from tvm_patch.tir_util import is_call, load_counts, pure_extern_name, substitute_vars, uses_var

__all__ = ["ROW_KERNEL", "MAX_K", "ChannelRows", "channel_rows"]

ROW_KERNEL = "tvmp_row_q15w_px2"
MAX_K = 16  # longer dot products gain more from the blocked kernels' shared activation loads than the row loses
REG_K = 8  # tvmp_kernels.h's TVMP_ROW_MAX_REG_N: up to this many weights stay in registers
# a chunk of fewer pairs gains nothing from keeping the channel's constants; with the weights read again per pair
# (K > REG_K) it takes more (measured, emulated M7: K = 16 over 6 pairs +7.8 %, over 12 pairs -1.2 %, 22 pairs -2.7 %)
MIN_PAIRS = 4
MIN_PAIRS_LOADED = 12
_DOTS = {WIDE_CALLS[name][0]: rows for rows, name in Q15_PX2_ROWS.items()}  # tvmp_dot_q15w_px2_rows{J} -> J


def _nest(stmt: Any) -> tuple[list[tirx.For], Any] | None:
    """(the serial loops from 0 with constant extents around it, the innermost statement) of a perfect nest."""
    loops = []
    while isinstance(stmt, tirx.For):
        if stmt.kind != tirx.ForKind.SERIAL or _int(stmt.min) != 0 or _int(stmt.extent) is None:
            return None
        loops.append(stmt)
        stmt = stmt.body
    return loops, stmt


def _one_store(stmt: Any) -> tirx.BufferStore | None:
    """``stmt`` as one store: itself, or ``t[0] = v; out[i] = f(t[0])`` (a patch stage's epilogue through a
    one-element scratch ``t``) as ``out[i] = f(v)``."""
    if isinstance(stmt, tirx.BufferStore):
        return stmt
    if not (isinstance(stmt, tirx.SeqStmt) and len(stmt.seq) == 2
            and all(isinstance(s, tirx.BufferStore) for s in stmt.seq)):
        return None
    tmp, store = stmt.seq
    if not (len(tmp.buffer.shape) == 1 and _int(tmp.buffer.shape[0]) == 1 and _int(tmp.indices[0]) == 0
            and not tmp.buffer.same_as(store.buffer)):
        return None
    reads = []

    def on_load(ld: Any) -> Any:
        if ld.source.same_as(tmp.buffer):
            reads.append(ld)
            return tmp.value
        return ld

    value = tvm_ffi.structural_map(store.value, [(TensorLoad, on_load)])
    if len(reads) != 1 or any(load_counts(i).get(tmp.buffer.name) for i in store.indices):
        return None
    return tirx.BufferStore(store.buffer, value, store.indices)


def _instances(stmt: Any) -> list[tuple[Any, list[Any], Any]] | None:
    """(buffer, indices, value) of the store of a small perfect nest once per iteration, its loop variables
    replaced by their values."""
    nest = _nest(stmt)
    store = _one_store(nest[1]) if nest is not None else None
    if store is None:
        return None
    loops = nest[0]
    ana = tvm.sym.Analyzer()
    out = []
    for values in itertools.product(*(range(_int(f.extent)) for f in loops)):
        sub = {f.loop_var: tirx.const(v, f.loop_var.ty.dtype) for f, v in zip(loops, values)}
        out.append((store.buffer, [ana.simplify(substitute_vars(i, sub)) for i in store.indices],
                    ana.simplify(substitute_vars(store.value, sub))))
    return out


def _address(expr: Any) -> TensorLoad | None:
    load = expr.args[0] if is_call(expr, ".address_of") and expr.args else None
    return load if isinstance(load, TensorLoad) and len(load.indices) == 1 else None


def _same(a: Any, b: Any) -> bool:
    return tvm_ffi.structural_equal(a, b)


def _epilogue(v: Any, acc: Any) -> tuple[int, list[Any]] | None:
    """(accumulator slot, [mult, right, zp]) of the stored value ``int8(sat(requant_rbzr(acc[slot], mult, right, zp)))``."""
    if not (isinstance(v, tirx.Cast) and str(v.ty) == "int8" and pure_extern_name(v.value) == SAT):
        return None
    req = v.value.args[1]
    if pure_extern_name(req) != REQUANT_ZP_RIGHT_EXTERN or len(req.args) != 5:
        return None
    a = req.args[1]
    if not (isinstance(a, TensorLoad) and a.source.same_as(acc) and _int(a.indices[0]) is not None):
        return None
    return _int(a.indices[0]), list(req.args[2:])


def _chunk(pairs: int, k: int) -> int | None:
    """The most pairs of the row, dividing it, whose widened words fit the stack budget of ``WIDE_NAME``; None
    when that is too few to gain."""
    best = max((c for c in range(1, pairs + 1) if pairs % c == 0 and c * k * 4 <= MAX_WIDE_BYTES), default=0)
    return best if best >= (MIN_PAIRS if k <= REG_K else MIN_PAIRS_LOADED) else None


class _Context:
    """What a function's lets and loops say of its expressions: ``resolve`` substitutes the lets, ``bound`` gives the
    largest value an expression can take over the loops' ranges (TVM's ``const_int_bound``; None if unbounded)."""

    def __init__(self, func: tirx.PrimFunc) -> None:
        self.ranges: dict[Any, tuple[Any, Any]] = {}
        self.lets: dict[Any, Any] = {}

        def on_for(f: tirx.For) -> tvm_ffi.WalkResult:
            self.ranges[f.loop_var] = (f.min, f.extent)
            return tvm_ffi.WalkResult.ADVANCE

        def on_let(s: Any) -> tvm_ffi.WalkResult:
            self.lets[s.var] = s.value
            return tvm_ffi.WalkResult.ADVANCE

        tvm_ffi.structural_walk(func.body, [(tirx.For, on_for), (tirx.Bind, on_let), (tirx.LetStmt, on_let)],
                                order="pre")

    def resolve(self, expr: Any) -> Any:
        for _ in range(16):  # lets of lets: each round replaces one level
            if not any(uses_var(expr, v) for v in self.lets):
                break
            expr = substitute_vars(expr, self.lets)
        return expr

    def bound(self, expr: Any) -> int | None:
        expr = self.resolve(expr)
        ana = tvm.sym.Analyzer()
        for var, (lo, extent) in self.ranges.items():
            if _int(lo) is not None and _int(extent) is not None and uses_var(expr, var):
                ana.bind(var, tvm.ir.Range.from_min_extent(lo, extent))
        hi = ana.const_int_bound(expr).max_value
        return hi if hi < 1 << 20 else None


def _rows(loop: tirx.For, ctx: _Context | None = None) -> tuple[tirx.Stmt, Any] | None:
    """(``loop``, a pair loop of the shape in the module doc, channel by channel along its pairs; its accumulator
    buffer), else None. A loop whose length is not constant is one chunk of at most ``ctx.bound(length)`` pairs."""
    nest = _nest(loop) if _int(loop.extent) is not None or ctx is None else \
        ([loop], loop.body) if loop.kind == tirx.ForKind.SERIAL and _int(loop.min) == 0 else None
    if nest is None or len(nest[0]) != 1 or not isinstance(loop.body, tirx.SeqStmt) or len(loop.body.seq) != 3:
        return None
    x, pairs = loop.loop_var, _int(loop.extent)
    most = pairs if pairs is not None else ctx.bound(loop.extent) if ctx is not None else None
    alloc, widen, blocks = loop.body.seq
    if not (isinstance(alloc, tirx.AllocBuffer) and isinstance(widen, tirx.Evaluate)
            and _extern_name(widen.value) in (WIDEN, WIDEN_PLANES) and isinstance(blocks, tirx.For)):
        return None
    q = alloc.buffer
    a, a_step, k, q_at = list(widen.value.args)[1:]
    k, q_load = _int(k), _address(q_at)
    if (k is None or k % 4 or k > MAX_K or q_load is None or not q_load.source.same_as(q)
            or _int(q_load.indices[0]) != 0):
        return None
    if most is None:
        return None
    chunk = _chunk(pairs, k) if pairs is not None else \
        most if most * k * 4 <= MAX_WIDE_BYTES and most >= (MIN_PAIRS if k <= REG_K else MIN_PAIRS_LOADED) else None
    body = blocks.body
    if chunk is None or _nest(blocks) is None or not isinstance(body, tirx.SeqStmt) or len(body.seq) != 3:
        return None
    init, dot, epi = body.seq
    if not (isinstance(dot, tirx.Evaluate) and _extern_name(dot.value) in _DOTS):
        return None
    rows = _DOTS[_extern_name(dot.value)]
    dq, w_at, ws, n, acc_at = list(dot.value.args)[1:]
    w_load, acc_load, dq_load = _address(w_at), _address(acc_at), _address(dq)
    ws = _int(tvm.sym.Analyzer().simplify(ctx.resolve(ws) if ctx is not None else ws))
    if (w_load is None or acc_load is None or dq_load is None or not dq_load.source.same_as(q)
            or _int(dq_load.indices[0]) != 0 or _int(acc_load.indices[0]) != 0 or _int(n) != k or ws is None):
        return None
    acc = acc_load.source
    inits, stores = _instances(init), _instances(epi)
    if inits is None or stores is None or len(inits) != 2 * rows or len(stores) != 2 * rows:
        return None
    bias: dict[int, Any] = {}
    for buf, idx, value in inits:
        slot = _int(idx[0])
        if not buf.same_as(acc) or slot is None or not 0 <= slot < 2 * rows or slot in bias:
            return None
        bias[slot] = value
    outs: dict[int, tuple[Any, list[Any]]] = {}
    for _, idx, value in stores:
        found = _epilogue(value, acc)
        if found is None or found[0] in outs or not 0 <= found[0] < 2 * rows or len(idx) != 1:
            return None
        outs[found[0]] = (idx[0], found[1])
    if len(bias) != 2 * rows or len(outs) != 2 * rows:
        return None
    out_buf = stores[0][0]
    ana = tvm.sym.Analyzer()
    calls = []
    xc = tirx.Var(x.name + "_c", x.ty)
    start = xc * chunk
    for j in range(rows):
        (o0, c0), (o1, c1) = outs[j], outs[rows + j]
        stride = _int(ana.simplify(o1 - o0))
        step = _int(ana.simplify(substitute_vars(o0, {x: x + 1}) - o0))
        consts = [bias[j], *c0]
        if (stride is None or step != 2 * stride or not _same(bias[j], bias[rows + j])
                or not all(_same(u, v) for u, v in zip(c0, c1)) or any(uses_var(e, x) for e in consts)):
            return None
        w_row = tirx.address_of(tirx.BufferLoad(w_load.source, [ana.simplify(w_load.indices[0] + j * ws)]))
        o_start = tirx.address_of(tirx.BufferLoad(out_buf, [ana.simplify(substitute_vars(o0, {x: start}))]))
        calls.append((w_row, consts, o_start, stride))
    row = tirx.decl_buffer((chunk * k,), "uint32", WIDE_NAME)
    xw = tirx.Var(x.name + "_w", x.ty)
    moved = substitute_vars(a, {x: start + xw})
    length = tirx.const(chunk, x.ty.dtype) if pairs is not None else loop.extent  # the row's pairs at run time
    widen_all = tirx.For(xw, tirx.const(0, x.ty.dtype), length, tirx.ForKind.SERIAL,
                         tirx.Evaluate(tirx.call_extern("void", _extern_name(widen.value), moved, a_step,
                                                        tirx.const(k, "int32"),
                                                        tirx.address_of(tirx.BufferLoad(row, [xw * k])))))
    per_channel = [tirx.Evaluate(tirx.call_extern(
        "void", ROW_KERNEL, tirx.address_of(tirx.BufferLoad(row, [tirx.const(0, "int32")])),
        length if pairs is None else tirx.const(chunk, "int32"), w_row, tirx.const(k, "int32"), *consts, o_start,
        tirx.const(stride, "int32"))) for w_row, consts, o_start, stride in calls]
    channels = tirx.For(blocks.loop_var, blocks.min, blocks.extent, blocks.kind, tirx.SeqStmt(per_channel)
                        if len(per_channel) > 1 else per_channel[0])
    if pairs is None:  # one chunk: the row
        one = tirx.SeqStmt([tirx.AllocBuffer(row), widen_all, channels])
        return substitute_vars(one, {xc: tirx.const(0, x.ty.dtype)}), acc
    return tirx.For(xc, tirx.const(0, x.ty.dtype), tirx.const(pairs // chunk, x.ty.dtype), tirx.ForKind.SERIAL,
                    tirx.SeqStmt([tirx.AllocBuffer(row), widen_all, channels])), acc


def _fused_rows(loop: tirx.For) -> tirx.For | None:
    """``for y in range(Y): for x in range(X): body`` as the one loop ``for i in range(Y * X): body[y := 0, x := i]``
    when that is the same nest: every expression of the body that reads y or x (an index, an address, a bound) has
    the same value at (y, x) as at (0, y X + x), as along a plane whose rows follow one another with nothing
    between them (an NCHW 1x1 convolution's input and output planes). Else None."""
    inner = loop.body
    if not (isinstance(inner, tirx.For) and inner.kind == tirx.ForKind.SERIAL and _int(inner.min) == 0
            and _int(inner.extent) is not None and loop.kind == tirx.ForKind.SERIAL and _int(loop.min) == 0
            and _int(loop.extent) is not None):
        return None
    y, x, width = loop.loop_var, inner.loop_var, _int(inner.extent)
    moved = {y: tirx.const(0, y.ty.dtype), x: y * width + x}
    ana = tvm.sym.Analyzer()
    same = [True]

    def on_expr(e: Any) -> tvm_ffi.WalkResult:
        if isinstance(e, TensorLoad) or isinstance(e, tvm.ir.Call):
            return tvm_ffi.WalkResult.ADVANCE  # their indices and arguments are checked one by one
        if (uses_var(e, y) or uses_var(e, x)) and not ana.can_prove_equal(e, substitute_vars(e, moved)):
            same[0] = False
        return tvm_ffi.WalkResult.SKIP

    tvm_ffi.structural_walk(inner.body, [(tvm.ir.expr.Expr, on_expr)], order="pre")
    if not same[0]:
        return None
    i = tirx.Var(f"{y.name}_{x.name}", x.ty)
    body = tvm_ffi.structural_map(substitute_vars(inner.body, {y: tirx.const(0, y.ty.dtype), x: i}),
                                  [(tirx.Add, ana.simplify), (tirx.Mul, ana.simplify)])
    return tirx.For(i, tirx.const(0, x.ty.dtype), tirx.const(_int(loop.extent) * width, x.ty.dtype),
                    tirx.ForKind.SERIAL, body)


def channel_rows(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """``func`` with each pair loop of the module doc's shape computed channel by channel along its pairs (the rows
    of a plane as one row where they follow one another: ``_fused_rows``), and the accumulators it no longer reads
    gone."""
    accs: list[Any] = []

    def rewrite(match: Any) -> Any:
        def on_for(loop: tirx.For) -> tirx.Stmt:
            found = match(loop)
            if found is None:
                return loop
            accs.append(found[1])
            return found[0]
        return on_for

    # whole planes first (the map is bottom-up: a row's own rewrite would hide its plane), then single rows
    out = tvm_ffi.structural_map(func, [(tirx.For, rewrite(lambda loop: _rows(f) if (f := _fused_rows(loop)) else None))])
    ctx = _Context(func)
    out = tvm_ffi.structural_map(out, [(tirx.For, rewrite(lambda loop: _rows(loop, ctx)))])
    return _drop_unread(out, accs) if accs else out


def ChannelRows() -> tvm.transform.Pass:  # noqa: N802 (TVM's naming of passes)
    """The pass form of ``channel_rows``, after ``WidenWeights`` in the plain-C lowering."""
    return tirx.transform.prim_func_pass(lambda f, _m, _c: channel_rows(f), opt_level=0, name="tvm_patch.ChannelRows")
