"""Definitions nothing reads, dropped from a plain kernel.

A transform of a patch stage can leave values it bound and buffers it declared unread: a nest moved into a
function of its own (codegen/outline.py) takes its reads with it, a peeled patch's copy (codegen/peel_patches.py)
folds a border test that read the patch's position. The host build compiles with -Werror, and GCC warns of
unused variables, so they go: a bound value (``Bind``), a declaration of a workspace buffer or a parameter
(``DeclBuffer``), a C-local array (``AllocBuffer``) with its constant stores (the zeroing of
``workspace.zero_locals``: writes to a local nothing reads). Constant stores into a declared buffer are kept:
they write memory that outlives the kernel's scope (the workspace, a parameter). Dropping one definition can
leave another unread (a declaration whose address a dropped one was computed from), so it repeats until none is.
A dead definition can be the only statement of a loop, an attribute (a stage's one-statement nest,
``stage_forms.one_nest``, whose loops a peeled copy folded away: kws's cache stage with its odd columns paired
down) or a branch: the statement goes with it.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import tvm
import tvm_ffi
from tvm import tirx

from tvm_patch.tir_util import seq, vars_of

__all__ = ["without_unused_definitions"]


def _key(v: Any) -> int:
    """A variable's identity (Python's wrappers of one TIR variable differ; a buffer's ``data`` is rebuilt per
    access)."""
    return v.__chandle__()


def _data(node: Any) -> int:
    """The identity of the data variable of the buffer an allocation, a declaration or a store names: the first
    variable of its walk (the buffer's first field; ``buffer.data`` itself does not give the variable back)."""
    return _key(vars_of(node)[0])


def _occurrences(node: Any, key: int) -> int:
    """How often the variable ``key`` occurs in ``node``."""
    return sum(1 for v in vars_of(node) if _key(v) == key)


def _unread(body: Any) -> set[int]:
    """The variables ``body`` defines and nothing reads: bound values, declared buffers, C-local arrays (for these
    the constant stores do not count as reads)."""
    uses = Counter(_key(v) for v in vars_of(body))  # definitions included; a buffer's, per reference
    own: Counter = Counter()  # occurrences of a defined variable in its definition
    constant_stores: Counter = Counter()  # occurrences of a buffer's data variable in constant stores into it
    defined: set[int] = set()
    local: set[int] = set()

    def visit(node: Any) -> tvm_ffi.WalkResult:
        if isinstance(node, tirx.Bind):
            defined.add(_key(node.var))
            own[_key(node.var)] += 1
        elif isinstance(node, (tirx.AllocBuffer, tirx.DeclBuffer)):
            data = _data(node)
            defined.add(data)
            own[data] += _occurrences(node, data)
            if isinstance(node, tirx.AllocBuffer):
                local.add(data)
        elif isinstance(node.value, (tirx.IntImm, tirx.FloatImm)):
            data = _data(node)
            constant_stores[data] += _occurrences(node, data)
        return tvm_ffi.WalkResult.ADVANCE

    tvm_ffi.structural_walk(body, [(t, visit) for t in (tirx.AllocBuffer, tirx.DeclBuffer, tirx.BufferStore,
                                                         tirx.Bind)], order="pre")
    return {v for v in defined if uses[v] == own[v] + (constant_stores[v] if v in local else 0)}


def without_unused_definitions(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """``func`` without the definitions nothing reads (see the module docstring), until none is left."""
    while True:
        gone = _unread(func.body)
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

        def drop_attr_body(node: tirx.AttrStmt) -> Any:  # an attribute over nothing but a dead definition
            return tirx.Evaluate(0) if dead(node.body) else node

        def drop_branch(node: tirx.IfThenElse) -> Any:  # a branch of nothing but a dead definition
            if not (dead(node.then_case) or dead(node.else_case)):
                return node
            return tirx.IfThenElse(node.condition, tirx.Evaluate(0) if dead(node.then_case) else node.then_case,
                                   None if dead(node.else_case) else node.else_case)

        body = tvm_ffi.structural_map(func.body, [(tirx.SeqStmt, drop_seq), (tirx.For, drop_body),
                                                  (tirx.AttrStmt, drop_attr_body), (tirx.IfThenElse, drop_branch)])
        if tvm_ffi.structural_equal(body, func.body):  # what is left sits elsewhere (never seen): kept
            return func
        func = tirx.transform.RemoveNoOp()(tvm.IRModule({"main": func.with_body(body)}))["main"]
