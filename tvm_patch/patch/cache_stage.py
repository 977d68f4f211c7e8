"""Cache mode: the stage as one PrimFunc whose patches, in raster order, compute every intermediate element once.

Recompute mode (`schedule.build_stage`) lets TVM derive each patch's regions and recomputes the halos. Here the
loop nest is written directly in TIR, since the caches carry values from one patch to the next (a loop-carried
state TE cannot express). Per patch (i, j) and value v, in execution order (`regions.execution_order`):

1. v's region buffer (`regions.plan_patches`: the same region as in recompute mode) takes from the row cache
   the rows the patches above computed (for the patch's new columns) and from the column cache the columns
   the patch to the left computed (all its rows);
2. the rest is computed: its live part from the producers' region buffers (a conv through a one-element
   accumulator, int8 requantization as in `te_stage`), the ring outside the live part as padding;
3. the column cache takes the buffer's right halo (for patch (i, j + 1)) and the row cache its bottom halo
   over the patch's new columns (for row i + 1, at the image columns it covers).

Cache sizes are `regions.cache_bytes`; the semantics are those of `reference.run_numpy_cached`, which
checks them. The per-patch buffers and the caches are placed by `cache_plan` (`STAGE_OFFSETS_ATTR`, read by the
C export): per-patch buffers live from their producer to their last reader in the patch body, caches during the
whole stage.

Without its caches (`build_recompute_stage`) the same nest is recompute mode: every patch computes its whole
region, the halos again; the C export builds recompute mode that way, for these kernel forms (loop bounds instead
of per-element tests, two pixels, a copied input without a test per byte).

This module declares the buffers (into a `nest_context.NestContext`) and writes each value's per-patch steps. One
element of a layer is written by `element_values`, register-blocked convs and adds by `blocked_convs` (`block_plan`
says which layers are blocked, and how); `loops` has the loop helpers.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Callable

import tvm
from tvm import s_tir, tirx

from tvm_patch.names import STAGE_OFFSETS_ALT_ATTR, STAGE_OFFSETS_ATTR
from tvm_patch.patch.block_plan import blocked_adds, blocking, depthwise
from tvm_patch.patch.blocked_convs import blocked_pixels
from tvm_patch.patch.cache_plan import copies_output, homes, over_input, workspace_plan, writes_top_left
from tvm_patch.patch.element_values import value_stmt
from tvm_patch.patch.loops import I32, imm, live_and_ring, loops
from tvm_patch.patch.nest_context import NestContext, declare_scratch, in_layout
from tvm_patch.patch.regions import Interval, PatchPlan, buffer_names, execution_order, halo_overlap, plan_patches
from tvm_patch.patch.schedule import build_stage, depthwise_in_place_layers, skip_accumulations
from tvm_patch.patch.stage import STAGE_INPUT, Conv, MaxPool, Stage
from tvm_patch.patch.stage_forms import bind_flag, pairs_down_default, pairs_down_flag
from tvm_patch.patch.te_stage import pad_value, param_arrays, param_names
from tvm_patch.quant.fixedpoint import c_barrier

__all__ = ["build_cached_stage", "build_recompute_stage"]


def build_recompute_stage(stage: Stage, patches: tuple[int, int], alignment: int = 16) -> tirx.PrimFunc:
    """Recompute mode for the C export (the `PatchStage` pass): this module's loop nest without caches (every patch
    computes its whole region, as `schedule.build_stage` does), so recompute mode gets cache mode's kernel forms:
    live parts as loop bounds instead of a test per element, two pixels for 1x1 convs, a copied input without a
    test per byte. A dense conv computed inside its residual add (`skip_accumulations`) is register blocked there
    too, two pixels at a time where its form allows (`block_plan.blocked_adds`: an NCHW inverted residual block's
    projection, its pixels' channels copied, since session 41); a stage with such a conv this nest would compute
    element by element (two convs of one add both copying windows) keeps `build_stage(in_place=True)`."""
    fused = skip_accumulations(stage, plan_patches(stage, patches))
    if set(fused) - {u for us in blocked_adds(stage, fused).values() for u in us}:
        return build_stage(stage, patches, in_place=True)
    return build_cached_stage(stage, patches, alignment, caches=False)


def build_cached_stage(stage: Stage, patches: tuple[int, int], alignment: int = 16,
                       in_place: bool = True, caches: bool = True) -> tirx.PrimFunc:
    """The stage over `patches` = (rows, cols) of patches in cache mode (see the module docstring); the same
    arguments as `schedule.build_stage`: (input, parameters of `te_stage.param_names`, output). `in_place`: the
    convention's in-place steps, as in recompute mode (see the module docstring). `caches=False`: no row or
    column caches, every patch computing its whole region (recompute mode, `build_recompute_stage`)."""
    ctx = _nest_context(stage, plan_patches(stage, patches), in_place, caches, alignment)
    body = []
    for v in execution_order(stage):
        if v in ctx.fused:
            continue
        if v == STAGE_INPUT:
            body += _input_steps(ctx)
        elif v == ctx.last:
            body.append(_output_steps(ctx, v))
        else:
            body += _value_steps(ctx, v)
    return _prim_func(ctx, body, alignment)


def _nest_context(stage: Stage, plan: PatchPlan, in_place: bool, caches: bool, alignment: int) -> NestContext:
    """The nest's buffers and per-layer facts: which values are computed inside their adds or held in another's
    buffer, the per-patch region buffers and caches, the one-channel buffers of in-place depthwise layers, the
    register blocks and their C locals, and the batch and patch loops' variables."""
    last = len(stage.layers) - 1
    dw = depthwise_in_place_layers(stage) if in_place else set()
    fused = skip_accumulations(stage, plan) if in_place else {}
    home = homes(plan, fused, last)
    # in-place depthwise layers written over their input's region at its top-left corner: held in its buffer
    top_left = {v for v in dw if stage.inputs[v][0] not in fused and stage.inputs[v][0] != STAGE_INPUT
                and writes_top_left(stage, plan, v, caches)}
    # ... or, strided in recompute mode, in a compact buffer of their own at their input's offset (`over_input`)
    compact = {v for v in top_left if over_input(stage, plan, v, home, {}, top_left, caches)}
    for v in sorted(top_left - compact):
        home[v] = home.get(stage.inputs[v][0], (stage.inputs[v][0], 0, 0))
    dw -= top_left
    region, rows_c, cols_c = _region_buffers(stage, plan, fused, home, caches)
    # residual add -> its fused convs, computed a block of channels (and two pixels) at a time inside it
    fused_adds = blocked_adds(stage, fused)
    blocked, pairs = blocking(stage, dw, fused, fused_adds)
    scratch = declare_scratch(stage, blocked, pairs)
    out_copy = {v for v in dw if copies_output(stage, plan, v, caches)}
    chan = _channel_buffers(stage, plan, dw, out_copy)
    over = _over_inputs(stage, plan, home, blocked, top_left, caches, compact, (region, rows_c, cols_c, chan),
                        alignment)
    pi, pj = tirx.Var("i", I32), tirx.Var("j", I32)
    patch_ana = tvm.sym.Analyzer()  # expressions of the patch index in their simplest form
    patch_ana.bind(pi, tvm.ir.Range.from_min_extent(0, plan.counts[0]))
    patch_ana.bind(pj, tvm.ir.Range.from_min_extent(0, plan.counts[1]))
    inp = tirx.decl_buffer(stage.input_shape, stage.dtype, name="input")
    params = {name: tirx.decl_buffer(arr.shape, str(arr.dtype), name=name)
              for name, arr in zip(param_names(stage), param_arrays(stage))}
    out = tirx.decl_buffer(stage.output_shape, stage.dtype, name="output")
    return NestContext(stage=stage, plan=plan, inp=inp, params=params, out=out, region=region, rows_c=rows_c,
                       cols_c=cols_c, chan=chan, home=home, fused=fused, fused_adds=fused_adds, dw=dw,
                       top_left=top_left, over=over, out_copy=out_copy, blocked=blocked, pairs=pairs, scratch=scratch,
                       n=tirx.Var("n", I32), pi=pi, pj=pj, patch_ana=patch_ana, down=pairs_down_flag(),
                       down_default=pairs_down_default(caches, stage.layout))


def _over_inputs(stage: Stage, plan: PatchPlan, home: dict, blocked: dict, top_left: set, caches: bool,
                 compact: set[int], bufs: tuple, alignment: int) -> set[int]:
    """The layers that write their buffer over their input's (`cache_plan.over_input`): the compact top-left ones,
    and each 1x1 conv that can and has no caches (their rows and columns are written into its buffer before its
    input is read) where that lowers the stage's workspace (tried in execution order), since the
    alias costs a conv nothing but may cost the planner: mcunet-in0's 4x4 stage, kept there, ran 2 % slower
    (session 42, its network's peak outside the stage)."""
    over = set(compact)
    best = workspace_plan(stage, *bufs, home, alignment, over)["bytes"]
    for v in execution_order(stage):
        if v in bufs[0] and v not in top_left and v not in bufs[1] and v not in bufs[2] and \
                over_input(stage, plan, v, home, blocked, top_left, caches):
            size = workspace_plan(stage, *bufs, home, alignment, over | {v})["bytes"]
            if size < best:
                over, best = over | {v}, size
    return over


def _region_buffers(stage: Stage, plan: PatchPlan, fused: dict, home: dict,
                    caches: bool) -> tuple[dict[int, Any], dict[int, Any], dict[int, Any]]:
    """(value -> per-patch region buffer, -> row cache, -> column cache): a region buffer for every value below the
    last but those computed inside their adds or held in another's buffer; caches only with `caches`, where the
    value's halo overlaps along that axis and there is more than one patch along it."""
    nh, nw = plan.counts
    names = buffer_names(stage)
    nd = partial(in_layout, stage)
    region: dict[int, Any] = {}  # value -> per-patch buffer (C, rows, cols) in the layout, no batch axis
    rows_c: dict[int, Any] = {}
    cols_c: dict[int, Any] = {}
    for v in range(STAGE_INPUT, len(stage.layers) - 1):
        if v in fused:
            continue  # computed inside its residual add, one element at a time: no buffer, no caches
        c = stage.value_shape(v)[0]
        rh, rw = plan.region_shape(v)
        if v not in home:
            region[v] = tirx.decl_buffer(nd(c, rh, rw), stage.dtype, name=names[v])
        if v >= 0:
            hr, wc = halo_overlap(plan.h[v]), halo_overlap(plan.w[v])
            if caches and hr and nh > 1:
                rows_c[v] = tirx.decl_buffer(nd(c, hr, plan.w[v].domain.size), stage.dtype, name=f"{names[v]}_rows")
            if caches and wc and nw > 1:
                cols_c[v] = tirx.decl_buffer(nd(c, rh, wc), stage.dtype, name=f"{names[v]}_cols")
    return region, rows_c, cols_c


def _channel_buffers(stage: Stage, plan: PatchPlan, dw: set[int], out_copy: set[int]) -> dict[int, Any]:
    """In-place depthwise layer -> its one-channel buffer: of its output's region where it computes into it
    (`out_copy`), else of its input's, the input channel copied there first."""
    names = buffer_names(stage)
    nd = partial(in_layout, stage)
    chan: dict[int, Any] = {}
    for v in sorted(dw):
        u = stage.inputs[v][0]
        if v in out_copy:
            chan[v] = tirx.decl_buffer(nd(1, *plan.region_shape(v)), stage.dtype, name=f"{names[v]}_chan")
        else:  # v's input channel
            chan[v] = tirx.decl_buffer(nd(1, *plan.region_shape(u)), stage.dtype, name=f"{names[v]}_in_chan")
    return chan


def _input_steps(ctx: NestContext) -> list:
    """The input's region copied in (from the first row and column its readers need), its ring padded."""
    v = STAGE_INPUT
    c_ext = (imm(0), imm(ctx.stage.value_shape(v)[0]))
    rh, rw = ctx.plan.region_shape(v)
    _, ih, iw = ctx.stage.input_chw
    pad = pad_value(ctx.stage, v)

    def fill(ch, r, q):
        return ctx.store(ctx.region[v], ctx.at(ctx.inp, ch, r + ctx.lo(v, 0), q + ctx.lo(v, 1), batch=ctx.n), ch, r, q)

    first = _input_read_from(ctx, v)
    return live_and_ring(
        (first[0], imm(rh)), (first[1], imm(rw)), (ctx.lo(v, 0), ctx.lo(v, 1)), (Interval(0, ih), Interval(0, iw)),
        lambda rows, cols: ctx.chw_loops(c_ext, rows, cols, lambda ch, r, q: ctx.store(ctx.region[v], pad, ch, r, q)),
        lambda rows, cols: ctx.chw_loops(c_ext, rows, cols, fill))


def _input_read_from(ctx: NestContext, v: int) -> tuple[Any, Any]:
    """The first row and column of the input's region that patch (i, j) reads: the input is not cached, but
    its readers compute only the rows and columns their caches do not hold, so the rows and columns above
    and left of their windows are not copied again (the copy is the input's quantization for a float input).
    (0, 0) unless every reader is a conv or max pool that keeps its own region with caches."""
    stage, plan = ctx.stage, ctx.plan
    readers = [u for u in range(ctx.last + 1) if v in stage.inputs[u]]
    if not readers or any(u == ctx.last or u in ctx.dw or u in ctx.fused or u in ctx.home
                          or not isinstance(stage.layers[u], (Conv, MaxPool)) for u in readers):
        return imm(0), imm(0)
    first = []
    for axis, (p, cache) in enumerate(((ctx.pi, ctx.rows_c), (ctx.pj, ctx.cols_c))):
        starts = []
        for u in readers:
            layer = stage.layers[u]
            if isinstance(layer, Conv):
                g = stage.geometry[u]
                stride, before = g.stride[axis], g.padding[axis]
            else:
                stride, before = layer.stride[axis], layer.padding[axis]
            skip = halo_overlap(plan.h[u] if axis == 0 else plan.w[u]) if u in cache else 0
            # the first image row (column) the reader's window touches for its first computed one
            starts.append((ctx.lo(u, axis) + imm(skip)) * imm(stride) - imm(before) - ctx.lo(v, axis) if skip else None)
        if any(x is None for x in starts):  # a reader computes its whole region: the whole input region
            first.append(imm(0))
            continue
        start = starts[0]
        for x in starts[1:]:
            start = tirx.min(start, x)
        first.append(tirx.Select(p > 0, tirx.max(start, imm(0)), imm(0)))
    return first[0], first[1]


def _output_steps(ctx: NestContext, v: int) -> Any:
    """The last layer v over the patch's output tile (the tile's rows and columns inside the output: a last tile
    may run past it), written to the stage's output."""
    stage, pi, pj, n = ctx.stage, ctx.pi, ctx.pj, ctx.n
    th, tw = ctx.plan.tiles
    c_ext = (imm(0), imm(stage.value_shape(v)[0]))
    _, ho, wo = stage.value_shape(v)

    def final(ch, r, q):
        y, x = pi * imm(th) + r, pj * imm(tw) + q
        return value_stmt(ctx, v, ch, y, x, lambda val: ctx.store(ctx.out, val, ch, y, x, batch=n))

    rows = (imm(0), tirx.min(imm(th), imm(ho) - pi * imm(th)))
    cols = (imm(0), tirx.min(imm(tw), imm(wo) - pj * imm(tw)))
    if v in ctx.blocked:
        return blocked_pixels(
            ctx, v, rows, cols, lambda r, q: (pi * imm(th) + r, pj * imm(tw) + q),
            lambda ch, r, q, val: ctx.store(ctx.out, val, ch, pi * imm(th) + r, pj * imm(tw) + q, batch=n))
    if not ctx.nchw and depthwise(stage, v):  # channel outermost: its windows neighbour along x (pairs)
        return loops([c_ext, rows, cols], final)
    return ctx.chw_loops(c_ext, rows, cols, final)


def _value_steps(ctx: NestContext, v: int) -> list:
    """Value v's region in patch (i, j): filled and computed (an in-place depthwise layer channel by channel),
    then its halos handed to the caches."""
    c_ext = (imm(0), imm(ctx.stage.value_shape(v)[0]))
    steps = [_depthwise_channels(ctx, v, c_ext)] if v in ctx.dw else _fill_and_compute(ctx, v, c_ext)
    return steps + _to_caches(ctx, v, c_ext)


def _first_computed(ctx: NestContext, v: int) -> tuple[int, int, Any, Any]:
    """(v's cached rows, its cached columns, the first row and column of its region patch (i, j) computes): the
    cached ones come from the patches above and to the left."""
    hr = halo_overlap(ctx.plan.h[v]) if v in ctx.rows_c else 0
    wc = halo_overlap(ctx.plan.w[v]) if v in ctx.cols_c else 0
    return hr, wc, tirx.Select(ctx.pi > 0, imm(hr), imm(0)), tirx.Select(ctx.pj > 0, imm(wc), imm(0))


def _fill_and_compute(ctx: NestContext, v: int, c_ext: tuple, reader: Callable | None = None,
                      put: Callable | None = None) -> list:
    """v's region over the channels c_ext: the cached rows and columns, then the rest computed; `put`
    (value, channel, r, q) -> statement overrides where an element goes (an in-place depthwise's output
    channel: its one-channel buffer); `reader` where a conv reads its input (`value_stmt`)."""
    pi, pj, lo = ctx.pi, ctx.pj, ctx.lo
    rh, rw = ctx.plan.region_shape(v)
    hr, wc, r0, q0 = _first_computed(ctx, v)
    dom = ctx.plan.w[v].domain.lo
    pad = pad_value(ctx.stage, v)
    stmts = []
    reg_store = put or ctx.reg_store
    if v in ctx.rows_c:
        def from_rows(ch, r, q):
            return reg_store(v, ctx.at(ctx.rows_c[v], ch, r, q + lo(v, 1) - imm(dom)), ch, r, q)
        stmts.append(tirx.IfThenElse(pi > 0, ctx.chw_loops(c_ext, (imm(0), imm(hr)), (q0, imm(rw) - q0), from_rows),
                                     None))
    if v in ctx.cols_c:
        def from_cols(ch, r, q):
            return reg_store(v, ctx.at(ctx.cols_c[v], ch, r, q), ch, r, q)
        stmts.append(tirx.IfThenElse(pj > 0, ctx.chw_loops(c_ext, (imm(0), imm(rh)), (imm(0), imm(wc)), from_cols),
                                     None))

    def compute(ch, r, q):
        y, x = r + lo(v, 0), q + lo(v, 1)
        return value_stmt(ctx, v, ch, y, x, lambda val: reg_store(v, val, ch, r, q), reader)

    def live_part(rows, cols):
        if v in ctx.blocked:
            return blocked_pixels(ctx, v, rows, cols, lambda r, q: (r + lo(v, 0), q + lo(v, 1)),
                                  lambda ch, r, q, val: reg_store(v, val, ch, r, q))
        if v in ctx.top_left:  # channel outermost: a channel's windows neighbour along x (pairs)
            return loops([c_ext, rows, cols], compute)
        return ctx.chw_loops(c_ext, rows, cols, compute)

    pieces = live_and_ring((r0, imm(rh)), (q0, imm(rw)), (lo(v, 0), lo(v, 1)), (ctx.plan.h[v].live, ctx.plan.w[v].live),
                           lambda rows, cols: ctx.chw_loops(c_ext, rows, cols,
                                                            lambda ch, r, q: reg_store(v, pad, ch, r, q)),
                           live_part)
    if v in ctx.top_left or v in ctx.over:  # over its input: the live part first (it reads under the ring)
        pieces = [pieces[-1], *pieces[:-1]]
    return stmts + pieces


def _depthwise_channels(ctx: NestContext, v: int, c_ext: tuple) -> Any:
    """In-place depthwise layer v channel by channel through its one-channel buffer (see `workspace_plan`): the
    input's channel copied into it first and v computed from it over the input, or v computed into it from the
    input itself and then copied over it (`out_copy`)."""
    u = ctx.stage.inputs[v][0]
    rh, rw = ctx.plan.region_shape(v)
    uh, uw = ctx.plan.region_shape(u)
    chan = ctx.chan[v]
    ch = tirx.Var("ch", I32)
    if v in ctx.out_copy:
        def to_chan(_v, val, _ch, r, q):
            return ctx.store(chan, val, imm(0), r, q)

        def copy_out(r, q):
            return ctx.reg_store(v, ctx.at(chan, imm(0), r, q), ch, r, q)

        one = tirx.SeqStmt([*_fill_and_compute(ctx, v, (ch, imm(1)), put=to_chan),
                            loops([(imm(0), imm(rh)), (imm(0), imm(rw))], copy_out, unroll_inner=True)])
    else:
        def copy(r, q):
            return ctx.store(chan, ctx.reg_at(u, ch, r, q), imm(0), r, q)

        one = tirx.SeqStmt([loops([(imm(0), imm(uh)), (imm(0), imm(uw))], copy, unroll_inner=True),
                            *_fill_and_compute(ctx, v, (ch, imm(1)), ctx.from_chan(v))])
    return tirx.For(ch, imm(0), c_ext[1], tirx.ForKind.SERIAL, one)


def _to_caches(ctx: NestContext, v: int, c_ext: tuple) -> list:
    """v's right halo into its column cache (for patch (i, j + 1)) and its bottom halo over the patch's new columns
    into its row cache (for row i + 1), unless the patch is the last of its row or column."""
    nh, nw = ctx.plan.counts
    rh, rw = ctx.plan.region_shape(v)
    hr, wc, _, q0 = _first_computed(ctx, v)
    dom = ctx.plan.w[v].domain.lo
    steps = []
    if v in ctx.cols_c:
        def to_cols(ch, r, q):
            return ctx.store(ctx.cols_c[v], ctx.reg_at(v, ch, r, q + imm(rw - wc)), ch, r, q)
        steps.append(tirx.IfThenElse(ctx.pj + 1 < nw, ctx.chw_loops(c_ext, (imm(0), imm(rh)), (imm(0), imm(wc)),
                                                                    to_cols), None))
    if v in ctx.rows_c:
        def to_rows(ch, r, q):
            return ctx.store(ctx.rows_c[v], ctx.reg_at(v, ch, r + imm(rh - hr), q), ch, r, q + ctx.lo(v, 1) - imm(dom))
        steps.append(tirx.IfThenElse(ctx.pi + 1 < nh, ctx.chw_loops(c_ext, (imm(0), imm(hr)), (q0, imm(rw) - q0),
                                                                    to_rows), None))
    return steps


def _prim_func(ctx: NestContext, body: list, alignment: int) -> tirx.PrimFunc:
    """The patch steps under the batch and patch loops, the buffers allocated, as the stage's PrimFunc with its
    workspace plan (`STAGE_OFFSETS_ATTR`) and, where 1x1 convs write over their inputs, the plan without them
    (`STAGE_OFFSETS_ALT_ATTR`)."""
    barrier = c_barrier() if ctx.stage.dtype == "int8" else None  # between the loop nests, in the C export's kernels
    if barrier is not None:
        body = [x for st in body for x in (barrier, st)][1:]
    nh, nw = ctx.plan.counts
    nest = tirx.For(ctx.n, imm(0), imm(ctx.stage.batch), tirx.ForKind.SERIAL,
                    tirx.For(ctx.pi, imm(0), imm(nh), tirx.ForKind.SERIAL,
                             tirx.For(ctx.pj, imm(0), imm(nw), tirx.ForKind.SERIAL, tirx.SeqStmt(body))))
    # The caches carry values from one patch to the next: allocated by statements at the top, so that no pass
    # moves them into the patch loop (block allocations go to their accesses' common scope and are compacted
    # there, which would make them per-patch).
    # The per-patch buffers too: their shapes are exact already, and compacting them to the accesses' bounds
    # (loop bounds in min / max of the patch index) could only loosen them beyond the plan.
    for b in [*ctx.rows_c.values(), *ctx.cols_c.values(), *ctx.region.values(), *ctx.chan.values()]:
        nest = tirx.SeqStmt([tirx.AllocBuffer(b), nest])
    # both forms of the odd last columns where the stage has such columns, the flag bound to the default
    nest = bind_flag(ctx.down, ctx.down_default, nest)
    root = s_tir.SBlock([], [], [], "root", nest, None, ctx.scratch.buffers(ctx.fused_adds))
    func = tirx.PrimFunc([ctx.inp, *ctx.params.values(), ctx.out], s_tir.SBlockRealize([], True, root))
    # the parameters never overlap (as in recompute mode's TE-made function): restrict in C
    func = func.with_attr("tirx.noalias", True)
    bufs = (ctx.stage, ctx.region, ctx.rows_c, ctx.cols_c, ctx.chan, ctx.home, alignment)
    func = func.with_attr(STAGE_OFFSETS_ATTR, workspace_plan(*bufs, ctx.over))
    if ctx.over - ctx.top_left:  # the 1x1 convs' aliases pay only where the network's arena falls: the export's call
        func = func.with_attr(STAGE_OFFSETS_ALT_ATTR, workspace_plan(*bufs, ctx.over & ctx.top_left))
    return func
