"""The register-blocked layers of the patch stage's written nest: a dense conv's output channels R at a time, for one
or two output pixels, their R x npx accumulators in the C local `acc_rows` (the `tvmp_dot_s8_rows*` and
`tvmp_dot_s8_px2_rows*` nests of the per-layer kernels), and a residual add computing its fused convs so
(`block_plan` says which layers, and how)."""

from __future__ import annotations

from typing import Any, Callable

from tvm import tirx

from tvm_patch.patch.block_plan import pairs_down, window_bytes, window_pos, window_stride, window_tap
from tvm_patch.patch.element_values import add_steps, requant_steps
from tvm_patch.patch.loops import I32, imm, loops
from tvm_patch.patch.nest_context import NestContext
from tvm_patch.patch.stage_forms import one_nest
from tvm_patch.patch.regions import acc_dtype
from tvm_patch.patch.te_stage import _float_act, conv_term, reduction_order, weight_at
from tvm_patch.tir_util import seq

__all__ = ["add_block", "blocked_pixels", "conv_block", "conv_channels"]


def _py(y: Any, p: Any, down: bool) -> Any:
    """Pixel p's row in a pair at (y, x): the pair's own row, or the next for a pair down a column."""
    return y + p if down else y


def _px(x: Any, p: Any, down: bool) -> Any:
    """Pixel p's column in a pair at (y, x): the next for a pair along a row, the pair's own down a column."""
    return x if down else x + p


