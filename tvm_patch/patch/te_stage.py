"""The TE compute of a stage, laid out for patch scheduling.

Every value v (the stage input, then each non-final layer) is a TE tensor `buffer_names(stage)[v]` over
its *domain* from `regions.plan_patches`: the image plus whatever ring the patch regions reach, stored at
index = image index + offset. Its body is `if_then_else(live, value, pad)` (a Select for adds), so
padding is a select written into the buffer and the consumers read it without boundary predicates.
A conv is two tensors (more in int8): the reduction `layer{i}_acc` over the live image part only, and
its epilogue (bias, activation or int8 requantization, zero ring) as the layer's value. The last layer
writes the output parameter.

With patches (1, 1) the domains are the image plus its padding: that TE, unscheduled, is the
layer-by-layer reference.
"""

from __future__ import annotations

import re

from dataclasses import dataclass

import numpy as np
from tvm import te, tirx

from tvm_patch.patch.regions import PatchPlan, acc_dtype, buffer_names, plan_patches, scalar_names
from tvm_patch.patch.stage import STAGE_INPUT, Add, Conv, Lookup, MaxPool, Stage, StageError
from tvm_patch.quant.fixedpoint import (BOUNDED_ACC_MAX, TEOps, mbqm, mbqm_bounded, mbqm_bounded_zp, mbqm_high, mbqm_shifts,
                                         rdbpot, zero_point_fits)


@dataclass
class StageTE:
    """The TE tensors of a stage: PrimFunc arguments in order are [input, *params, output]."""

    stage: Stage
    plan: PatchPlan
    input: te.Tensor
    params: list[te.Tensor]
    output: te.Tensor
    values: dict[int, te.Tensor]  # value index -> patch buffer tensor (not the output)
    scalars: dict[int, list[te.Tensor]]  # layer -> per-element temporaries (conv accumulator, ...)

    @property
    def args(self) -> list[te.Tensor]:
        return [self.input, *self.params, self.output]


def param_names(stage: Stage) -> list[str]:
    """Names of the weight/bias (and int8 requantization) parameters, in PrimFunc order."""
    names = []
    for i, layer in enumerate(stage.layers):
        if isinstance(layer, Conv):
            names += [f"layer{i}_weight", f"layer{i}_bias"]
            if stage.dtype == "int8":
                names += [f"layer{i}_multiplier", f"layer{i}_shift"]
        elif isinstance(layer, Lookup):
            names.append(f"layer{i}_table")
    return names


_CHANNEL_CONSTANT = re.compile(r"layer(\d+)_(bias|multiplier|shift)")


def channel_constant_layer(name: str) -> int | None:
    """The layer whose per-channel constant (bias, multiplier, shift: ``param_names``) parameter ``name`` is."""
    m = _CHANNEL_CONSTANT.fullmatch(name)
    return int(m.group(1)) if m else None


def weight_layout(stage: Stage) -> str:
    """The layout of the stage's conv weight parameters: the reduction's innermost axis contiguous in both the
    activations and the weights (OHWI in NHWC: channels; OIHW in NCHW: columns), as the micro-kernels want."""
    return "OHWI" if stage.layout == "NHWC" else "OIHW"


def folds_input_zero_point(stage: Stage, layer: Conv) -> bool:
    """Whether layer's int8 bias parameter carries the input zero point (bias - zp_in * sum(w)), so that its
    reduction is a plain sum of products. Exact: every tap, padding included (the ring holds zp_in), reads a
    value a with sum((a - zp_in) * w) = sum(a * w) - zp_in * sum(w). Not with a weight zero point."""
    return stage.dtype == "int8" and layer.quant.weight_zero_point == 0


def stage_weight(stage: Stage, i: int) -> np.ndarray:
    """Conv layer i's weights in `weight_layout` (a transposed view of the layer's own array)."""
    kl = stage.geometry[i].kernel_layout
    return stage.layers[i].weight.transpose([kl.index(ch) for ch in weight_layout(stage)])


def _stage_bias(stage: Stage, i: int) -> np.ndarray:
    """Conv layer i's bias as passed (zeros when absent), with the input zero point folded in where
    `folds_input_zero_point`."""
    layer, g = stage.layers[i], stage.geometry[i]
    bias = np.zeros(g.c_out) if layer.bias is None else layer.bias
    if folds_input_zero_point(stage, layer):
        sums = stage_weight(stage, i).astype(np.int64).reshape(g.c_out, -1).sum(axis=1)
        bias = bias.astype(np.int64) - layer.quant.input_zero_point * sums
        if np.abs(bias).max(initial=0) >= 2**31:
            raise StageError(f"layer {i}: the bias with the input zero point folded in exceeds int32")
    return bias


