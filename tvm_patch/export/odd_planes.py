"""Pixel pairs over NCHW planes of odd width: the plane as one row, the last pair overlapping.

Why: the two-pixel micro-kernels (``tvmp_dot_s8_px2_rows*`` and their widened twins) load each weight once for
two output pixels, but ``blocking.block_pixels`` pairs pixels along W, so an NCHW 1x1 convolution over a 3 x 3,
5 x 5 or 11 x 11 plane ran one pixel at a time (mcunet-in0's late layers, mcunet-in3's 11 x 11 ones). Two steps:

- :func:`plane_as_row`: a 1x1 stride-1 unpadded convolution reads each output pixel's own input pixel, so its
  H x W planes may as well be one row of H * W pixels (same bytes, same order). The default-form PrimFunc is
  rebuilt with every [1, C, H, W] buffer declared [1, C, 1, H * W] and the H and W iterators of each block 1 and
  H * W long. The kernel's C signature is unchanged (flat pointers).
- :func:`overlap_pairs`: ``block_pixels`` splits an odd row into ceil(HW / 2) pairs, the last one predicated
  (``2 po + pi < HW``); here the pair starts at ``min(2 po, HW - 2)`` instead and the predicate goes, so the last
  pair is (HW - 2, HW - 1): pixel HW - 2 is computed twice, from the same input, to the same value. Valid only
  where the output does not overwrite the input (the recomputation reads it after the first write): the result
  carries ``OVERLAP_ATTR``, which the in-place provers (``inplace.inplace_pairs``, ``inplace_conv.inplace_conv_pairs``)
  answer with no pair.

MACs: the kernel computes one extra pixel a plane (1 / HW: 11 % on a 3 x 3 plane); ``kernel_info`` reads the
layer's TIR before scheduling, so the reported MACs stay the layer's.
"""

from __future__ import annotations

from typing import Any

import tvm
import tvm_ffi
from tvm import s_tir, tirx
from tvm.ir.expr import TensorLoad, TensorRegion

from tvm_patch.export.blocking import block_pixels
from tvm_patch.export.schedule import _root_stmts, is_default_form
from tvm_patch.tir_util import is_true, substitute_vars, uses_var, vars_of

__all__ = ["OVERLAP_ATTR", "block_pairs_nchw", "overlap_odd_row", "overlap_pairs", "plane_as_row", "predicated"]

OVERLAP_ATTR = "tvmp.overlapped_pixels"  # a kernel that computes some output pixels twice: never in place


def _find(table: dict[Any, Any], key: Any) -> Any:
    """``table``'s value for ``key`` (TIR nodes compared by identity), None when absent."""
    return next((value for k, value in table.items() if key.same_as(k)), None)


def _accesses(block: s_tir.SBlock) -> list[tuple[Any, list[Any]]]:
    found: list[tuple[Any, list[Any]]] = []
    tvm_ffi.structural_walk(block, [
        (TensorLoad, lambda ld: found.append((ld.source, list(ld.indices))) or tvm_ffi.WalkResult.ADVANCE),
        (tirx.BufferStore, lambda st: found.append((st.buffer, list(st.indices))) or tvm_ffi.WalkResult.ADVANCE),
    ], order="pre")
    return found


def _pixel_iterators(block: s_tir.SBlock, planes: dict[Any, Any], h: int, w: int) -> tuple[Any, ...] | None:
    """(y, x) iterators of a block that reads or writes its planes pixel for pixel (every plane buffer at
    [.., .., y, x], unit reductions aside, y and x spatial, ``h`` and ``w`` long, and no other buffer indexed by
    them); () for a block without planes; None for any other use of a plane (a window, a stride, a transpose)."""
    ana = tvm.sym.Analyzer()
    units = {iv.var: tirx.const(0, iv.var.ty.dtype) for iv in block.iter_vars
             if int(iv.iter_type) != tirx.IterVar.DataPar and int(iv.dom.extent) == 1}
    plane_idx = []
    for b, idx in _accesses(block):
        if _find(planes, b) is not None:
            y, x = (ana.simplify(substitute_vars(i, units)) for i in idx[2:])
            if not (isinstance(y, tirx.Var) and isinstance(x, tirx.Var)) or y.same_as(x):
                return None
            plane_idx.append((y, x))
    if not plane_idx:
        return ()
    y, x = plane_idx[0]
    if any(not (a.same_as(y) and b.same_as(x)) for a, b in plane_idx):
        return None
    by_var = [iv for iv in block.iter_vars if iv.var.same_as(y) or iv.var.same_as(x)]
    if len(by_var) != 2 or any(int(iv.iter_type) != tirx.IterVar.DataPar for iv in by_var):
        return None
    if any(int(iv.dom.extent) != (h if iv.var.same_as(y) else w) for iv in by_var):
        return None
    for b, idx in _accesses(block):  # y and x index nothing else
        others = idx[:2] if _find(planes, b) is not None else idx
        if any(uses_var(i, y) or uses_var(i, x) for i in others):
            return None
    return (y, x)


