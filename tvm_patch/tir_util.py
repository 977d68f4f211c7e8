"""Small questions asked of TIR expressions in several passes (the TIR counterpart of relax_util.py)."""

from __future__ import annotations

from typing import Any

import tvm
import tvm_ffi
from tvm import tirx


def vars_of(expr: Any) -> list[tirx.Var]:
    """Every variable occurrence in ``expr``, in pre-order."""
    found: list[tirx.Var] = []
    tvm_ffi.structural_walk(expr, [(tirx.Var, lambda v: found.append(v) or tvm_ffi.WalkResult.ADVANCE)], order="pre")
    return found


def uses_var(expr: Any, var: Any) -> bool:
    """Does ``expr`` mention ``var``?"""
    return any(v.same_as(var) for v in vars_of(expr))


def mixed_radix(index: Any, loops: list[tuple[Any, int, int]]) -> list[int] | None:
    """Positions in ``loops`` ((variable, start, extent) each) of the variables ``index`` uses, innermost first, if
    it is a constant plus them in mixed radix (coefficients 1, e1, e1 * e2, ... for extents e1, e2, ..., all but the
    outermost starting at 0: a loop split into blocks), so it takes every value between its bounds exactly once;
    None if it is not of that form."""
    used = [k for k, (v, _, _) in enumerate(loops) if uses_var(index, v)]
    if not used:
        return []
    coeffs = tvm.sym.detect_linear_equation(index, [loops[k][0] for k in used])
    if len(coeffs) != len(used) + 1 or any(not isinstance(c, tirx.IntImm) for c in coeffs[:-1]):
        return None
    order = sorted(zip((int(c) for c in coeffs[:-1]), used))
    step = 1
    for n, (c, k) in enumerate(order):
        _, lo, ext = loops[k]
        if c != step or (n + 1 < len(order) and lo != 0):
            return None
        step *= ext
    return [k for _, k in order]
