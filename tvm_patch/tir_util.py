"""Small questions asked of TIR expressions in several passes (the TIR counterpart of relax_util.py)."""

from __future__ import annotations

from typing import Any

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
