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
checks them. The per-patch buffers and the caches are placed by `tvm_patch.memplan` (`STAGE_OFFSETS_ATTR`,
read by the C export): per-patch buffers live from their producer to their last reader in the patch body,
caches during the whole stage.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from tvm import s_tir, tirx

from tvm_patch.codegen.c_kernels import LOCAL_MAX_BYTES
from tvm_patch.names import STAGE_OFFSETS_ATTR
from tvm_patch.memplan import Buffer, plan_memory
from tvm_patch.patch.regions import acc_dtype, buffer_names, execution_order, halo_overlap, plan_patches
from tvm_patch.patch.stage import STAGE_INPUT, Add, Conv, Lookup, MaxPool, Stage
from tvm_patch.patch.te_stage import (_clamp_i8, _float_act, conv_term, pad_value, param_arrays, param_names,
                                      reduction_order, requantized, weight_at)
from tvm_patch.quant.fixedpoint import TEOps, mbqm_high, mbqm_shifts, rdbpot

__all__ = ["build_cached_stage"]

_I32 = "int32"


def _c(v: int, dtype: str = _I32) -> Any:
    return tirx.const(int(v), dtype)


def _loops(extents: list[tuple[Any, Any]], body_fn) -> Any:
    """Nested serial loops over (min, extent) pairs; body_fn gets the loop variables."""
    vars_ = [tirx.Var(f"ax{k}", _I32) for k in range(len(extents))]
    body = body_fn(*vars_)
    for v, (lo, ext) in reversed(list(zip(vars_, extents))):
        body = tirx.For(v, lo, ext, tirx.ForKind.SERIAL, body)
    return body


