"""In-place convolutions: a depthwise layer channel by channel, a 1x1 layer pixel by pixel (NHWC, NCHW).

The paper's memory convention (and TinyEngine) runs a depthwise convolution in place: its output takes
the place of its input when the input dies there. A depthwise output channel depends on one input
channel only, so the kernel copies input channel ``c`` into a one-channel buffer, then computes output
channel ``c`` from that buffer straight into the shared storage. In NHWC the element (p, c) of either
tensor sits at ``p * C + c``: writing channel ``c`` of the output only overwrites channel-``c`` elements
of the input, which are already in the buffer, and channels still to come are untouched. The same holds
pixel by pixel for a 1x1 convolution with no more output than input channels: pixel ``p``'s inputs go
to a one-pixel buffer, and its outputs land at offsets below ``(p + 1) * C_in``, i.e. on pixels already
read. In NCHW the channel-by-channel order writes channel ``c`` below ``(c + 1) * H * W`` (channels
already read), and pixel ``p``'s outputs sit at offsets ``= p (mod H * W)``, on no other input pixel.

:func:`inplace_conv_schedule` turns a lean kernel (:mod:`tvm_patch.export.schedule`) of either kind into
that form with TVM's own primitives (``reorder``, ``cache_read``, ``compute_at``, which compacts the
buffer to one channel or one pixel). :func:`inplace_conv_pairs` proves the property on the result's TIR
(the reads and writes of both tensors, the loop they hang under, the layouts); the export trusts only
that proof, never the schedule's intent.
"""

from __future__ import annotations

from typing import Any

import tvm
import tvm_ffi
from tvm import s_tir, tirx
from tvm.ir.expr import TensorLoad
from tvm.tirx.buffer import is_buffer_var

from tvm_patch.errors import TVM_ERRORS
from tvm_patch.export.inplace import block_accesses
from tvm_patch.export.odd_planes import OVERLAP_ATTR
from tvm_patch.tir_util import substitute_vars, uses_var
from tvm_patch.export.patterns import const_shape, is_pad_of

__all__ = ["channel_or_pixel_safe", "channel_outer_schedule", "depthwise_layout", "inplace_conv_pairs", "inplace_conv_schedule", "pixel_copy_schedule",
           "pixel_major", "pixel_pair_copy_schedule"]

LOCAL_COPY_BYTES = 64  # a copy buffer this small stays a C local (tvm_patch.codegen keeps <= 64 B buffers local)


def _blocks(sch: s_tir.Schedule) -> list[Any]:
    return list(sch.get_child_blocks(sch.get_sblock("root")))


def _reads_param(block: s_tir.SBlock, param: Any) -> bool:
    return any(r.source.same_as(param) for r in block.reads)


def _kind(reduction: s_tir.SBlock, src: Any) -> tuple[str, str] | None:
    """("depthwise" | "pointwise", "NHWC" | "NCHW") for a convolution update block reading activation
    ``src`` (its spatial iterators in TOPI's order: n, h, w, c or n, c, h, w), else None."""
    red = [iv for iv in reduction.iter_vars if int(iv.iter_type) == tirx.IterVar.CommReduce]
    loads: list[Any] = []
    tvm_ffi.structural_walk(
        reduction.body, [(TensorLoad, lambda ld: loads.append(ld) or tvm_ffi.WalkResult.ADVANCE)], order="pre"
    )
    src_loads = [ld for ld in loads if ld.source.same_as(src)]
    spatial = [iv.var for iv in reduction.iter_vars if int(iv.iter_type) == tirx.IterVar.DataPar]
    if not src_loads or len(spatial) != 4 or any(len(ld.indices) != 4 for ld in src_loads):
        return None
    ext = {iv.var: int(iv.dom.extent) for iv in reduction.iter_vars}
    red_vars = [iv.var for iv in red]
    # unit reduction axes (a 1x1 kernel's ry, rx; a depthwise kernel's rc) at 0
    units = {v: tirx.const(0, v.ty.dtype) for v in red_vars if ext[v] == 1}
    ana = tvm.sym.Analyzer()
    idx = [ana.simplify(substitute_vars(i, units)) for i in src_loads[0].indices]
    big = [v for v in red_vars if ext[v] > 1]
    for layout, (h, w, c), (ih, iw, ic) in (("NHWC", spatial[1:], (1, 2, 3)), ("NCHW", (*spatial[2:], spatial[1]), (2, 3, 1))):
        if not (uses_var(idx[ih], h) and uses_var(idx[iw], w)):
            continue  # not this layout, or not an activation read (a weight)
        if idx[ic].same_as(c):  # depthwise: the input channel is the output channel
            return "depthwise", layout
        if len(big) == 1 and idx[ic].same_as(big[0]) and idx[ih].same_as(h) and idx[iw].same_as(w):
            return "pointwise", layout  # a 1x1 stride-1 unpadded convolution: input pixel = output pixel
    return None


