"""A k x k convolution over few input channels (a network's stem, NCHW or NHWC) through a copy of each output
pixel's window, so its whole reduction is one register-blocked dot product.

Why: TVM's default nest computes one output channel at a time and, per channel, sums ``C_in`` windows of
``k x k`` taps; the micro-kernels then run each window on its own (``tvmp_window_s8`` / ``tvmp_window2_s8``:
mcunet-in3's 3 -> 16 stride-2 stem at 2.4 instructions per MAC, kernels round 17). Here the output pixel loops
go outside the output channels, the pixel's ``C_in x k x k`` window (with its pad values) is copied into a C
local once (TVM's ``cache_read`` at the pixel loop, the pad computed into the copy), and the channels are
blocked by ``rows`` under the reduction, whose three loops fuse into one contiguous run: the innermost nest is

    for f in range(C_in * k * k):
        for j in range(rows):  acc[j] += int32(window[f]) * int32(W[(c0 + j) * C_in * k * k + f])

which ``micro_kernels`` makes one ``tvmp_dot_s8_rows{rows}`` call: each window word is loaded and
sign-extended once for ``rows`` channels, each window once for every channel block. An NHWC stem's pixel loops are
outside its channels already and its window is copied in its OHWI weights' (ky, kx, c) order (kernels round 19:
kws's 10x4 stem over one channel made a 4-byte dot call per kernel row before, 2.43 -> 1.28 instructions per MAC). The same products in
other orders: bit-exact. Where the output width is even, two neighbouring pixels' windows are copied side by side
(TVM's ``reindex``: the pair's im2col; ``storage_align`` starts each window at a multiple of four bytes) and both
run under the reduction, one ``tvmp_dot_s8_px2_rows2`` call a block of two channels (kernels round 21: resnet8's
stem 749,000 -> 649,000 instructions, mcunet-in0's 592,000 -> 511,000, mcunet-in3's 5.71 M -> 4.95 M). The copy is at most ``LOCAL_MAX_BYTES`` (a C local, no workspace); only kernels in
TVM's default form with exactly that reduction are rescheduled, anything else is returned unchanged.
"""

from __future__ import annotations

from typing import Any

from tvm import s_tir, tirx

from tvm_patch.codegen.workspace import LOCAL_MAX_BYTES
from tvm_patch.errors import TVM_ERRORS
from tvm_patch.export.blocking import ROW_BLOCKS, _int8_loads
from tvm_patch.export.schedule import _is_reduction, is_default_form, lean_schedule

__all__ = ["PAIR_ROWS", "window_copy_schedule"]

# output channels a block with two pixels' windows: 2 x 4 accumulators and the pair's four widened words spill
# (resnet8's stem: 864,000 instructions in pairs of 4 channels, 649,000 in pairs of 2, 749,000 one pixel by 4)
PAIR_ROWS = 2


# per layout: (the block iterator of the output channel, of the input channel, the window's axis of the input
# channel); the weights are read at [output channel, then the three reduction iterators in the block's order]
_LAYOUTS = {"NCHW": (1, 4, 1), "NHWC": (3, 6, 3)}


def _conv_shape(block: s_tir.SBlock) -> tuple[Any, int, str] | None:
    """(window buffer, window bytes, layout) of a convolution block over all its input channels: NCHW, iterators
    (n, f, y, x, c, ry, rx), weights read at [f, c, ry, rx], the window at [n, c, y * s + ry, x * s + rx]; or NHWC,
    iterators (n, y, x, f, ry, rx, c), weights at [f, ry, rx, c], the window at [n, y * s + ry, x * s + rx, c]
    (s any stride); else None."""
    ivs = block.iter_vars
    if len(ivs) != 7 or [int(iv.iter_type) for iv in ivs] != [tirx.IterVar.DataPar] * 4 + [tirx.IterVar.CommReduce] * 3:
        return None
    int8 = _int8_loads(block)
    if len(int8) != 2:
        return None
    v = [iv.var for iv in ivs]
    for layout, (f_at, c_at, act_c_at) in _LAYOUTS.items():
        w_order = (v[f_at], v[4], v[5], v[6])
        weights = [ld for ld in int8 if len(ld.indices) == 4 and all(i.same_as(x) for i, x in zip(ld.indices, w_order))]
        if len(weights) != 1:
            continue
        act = [ld for ld in int8 if ld is not weights[0]][0]
        if len(act.indices) != 4 or not act.indices[act_c_at].same_as(v[c_at]):
            continue
        taps = int(ivs[4].dom.extent) * int(ivs[5].dom.extent) * int(ivs[6].dom.extent)
        if taps == int(ivs[c_at].dom.extent):
            return None  # a 1x1 convolution: the pixel copies of inplace_conv
        return act.source, taps, layout
    return None


