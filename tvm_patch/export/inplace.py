"""Which kernel outputs may be written over which kernel inputs (the planner's in-place hints).

An output buffer ``O`` may share memory with an input buffer ``S`` (same shape and dtype) when no write
to ``O`` can clobber an element of ``S`` that is still to be read. The proof this module accepts, on the
kernel's block-level TIR (after :mod:`tvm_patch.export.schedule`):

* exactly one block ``B`` writes ``O``; its body is one ``BufferStore`` to ``O``; it has no ``init``
  (not a reduction) and no predicate, and its loops run exactly ``numel(O)`` iterations, so each element
  of ``O`` is written exactly once;
* nothing reads ``O``;
* every read of ``S`` is either inside ``B`` at the very indices of the store (the element is read in the
  same statement that overwrites it), or in a block of an earlier root-level loop nest (finished before
  ``B`` starts);
* no address of ``S`` or ``O`` escapes (``address_of``, ``tvm_access_ptr``) and no block matches buffers.

This covers elementwise kernels and the residual add fused at the end of a projection convolution (the
paper's "residual add in place"). It does not cover in-place depthwise convolution, which needs a
dedicated kernel.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import tvm
import tvm_ffi
from tvm import s_tir, tirx
from tvm.ir.expr import TensorLoad
from tvm.tirx.buffer import is_buffer_var

from tvm_patch.errors import TVM_ERRORS
from tvm_patch.export.odd_planes import OVERLAP_ATTR
from tvm_patch.export.patterns import const_shape, same_element
from tvm_patch.patch.stage_forms import ONE_NEST
from tvm_patch.tir_util import is_true

__all__ = ["Access", "UnmodelledTIR", "block_accesses", "inplace_pairs", "ordered_accesses"]

_ESCAPING = {"tirx.address_of", "tirx.tvm_access_ptr", "tirx.call_extern", "tirx.call_packed", "tirx.call_cpacked"}


@dataclass
class Access:
    """One buffer load or store met in program order (the in-place proofs' view of a loop nest)."""

    store: bool
    buffer: Any
    indices: list[Any]
    loops: tuple[Any, ...]  # For nodes from the walked statement's root to the access
    order: int
    guarded: bool  # under a block predicate, an init or an if


class UnmodelledTIR(Exception):
    """A statement kind ``ordered_accesses`` does not model (the caller's proof simply does not apply)."""


def ordered_accesses(stmt: Any, counter: list[int] | None = None,
                     on_block: Callable[[s_tir.SBlock], None] | None = None, evaluate: bool = True) -> list[Access]:
    """Every load and store under ``stmt`` (For, SeqStmt, SBlockRealize, BufferStore, IfThenElse, a stage's
    `stage_forms.ONE_NEST` and, with ``evaluate``, Evaluate, whose loads count), in program order: a store's value
    and index loads come before the store. ``counter`` numbers them across calls; ``on_block`` sees every block on
    the way.
    Raises UnmodelledTIR on any other statement."""
    counter = [0] if counter is None else counter
    out: list[Access] = []

    def loads(expr: Any, loops: tuple, guarded: bool) -> None:
        def on_load(ld: Any) -> tvm_ffi.WalkResult:
            counter[0] += 1
            out.append(Access(False, ld.source, list(ld.indices), loops, counter[0], guarded))
            return tvm_ffi.WalkResult.ADVANCE

        tvm_ffi.structural_walk(expr, [(TensorLoad, on_load)], order="pre")

    def walk(node: Any, loops: tuple, guarded: bool) -> None:
        if isinstance(node, tirx.For):
            walk(node.body, loops + (node,), guarded)
        elif isinstance(node, tirx.SeqStmt):
            for s in node.seq:
                walk(s, loops, guarded)
        elif isinstance(node, tirx.AttrStmt) and node.attr_key == ONE_NEST:  # statements kept one (stage_forms.py)
            walk(node.body, loops, guarded)
        elif isinstance(node, s_tir.SBlockRealize):
            pred = node.predicate
            if on_block is not None:
                on_block(node.block)
            if node.block.init is not None:
                walk(node.block.init, loops, True)
            walk(node.block.body, loops, guarded or not (isinstance(pred, tirx.IntImm) and int(pred) == 1))
        elif isinstance(node, tirx.BufferStore):
            loads(node.value, loops, guarded)
            for i in node.indices:
                loads(i, loops, guarded)
            counter[0] += 1
            out.append(Access(True, node.buffer, list(node.indices), loops, counter[0], guarded))
        elif isinstance(node, tirx.IfThenElse):
            loads(node.condition, loops, guarded)
            walk(node.then_case, loops, True)
            if node.else_case is not None:
                walk(node.else_case, loops, True)
        elif evaluate and isinstance(node, tirx.Evaluate):
            loads(node.value, loops, guarded)
        else:
            raise UnmodelledTIR(type(node).__name__)

    walk(stmt, (), False)
    return out


class _BlockInfo:
    def __init__(self, realize: s_tir.SBlockRealize, top: int) -> None:
        self.realize = realize
        self.block = realize.block
        self.top = top  # index of the root-level statement that contains the block
        self.loads: list[TensorLoad] = []  # buffer reads (TIR's BufferLoad)
        self.stores: list[tirx.BufferStore] = []


def block_accesses(func: tirx.PrimFunc) -> tuple[list[_BlockInfo], bool] | None:
    """Every non-root block with the loads/stores directly in it; and whether anything escapes."""
    body = func.body
    if not isinstance(body, s_tir.SBlockRealize):
        return None
    inner = body.block.body
    stmts = list(inner.seq) if isinstance(inner, tirx.SeqStmt) else [inner]
    infos: list[_BlockInfo] = []
    escapes = [False]

    def on_call(c: Any) -> tvm_ffi.WalkResult:
        if isinstance(c.op, tvm.ir.Op) and c.op.name in _ESCAPING:
            escapes[0] = True
        return tvm_ffi.WalkResult.ADVANCE

    for top, stmt in enumerate(stmts):

        def on_realize(r: s_tir.SBlockRealize, top: int = top) -> tvm_ffi.WalkResult:
            info = _BlockInfo(r, top)
            infos.append(info)
            if len(r.block.match_buffers):
                escapes[0] = True

            def on_nested(_: Any) -> tvm_ffi.WalkResult:
                return tvm_ffi.WalkResult.SKIP  # nested blocks are visited on their own

            def on_load(ld: Any) -> tvm_ffi.WalkResult:
                info.loads.append(ld)
                return tvm_ffi.WalkResult.ADVANCE

            def on_store(st: Any) -> tvm_ffi.WalkResult:
                info.stores.append(st)
                return tvm_ffi.WalkResult.ADVANCE

            parts = [r.block.body] + ([r.block.init] if r.block.init is not None else []) + [r.predicate]
            parts += list(r.iter_values)
            for part in parts:
                tvm_ffi.structural_walk(
                    part,
                    [(s_tir.SBlockRealize, on_nested), (TensorLoad, on_load), (tirx.BufferStore, on_store)],
                    order="pre",
                )
            return tvm_ffi.WalkResult.ADVANCE

        tvm_ffi.structural_walk(stmt, [(s_tir.SBlockRealize, on_realize)], order="pre")
        tvm_ffi.structural_walk(stmt, [(tvm.ir.Call, on_call)], order="pre")
    return infos, escapes[0]


def _loop_iterations(func: tirx.PrimFunc, block_name: str) -> int | None:
    try:
        sch = s_tir.Schedule(func)
        loops = sch.get_loops(sch.get_sblock(block_name))
        total = 1
        for lp in loops:
            ext = sch.get(lp).extent
            if not isinstance(ext, tirx.IntImm):
                return None
            total *= int(ext)
        return total
    except TVM_ERRORS:
        return None



def inplace_pairs(func: tirx.PrimFunc, n_outputs: int) -> list[tuple[int, int]]:
    """(input parameter index, output parameter index) pairs safe to alias (see the module docstring)."""
    params = list(func.params)
    if not all(is_buffer_var(p) for p in params) or n_outputs <= 0 or func.attrs is not None and OVERLAP_ATTR in func.attrs:
        return []  # (a kernel recomputing pixels reads its inputs after writing some output: odd_planes.py)
    collected = block_accesses(func)
    if collected is None:
        return []
    infos, escapes = collected
    if escapes:
        return []
    n_in = len(params) - n_outputs
    pairs: list[tuple[int, int]] = []
    for oi in range(n_in, len(params)):
        out = params[oi]
        writers = [i for i in infos if any(st.buffer.same_as(out) for st in i.stores)]
        if len(writers) != 1:
            continue
        b = writers[0]
        store = b.block.body
        if not isinstance(store, tirx.BufferStore) or not store.buffer.same_as(out) or len(b.stores) != 1:
            continue
        if b.block.init is not None or not is_true(b.realize.predicate):
            continue
        if any(ld.source.same_as(out) for i in infos for ld in i.loads):
            continue
        out_shape = const_shape(out)
        if out_shape is None or _loop_iterations(func, b.block.name_hint) != math.prod(out_shape):
            continue
        for si in range(n_in):
            src = params[si]
            if const_shape(src) != out_shape or str(src.ty.dtype) != str(out.ty.dtype):
                continue
            ok = True
            for i in infos:
                for ld in i.loads:
                    if not ld.source.same_as(src):
                        continue
                    if i is b and same_element(ld.indices, store.indices, out_shape):
                        continue
                    if i.top < b.top:
                        continue
                    ok = False
            if ok:
                pairs.append((si, oi))
    return pairs