def depthwise_layout(reduction: s_tir.SBlock, src: Any) -> str | None:
    """"NHWC" or "NCHW" when ``reduction`` is a depthwise convolution's update reading activation ``src``."""
    kind = _kind(reduction, src)
    return kind[1] if kind is not None and kind[0] == "depthwise" else None


def inplace_conv_schedule(func: tirx.PrimFunc, n_outputs: int) -> tirx.PrimFunc:
    """``func`` rescheduled to run in place channel by channel (depthwise) or pixel by pixel (1x1), when
    it is such a convolution in NHWC whose input and output may share storage; else ``func`` itself."""
    return _copy_schedule(func, n_outputs, for_speed=False)


def pixel_copy_schedule(func: tirx.PrimFunc, n_outputs: int, max_channels: int = LOCAL_COPY_BYTES) -> tirx.PrimFunc:
    """An NCHW 1x1 convolution (any number of outputs) rescheduled pixel by pixel through a copy of the
    pixel's input channels, so its reduction reads them contiguously (the tvmp_dot_s8 micro-kernels); only
    with at most ``max_channels`` input channels (by default what fits a C local: no arena bytes; the export
    allows more where the copy's workspace leaves the arena as it is). Else ``func`` itself."""
    return _copy_schedule(func, n_outputs, for_speed=True, max_channels=max_channels)


def pixel_pair_copy_schedule(func: tirx.PrimFunc, n_outputs: int) -> tirx.PrimFunc:
    """An NCHW 1x1 convolution blocked over two output pixels (``blocking.block_pixels(..., channels_first=True)``,
    then ``lean_schedule``) rescheduled through a copy of the pixel pair's input channels, the copy and the
    accumulators pixel-major (:func:`pixel_major`), so the reduction is one ``tvmp_dot_s8_px2_rows*`` call. Any
    number of channels (the export keeps it only where the arena stays as it is); else ``func`` itself."""
    copied = _copy_schedule(func, n_outputs, for_speed=True, max_channels=1 << 30)
    return func if copied is func else pixel_major(copied, func)


def pixel_major(func: tirx.PrimFunc, fallback: tirx.PrimFunc) -> tirx.PrimFunc:
    """``func`` (an NCHW 1x1 convolution in ``_copy_schedule``'s form) with the pixel copy and the accumulator
    stored pixel-major, (n, h, w, c) (TVM's ``transform_layout``): per iteration a group of pixels then holds each
    pixel's channels contiguously, ``P = C`` bytes apart, and the accumulators ``acc[p * rows + j]``, the
    tvmp_dot_s8_px2 pattern. One pixel per iteration: the same bytes as before. ``fallback`` when TVM refuses."""
    try:
        sch = s_tir.Schedule(func)
        params = list(func.params)
        updates = [b for b in _blocks(sch) if any(int(iv.iter_type) == tirx.IterVar.CommReduce for iv in sch.get(b).iter_vars)]
        copies = [b for b in _blocks(sch) if len(sch.get(b).writes) == 1 and len(sch.get(b).reads) == 1
                  and any(sch.get(b).reads[0].source.same_as(p) for p in params)
                  and not any(sch.get(b).writes[0].source.same_as(p) for p in params)]
        if len(updates) != 1 or len(copies) != 1:
            return fallback
        for b in (copies[0], updates[0]):
            buf = sch.get(b).writes[0].source
            if any(buf.same_as(p) for p in params) or len(buf.shape) != 4:
                return fallback
            sch.transform_layout(b, ("write", 0), lambda n, c, h, w: (n, h, w, c))
    except TVM_ERRORS:
        return fallback
    return sch.mod["main"]


