"""Loops of dot-product and widening calls over consecutive runs merged into one call.

A k x k convolution's interior pixel pair reads its window tap by tap: after ``WidenPixelPairs`` and
``WidenWeights`` resnet8's 3x3 layers run

    for ry, rx in grid(3, 3):
        tvmp_dot_q15w_px2_rows2(&q[(3 ry + rx) 16], &w[f + (3 ry + rx) 16], ws, 16, acc)

nine calls of 16 channels where the pair's widened window and the weights are contiguous over the taps: one call
of 144 computes the same sums (integers: the order of the terms does not matter) with one loop set-up instead
of nine and its two-group iterations throughout. Measured by hand on resnet8's first 32 x 32 layer: 2,711,719 ->
2,405,176 instructions on the emulated M7 (-11.3 %). Likewise the widening of a window row's taps, when they are
contiguous in memory.

``merge_taps`` replaces a serial loop from 0 whose body is one such call, whose pointer arguments step by exactly
the call's length per iteration (in elements of their buffers: a widened pair keeps one word per channel, a
widened pixel half a word) and whose other arguments do not depend on the loop, by one call at the loop's first
value over the loop's extent times the length; innermost loops first, so a 3 x 3 window's loops become one call
where both steps agree. The kernels' requirements (lengths and offsets multiples of four) hold for the merged
call when they held for each.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any

import tvm
import tvm_ffi
from tvm import tirx
from tvm.ir.expr import TensorLoad

from tvm_patch.codegen.micro_kernels import _extern_name, _int
from tvm_patch.codegen.wide_weights import WIDE_CALLS
from tvm_patch.codegen.widen_kernels import Q15_PX2_ROWS, Q15_ROWS, WIDEN
from tvm_patch.tir_util import is_call, substitute_vars, uses_var

__all__ = ["MergeTaps", "RUNS", "merge_taps"]

# a call -> (its pointer arguments that walk the run: (position, elements per channel)), the position of its length)
_PAIR = ((0, Fraction(1)), (1, Fraction(1)))  # (q, w, ws, n, acc): a widened pair's word per channel, a weight each
_PIXEL = ((0, Fraction(1, 2)), (1, Fraction(1)))  # (q, w, ws, n, acc): a widened pixel's half word per channel
RUNS: dict[str, tuple[tuple[tuple[int, Fraction], ...], int]] = {
    **{name: (_PAIR, 3) for name in Q15_PX2_ROWS.values()},
    **{WIDE_CALLS[name][0]: (_PAIR, 3) for name in Q15_PX2_ROWS.values()},
    **{name: (_PIXEL, 3) for name in Q15_ROWS.values()},
    **{WIDE_CALLS[name][0]: (_PIXEL, 3) for name in Q15_ROWS.values()},
    WIDEN: (((0, Fraction(1)), (3, Fraction(1))), 2),  # (a, as, n, q): a byte, a word per channel
}


def _step(arg: Any, var: tirx.Var) -> Fraction | None:
    """How many elements ``&B[i]`` moves per unit of ``var`` (``i`` linear in it), else None."""
    load = arg.args[0] if is_call(arg, ".address_of") and arg.args else None
    if not isinstance(load, TensorLoad) or len(load.indices) != 1:
        return None
    coeffs = tvm.sym.detect_linear_equation(load.indices[0], [var])
    return Fraction(_int(coeffs[0])) if len(coeffs) == 2 and _int(coeffs[0]) is not None else None


def _merged(loop: tirx.For) -> tirx.Stmt | None:
    """One call for ``loop`` (see the module doc), else None."""
    body = loop.body
    if (loop.kind != tirx.ForKind.SERIAL or _int(loop.min) != 0 or (_int(loop.extent) or 0) < 2
            or not isinstance(body, tirx.Evaluate) or _extern_name(body.value) not in RUNS):
        return None
    name, v, extent = _extern_name(body.value), loop.loop_var, _int(loop.extent)
    walking, n_pos = RUNS[name]
    args = list(body.value.args)[1:]
    n = _int(args[n_pos])
    if n is None:
        return None
    moving = dict(walking)
    for i, a in enumerate(args):
        if i in moving:
            if _step(a, v) != n * moving[i]:
                return None
        elif uses_var(a, v):
            return None
    first = [substitute_vars(a, {v: tirx.const(0, v.ty.dtype)}) for a in args]
    first[n_pos] = tirx.const(n * extent, "int32")
    ana = tvm.sym.Analyzer()
    first = [ana.simplify(a) if not is_call(a, ".address_of") else
             tirx.address_of(tirx.BufferLoad(a.args[0].source, [ana.simplify(a.args[0].indices[0])])) for a in first]
    return tirx.Evaluate(tirx.call_extern("void", name, *first))


def merge_taps(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """``func`` with every loop of one run-walking call merged into a call (innermost loops first)."""
    return tvm_ffi.structural_map(func, [(tirx.For, lambda loop: _merged(loop) or loop)])


def MergeTaps() -> tvm.transform.Pass:  # noqa: N802 (TVM's naming of passes)
    """The pass form of ``merge_taps``, after ``WidenWeights`` in the plain-C lowering."""
    return tirx.transform.prim_func_pass(lambda f, _m, _c: merge_taps(f), opt_level=0, name="tvm_patch.MergeTaps")
