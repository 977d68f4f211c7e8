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
"""

from __future__ import annotations

from typing import Any

import tvm
from tvm import s_tir, tirx

from tvm_patch.codegen.micro_kernels import MIN_DOT_LENGTH
from tvm_patch.codegen.workspace import LOCAL_MAX_BYTES, PIXEL_MAX_BYTES, PIXEL_NAME
from tvm_patch.names import STAGE_OFFSETS_ATTR
from tvm_patch.patch.cache_plan import copies_output, homes, workspace_plan, writes_top_left
from tvm_patch.patch.regions import (Interval, acc_dtype, accumulator_rows, buffer_names, execution_order, halo_overlap,
                                     plan_patches)
from tvm_patch.patch.schedule import build_stage, depthwise_in_place_layers, skip_accumulations
from tvm_patch.patch.stage import STAGE_INPUT, Add, Conv, Lookup, MaxPool, Stage
from tvm_patch.patch.te_stage import (_clamp_i8, _float_act, bounded_requantization, conv_term, pad_value,
                                      zero_point_requantization,
                                      param_arrays, param_names, reduction_order, requantized, weight_at)
from tvm_patch.quant.fixedpoint import TEOps, c_barrier, mbqm_proven

__all__ = ["build_cached_stage", "build_recompute_stage"]

_I32 = "int32"


def _c(v: int, dtype: str = _I32) -> Any:
    return tirx.const(int(v), dtype)


def _seq(stmts: list) -> Any:
    """The statements in order (TVM refuses a SeqStmt of one)."""
    return stmts[0] if len(stmts) == 1 else tirx.SeqStmt(stmts)


def _loops(extents: list[tuple[Any, Any]], body_fn, unroll_inner: bool = False) -> Any:
    """Nested serial loops over (min, extent) pairs; body_fn gets the loop variables. `unroll_inner`: the innermost
    loop unrolled (TVM's UnrollLoop, at lowering): a byte copy's row, which GCC's -O3 keeps a loop of five
    instructions a byte (load, store, pointer, compare, branch)."""
    vars_ = [tirx.Var(f"ax{k}", _I32) for k in range(len(extents))]
    body = body_fn(*vars_)
    for k, (v, (lo, ext)) in reversed(list(enumerate(zip(vars_, extents)))):
        kind = tirx.ForKind.UNROLLED if unroll_inner and k == len(extents) - 1 else tirx.ForKind.SERIAL
        body = tirx.For(v, lo, ext, kind, body)
    return body


def build_recompute_stage(stage: Stage, patches: tuple[int, int], alignment: int = 16) -> tirx.PrimFunc:
    """Recompute mode for the C export (the `PatchStage` pass): this module's loop nest without caches (every patch
    computes its whole region, as `schedule.build_stage` does), so recompute mode gets cache mode's kernel forms:
    live parts as loop bounds instead of a test per element, two pixels for 1x1 convs, a copied input without a
    test per byte. A dense conv computed inside its residual add (`skip_accumulations`) is register blocked there
    too, two pixels at a time where its form allows (`_blocked_adds`); a stage with such a conv this nest would
    compute element by element (an NCHW window copy) keeps `build_stage(in_place=True)`, which blocks it."""
    fused = skip_accumulations(stage, plan_patches(stage, patches))
    if set(fused) - {u for us in _blocked_adds(stage, fused).values() for u in us}:
        return build_stage(stage, patches, in_place=True)
    return build_cached_stage(stage, patches, alignment, caches=False)


def build_cached_stage(stage: Stage, patches: tuple[int, int], alignment: int = 16,
                       in_place: bool = True, caches: bool = True) -> tirx.PrimFunc:
    """The stage over `patches` = (rows, cols) of patches in cache mode (see the module docstring); the same
    arguments as `schedule.build_stage`: (input, parameters of `te_stage.param_names`, output). `in_place`: the
    convention's in-place steps, as in recompute mode (see the module docstring). `caches=False`: no row or
    column caches, every patch computing its whole region (recompute mode, `build_recompute_stage`)."""
    plan = plan_patches(stage, patches)
    nh, nw = plan.counts
    th, tw = plan.tiles
    last = len(stage.layers) - 1
    nchw = stage.layout == "NCHW"
    dt = stage.dtype
    names = buffer_names(stage)

    def nd(c, h, w):
        return (c, h, w) if nchw else (h, w, c)

    inp = tirx.decl_buffer(stage.input_shape, dt, name="input")
    params = {}
    for name, arr in zip(param_names(stage), param_arrays(stage)):
        params[name] = tirx.decl_buffer(arr.shape, str(arr.dtype), name=name)
    out = tirx.decl_buffer(stage.output_shape, dt, name="output")

    dw = depthwise_in_place_layers(stage) if in_place else set()
    fused = skip_accumulations(stage, plan) if in_place else {}
    home = homes(plan, fused, last)
    # in-place depthwise layers written over their input's region at its top-left corner: held in its buffer
    top_left = {v for v in dw if stage.inputs[v][0] not in fused and stage.inputs[v][0] != STAGE_INPUT
                and writes_top_left(stage, plan, v, caches)}
    for v in sorted(top_left):
        home[v] = home.get(stage.inputs[v][0], (stage.inputs[v][0], 0, 0))
    dw -= top_left
    region: dict[int, Any] = {}  # value -> per-patch buffer (C, rows, cols) in the layout, no batch axis
    rows_c: dict[int, Any] = {}
    cols_c: dict[int, Any] = {}
    for v in range(STAGE_INPUT, last):
        if v in fused:
            continue  # computed inside its residual add, one element at a time: no buffer, no caches
        c = stage.value_shape(v)[0]
        rh, rw = plan.region_shape(v)
        if v not in home:
            region[v] = tirx.decl_buffer(nd(c, rh, rw), dt, name=names[v])
        if v >= 0:
            hr, wc = halo_overlap(plan.h[v]), halo_overlap(plan.w[v])
            if caches and hr and nh > 1:
                rows_c[v] = tirx.decl_buffer(nd(c, hr, plan.w[v].domain.size), dt, name=f"{names[v]}_rows")
            if caches and wc and nw > 1:
                cols_c[v] = tirx.decl_buffer(nd(c, rh, wc), dt, name=f"{names[v]}_cols")
    acc = tirx.decl_buffer((1,), acc_dtype(stage), name="acc")
    tmp = [tirx.decl_buffer((1,), _I32, name=f"tmp{k}") for k in range(3)]
    fval = tirx.decl_buffer((1,), dt, name="fused")  # a fused projection's value, read by its add
    # residual add -> its fused convs, computed a block of channels (and two pixels) at a time inside it
    fused_adds = _blocked_adds(stage, fused)
    in_adds = {u for convs in fused_adds.values() for u in convs}
    blocked = {v: accumulator_rows(stage, v) for v in range(last + 1)
               if v not in dw and (v not in fused or v in in_adds) and accumulator_rows(stage, v) > 1}
    pairs = {v for v in blocked if _pixel_pairs(stage, v)}
    blocked |= {v: 2 for v in pairs}  # 2 pixels x 2 channels (see _pixel_pairs)
    for v, convs in fused_adds.items():  # the add's pixels and channel blocks: its convs' (all alike)
        blocked[v] = blocked[convs[0]]
        if all(u in pairs for u in convs):
            pairs.add(v)
        else:
            pairs -= set(convs)
            blocked |= {u: accumulator_rows(stage, u) for u in convs}
            blocked[v] = blocked[convs[0]]
    accb = tirx.decl_buffer((2 * max(blocked.values(), default=1),), acc_dtype(stage), name="acc_rows")
    fvals = [tirx.decl_buffer((2 * max(blocked.values(), default=1),), dt, name=f"fused_rows{k}") for k in range(2)]
    # a 1x1 conv's pixel pair gets its own window buffer, read by nothing but its widening, which then reads the
    # channel planes instead (codegen/widen_kernels: the copy goes); other windows share `pix`
    pair_win = {v: tirx.decl_buffer((2 * _window_bytes(stage, v),), dt, name=f"{PIXEL_NAME}_pair{v}")
                for v in pairs if _window_bytes(stage, v) and stage.geometry[v].kh * stage.geometry[v].kw == 1}
    pix_len = max([(2 if v in pairs and v not in pair_win else 1) * _window_stride(stage, v) for v in blocked],
                  default=0)
    pix = tirx.decl_buffer((max(pix_len, 1),), dt, name=PIXEL_NAME)
    chan: dict[int, Any] = {}  # in-place depthwise layer -> the one-channel copy of its input's (or output's) region
    out_copy = {v for v in dw if copies_output(stage, plan, v, caches)}
    for v in sorted(dw):
        u = stage.inputs[v][0]
        if v in out_copy:
            chan[v] = tirx.decl_buffer(nd(1, *plan.region_shape(v)), dt, name=f"{names[v]}_chan")
        else:
            chan[v] = tirx.decl_buffer(nd(1, *plan.region_shape(u)), dt, name=f"{names[v]}_in_chan")  # v's input channel

    n = tirx.Var("n", _I32)
    pi = tirx.Var("i", _I32)
    pj = tirx.Var("j", _I32)
    patch_ana = tvm.sym.Analyzer()  # expressions of the patch index in their simplest form (below)
    patch_ana.bind(pi, tvm.ir.Range.from_min_extent(0, nh))
    patch_ana.bind(pj, tvm.ir.Range.from_min_extent(0, nw))

    def lo(v: int, axis: int) -> Any:
        """Image row (axis 0) / column (1) where patch (i, j)'s region of v starts: affine in the patch index."""
        ax = plan.h[v] if axis == 0 else plan.w[v]
        p = pi if axis == 0 else pj
        step = ax.regions[1].lo - ax.regions[0].lo if len(ax.regions) > 1 else 0
        return p * _c(step) + _c(ax.regions[0].lo)

    def at(buf, c, y, x, batch=None):
        idx = [patch_ana.simplify(e) for e in nd(c, y, x)]
        return tirx.BufferLoad(buf, ([batch] if batch is not None else []) + idx)

    def store(buf, value, c, y, x, batch=None):
        idx = [patch_ana.simplify(e) for e in nd(c, y, x)]
        return tirx.BufferStore(buf, value, ([batch] if batch is not None else []) + idx)

    def reg_at(v, c, r, q):
        """Element (c, r, q) of value v's region (r, q: rows and columns from the region's start), in its own
        buffer or in the skip's that holds it (`home`, at a constant offset)."""
        h, dh, dw_ = home.get(v, (v, 0, 0))
        return at(region[h], c, r + _c(dh), q + _c(dw_))

    def reg_store(v, value, c, r, q):
        h, dh, dw_ = home.get(v, (v, 0, 0))
        return store(region[h], value, c, r + _c(dh), q + _c(dw_))

    reg_put = reg_store

    def read(v, c, y, x):
        """Value v at image position (y, x) (inside patch (i, j)'s region of v)."""
        return reg_at(v, c, y - lo(v, 0), x - lo(v, 1))

    def from_chan(v):
        """A reader of v's input at image positions from the one-channel copy `chan[v]`."""
        u = stage.inputs[v][0]
        return lambda _v, _c, y, x: at(chan[v], _c0, y - lo(u, 0), x - lo(u, 1))

    _c0 = _c(0)

    def requant_steps(v: int, total, mult, shift) -> tuple[Any, Any]:
        """Int8 conv layer v's requantization of the accumulator ``total`` (bias included) into ``tmp0``, and the
        clamped output value read from it: with the output zero point in the call where the constants allow
        (`zero_point_requantization`: `tvmp_requant_rbz`), else added after it."""
        q = stage.layers[v].quant
        rbz = zero_point_requantization(stage, v)
        high = tirx.BufferStore(tmp[0], requantized(total, mult, shift, bounded_requantization(stage, v),
                                                    int(q.output_zero_point) if rbz else None), [_c(0)])
        value = tirx.BufferLoad(tmp[0], [_c(0)])
        return high, _clamp_i8(value if rbz else value + _c(q.output_zero_point), q.act_min, q.act_max)

    def value_stmt(v: int, c, y, x, dest, reader=None) -> Any:
        """Compute layer v at image (y, x), channel c, and `dest(value)` it (live positions only); `reader`
        (value, channel, y, x) -> element overrides where a conv reads its input (an in-place depthwise: its copy)."""
        layer = stage.layers[v]
        reader = reader or read
        zero = _c(0, acc_dtype(stage))
        if isinstance(layer, Conv):
            g = stage.geometry[v]
            src = stage.inputs[v][0]
            cin_g, cout_g = g.c_in // g.groups, g.c_out // g.groups
            (sh, sw), (pt, pl, _, _) = g.stride, g.padding
            w = params[f"layer{v}_weight"]
            b = params[f"layer{v}_bias"]

            def tap(rc, ry, rx):
                cin = rc if g.groups == 1 else (c // _c(cout_g)) * _c(cin_g) + rc
                a = reader(src, cin, y * _c(sh) - _c(pt) + ry, x * _c(sw) - _c(pl) + rx)
                wv = weight_at(stage, lambda *idx: tirx.BufferLoad(w, list(idx)), c, rc, ry, rx)
                term = conv_term(stage, layer, a, wv)
                return tirx.BufferStore(acc, tirx.BufferLoad(acc, [_c(0)]) + term, [_c(0)])

            order = reduction_order(stage)
            extent = {"I": cin_g, "H": g.kh, "W": g.kw}
            red = _loops([(_c(0), _c(extent[a])) for a in order],
                         lambda *r: tap(*(r[order.index(a)] for a in "IHW")))
            if dt == "float32":
                total = tirx.BufferLoad(acc, [_c(0)]) + tirx.BufferLoad(b, [c])
                fin = dest(_float_act(total, layer.activation))
                return tirx.SeqStmt([tirx.BufferStore(acc, zero, [_c(0)]), red, fin])
            # int8: the bias is the accumulator's start (integer sums: the same value, one add fewer per output)
            mult, shift = params[f"layer{v}_multiplier"], params[f"layer{v}_shift"]
            high, fin = requant_steps(v, tirx.BufferLoad(acc, [_c(0)]), tirx.BufferLoad(mult, [c]),
                                      tirx.BufferLoad(shift, [c]))
            return tirx.SeqStmt([tirx.BufferStore(acc, tirx.BufferLoad(b, [c]), [_c(0)]), red, high, dest(fin)])
        if isinstance(layer, MaxPool):  # the running max over the window's in-image positions only
            (kh, kw), (sh, sw), (pt, pl, _, _) = layer.kernel, layer.stride, layer.padding
            src = stage.inputs[v][0]
            _, ih, iw = stage.value_shape(src)

            def pool_tap(ry, rx):
                yy, xx = y * _c(sh) - _c(pt) + ry, x * _c(sw) - _c(pl) + rx
                m = tirx.max(tirx.BufferLoad(acc, [_c(0)]), read(src, c, yy, xx).astype(acc_dtype(stage)))
                return tirx.IfThenElse(tirx.all(yy >= 0, yy < ih, xx >= 0, xx < iw),
                                       tirx.BufferStore(acc, m, [_c(0)]), None)

            red = _loops([(_c(0), _c(kh)), (_c(0), _c(kw))], pool_tap)
            m = tirx.BufferLoad(acc, [_c(0)])
            act = _float_act(m, layer.activation) if dt == "float32" else _clamp_i8(m, layer.act_min, layer.act_max)
            fin = dest(act)
            return tirx.SeqStmt([tirx.BufferStore(acc, tirx.min_value(acc_dtype(stage)), [_c(0)]), red, fin])
        if isinstance(layer, Lookup):
            val = read(stage.inputs[v][0], c, y, x).astype(_I32) + _c(128)
            return dest(tirx.BufferLoad(params[f"layer{v}_table"], [val]))
        assert isinstance(layer, Add)
        steps = []
        operands = []
        for u in (stage.inputs[v][0], layer.other):
            if u in fused:  # the projection, computed here element by element
                steps.append(value_stmt(u, c, y, x, lambda val: tirx.BufferStore(fval, val, [_c0])))
                operands.append(tirx.BufferLoad(fval, [_c0]))
            else:
                operands.append(read(u, c, y, x))
        return _seq([*steps, *add_steps(v, *operands, dest)])

    def add_steps(v: int, a, o, dest) -> list:
        """Residual add v of the operand values a and o, `dest(value)`-ed: TFLite's integer add, each of its three
        requantizations the cheapest call its bounds allow (`fixedpoint.mbqm_proven`): an operand's
        |(value - zero point) 2^left_shift| <= 255 2^20 for int8, each rescaled one at most 1 more, their sum."""
        layer = stage.layers[v]
        if dt == "float32":
            return [dest(_float_act(a + o, layer.activation))]
        q = layer.quant
        steps, total_bound = [], 0
        for k, val in enumerate((a, o)):
            zp = q.input_zero_points[k]
            bound = max(127 - zp, 128 + zp) << q.left_shift
            s = (val.astype(_I32) - _c(zp)) * _c(1 << q.left_shift)
            steps.append(tirx.BufferStore(tmp[k], mbqm_proven(TEOps, s, q.input_multipliers[k], q.input_shifts[k],
                                                              bound), [_c(0)]))
            total_bound += bound + 1
        total = tirx.BufferLoad(tmp[0], [_c(0)]) + tirx.BufferLoad(tmp[1], [_c(0)])
        steps.append(tirx.BufferStore(tmp[2], mbqm_proven(TEOps, total, q.output_multiplier, q.output_shift,
                                                          total_bound, q.output_zero_point), [_c(0)]))
        steps.append(dest(_clamp_i8(tirx.BufferLoad(tmp[2], [_c(0)]), q.act_min, q.act_max)))
        return steps

    def conv_block(v: int, y, x, npx: int, dest) -> Any:
        """Dense conv v at image (y, x) and, with npx = 2, (y, x + 1), all output channels, register blocked: per
        block of R channels the R x npx accumulators (`acc_rows`, a C local) are reduced together, the reduction
        loops outside the channel (and pixel) loop, the `tvmp_dot_s8_rows*` / `tvmp_dot_s8_px2_rows*` nests of
        the per-layer kernels; then the R x npx epilogues, `dest(c, p, value)` each. In NCHW the pixels' windows
        (channels x kernel rows x columns, at most `LOCAL_MAX_BYTES`: a 1x1 conv's channels, a stem's 3x3x3) are
        first copied into `pixel` (a C local), so that the reduction is one contiguous run against the weight rows."""
        g = stage.geometry[v]
        src = stage.inputs[v][0]
        (sh, sw), (pt, pl, _, _) = g.stride, g.padding
        cb = tirx.Var("cb", _I32)
        taps = g.kh * g.kw
        stmts = []
        win = pair_win[v] if npx == 2 and v in pair_win else pix
        if _window_bytes(stage, v):  # the pixels' windows, in the weights' order (I, H, W or H, W, I): one run
            step, k_len = _window_stride(stage, v), g.c_in * taps
            stmts.append(_loops([(_c0, _c(npx)), (_c0, _c(g.c_in)), (_c0, _c(g.kh)), (_c0, _c(g.kw))],
                                lambda p, rc, ry, rx: tirx.BufferStore(
                                    win, read(src, rc, y * _c(sh) - _c(pt) + ry, (x + p) * _c(sw) - _c(pl) + rx),
                                    [p * _c(step) + _window_pos(stage, v, rc, ry, rx)])))
            if step > k_len:  # the padded taps: zeros (their weights are zeros too), and so in the C local's extent
                stmts.append(_loops([(_c0, _c(npx)), (_c0, _c(step - k_len))], lambda p, t: tirx.BufferStore(
                    win, _c(0, dt), [p * _c(step) + _c(k_len) + t])))
        stmts.append(tirx.For(cb, _c0, _c(g.c_out // blocked[v]), tirx.ForKind.SERIAL,
                              tirx.SeqStmt(conv_channels(v, y, x, npx, cb, lambda c, p, j, val: dest(c, p, val), win))))
        return tirx.SeqStmt(stmts) if len(stmts) > 1 else stmts[0]

    def conv_channels(v: int, y, x, npx: int, cb, dest, win: Any = None) -> list:
        """`conv_block`'s statements for the block cb of R channels: the accumulators' init, the reduction (from
        `win`, default `pixel`, where the windows were copied there) and the R x npx epilogues, `dest(c, p, j,
        value)` each (j: the channel within the block)."""
        layer, g, rows = stage.layers[v], stage.geometry[v], blocked[v]
        win = pix if win is None else win
        src = stage.inputs[v][0]
        (sh, sw), (pt, pl, _, _) = g.stride, g.padding
        w, b = params[f"layer{v}_weight"], params[f"layer{v}_bias"]
        window = _window_bytes(stage, v) > 0
        taps = g.kh * g.kw
        k_len = g.c_in * taps

        def term(rc, ry, rx, p, j):
            if window:  # rc is the flat index into the window
                a = tirx.BufferLoad(win, [p * _c(_window_stride(stage, v)) + rc])
                rc, ry, rx = _window_tap(stage, v, rc)
            else:
                a = read(src, rc, y * _c(sh) - _c(pt) + ry, (x + p) * _c(sw) - _c(pl) + rx)
            wv = weight_at(stage, lambda *idx: tirx.BufferLoad(w, list(idx)), cb * _c(rows) + j, rc, ry, rx)
            k = p * _c(rows) + j
            return tirx.BufferStore(accb, tirx.BufferLoad(accb, [k]) + conv_term(stage, layer, a, wv), [k])

        def mac(rc, ry, rx):
            if npx == 1:
                return _loops([(_c0, _c(rows))], lambda j: term(rc, ry, rx, _c0, j))
            return _loops([(_c0, _c(npx)), (_c0, _c(rows))], lambda p, j: term(rc, ry, rx, p, j))

        extent = {"I": k_len, "H": 1, "W": 1} if window else {"I": g.c_in, "H": g.kh, "W": g.kw}
        order = [a for a in reduction_order(stage) if extent[a] > 1]

        def red_body(*r):
            got = dict(zip(order, r))
            return mac(*(got.get(a, _c0) for a in "IHW"))

        red = _loops([(_c0, _c(extent[a])) for a in order], red_body) if order else red_body()
        zero = _c(0, acc_dtype(stage))
        if dt == "float32":
            init = _loops([(_c0, _c(npx * rows))], lambda t: tirx.BufferStore(accb, zero, [t]))
        else:  # int8: each accumulator starts at its channel's bias (as in `value_stmt`)
            init = _loops([(_c0, _c(npx)), (_c0, _c(rows))], lambda p, j: tirx.BufferStore(
                accb, tirx.BufferLoad(b, [cb * _c(rows) + j]), [p * _c(rows) + j]))

        def epilogue(p, j):
            c = cb * _c(rows) + j
            acc_pj = tirx.BufferLoad(accb, [p * _c(rows) + j])
            if dt == "float32":
                return dest(c, p, j, _float_act(acc_pj + tirx.BufferLoad(b, [c]), layer.activation))
            high, val = requant_steps(v, acc_pj, tirx.BufferLoad(params[f"layer{v}_multiplier"], [c]),
                                      tirx.BufferLoad(params[f"layer{v}_shift"], [c]))
            return tirx.SeqStmt([high, dest(c, p, j, val)])

        return [init, red, _loops([(_c0, _c(npx)), (_c0, _c(rows))], epilogue)]

    def add_block(v: int, y, x, npx: int, dest) -> Any:
        """Residual add v at image (y, x) and, with npx = 2, (y, x + 1), all channels, its fused convs
        (`_blocked_adds`) computed as `conv_block` does, a block of R channels at a time into `fused_rows*` (C
        locals), then the R x npx adds; `dest(c, p, value)` each."""
        layer, rows = stage.layers[v], blocked[v]
        cb = tirx.Var("cb", _I32)
        stmts, slot = [], {}
        for u in fused_adds[v]:
            k = slot[u] = len(slot)
            stmts += conv_channels(u, y, x, npx, cb, lambda c, p, j, val, k=k: tirx.BufferStore(
                fvals[k], val, [p * _c(rows) + j]))

        def add(p, j):
            c = cb * _c(rows) + j
            ops = [tirx.BufferLoad(fvals[slot[u]], [p * _c(rows) + j]) if u in slot else read(u, c, y, x + p)
                   for u in (stage.inputs[v][0], layer.other)]
            return _seq(add_steps(v, *ops, lambda val: dest(c, p, val)))

        stmts.append(_loops([(_c0, _c(npx)), (_c0, _c(rows))], add))
        return tirx.For(cb, _c0, _c(stage.value_shape(v)[0] // rows), tirx.ForKind.SERIAL, tirx.SeqStmt(stmts))

    def blocked_pixels(v: int, rows, cols, pos, dest) -> Any:
        """Conv v at every pixel of region rows x cols ((min, extent) pairs, r and q from the region's start;
        `pos(r, q)`: the image position), `conv_block` each, in pairs of columns where v's 1x1 form allows
        (`_pixel_pairs`; an odd last column alone). `dest(c, r, q, value)` stores an output."""
        block = add_block if v in fused_adds else conv_block

        def one(r, q):
            y, x = pos(r, q)
            return block(v, y, x, 1, lambda c, p, val: dest(c, r, q, val))

        width = tw if v == last else plan.region_shape(v)[1]
        if v not in pairs or width < 2:  # (a one-column region has no pair: TVM's buffer compaction divides by
            return _loops([rows, cols], one)  # zero on the pair loop it would get, of extent 0)
        q_lo, q_n = cols

        def pair(r, t):
            q = q_lo + t * _c(2)
            y, x = pos(r, q)
            return block(v, y, x, 2, lambda c, p, val: dest(c, r, q + p, val))

        # the odd last column simplified over the patch index's range: TVM's buffer compaction divides by zero
        # estimating the region of the reads at q_lo + q_n - 1 as built (an NCHW stem under 1 x 2 patches)
        last_column = patch_ana.simplify(q_lo + q_n - _c(1))

        def row(r):
            return tirx.SeqStmt([_loops([(_c0, tirx.floordiv(q_n, _c(2)))], lambda t: pair(r, t)),
                                 tirx.IfThenElse(tirx.floormod(q_n, _c(2)) == _c(1), one(r, last_column), None)])

        return _loops([rows], row)

    def live_and_ring(rows, cols, start, live, pad_fn, live_fn) -> list:
        """Region rows x cols ((first, end) in region coordinates) split into the part inside `live` ((row, col)
        intervals in image coordinates; `start`: the region's first image row and column), given to
        `live_fn(rows, cols)` as (min, extent) pairs, and the ring around it, `pad_fn(rows, cols)` per piece:
        loop bounds computed once per patch instead of a test of every element."""
        (a_r, e_r), (a_q, e_q) = rows, cols

        def split(a, e, s0, iv):
            lo_ = tirx.min(tirx.max(a, _c(iv.lo) - s0), e)
            return lo_, tirx.max(tirx.min(e, _c(iv.hi) - s0), lo_)

        rlo, rhi = split(a_r, e_r, start[0], live[0])
        qlo, qhi = split(a_q, e_q, start[1], live[1])
        return [pad_fn((a_r, rlo - a_r), (a_q, e_q - a_q)), pad_fn((rhi, e_r - rhi), (a_q, e_q - a_q)),
                pad_fn((rlo, rhi - rlo), (a_q, qlo - a_q)), pad_fn((rlo, rhi - rlo), (qhi, e_q - qhi)),
                live_fn((rlo, rhi - rlo), (qlo, qhi - qlo))]

    def input_read_from(v) -> tuple[Any, Any]:
        """The first row and column of the input's region that patch (i, j) reads: the input is not cached, but
        its readers compute only the rows and columns their caches do not hold, so the rows and columns above
        and left of their windows are not copied again (the copy is the input's quantization for a float input).
        (0, 0) unless every reader is a conv or max pool that keeps its own region with caches."""
        readers = [u for u in range(last + 1) if v in stage.inputs[u]]
        if not readers or any(u == last or u in dw or u in fused or u in home
                              or not isinstance(stage.layers[u], (Conv, MaxPool)) for u in readers):
            return _c0, _c0
        first = []
        for axis, (p, cache) in enumerate(((pi, rows_c), (pj, cols_c))):
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
                starts.append((lo(u, axis) + _c(skip)) * _c(stride) - _c(before) - lo(v, axis) if skip else None)
            if any(x is None for x in starts):  # a reader computes its whole region: the whole input region
                first.append(_c0)
                continue
            start = starts[0]
            for x in starts[1:]:
                start = tirx.min(start, x)
            first.append(tirx.Select(p > 0, tirx.max(start, _c0), _c0))
        return first[0], first[1]

    def chw_loops(c, rows, cols, fn):
        """Loops over (channel, row, col) given as (min, extent) pairs, nested in the layout's order."""
        if nchw:
            return _loops([c, rows, cols], fn)
        return _loops([rows, cols, c], lambda r, q, ch: fn(ch, r, q))

    body = []
    barrier = c_barrier() if dt == "int8" else None  # between the loop nests, in the C export's kernels
    for v in execution_order(stage):
        if v in fused:
            continue
        c_ext = (_c(0), _c(stage.value_shape(v)[0]))
        if v == STAGE_INPUT:
            rh, rw = plan.region_shape(v)
            _, ih, iw = stage.input_chw
            pad = pad_value(stage, v)

            def fill(ch, r, q, v=v):
                return store(region[v], at(inp, ch, r + lo(v, 0), q + lo(v, 1), batch=n), ch, r, q)

            first = input_read_from(v)
            body += live_and_ring(
                (first[0], _c(rh)), (first[1], _c(rw)), (lo(v, 0), lo(v, 1)), (Interval(0, ih), Interval(0, iw)),
                lambda rows, cols, v=v, pad=pad: chw_loops(c_ext, rows, cols,
                                                           lambda ch, r, q: store(region[v], pad, ch, r, q)),
                lambda rows, cols, fill=fill: chw_loops(c_ext, rows, cols, fill))
            continue
        if v == last:
            _, ho, wo = stage.value_shape(v)

            def final(ch, r, q, v=v):
                y, x = pi * _c(th) + r, pj * _c(tw) + q
                return value_stmt(v, ch, y, x, lambda val: store(out, val, ch, y, x, batch=n))

            # the tile's rows and columns inside the output (a last tile may run past it)
            rows, cols = (_c0, tirx.min(_c(th), _c(ho) - pi * _c(th))), (_c0, tirx.min(_c(tw), _c(wo) - pj * _c(tw)))
            if v in blocked:
                body.append(blocked_pixels(
                    v, rows, cols, lambda r, q: (pi * _c(th) + r, pj * _c(tw) + q),
                    lambda ch, r, q, val: store(out, val, ch, pi * _c(th) + r, pj * _c(tw) + q, batch=n)))
            elif not nchw and _depthwise(stage, v):  # channel outermost: its windows neighbour along x (pairs)
                body.append(_loops([c_ext, rows, cols], final))
            else:
                body.append(chw_loops(c_ext, rows, cols, final))
            continue
        rh, rw = plan.region_shape(v)
        hr = halo_overlap(plan.h[v]) if v in rows_c else 0
        wc = halo_overlap(plan.w[v]) if v in cols_c else 0
        dom = plan.w[v].domain.lo
        r0 = tirx.Select(pi > 0, _c(hr), _c(0))  # first row / column this patch computes
        q0 = tirx.Select(pj > 0, _c(wc), _c(0))
        lh, lw = plan.h[v].live, plan.w[v].live
        pad = pad_value(stage, v)

        def fill_and_compute(c_ext, reader=None, put=None, v=v, hr=hr, wc=wc, rh=rh, rw=rw, r0=r0, q0=q0, dom=dom,
                             lh=lh, lw=lw, pad=pad):
            """v's region over the channels c_ext: the cached rows and columns, then the rest computed; `put`
            (value, channel, r, q) -> statement overrides where an element goes (an in-place depthwise's output
            channel: its one-channel buffer)."""
            stmts = []
            reg_store = put or (lambda _v, val, ch, r, q: reg_put(_v, val, ch, r, q))
            if v in rows_c:
                def from_rows(ch, r, q):
                    return reg_store(v, at(rows_c[v], ch, r, q + lo(v, 1) - _c(dom)), ch, r, q)
                stmts.append(tirx.IfThenElse(pi > 0, chw_loops(c_ext, (_c(0), _c(hr)), (q0, _c(rw) - q0), from_rows),
                                             None))
            if v in cols_c:
                def from_cols(ch, r, q):
                    return reg_store(v, at(cols_c[v], ch, r, q), ch, r, q)
                stmts.append(tirx.IfThenElse(pj > 0, chw_loops(c_ext, (_c(0), _c(rh)), (_c(0), _c(wc)), from_cols),
                                             None))

            def compute(ch, r, q):
                y, x = r + lo(v, 0), q + lo(v, 1)
                return value_stmt(v, ch, y, x, lambda val: reg_store(v, val, ch, r, q), reader)

            def live_part(rows, cols):
                if v in blocked:
                    return blocked_pixels(v, rows, cols, lambda r, q: (r + lo(v, 0), q + lo(v, 1)),
                                          lambda ch, r, q, val: reg_store(v, val, ch, r, q))
                if v in top_left:  # channel outermost: a channel's windows neighbour along x (pairs)
                    return _loops([c_ext, rows, cols], compute)
                return chw_loops(c_ext, rows, cols, compute)

            pieces = live_and_ring((r0, _c(rh)), (q0, _c(rw)), (lo(v, 0), lo(v, 1)), (lh, lw),
                                   lambda rows, cols: chw_loops(c_ext, rows, cols,
                                                                lambda ch, r, q: reg_store(v, pad, ch, r, q)),
                                   live_part)
            if v in top_left:  # over its input: the live part first (its windows read under the ring)
                pieces = [pieces[-1], *pieces[:-1]]
            return stmts + pieces

        if v in dw:  # channel by channel: the input's channel copied first, then written over (see workspace_plan)
            u = stage.inputs[v][0]
            uh, uw = plan.region_shape(u)
            ch = tirx.Var("ch", _I32)

            def copy(r, q, v=v, u=u, ch=ch):
                return store(chan[v], reg_at(u, ch, r, q), _c0, r, q)

            if v in out_copy:  # computed from the input itself into the channel buffer, then copied over it

                def to_chan(_v, val, _ch, r, q, v=v):
                    return store(chan[v], val, _c0, r, q)

                def copy_out(r, q, v=v, ch=ch):
                    return reg_store(v, at(chan[v], _c0, r, q), ch, r, q)

                one = tirx.SeqStmt([*fill_and_compute((ch, _c(1)), put=to_chan),
                                    _loops([(_c0, _c(rh)), (_c0, _c(rw))], copy_out, unroll_inner=True)])
            else:
                one = tirx.SeqStmt([_loops([(_c0, _c(uh)), (_c0, _c(uw))], copy, unroll_inner=True),
                                    *fill_and_compute((ch, _c(1)), from_chan(v))])
            body.append(tirx.For(ch, _c0, c_ext[1], tirx.ForKind.SERIAL, one))
        else:
            body.extend(fill_and_compute(c_ext))
        if v in cols_c:
            def to_cols(ch, r, q, v=v, rw=rw, wc=wc):
                return store(cols_c[v], reg_at(v, ch, r, q + _c(rw - wc)), ch, r, q)
            body.append(tirx.IfThenElse(pj + 1 < nw, chw_loops(c_ext, (_c(0), _c(rh)), (_c(0), _c(wc)), to_cols), None))
        if v in rows_c:
            def to_rows(ch, r, q, v=v, rh=rh, hr=hr, dom=dom):
                return store(rows_c[v], reg_at(v, ch, r + _c(rh - hr), q), ch, r, q + lo(v, 1) - _c(dom))
            body.append(tirx.IfThenElse(pi + 1 < nh, chw_loops(c_ext, (_c(0), _c(hr)), (q0, _c(rw) - q0), to_rows), None))

    if barrier is not None:  # between the loop nests
        body = [x for st in body for x in (barrier, st)][1:]
    patch = tirx.SeqStmt(body)
    nest = tirx.For(n, _c(0), _c(stage.batch), tirx.ForKind.SERIAL,
                    tirx.For(pi, _c(0), _c(nh), tirx.ForKind.SERIAL, tirx.For(pj, _c(0), _c(nw), tirx.ForKind.SERIAL, patch)))
    # The caches carry values from one patch to the next: allocated by statements at the top, so that no pass
    # moves them into the patch loop (block allocations go to their accesses' common scope and are compacted
    # there, which would make them per-patch).
    # The per-patch buffers too: their shapes are exact already, and compacting them to the accesses' bounds
    # (loop bounds in min / max of the patch index) could only loosen them beyond the plan.
    for b in [*rows_c.values(), *cols_c.values(), *region.values(), *chan.values()]:
        nest = tirx.SeqStmt([tirx.AllocBuffer(b), nest])
    root = s_tir.SBlock([], [], [], "root", nest, None, [acc, *tmp, fval, accb, pix, *pair_win.values(), *fvals[:max(map(len, fused_adds.values()), default=0)]])
    func = tirx.PrimFunc([inp, *params.values(), out], s_tir.SBlockRealize([], True, root))
    # the parameters never overlap (as in recompute mode's TE-made function): restrict in C
    func = func.with_attr("tirx.noalias", True)
    return func.with_attr(STAGE_OFFSETS_ATTR, workspace_plan(stage, region, rows_c, cols_c, chan, home, alignment))


def _depthwise(stage: Stage, v: int) -> bool:
    """Whether layer v is a depthwise conv (one input channel per output channel)."""
    g = stage.geometry[v]
    return g is not None and g.groups > 1 and g.groups == g.c_in


def _pixel_pairs(stage: Stage, v: int) -> bool:
    """Whether dense conv v is computed two output pixels at a time (`tvmp_dot_s8_px2_rows*`, as the per-layer
    path's `blocking.block_pixels`): a blocked conv of an int8 stage, 1x1 or k x k (NHWC: per kernel row, its
    columns x channels one contiguous run; NCHW: when the two pixels' windows copied stay a C local, up to
    `PIXEL_MAX_BYTES`: mcunet-in0's last 1x1 over 64 channels since round 15), 2 channels a
    block (the per-layer measurement: at 2x4 GCC spills). k x k too since this round: vww's 3x3 stem 4x4
    recompute 3.31 M -> about 2.7 M instructions."""
    g = stage.geometry[v]
    if stage.dtype != "int8" or accumulator_rows(stage, v) == 1 or g.c_in * g.kh * g.kw < MIN_DOT_LENGTH:
        return False  # (a reduction shorter than a dot call: nothing to share; TVM's buffer compaction divided by
    return stage.layout == "NHWC" or 0 < 2 * _window_bytes(stage, v) <= PIXEL_MAX_BYTES  # zero on such pair loops)


def _blocked_adds(stage: Stage, fused: dict[int, tuple[int, int | None]]) -> dict[int, list[int]]:
    """Residual add -> its fused convs (`skip_accumulations`), where they are computed register blocked inside it
    (`add_block` in `build_cached_stage`): every one blocked (`accumulator_rows`) and reading its input in place
    (no window copied into `pixel`, which two convs of one add would share). Others element by element."""
    adds: dict[int, list[int]] = {}
    for u, (add, _) in sorted(fused.items()):
        adds.setdefault(add, []).append(u)
    return {a: us for a, us in adds.items()
            if all(accumulator_rows(stage, u) > 1 and not _window_bytes(stage, u) for u in us)}


def _window_stride(stage: Stage, v: int) -> int:
    """Elements from one pixel's copied window to the next in `pixel`: an int8 k x k window's taps padded to a
    multiple of four (codegen/pad_rows.py then pads the weight rows with zeros: every row whole words for the
    micro-kernels, the stem's 27 taps 28), others their taps (0: no window copied)."""
    g, n = stage.geometry[v], _window_bytes(stage, v)
    if n and stage.dtype == "int8" and g.kh * g.kw > 1:
        return (n + 3) // 4 * 4
    return n // 4 if stage.dtype == "float32" else n


def _window_pos(stage: Stage, v: int, c: Any, ry: Any, rx: Any) -> Any:
    """Tap (c, ry, rx)'s place in conv v's copied window: the weights' order, I, H, W (NCHW) or H, W, I (NHWC)."""
    g = stage.geometry[v]
    if stage.layout == "NCHW":
        return c * _c(g.kh * g.kw) + ry * _c(g.kw) + rx
    return (ry * _c(g.kw) + rx) * _c(g.c_in) + c


def _window_tap(stage: Stage, v: int, f: Any) -> tuple[Any, Any, Any]:
    """(c, ry, rx) of the window's element f: `_window_pos` inverted."""
    g = stage.geometry[v]
    if stage.layout == "NCHW":
        return (tirx.floordiv(f, _c(g.kh * g.kw)), tirx.floormod(tirx.floordiv(f, _c(g.kw)), _c(g.kh)),
                tirx.floormod(f, _c(g.kw)))
    return (tirx.floormod(f, _c(g.c_in)), tirx.floordiv(f, _c(g.kw * g.c_in)),
            tirx.floormod(tirx.floordiv(f, _c(g.c_in)), _c(g.kw)))


def _window_bytes(stage: Stage, v: int) -> int:
    """Bytes of one output pixel's input window that blocked dense conv v copies into a C local (its reduction then
    runs over contiguous bytes, in the weights' order), or 0. NCHW: up to `LOCAL_MAX_BYTES`. NHWC, where a pixel's
    channels are contiguous already: only a k x k int8 conv whose kernel rows are not whole words (a stem over 3
    channels: its rows of 9 bytes, scalar tails in every dot call, against one padded run of 28; vww's 3x3 stem,
    round 19) or of at most one word (kws's 10x4 stem over one channel: ten 4-byte dot calls against one of 40;
    round 20), up to `LOCAL_MAX_BYTES`."""
    g = stage.geometry[v]
    if g is None or accumulator_rows(stage, v) == 1:
        return 0
    if stage.layout != "NCHW" and (stage.dtype != "int8" or g.kh * g.kw == 1
                                     or (g.kw * g.c_in % 4 == 0 and g.kw * g.c_in > 4)):
        return 0
    size = g.c_in * g.kh * g.kw * (4 if stage.dtype == "float32" else 1)
    return size if size <= LOCAL_MAX_BYTES else 0
