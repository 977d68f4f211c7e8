"""A memory-lean schedule for fused kernels: intermediates of a kernel shrink to a scalar.

Why: FuseTIR keeps every stage of a fused kernel (padding, convolution, bias add, clip, quantize, ...)
as a full-size intermediate buffer; lowered to plain C these land in the kernel's workspace, which the
driver must place in the arena. A fused conv + bias + clip kernel would need pad + conv output bytes of
workspace on top of its input and output. Two schedule primitives remove that, without changing any
element's arithmetic (each value is computed by the same expression, only where it is stored changes):

1. ``compute_inline`` every non-output block that can be inlined (padding, elementwise chains): its
   expression is substituted into its readers; after a reduction, only into readers that read it once
   (the requantization reads its input several times: inlining it into a residual add copied it per
   read and took TVM's simplifier 17 s on one kernel); and never a stage computing in 64 bits or calling
   a helper (a requantization) into a reader that does too: nested, a chain of n such stages grows as 2^n
   (a squeeze-and-excitation gate ADD -> MUL -> MUL took minutes). Such a stage, when no reduction
   precedes it, is computed at its reader's innermost loop instead: one scalar C local per stage;
2. ``reverse_compute_at`` the single consumer of each reduction (the epilogue), and each next stage of a
   chain of them, under the reduction's innermost spatial loop: each output element is finished right
   after its accumulation, so the accumulator and every epilogue stage compact to one element, which
   the C emitter keeps as a C local (a register) instead of a slot of kernel workspace in the arena.

Guards (found necessary: TVM 0.27's ``reverse_compute_at`` moved a trailing pad, whose domain is larger
than the convolution's, under the convolution's loops without complaint and never wrote the pad border):
step 2 only moves a consumer that writes a tensor of the accumulator's shape and reads the accumulator
at exactly its own store indices (a pure epilogue), and step 1 does not inline a stage that follows a
reduction into a consumer that is not such a pointwise reader (that would turn the epilogue into one; the
stage stays a buffer of its own instead).

Only kernels in TVM's default (unscheduled) form are touched: root-level perfect loop nests, one block
each. A kernel scheduled by someone else (a patch stage) is left as it is. A primitive that TVM refuses
is skipped; what remains is still correct, only less lean.
"""

from __future__ import annotations

from typing import Any

import tvm
import tvm_ffi
from tvm import s_tir, tirx
from tvm.ir.expr import Expr, TensorLoad

from tvm_patch.errors import TVM_ERRORS
from tvm_patch.export.patterns import const_shape, same_element

__all__ = ["lean_schedule", "is_default_form"]


def _root_stmts(func: tirx.PrimFunc) -> list[Any] | None:
    body = func.body
    if not isinstance(body, s_tir.SBlockRealize):
        return None
    inner = body.block.body
    return list(inner.seq) if isinstance(inner, tirx.SeqStmt) else [inner]


def is_default_form(func: tirx.PrimFunc) -> bool:
    """True when every root-level statement is a perfect serial loop nest around exactly one block."""
    stmts = _root_stmts(func)
    if stmts is None:
        return False
    for s in stmts:
        while isinstance(s, tirx.For):
            if s.kind != tirx.ForKind.SERIAL or s.annotations:
                return False
            s = s.body
        if not isinstance(s, s_tir.SBlockRealize):
            return False
        nested = []
        tvm_ffi.structural_walk(
            s.block.body, [(s_tir.SBlock, lambda b: nested.append(b) or tvm_ffi.WalkResult.ADVANCE)], order="pre"
        )
        if nested:
            return False
    return True


def _is_reduction(block: s_tir.SBlock) -> bool:
    return any(int(iv.iter_type) == tirx.IterVar.CommReduce for iv in block.iter_vars)


def _realize_of(sch: s_tir.Schedule, block_rv: Any) -> s_tir.SBlockRealize | None:
    target = sch.get(block_rv)
    found: list[Any] = []

    def on_realize(r: Any) -> tvm_ffi.WalkResult:
        if r.block.same_as(target):
            found.append(r)
        return tvm_ffi.WalkResult.ADVANCE

    tvm_ffi.structural_walk(sch.mod["main"].body, [(s_tir.SBlockRealize, on_realize)], order="pre")
    return found[0] if found else None


