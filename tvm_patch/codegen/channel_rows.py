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
A stage's region whose rows are as wide as its buffers' rows (recompute mode's patches that the image's border does
not clip) is one contiguous run of pixels, input and output: ``_flat_rows`` writes the region's rows as a run-time
choice, that run in chunks along the row kernel where it is, the rows as before where not (mcunet-in0's 4x4 stage,
its 16 -> 64 layer over 9 x 9 regions: rows of four pairs, runs of 40; docs/kernels.md, round 32).

Matched only in exactly that shape (anything else is left as it is): the widened pair a C local read by nothing
but the dot call, the accumulators initialized and read per (pixel, row) as above, the epilogue the plain
``tvmp_sat_s8(tvmp_requant_rbzr(...))`` store whose constants do not depend on the pixel, the output's two pixels
``os`` apart and the next pair ``2 os`` further.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any

import tvm
import tvm_ffi
from tvm import tirx
from tvm.ir.expr import TensorLoad

from tvm_patch.codegen.micro_kernels import SAT, _extern_name, _int
from tvm_patch.codegen.wide_weights import WIDE_CALLS
from tvm_patch.codegen.widen_kernels import MAX_WIDE_BYTES, Q15_PX2_ROWS, WIDE_NAME, WIDEN, WIDEN_PLANES, _drop_unread
from tvm_patch.quant.fixedpoint import REQUANT_ZP_RIGHT_EXTERN
from tvm_patch.tir_util import address_load, load_counts, pure_extern_name, substitute_vars, uses_var, vars_of

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

    def same_everywhere(self, a: Any, b: Any, most: int = 1024) -> bool:
        """Whether ``a`` and ``b`` (the lets substituted) take the same value at every point of the ranges of the
        loops they read, checked point by point (at most ``most`` points); False when they read anything else."""
        a, b = self.resolve(a), self.resolve(b)
        free = list({v: None for v in vars_of(a) + vars_of(b)})
        if not all(v in self.ranges and _int(self.ranges[v][0]) is not None and _int(self.ranges[v][1]) is not None
                   for v in free):
            return False
        spans = [range(_int(self.ranges[v][0]), _int(self.ranges[v][0]) + _int(self.ranges[v][1])) for v in free]
        if math.prod(len(r) for r in spans) > most:
            return False
        ana = tvm.sym.Analyzer()
        for point in itertools.product(*spans):
            vmap = {v: tirx.const(x, v.ty.dtype) for v, x in zip(free, point)}
            va, vb = ana.simplify(substitute_vars(a, vmap)), ana.simplify(substitute_vars(b, vmap))
            if _int(va) is None or _int(va) != _int(vb):
                return False
        return True

    def bound(self, expr: Any) -> int | None:
        expr = self.resolve(expr)
        ana = tvm.sym.Analyzer()
        for var, (lo, extent) in self.ranges.items():
            if _int(lo) is not None and _int(extent) is not None and uses_var(expr, var):
                ana.bind(var, tvm.ir.Range.from_min_extent(lo, extent))
        hi = ana.const_int_bound(expr).max_value
        return hi if hi < 1 << 20 else None


@dataclass
class _PairLoop:
    """A pair loop of the module doc's shape, read: its widening (the call's name, the address ``a`` of the pair's
    first pixel as a function of the loop variable, the next pixel's or plane's step, K), the loop over blocks of
    output channels, and per channel j of a block (w_row, [bias, mult, right, zp], o0, stride): its weight row, its
    constants, the index of its output at the pair's first pixel (a function of the loop variable) and the second
    pixel's distance from it."""

    loop: tirx.For
    widen: str
    a: Any
    a_step: Any
    k: int
    blocks: tirx.For
    calls: list[tuple[Any, list[Any], Any, int]]
    out: Any
    acc: Any