def channel_outer_schedule(func: tirx.PrimFunc, n_outputs: int) -> tirx.PrimFunc:
    """An NHWC depthwise convolution (one not run in place: no copy) with its channel loop outside the output
    rows, as the in-place form has it: an output row's windows are then ``C`` bytes apart along one channel, so
    ``micro_kernels`` pairs neighbouring outputs (``tvmp_window2_s8``: shared taps and weights loaded once) and
    the per-channel constants leave the row loop. Same arithmetic per element. Else ``func`` itself."""
    return _copy_schedule(func, n_outputs, for_speed=False, copy=False)


def _copy_schedule(func: tirx.PrimFunc, n_outputs: int, for_speed: bool,
                   max_channels: int = LOCAL_COPY_BYTES, copy: bool = True) -> tirx.PrimFunc:
    params = list(func.params)
    if n_outputs != 1 or not all(is_buffer_var(p) for p in params):
        return func
    out = params[-1]
    out_shape = const_shape(out)
    if out_shape is None or len(out_shape) != 4 or out_shape[0] != 1:
        return func
    try:
        sch = s_tir.Schedule(func)
        blocks = _blocks(sch)
    except TVM_ERRORS:
        return func
    updates = [b for b in blocks if any(int(iv.iter_type) == tirx.IterVar.CommReduce for iv in sch.get(b).iter_vars)]
    if len(updates) != 1:
        return func
    upd = updates[0]
    block = sch.get(upd)
    srcs = [p for p in params[:-1] if _reads_param(block, p) and const_shape(p) is not None and len(const_shape(p)) == 4
            and const_shape(p)[0] == 1 and str(p.ty.dtype) == str(out.ty.dtype) and _kind(block, p) is not None]
    if len(srcs) != 1:
        return func
    src = srcs[0]
    src_shape = const_shape(src)
    kind, layout = _kind(block, src)
    c_ax = 3 if layout == "NHWC" else 1
    if kind == "depthwise" and src_shape[c_ax] != out_shape[c_ax]:
        return func
    if not copy and (kind != "depthwise" or layout != "NHWC"):
        return func
    pix = [1, 2] if layout == "NHWC" else [2, 3]
    if for_speed and (kind != "pointwise" or layout != "NCHW" or src_shape[c_ax] > max_channels):
        return func
    if kind == "pointwise" and ([src_shape[a] for a in pix] != [out_shape[a] for a in pix]
                                or (out_shape[c_ax] > src_shape[c_ax] and not for_speed)):
        return func
    try:
        n, a, b, c = list(sch.get_loops(upd))[:4]  # TOPI's spatial loop order, reductions inside
        if layout == "NHWC":
            h, w, ch = a, b, c
        else:
            ch, h, w = a, b, c
        if kind == "depthwise":
            if layout == "NHWC":
                sch.reorder(ch, n, h, w)
            if not copy:
                return sch.mod["main"]
            at = ch
        else:
            if layout == "NCHW":
                sch.reorder(h, w, ch)
            at = w
        read_index = [i for i, r in enumerate(sch.get(upd).reads) if r.source.same_as(src)][0]
        cache = sch.cache_read(upd, read_index, "global")
        sch.compute_at(cache, at, preserve_unit_loops=True)
    except TVM_ERRORS:
        return func
    return sch.mod["main"]


def _loop_chain(sch: s_tir.Schedule, block_name: str) -> list[tirx.For] | None:
    """The For loops around the block named ``block_name``, outermost first."""
    try:
        return [sch.get(lp) for lp in sch.get_loops(sch.get_sblock(block_name))]
    except TVM_ERRORS:
        return None


def _bound_indices(realize: s_tir.SBlockRealize, indices: list[Any], units: dict[Any, Any]) -> list[Any]:
    """``indices`` (in block iterators) in terms of the surrounding loop variables, unit loops at 0."""
    vmap = {iv.var: val for iv, val in zip(realize.block.iter_vars, realize.iter_values)}
    ana = tvm.sym.Analyzer()
    return [ana.simplify(substitute_vars(substitute_vars(i, vmap), units)) for i in indices]


