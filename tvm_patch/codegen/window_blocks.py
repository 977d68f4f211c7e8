"""Neighbouring convolution windows computed together: two, three or four outputs a ``tvmp_window{2,3,4}_s8`` call.

A TIR pass for the plain-C lowering, after ``MicroKernels`` (which makes each interior convolution window one
``tvmp_window_s8`` call, or a kernel row of dot calls): an output loop whose body computes one such window into a
one-element accumulator, then its epilogue, becomes a loop over blocks of two outputs (``tvmp_window2_s8``) or
four (``tvmp_window4_s8``: 5x5 and 7x7 rows; three, ``tvmp_window3_s8``, for the last three of a 7-wide stride-2
row), so that the taps the neighbouring windows share are loaded once (``window_blocks`` says when and why it is
exact).
"""

from __future__ import annotations

import itertools
import math
from contextvars import ContextVar
from typing import Any

import tvm
import tvm_ffi
from tvm import tirx
from tvm.ir.expr import TensorLoad

from tvm_patch.codegen.micro_kernels import DOT, WINDOW, _extern_name, _int
from tvm_patch.tir_util import is_call, substitute_vars, uses_var, vars_of

__all__ = ["MIN_WINDOW_PAIRS", "PAIRED_WIDTHS", "WINDOW2", "WINDOW3", "WINDOW4", "WindowBlocks", "block_windows",
           "window_blocks"]

WINDOW2 = "tvmp_window2_s8"
WINDOW3 = "tvmp_window3_s8"
WINDOW4 = "tvmp_window4_s8"
_BLOCK_CALLS = {2: WINDOW2, 3: WINDOW3, 4: WINDOW4}
MIN_WINDOW_PAIRS = 2  # one pair per row measured slower (kws: 3 interior columns; the weight pairs cost per row)
PAIRED_WIDTHS = (3,)  # kernel widths paired: the SMLAD path of tvmp_window2_s8 (NCHW 5x5 and 7x7 rows are dot calls)


def _quad_widths(kw: int, d: int) -> bool:
    """Kernel widths whose contiguous rows ``tvmp_window4_s8`` runs four outputs at a time, the windows ``d`` bytes
    apart: odd from 5 at stride 1 (5x5, 7x7), 7, 11, ... at stride 2 (5 wide measured slower than in pairs)."""
    return kw >= 5 and kw % 2 == 1 if d == 1 else d == 2 and kw >= 7 and kw % 4 == 3


def _window_store(st: Any) -> tuple[tirx.BufferStore, tirx.For | None] | None:
    """(store, None) for ``acc[0] = tvmp_window_s8(...)``, (store, loop) for a serial loop around only such a store
    (an NCHW convolution's windows over its input channels), (the equivalent window store, None) for a window
    whose kernel rows are dot products (``_dot_rows_window``), else None."""
    if isinstance(st, tirx.BufferStore) and _extern_name(st.value) == WINDOW:
        return st, None
    if (isinstance(st, tirx.For) and st.kind == tirx.ForKind.SERIAL and _int(st.min) == 0 and _int(st.extent) is not None
            and isinstance(st.body, tirx.BufferStore) and _extern_name(st.body.value) == WINDOW):
        return st.body, st
    window = _dot_rows_window(st)
    return (window, None) if window is not None else None