def _pair_loop(loop: tirx.For, ctx: _Context | None) -> _PairLoop | None:
    """``loop`` read as a pair loop of the module doc's shape (any extent; ``ctx`` resolves the lets in its weight
    rows' stride), else None."""
    if loop.kind != tirx.ForKind.SERIAL or _int(loop.min) != 0 or not isinstance(loop.body, tirx.SeqStmt) \
            or len(loop.body.seq) != 3:
        return None
    x = loop.loop_var
    alloc, widen, blocks = loop.body.seq
    if not (isinstance(alloc, tirx.AllocBuffer) and isinstance(widen, tirx.Evaluate)
            and _extern_name(widen.value) in (WIDEN, WIDEN_PLANES) and isinstance(blocks, tirx.For)):
        return None
    q = alloc.buffer
    a, a_step, k, q_at = list(widen.value.args)[1:]
    k, q_load = _int(k), address_load(q_at)
    if (k is None or k % 4 or k > MAX_K or q_load is None or not q_load.source.same_as(q)
            or _int(q_load.indices[0]) != 0):
        return None
    body = blocks.body
    if _nest(blocks) is None or not isinstance(body, tirx.SeqStmt) or len(body.seq) != 3:
        return None
    init, dot, epi = body.seq
    if not (isinstance(dot, tirx.Evaluate) and _extern_name(dot.value) in _DOTS):
        return None
    rows = _DOTS[_extern_name(dot.value)]
    dq, w_at, ws, n, acc_at = list(dot.value.args)[1:]
    w_load, acc_load, dq_load = address_load(w_at), address_load(acc_at), address_load(dq)
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
    ana = tvm.sym.Analyzer()
    calls = []
    for j in range(rows):
        (o0, c0), (o1, c1) = outs[j], outs[rows + j]
        stride = _int(ana.simplify(o1 - o0))
        step = _int(ana.simplify(substitute_vars(o0, {x: x + 1}) - o0))
        consts = [bias[j], *c0]
        if (stride is None or step != 2 * stride or not _same(bias[j], bias[rows + j])
                or not all(_same(u, v) for u, v in zip(c0, c1)) or any(uses_var(e, x) for e in consts)):
            return None
        w_row = tirx.address_of(tirx.BufferLoad(w_load.source, [ana.simplify(w_load.indices[0] + j * ws)]))
        calls.append((w_row, consts, o0, stride))
    return _PairLoop(loop, _extern_name(widen.value), a, a_step, k, blocks, calls, stores[0][0], acc)


def _worth(pairs: int, k: int) -> bool:
    """Whether a chunk of ``pairs`` pairs of K channels fits the stack budget and gains (see ``MIN_PAIRS``)."""
    return pairs * k * 4 <= MAX_WIDE_BYTES and pairs >= (MIN_PAIRS if k <= REG_K else MIN_PAIRS_LOADED)


def _widen_call(p: _PairLoop, at: Any, row: Any, slot: Any) -> tirx.Evaluate:
    """``p``'s widening of the pair whose first pixel's address is ``at`` into ``row``'s pair ``slot``."""
    return tirx.Evaluate(tirx.call_extern("void", p.widen, at, p.a_step, tirx.const(p.k, "int32"),
                                          tirx.address_of(tirx.BufferLoad(row, [slot * p.k]))))


def _row_call(p: _PairLoop, row: Any, slot: Any, pairs: Any, call: tuple, o_at: Any) -> tirx.Evaluate:
    """One channel (``call``: a ``_PairLoop.calls`` item) along ``pairs`` pairs of ``row`` from ``slot``, its first
    output at index ``o_at``."""
    w_row, consts, _, stride = call
    return tirx.Evaluate(tirx.call_extern(
        "void", ROW_KERNEL, tirx.address_of(tirx.BufferLoad(row, [slot * p.k])), pairs, w_row,
        tirx.const(p.k, "int32"), *consts, tirx.address_of(tirx.BufferLoad(p.out, [o_at])),
        tirx.const(stride, "int32")))


def _channels(p: _PairLoop, per_call: Any) -> tirx.For:
    """``p``'s loop over blocks of output channels with ``per_call(j, call)``'s statements for each channel j of a
    block."""
    body = [s for j, call in enumerate(p.calls) for s in per_call(j, call)]
    b = p.blocks
    cb = tirx.Var(b.loop_var.name, b.loop_var.ty)  # its own variable: the original loop may stay beside it
    return tirx.For(cb, b.min, b.extent, b.kind,
                    substitute_vars(tirx.SeqStmt(body) if len(body) > 1 else body[0], {b.loop_var: cb}))