def _accumulator_bound(stage: Stage, i: int) -> int | None:
    """The largest |accumulator| of int8 conv layer i over its output channels whatever the input, |bias| + 128 x the
    sum of its weights' magnitudes (|a| <= 128), when its reduction is a bare sum of int8 products
    (`folds_input_zero_point`), every shift is in [-31, -1] and every multiplier >= 0 (the bounded kernels'
    other preconditions, `tvmp_requant_rb`); else None."""
    layer = stage.layers[i]
    if not isinstance(layer, Conv) or not folds_input_zero_point(stage, layer):
        return None
    g = stage.geometry[i]
    shift = np.broadcast_to(np.asarray(layer.quant.shift, dtype=np.int64), (g.c_out,))
    if not ((shift >= -31) & (shift <= -1)).all() or (np.asarray(layer.quant.multiplier) < 0).any():
        return None
    w = np.abs(stage_weight(stage, i).astype(np.int64)).reshape(g.c_out, -1).sum(axis=1)
    return int((np.abs(_stage_bias(stage, i).astype(np.int64)) + 128 * w).max(initial=0))


def bounded_requantization(stage: Stage, i: int) -> bool:
    """Whether conv layer i's requantization takes `quant.fixedpoint.mbqm_bounded` (the C kernels' cheaper
    rounding, the same value): `_accumulator_bound` exists and is at most BOUNDED_ACC_MAX."""
    bound = _accumulator_bound(stage, i)
    return bound is not None and bound <= BOUNDED_ACC_MAX


def zero_point_requantization(stage: Stage, i: int) -> bool:
    """Whether conv layer i's bounded requantization and its output zero point take one
    `quant.fixedpoint.mbqm_bounded_zp` (`tvmp_requant_rbz`, the same value): `fixedpoint.zero_point_fits` for its
    accumulator bound, output zero point and largest right shift."""
    if not bounded_requantization(stage, i):
        return False
    layer, g = stage.layers[i], stage.geometry[i]
    right = int(-np.broadcast_to(np.asarray(layer.quant.shift, dtype=np.int64), (g.c_out,)).min())
    return zero_point_fits(_accumulator_bound(stage, i), int(layer.quant.output_zero_point), right)


def param_arrays(stage: Stage) -> list[np.ndarray]:
    """The arrays to pass for the parameters of `param_names`, in order: weights in `weight_layout`, biases
    (zeros when absent) with the input zero point folded in where `folds_input_zero_point`."""
    arrays = []
    bias_dtype = acc_dtype(stage)
    for i, layer in enumerate(stage.layers):
        if isinstance(layer, Conv):
            g = stage.geometry[i]
            arrays.append(np.ascontiguousarray(stage_weight(stage, i), dtype=stage.dtype))
            arrays.append(np.ascontiguousarray(_stage_bias(stage, i), dtype=bias_dtype))
            if stage.dtype == "int8":
                q = layer.quant
                arrays.append(np.ascontiguousarray(np.broadcast_to(q.multiplier, (g.c_out,)), dtype="int32"))
                arrays.append(np.ascontiguousarray(np.broadcast_to(q.shift, (g.c_out,)), dtype="int32"))
        elif isinstance(layer, Lookup):
            arrays.append(np.ascontiguousarray(layer.table, dtype="int8"))
    return arrays


def conv_term(stage: Stage, layer: Conv, a, wv):
    """One multiply-accumulate term of layer's reduction (activation a, weight wv as stored by `param_arrays`)."""
    if stage.dtype == "float32":
        return a * wv
    if folds_input_zero_point(stage, layer):
        return a.astype("int32") * wv.astype("int32")
    q = layer.quant
    return (a.astype("int32") - tirx.const(q.input_zero_point, "int32")) * (
        wv.astype("int32") - tirx.const(q.weight_zero_point, "int32"))


def weight_at(stage: Stage, w, o, ci, ky, kx):
    """The weight parameter at output channel o, input channel ci, tap (ky, kx): `w(*indices)` in `weight_layout`
    (a TE tensor, or a function building the load)."""
    d = {"O": o, "I": ci, "H": ky, "W": kx}
    return w(*(d[ch] for ch in weight_layout(stage)))


def reduction_order(stage: Stage) -> str:
    """The conv reduction's loops, outermost first ("I", "H", "W"): the weight layout's order, so that the
    innermost loop walks contiguous activations and weights."""
    return weight_layout(stage)[1:]


