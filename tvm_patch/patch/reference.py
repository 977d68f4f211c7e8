"""Running a stage: a numpy reference (independent of TVM) and a helper that compiles and runs a PrimFunc."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tvm
from tvm import tirx

from tvm_patch.patch.regions import Interval, execution_order, plan_patches
from tvm_patch.patch.stage import STAGE_INPUT, Add, Conv, Lookup, MaxPool, Stage
from tvm_patch.patch.te_stage import param_arrays
from tvm_patch.quant.reference import multiply_by_quantized_multiplier_ref


def _to_nchw(stage: Stage, a: np.ndarray) -> np.ndarray:
    return a if stage.layout == "NCHW" else a.transpose(0, 3, 1, 2)


def _from_nchw(stage: Stage, a: np.ndarray) -> np.ndarray:
    return a if stage.layout == "NCHW" else a.transpose(0, 2, 3, 1)


def _conv_nchw(x: np.ndarray, w_oihw: np.ndarray, stride, padding, groups: int, pad_value) -> np.ndarray:
    """Grouped 2-D convolution (cross-correlation) in NCHW, accumulating in x's dtype."""
    n, c, h, w = x.shape
    o, cg, kh, kw = w_oihw.shape
    pt, pl, pb, pr = padding
    sh, sw = stride
    xp = np.full((n, c, h + pt + pb, w + pl + pr), pad_value, dtype=x.dtype)
    xp[:, :, pt : pt + h, pl : pl + w] = x
    ho = (h + pt + pb - kh) // sh + 1
    wo = (w + pl + pr - kw) // sw + 1
    xg = xp.reshape(n, groups, cg, *xp.shape[2:])
    wg = w_oihw.reshape(groups, o // groups, cg, kh, kw).astype(x.dtype)
    out = np.zeros((n, groups, o // groups, ho, wo), dtype=x.dtype)
    for ky in range(kh):
        for kx in range(kw):
            win = xg[:, :, :, ky : ky + sh * (ho - 1) + 1 : sh, kx : kx + sw * (wo - 1) + 1 : sw]
            out += np.einsum("ngchw,goc->ngohw", win, wg[:, :, :, ky, kx])
    return out.reshape(n, o, ho, wo)


def _max_pool_nchw(x: np.ndarray, inside: np.ndarray, kernel, stride) -> np.ndarray:
    """Max pooling of an NCHW window with no padding, over the positions where `inside` (rows x cols, bool)
    holds: the others (padding, a ring holding some zero point) never win. A window with no such position
    (off the live part of a patch region, never used) gives 0."""
    kh, kw = kernel
    sh, sw = stride
    n, c, h, w = x.shape
    ho, wo = (h - kh) // sh + 1, (w - kw) // sw + 1
    low = np.where(inside[None, None], x.astype(np.float64), -np.inf)
    out = np.full((n, c, ho, wo), -np.inf)
    for ky in range(kh):
        for kx in range(kw):
            out = np.maximum(out, low[:, :, ky:ky + sh * (ho - 1) + 1:sh, kx:kx + sw * (wo - 1) + 1:sw])
    return np.where(np.isfinite(out), out, 0).astype(x.dtype)


def _pool_value(stage: Stage, i: int, x: np.ndarray, rows: Interval, cols: Interval) -> np.ndarray:
    """Layer i's max pool (+ activation / int8 clamp) over an NCHW window of its input covering image rows x
    cols of that input (positions outside the image are padding), no further padding."""
    layer = stage.layers[i]
    _, ih, iw = stage.value_shape(stage.inputs[i][0])
    ys, xs = np.arange(rows.lo, rows.hi), np.arange(cols.lo, cols.hi)
    inside = ((ys >= 0) & (ys < ih))[:, None] & ((xs >= 0) & (xs < iw))[None, :]
    m = _max_pool_nchw(x, inside, layer.kernel, layer.stride)
    if stage.dtype == "float32":
        return _act(m, layer.activation)
    return np.clip(m, layer.act_min, layer.act_max).astype(np.int8)


def _pool_padded(stage: Stage, i: int, src: np.ndarray) -> np.ndarray:
    """Layer i's max pool over its whole input (NCHW), padding included as non-values."""
    pt, pl, pb, pr = stage.layers[i].padding
    n, c, h, w = src.shape
    xp = np.zeros((n, c, h + pt + pb, w + pl + pr), dtype=src.dtype)
    xp[:, :, pt:pt + h, pl:pl + w] = src
    return _pool_value(stage, i, xp, Interval(-pt, h + pb), Interval(-pl, w + pr))


def _oihw(stage: Stage, i: int, layer: Conv) -> np.ndarray:
    kl = stage.geometry[i].kernel_layout
    return layer.weight.transpose([kl.index(ch) for ch in "OIHW"])


def _act(v: np.ndarray, act: str) -> np.ndarray:
    if act == "relu":
        return np.maximum(v, 0)
    if act == "relu6":
        return np.clip(v, 0, 6)
    return v


def run_numpy(stage: Stage, x: np.ndarray) -> np.ndarray:
    """The stage output computed layer by layer with numpy (float64 for float32 stages, exact for int8)."""
    values = {STAGE_INPUT: _to_nchw(stage, np.asarray(x))}
    for i, layer in enumerate(stage.layers):
        src = values[stage.inputs[i][0]]
        if isinstance(layer, Conv):
            g = stage.geometry[i]
            w = _oihw(stage, i, layer)
            bias = np.zeros(g.c_out) if layer.bias is None else layer.bias
            if stage.dtype == "float32":
                acc = _conv_nchw(src.astype(np.float64), w, g.stride, g.padding, g.groups, 0.0)
                values[i] = _act(acc + bias.astype(np.float64)[None, :, None, None], layer.activation)
            else:
                q = layer.quant
                xs = src.astype(np.int64) - q.input_zero_point
                ws = w.astype(np.int64) - q.weight_zero_point
                acc = _conv_nchw(xs, ws, g.stride, g.padding, g.groups, 0) + bias.astype(np.int64)[None, :, None, None]
                mult = np.broadcast_to(q.multiplier, (g.c_out,))[None, :, None, None]
                shift = np.broadcast_to(q.shift, (g.c_out,))[None, :, None, None]
                r = multiply_by_quantized_multiplier_ref(acc.astype(np.int32), mult, shift)
                values[i] = np.clip(r.astype(np.int64) + q.output_zero_point, q.act_min, q.act_max).astype(np.int8)
        elif isinstance(layer, MaxPool):
            values[i] = _pool_padded(stage, i, src)
        elif isinstance(layer, Lookup):
            values[i] = layer.table[src.astype(np.int64) + 128]
        else:
            assert isinstance(layer, Add)
            other = values[layer.other]
            if stage.dtype == "float32":
                values[i] = _act(src + other, layer.activation)
            else:
                values[i] = add_int8_numpy(layer.quant, src, other)
    out = values[len(stage.layers) - 1]
    return _from_nchw(stage, out.astype(np.float32) if stage.dtype == "float32" else out)


def add_int8_numpy(q, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """TFLite int8 ADD of a (Add.input) and b (Add.other), numpy reference."""
    mq = multiply_by_quantized_multiplier_ref

    def scaled(v, k):
        s = (v.astype(np.int64) - q.input_zero_points[k]) * (1 << q.left_shift)
        return mq(s.astype(np.int32), q.input_multipliers[k], q.input_shifts[k]).astype(np.int64)

    raw = mq((scaled(a, 0) + scaled(b, 1)).astype(np.int32), q.output_multiplier, q.output_shift)
    return np.clip(raw.astype(np.int64) + q.output_zero_point, q.act_min, q.act_max).astype(np.int8)


def compile_func(func: tirx.PrimFunc, target: dict | None = None, fast: bool = False):
    """Compile one PrimFunc for the host (llvm) and return the callable.

    fast: LLVM opt-level 0 and no argument asserts, for tests that compile hundreds of tiny stages
    (about 0.18 s instead of 0.5 s each; LLVM time dominates, the TIR passes take about 0.07 s).
    """
    mod = tvm.IRModule({"main": func.with_attr("global_symbol", "main")})
    target = dict(target or {"kind": "llvm"})
    config = {}
    if fast:
        target.setdefault("opt-level", 0)
        config["tirx.disable_assert"] = True
    with tvm.transform.PassContext(config=config):
        return tvm.compile(mod, target=target)["main"]


def run_tvm(func, stage: Stage, x: np.ndarray) -> np.ndarray:
    """Run a compiled stage PrimFunc (from `compile_func`, or a PrimFunc to compile) on input x."""
    if isinstance(func, tirx.PrimFunc):
        func = compile_func(func)
    args = [tvm.runtime.tensor(np.ascontiguousarray(x, dtype=stage.dtype))]
    args += [tvm.runtime.tensor(a) for a in param_arrays(stage)]
    out = tvm.runtime.empty(stage.output_shape, stage.dtype)
    func(*args, out)
    return out.numpy()


@dataclass
class CachedRun:
    """What `run_numpy_cached` measured: the output, MACs performed, and the caches' sizes and use."""

    output: np.ndarray
    macs: int
    cache_elements: dict[int, int]  # value -> row + column cache elements of one image, as allocated
    unread_cache_elements: dict[int, int]  # value -> cache entries written but never read (0: the caches are tight)


def _conv_value(stage: Stage, i: int, src: np.ndarray) -> np.ndarray:
    """Layer i's conv (+ bias, activation / requantization) over an already padded NCHW window, no padding."""
    layer = stage.layers[i]
    g = stage.geometry[i]
    w = _oihw(stage, i, layer)
    bias = np.zeros(g.c_out) if layer.bias is None else layer.bias
    if stage.dtype == "float32":
        acc = _conv_nchw(src.astype(np.float64), w, g.stride, (0, 0, 0, 0), g.groups, 0.0)
        return _act(acc + bias.astype(np.float64)[None, :, None, None], layer.activation)
    q = layer.quant
    acc = _conv_nchw(src.astype(np.int64) - q.input_zero_point, w.astype(np.int64) - q.weight_zero_point, g.stride,
                     (0, 0, 0, 0), g.groups, 0) + bias.astype(np.int64)[None, :, None, None]
    mult = np.broadcast_to(q.multiplier, (g.c_out,))[None, :, None, None]
    shift = np.broadcast_to(q.shift, (g.c_out,))[None, :, None, None]
    r = multiply_by_quantized_multiplier_ref(acc.astype(np.int32), mult, shift)
    return np.clip(r.astype(np.int64) + q.output_zero_point, q.act_min, q.act_max).astype(np.int8)


def run_numpy_cached(stage: Stage, x: np.ndarray, patches: tuple[int, int]) -> CachedRun:
    """The stage computed patch by patch in raster order with the halo cached (cache mode), in numpy.

    An executable model of the schedule, written apart from `regions`' cache formulas: per patch and value,
    the region buffer is filled from the row cache (rows the patches above computed, kept for the value's
    whole domain width), the column cache (columns the patch to the left computed, for the region's rows)
    and by computing the rest (its live part; the ring is padding); then each cache takes what the next
    patches need from the buffer. Every cache entry carries flags: reading an entry never written, or a
    stale one, raises AssertionError, as does computing a needed element (the live part of the patches'
    regions) twice or not at all. Float stages
    compute in float64.
    """
    plan = plan_patches(stage, patches)
    nh, nw = plan.counts
    last = len(stage.layers) - 1
    image = _to_nchw(stage, np.asarray(x))
    nb = stage.batch
    dt = np.float64 if stage.dtype == "float32" else np.int8
    th, tw = plan.tiles
    out = np.zeros((nb, *stage.value_shape(last)), dtype=dt)
    macs = 0
    done = {v: np.zeros((nb, *stage.value_shape(v)), dtype=int) for v in range(last)}
    caches: dict[int, dict] = {}
    for v in range(last):
        c = stage.value_shape(v)[0]
        hr = plan.h[v].regions[0].hi - plan.h[v].regions[1].lo if nh > 1 else 0
        wc = plan.w[v].regions[0].hi - plan.w[v].regions[1].lo if nw > 1 else 0
        hr, wc = max(hr, 0), max(wc, 0)
        dw, rh = plan.w[v].domain.size, plan.h[v].extent
        caches[v] = {
            "row": np.zeros((nb, c, hr, dw), dt), "row_ok": np.zeros((nb, c, hr, dw), bool),
            "row_read": np.zeros((nb, c, hr, dw), bool), "row0": np.full(dw, -(10**9)),
            "col": np.zeros((nb, c, rh, wc), dt), "col_ok": np.zeros((nb, c, rh, wc), bool),
            "col_read": np.zeros((nb, c, rh, wc), bool), "col0": None, "unread": 0,
        }

    def pad_of(v: int):
        if stage.dtype == "float32":
            return 0.0
        zps = {stage.layers[k].quant.input_zero_point for k in stage.consumers(v) if isinstance(stage.layers[k], Conv)}
        return zps.pop() if zps else 0

    def new_cols(v: int, j: int) -> Interval:
        r = plan.w[v].regions[j]
        return r if j == 0 else Interval(max(r.lo, plan.w[v].regions[j - 1].hi), r.hi)

    for i in range(nh):
        for j in range(nw):
            buf: dict[int, tuple[np.ndarray, Interval, Interval]] = {}
            for v in execution_order(stage):
                if v == last:
                    rows = Interval(i * th, min((i + 1) * th, out.shape[2]))
                    cols = Interval(j * tw, min((j + 1) * tw, out.shape[3]))
                else:
                    rows, cols = plan.h[v].regions[i], plan.w[v].regions[j]
                c = stage.value_shape(v)[0]
                data = np.zeros((nb, c, rows.size, cols.size), dt)
                if v == STAGE_INPUT:  # streamed from the image, the ring outside it
                    data[:] = pad_of(v)
                    lh, lw = rows.clip(Interval(0, image.shape[2])), cols.clip(Interval(0, image.shape[3]))
                    data[:, :, lh.lo - rows.lo:lh.hi - rows.lo, lw.lo - cols.lo:lw.hi - cols.lo] = \
                        image[:, :, lh.lo:lh.hi, lw.lo:lw.hi]
                    buf[v] = (data, rows, cols)
                    continue
                have = np.zeros(data.shape, bool)
                if v != last:
                    k = caches[v]
                    d0 = plan.w[v].domain.lo
                    nc = new_cols(v, j)
                    if i > 0 and k["row"].shape[2]:  # rows the patches above computed
                        top = Interval(rows.lo, rows.lo + k["row"].shape[2])
                        sl = (slice(None), slice(None), slice(None), slice(nc.lo - d0, nc.hi - d0))
                        assert (k["row0"][nc.lo - d0:nc.hi - d0] == rows.lo).all(), f"value {v}: stale row cache"
                        assert k["row_ok"][sl].all(), f"value {v}: row cache read before it was written"
                        data[:, :, :top.size, nc.lo - cols.lo:] = k["row"][sl]
                        have[:, :, :top.size, nc.lo - cols.lo:] = True
                        k["row_read"][sl] = True
                    if j > 0 and k["col"].shape[3]:  # columns the patch to the left computed
                        assert k["col0"] == cols.lo and k["col_ok"].all(), f"value {v}: column cache not ready"
                        data[:, :, :, :k["col"].shape[3]] = k["col"]
                        have[:, :, :, :k["col"].shape[3]] = True
                        k["col_read"][:] = True
                val = _compute_region(stage, v, buf, rows, cols)
                lvh, lvw = (plan.h[v].live, plan.w[v].live) if v != last else (rows, cols)
                ys, xs = np.arange(rows.lo, rows.hi), np.arange(cols.lo, cols.hi)
                live = ((ys >= lvh.lo) & (ys < lvh.hi))[:, None] & ((xs >= lvw.lo) & (xs < lvw.hi))[None, :]
                todo = ~have & np.broadcast_to(live, data.shape)
                data[todo] = val[todo]
                data[~have & ~np.broadcast_to(live, data.shape)] = pad_of(v)
                g = stage.geometry[v]
                if g is not None:
                    macs += int(todo[0].sum()) * g.macs_per_output
                if v == last:
                    out[:, :, rows.lo:rows.hi, cols.lo:cols.hi] = data
                    continue
                hh, ww = rows.clip(Interval(0, done[v].shape[2])), cols.clip(Interval(0, done[v].shape[3]))
                done[v][:, :, hh.lo:hh.hi, ww.lo:ww.hi] += todo[:, :, hh.lo - rows.lo:hh.hi - rows.lo,
                                                                 ww.lo - cols.lo:ww.hi - cols.lo]
                buf[v] = (data, rows, cols)
                k = caches[v]
                if j + 1 < nw and k["col"].shape[3]:  # the next patch's left halo
                    k["unread"] += int((k["col_ok"] & ~k["col_read"]).sum())
                    k["col"][:] = data[:, :, :, cols.size - k["col"].shape[3]:]
                    k["col_ok"][:], k["col_read"][:] = True, False
                    k["col0"] = plan.w[v].regions[j + 1].lo
                    assert k["col0"] == cols.hi - k["col"].shape[3], f"value {v}: column halo is not the region's end"
                if i + 1 < nh and k["row"].shape[2]:  # the next row's top halo, for this patch's new columns
                    nc = new_cols(v, j)
                    d0 = plan.w[v].domain.lo
                    sl = (slice(None), slice(None), slice(None), slice(nc.lo - d0, nc.hi - d0))
                    k["unread"] += int((k["row_ok"][sl] & ~k["row_read"][sl]).sum())
                    k["row"][sl] = data[:, :, rows.size - k["row"].shape[2]:, nc.lo - cols.lo:]
                    k["row_ok"][sl], k["row_read"][sl] = True, False
                    k["row0"][nc.lo - d0:nc.hi - d0] = plan.h[v].regions[i + 1].lo
    for v in range(last):
        k = caches[v]
        k["unread"] += int((k["row_ok"] & ~k["row_read"]).sum()) + int((k["col_ok"] & ~k["col_read"]).sum())
        needed = np.zeros_like(done[v])  # the live part of the patches' regions (strides may leave gaps)
        for rh in plan.h[v].regions:
            for rw in plan.w[v].regions:
                lh, lw = rh.clip(plan.h[v].live), rw.clip(plan.w[v].live)
                needed[:, :, lh.lo:max(lh.lo, lh.hi), lw.lo:max(lw.lo, lw.hi)] = 1
        assert (done[v] == needed).all(), f"value {v}: live elements not computed exactly once"
    result = out.astype(np.float32) if stage.dtype == "float32" else out
    return CachedRun(_from_nchw(stage, result), macs * nb,
                     {v: caches[v]["row"][0].size + caches[v]["col"][0].size for v in range(last)},
                     {v: caches[v]["unread"] for v in range(last)})


def _compute_region(stage: Stage, v: int, buf: dict, rows: Interval, cols: Interval) -> np.ndarray:
    """Value v over image rows x cols from its producers' patch buffers (their regions cover the need)."""
    layer = stage.layers[v]
    if isinstance(layer, Conv):
        g = stage.geometry[v]
        src, srows, scols = buf[stage.inputs[v][0]]
        (sh, sw), (pt, pl, _, _) = g.stride, g.padding
        y0, x0 = rows.lo * sh - pt - srows.lo, cols.lo * sw - pl - scols.lo
        ny, nx = (rows.size - 1) * sh + g.kh, (cols.size - 1) * sw + g.kw
        assert y0 >= 0 and x0 >= 0 and y0 + ny <= src.shape[2] and x0 + nx <= src.shape[3], f"value {v}: window off its input buffer"
        return _conv_value(stage, v, src[:, :, y0:y0 + ny, x0:x0 + nx])
    if isinstance(layer, MaxPool):
        src, srows, scols = buf[stage.inputs[v][0]]
        (kh, kw), (sh, sw), (pt, pl, _, _) = layer.kernel, layer.stride, layer.padding
        y, x = rows.lo * sh - pt, cols.lo * sw - pl
        ny, nx = (rows.size - 1) * sh + kh, (cols.size - 1) * sw + kw
        assert y >= srows.lo and x >= scols.lo and y + ny <= srows.hi and x + nx <= scols.hi, \
            f"value {v}: window off its input buffer"
        window = src[:, :, y - srows.lo:y - srows.lo + ny, x - scols.lo:x - scols.lo + nx]
        return _pool_value(stage, v, window, Interval(y, y + ny), Interval(x, x + nx))
    a, ar, ac = buf[stage.inputs[v][0]]
    if isinstance(layer, Lookup):
        window = a[:, :, rows.lo - ar.lo:rows.hi - ar.lo, cols.lo - ac.lo:cols.hi - ac.lo]
        return layer.table[window.astype(np.int64) + 128]
    b, br, bc = buf[layer.other]

    def window(t, tr, tc):
        return t[:, :, rows.lo - tr.lo:rows.hi - tr.lo, cols.lo - tc.lo:cols.hi - tc.lo]

    if stage.dtype == "float32":
        return _act(window(a, ar, ac) + window(b, br, bc), layer.activation)
    return add_int8_numpy(layer.quant, window(a, ar, ac), window(b, br, bc))
