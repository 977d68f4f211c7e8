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

from typing import Any

import tvm
from tvm import s_tir, tirx

from tvm_patch.codegen.outline import patch_body
from tvm_patch.codegen.prune import without_unused_definitions
from tvm_patch.tir_util import seq, substitute_vars

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
    return without_unused_definitions(mod["main"])