def requantized(acc, mult, shift, bounded: bool = False, zp: int | None = None):
    """TFLite's MultiplyByQuantizedMultiplier of an int32 accumulator (+ bias), before the zero point: one
    `tvmp_requant` call in the C export's kernels (`quant.extern_requantization`; `tvmp_requant_rb` where
    `bounded`: see `bounded_requantization`), the expression elsewhere. With ``zp`` (where
    `zero_point_requantization`): after adding that zero point, one `tvmp_requant_rbz` call."""
    if zp is not None:
        return mbqm_bounded_zp(TEOps, acc, mult, shift, zp)
    return (mbqm_bounded if bounded else mbqm)(TEOps, acc, mult, shift)


def _shape(stage: Stage, c: int, h: int, w: int) -> tuple[int, int, int, int]:
    return (stage.batch, c, h, w) if stage.layout == "NCHW" else (stage.batch, h, w, c)


def _compute(stage: Stage, c: int, h: int, w: int, fn, name: str) -> te.Tensor:
    """te.compute over (C, H, W) in the stage layout; `fn(n, c, y, x)` gets the indices by meaning."""
    if stage.layout == "NCHW":
        return te.compute(_shape(stage, c, h, w), lambda n, ci, y, x: fn(n, ci, y, x), name=name)
    return te.compute(_shape(stage, c, h, w), lambda n, y, x, ci: fn(n, ci, y, x), name=name)


def _at(stage: Stage, t: te.Tensor, n, c, y, x):
    """t at (n, c, y, x) in the stage layout, as a PrimExpr."""
    return t(n, c, y, x) if stage.layout == "NCHW" else t(n, y, x, c)


def _float_act(v, act: str):
    if act == "relu":
        return tirx.max(v, tirx.const(0.0, "float32"))
    if act == "relu6":
        return tirx.min(tirx.max(v, tirx.const(0.0, "float32")), tirx.const(6.0, "float32"))
    return v


def _clamp_i8(v, lo: int, hi: int):
    return tirx.min(tirx.max(v, tirx.const(lo, "int32")), tirx.const(hi, "int32")).astype("int8")


def pad_value(stage: Stage, v: int):
    """What the zero ring of value v holds: 0.0, or in int8 the zero point of v's conv consumers."""
    if stage.dtype == "float32":
        return tirx.const(0.0, "float32")
    zps = {stage.layers[c].quant.input_zero_point for c in stage.consumers(v) if isinstance(stage.layers[c], Conv)}
    return tirx.const(zps.pop() if zps else 0, "int8")  # Stage checks there is at most one


