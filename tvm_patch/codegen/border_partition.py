"""Padded convolutions' output loops split into border ranges and a test-free interior, before the micro-kernel
rewrite (``micro_kernels``): a border test proven true for every tap of a range is dropped there, so the interior's
windows and dot products run with no test, no window bound and no pad-sum branch; short border ranges and short
output loops with no interior are peeled value by value (constant bounds that the C compiler specialises).
"""

from __future__ import annotations

import math
from typing import Any

import tvm
import tvm_ffi
from tvm import tirx
from tvm.ir.expr import TensorLoad

from tvm_patch.codegen.micro_kernels import _accumulation, _int, _terms
from tvm_patch.tir_util import is_call, uses_var


def _padded_reads(stmt: Any) -> list[Any]:
    """The padded int8 reads ``if_then_else(cond, A[...], pad)`` under ``stmt``."""
    found: list[Any] = []

    def on_call(call: Any) -> tvm_ffi.WalkResult:
        if (is_call(call, ".if_then_else") and str(call.ty) == "int8" and isinstance(call.args[1], TensorLoad)
                and isinstance(call.args[2], tirx.IntImm)):
            found.append(call)
        return tvm_ffi.WalkResult.ADVANCE

    tvm_ffi.structural_walk(stmt, [(tvm.ir.Call, on_call)], order="pre")
    return found


def _inner_ranges(stmt: Any) -> list[tuple[Any, int, int]]:
    """(variable, min, extent) of the constant loops under ``stmt`` (a convolution's kernel taps)."""
    loops: list[tuple[Any, int, int]] = []

    def on_for(loop: Any) -> tvm_ffi.WalkResult:
        if _int(loop.min) is not None and _int(loop.extent) is not None:
            loops.append((loop.loop_var, _int(loop.min), _int(loop.extent)))
        return tvm_ffi.WalkResult.ADVANCE

    tvm_ffi.structural_walk(stmt, [(tirx.For, on_for)], order="pre")
    return loops


MAX_COPIED_BYTES = 64  # buffers a partitioned loop allocates are copied per range: C locals (accumulators) only


