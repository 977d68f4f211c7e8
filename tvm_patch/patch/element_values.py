"""One element of a layer in the patch stage's written nest: a conv through a one-element accumulator, a max pool's
running max, a table lookup, a residual add (its fused projections computed in it), and the int8 requantizations
they end in. The register-blocked forms are `blocked_convs`'."""

from __future__ import annotations

from typing import Any, Callable

from tvm import tirx

from tvm_patch.patch.loops import I32, imm, loops
from tvm_patch.patch.nest_context import NestContext
from tvm_patch.patch.regions import acc_dtype
from tvm_patch.patch.stage import Add, Conv, Lookup, MaxPool
from tvm_patch.patch.te_stage import (_clamp_i8, _float_act, bounded_requantization, conv_term, reduction_order,
                                      requantized, weight_at, zero_point_requantization)
from tvm_patch.quant.fixedpoint import TEOps, mbqm_proven
from tvm_patch.tir_util import seq

__all__ = ["add_steps", "requant_steps", "value_stmt"]

Dest = Callable[[Any], Any]  # value -> the statement that puts it where it goes


def requant_steps(ctx: NestContext, v: int, total: Any, mult: Any, shift: Any) -> tuple[Any, Any]:
    """Int8 conv layer v's requantization of the accumulator ``total`` (bias included) into ``tmp0``, and the
    clamped output value read from it: with the output zero point in the call where the constants allow
    (`zero_point_requantization`: `tvmp_requant_rbz`), else added after it."""
    stage, tmp = ctx.stage, ctx.scratch.tmp
    q = stage.layers[v].quant
    rbz = zero_point_requantization(stage, v)
    high = tirx.BufferStore(tmp[0], requantized(total, mult, shift, bounded_requantization(stage, v),
                                                int(q.output_zero_point) if rbz else None), [imm(0)])
    value = tirx.BufferLoad(tmp[0], [imm(0)])
    return high, _clamp_i8(value if rbz else value + imm(q.output_zero_point), q.act_min, q.act_max)


def value_stmt(ctx: NestContext, v: int, c: Any, y: Any, x: Any, dest: Dest, reader: Callable | None = None) -> Any:
    """Compute layer v at image (y, x), channel c, and `dest(value)` it (live positions only); `reader`
    (value, channel, y, x) -> element overrides where a conv reads its input (an in-place depthwise: its copy)."""
    layer = ctx.stage.layers[v]
    if isinstance(layer, Conv):
        return _conv_value(ctx, v, c, y, x, dest, reader or ctx.read)
    if isinstance(layer, MaxPool):
        return _pool_value(ctx, v, c, y, x, dest)
    if isinstance(layer, Lookup):
        val = ctx.read(ctx.stage.inputs[v][0], c, y, x).astype(I32) + imm(128)
        return dest(tirx.BufferLoad(ctx.params[f"layer{v}_table"], [val]))
    assert isinstance(layer, Add)
    fval = ctx.scratch.fval
    steps = []
    operands = []
    for u in (ctx.stage.inputs[v][0], layer.other):
        if u in ctx.fused:  # the projection, computed here element by element
            steps.append(value_stmt(ctx, u, c, y, x, lambda val: tirx.BufferStore(fval, val, [imm(0)])))
            operands.append(tirx.BufferLoad(fval, [imm(0)]))
        else:
            operands.append(ctx.read(u, c, y, x))
    return seq([*steps, *add_steps(ctx, v, *operands, dest)])


