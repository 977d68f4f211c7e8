"""Small questions asked of TIR expressions in several passes (the TIR counterpart of relax_util.py)."""

from __future__ import annotations

from typing import Any

import tvm
import tvm_ffi
from tvm import tirx

from tvm_patch.names import PATCHES_ATTR


def seq(stmts: list[Any]) -> Any:
    """The statements in order: one as itself (TVM refuses a SeqStmt of one), none as a no-op."""
    return tirx.SeqStmt(stmts) if len(stmts) > 1 else stmts[0] if stmts else tirx.Evaluate(0)


def flat_seq(stmt: Any) -> list[Any]:
    """The statements of ``stmt``, nested SeqStmts flattened in order (a statement that is not one: itself)."""
    if isinstance(stmt, tirx.SeqStmt):
        return [x for st in stmt.seq for x in flat_seq(st)]
    return [stmt]


def address_load(expr: Any) -> Any | None:
    """The one-index load ``B[i]`` of an address ``&B[i]`` (a micro-kernel call's pointer argument), else None."""
    load = expr.args[0] if is_call(expr, ".address_of") and expr.args else None
    return load if isinstance(load, tvm.ir.expr.TensorLoad) and len(load.indices) == 1 else None


def vars_of(expr: Any) -> list[tirx.Var]:
    """Every variable occurrence in ``expr``, in pre-order."""
    found: list[tirx.Var] = []
    tvm_ffi.structural_walk(expr, [(tirx.Var, lambda v: found.append(v) or tvm_ffi.WalkResult.ADVANCE)], order="pre")
    return found


def substitute_vars(expr: Any, vmap: dict[Any, Any]) -> Any:
    """``expr`` with the variables of ``vmap`` (matched by identity) replaced."""

    def sub(v: Any) -> Any:
        for old, new in vmap.items():
            if v.same_as(old):
                return new
        return v

    return tvm_ffi.structural_map(expr, (tirx.Var, sub))


def is_true(expr: Any) -> bool:
    """Is ``expr`` the constant true (a block realize's predicate when it has none)?"""
    return isinstance(expr, tirx.IntImm) and int(expr) == 1 or (isinstance(expr, bool) and expr)


def is_patch_stage(func: Any) -> bool:
    """True for the PrimFunc PatchStage emits (it carries the patch counts)."""
    return isinstance(func, tirx.PrimFunc) and func.attrs is not None and PATCHES_ATTR in func.attrs


def uses_var(expr: Any, var: Any) -> bool:
    """Does ``expr`` mention ``var``?"""
    return any(v.same_as(var) for v in vars_of(expr))


def is_call(expr: Any, op: str) -> bool:
    """Is ``expr`` a call of the TIR operator whose name ends with ``op`` (".address_of", ".call_extern", ...)?"""
    return isinstance(expr, tvm.ir.Call) and isinstance(expr.op, tvm.ir.Op) and expr.op.name.endswith(op)


def pure_extern_name(expr: Any) -> str | None:
    """The callee of a ``call_pure_extern`` (the requantizations, the clamp), else None."""
    if is_call(expr, ".call_pure_extern") and expr.args and isinstance(expr.args[0], tvm.ir.expr.StringImm):
        return str(expr.args[0].value)
    return None


def load_counts(node: Any) -> dict[str, int]:
    """How many loads of each buffer name ``node`` holds (one inside an address taken counts too; buffers sharing
    a name count together)."""
    counts: dict[str, int] = {}

    def on_load(ld: Any) -> tvm_ffi.WalkResult:
        counts[ld.source.name] = counts.get(ld.source.name, 0) + 1
        return tvm_ffi.WalkResult.ADVANCE

    tvm_ffi.structural_walk(node, [(tvm.ir.expr.TensorLoad, on_load)], order="pre")
    return counts


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