def _rows(loop: tirx.For, ctx: _Context | None = None) -> tuple[tirx.Stmt, Any] | None:
    """(``loop``, a pair loop of the shape in the module doc, channel by channel along its pairs; its accumulator
    buffer), else None. A loop whose length is not constant is one chunk of at most ``ctx.bound(length)`` pairs."""
    if _int(loop.extent) is None and ctx is None:
        return None
    p = _pair_loop(loop, ctx)
    if p is None:
        return None
    x, pairs = loop.loop_var, _int(loop.extent)
    most = pairs if pairs is not None else ctx.bound(loop.extent)
    if most is None:
        return None
    chunk = _chunk(pairs, p.k) if pairs is not None else most if _worth(most, p.k) else None
    if chunk is None:
        return None
    xc = tirx.Var(x.name + "_c", x.ty)
    start = xc * chunk
    ana = tvm.sym.Analyzer()
    row = tirx.decl_buffer((chunk * p.k,), "uint32", WIDE_NAME)
    xw = tirx.Var(x.name + "_w", x.ty)
    length = tirx.const(chunk, x.ty.dtype) if pairs is not None else loop.extent  # the row's pairs at run time
    widen_all = tirx.For(xw, tirx.const(0, x.ty.dtype), length, tirx.ForKind.SERIAL,
                         _widen_call(p, substitute_vars(p.a, {x: start + xw}), row, xw))
    zero = tirx.const(0, "int32")
    channels = _channels(p, lambda _j, call: [_row_call(
        p, row, zero, length if pairs is None else tirx.const(chunk, "int32"), call,
        ana.simplify(substitute_vars(call[2], {x: start})))])
    if pairs is None:  # one chunk: the row
        one = tirx.SeqStmt([tirx.AllocBuffer(row), widen_all, channels])
        return substitute_vars(one, {xc: tirx.const(0, x.ty.dtype)}), p.acc
    return tirx.For(xc, tirx.const(0, x.ty.dtype), tirx.const(pairs // chunk, x.ty.dtype), tirx.ForKind.SERIAL,
                    tirx.SeqStmt([tirx.AllocBuffer(row), widen_all, channels])), p.acc


def _half(extent: Any) -> Any:
    """n of a pair loop's extent ``n // 2`` (a patch stage's row of n pixels), else None."""
    return extent.a if isinstance(extent, tirx.FloorDiv) and _int(extent.b) == 2 else None


def _odd_test(cond: Any, n: Any, ctx: _Context) -> bool:
    """Whether ``cond`` is ``n % 2 == 1`` (a patch stage's row has an odd last pixel): as written, or as TVM's
    simplifier rewrote it over the patch loops (mbv2-w0.3-r80's 11-wide regions, whose first column's is 10 wide:
    ``min(1, j * 10) == 1``), which ``ctx`` checks at every patch."""
    if (isinstance(cond, tirx.EQ) and _int(cond.b) == 1 and isinstance(cond.a, tirx.FloorMod)
            and _int(cond.a.b) == 2 and _same(cond.a.a, n)):
        return True
    odd = tirx.floormod(n, tirx.const(2, n.ty.dtype)) == tirx.const(1, n.ty.dtype)
    return ctx.same_everywhere(tirx.Cast("int32", cond), tirx.Cast("int32", odd))


def _flat_rows(loop: tirx.For, ctx: _Context) -> tuple[tirx.Stmt, Any] | None:
    """A patch stage's rows of a region (``for r: pairs of the row's n pixels; its odd last pixel alone``,
    `patch.blocked_convs.blocked_pixels`) as ``if n == W: the region's R x W pixels as one row, channel by channel;
    else: the rows as they are`` where W is the row stride of both the input and the output in pixels: a region as
    wide as its buffers is one contiguous run of pixels (an interior patch's, or any patch's that the image's border
    does not clip), and one run of R x W pixels makes a long chunk where each row alone is too short for the row
    kernel (mcunet-in0's 4x4 recompute stage, 16 -> 64 over 9 x 9: rows of 4 pairs). An odd run ends with a pair
    overlapping the one before it (its first pixel computed twice, the same value: the output is not the input).
    The pixels' order changes as in ``_rows``: a run's pairs are all widened before any output is stored."""
    if loop.kind != tirx.ForKind.SERIAL or _int(loop.min) != 0 or not isinstance(loop.body, tirx.SeqStmt) \
            or len(loop.body.seq) != 2:
        return None
    pairs_loop, odd = loop.body.seq
    n = _half(pairs_loop.extent) if isinstance(pairs_loop, tirx.For) else None
    if (n is None or not isinstance(odd, tirx.IfThenElse) or odd.else_case is not None
            or not _odd_test(odd.condition, n, ctx)):
        return None
    p = _pair_loop(pairs_loop, ctx)
    first_load = address_load(p.a) if p is not None else None
    if first_load is None or first_load.source.same_as(p.out):
        return None
    r, x = loop.loop_var, pairs_loop.loop_var
    ana = tvm.sym.Analyzer()

    def step(e: Any, v: Any) -> int | None:
        return _int(ana.simplify(substitute_vars(e, {v: v + 1}) - e))

    ia = first_load.indices[0]
    pair_step, row_step = step(ia, x), step(ia, r)
    if not pair_step or pair_step % 2 or row_step is None or row_step % (pair_step // 2):
        return None
    ps, width = pair_step // 2, row_step // (pair_step // 2)
    if width < 2 or uses_var(p.a_step, r) or uses_var(p.a_step, x):
        return None
    for w_row, consts, o0, stride in p.calls:
        if (step(o0, r) != width * stride or any(uses_var(e, r) for e in [w_row, *consts])):
            return None
    most_rows = ctx.bound(loop.extent)
    if most_rows is None:
        return None
    chunk = min(most_rows * width // 2, MAX_WIDE_BYTES // (4 * p.k))  # pairs a chunk: the stack budget, as _chunk's
    if not _worth(chunk, p.k):
        return None
    dtype = x.ty.dtype
    c = (lambda v: tirx.const(v, dtype))
    total = ana.simplify(loop.extent * width)
    pairs = tirx.floordiv(total, c(2))
    row = tirx.decl_buffer((chunk * p.k,), "uint32", WIDE_NAME)
    origin = {r: c(0), x: c(0)}
    base = ana.simplify(substitute_vars(ia, origin))
    o_base = [ana.simplify(substitute_vars(call[2], origin)) for call in p.calls]

    def run(first: Any, length: Any) -> list:
        """The run's ``length`` pairs from its pixel ``first``: widened, then each channel along them."""
        i = tirx.Var(x.name + "_f", x.ty)
        at = tirx.address_of(tirx.BufferLoad(first_load.source, [base + (first + i * 2) * ps]))
        widen = tirx.For(i, c(0), length, tirx.ForKind.SERIAL, _widen_call(p, at, row, i))
        return [widen, _channels(p, lambda j, call: [_row_call(p, row, c(0), length, call,
                                                               o_base[j] + first * call[3])])]

    t = tirx.Var(x.name + "_t", x.ty)  # the chunks, the last one shorter
    chunks = tirx.For(t, c(0), tirx.floordiv(pairs + c(chunk - 1), c(chunk)), tirx.ForKind.SERIAL,
                      tirx.SeqStmt(run(t * (2 * chunk), tirx.min(c(chunk), pairs - t * chunk))))
    # an odd run's last pixel: in a pair overlapping the run's last one (the same value stored twice)
    last = tirx.IfThenElse(tirx.floormod(total, c(2)) == c(1), tirx.SeqStmt(run(total - c(2), c(1))), None)
    flat = tirx.SeqStmt([tirx.AllocBuffer(row), chunks, last])
    return tirx.IfThenElse(n == tirx.const(width, dtype), flat, loop), p.acc


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

    # whole planes first (the map is bottom-up: a row's own rewrite would hide its plane), then a patch stage's
    # regions as wide as their buffers, then single rows (the regions' other form included)
    out = tvm_ffi.structural_map(func, [(tirx.For, rewrite(lambda loop: _rows(f) if (f := _fused_rows(loop)) else None))])
    ctx = _Context(func)
    out = tvm_ffi.structural_map(out, [(tirx.For, rewrite(lambda loop: _flat_rows(loop, ctx)))])
    out = tvm_ffi.structural_map(out, [(tirx.For, rewrite(lambda loop: _rows(loop, ctx)))])
    return _drop_unread(out, accs) if accs else out


def ChannelRows() -> tvm.transform.Pass:  # noqa: N802 (TVM's naming of passes)
    """The pass form of ``channel_rows``, after ``WidenWeights`` in the plain-C lowering."""
    return tirx.transform.prim_func_pass(lambda f, _m, _c: channel_rows(f), opt_level=0, name="tvm_patch.ChannelRows")
