"""When and where a statement's accesses happen, exactly, for one patch: the in-place proofs' enumeration.

`inplace_cache` proves some of a patch stage's aliases by trying every iteration of a patch's statement: which
element each access touches (`flat_elements`: indices affine in the loops, evaluated over all their values at once,
`iterations`) and, for two buffers sharing bytes, in which order (`timed_accesses`: every iteration of every access
numbered in program order). Anything not modelled raises `inplace.UnmodelledTIR`; the proof then does not apply.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tvm
import tvm_ffi
from tvm import tirx
from tvm.ir.expr import TensorLoad

from tvm_patch.export.inplace import UnmodelledTIR
from tvm_patch.export.kernel_info import count_loads
from tvm_patch.tir_util import substitute_vars

__all__ = ["flat_elements", "iterations", "timed_accesses"]


def iterations(ranges: list[tuple[int, int]]) -> tuple[list[np.ndarray], int]:
    """Loops of (start, extent) `ranges`, outermost first: each loop's value at every iteration in execution order
    (lexicographic), and the number of iterations."""
    mesh = [m.reshape(-1) for m in np.meshgrid(*(np.arange(lo, lo + ext) for lo, ext in ranges), indexing="ij")] \
        if ranges else []
    return mesh, mesh[0].size if mesh else 1


def flat_elements(ana: Any, indices: Any, strides: list[int], env: dict[Any, Any], vars_: list[Any],
                  values: list[np.ndarray], n: int) -> np.ndarray | None:
    """The flat element (`strides`: the buffer's axes') that `indices` address at each of the n iterations
    (``values`` of the loop variables ``vars_``, `env` substituted first); None where an index is not affine in
    them."""
    total = np.zeros(n, np.int64)
    for idx, stride in zip(indices, strides):
        e = ana.simplify(substitute_vars(idx, env))
        coeffs = tvm.sym.detect_linear_equation(e, vars_) if vars_ else [e]
        if len(coeffs) != len(vars_) + 1 or any(not isinstance(c, tirx.IntImm) for c in coeffs):
            return None
        total += stride * (int(coeffs[-1]) + sum((int(c) * v for c, v in zip(coeffs[:-1], values)),
                                                 np.zeros(n, np.int64)))
    return total


def timed_accesses(stmt: Any, env: dict[Any, Any], names: set[str],
                   strides: dict[str, list[int]]) -> list[tuple[str, bool, np.ndarray, np.ndarray]]:
    """Every load and store of the buffers `names` (-> their axes' strides) in `stmt`, with the patch loops'
    variables at the values of `env`: (buffer, store?, the time of each of its iterations, the flat element each
    addresses). Times number every access's every iteration in program order (a store's value and index loads
    before the store), each affine in the loops around it; every access is counted as executed unless its
    condition fails in the patch. Raises UnmodelledTIR where a loop's bounds depend on more than the patch, an index
    is not affine, or a statement is not modelled."""
    ana = tvm.sym.Analyzer()
    env = dict(env)
    found: list[tuple[str, bool, Any, list[Any], list[tuple[Any, int, int]]]] = []

    def bounds(node: Any) -> tuple[int, int]:
        lo = ana.simplify(substitute_vars(node.min, env))
        ext = ana.simplify(substitute_vars(node.extent, env))
        if not isinstance(lo, tirx.IntImm) or not isinstance(ext, tirx.IntImm):
            raise UnmodelledTIR("a loop bound that depends on more than the patch")
        return int(lo), max(int(ext), 0)

    def size(node: Any) -> int:
        """The time slots one execution of `node` takes."""
        if isinstance(node, tirx.For):
            lo, ext = bounds(node)
            if ext == 1:
                env[node.loop_var] = tirx.const(lo, node.loop_var.ty.dtype)
            return ext * size(node.body)
        if isinstance(node, tirx.SeqStmt):
            return sum(size(x) for x in node.seq)
        if isinstance(node, tirx.AttrStmt):
            return size(node.body)
        if isinstance(node, tirx.BufferStore):
            return count_loads(node.value) + sum(count_loads(i) for i in node.indices) + 1
        if isinstance(node, tirx.IfThenElse):
            return count_loads(node.condition) + size(node.then_case) + (
                size(node.else_case) if node.else_case is not None else 0)
        if isinstance(node, tirx.Evaluate):
            if _escapes(node.value, names):
                raise UnmodelledTIR("an address taken")
            return count_loads(node.value)
        raise UnmodelledTIR(type(node).__name__)

    def loads(exprs: list[Any], time: Any, loops: list) -> Any:
        def on_load(ld: Any) -> tvm_ffi.WalkResult:
            nonlocal time
            if ld.source.name in names:
                found.append((ld.source.name, False, time, list(ld.indices), list(loops)))
            time = time + 1
            return tvm_ffi.WalkResult.ADVANCE

        for e in exprs:
            tvm_ffi.structural_walk(e, [(TensorLoad, on_load)], order="pre")
        return time

    def walk(node: Any, time: Any, loops: list) -> None:
        if isinstance(node, tirx.For):
            lo, ext = bounds(node)
            if ext == 1:
                env[node.loop_var] = tirx.const(lo, node.loop_var.ty.dtype)
                walk(node.body, time, loops)
            elif ext > 1:
                step = size(node.body)
                walk(node.body, time + (node.loop_var - lo) * step, loops + [(node.loop_var, lo, ext)])
        elif isinstance(node, tirx.SeqStmt):
            for x in node.seq:
                walk(x, time, loops)
                time = time + size(x)
        elif isinstance(node, tirx.AttrStmt):
            walk(node.body, time, loops)
        elif isinstance(node, tirx.BufferStore):
            time = loads([node.value, *node.indices], time, loops)
            if node.buffer.name in names:
                found.append((node.buffer.name, True, time, list(node.indices), list(loops)))
        elif isinstance(node, tirx.IfThenElse):
            time = loads([node.condition], time, loops)
            cond = ana.simplify(substitute_vars(node.condition, env))
            known = int(cond) if isinstance(cond, tirx.IntImm) else None
            if known != 0:
                walk(node.then_case, time, loops)
            if node.else_case is not None and known != 1:
                walk(node.else_case, time + size(node.then_case), loops)
        elif isinstance(node, tirx.Evaluate):
            loads([node.value], time, loops)
        else:
            raise UnmodelledTIR(type(node).__name__)

    walk(stmt, tirx.const(0, "int32"), [])
    out = []
    for name, store, time, indices, loops in found:
        vars_ = [v for v, _, _ in loops]
        values, n = iterations([(lo, ext) for _, lo, ext in loops])
        times = flat_elements(ana, [time], [1], env, vars_, values, n)
        flat = flat_elements(ana, indices, strides[name], env, vars_, values, n)
        if times is None or flat is None:
            raise UnmodelledTIR("an index not affine in its loops")
        out.append((name, store, times, flat))
    return out


def _escapes(expr: Any, names: set[str]) -> bool:
    """Does `expr` take the address of an element of one of the buffers `names`?"""
    hit = [False]

    def on_load(ld: Any) -> tvm_ffi.WalkResult:
        hit[0] = hit[0] or ld.source.name in names
        return tvm_ffi.WalkResult.ADVANCE

    def on_call(call: Any) -> tvm_ffi.WalkResult:
        if str(call.op.name) == "tirx.address_of":
            tvm_ffi.structural_walk(call, [(TensorLoad, on_load)], order="pre")
        return tvm_ffi.WalkResult.ADVANCE

    tvm_ffi.structural_walk(expr, [(tirx.Call, on_call)], order="pre")
    return hit[0]
