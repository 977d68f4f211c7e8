"""A patch stage's patch loops peeled: the first and the last row and column of patches as copies of their own (a
tuning choice, tune/space.py).

Inside the patch loop every border test, halo-cache copy length and padding fill depends on the patch's
position (``0 < i``, ``i * 8 - 14``, ...): computed per patch, and the copies and fills run with lengths GCC cannot
see. Peeled, each loop over the patches of one axis becomes the first patch, the interior ones (a loop, when there
are more than two) and the last; the body is copied for each combination (at most 3 x 3 copies however many
patches), its position substituted, and TVM's simplifier folds what the position decides: the copies and fills
get constant lengths (or vanish), the border tests go. The patches keep their order (row-major: the halo caches
carry values from one patch to the next). Measured (docs/tuning.md): it pays where the stage's
copies and fills weigh (mcunet-in0's 3x3 cache stage) and costs where GCC compiles the longer function's layer
nests worse, so it is a choice per stage. The code grows with the copies (Flash).

Works on the plain TIR of ``c_kernels.lower_plain``, after the nests chosen for outlining have left the stage
(codegen/outline.py): a call of an outlined nest takes the peeled position as its argument.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import tvm
import tvm_ffi
from tvm import s_tir, tirx

from tvm_patch.codegen.outline import patch_body
from tvm_patch.tir_util import seq, substitute_vars, vars_of

__all__ = ["peel_patches"]


def _classes(start: int, extent: int) -> list[tuple[int, int]]:
    """(first, count) of the first, the interior and the last patch along one axis (those that exist)."""
    out = [(start, 1)]
    if extent > 2:
        out.append((start + 1, extent - 2))
    if extent > 1:
        out.append((start + extent - 1, 1))
    return out


def peel_patches(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """``func`` (a plain patch stage) with its patch loops peeled (see the module docstring); any other function
    unchanged."""
    found = patch_body(func)
    if found is None:
        return func
    before, loop_vars, body = found
    top = list(func.body.seq) if isinstance(func.body, tirx.SeqStmt) else [func.body]
    ranges, node = [], top[len(before)]
    while isinstance(node, tirx.For) and len(ranges) < len(loop_vars):
        if not isinstance(node.min, tirx.IntImm) or not isinstance(node.extent, tirx.IntImm):
            return func  # patch loops of constant extent only (every stage the export emits)
        ranges.append(_classes(int(node.min), int(node.extent)))
        node = node.body

    def peeled_axes(level: int, subst: dict[Any, Any]) -> Any:
        # the patches in their order (row-major: the halo caches carry values from one patch to the next), the
        # axes from the outermost: a class of one patch substituted, the interior ones a loop of a variable of its own
        if level == len(loop_vars):
            # each copy with variables and buffers of its own: the C backend takes every definition once (SSA)
            return s_tir.renew_defs(tirx.PrimFunc([], substitute_vars(body, subst))).body
        v, parts = loop_vars[level], []
        for start, count in ranges[level]:
            if count == 1:
                parts.append(peeled_axes(level + 1, {**subst, v: tirx.const(start, v.ty.dtype)}))
            else:
                own = tirx.Var(v.name, v.ty)
                parts.append(tirx.For(own, start, count, tirx.ForKind.SERIAL, peeled_axes(level + 1, {**subst, v: own})))
        return seq(parts)

    peeled = func.with_body(seq([*before, peeled_axes(0, {}), *top[len(before) + 1:]]))
    mod = tirx.transform.RemoveNoOp()(tirx.transform.StmtSimplify()(tvm.IRModule({"main": peeled})))
    return _without_unused_definitions(mod["main"])


def _key(v: Any) -> int:
    """A variable's identity (Python's wrappers of one TIR variable differ; a buffer's ``data`` is rebuilt per access)."""
    return v.__chandle__()


def _data(node: Any) -> int:
    """The identity of the data variable of the buffer an allocation, a declaration or a store names: the first
    variable of its walk (the buffer's first field; ``buffer.data`` itself does not give the variable back)."""
    return _key(vars_of(node)[0])


def _without_unused_definitions(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """``func`` without the bound values and C-local arrays nothing reads any more (the simplifier folded their
    uses away in some copy; GCC would warn of unused variables), a dropped array's declarations and constant stores
    (its zeroing) with it, until none is left."""
    while True:
        uses = Counter(_key(v) for v in vars_of(func.body))  # definitions included; a buffer's, per reference
        own: Counter = Counter()  # occurrences of a C local's data variable in its definition and constant stores
        binds: set[int] = set()
        allocated: set[int] = set()

        def visit(node: Any) -> tvm_ffi.WalkResult:
            if isinstance(node, tirx.Bind):
                if uses[_key(node.var)] == 1:
                    binds.add(_key(node.var))
            elif isinstance(node, (tirx.AllocBuffer, tirx.DeclBuffer)) or isinstance(node.value,
                                                                                   (tirx.IntImm, tirx.FloatImm)):
                data = _data(node)
                own[data] += sum(1 for v in vars_of(node) if _key(v) == data)
                if isinstance(node, tirx.AllocBuffer):
                    allocated.add(data)
            return tvm_ffi.WalkResult.ADVANCE

        tvm_ffi.structural_walk(func.body, [(t, visit) for t in (tirx.AllocBuffer, tirx.DeclBuffer, tirx.BufferStore,
                                                                 tirx.Bind)], order="pre")
        gone = {v for v in allocated if uses[v] == own[v]} | binds  # C locals only, never the workspace's buffers
        if not gone:
            return func

        def dead(stmt: Any) -> bool:
            return (isinstance(stmt, tirx.Bind) and _key(stmt.var) in gone) or (
                isinstance(stmt, (tirx.AllocBuffer, tirx.DeclBuffer, tirx.BufferStore)) and _data(stmt) in gone)

        def drop_seq(node: tirx.SeqStmt) -> Any:
            return seq([s for s in node.seq if not dead(s)])

        def drop_body(node: tirx.For) -> Any:
            if not dead(node.body):
                return node
            return tirx.For(node.loop_var, node.min, node.extent, node.kind, tirx.Evaluate(0), node.thread_binding,
                            node.annotations, node.step)

        body = tvm_ffi.structural_map(func.body, [(tirx.SeqStmt, drop_seq), (tirx.For, drop_body)])
        if tvm_ffi.structural_equal(body, func.body):  # what is left sits elsewhere (never seen): kept
            return func
        func = tirx.transform.RemoveNoOp()(tvm.IRModule({"main": func.with_body(body)}))["main"]