def build_cached_stage(stage: Stage, patches: tuple[int, int], alignment: int = 16) -> tirx.PrimFunc:
    """The stage over `patches` = (rows, cols) of patches in cache mode (see the module docstring); the same
    arguments as `schedule.build_stage`: (input, parameters of `te_stage.param_names`, output)."""
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

    region: dict[int, Any] = {}  # value -> per-patch buffer (C, rows, cols) in the layout, no batch axis
    rows_c: dict[int, Any] = {}
    cols_c: dict[int, Any] = {}
    for v in range(STAGE_INPUT, last):
        c = stage.value_shape(v)[0]
        rh, rw = plan.region_shape(v)
        region[v] = tirx.decl_buffer(nd(c, rh, rw), dt, name=names[v])
        if v >= 0:
            hr, wc = halo_overlap(plan.h[v]), halo_overlap(plan.w[v])
            if hr and nh > 1:
                rows_c[v] = tirx.decl_buffer(nd(c, hr, plan.w[v].domain.size), dt, name=f"{names[v]}_rows")
            if wc and nw > 1:
                cols_c[v] = tirx.decl_buffer(nd(c, rh, wc), dt, name=f"{names[v]}_cols")
    acc = tirx.decl_buffer((1,), acc_dtype(stage), name="acc")
    tmp = [tirx.decl_buffer((1,), _I32, name=f"tmp{k}") for k in range(3)]

    n = tirx.Var("n", _I32)
    pi = tirx.Var("i", _I32)
    pj = tirx.Var("j", _I32)

    def lo(v: int, axis: int) -> Any:
        """Image row (axis 0) / column (1) where patch (i, j)'s region of v starts: affine in the patch index."""
        ax = plan.h[v] if axis == 0 else plan.w[v]
        p = pi if axis == 0 else pj
        step = ax.regions[1].lo - ax.regions[0].lo if len(ax.regions) > 1 else 0
        return p * _c(step) + _c(ax.regions[0].lo)

    def at(buf, c, y, x, batch=None):
        idx = nd(c, y, x)
        return tirx.BufferLoad(buf, ([batch] if batch is not None else []) + list(idx))

    def store(buf, value, c, y, x, batch=None):
        return tirx.BufferStore(buf, value, ([batch] if batch is not None else []) + list(nd(c, y, x)))

    def read(v, c, y, x):
        """Value v at image position (y, x) (inside patch (i, j)'s region of v)."""
        return at(region[v], c, y - lo(v, 0), x - lo(v, 1))

    def value_stmt(v: int, c, y, x, dest) -> Any:
        """Compute layer v at image (y, x), channel c, and `dest(value)` it (live positions only)."""
        layer = stage.layers[v]
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
                a = read(src, cin, y * _c(sh) - _c(pt) + ry, x * _c(sw) - _c(pl) + rx)
                wv = weight_at(stage, lambda *idx: tirx.BufferLoad(w, list(idx)), c, rc, ry, rx)
                term = conv_term(stage, layer, a, wv)
                return tirx.BufferStore(acc, tirx.BufferLoad(acc, [_c(0)]) + term, [_c(0)])

            order = reduction_order(stage)
            extent = {"I": cin_g, "H": g.kh, "W": g.kw}
            red = _loops([(_c(0), _c(extent[a])) for a in order],
                         lambda *r: tap(*(r[order.index(a)] for a in "IHW")))
            total = tirx.BufferLoad(acc, [_c(0)]) + tirx.BufferLoad(b, [c])
            if dt == "float32":
                fin = dest(_float_act(total, layer.activation))
                return tirx.SeqStmt([tirx.BufferStore(acc, zero, [_c(0)]), red, fin])
            q = layer.quant
            mult, shift = params[f"layer{v}_multiplier"], params[f"layer{v}_shift"]
            high = tirx.BufferStore(tmp[0], requantized(total, tirx.BufferLoad(mult, [c]), tirx.BufferLoad(shift, [c])),
                                    [_c(0)])
            fin = dest(_clamp_i8(tirx.BufferLoad(tmp[0], [_c(0)]) + _c(q.output_zero_point), q.act_min, q.act_max))
            return tirx.SeqStmt([tirx.BufferStore(acc, zero, [_c(0)]), red, high, fin])
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
        a, o = read(stage.inputs[v][0], c, y, x), read(layer.other, c, y, x)
        if dt == "float32":
            return dest(_float_act(a + o, layer.activation))
        q = layer.quant
        steps = []
        for k, val in enumerate((a, o)):
            s = (val.astype(_I32) - _c(q.input_zero_points[k])) * _c(1 << q.left_shift)
            hi_ = mbqm_high(TEOps, s, q.input_multipliers[k], mbqm_shifts(TEOps, q.input_shifts[k])[0])
            steps.append(tirx.BufferStore(tmp[k], hi_, [_c(0)]))
        total = sum(rdbpot(TEOps, tirx.BufferLoad(tmp[k], [_c(0)]), mbqm_shifts(TEOps, q.input_shifts[k])[1])
                    for k in range(2))
        steps.append(tirx.BufferStore(tmp[2], mbqm_high(TEOps, total, q.output_multiplier,
                                                        mbqm_shifts(TEOps, q.output_shift)[0]), [_c(0)]))
        r = rdbpot(TEOps, tirx.BufferLoad(tmp[2], [_c(0)]), mbqm_shifts(TEOps, q.output_shift)[1])
        steps.append(dest(_clamp_i8(r + _c(q.output_zero_point), q.act_min, q.act_max)))
        return tirx.SeqStmt(steps)

    def chw_loops(c, rows, cols, fn):
        """Loops over (channel, row, col) given as (min, extent) pairs, nested in the layout's order."""
        if nchw:
            return _loops([c, rows, cols], fn)
        return _loops([rows, cols, c], lambda r, q, ch: fn(ch, r, q))

    body = []
    for v in execution_order(stage):
        c_ext = (_c(0), _c(stage.value_shape(v)[0]))
        if v == STAGE_INPUT:
            rh, rw = plan.region_shape(v)
            _, ih, iw = stage.input_chw
            pad = pad_value(stage, v)

            def fill(ch, r, q):
                y, x = r + lo(v, 0), q + lo(v, 1)
                inside = tirx.all(y >= 0, y < ih, x >= 0, x < iw)
                return store(region[v], tirx.if_then_else(inside, at(inp, ch, y, x, batch=n), pad), ch, r, q)

            body.append(chw_loops(c_ext, (_c(0), _c(rh)), (_c(0), _c(rw)), fill))
            continue
        if v == last:
            _, ho, wo = stage.value_shape(v)

            def final(ch, r, q, v=v):
                y, x = pi * _c(th) + r, pj * _c(tw) + q
                inside = tirx.all(y < ho, x < wo)
                return tirx.IfThenElse(inside, value_stmt(v, ch, y, x, lambda val: store(out, val, ch, y, x, batch=n)), None)

            body.append(chw_loops(c_ext, (_c(0), _c(th)), (_c(0), _c(tw)), final))
            continue
        rh, rw = plan.region_shape(v)
        hr = halo_overlap(plan.h[v]) if v in rows_c else 0
        wc = halo_overlap(plan.w[v]) if v in cols_c else 0
        dom = plan.w[v].domain.lo
        r0 = tirx.Select(pi > 0, _c(hr), _c(0))  # first row / column this patch computes
        q0 = tirx.Select(pj > 0, _c(wc), _c(0))
        if v in rows_c:
            def from_rows(ch, r, q, v=v):
                return store(region[v], at(rows_c[v], ch, r, q + lo(v, 1) - _c(dom)), ch, r, q)
            body.append(tirx.IfThenElse(pi > 0, chw_loops(c_ext, (_c(0), _c(hr)), (q0, _c(rw) - q0), from_rows), None))
        if v in cols_c:
            def from_cols(ch, r, q, v=v):
                return store(region[v], at(cols_c[v], ch, r, q), ch, r, q)
            body.append(tirx.IfThenElse(pj > 0, chw_loops(c_ext, (_c(0), _c(rh)), (_c(0), _c(wc)), from_cols), None))
        lh, lw = plan.h[v].live, plan.w[v].live
        pad = pad_value(stage, v)

        def compute(ch, r, q, v=v, lh=lh, lw=lw, pad=pad):
            y, x = r + lo(v, 0), q + lo(v, 1)
            live = tirx.all(y >= lh.lo, y < lh.hi, x >= lw.lo, x < lw.hi)
            return tirx.IfThenElse(live, value_stmt(v, ch, y, x, lambda val: store(region[v], val, ch, r, q)),
                                   store(region[v], pad, ch, r, q))

        body.append(chw_loops(c_ext, (r0, _c(rh) - r0), (q0, _c(rw) - q0), compute))
        if v in cols_c:
            def to_cols(ch, r, q, v=v, rw=rw, wc=wc):
                return store(cols_c[v], at(region[v], ch, r, q + _c(rw - wc)), ch, r, q)
            body.append(tirx.IfThenElse(pj + 1 < nw, chw_loops(c_ext, (_c(0), _c(rh)), (_c(0), _c(wc)), to_cols), None))
        if v in rows_c:
            def to_rows(ch, r, q, v=v, rh=rh, hr=hr, dom=dom):
                return store(rows_c[v], at(region[v], ch, r + _c(rh - hr), q), ch, r, q + lo(v, 1) - _c(dom))
            body.append(tirx.IfThenElse(pi + 1 < nh, chw_loops(c_ext, (_c(0), _c(hr)), (q0, _c(rw) - q0), to_rows), None))

    patch = tirx.SeqStmt(body)
    nest = tirx.For(n, _c(0), _c(stage.batch), tirx.ForKind.SERIAL,
                    tirx.For(pi, _c(0), _c(nh), tirx.ForKind.SERIAL, tirx.For(pj, _c(0), _c(nw), tirx.ForKind.SERIAL, patch)))
    # The caches carry values from one patch to the next: allocated by statements at the top, so that no pass
    # moves them into the patch loop (block allocations go to their accesses' common scope and are compacted
    # there, which would make them per-patch).
    for b in [*rows_c.values(), *cols_c.values()]:
        nest = tirx.SeqStmt([tirx.AllocBuffer(b), nest])
    root = s_tir.SBlock([], [], [], "root", nest, None, [*region.values(), acc, *tmp])
    func = tirx.PrimFunc([inp, *params.values(), out], s_tir.SBlockRealize([], True, root))
    return func.with_attr(STAGE_OFFSETS_ATTR, _plan(stage, plan, region, rows_c, cols_c, alignment))


def _plan(stage: Stage, plan, region: dict, rows_c: dict, cols_c: dict, alignment: int) -> dict:
    """The buffers' offsets in the kernel's workspace: per-patch buffers by their lifetime in the patch body,
    the caches for the whole stage (C locals, at most LOCAL_MAX_BYTES, are left out)."""
    order = execution_order(stage)
    pos = {v: k for k, v in enumerate(order)}
    end = len(order) - 1
    bufs = []
    for v, b in region.items():
        size = int(np.prod([int(d) for d in b.shape])) * (4 if stage.dtype == "float32" else 1)
        last_use = max(pos[c] for c in stage.consumers(v))
        bufs.append(Buffer(b.name, size, pos[v], last_use))
    for b in [*rows_c.values(), *cols_c.values()]:
        size = int(np.prod([int(d) for d in b.shape])) * (4 if stage.dtype == "float32" else 1)
        bufs.append(Buffer(b.name, size, 0, end))
    bufs = [b for b in bufs if b.size > LOCAL_MAX_BYTES]
    p = plan_memory(bufs, (), alignment)
    return {"offsets": {k: int(o) for k, o in p.offsets.items()}, "bytes": int(p.arena_size)}