def stage_te(stage: Stage, patches: tuple[int, int] = (1, 1)) -> StageTE:
    """Build the TE compute of `stage` with value domains for a `patches` split (see module doc).

    Per layer, besides its value: the conv accumulator `layer{i}_acc` over the live image part, and in
    int8 the intermediate integers of the requantization (`regions.scalar_names`), each computed per
    element in the schedule. Storing them (one element each) keeps every TIR expression small: written
    out in one expression, TFLite's requantization repeats its input six times (three nested in an
    int8 add: hundreds of copies, and minutes in TVM's passes).
    """
    plan = plan_patches(stage, patches)
    names = buffer_names(stage)
    out_index = len(stage.layers) - 1
    x = te.placeholder(stage.input_shape, stage.dtype, name="input")
    params: list[te.Tensor] = []
    values: dict[int, te.Tensor] = {}
    scalars: dict[int, list[te.Tensor]] = {}

    def live_cond(v: int, y, xx):
        lh, lw = plan.h[v].live, plan.w[v].live
        return tirx.all(y >= lh.lo, y < lh.hi, xx >= lw.lo, xx < lw.hi)

    def read(v: int, n, c, y, xx):
        """Value v at image position (y, xx) (which must lie in its domain)."""
        return _at(stage, values[v], n, c, y + plan.h[v].offset, xx + plan.w[v].offset)

    def value_domain(v: int) -> tuple[int, int, int, int]:
        """(rows, cols, row offset, col offset) of value v's tensor; the output is exact."""
        if v == out_index:
            return plan.h[v].size, plan.w[v].size, 0, 0
        return plan.h[v].domain.size, plan.w[v].domain.size, plan.h[v].offset, plan.w[v].offset

    def make_value(v: int, body, lazy: bool = True) -> te.Tensor:
        """Value v over its domain: body(n, c, image y, image x) where live, else the pad value.

        lazy: guard body with if_then_else (body reads out of bounds off the live part: the input
        parameter, a conv accumulator); otherwise a Select (body reads in-bounds buffers everywhere,
        and CompactBufferAllocation then sees plain affine reads; under if_then_else it narrows them
        by the condition into min/max bounds it cannot always simplify, losing the compaction).
        """
        c = stage.value_shape(v)[0]
        if v == out_index:
            return _compute(stage, c, plan.h[v].size, plan.w[v].size, body, "output")
        rows, cols, oh, ow = value_domain(v)
        pad = pad_value(stage, v)
        select = te.if_then_else if lazy else tirx.Select

        def fn(n, ci, j, k):
            y, xx = j - oh, k - ow
            return select(live_cond(v, y, xx), body(n, ci, y, xx), pad)

        return _compute(stage, c, rows, cols, fn, names[v])

    def over_live(i: int, fn, name: str) -> te.Tensor:
        """A per-element temporary of layer i over its live image part: fn(n, c, image y, image x)."""
        lh, lw = plan.h[i].live, plan.w[i].live
        c = stage.value_shape(i)[0]
        return _compute(stage, c, lh.size, lw.size, lambda n, ci, j, k: fn(n, ci, j + lh.lo, k + lw.lo), name)

    def live_at(i: int, t: te.Tensor, n, c, y, xx):
        """A temporary of `over_live` at image position (y, xx)."""
        return _at(stage, t, n, c, y - plan.h[i].live.lo, xx - plan.w[i].live.lo)

    def over_domain(i: int, fn, name: str) -> te.Tensor:
        """A per-element temporary of layer i over its value's domain: fn(n, c, image y, image x)."""
        rows, cols, oh, ow = value_domain(i)
        c = stage.value_shape(i)[0]
        return _compute(stage, c, rows, cols, lambda n, ci, j, k: fn(n, ci, j - oh, k - ow), name)

    def domain_at(i: int, t: te.Tensor, n, c, y, xx):
        _, _, oh, ow = value_domain(i)
        return _at(stage, t, n, c, y + oh, xx + ow)

    values[STAGE_INPUT] = make_value(STAGE_INPUT, lambda n, c, y, xx: _at(stage, x, n, c, y, xx))
    zi = lambda v: tirx.const(int(v), "int32")  # noqa: E731

    for i, layer in enumerate(stage.layers):
        src = stage.inputs[i][0]
        tmp = scalar_names(stage, i)
        if isinstance(layer, Conv):
            g = stage.geometry[i]
            w = te.placeholder(stage_weight(stage, i).shape, stage.dtype, name=f"layer{i}_weight")
            b = te.placeholder((g.c_out,), acc_dtype(stage), name=f"layer{i}_bias")
            params += [w, b]
            acc = _conv_acc(stage, plan, i, g, layer, w, read, src)
            if stage.dtype == "float32":
                scalars[i] = [acc]

                def body(n, c, y, xx, i=i, acc=acc, b=b, act=layer.activation):
                    return _float_act(live_at(i, acc, n, c, y, xx) + b(c), act)

            else:
                mult = te.placeholder((g.c_out,), "int32", name=f"layer{i}_multiplier")
                shift = te.placeholder((g.c_out,), "int32", name=f"layer{i}_shift")
                params += [mult, shift]
                q = layer.quant

                def high_fn(n, c, y, xx, i=i, acc=acc, b=b, mult=mult, shift=shift,
                            bounded=bounded_requantization(stage, i)):
                    return requantized(live_at(i, acc, n, c, y, xx) + b(c), mult(c), shift(c), bounded)

                high = over_live(i, high_fn, tmp[1])
                scalars[i] = [acc, high]

                def body(n, c, y, xx, i=i, high=high, q=q):
                    return _clamp_i8(live_at(i, high, n, c, y, xx) + zi(q.output_zero_point), q.act_min, q.act_max)

        elif isinstance(layer, MaxPool):
            acc = _pool_acc(stage, plan, i, layer, read, src)
            scalars[i] = [acc]

            def body(n, c, y, xx, i=i, acc=acc, layer=layer):
                m = live_at(i, acc, n, c, y, xx)
                if stage.dtype == "float32":
                    return _float_act(m, layer.activation)
                return _clamp_i8(m, layer.act_min, layer.act_max)

        elif isinstance(layer, Lookup):
            table = te.placeholder((256,), "int8", name=f"layer{i}_table")
            params.append(table)
            scalars[i] = []

            def body(n, c, y, xx, src=src, table=table):
                return table(read(src, n, c, y, xx).astype("int32") + zi(128))

        else:
            assert isinstance(layer, Add)
            other = layer.other
            if stage.dtype == "float32":
                scalars[i] = []

                def body(n, c, y, xx, src=src, other=other, act=layer.activation):
                    return _float_act(read(src, n, c, y, xx) + read(other, n, c, y, xx), act)

            else:
                # TFLite ADD: each input offset, shifted left by left_shift, rescaled (SRDHM then
                # RDBPOT); the sum rescaled to the output, offset, clamped.
                q = layer.quant
                ins = []
                for k, v in enumerate((src, other)):

                    def in_fn(n, c, y, xx, v=v, k=k, q=q):
                        a = (read(v, n, c, y, xx).astype("int32") - zi(q.input_zero_points[k])) * zi(1 << q.left_shift)
                        left = mbqm_shifts(TEOps, q.input_shifts[k])[0]
                        return mbqm_high(TEOps, a, q.input_multipliers[k], left)

                    ins.append(over_domain(i, in_fn, tmp[k]))

                def sum_fn(n, c, y, xx, i=i, ins=ins, q=q):
                    return sum(
                        rdbpot(TEOps, domain_at(i, t, n, c, y, xx), mbqm_shifts(TEOps, q.input_shifts[k])[1])
                        for k, t in enumerate(ins)
                    )

                total = over_domain(i, sum_fn, tmp[2])

                def high_fn(n, c, y, xx, i=i, total=total, q=q):
                    t = domain_at(i, total, n, c, y, xx)
                    return mbqm_high(TEOps, t, q.output_multiplier, mbqm_shifts(TEOps, q.output_shift)[0])

                high = over_domain(i, high_fn, tmp[3])
                scalars[i] = [*ins, total, high]

                def body(n, c, y, xx, i=i, high=high, q=q):
                    r = rdbpot(TEOps, domain_at(i, high, n, c, y, xx), mbqm_shifts(TEOps, q.output_shift)[1])
                    return _clamp_i8(r + zi(q.output_zero_point), q.act_min, q.act_max)

        values[i] = make_value(i, body, lazy=isinstance(layer, (Conv, MaxPool)))

    output = values.pop(out_index)
    return StageTE(stage, plan, x, params, output, values, scalars)