def _allocated_bytes(stmt: Any) -> int:
    """Bytes of the buffers allocated under ``stmt`` (unknown shapes count as too many)."""
    total = [0]

    def on_alloc(a: Any) -> tvm_ffi.WalkResult:
        shape = [_int(d) for d in a.buffer.shape]
        bits = a.buffer.dtype.bits if hasattr(a.buffer.dtype, "bits") else 32
        total[0] += MAX_COPIED_BYTES + 1 if None in shape else math.prod(shape) * max(bits // 8, 1)
        return tvm_ffi.WalkResult.ADVANCE

    tvm_ffi.structural_walk(stmt, [(tirx.AllocBuffer, on_alloc)], order="pre")
    return total[0]


def _indexes_a_store(stmt: Any, v: Any) -> bool:
    """Does ``v`` index a store under ``stmt`` (an output row or column, not a reduction's tap, nor the pixel of a
    pair's accumulators: a store that accumulates ``acc[i] += x * y`` does not count)?"""
    found = [False]

    def on_store(st: Any) -> tvm_ffi.WalkResult:
        found[0] = found[0] or (_accumulation(st) is None and any(uses_var(i, v) for i in st.indices))
        return tvm_ffi.WalkResult.ADVANCE

    tvm_ffi.structural_walk(stmt, [(tirx.BufferStore, on_store)], order="pre")
    return found[0]


MAX_PARTITION_EXTENT = 512  # longer loops keep their border tests (the interval check tries every value)


def _interior(loop: tirx.For) -> tuple[int, int, list[Any]] | None:
    """[lo, hi) of the loop's values for which every border comparison of its padded reads that uses the loop
    variable holds for all values of the loops inside (the kernel taps), and those comparisons; None when there
    is no such comparison, no such value, or the values do not form one interval."""
    v, extent = loop.loop_var, _int(loop.extent)
    if _int(loop.min) != 0 or extent is None or extent > MAX_PARTITION_EXTENT or _allocated_bytes(loop.body) > MAX_COPIED_BYTES:
        return None
    terms = [t for r in _padded_reads(loop.body) for t in _terms(r.args[0]) if uses_var(t, v)]
    if not terms or not _indexes_a_store(loop.body, v):
        return None  # not an output loop: a kernel tap's loop stays whole (the window and dot patterns)
    inner = _inner_ranges(loop.body)
    inside = []
    for value in range(extent):
        ana = tvm.sym.Analyzer()
        ana.bind(v, tvm.ir.Range.from_min_extent(value, 1))
        for var, mn, ext in inner:
            ana.bind(var, tvm.ir.Range.from_min_extent(mn, ext))
        inside.append(all(ana.can_prove(t) for t in terms))
    if not any(inside):
        return None
    lo = inside.index(True)
    hi = extent - inside[::-1].index(True)
    if not all(inside[lo:hi]) or (lo, hi) == (0, extent):
        return None
    return lo, hi, terms


def _shifted(loop: tirx.For, start: int, stop: int, body: Any) -> tirx.For:
    """The loop over [start, stop) of its variable, with ``body``: a fresh variable counting from 0."""
    v = loop.loop_var
    nv = tirx.Var(v.name, v.ty)
    new_body = tvm_ffi.structural_map(body, [(tirx.Var, lambda x: nv + start if x.same_as(v) else x)])
    return tirx.For(nv, tirx.const(0, str(v.ty)), tirx.const(stop - start, str(v.ty)), loop.kind, new_body,
                    loop.thread_binding, loop.annotations)


MAX_PEELED_BORDER = 3  # border ranges this short are peeled too
MAX_PEELED_EXTENT = 6  # output loops this short with no interior (a plane smaller than the kernel) are peeled


def _peeled(loop: tirx.For) -> tirx.Stmt:
    """A short output loop of a padded convolution without an interior range (every output a border one, as a
    5 x 5 depthwise kernel over a 3 x 3 plane) as one copy of its body per value: each copy's border bounds are
    constants, so the C compiler specialises its windows (unrolled, test-free) instead of testing every tap
    against bounds computed per output. Else the loop itself."""
    v, extent = loop.loop_var, _int(loop.extent)
    if (_int(loop.min) != 0 or extent is None or not 1 < extent <= MAX_PEELED_EXTENT
            or _allocated_bytes(loop.body) > MAX_COPIED_BYTES or not _indexes_a_store(loop.body, v)
            or not any(uses_var(t, v) for r in _padded_reads(loop.body) for t in _terms(r.args[0]))):
        return loop
    return tirx.SeqStmt([_shifted(loop, k, k + 1, loop.body) for k in range(extent)])


def _partition_padding(loop: tirx.For) -> tirx.Stmt:
    """An output loop of a padded convolution split into border ranges and the interior, where its border
    comparisons (proven true there for every tap) are dropped from the padded reads: the interior runs with no
    test, no window bound and no pad-sum branch. Exact: a comparison goes only where it is proven true."""
    found = _interior(loop)
    if found is None:
        return _peeled(loop)
    lo, hi, terms = found

    def drop(call: Any) -> Any:
        if not any(call.same_as(r) for r in reads):
            return call
        kept = [t for t in _terms(call.args[0]) if not any(t.same_as(d) for d in terms)]
        if not kept:
            return call.args[1]
        cond = kept[0]
        for t in kept[1:]:
            cond = tirx.And(cond, t)
        return tirx.if_then_else(cond, call.args[1], call.args[2])

    reads = _padded_reads(loop.body)
    interior = tvm_ffi.structural_map(loop.body, [(tvm.ir.Call, drop)])
    extent = _int(loop.extent)
    # a border range of a few values (a 5x5 or 7x7 kernel's padding of 2 or 3) one value at a time: constant
    # window bounds, so each border window is specialised too (unrolled, test-free) instead of testing every tap
    border = [(k, k + 1) for k in range(lo)] if lo <= MAX_PEELED_BORDER else [(0, lo)]
    border_hi = [(k, k + 1) for k in range(hi, extent)] if extent - hi <= MAX_PEELED_BORDER else [(hi, extent)]
    pieces = [(a, b, loop.body) for a, b in border] + [(lo, hi, interior)] + [(a, b, loop.body) for a, b in border_hi]
    return tirx.SeqStmt([_shifted(loop, a, b, body) for a, b, body in pieces if b > a])


def partition_padding(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """``func`` with the output loops of its padded convolutions split into border ranges and the interior
    (``_partition_padding``), innermost loops first, so a 2-D interior has no border test at all."""
    return tvm_ffi.structural_map(func, [(tirx.For, _partition_padding)])


def PartitionPadding() -> tvm.transform.Pass:  # noqa: N802 (TVM's naming of passes)
    """The pass form of ``partition_padding``, in the plain-C lowering before the micro-kernel rewrite."""
    return tirx.transform.prim_func_pass(lambda f, _m, _c: partition_padding(f), opt_level=0,
                                         name="tvm_patch.PartitionPadding")