def _even_width(block: s_tir.SBlock, layout: str) -> bool:
    """Does the convolution block's output width take its pixels in pairs?"""
    return int(block.iter_vars[2 if layout == "NHWC" else 3].dom.extent) % 2 == 0


def window_copy_schedule(func: tirx.PrimFunc, rows: int) -> tirx.PrimFunc:
    """``func`` (a default-form NCHW or NHWC k x k convolution whose window is at most ``LOCAL_MAX_BYTES``) with each output
    pixel's window copied once and ``rows`` output channels blocked under its one fused reduction loop (see the
    module doc), as ``lean_schedule`` leaves it otherwise; where the output width is even and both windows fit
    ``LOCAL_MAX_BYTES``, two neighbouring pixels' windows copied side by side, each starting at a
    multiple of four bytes, and both under the reduction (one ``tvmp_dot_s8_px2_rows{rows}`` call a channel block:
    each weight word loaded once for two pixels; at most ``PAIR_ROWS`` channels a block then).
    ``func`` itself when it is not such a kernel or ``rows`` (of ``ROW_BLOCKS``, > 1) does not divide its
    channels."""
    if rows not in ROW_BLOCKS or rows == 1 or not is_default_form(func):
        return func
    try:
        sch = s_tir.Schedule(func)
        reductions = [b for b in sch.get_child_blocks(sch.get_sblock("root")) if _is_reduction(sch.get(b))]
        if len(reductions) != 1:
            return func
        rv = reductions[0]
        found = _conv_shape(sch.get(rv))
        if found is None or found[1] > LOCAL_MAX_BYTES:
            return func
        window, taps, layout = found
        if int(sch.get(rv).iter_vars[_LAYOUTS[layout][0]].dom.extent) % rows:  # (the output channels)
            return func
        pair = _even_width(sch.get(rv), layout) and 2 * -(-taps // 4) * 4 <= LOCAL_MAX_BYTES
        name = sch.get(rv).name_hint
        # the window's producers (its pad) stay blocks, so that they are computed into the copy, not per read
        producers = {sch.get(b).name_hint for b in sch.get_child_blocks(sch.get_sblock("root"))
                     if any(w.source.same_as(window) for w in sch.get(b).writes)}
        copy = None
        if pair:  # the windows as the block's iterators index them (an im2col of the pair), copied at the pair
            read = [i for i, r in enumerate(sch.get(rv).reads) if r.source.same_as(window)]
            if len(read) != 1:
                return func
            copy = sch.get(sch.reindex(rv, ("read", read[0]))).name_hint
        if layout == "NCHW":
            n, f, y, x, *red = sch.get_loops(rv)
            sch.reorder(y, x, f)
        else:  # NHWC: the pixel loops are outside the channels' already
            n, y, x, f, *red = sch.get_loops(rv)
        f_out, f_in = sch.split(f, [None, min(rows, PAIR_ROWS) if pair else rows])
        if pair:
            _, x_in = sch.split(x, [None, 2])
            sch.reorder(f_out, *red, x_in, f_in)
        else:
            sch.reorder(*red, f_in)
        lean = lean_schedule(sch.mod["main"], keep=frozenset(producers | ({copy} if copy else set())))
        sch = s_tir.Schedule(lean)
        updates = [b for b in sch.get_child_blocks(sch.get_sblock("root"))
                   if _is_reduction(sch.get(b)) and sch.get(b).name_hint.startswith(name)]
        if len(updates) != 1:
            return func
        upd = updates[0]
        loops = sch.get_loops(upd)
        x_loop = loops[2]
        if pair:
            cb = sch.get_sblock(copy)
            sch.compute_at(cb, x_loop, preserve_unit_loops=True)
            sch.storage_align(cb, 0, 2, 4, 0)  # each pixel's window at a multiple of four bytes (pad_rows.py)
            if layout == "NCHW":  # the accumulators pixel-major, acc[p * rows + j] (as inplace_conv.pixel_major)
                sch.transform_layout(upd, ("write", 0), lambda n, c, h, w: (n, h, w, c))
        else:
            read = [i for i, r in enumerate(sch.get(upd).reads) if r.source.same_as(window)]
            if len(read) != 1:
                return func
            sch.compute_at(sch.cache_read(upd, read[0], "global"), x_loop, preserve_unit_loops=True)
        for p in producers:  # the pad (and any copy of it) computed into the window copy
            sch.compute_inline(sch.get_sblock(p))
        loops = sch.get_loops(upd)
        # (c, ry, rx) or (ry, rx, c): one contiguous run in the copy and the weights
        sch.fuse(*(loops[-5:-2] if pair else loops[-4:-1]))
    except TVM_ERRORS:
        return func
    return sch.mod["main"]