def inplace_conv_pairs(func: tirx.PrimFunc, n_outputs: int) -> list[tuple[int, int]]:
    """(input param, output param) of a kernel in :func:`inplace_conv_schedule`'s form, proven safe.

    The proof: the input ``S`` is read by exactly one block, a copy into a kernel-local buffer; the output
    ``O`` is written by exactly one block (no init, nothing reads ``O``); both sit under a common loop
    nest and the copy comes first in its body, so within an iteration every read of ``S`` precedes every
    write of ``O``. Across iterations, :func:`channel_or_pixel_safe` shows from the indices and shapes that iteration
    ``i`` writes only bytes no later iteration reads: channel by channel (the channel axis indexed by the
    one outer variable) or pixel by pixel (H and W indexed by the two outer variables), in NHWC or NCHW.
    """
    params = list(func.params)
    if n_outputs != 1 or not all(is_buffer_var(p) for p in params) or func.attrs is not None and OVERLAP_ATTR in func.attrs:
        return []  # (a kernel recomputing pixels reads its input after writing some output: odd_planes.py)
    out = params[-1]
    collected = block_accesses(func)
    if collected is None or collected[1]:
        return []  # not block-level TIR, or an address escapes
    infos = {i.block.name_hint: i for i in collected[0]}
    loads = {n: i.loads for n, i in infos.items()}
    writers = [n for n, i in infos.items() if any(s.buffer.same_as(out) for s in i.stores)]
    if any(ld.source.same_as(out) for ls in loads.values() for ld in ls) or len(writers) != 1:
        return []
    wname = writers[0]
    wreal = infos[wname].realize
    if wreal.block.init is not None or len(infos[wname].stores) != 1 or not isinstance(wreal.block.body, tirx.BufferStore):
        return []
    o_shape = const_shape(out)
    if o_shape is None or len(o_shape) != 4 or o_shape[0] != 1:
        return []
    pairs = []
    sch = s_tir.Schedule(func)
    for si, src in enumerate(params[:-1]):
        s_shape = const_shape(src)
        if s_shape is None or len(s_shape) != 4 or str(src.ty.dtype) != str(out.ty.dtype):
            continue
        readers = [n for n, ls in loads.items() if any(ld.source.same_as(src) for ld in ls)]
        if len(readers) != 1 or readers[0] == wname:
            continue
        cname = readers[0]
        creal = infos[cname].realize
        cstore = creal.block.body
        if not isinstance(cstore, tirx.BufferStore) or any(cstore.buffer.same_as(p) for p in params):
            continue  # the copy must go to a kernel-local buffer
        cload = [ld for ld in loads[cname] if ld.source.same_as(src)]
        if len(cload) != 1 or not (cstore.value.same_as(cload[0]) or is_pad_of(cstore.value, cload[0])):
            continue  # a copy: of the input, or padded (padded_copy.py: it reads only where its bounds hold)
        cchain, wchain = _loop_chain(sch, cname), _loop_chain(sch, wname)
        if cchain is None or wchain is None:
            continue
        common = 0
        while common < min(len(cchain), len(wchain)) and cchain[common].same_as(wchain[common]):
            common += 1
        if common == 0 or not _copy_first(cchain[common - 1], cname, wname):
            continue
        units = {lp.loop_var: tirx.const(0, lp.loop_var.ty.dtype) for lp in cchain + wchain if _is_one(lp.extent)}
        src_idx = _bound_indices(creal, list(cload[0].indices), units)
        out_idx = _bound_indices(wreal, list(wreal.block.body.indices), units)
        outer = [lp.loop_var for lp in cchain[:common] if not _is_one(lp.extent)]
        ranges = tvm.sym.Analyzer()
        for lp in cchain + wchain:
            ranges.bind(lp.loop_var, tvm.ir.Range.from_min_extent(lp.min, lp.extent))
        if s_shape[0] == 1 and channel_or_pixel_safe(outer, src_idx, out_idx, s_shape, o_shape, ranges):
            pairs.append((si, len(params) - 1))
    return pairs