def _conv_acc(stage: Stage, plan: PatchPlan, i: int, g, layer: Conv, w: te.Tensor, read, src: int) -> te.Tensor:
    """The conv reduction of layer i over its live image part (stored at image index - live.lo)."""
    lh, lw = plan.h[i].live, plan.w[i].live
    cin_g = g.c_in // g.groups
    cout_g = g.c_out // g.groups
    rc = te.reduce_axis((0, cin_g), name="rc")
    ry = te.reduce_axis((0, g.kh), name="ry")
    rx = te.reduce_axis((0, g.kw), name="rx")
    (sh, sw), (pt, pl, _, _) = g.stride, g.padding
    axes = [{"I": rc, "H": ry, "W": rx}[a] for a in reduction_order(stage)]

    def fn(n, o, j, k):
        y, xx = j + lh.lo, k + lw.lo
        cin = rc if g.groups == 1 else (o // cout_g) * cin_g + rc
        a = read(src, n, cin, y * sh - pt + ry, xx * sw - pl + rx)
        return te.sum(conv_term(stage, layer, a, weight_at(stage, w, o, rc, ry, rx)), axis=axes)

    return _compute(stage, g.c_out, lh.size, lw.size, fn, scalar_names(stage, i)[0])


def _pool_acc(stage: Stage, plan: PatchPlan, i: int, layer: MaxPool, read, src: int) -> te.Tensor:
    """The max pool reduction of layer i over its live image part (stored at image index - live.lo), in the
    accumulator dtype. Only in-image positions of a window take part: the input's ring holds its conv
    readers' zero point, which must not win the max (TFLite's and TVM's pools pad with the lowest value)."""
    lh, lw = plan.h[i].live, plan.w[i].live
    (kh, kw), (sh, sw), (pt, pl, _, _) = layer.kernel, layer.stride, layer.padding
    _, ih, iw = stage.value_shape(src)
    ry = te.reduce_axis((0, kh), name="ry")
    rx = te.reduce_axis((0, kw), name="rx")
    lowest = tirx.min_value(acc_dtype(stage))

    def fn(n, c, j, k):
        y, xx = (j + lh.lo) * sh - pt + ry, (k + lw.lo) * sw - pl + rx
        a = read(src, n, c, y, xx).astype(acc_dtype(stage))
        # a Select, not te.max's `where` (create_prim_func drops it); a value this low never wins
        a = tirx.Select(tirx.all(y >= 0, y < ih, xx >= 0, xx < iw), a, lowest)
        return te.max(a, axis=[ry, rx])

    return _compute(stage, stage.value_shape(i)[0], lh.size, lw.size, fn, scalar_names(stage, i)[0])