def _innermost_spatial_loop(sch: s_tir.Schedule, block_rv: Any) -> Any | None:
    """The last loop around the block before the first loop that drives a reduction iterator."""
    realize = _realize_of(sch, block_rv)
    if realize is None:
        return None
    red_vars: list[Any] = []
    for iv, value in zip(realize.block.iter_vars, realize.iter_values):
        if int(iv.iter_type) == tirx.IterVar.CommReduce:
            tvm_ffi.structural_walk(
                value, [(tirx.Var, lambda v: red_vars.append(v) or tvm_ffi.WalkResult.ADVANCE)], order="pre"
            )
    target = None
    for loop in sch.get_loops(block_rv):
        if any(sch.get(loop).loop_var.same_as(v) for v in red_vars):
            break
        target = loop
    return target


def _children(sch: s_tir.Schedule) -> list[Any]:
    return list(sch.get_child_blocks(sch.get_sblock("root")))


def _written(block: s_tir.SBlock) -> Any | None:
    return block.writes[0].source if len(block.writes) == 1 else None  # a TensorRegion


def _same_shape(a: Any, b: Any) -> bool:
    return len(a.shape) == len(b.shape) and all(tvm_ffi.structural_equal(x, y) for x, y in zip(a.shape, b.shape))


def _reads_pointwise(block: s_tir.SBlock, buf: Any) -> bool:
    """True when ``block`` is one store into a buffer of ``buf``'s shape whose every read of ``buf`` is at
    the store's own indices (the same iteration domain: a pad that grows the tensor is not pointwise)."""
    store = block.body
    if buf is None or not isinstance(store, tirx.BufferStore) or block.init is not None:
        return False
    if not _same_shape(store.buffer, buf):
        return False
    ivs = list(block.iter_vars)  # the store must be a bijection: at exactly the block's own iterators
    if len(ivs) != len(store.indices) or not all(
        idx.same_as(iv.var) and tvm_ffi.structural_equal(iv.dom.extent, ext)
        for idx, iv, ext in zip(store.indices, ivs, store.buffer.shape)
    ):
        return False
    ok = [True]

    shape = const_shape(buf)

    def on_load(ld: Any) -> tvm_ffi.WalkResult:
        if ld.source.same_as(buf):
            ok[0] = ok[0] and same_element(ld.indices, store.indices, shape)
        return tvm_ffi.WalkResult.ADVANCE

    tvm_ffi.structural_walk(store.value, [(TensorLoad, on_load)], order="pre")
    return ok[0]



def _after_reduction(sch: s_tir.Schedule, rv: Any, seen: set[str] | None = None) -> bool:
    """Does the block (transitively) read the result of a reduction?"""
    seen = set() if seen is None else seen
    for p in sch.get_producers(rv):
        block = sch.get(p)
        if block.name_hint in seen:
            continue
        seen.add(block.name_hint)
        if _is_reduction(block) or _after_reduction(sch, p, seen):
            return True
    return False


def lean_schedule(func: tirx.PrimFunc, keep: frozenset[str] = frozenset()) -> tirx.PrimFunc:
    """``func`` with inlined elementwise stages and epilogues computed at their reductions (see module doc);
    the blocks named in ``keep`` stay stages of their own (a pad the caller computes at a loop: padded_copy.py)."""
    if not is_default_form(func):
        return func
    sch = s_tir.Schedule(func)
    outputs = {sch.get(b).name_hint for b in sch.get_output_blocks("root")}
    changed = True
    while changed:
        changed = False
        for rv in _children(sch):
            block = sch.get(rv)
            if block.name_hint in outputs or block.name_hint in keep or _is_reduction(block):
                continue
            buf = _written(block)
            if _after_reduction(sch, rv):
                readers = [sch.get(c) for c in sch.get_consumers(rv)]
                if not all(_reads_pointwise(c, buf) for c in readers):
                    continue  # inlined there, a reduction's epilogue would read it at other indices (e.g. a pad)
                if any(_loads_of(c, buf) > 1 for c in readers):
                    continue  # a stage of its own (one scalar at the reduction): inlining copies it per read
            if _nests_heavy(sch, rv):
                continue  # its own scalar stage (below): inlined, its expression would nest in the next one
            try:
                sch.compute_inline(rv)
                changed = True
            except TVM_ERRORS:  # ScheduleError and other TVM errors
                continue
    _scalar_stages(sch, outputs)
    for rv in _children(sch):
        block = sch.get(rv)
        if not _is_reduction(block):
            continue
        consumers = list(sch.get_consumers(rv))
        if len(consumers) != 1 or not _reads_pointwise(sch.get(consumers[0]), _written(block)):
            continue  # only a pure epilogue, which reads each accumulator right where it writes
        loop = _innermost_spatial_loop(sch, rv)
        if loop is None:
            continue
        try:
            sch.reverse_compute_at(consumers[0], loop, preserve_unit_loops=True)
        except TVM_ERRORS:  # ScheduleError and other TVM errors
            continue
        _decompose_init(sch, rv, loop)
        stage = consumers[0]
        while stage is not None:  # the rest of the epilogue chain follows, one scalar stage after another
            nxt = list(sch.get_consumers(stage))
            if len(nxt) != 1 or not _reads_pointwise(sch.get(nxt[0]), _written(sch.get(stage))):
                break
            try:
                sch.reverse_compute_at(nxt[0], loop, preserve_unit_loops=True)
            except TVM_ERRORS:
                break
            stage = nxt[0]
    return sch.mod["main"]


