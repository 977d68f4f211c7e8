"""A depthwise convolution channel by channel through a padded copy of the channel: no border window.

In place (inplace_conv.py) or not, a lean depthwise kernel reads its input through the pad's
``if_then_else``: the micro-kernels split each output loop into border ranges and the interior
(border_partition.partition_padding), and every border window runs the bounded, tap-by-tap form of
``tvmp_window_s8``. On the small planes of a network's late layers with 5x5 and 7x7 kernels most or all
windows are border ones (mcunet-in3's 7x7 layers on 6 x 6 and 11 x 11 planes: 3.3-3.9 instructions per MAC).

Here the pad stage is kept (``lean_schedule(keep=...)``) and computed at the channel loop: per channel, the
(H + 2p) x (W + 2p) plane is written once, the pad value in its ring and the input inside, and every output
window then reads that plane with no test (interior, paired windows: ``tvmp_window2_s8``). The copy costs
(H + 2p)(W + 2p) byte stores per channel and that many bytes of workspace (the export keeps it only where the
planned arena stays as it is). Each output element sums the same products as before: only where the pad
value comes from changes. Run in place, the proof (inplace_conv.inplace_conv_pairs) accepts such a copy: it
reads the input only where its bounds hold, a subset of the plain copy's reads.
"""

from __future__ import annotations

from typing import Any

import tvm
import tvm_ffi
from tvm import s_tir, tirx
from tvm.ir.expr import TensorLoad
from tvm.tirx.buffer import is_buffer_var

from tvm_patch.errors import TVM_ERRORS
from tvm_patch.export.inplace_conv import depthwise_layout
from tvm_patch.export.patterns import const_shape, is_pad_of
from tvm_patch.export.schedule import is_default_form, lean_schedule

__all__ = ["MIN_OUTPUTS", "MIN_OUTPUTS_7X7", "MIN_TAPS", "MIN_TAPS_STRIDE1", "depthwise_windows", "padded_copy_pays",
           "padded_copy_schedule"]

# where the copy pays (docs/kernels.md, rounds 8 and 12): 5x5 and 7x7 windows at any stride, 3x3 ones at stride 1
# (round 12, on kernels with the right shift stored: kws's 3-17 % faster, vww's 3-14 %, mcunet's up to 9 %, two
# NCHW 12 x 12 / 11 x 11 ones 1 % slower; at stride 2 a 3x3 copy lost 60-75 %: vww's NHWC stride-2 kernels keep
# their strided window pairs), on planes of at least 16 outputs (on smaller ones the peeled border windows compute
# only their in-image taps: mcunet-in0's 5x5 layers over 3 x 3 and 2 x 2 planes were 45 % and 95 % slower)
MIN_TAPS = 25
MIN_TAPS_STRIDE1 = 9
MIN_OUTPUTS = 16
# 7x7 windows pay from 9 outputs (round 25): mcunet-in0's 7x7 stride-2 layer over a 6 x 6 plane (3 x 3 outputs, every
# window a border one, 4.1 instructions per MAC) 216,269 -> 165,750 through the copy, 129,755 with its rows of three
# one tvmp_window3_s8 call
MIN_OUTPUTS_7X7 = 9


def _pad_block(sch: s_tir.Schedule, params: list[Any]) -> Any | None:
    """The root block that pads a parameter into a buffer of its own (``if_then_else(bounds, A[...], pad)``)."""
    found = []
    for rv in sch.get_child_blocks(sch.get_sblock("root")):
        body = sch.get(rv).body
        if not isinstance(body, tirx.BufferStore) or any(body.buffer.same_as(p) for p in params):
            continue
        v = body.value
        if (isinstance(v, tvm.ir.Call) and len(v.args) == 3 and isinstance(v.args[1], TensorLoad)
                and is_pad_of(v, v.args[1]) and any(v.args[1].source.same_as(p) for p in params)):
            found.append(rv)
    return found[0] if len(found) == 1 else None


def _update(sch: s_tir.Schedule) -> Any | None:
    ups = [b for b in sch.get_child_blocks(sch.get_sblock("root"))
           if any(int(iv.iter_type) == tirx.IterVar.CommReduce for iv in sch.get(b).iter_vars)]
    return ups[0] if len(ups) == 1 else None