def _conv_value(ctx: NestContext, v: int, c: Any, y: Any, x: Any, dest: Dest, reader: Callable) -> Any:
    """`value_stmt` of conv v: its taps summed in `acc` in the stage's reduction order, then its epilogue."""
    stage, acc, params = ctx.stage, ctx.scratch.acc, ctx.params
    layer, g = stage.layers[v], stage.geometry[v]
    src = stage.inputs[v][0]
    cin_g, cout_g = g.c_in // g.groups, g.c_out // g.groups
    (sh, sw), (pt, pl, _, _) = g.stride, g.padding
    w = params[f"layer{v}_weight"]
    b = params[f"layer{v}_bias"]

    def tap(rc, ry, rx):
        cin = rc if g.groups == 1 else (c // imm(cout_g)) * imm(cin_g) + rc
        a = reader(src, cin, y * imm(sh) - imm(pt) + ry, x * imm(sw) - imm(pl) + rx)
        wv = weight_at(stage, lambda *idx: tirx.BufferLoad(w, list(idx)), c, rc, ry, rx)
        term = conv_term(stage, layer, a, wv)
        return tirx.BufferStore(acc, tirx.BufferLoad(acc, [imm(0)]) + term, [imm(0)])

    order = reduction_order(stage)
    extent = {"I": cin_g, "H": g.kh, "W": g.kw}
    red = loops([(imm(0), imm(extent[a])) for a in order], lambda *r: tap(*(r[order.index(a)] for a in "IHW")))
    if stage.dtype == "float32":
        total = tirx.BufferLoad(acc, [imm(0)]) + tirx.BufferLoad(b, [c])
        fin = dest(_float_act(total, layer.activation))
        return tirx.SeqStmt([tirx.BufferStore(acc, imm(0, acc_dtype(stage)), [imm(0)]), red, fin])
    # int8: the bias is the accumulator's start (integer sums: the same value, one add fewer per output)
    mult, shift = params[f"layer{v}_multiplier"], params[f"layer{v}_shift"]
    high, fin = requant_steps(ctx, v, tirx.BufferLoad(acc, [imm(0)]), tirx.BufferLoad(mult, [c]),
                              tirx.BufferLoad(shift, [c]))
    return tirx.SeqStmt([tirx.BufferStore(acc, tirx.BufferLoad(b, [c]), [imm(0)]), red, high, dest(fin)])


def _pool_value(ctx: NestContext, v: int, c: Any, y: Any, x: Any, dest: Dest) -> Any:
    """`value_stmt` of max pool v: the running max over the window's in-image positions only."""
    stage, acc = ctx.stage, ctx.scratch.acc
    layer = stage.layers[v]
    (kh, kw), (sh, sw), (pt, pl, _, _) = layer.kernel, layer.stride, layer.padding
    src = stage.inputs[v][0]
    _, ih, iw = stage.value_shape(src)

    def pool_tap(ry, rx):
        yy, xx = y * imm(sh) - imm(pt) + ry, x * imm(sw) - imm(pl) + rx
        m = tirx.max(tirx.BufferLoad(acc, [imm(0)]), ctx.read(src, c, yy, xx).astype(acc_dtype(stage)))
        return tirx.IfThenElse(tirx.all(yy >= 0, yy < ih, xx >= 0, xx < iw),
                               tirx.BufferStore(acc, m, [imm(0)]), None)

    red = loops([(imm(0), imm(kh)), (imm(0), imm(kw))], pool_tap)
    m = tirx.BufferLoad(acc, [imm(0)])
    act = _float_act(m, layer.activation) if stage.dtype == "float32" else _clamp_i8(m, layer.act_min, layer.act_max)
    fin = dest(act)
    return tirx.SeqStmt([tirx.BufferStore(acc, tirx.min_value(acc_dtype(stage)), [imm(0)]), red, fin])


def add_steps(ctx: NestContext, v: int, a: Any, o: Any, dest: Dest) -> list:
    """Residual add v of the operand values a and o, `dest(value)`-ed: TFLite's integer add, each of its three
    requantizations the cheapest call its bounds allow (`fixedpoint.mbqm_proven`): an operand's
    |(value - zero point) 2^left_shift| <= 255 2^20 for int8, each rescaled one at most 1 more, their sum."""
    layer, tmp = ctx.stage.layers[v], ctx.scratch.tmp
    if ctx.stage.dtype == "float32":
        return [dest(_float_act(a + o, layer.activation))]
    q = layer.quant
    steps, total_bound = [], 0
    for k, val in enumerate((a, o)):
        zp = q.input_zero_points[k]
        bound = max(127 - zp, 128 + zp) << q.left_shift
        s = (val.astype(I32) - imm(zp)) * imm(1 << q.left_shift)
        steps.append(tirx.BufferStore(tmp[k], mbqm_proven(TEOps, s, q.input_multipliers[k], q.input_shifts[k],
                                                          bound), [imm(0)]))
        total_bound += bound + 1
    total = tirx.BufferLoad(tmp[0], [imm(0)]) + tirx.BufferLoad(tmp[1], [imm(0)])
    steps.append(tirx.BufferStore(tmp[2], mbqm_proven(TEOps, total, q.output_multiplier, q.output_shift,
                                                      total_bound, q.output_zero_point), [imm(0)]))
    steps.append(dest(_clamp_i8(tirx.BufferLoad(tmp[2], [imm(0)]), q.act_min, q.act_max)))
    return steps
