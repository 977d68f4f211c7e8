"""Nests of a patch stage moved into functions of their own (a tuning choice per nest, tune/space.py).

A patch stage is one long C function: a loop over the patches whose body runs each layer's loop nest in turn,
the nests separated by ``tvmp_barrier()``. GCC compiles each nest in the context of all the others, and its
register allocation for one nest moves when another changes (measured: a 1x1 layer's nest, its C unchanged,
+20 % when other nests of its stage changed; docs/kernels.md, round 31). A nest outlined into a ``static``
``noinline`` function is compiled on its own: faster for some layers, slower for others (a callee sees the
patch's bounds as arguments, not as the constants the stage can fold), so it is a choice per nest.

Works on the plain TIR of ``c_kernels.lower_plain`` (after the workspace plan and the common-subexpression
elimination, so the stage itself is unchanged by the choice to outline another nest): the outlined function
takes the patch's loop variables, the kernel's pointer parameters the nest uses and the workspace; it declares
the nest's buffers as the stage does (the same workspace offsets), its C-local scratch arrays of its own (every
nest writes its scratch before reading it; zeroed as ``workspace.zero_locals`` zeroes the stage's), and binds
again the values the stage bound before the nest (``Bind``: the patch's bounds), so GCC sees the same
expressions, not opaque arguments.

Which nests: those that read or write a pointer parameter of the kernel (a layer's weights or constants, the
network's input or output; ``layer_nests``). The halo caches' copies and fills, over the workspace only, stay.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import tvm
from tvm import tirx

from tvm_patch.codegen.c_types import PlainCError
from tvm_patch.codegen.prune import without_unused_definitions
from tvm_patch.codegen.workspace import zero_stores
from tvm_patch.quant.fixedpoint import is_c_barrier
from tvm_patch.tir_util import seq as seq_of

__all__ = ["layer_nests", "outline_nests", "outlined_name", "patch_body"]


def outlined_name(kernel: str, nest: int) -> str:
    """The C name of ``kernel``'s outlined nest number ``nest`` (its index among ``layer_nests``)."""
    return f"{kernel}_nest{nest}"


def patch_body(func: tirx.PrimFunc) -> tuple[list[Any], list[Any], Any] | None:
    """(the statements before the patch loops, the patch loops' variables, the loops' body sequence) of a plain
    patch stage: the first loop nest of the function's top sequence whose innermost body holds barriers."""
    top = func.body.seq if isinstance(func.body, tirx.SeqStmt) else [func.body]
    for k, stmt in enumerate(top):
        loop_vars: list[Any] = []
        node = stmt
        while isinstance(node, tirx.For):
            loop_vars.append(node.loop_var)
            node = node.body
        if loop_vars and isinstance(node, tirx.SeqStmt) and any(is_c_barrier(s) for s in node.seq):
            return list(top[:k]), loop_vars, node
    return None


def _defines(stmt: Any) -> Any:
    """The variable a scope statement defines (a buffer, a bound value), else None."""
    if isinstance(stmt, (tirx.DeclBuffer, tirx.AllocBuffer)):
        return stmt.buffer
    if isinstance(stmt, tirx.Bind):
        return stmt.var
    return None


def _closure(stmt: Any, scope: list[Any]) -> tuple[list[Any], list[Any]]:
    """(the statements of ``scope`` that ``stmt`` needs, in their order; the variables still free): the
    declarations of the buffers it uses (through the chain of declarations), the values it reads."""
    by_var = {_defines(s): s for s in scope if _defines(s) is not None}
    needed: dict[Any, None] = {}
    pending = list(tirx.analysis.undefined_vars(stmt, []))
    free: list[Any] = []
    while pending:
        v = pending.pop()
        if v in needed or v in free:
            continue
        if v not in by_var:
            free.append(v)
            continue
        needed[v] = None
        d = by_var[v]
        node = d.data if isinstance(d, tirx.DeclBuffer) else d.value if isinstance(d, tirx.Bind) else None
        if node is not None:
            pending.extend(tirx.analysis.undefined_vars(tirx.Evaluate(node), []))  # (a handle's expression too)
    return [s for s in scope if _defines(s) in needed], free