def plane_as_row(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """``func`` (default form, its output [1, K, H, W]) with its H x W planes as rows of H * W pixels (see the
    module doc), or ``func`` itself when some block uses a plane other than pixel for pixel (a k x k window, a
    stride, a transpose, a plane's pixel indexing another buffer: ``_pixel_iterators``)."""
    stmts = _root_stmts(func)
    shape = [int(d) for d in func.params[-1].ty.shape]
    if stmts is None or not is_default_form(func) or len(shape) != 4 or shape[0] != 1 or shape[2] == 1:
        return func  # (one row already)
    h, w = shape[2:]
    root = func.body.block
    bufs = {b: tirx.decl_buffer(tuple(tirx.const(d, b.ty.shape[2].ty.dtype) for d in (1, int(b.ty.shape[1]), 1, h * w)),
                                str(b.ty.dtype), name=b.name)
            for b in [*func.params, *root.alloc_buffers] if [int(d) for d in b.ty.shape][:1] + [int(d) for d in
                                                                                               b.ty.shape][2:] == [1, h, w]}
    ext: dict[Any, int] = {}  # loop and block iterators of H (now 1) and W (now H * W)
    for st in stmts:
        loops = []
        while isinstance(st, tirx.For):
            loops.append(st)
            st = st.body
        pixel = _pixel_iterators(st.block, bufs, h, w)
        if pixel is None or len(loops) != len(st.iter_values) or any(
                not v.same_as(lp.loop_var) for v, lp in zip(st.iter_values, loops)):
            return func  # (default form binds each iterator to its own loop, in order)
        for iv, loop in zip(st.block.iter_vars, loops):
            if any(iv.var.same_as(v) for v in pixel):
                ext[iv.var] = ext[loop.loop_var] = 1 if iv.var.same_as(pixel[0]) else h * w
    if not ext:
        return func

    def buf(b: Any) -> Any:
        new = _find(bufs, b)
        return b if new is None else new

    def on_for(loop: tirx.For) -> tirx.For:
        n = _find(ext, loop.loop_var)
        return loop if n is None else tirx.For(loop.loop_var, loop.min, tirx.const(n, loop.extent.ty.dtype), loop.kind,
                                               loop.body)

    body = tvm_ffi.structural_map(func.body, [
        (TensorLoad, lambda ld: tirx.BufferLoad(buf(ld.source), list(ld.indices))),
        (tirx.BufferStore, lambda st: tirx.BufferStore(buf(st.buffer), st.value, list(st.indices))),
        (TensorRegion, lambda r, *_: tirx.BufferRegion(buf(r.source), list(r.region))),
        (tirx.For, on_for),
    ])

    def iter_var(iv: Any) -> Any:
        n = _find(ext, iv.var)
        return iv if n is None else tirx.IterVar(tvm.ir.Range.from_min_extent(iv.dom.min, tirx.const(
            n, iv.dom.extent.ty.dtype)), iv.var, iv.iter_type)

    def realize(r: s_tir.SBlockRealize) -> s_tir.SBlockRealize:
        b = r.block
        return s_tir.SBlockRealize(list(r.iter_values), r.predicate, s_tir.SBlock(
            [iter_var(iv) for iv in b.iter_vars], list(b.reads), list(b.writes), b.name_hint, b.body, b.init,
            [buf(a) for a in b.alloc_buffers], list(b.match_buffers), b.annotations))

    body = _rebuild(body, realize)
    return tirx.PrimFunc([buf(p) for p in func.params], body, func.ret_type, func.attrs)


def _rebuild(stmt: Any, on_realize: Any) -> Any:
    """``stmt`` with each block realize (inner ones first) replaced by ``on_realize(realize)``: loops, sequences and
    blocks rebuilt by hand (an SBlock or SBlockRealize callback of ``tvm_ffi.structural_map`` crashes TVM 0.27)."""
    if isinstance(stmt, tirx.For):
        return tirx.For(stmt.loop_var, stmt.min, stmt.extent, stmt.kind, _rebuild(stmt.body, on_realize),
                        stmt.thread_binding, stmt.annotations)
    if isinstance(stmt, tirx.SeqStmt):
        return tirx.SeqStmt([_rebuild(s, on_realize) for s in stmt.seq])
    if isinstance(stmt, s_tir.SBlockRealize):
        b = stmt.block
        inner = s_tir.SBlock(list(b.iter_vars), list(b.reads), list(b.writes), b.name_hint,
                             _rebuild(b.body, on_realize), b.init, list(b.alloc_buffers), list(b.match_buffers),
                             b.annotations)
        return on_realize(s_tir.SBlockRealize(list(stmt.iter_values), stmt.predicate, inner))
    nested: list[Any] = []
    tvm_ffi.structural_walk(stmt, [(s_tir.SBlockRealize, lambda r: nested.append(r) or tvm_ffi.WalkResult.SKIP)],
                            order="pre")
    if nested:  # a block under another kind of statement: not a form this module rewrites
        raise ValueError(stmt)
    return stmt


def _coeff(e: Any, v: Any) -> int | None:
    """The constant coefficient of ``v`` in ``e`` (0 when absent), None where ``e`` is not linear in it."""
    if not uses_var(e, v):
        return 0
    coeffs = tvm.sym.detect_linear_equation(e, [v])
    return int(coeffs[0].value) if len(coeffs) == 2 and isinstance(coeffs[0], tirx.IntImm) else None


def predicated(func: tirx.PrimFunc) -> list[Any]:
    """The predicates (``T.where``) of ``func``'s blocks."""
    preds: list[Any] = []

    def on_realize(r: s_tir.SBlockRealize) -> tvm_ffi.WalkResult:
        if not is_true(r.predicate):
            preds.append(r.predicate)
        return tvm_ffi.WalkResult.ADVANCE

    tvm_ffi.structural_walk(func.body, [(s_tir.SBlockRealize, on_realize)], order="pre")
    return preds


def block_pairs_nchw(func: tirx.PrimFunc, rows: int) -> tirx.PrimFunc:
    """``func`` (an NCHW 1x1 kernel, default form) blocked over two output pixels and ``rows`` channels: along W
    where W is even (``block_pixels``), else along its H x W row (:func:`plane_as_row`), with an overhang where the
    row is odd (the schedule's end then needs :func:`overlap_odd_row`); ``func`` itself when neither applies."""
    blocked = block_pixels(func, rows, channels_first=True)
    shape = [int(d) for d in func.params[-1].ty.shape]
    if blocked is not func or len(shape) != 4 or shape[3] % 2 == 0:
        return blocked
    row = plane_as_row(func) if shape[2] > 1 else func
    if row is func and shape[2] > 1:
        return func
    blocked = block_pixels(row, rows, channels_first=True, overhang=True)
    return func if blocked is row else blocked


def overlap_odd_row(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """``func`` (scheduled from :func:`block_pairs_nchw`) with an odd row's predicated last pair overlapping the
    one before (:func:`overlap_pairs`); ``func`` itself for an even row (nothing predicated)."""
    length = int(func.params[-1].ty.shape[-1])
    return overlap_pairs(func, length) if length % 2 else func


def overlap_pairs(func: tirx.PrimFunc, width: int) -> tirx.PrimFunc:
    """``func`` (scheduled: a pixel row ``width`` long, odd, split in pairs, the last one predicated
    ``2 po + pi < width``) with every pair starting at ``min(2 po, width - 2)`` and no predicate (the module doc),
    marked ``OVERLAP_ATTR``; ``func`` itself when a predicate is of another kind or does not vanish so."""
    preds = predicated(func)
    loops: list[tirx.For] = []
    tvm_ffi.structural_walk(func.body, [(tirx.For, lambda lp: loops.append(lp) or tvm_ffi.WalkResult.ADVANCE)],
                            order="pre")
    if not preds or width % 2 == 0 or width < 3:
        return func
    if not all(isinstance(p, tirx.LT) and isinstance(p.b, tirx.IntImm) and int(p.b.value) == width for p in preds):
        return func
    pos = [v for p in preds for v in vars_of(p.a) if _coeff(p.a, v) == 2]
    if not pos or any(not v.same_as(pos[0]) for v in pos):
        return func
    po = pos[0]
    start = tirx.Min(po * 2, tirx.const(width - 2, po.ty.dtype))
    ana = tvm.sym.Analyzer()
    for lp in loops:
        ana.bind(lp.loop_var, tvm.ir.Range.from_min_extent(lp.min, lp.extent))

    def moved(e: Any) -> Any:  # c * po + rest -> (c / 2) * min(2 po, width - 2) + rest
        c = _coeff(e, po)
        if c is None or c % 2:
            raise ValueError(e)
        return e if c == 0 else ana.simplify(substitute_vars(e, {po: tirx.const(0, po.ty.dtype)})) + start * (c // 2)

    def on_realize(r: s_tir.SBlockRealize) -> s_tir.SBlockRealize:
        pred = r.predicate
        if not is_true(pred):
            if not ana.can_prove(tirx.LT(moved(pred.a), pred.b)):
                raise ValueError(pred)
            pred = tirx.const(True, "bool")
        return s_tir.SBlockRealize([moved(v) for v in r.iter_values], pred, r.block)

    try:
        body = _rebuild(func.body, on_realize)
    except ValueError:
        return func
    return tirx.PrimFunc(list(func.params), body, func.ret_type, func.attrs).with_attr(OVERLAP_ATTR, 1)
