"""Register blocking of a reduction over its output channels (1x1 and k x k convolutions, dense layers).

Why: TVM's default loop nest computes one output channel at a time, so the dot-product micro-kernel loads
and sign-extends the same activation vector once per output channel. Splitting the output-channel loop by
``rows`` and moving the inner part under the reduction loops makes the innermost nest

    for k in range(K):
        for j in range(rows):  acc[j] += int32(A[a + k]) * int32(W[w + j * S + k])

which ``tvm_patch.codegen.micro_kernels`` turns into one ``tvmp_dot_s8_rows{rows}`` call: each activation
word is loaded and sign-extended once for ``rows`` weight rows. The accumulator becomes ``rows`` C locals
(``lean_schedule`` computes the epilogue at the outer channel loop), so no arena byte is added.

Applied to a kernel in TVM's default form (``schedule.is_default_form``) with exactly one reduction whose
block reads an activation not indexed by the output channel and weights indexed by it, whose innermost
non-unit reduction iterator is the weights' last (contiguous) index and indexes the activation (its last
axis in NHWC and dense layers; in NCHW its channel axis, contiguous once ``inplace_conv`` copies the pixel,
else a scalar loop that still loads each activation once for ``rows`` outputs); ``rows`` must divide the
channel count. Anything else is returned unchanged. Integer sums do not depend on their order: bit-exact.
"""

from __future__ import annotations

from typing import Any

import tvm
import tvm_ffi
from tvm import s_tir, tirx
from tvm.ir.expr import TensorLoad

from tvm_patch.errors import TVM_ERRORS
from tvm_patch.export.schedule import is_default_form
from tvm_patch.tir_util import vars_of

__all__ = ["DEFAULT_ROWS", "ROW_BLOCKS", "block_output_channels", "block_pixels", "rows_loop", "split_rows"]

ROW_BLOCKS = (1, 2, 4)  # the blockings the micro-kernels implement (1: unblocked)
DEFAULT_ROWS = 4


def _int8_loads(block: s_tir.SBlock) -> list[TensorLoad]:
    loads: list[TensorLoad] = []
    tvm_ffi.structural_walk(block.body, [(TensorLoad, lambda ld: loads.append(ld) or tvm_ffi.WalkResult.ADVANCE)],
                            order="pre")
    return [ld for ld in loads if str(ld.ty) == "int8"]


def _channel_and_reduction(block: s_tir.SBlock) -> tuple[Any, Any] | None:
    """(output-channel iterator, innermost non-unit reduction iterator) of a blockable reduction, else None."""
    spatial = [iv.var for iv in block.iter_vars if int(iv.iter_type) == tirx.IterVar.DataPar]
    red = [iv for iv in block.iter_vars if int(iv.iter_type) == tirx.IterVar.CommReduce and int(iv.dom.extent) > 1]
    loads = _int8_loads(block)
    if not red or len(loads) != 2:
        return None
    k = red[-1].var
    # the weights are the operand indexed by one spatial iterator, the output channel; in a matmul both
    # operands qualify: the one indexed by the innermost spatial iterator (the output's last axis) wins
    pairs = (loads, loads[::-1])
    if any(u.same_as(spatial[-1]) for i in loads[1].indices for u in vars_of(i)):
        pairs = pairs[::-1]
    for w, a in pairs:
        w_spatial = [v for v in spatial if any(u.same_as(v) for i in w.indices for u in vars_of(i))]
        if len(w_spatial) != 1:
            continue
        ch = w_spatial[0]
        if any(u.same_as(ch) for i in a.indices for u in vars_of(i)):
            continue  # a depthwise convolution: the activation is indexed by the channel too
        long_k = int(red[-1].dom.extent) >= 4  # a dot-product call (micro_kernels.MIN_DOT_LENGTH)
        if _innermost(w).same_as(k) and (any(i.same_as(k) for i in a.indices) or long_k and _unit_step(_innermost(a), k)):
            return ch, k
    return None


def _unit_step(index: Any, k: Any) -> bool:
    """Does ``index`` move by one with ``k`` (``x * s + k``: a kernel column over one input channel)?"""
    coeffs = tvm.sym.detect_linear_equation(index, [k])
    return len(coeffs) == 2 and isinstance(coeffs[0], tirx.IntImm) and int(coeffs[0].value) == 1


def _innermost(load: TensorLoad) -> Any:
    """The index of the load's last axis longer than 1 (unit axes, a 1x1 kernel's, do not move in memory)."""
    shape = [int(d) for d in load.source.shape]
    axes = [i for i, d in enumerate(shape) if d > 1]
    return load.indices[axes[-1]] if axes else load.indices[-1]


def rows_loop(sch: s_tir.Schedule) -> tuple[Any, list[Any], int] | None:
    """(output-channel loop, the loops after it, channel count) of the one blockable reduction of the
    default-form kernel in ``sch`` (see the module doc), else None. Shared by ``block_output_channels``
    and the tuning space (tvm_patch/tune/space.py), which samples the factor."""
    blocks = list(sch.get_child_blocks(sch.get_sblock("root")))
    reductions = [b for b in blocks if any(int(iv.iter_type) == tirx.IterVar.CommReduce
                                           for iv in sch.get(b).iter_vars)]
    if len(reductions) != 1:
        return None
    rv = reductions[0]
    found = _channel_and_reduction(sch.get(rv))
    if found is None:
        return None
    ch, _ = found
    loops = list(sch.get_loops(rv))
    # default form: each block iterator is bound to its own loop, in order (T.axis.remap)
    if len(loops) != len(sch.get(rv).iter_vars):
        return None
    pos = [i for i, iv in enumerate(sch.get(rv).iter_vars) if iv.var.same_as(ch)][0]
    return loops[pos], loops[pos + 1:], int(sch.get(rv).iter_vars[pos].dom.extent)


