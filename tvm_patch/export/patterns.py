"""Correct TVM's op pattern of elementwise kernels that index a unit batch axis with a constant 0.

Why: ``AnnotateTIROpPattern`` calls a kernel that reads ``a[0, h, w, c]`` while writing
``y[n, h, w, c]`` a *broadcast*, even when ``n`` only ranges over [0, 1). LowerToInteger's residual add
(``q_add``) is written that way, and FuseOps fuses a convolution's epilogue only through elementwise
ops, so the add stayed a kernel of its own and the residual could not be accumulated in place into the
skip tensor (the paper's convention; ResNet-8's arena paid a third 16 kB tensor for it).
:func:`mark_elementwise` is a module pass to run right after ``AnnotateTIROpPattern``: a one-block
kernel whose every read is of the output's shape at the store's own indices (or at constant 0 on an
axis of extent 1) is marked elementwise. Nothing else changes.
"""

from __future__ import annotations

from typing import Any

import tvm
import tvm_ffi
from tvm import s_tir, tirx
from tvm.ir.expr import TensorLoad

__all__ = ["ELEMWISE", "BROADCAST", "const_shape", "is_elementwise", "is_pad_of", "mark_elementwise", "same_element", "single_block"]

ELEMWISE, BROADCAST = 0, 1  # TVM's OpPatternKind values


def single_block(func: tirx.PrimFunc) -> s_tir.SBlock | None:
    """The one non-root block of ``func``, or None."""
    blocks: list[s_tir.SBlock] = []
    tvm_ffi.structural_walk(
        func.body, [(s_tir.SBlock, lambda b: blocks.append(b) or tvm_ffi.WalkResult.ADVANCE)], order="pre"
    )
    inner = [b for b in blocks if b.name_hint != "root"]
    return inner[0] if len(inner) == 1 else None


def const_shape(buf: Any) -> tuple[int, ...] | None:
    """A buffer's shape as ints, or None when it is symbolic."""
    try:
        return tuple(int(s) for s in buf.shape)
    except (TypeError, ValueError):
        return None


def is_pad_of(value: Any, load: Any) -> bool:
    """Is ``value`` a padded read of ``load``, ``if_then_else(in bounds, load, constant pad)``?"""
    return (isinstance(value, tvm.ir.Call) and isinstance(value.op, tvm.ir.Op) and value.op.name.endswith("if_then_else")
            and value.args[1].same_as(load) and isinstance(value.args[2], tirx.IntImm))


def same_element(load: Any, store: Any, shape: tuple[int, ...] | None) -> bool:
    """Do index tuples ``load`` and ``store`` name the same element of a tensor of ``shape``? Equal
    expressions, or the constant 0 against anything on an axis of extent 1."""
    if len(load) != len(store):
        return False
    for i, (a, b) in enumerate(zip(load, store)):
        if tvm_ffi.structural_equal(a, b):
            continue
        if shape is not None and i < len(shape) and shape[i] == 1 and any(
            isinstance(x, tirx.IntImm) and int(x) == 0 for x in (a, b)
        ):
            continue
        return False
    return True


def is_elementwise(func: tirx.PrimFunc) -> bool:
    """True when ``func`` is one block storing ``y[i...]`` from reads ``x[j...]`` of y's shape, where each
    ``j`` is the store's index on that axis or the constant 0 on an axis of extent 1."""
    block = single_block(func)
    if block is None or block.init is not None or not isinstance(block.body, tirx.BufferStore):
        return False
    store = block.body
    shape = const_shape(store.buffer)
    ivs = [iv.var for iv in block.iter_vars]
    if shape is None or len(store.indices) != len(shape) or len(ivs) != len(shape):
        return False
    if not all(idx.same_as(v) for idx, v in zip(store.indices, ivs)):
        return False
    ok = [True]

    def on_load(ld: Any) -> tvm_ffi.WalkResult:
        if const_shape(ld.source) != shape or not same_element(ld.indices, store.indices, shape):
            ok[0] = False
        return tvm_ffi.WalkResult.ADVANCE

    tvm_ffi.structural_walk(store.value, [(TensorLoad, on_load)], order="pre")
    return ok[0]


@tvm.transform.module_pass(opt_level=0, name="tvm_patch.MarkElementwise")
def mark_elementwise(mod: tvm.IRModule, _ctx: Any) -> tvm.IRModule:
    """Re-mark broadcast-annotated PrimFuncs that are elementwise (see the module docstring)."""
    updates = {}
    for gv, func in mod.functions.items():
        if not isinstance(func, tirx.PrimFunc) or func.attrs is None:
            continue
        pattern = func.attrs.get("op_pattern")
        if pattern is not None and int(pattern) == BROADCAST and is_elementwise(func):
            updates[gv] = func.with_attr("op_pattern", ELEMWISE)
    for gv, func in updates.items():
        mod[gv] = func
    return mod