def _nest_indices(func: tirx.PrimFunc) -> list[int]:
    """Positions, in the patch body's sequence, of its layer nests (see the module docstring)."""
    found = patch_body(func)
    if found is None:
        return []
    before, _, body = found
    pointers = {p for p in func.params if isinstance(p.ty, tvm.ir.PointerType)}
    # the kernel's buffer parameters (a declaration binds each to its pointer; the workspace's buffers are offsets)
    params = {s.data for s in before if isinstance(s, tirx.DeclBuffer) and s.data in pointers}
    out = []
    for k, stmt in enumerate(body.seq):
        if _defines(stmt) is not None or is_c_barrier(stmt):
            continue
        _, free = _closure(stmt, [*before, *body.seq[:k]])
        if any(v in params for v in free):
            out.append(k)
    return out


def layer_nests(func: tirx.PrimFunc) -> int:
    """How many nests of a plain (``lower_plain``) patch stage can be outlined; 0 for any other kernel."""
    return len(_nest_indices(func))


def outline_nests(name: str, func: tirx.PrimFunc, nests: Iterable[int]) -> tuple[tirx.PrimFunc, dict[str, tirx.PrimFunc]]:
    """``func`` (a plain patch stage named ``name``) with its layer nests numbered ``nests`` replaced by calls,
    and the outlined functions by name. Raises PlainCError for a nest number the stage does not have."""
    nests = sorted(set(nests))
    if not nests:
        return func, {}
    positions = _nest_indices(func)
    bad = [n for n in nests if not 0 <= n < len(positions)]
    if bad:
        raise PlainCError(f"{name}: no layer nest {bad} to outline (it has {len(positions)})")
    before, loop_vars, body = patch_body(func)
    pointers = [p for p in func.params if isinstance(p.ty, tvm.ir.PointerType)]
    stmts = list(body.seq)
    outlined: dict[str, tirx.PrimFunc] = {}
    for n in nests:
        k = positions[n]
        fname = outlined_name(name, n)
        prologue, free = _closure(stmts[k], [*before, *body.seq[:k]])
        other = [v for v in free if v not in loop_vars and v not in pointers]
        if other:
            raise PlainCError(f"{fname}: the nest reads {[str(v) for v in other]}, neither a patch loop variable, "
                              "a pointer parameter nor a value the stage declares")
        params = [v for v in loop_vars if v in free] + [p for p in pointers if p in free]
        zeros = [z for s in prologue if isinstance(s, tirx.AllocBuffer) for z in zero_stores(s.buffer)]
        outlined[fname] = tirx.PrimFunc(params, tirx.SeqStmt([*prologue, *zeros, stmts[k]]),
                                        ret_type=None).with_attr("global_symbol", fname)
        stmts[k] = tirx.Evaluate(tirx.call_extern("void", fname, *params))
    # the stage without the declarations, bound values and zeroed C locals only the outlined nests used (GCC
    # would warn of unused variables)
    top = list(func.body.seq) if isinstance(func.body, tirx.SeqStmt) else [func.body]
    loop = _with_body(top[len(before)], seq_of(stmts))
    return without_unused_definitions(func.with_body(seq_of([*before, loop, *top[len(before) + 1:]]))), outlined


def _with_body(loop: tirx.For, new: Any) -> tirx.For:
    """The patch loops ``loop`` with their innermost body replaced by ``new``."""
    inner = _with_body(loop.body, new) if isinstance(loop.body, tirx.For) else new
    return tirx.For(loop.loop_var, loop.min, loop.extent, loop.kind, inner, loop.thread_binding, loop.annotations,
                    loop.step)