def conv_block(ctx: NestContext, v: int, y: Any, x: Any, npx: int, dest: Callable[[Any, Any, Any], Any],
               down: bool = False) -> Any:
    """Dense conv v at image (y, x) and, with npx = 2, (y, x + 1) (``down``: (y + 1, x)), all output channels,
    register blocked: per block of R channels the R x npx accumulators (`acc_rows`, a C local) are reduced
    together, the reduction loops outside the channel (and pixel) loop, the `tvmp_dot_s8_rows*` /
    `tvmp_dot_s8_px2_rows*` nests of the per-layer kernels; then the R x npx epilogues, `dest(c, p, value)` each.
    In NCHW the pixels' windows (channels x kernel rows x columns, `block_plan.window_bytes`: an int8 1x1 conv's
    channels up to `PIXEL_MAX_BYTES`, a stem's 3x3x3) are first copied into `pixel` (a C local), so that the
    reduction is one contiguous run against the weight rows."""
    cb = tirx.Var("cb", I32)
    stmts, win = _copy_windows(ctx, v, y, x, npx, down)
    stmts.append(tirx.For(cb, imm(0), imm(ctx.stage.geometry[v].c_out // ctx.blocked[v]), tirx.ForKind.SERIAL,
                          tirx.SeqStmt(conv_channels(ctx, v, y, x, npx, cb,
                                                     lambda c, p, j, val: dest(c, p, val), win, down))))
    return tirx.SeqStmt(stmts) if len(stmts) > 1 else stmts[0]


def _copy_windows(ctx: NestContext, v: int, y: Any, x: Any, npx: int, down: bool = False) -> tuple[list, Any]:
    """(the statements copying conv v's input windows at (y, x) and, with npx = 2, its pair pixel's into a C local,
    the buffer its reduction then reads): where v copies its windows (`block_plan.window_bytes`: NCHW, or an NHWC
    k x k conv of narrow kernel rows), the npx windows in the weights' order (I, H, W or H, W, I), one run each,
    the padded taps zero; no statement otherwise (the reduction reads the input where it is)."""
    stage, sc = ctx.stage, ctx.scratch
    g = stage.geometry[v]
    src = stage.inputs[v][0]
    (sh, sw), (pt, pl, _, _) = g.stride, g.padding
    taps = g.kh * g.kw
    stmts = []
    win = sc.down_win if down else sc.pair_win[v] if npx == 2 and v in sc.pair_win else sc.pix
    if window_bytes(stage, v):  # the pixels' windows, in the weights' order (I, H, W or H, W, I): one run
        step, k_len = window_stride(stage, v), g.c_in * taps
        stmts.append(loops([(imm(0), imm(npx)), (imm(0), imm(g.c_in)), (imm(0), imm(g.kh)), (imm(0), imm(g.kw))],
                           lambda p, rc, ry, rx: tirx.BufferStore(
                               win, ctx.read(src, rc, _py(y, p, down) * imm(sh) - imm(pt) + ry,
                                             _px(x, p, down) * imm(sw) - imm(pl) + rx),
                               [p * imm(step) + window_pos(stage, v, rc, ry, rx)])))
        if step > k_len:  # the padded taps: zeros (their weights are zeros too), and so in the C local's extent
            stmts.append(loops([(imm(0), imm(npx)), (imm(0), imm(step - k_len))], lambda p, t: tirx.BufferStore(
                win, imm(0, stage.dtype), [p * imm(step) + imm(k_len) + t])))
    return stmts, win


def conv_channels(ctx: NestContext, v: int, y: Any, x: Any, npx: int, cb: Any,
                  dest: Callable[[Any, Any, Any, Any], Any], win: Any = None, down: bool = False) -> list:
    """`conv_block`'s statements for the block cb of R channels: the accumulators' init, the reduction (from
    `win`, default `pixel`, where the windows were copied there) and the R x npx epilogues, `dest(c, p, j,
    value)` each (j: the channel within the block)."""
    stage, accb, params = ctx.stage, ctx.scratch.accb, ctx.params
    layer, g, rows = stage.layers[v], stage.geometry[v], ctx.blocked[v]
    win = ctx.scratch.pix if win is None else win
    src = stage.inputs[v][0]
    (sh, sw), (pt, pl, _, _) = g.stride, g.padding
    w, b = params[f"layer{v}_weight"], params[f"layer{v}_bias"]
    window = window_bytes(stage, v) > 0
    taps = g.kh * g.kw
    k_len = g.c_in * taps

    def term(rc, ry, rx, p, j):
        if window:  # rc is the flat index into the window
            a = tirx.BufferLoad(win, [p * imm(window_stride(stage, v)) + rc])
            rc, ry, rx = window_tap(stage, v, rc)
        else:
            a = ctx.read(src, rc, _py(y, p, down) * imm(sh) - imm(pt) + ry,
                         _px(x, p, down) * imm(sw) - imm(pl) + rx)
        wv = weight_at(stage, lambda *idx: tirx.BufferLoad(w, list(idx)), cb * imm(rows) + j, rc, ry, rx)
        k = p * imm(rows) + j
        return tirx.BufferStore(accb, tirx.BufferLoad(accb, [k]) + conv_term(stage, layer, a, wv), [k])

    def mac(rc, ry, rx):
        if npx == 1:
            return loops([(imm(0), imm(rows))], lambda j: term(rc, ry, rx, imm(0), j))
        return loops([(imm(0), imm(npx)), (imm(0), imm(rows))], lambda p, j: term(rc, ry, rx, p, j))

    extent = {"I": k_len, "H": 1, "W": 1} if window else {"I": g.c_in, "H": g.kh, "W": g.kw}
    order = [a for a in reduction_order(stage) if extent[a] > 1]

    def red_body(*r):
        got = dict(zip(order, r))
        return mac(*(got.get(a, imm(0)) for a in "IHW"))

    red = loops([(imm(0), imm(extent[a])) for a in order], red_body) if order else red_body()
    if stage.dtype == "float32":
        init = loops([(imm(0), imm(npx * rows))], lambda t: tirx.BufferStore(accb, imm(0, acc_dtype(stage)), [t]))
    else:  # int8: each accumulator starts at its channel's bias (as in `element_values.value_stmt`)
        init = loops([(imm(0), imm(npx)), (imm(0), imm(rows))], lambda p, j: tirx.BufferStore(
            accb, tirx.BufferLoad(b, [cb * imm(rows) + j]), [p * imm(rows) + j]))

    def epilogue(p, j):
        c = cb * imm(rows) + j
        acc_pj = tirx.BufferLoad(accb, [p * imm(rows) + j])
        if stage.dtype == "float32":
            return dest(c, p, j, _float_act(acc_pj + tirx.BufferLoad(b, [c]), layer.activation))
        high, val = requant_steps(ctx, v, acc_pj, tirx.BufferLoad(params[f"layer{v}_multiplier"], [c]),
                                  tirx.BufferLoad(params[f"layer{v}_shift"], [c]))
        return tirx.SeqStmt([high, dest(c, p, j, val)])

    return [init, red, loops([(imm(0), imm(npx)), (imm(0), imm(rows))], epilogue)]


def add_block(ctx: NestContext, v: int, y: Any, x: Any, npx: int, dest: Callable[[Any, Any, Any], Any],
              down: bool = False) -> Any:
    """Residual add v at image (y, x) and, with npx = 2, (y, x + 1) (``down``: (y + 1, x)), all channels, its fused
    convs (`block_plan.blocked_adds`) computed as `conv_block` does (a conv that copies its windows, the add's
    only one, copies them first), a block of R channels at a time into `fused_rows*` (C locals), then the R x npx
    adds; `dest(c, p, value)` each."""
    stage, fvals = ctx.stage, ctx.scratch.fvals
    layer, rows = stage.layers[v], ctx.blocked[v]
    cb = tirx.Var("cb", I32)
    copies, stmts, slot = [], [], {}
    for u in ctx.fused_adds[v]:
        k = slot[u] = len(slot)
        copied, win = _copy_windows(ctx, u, y, x, npx, down)  # (an add copying a window has that conv alone)
        copies += copied
        stmts += conv_channels(ctx, u, y, x, npx, cb, lambda c, p, j, val, k=k: tirx.BufferStore(
            fvals[k], val, [p * imm(rows) + j]), win, down)

    def add(p, j):
        c = cb * imm(rows) + j
        ops = [tirx.BufferLoad(fvals[slot[u]], [p * imm(rows) + j]) if u in slot
               else ctx.read(u, c, _py(y, p, down), _px(x, p, down))
               for u in (stage.inputs[v][0], layer.other)]
        return seq(add_steps(ctx, v, *ops, lambda val: dest(c, p, val)))

    stmts.append(loops([(imm(0), imm(npx)), (imm(0), imm(rows))], add))
    channels = tirx.For(cb, imm(0), imm(stage.value_shape(v)[0] // rows), tirx.ForKind.SERIAL, tirx.SeqStmt(stmts))
    return tirx.SeqStmt(copies + [channels]) if copies else channels


def blocked_pixels(ctx: NestContext, v: int, rows: tuple, cols: tuple, pos: Callable[[Any, Any], tuple],
                   dest: Callable[[Any, Any, Any, Any], Any]) -> Any:
    """Conv v at every pixel of region rows x cols ((min, extent) pairs, r and q from the region's start;
    `pos(r, q)`: the image position, one row down for r + 1), `conv_block` each, in pairs of columns where v's form
    allows (`block_plan.pixel_pairs`). A row of odd width leaves its last pixel alone, or (`block_plan.pairs_down`,
    where the stage's `stage_forms.PAIRS_DOWN` flag says) its last column is computed in pairs down the column after
    all rows, the last row's pixel alone where the rows are odd too (session 36: a one-pixel dot about 30
    instructions an output against a pair's 25, mcunet-in0's 16 -> 64 layer of its 2x2 cache stage).
    `dest(c, r, q, value)` stores an output."""
    block = add_block if v in ctx.fused_adds else conv_block

    def one(r, q):
        y, x = pos(r, q)
        return block(ctx, v, y, x, 1, lambda c, p, val: dest(c, r, q, val))

    region = ctx.plan.tiles if v == ctx.last else ctx.plan.region_shape(v)
    if v not in ctx.pairs or region[1] < 2:  # (a one-column region has no pair: TVM's buffer compaction divides by
        return loops([rows, cols], one)  # zero on the pair loop it would get, of extent 0)
    (r_lo, r_n), (q_lo, q_n) = rows, cols

    def pair(r, t):
        q = q_lo + t * imm(2)
        y, x = pos(r, q)
        return block(ctx, v, y, x, 2, lambda c, p, val: dest(c, r, q + p, val))

    # the odd last column (and row) simplified over the patch index's range: TVM's buffer compaction divides by
    # zero estimating the region of the reads at q_lo + q_n - 1 as built (an NCHW stem under 1 x 2 patches)
    last_column = ctx.patch_ana.simplify(q_lo + q_n - imm(1))
    last_row = ctx.patch_ana.simplify(r_lo + r_n - imm(1))

    def row(r):
        return loops([(imm(0), tirx.floordiv(q_n, imm(2)))], lambda t: pair(r, t))

    def odd(n: Any) -> Any:
        return tirx.floormod(n, imm(2)) == imm(1)

    # each row's odd last pixel alone, after the row's pairs
    each_alone = loops([rows], lambda r: tirx.SeqStmt([row(r), tirx.IfThenElse(odd(q_n), one(r, last_column), None)]))
    if region[0] < 2 or not pairs_down(ctx.stage, ctx.blocked, v):
        return each_alone

    def down(t):
        r = r_lo + t * imm(2)
        y, x = pos(r, last_column)
        return block(ctx, v, y, x, 2, lambda c, p, val: dest(c, r + p, last_column, val), down=True)

    column = tirx.SeqStmt([loops([(imm(0), tirx.floordiv(r_n, imm(2)))], down),
                           tirx.IfThenElse(odd(r_n), one(last_row, last_column), None)])
    # both forms, the stage's flag choosing (`stage_forms`: resolved at export, TVM running the default); the rows
    # and their column one statement (`stage_forms.one_nest`), as the rows alone are: one layer nest either way
    return tirx.IfThenElse(ctx.down, one_nest(tirx.SeqStmt([loops([rows], row),
                                                            tirx.IfThenElse(odd(q_n), column, None)])), each_alone)