def _dot_rows_window(st: Any) -> tirx.BufferStore | None:
    """``for ry in range(KH): acc[0] = tvmp_dot_s8(&P[b + ry * sy], &W[wb + ry * wy], KW, acc[0])`` (an interior
    NCHW depthwise window whose rows are contiguous runs: 5 x 5, 7 x 7) as the equivalent interior
    ``acc[0] = tvmp_window_s8(P, b, sy, 1, W, wb, wy, 1, KH, KW, 0, KH, 0, KW, 0, acc[0])``, else None."""
    if not (isinstance(st, tirx.For) and st.kind == tirx.ForKind.SERIAL and _int(st.min) == 0
            and _int(st.extent) is not None and isinstance(st.body, tirx.BufferStore)):
        return None
    ry, kh, store = st.loop_var, _int(st.extent), st.body
    call = store.value
    if _extern_name(call) != DOT or len(call.args) != 5 or _int(call.args[3]) is None:
        return None
    a_ptr, w_ptr, n, acc = call.args[1], call.args[2], _int(call.args[3]), call.args[4]
    if not (isinstance(acc, TensorLoad) and acc.source.same_as(store.buffer) and len(store.indices) == 1
            and _int(store.indices[0]) == 0 and len(acc.indices) == 1 and _int(acc.indices[0]) == 0):
        return None
    bases = []
    for ptr in (a_ptr, w_ptr):
        load = ptr.args[0] if is_call(ptr, ".address_of") and ptr.args else None
        if not isinstance(load, TensorLoad) or len(load.indices) != 1:
            return None
        lin = tvm.sym.detect_linear_equation(load.indices[0], [ry])
        if len(lin) != 2 or _int(lin[0]) is None or uses_var(lin[1], ry):
            return None
        bases.append((load.source, lin[1], lin[0]))
    (a_buf, b, sy), (w_buf, wb, wy) = bases

    def i32(x: Any) -> Any:
        return x if str(x.ty) == "int32" else tirx.Cast("int32", x)

    one, zero = tirx.const(1, "int32"), tirx.const(0, "int32")
    args = [tirx.address_of(tirx.BufferLoad(a_buf, [zero])), i32(b), i32(sy), one,
            tirx.address_of(tirx.BufferLoad(w_buf, [zero])), i32(wb), i32(wy), one,
            tirx.const(kh, "int32"), tirx.const(n, "int32"), zero, tirx.const(kh, "int32"), zero,
            tirx.const(n, "int32"), zero, acc]
    return tirx.BufferStore(store.buffer, tirx.call_extern("int32", WINDOW, *args), list(store.indices))