def channel_or_pixel_safe(outer: list[Any], s_idx: list[Any], o_idx: list[Any], s: tuple[int, ...], o: tuple[int, ...],
                          ranges: tvm.sym.Analyzer | None = None) -> bool:
    """The layout half of the proof (see inplace_conv_pairs), for batch-1 4-D tensors S and O sharing
    their first byte, whose copy-then-write iterations run over the loop variables ``outer``. With
    ``ranges`` (an analyzer knowing every loop variable's range) an NHWC iteration may also cover a group of
    pixels along W (``_pixel_group``: the two-pixel kernels)."""

    def only(axes: tuple[int, ...], vs: list[Any]) -> bool:  # axes indexed by exactly vs, others free of them
        return all(s_idx[a].same_as(v) and o_idx[a].same_as(v) for a, v in zip(axes, vs)) and all(
            not uses_var(i, v) for a in range(4) if a not in axes for i in (s_idx[a], o_idx[a]) for v in vs
        )

    if len(outer) == 1:
        # channel last: iteration c writes offsets = c (mod C), later ones read the other residues
        if only((3,), outer) and s[3] == o[3]:
            return True
        # channel second: iteration c writes below (c + 1) * Ho * Wo <= (c + 1) * H * W, later ones read above
        return only((1,), outer) and s[1] == o[1] and o[2] * o[3] <= s[2] * s[3]
    if len(outer) == 2:
        # channel last: pixel p writes below (p + 1) * C_out <= (p + 1) * C_in, later pixels read above
        if only((1, 2), outer) and s[1:3] == o[1:3] and o[3] <= s[3]:
            return True
        # the same for a group of P pixels along W: group g (flat pixels gP .. gP + P - 1, the groups tiling
        # every row as P divides W) writes below (gP + P) * C_out <= (gP + P) * C_in, later groups read above
        if ranges is not None and s[1:3] == o[1:3] and o[3] <= s[3] and _pixel_group(outer, s_idx, o_idx, s[2], ranges):
            return True
        # channel second: pixel p writes offsets = p (mod H * W), later pixels read the other residues
        if only((2, 3), outer) and s[2:] == o[2:]:
            return True
        # the same for a group of P pixels along W (the NCHW two-pixel kernels): group g writes the offsets of its
        # own pixels (mod H * W), later groups read the other residues
        return ranges is not None and s[2:] == o[2:] and _pixel_group(outer, s_idx, o_idx, s[3], ranges, (2, 3))
    return False


def _pixel_group(outer: list[Any], s_idx: list[Any], o_idx: list[Any], width: int, ranges: tvm.sym.Analyzer,
                 hw: tuple[int, int] = (1, 2)) -> bool:
    """Do both tensors index H (axis ``hw[0]``: NHWC's 1, NCHW's 2) by exactly ``outer[0]`` and W (axis ``hw[1]``)
    by ``outer[1] * P + r``, ``r`` in [0, P) free of the outer variables, for one P dividing ``width``, and the
    batch and channel axes by neither?"""
    h, w = outer
    free = [a for a in range(4) if a not in hw]
    steps = set()
    for idx in (s_idx, o_idx):
        if not idx[hw[0]].same_as(h) or any(uses_var(idx[a], v) for a in free for v in outer):
            return False
        coeffs = tvm.sym.detect_linear_equation(idx[hw[1]], [w])
        if len(coeffs) != 2 or not isinstance(coeffs[0], tirx.IntImm) or uses_var(coeffs[1], h) or uses_var(coeffs[1], w):
            return False
        step, bound = int(coeffs[0].value), ranges.const_int_bound(coeffs[1])
        if step < 1 or bound.min_value < 0 or bound.max_value >= step:
            return False
        steps.add(step)
    return len(steps) == 1 and width % steps.pop() == 0


def _is_one(extent: Any) -> bool:
    return isinstance(extent, tirx.IntImm) and int(extent) == 1


def _copy_first(loop: tirx.For, copy: str, writer: str) -> bool:
    """In ``loop``'s body, does the block ``copy`` come (in program order) before the block ``writer``?"""
    order: list[str] = []
    tvm_ffi.structural_walk(
        loop.body, [(s_tir.SBlock, lambda b: order.append(b.name_hint) or tvm_ffi.WalkResult.ADVANCE)], order="pre"
    )
    return copy in order and writer in order and order.index(copy) < order.index(writer)