def split_rows(sch: s_tir.Schedule, found: tuple[Any, list[Any], int], rows: Any) -> None:
    """The blocking's schedule steps: split the channel loop of ``rows_loop`` by ``rows`` (an int dividing
    the channels, or a sampled ExprRV) and move the inner part under the reduction loops."""
    loop, after, extent = found
    factors = [extent // rows, rows] if isinstance(rows, int) else [None, rows]
    _, inner = sch.split(loop, factors)
    sch.reorder(*after, inner)


def block_output_channels(func: tirx.PrimFunc, rows: int) -> tirx.PrimFunc:
    """``func`` with its output-channel loop blocked by ``rows`` under the reduction (see the module doc),
    or ``func`` itself when it is not such a kernel, ``rows`` is 1 or does not divide the channels."""
    if rows not in ROW_BLOCKS:
        raise ValueError(f"rows must be one of {ROW_BLOCKS}, got {rows}")
    started = _blockable(func, rows)
    if started is None:
        return func
    sch, found = started
    try:
        split_rows(sch, found, rows)
    except TVM_ERRORS:
        return func
    return sch.mod["main"]


def _blockable(func: tirx.PrimFunc, rows: int) -> tuple[s_tir.Schedule, tuple[Any, list[Any], int]] | None:
    """A schedule of ``func`` and its ``rows_loop`` when ``rows`` (> 1) output channels can be blocked."""
    if rows == 1 or not is_default_form(func):
        return None
    try:
        sch = s_tir.Schedule(func)
        found = rows_loop(sch)
    except TVM_ERRORS:
        return None
    return None if found is None or found[2] % rows else (sch, found)


PIXELS = 2  # output pixels per blocked step (tvmp_dot_s8_px2_rows*)


def block_pixels(func: tirx.PrimFunc, rows: int, channels_first: bool = False,
                 overhang: bool = False) -> tirx.PrimFunc:
    """``func`` (a default-form NHWC 1x1 convolution) blocked by ``rows`` output channels (as
    ``block_output_channels``) and by two output pixels along its last spatial axis, both under the
    reduction:

        for k in range(K):
            for p in range(2):
                for j in range(rows):  acc[p, j] += int32(A[a + p * C + k]) * int32(W[w + j * S + k])

    which ``micro_kernels`` turns into one ``tvmp_dot_s8_px2_rows{rows}`` call: each weight word is loaded and
    sign-extended once for two pixels, each activation word once for ``rows`` channels. The accumulators are
    2 x rows C locals. ``func`` itself when it is not such a kernel (the innermost non-unit reduction the
    activation's last axis, indexed by the pixel axis just before the channel axis, whose extent is even). A k x k
    convolution's pair runs under every kernel tap (``for ry: for rx: for rc: for p: for j``), its two windows
    ``stride x C`` bytes apart; at the border the taps' tests depend on the pixel (see ``micro_kernels``).

    ``channels_first``: the same for an NCHW 1x1 convolution (the reduction indexes the activation's channel
    axis, the pixel pair runs along its last axis, W): the nest reads the activation with a stride until
    ``inplace_conv.pixel_major`` gives the pixel pair's copy a pixel-major layout, so only the export's pixel-copy
    kernels use it.

    ``overhang``: an odd pixel extent splits too, the last pair predicated (``2 po + pi < W``: exact as it is), for
    ``odd_planes.overlap_pairs`` to make a full pair of once the schedule is done."""
    started = _blockable(func, rows) if rows in ROW_BLOCKS else None
    if started is None:
        return func
    sch, found = started
    try:
        rv = [b for b in sch.get_child_blocks(sch.get_sblock("root"))
              if any(int(iv.iter_type) == tirx.IterVar.CommReduce for iv in sch.get(b).iter_vars)][0]
        block = sch.get(rv)
        ch, k = _channel_and_reduction(block)
        red = [iv for iv in block.iter_vars if int(iv.iter_type) == tirx.IterVar.CommReduce and int(iv.dom.extent) > 1]
        loops = list(sch.get_loops(rv))
        pos = [i for i, lp in enumerate(loops) if sch.get(lp).same_as(sch.get(found[0]))][0]
        act = [ld for ld in _int8_loads(block) if not any(u.same_as(ch) for i in ld.indices for u in vars_of(i))]
        if len(act) != 1 or (channels_first and len(red) != 1):
            return func
        if channels_first:  # n, c, h, w: the pixel axis is the last spatial one, after the channel axis
            px_pos = len([iv for iv in block.iter_vars if int(iv.iter_type) == tirx.IterVar.DataPar]) - 1
            if len(act[0].indices) != 4 or not act[0].indices[1].same_as(k) or not pos < px_pos:
                return func
        else:  # n, h, w, c: the pixel axis just before the channel axis
            px_pos = pos - 1
            if pos == 0 or not act[0].indices[-1].same_as(k):
                return func
        px_loop, px_iv = loops[px_pos], block.iter_vars[px_pos]
        extent = int(px_iv.dom.extent)
        if extent % PIXELS and not overhang or extent < PIXELS \
                or not any(u.same_as(px_iv.var) for i in act[0].indices for u in vars_of(i)):
            return func
        split_rows(sch, found, rows)
        _, px_inner = sch.split(px_loop, [(extent + PIXELS - 1) // PIXELS, PIXELS])
        loops = list(sch.get_loops(rv))
        i = [n for n, lp in enumerate(loops) if sch.get(lp).same_as(sch.get(px_inner))][0]
        sch.reorder(*loops[i + 1:-1], px_inner, loops[-1])
    except TVM_ERRORS:
        return func
    return sch.mod["main"]
