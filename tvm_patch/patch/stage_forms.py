"""A patch stage's alternative forms: both written into its PrimFunc, one chosen at export.

Some choices of a stage's nest are best taken per stage by measuring (a tuning knob, tune/space.py), yet they are
made where the nest is written, in the PatchStage pass, long before the export and its tuner. So the builder writes
both forms under a flag: a bool variable bound at the top of the root block (a ``Bind``) to the stage's default.
TVM runs the function as it is (its default form: ``build --check``, the tests), and the tuning workload, the
function before the choice, is one for both forms. The export resolves the flag (``with_form``) before it plans the
stage's buffers: the flag's constant substituted, the dead form's statements and its own scratch dropped, so that a
stage in its default form is exactly the function written without the choice.

One flag so far, ``PAIRS_DOWN``: a pair conv's odd last column computed in pairs down the column
(``block_plan.pairs_down``, ``blocked_convs.blocked_pixels``) rather than pixel by pixel after each row. Its
default (``pairs_down_default``) is on for an NHWC stage and for an NCHW stage in cache mode, off for an NCHW stage
in recompute mode. Measured (M7, untuned): mcunet-in0 (NCHW) 2x2 and 3x3 cache -26,699 and -35,369 instructions,
4x4 recompute +261,877 (GCC compiling the unchanged row pairs' dot 21 % slower), with the stage tuned all three
faster (docs/kernels.md, session 36); vww (NHWC) 4x4 cache -8,364, 4x4 recompute -71,115 (session 37).
"""

from __future__ import annotations

from typing import Any

import tvm
import tvm_ffi
from tvm import s_tir, tirx

from tvm_patch.codegen.workspace import PIXEL_NAME
from tvm_patch.tir_util import substitute_vars, uses_var

__all__ = ["DOWN_WINDOW", "ONE_NEST", "PAIRS_DOWN", "bind_flag", "form_default", "one_nest", "pairs_down_default",
           "pairs_down_flag", "with_form"]

PAIRS_DOWN = "tvmp_pairs_down"
DOWN_WINDOW = f"{PIXEL_NAME}_down"  # the pairs down a column's copied windows: scratch of that form only
ONE_NEST = "tvm_patch_one_nest"  # an attribute over statements that stay one statement of the patch body


def one_nest(body: Any) -> Any:
    """``body`` (a sequence) kept one statement through TVM's lowering, which flattens nested sequences: a form's
    layer nest of two statements counts as one (codegen/outline.py numbers the stage's nests by statement), as the
    other form's one loop does; the C shows its statements only."""
    return tirx.AttrStmt(tvm.ir.expr.StringImm(ONE_NEST), ONE_NEST, tirx.IntImm("int32", 1), body)


def pairs_down_flag() -> tirx.Var:
    """A new PAIRS_DOWN flag (one per stage)."""
    return tirx.Var(PAIRS_DOWN, "bool")


def pairs_down_default(caches: bool, layout: str) -> bool:
    """The PAIRS_DOWN default of a stage in cache mode (``caches``) or recompute mode, in ``layout`` (see the module
    docstring)."""
    return caches or layout == "NHWC"


def bind_flag(flag: tirx.Var, default: bool, body: Any) -> Any:
    """``body`` under ``flag`` bound to ``default``, where it reads the flag (else ``body`` as it is)."""
    return tirx.SeqStmt([tirx.Bind(flag, tirx.IntImm("bool", int(default))), body]) if uses_var(body, flag) else body


def _flag_binding(func: tirx.PrimFunc) -> Any:
    """The ``Bind`` of ``func``'s PAIRS_DOWN flag, None if it has none."""
    found: list[Any] = []

    def visit(node: Any) -> Any:
        if node.var.name == PAIRS_DOWN:
            found.append(node)
        return tvm_ffi.WalkResult.ADVANCE

    tvm_ffi.structural_walk(func.body, [(tirx.Bind, visit)], order="pre")
    return found[0] if found else None


def form_default(func: Any) -> bool | None:
    """The PAIRS_DOWN default ``func`` was written with, None when it has no such choice (no flag)."""
    if not isinstance(func, tirx.PrimFunc):
        return None
    binding = _flag_binding(func)
    return None if binding is None else bool(int(binding.value))


_GONE = tirx.Evaluate(0)  # a dropped branch, taken out of its sequence


def with_form(func: Any, pairs_down: bool | None = None) -> Any:
    """``func`` with its PAIRS_DOWN flag resolved to ``pairs_down`` (None: its default): each test of the flag
    replaced by the branch it takes, the flag's binding and, when the pairs go, their window scratch removed.
    ``func`` as it is when it has no flag."""
    binding = _flag_binding(func) if isinstance(func, tirx.PrimFunc) else None
    if binding is None:
        return func
    flag = binding.var
    value = bool(int(binding.value)) if pairs_down is None else bool(pairs_down)
    const = tirx.IntImm("bool", int(value))
    ana = tvm.sym.Analyzer()

    def branch(node: Any) -> Any:
        if not uses_var(node.condition, flag):
            return node
        cond = ana.simplify(substitute_vars(node.condition, {flag: const}))
        if not isinstance(cond, tirx.IntImm):
            raise ValueError(f"stage_forms: a test of {PAIRS_DOWN} that is not the flag alone: {node.condition}")
        taken = node.then_case if int(cond) else node.else_case
        return _GONE if taken is None else taken

    def sequence(node: Any) -> Any:
        kept = [s for s in node.seq if not s.same_as(_GONE)]
        if len(kept) == len(node.seq):
            return node
        return tirx.SeqStmt(kept) if len(kept) > 1 else kept[0] if kept else _GONE

    def bind(node: Any) -> Any:
        return _GONE if node.var.same_as(flag) else node

    def root(node: Any) -> Any:
        if value or node.name_hint != "root":
            return node
        kept = [b for b in node.alloc_buffers if b.name != DOWN_WINDOW]
        return s_tir.SBlock(node.iter_vars, node.reads, node.writes, node.name_hint, node.body, node.init, kept,
                            node.match_buffers, node.annotations)

    body = tvm_ffi.structural_map(func.body, [(tirx.IfThenElse, branch), (tirx.SeqStmt, sequence),
                                              (tirx.Bind, bind), (s_tir.SBlock, root)])
    if uses_var(body, flag):
        raise ValueError(f"stage_forms: {PAIRS_DOWN} read outside a test of it")
    return func.with_body(body)