def depthwise_windows(func: tirx.PrimFunc) -> tuple[int, int, bool]:
    """(taps per window KH x KW, output windows per channel H_out x W_out, strided: an output position's
    coefficient in the input's row or column index above 1) of a depthwise convolution ``func``; (0, 0, False) for
    any other kernel."""
    try:
        sch = s_tir.Schedule(func)
        upd = _update(sch)
    except TVM_ERRORS:
        return 0, 0, False
    if upd is None:
        return 0, 0, False
    block = sch.get(upd)
    srcs = [(r.source, lay) for r in block.reads if (lay := depthwise_layout(block, r.source))]
    out_shape = const_shape(func.params[-1])
    if not srcs or out_shape is None or len(out_shape) != 4:
        return 0, 0, False
    taps = 1
    for iv in block.iter_vars:
        if int(iv.iter_type) == tirx.IterVar.CommReduce:
            taps *= int(iv.dom.extent) if isinstance(iv.dom.extent, tirx.IntImm) else 0
    axes = (1, 2) if srcs[0][1] == "NHWC" else (2, 3)
    loads: list[Any] = []
    tvm_ffi.structural_walk(block.body, [(TensorLoad, lambda ld: (loads.append(ld) if ld.source.same_as(srcs[0][0])
                                                                  else None) or tvm_ffi.WalkResult.ADVANCE)])
    spatial = [iv.var for iv in block.iter_vars if int(iv.iter_type) == tirx.IterVar.DataPar]
    strided = any(len(lin := tvm.sym.detect_linear_equation(loads[0].indices[a], [v])) == 2
                  and isinstance(lin[0], tirx.IntImm) and int(lin[0]) > 1 for a in axes for v in spatial)
    return taps, out_shape[axes[0]] * out_shape[axes[1]], strided


def padded_copy_pays(func: tirx.PrimFunc) -> bool:
    """Is ``func`` a depthwise convolution whose windows and planes are large enough for the copy (MIN_TAPS, or
    MIN_TAPS_STRIDE1 at stride 1; MIN_OUTPUTS, MIN_OUTPUTS_7X7 for 7x7 windows)?"""
    taps, outputs, strided = depthwise_windows(func)
    return taps >= (MIN_TAPS if strided else MIN_TAPS_STRIDE1) and outputs >= (MIN_OUTPUTS_7X7 if taps >= 49 else MIN_OUTPUTS)


def padded_copy_schedule(func: tirx.PrimFunc, n_outputs: int) -> tirx.PrimFunc:
    """``func`` (a padded depthwise convolution in TVM's default form, one output) as a lean kernel whose pad
    stage is computed per channel (see module doc); else ``func`` itself."""
    params = list(func.params)
    if n_outputs != 1 or not is_default_form(func) or not all(is_buffer_var(p) for p in params):
        return func
    out_shape = const_shape(params[-1])
    if out_shape is None or len(out_shape) != 4 or out_shape[0] != 1:
        return func
    try:
        first = s_tir.Schedule(func)
        pad = _pad_block(first, params)
        if pad is None:
            return func
        name = first.get(pad).name_hint
        sch = s_tir.Schedule(lean_schedule(func, frozenset({name})))
        pad, upd = sch.get_sblock(name), _update(sch)
        if upd is None:
            return func
        buf = sch.get(pad).writes[0].source
        layout = depthwise_layout(sch.get(upd), buf)
        pad_shape = const_shape(buf)
        if layout is None or pad_shape is None:
            return func
        c_ax = 3 if layout == "NHWC" else 1
        if pad_shape[c_ax] != out_shape[c_ax]:
            return func
        n, a, b, c = list(sch.get_loops(upd))[:4]  # TOPI's spatial loop order, reductions inside
        if layout == "NHWC":
            sch.reorder(c, n, a, b)
            at = c
        else:
            at = a
        sch.compute_at(pad, at, preserve_unit_loops=True)
    except TVM_ERRORS:
        return func
    return sch.mod["main"]
