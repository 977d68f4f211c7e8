"""The TE compute of a stage, laid out for patch scheduling.

Every value v (the stage input, then each non-final layer) is a TE tensor `buffer_names(stage)[v]` over
its *domain* from `regions.plan_patches`: the image plus whatever ring the patch regions reach, stored at
index = image index + offset. Its body is `if_then_else(live, value, pad)`, so padding is a select
written into the buffer and the consumers read it without boundary predicates. A conv is two tensors:
the reduction `layer{i}_acc` over the live image part only, and its epilogue (bias, activation or int8
requantization, zero ring) as the layer's value. The last layer writes the output parameter.

With patches (1, 1) the domains are the image plus its padding: that TE, unscheduled, is the
layer-by-layer reference.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tvm import te, tirx

from tvm_patch.patch import intarith
from tvm_patch.patch.regions import PatchPlan, acc_dtype, acc_name, buffer_names, plan_patches
from tvm_patch.patch.stage import STAGE_INPUT, Add, Conv, Stage


@dataclass
class StageTE:
    """The TE tensors of a stage: PrimFunc arguments in order are [input, *params, output]."""

    stage: Stage
    plan: PatchPlan
    input: te.Tensor
    params: list[te.Tensor]
    output: te.Tensor
    values: dict[int, te.Tensor]  # value index -> patch buffer tensor (not the output)
    accs: dict[int, te.Tensor]  # conv layer index -> accumulator tensor

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
    return names


def param_arrays(stage: Stage) -> list[np.ndarray]:
    """The arrays to pass for the parameters of `param_names`, in order (bias zeros when absent)."""
    arrays = []
    bias_dtype = acc_dtype(stage)
    for i, layer in enumerate(stage.layers):
        if isinstance(layer, Conv):
            g = stage.geometry[i]
            arrays.append(np.ascontiguousarray(layer.weight, dtype=stage.dtype))
            bias = np.zeros(g.c_out) if layer.bias is None else layer.bias
            arrays.append(np.ascontiguousarray(bias, dtype=bias_dtype))
            if stage.dtype == "int8":
                q = layer.quant
                arrays.append(np.ascontiguousarray(np.broadcast_to(q.multiplier, (g.c_out,)), dtype="int32"))
                arrays.append(np.ascontiguousarray(np.broadcast_to(q.shift, (g.c_out,)), dtype="int32"))
    return arrays


def _shape(stage: Stage, c: int, h: int, w: int) -> tuple[int, int, int, int]:
    return (stage.batch, c, h, w) if stage.layout == "NCHW" else (stage.batch, h, w, c)


def _compute(stage: Stage, c: int, h: int, w: int, fn, name: str) -> te.Tensor:
    """te.compute over (C, H, W) in the stage layout; `fn(n, c, y, x)` gets the indices by meaning."""
    if stage.layout == "NCHW":
        return te.compute(_shape(stage, c, h, w), lambda n, ci, y, x: fn(n, ci, y, x), name=name)
    return te.compute(_shape(stage, c, h, w), lambda n, y, x, ci: fn(n, ci, y, x), name=name)


def _at(stage: Stage, t: te.Tensor, n, c, y, x):
    return t[n, c, y, x] if stage.layout == "NCHW" else t[n, y, x, c]


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
    if len(zps) > 1:
        from tvm_patch.patch.stage import StageError

        raise StageError(f"value {v} is read by convs with different input zero points {sorted(zps)}")
    return tirx.const(zps.pop() if zps else 0, "int8")


def stage_te(stage: Stage, patches: tuple[int, int] = (1, 1)) -> StageTE:
    """Build the TE compute of `stage` with value domains for a `patches` split (see module doc)."""
    plan = plan_patches(stage, patches)
    names = buffer_names(stage)
    out_index = len(stage.layers) - 1
    x = te.placeholder(stage.input_shape, stage.dtype, name="input")
    params: list[te.Tensor] = []
    values: dict[int, te.Tensor] = {}
    accs: dict[int, te.Tensor] = {}

    def live_cond(v: int, y, xx):
        lh, lw = plan.h[v].live, plan.w[v].live
        return tirx.all(y >= lh.lo, y < lh.hi, xx >= lw.lo, xx < lw.hi)

    def read(v: int, n, c, y, xx):
        """Value v at image position (y, xx) (which must lie in its domain)."""
        return _at(stage, values[v], n, c, y + plan.h[v].offset, xx + plan.w[v].offset)

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
        ph, pw = plan.h[v], plan.w[v]
        pad = pad_value(stage, v)
        select = te.if_then_else if lazy else tirx.Select

        def fn(n, ci, j, k):
            y, xx = j - ph.offset, k - pw.offset
            return select(live_cond(v, y, xx), body(n, ci, y, xx), pad)

        return _compute(stage, c, ph.domain.size, pw.domain.size, fn, names[v])

    values[STAGE_INPUT] = make_value(STAGE_INPUT, lambda n, c, y, xx: _at(stage, x, n, c, y, xx))

    for i, layer in enumerate(stage.layers):
        src = stage.inputs[i][0]
        if isinstance(layer, Conv):
            g = stage.geometry[i]
            w = te.placeholder(layer.weight.shape, stage.dtype, name=f"layer{i}_weight")
            b = te.placeholder((g.c_out,), acc_dtype(stage), name=f"layer{i}_bias")
            params += [w, b]
            acc = _conv_acc(stage, plan, i, g, layer, w, read, src)
            accs[i] = acc
            lh, lw = plan.h[i].live, plan.w[i].live
            if stage.dtype == "float32":

                def body(n, c, y, xx, acc=acc, b=b, lh=lh, lw=lw, act=layer.activation):
                    return _float_act(_at(stage, acc, n, c, y - lh.lo, xx - lw.lo) + b[c], act)

            else:
                mult = te.placeholder((g.c_out,), "int32", name=f"layer{i}_multiplier")
                shift = te.placeholder((g.c_out,), "int32", name=f"layer{i}_shift")
                params += [mult, shift]
                q = layer.quant

                def body(n, c, y, xx, acc=acc, b=b, lh=lh, lw=lw, q=q, mult=mult, shift=shift):
                    a = _at(stage, acc, n, c, y - lh.lo, xx - lw.lo) + b[c]
                    r = intarith.multiply_by_quantized_multiplier_tir(a, mult(c), shift(c))
                    return _clamp_i8(r + tirx.const(q.output_zero_point, "int32"), q.act_min, q.act_max)

        else:
            assert isinstance(layer, Add)
            other = layer.other
            if stage.dtype == "float32":

                def body(n, c, y, xx, src=src, other=other, act=layer.activation):
                    return _float_act(read(src, n, c, y, xx) + read(other, n, c, y, xx), act)

            else:
                q = layer.quant

                def body(n, c, y, xx, src=src, other=other, q=q):
                    return _add_int8(q, read(src, n, c, y, xx), read(other, n, c, y, xx))

        values[i] = make_value(i, body, lazy=isinstance(layer, Conv))

    output = values.pop(out_index)
    return StageTE(stage, plan, x, params, output, values, accs)


def _conv_acc(stage: Stage, plan: PatchPlan, i: int, g, layer: Conv, w: te.Tensor, read, src: int) -> te.Tensor:
    """The conv reduction of layer i over its live image part (stored at image index - live.lo)."""
    lh, lw = plan.h[i].live, plan.w[i].live
    cin_g = g.c_in // g.groups
    cout_g = g.c_out // g.groups
    rc = te.reduce_axis((0, cin_g), name="rc")
    ry = te.reduce_axis((0, g.kh), name="ry")
    rx = te.reduce_axis((0, g.kw), name="rx")
    (sh, sw), (pt, pl, _, _) = g.stride, g.padding
    kl = g.kernel_layout

    def widx(o, ci, ky, kx):
        d = {"O": o, "I": ci, "H": ky, "W": kx}
        return tuple(d[ch] for ch in kl)

    def fn(n, o, j, k):
        y, xx = j + lh.lo, k + lw.lo
        cin = rc if g.groups == 1 else (o // cout_g) * cin_g + rc
        a = read(src, n, cin, y * sh - pt + ry, xx * sw - pl + rx)
        wv = w[widx(o, rc, ry, rx)]
        if stage.dtype == "float32":
            return te.sum(a * wv, axis=[rc, ry, rx])
        q = layer.quant
        a32 = a.astype("int32") - tirx.const(q.input_zero_point, "int32")
        w32 = wv.astype("int32") - tirx.const(q.weight_zero_point, "int32")
        return te.sum(a32 * w32, axis=[rc, ry, rx])

    return _compute(stage, g.c_out, lh.size, lw.size, fn, acc_name(i))


def _add_int8(q, a, b):
    """TFLite int8 ADD of a (Add.input) and b (Add.other)."""
    mq = intarith.multiply_by_quantized_multiplier_tir

    def scaled(v, k):
        s = (v.astype("int32") - tirx.const(q.input_zero_points[k], "int32")) * tirx.const(1 << q.left_shift, "int32")
        return mq(s, int(q.input_multipliers[k]), int(q.input_shifts[k]))

    raw = mq(scaled(a, 0) + scaled(b, 1), int(q.output_multiplier), int(q.output_shift))
    return _clamp_i8(raw + tirx.const(q.output_zero_point, "int32"), q.act_min, q.act_max)