def window_blocks(loop: tirx.For, min_extent: int = MIN_WINDOW_PAIRS * 2, quads: bool = True) -> tirx.Stmt | None:
    """An output loop whose body computes one interior window (``tvmp_window_s8`` with the full kernel as its
    bounds) into a one-element accumulator, then an epilogue reading it, as a loop over pairs of outputs:

        for x in range(E):  acc[0] = init; acc[0] = tvmp_window_s8(P, b + d * x, ..., acc[0]); epilogue(x, acc[0])

    becomes ``for x2 in range(E // 2): pair = {init, init}; tvmp_window2_s8(P, b + 2 d x2, d, ..., pair);
    epilogue(2 x2, pair[0]); epilogue(2 x2 + 1, pair[1])`` (and the last output alone when E is odd), so the taps
    of neighbouring windows are loaded once. The window may sit in a loop of its own (an NCHW stem's input
    channels: ``for rc: acc[0] = tvmp_window_s8(...)``), which then runs around the pair call.

    Four outputs a call instead (``tvmp_window4_s8``; unless ``quads`` is false), over contiguous rows of odd
    widths from 5 (5x5, 7x7 at stride 1; 7x7 at stride 2: ``_quad_widths``), for an extent of at least four or
    one known only at run time (a patch stage's region width). For a known extent, after the quads, where
    ``_last_four`` says so (three left; one over 7-wide rows that read a local copy, ``_recomputable``) the last
    ``E % 4`` outputs are the row's last four windows with only those outputs stored (as below: all quads, so 7x7
    weights may be widened); else a pair and a single output; at stride 2, three left over rows that do not read a
    local copy, and for a row of only three, one call of three (``tvmp_window3_s8``). For an extent known at run
    time, the last ``E % 4`` outputs are the last four windows of the row with only those outputs stored, where the
    extent is at least four for every value of the loops around (``_min_value``; all quads again); else a pair and
    a single output, each under its test. Exact: each stored output's sum and epilogue are unchanged; the only
    reordering is the later windows' reads moving before the first output's store, and a read moved earlier sees
    the value it saw before (the kernels' in-place proofs make every read see its input unclobbered); an output
    whose window may read what an earlier output overwrote in place (the last four's first ones, computed before)
    is not stored again: its sum is thrown away."""
    extent, x = _int(loop.extent), loop.loop_var
    # an extent known only at run time (the patch stage's live parts) blocks too: E // 2 pairs, then one if E is odd
    # (or E // 4 quads, then the rest)
    if loop.kind != tirx.ForKind.SERIAL or _int(loop.min) != 0 or (extent is not None and extent < min(min_extent, 3)):
        return None
    stmts = list(loop.body.seq) if isinstance(loop.body, tirx.SeqStmt) else [loop.body]
    allocs = []  # the accumulator's allocation, where the lowering put it in the loop (its only user)
    while stmts and isinstance(stmts[0], tirx.AllocBuffer):
        allocs.append(stmts.pop(0))
    calls = [(i, w) for i, st in enumerate(stmts) if (w := _window_store(st)) is not None]
    if len(calls) != 1 or not all(isinstance(st, tirx.BufferStore) for i, st in enumerate(stmts) if i != calls[0][0]):
        return None
    at, (store, inner) = calls[0]
    acc = store.buffer
    if any(not a.buffer.same_as(acc) for a in allocs):
        return None
    call = store.value
    args = list(call.args)[1:]  # after the callee's name
    kh, kw = _int(args[8]), _int(args[9])  # the window's arguments: see _window_call
    if (kh is None or kw is None or [_int(a) for a in args[10:14]] != [0, kh, 0, kw] or len(store.indices) != 1
            or _int(store.indices[0]) != 0 or int(math.prod(int(d) for d in acc.shape)) != 1):
        return None
    last = args[-1]
    if not (isinstance(last, TensorLoad) and last.source.same_as(acc)):
        return None
    base = args[1].value if isinstance(args[1], tirx.Cast) and str(args[1].value.ty) == "int32" else args[1]
    lin = tvm.sym.detect_linear_equation(base, [x])
    if len(lin) != 2 or _int(lin[0]) is None or any(uses_var(a, x) for i, a in enumerate(args) if i != 1):
        return None
    sx = args[3].value if isinstance(args[3], tirx.Cast) else args[3]
    d, step = _int(lin[0]), _int(sx)
    strided = step is not None and step > 1 and d in (step, 2 * step)  # NHWC, channel outside: taps C bytes apart
    stem = inner is not None and (d, step) == (2, 1) and kw in PAIRED_WIDTHS  # an NCHW stem: windows over channels
    # NCHW 5x5, 7x7 at stride 1 or 2 over contiguous rows (rows of dot products): the wide-row SMLAD paths of
    # tvmp_window2_s8
    wide = _dot_rows_window(stmts[at]) is not None and (d, step) in ((1, 1), (2, 1))
    # (3x3 stride-1 planes four a call, tvmp_window4_s8's 3-wide path: -1 % on mcunet-in3's, but +7-13 % on kws's
    # in-place 25 x 5 and +4-6 % on two of vww's: pairs)
    n = 4 if quads and wide and _quad_widths(kw, d) and (extent is None or extent >= 4) else 2
    # three windows a call (tvmp_window3_s8: the quad's stride-2 path without its fourth window) for a row of three
    # or the three after its quads: mcunet-in0's 7x7 stride-2 layer over a padded 6 x 6 plane, rows of 3 outputs
    # (where the rows read a local copy, the last four once more instead: quads alone may take widened weights)
    threes = (wide and d == 2 and _quad_widths(kw, d) and extent is not None and extent % 4 == 3
              and (extent == 3 or not _recomputable(stmts, args[0])))
    if threes and extent == 3:
        n = 3
    elif extent is not None and extent < min_extent:
        return None
    if not strided and not stem and not wide and ((d, step) not in ((1, 1), (2, 1)) or kw not in PAIRED_WIDTHS):
        # a contiguous plane: only where the C kernel's SMLAD path applies (3 wide, stride 1 or 2; stride 2 since
        # round 37: -4 to -16 % on mbv2-w0.3-r80's stride-2 layers), measured slower elsewhere (generic); taps C
        # bytes apart (stride 1 or 2) take the generic path, which shares taps and weights
        return None
    init = stmts[:at]
    if len(init) > 1 or (init and not (init[0].buffer.same_as(acc) and not uses_var(init[0].value, x))):
        return None
    rest = stmts[at + 1:]
    if any(st.buffer.same_as(acc) for st in rest):
        return None
    pair = tirx.decl_buffer((n,), "int32", "window_pair")
    x2 = tirx.Var(x.name + f"_{n}", x.ty)
    start = init[0].value if init else last

    # one-element temporaries the epilogue stores and reads (the patch stage's requantization step): each later
    # output's copy gets its own, so that no two equal loads of one buffer stand on both sides of a store to it
    # (TVM's common subexpression elimination would take the first output's value for the second)
    loaded: set[Any] = set()
    for st in rest:
        tvm_ffi.structural_walk(st, (TensorLoad, lambda ld: loaded.add(ld.source)))
    temp_of = {st.buffer for st in rest if st.buffer in loaded and int(math.prod(int(d) for d in st.buffer.shape)) == 1}
    temps = [{b: tirx.decl_buffer(b.shape, b.dtype, b.name + f"_{k + 1}") for b in temp_of} for k in range(n)]

    def at_x(stmt: Any, value: Any, k: int) -> Any:
        moved = tvm_ffi.structural_map(stmt, [(tirx.Var, lambda v: value if v.same_as(x) else v)])
        if k == 0:  # the first output reads the accumulator itself (which stays in use: no unused C local)
            return moved

        def on_store(st: Any) -> Any:
            return tirx.BufferStore(temps[k][st.buffer], st.value, list(st.indices)) if st.buffer in temps[k] else st

        return tvm_ffi.structural_map(moved, [(TensorLoad, lambda ld: tirx.BufferLoad(pair, [tirx.const(k, "int32")])
                                               if ld.source.same_as(acc) else tirx.BufferLoad(temps[k][ld.source], list(
                                                   ld.indices)) if ld.source in temps[k] else ld),
                                              (tirx.BufferStore, on_store)])

    def block(first: Any, stored: list[tuple[int, Any]] | None = None) -> tirx.Stmt:
        """The n outputs from ``first`` on: one call, then each output's epilogue (only the ``stored`` ones, each as
        (k, the condition it runs under or None), when given)."""
        call = tirx.call_extern("void", _BLOCK_CALLS[n], args[0],
                                tvm.sym.Analyzer().simplify(lin[1] + lin[0] * first), tirx.Cast("int32", lin[0]),
                                *args[2:10], tirx.address_of(tirx.BufferLoad(pair, [tirx.const(0, "int32")])))
        body = [tirx.BufferStore(pair, start, [tirx.const(k, "int32")]) for k in range(n)]
        if inner is None:
            body.append(tirx.Evaluate(call))
        else:  # a fresh loop variable: the odd tail below keeps the original loop
            rc, rc2 = inner.loop_var, tirx.Var(inner.loop_var.name, inner.loop_var.ty)
            call = tvm_ffi.structural_map(call, [(tirx.Var, lambda v: rc2 if v.same_as(rc) else v)])
            body.append(tirx.For(rc2, inner.min, inner.extent, inner.kind, tirx.Evaluate(call)))
        body.append(tirx.BufferStore(acc, tirx.BufferLoad(pair, [tirx.const(0, "int32")]), [tirx.const(0, "int32")]))
        for k, cond in [(k, None) for k in range(n)] if stored is None else stored:
            epilogue = [at_x(st, first + k, k) for st in rest]
            body += epilogue if cond is None else [tirx.IfThenElse(cond, tirx.SeqStmt(epilogue), None)]
        return tirx.SeqStmt([tirx.AllocBuffer(pair), *(tirx.AllocBuffer(b) for t in temps[1:] for b in t.values()),
                             *allocs, tirx.SeqStmt(body)])

    n_pairs = tirx.const(extent // n, str(x.ty)) if extent is not None else tirx.floordiv(loop.extent, n)
    pairs = tirx.For(x2, tirx.const(0, str(x.ty)), n_pairs, tirx.ForKind.SERIAL, block(x2 * n))
    if extent is not None and extent % n == 0:
        return pairs
    if extent is None and n == 4 and _min_value(loop.extent) >= 4:
        # the last E % 4 outputs (known at run time): the four windows ending at the last, only those stored (the
        # others' windows may read what their outputs overwrote in place: their sums are thrown away)
        left = tirx.floormod(loop.extent, 4)
        stored = [(1, left == 3), (2, left >= 2), (3, None)]
        return tirx.SeqStmt([pairs, tirx.IfThenElse(left > 0, block(loop.extent - 4, stored), None)])
    if extent is None and n == 4:  # the last E % 4 outputs (known at run time): a pair, then one alone, as E says
        left, xt = tirx.floormod(loop.extent, 4), tirx.Var(x.name + "_t", x.ty)
        rest = tirx.For(xt, tirx.const(0, str(x.ty)), left, tirx.ForKind.SERIAL,
                        tvm_ffi.structural_map(loop.body, [(tirx.Var, lambda v: xt + (loop.extent - left)
                                                            if v.same_as(x) else v)]))
        return tirx.SeqStmt([pairs, window_blocks(rest, 2, quads=False) or rest])

    def tail(count: int, min_count: int) -> tirx.Stmt:
        """The quads' loop, then the last ``count`` outputs as their own loop, blocked where it can be."""
        xt = tirx.Var(x.name + "_t", x.ty)
        rest = tirx.For(xt, tirx.const(0, str(x.ty)), tirx.const(count, str(x.ty)), tirx.ForKind.SERIAL,
                        tvm_ffi.structural_map(loop.body, [(tirx.Var, lambda v: xt + (extent - count) if v.same_as(x)
                                                            else v)]))
        return tirx.SeqStmt([pairs, window_blocks(rest, min_count) or rest])

    if threes:  # the last three outputs: one call of three (reads only their windows)
        return tail(3, 3)
    if n == 4 and _last_four(kw, extent % 4, _recomputable(stmts, args[0])):
        # the last E % 4 outputs: the four windows ending at the last, only those stored (as for an extent known at
        # run time: the others' windows may read what their outputs overwrote in place, their sums thrown away)
        return tirx.SeqStmt([pairs, block(tirx.const(extent - 4, str(x.ty)),
                                          [(k, None) for k in range(4 - extent % 4, 4)])])
    if n == 4 and extent % 4 >= 2:  # the last two or three outputs: a pair (and one alone)
        return tail(extent % 4, 2)
    last_x = tirx.const(extent - 1, str(x.ty)) if extent is not None else loop.extent - 1
    tail = tvm_ffi.structural_map(loop.body, [(tirx.Var, lambda v: last_x if v.same_as(x) else v)])
    if extent is None:
        tail = tirx.IfThenElse(tirx.floormod(loop.extent, 2) == 1, tail, None)
    return tirx.SeqStmt([pairs, tail])


def _last_four(kw: int, left: int, local: bool) -> bool:
    """Do the last ``left`` outputs of a quad row of ``kw`` taps and a known extent come from the row's last four
    windows (only those outputs stored) rather than a pair and a single output? Measured layer by layer on the
    emulated M7 (docs/kernels.md, round 35): for three left, always (one call for a pair and a single, or for the
    last four stored whole: -0.8 to -9.8 % a layer); for one, over 7-wide rows that read a local copy (the padded
    copy: no border window, so every call is then a quad and the weights are widened: -17 to -21 % a layer). Not
    for two (a 7x7 pair is widened already: -0.2 to +0.2 % a layer, yet +0.6 % over mcunet-in0; 5x5 up to +3.5 %)
    nor for one elsewhere (+0.1 to +1.3 %: the quad's three extra windows cost more than the single saves)."""
    return left == 3 or (left == 1 and kw % 4 == 3 and local)


def _recomputable(stmts: list[Any], src: Any) -> bool:
    """Do this loop body's windows read a local copy? When they read a buffer the kernel allocates (``_LOCALS``;
    not one of its tensors, of which an in-place output may overwrite the input) and the body stores only to
    buffers it does not allocate (its tensors) or to one-element locals: then a window read again sees what it saw
    the first time (an output may be computed twice); through the padded copy (the export's form of a padded
    depthwise layer) the rows have no border windows either."""
    local = _LOCALS.get()
    load = src.args[0] if is_call(src, ".address_of") and src.args else None
    if local is None or not isinstance(load, TensorLoad) or not any(load.source.same_as(b) for b in local):
        return False
    stores: list[Any] = []
    for st in stmts:
        tvm_ffi.structural_walk(st, (tirx.BufferStore, lambda s: stores.append(s.buffer)))
    return all(not any(b.same_as(a) for a in local) or int(math.prod(int(d) for d in b.shape)) == 1 for b in stores)


# the buffers the function allocates, while block_windows runs (_recomputable)
_LOCALS: ContextVar[list[Any] | None] = ContextVar("tvmp_window_block_locals", default=None)
# the ranges of the function's loop variables, while block_windows runs (_min_value)
_RANGES: ContextVar[dict[Any, Any] | None] = ContextVar("tvmp_window_block_ranges", default=None)


def _min_value(extent: Any, most: int = 4096) -> int:
    """The least value of a loop extent known only at run time, over the ranges of the loops of the function
    (``block_windows``); a patch stage's region width, e.g. ``10 - max(3 j, 5) - max(0, 1 - 3 j)`` for j in 0..2:
    4. Exact (every value of its loop variables tried) where those loops have constant ranges of at most ``most``
    values in all; else the analyzer's bound, which may be lower (it bounds each ``max`` on its own: 3 there)."""
    ranges = _RANGES.get() or {}
    free: list[Any] = []
    for v in vars_of(extent):
        if not any(v.same_as(f) for f in free):
            free.append(v)
    spans = [(v, _int(ranges[v].min), _int(ranges[v].extent)) if v in ranges else (v, None, None) for v in free]
    if all(lo is not None and n is not None for _, lo, n in spans) and math.prod(n for _, _, n in spans) <= most:
        ana = tvm.sym.Analyzer()
        values = [_int(ana.simplify(substitute_vars(extent, dict(zip(free, (tirx.const(i, v.ty) for (v, _, _), i
                                                                              in zip(spans, point)))))))
                  for point in itertools.product(*(range(lo, lo + n) for _, lo, n in spans))]
        if values and all(v is not None for v in values):
            return min(values)
    ana = tvm.sym.Analyzer()
    for var, rng in ranges.items():
        ana.bind(var, rng)
    return int(ana.const_int_bound(extent).min_value)


def block_windows(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """``func`` with every output loop over single interior windows (``tvmp_window_s8``) run two or four outputs
    a call where ``window_blocks`` allows it."""
    local: list[Any] = []
    tvm_ffi.structural_walk(func.body, (tirx.AllocBuffer, lambda a: local.append(a.buffer)))
    ranges: dict[Any, Any] = {}

    def on_loop(f: tirx.For) -> None:
        ranges[f.loop_var] = tvm.ir.Range.from_min_extent(f.min, f.extent)

    tvm_ffi.structural_walk(func.body, (tirx.For, on_loop))
    tokens = _LOCALS.set(local), _RANGES.set(ranges)
    try:
        return tvm_ffi.structural_map(func, [(tirx.For, lambda loop: window_blocks(loop) or loop)])
    finally:
        _LOCALS.reset(tokens[0])
        _RANGES.reset(tokens[1])


def WindowBlocks() -> tvm.transform.Pass:  # noqa: N802 (TVM's naming of passes)
    """The pass form of ``block_windows``, right after ``MicroKernels`` in the plain-C lowering."""
    return tirx.transform.prim_func_pass(lambda f, _m, _c: block_windows(f), opt_level=0,
                                         name="tvm_patch.WindowBlocks")