def _heavy(block: s_tir.SBlock) -> bool:
    """Does the stage compute in 64 bits or call a helper (a requantization, a fixed-point function)?
    Two such stages are not nested by inlining: requantization reads its input several times (rounding,
    sign), so each inlined stage would copy the previous ones and a chain of n stages would grow as 2^n,
    past what TVM's simplifier can handle (a hard sigmoid ADD -> MUL -> MUL took minutes)."""
    store = block.body
    if not isinstance(store, tirx.BufferStore):
        return False
    found = [False]

    def on_expr(e: Any) -> tvm_ffi.WalkResult:
        if isinstance(e, TensorLoad):
            return tvm_ffi.WalkResult.SKIP  # its indices are int64 in TVM's default form: not the arithmetic
        if isinstance(e, tirx.Cast) and str(e.ty) == "int64" or (
                isinstance(e, tvm.ir.Call) and isinstance(e.op, tvm.ir.Op) and e.op.name.endswith("call_pure_extern")):
            found[0] = True  # a widening to 64-bit arithmetic, or a helper's call
        return tvm_ffi.WalkResult.ADVANCE

    tvm_ffi.structural_walk(store.value, [(Expr, on_expr)], order="pre")
    return found[0]


def _nests_heavy(sch: s_tir.Schedule, rv: Any) -> bool:
    """Would inlining the block put one heavy expression inside another (its one elementwise reader is heavy
    too)? Only then is it kept a stage of its own: a heavy stage read by a cheap one (a requantization read
    by its clamp) inlines as before, and the reader becomes the heavy stage the next one must not swallow."""
    consumer = _elementwise_consumer(sch, rv)
    return consumer is not None and _heavy(sch.get(rv)) and _heavy(sch.get(consumer))


def _elementwise_consumer(sch: s_tir.Schedule, rv: Any) -> Any | None:
    """The block's one consumer when it is a non-reduction stage storing one element per iteration."""
    consumers = list(sch.get_consumers(rv))
    if len(consumers) != 1:
        return None
    block = sch.get(consumers[0])
    if _is_reduction(block) or not isinstance(block.body, tirx.BufferStore) or block.init is not None:
        return None
    return consumers[0]


def _scalar_stages(sch: s_tir.Schedule, outputs: set[str]) -> None:
    """Each heavy stage the inlining left before a heavy reader (not after a reduction: those are epilogues,
    moved below) is computed at its reader's innermost loop, last stage first: its buffer compacts to one
    element, a C local, and every stage's expression stays its own size whatever the chain's length."""
    for rv in reversed(_children(sch)):
        block = sch.get(rv)
        if block.name_hint in outputs or _is_reduction(block) or not _nests_heavy(sch, rv) or _after_reduction(sch, rv):
            continue
        loops = list(sch.get_loops(_elementwise_consumer(sch, rv)))
        if not loops:
            continue
        try:
            sch.compute_at(rv, loops[-1], preserve_unit_loops=True)
        except TVM_ERRORS:  # ScheduleError: left a buffer of its own
            continue


def _loads_of(block: s_tir.SBlock, buf: Any) -> int:
    """How many times ``block``'s body reads ``buf``."""
    n = [0]

    def on_load(ld: Any) -> tvm_ffi.WalkResult:
        n[0] += ld.source.same_as(buf)
        return tvm_ffi.WalkResult.ADVANCE

    tvm_ffi.structural_walk(block.body, [(TensorLoad, on_load)], order="pre")
    return n[0]


def _decompose_init(sch: s_tir.Schedule, rv: Any, spatial: Any) -> None:
    """Move the reduction's initialisation out of its reduction loops (one store before them instead of
    a test on every tap; also what lets C compilers see the accumulator is always initialised)."""
    loops = list(sch.get_loops(rv))
    for k, lp in enumerate(loops[:-1]):
        if sch.get(lp).same_as(sch.get(spatial)):
            try:
                sch.decompose_reduction(rv, loops[k + 1])
            except TVM_ERRORS:  # ScheduleError: left with its init inside
                pass
            return
