"""The patch stage's per-patch buffers planned like the network: one arena plan and in-place proofs inside it.

Why: the stage PrimFunc allocates one buffer per intermediate (its patch region). Left to TVM's StorageRewrite
they are merged by TVM's own size classes, with no in-place depthwise convolution: the stage's workspace
then exceeds what the analytic patched peak counts (zoo:mbv2-w1.0-r224:int8, 4x4, block:5: 198,960 B
against 175,616). Here they are placed by `tvm_patch.memplan` instead, at steps = the loop nests of the
patch body in execution order, with the same alias rules as the network's plan:

- a depthwise convolution whose input buffer dies there runs channel by channel from a one-channel copy
  (`build_stage(in_place=True)`, as `inplace_conv` does for a whole layer) and may write over its
  input (`DepthwiseInPlace`);
- an elementwise value (a residual add) may write over a same-shaped input that dies there (`InPlace`);
- a residual add after a dense convolution (`build_stage`'s skip accumulation: the convolution computed
  inside the add, one element at a time) writes over its skip; the update is proven here too
  (`_prove_update`), and an unprovable one is an error, never a silent plan.

Each alias is used only when proven on the compacted TIR (`_prove_depthwise`, `_prove_elementwise`): the
proof reads the loads and stores, their loops and indices, never the schedule's intent. The plan is
attached to the PrimFunc (`STAGE_OFFSETS_ATTR`: buffer name -> byte offset in the kernel's workspace);
`tvm_patch.codegen` then lowers the function without StorageRewrite and places each named buffer at its
offset (and checks its size: `codegen.workspace`). Buffers that `workspace.is_c_local` keeps as C locals stay so,
as everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import tvm
import tvm_ffi
from tvm import s_tir, tirx

from tvm_patch.codegen.workspace import is_c_local
from tvm_patch.names import STAGE_OFFSETS_ALT_ATTR, STAGE_OFFSETS_ATTR
from tvm_patch.codegen.c_types import buffer_bytes
from tvm_patch.export.inplace import Access, UnmodelledTIR, ordered_accesses
from tvm_patch.export.inplace_conv import channel_or_pixel_safe
from tvm_patch.tir_util import is_patch_stage, substitute_vars, uses_var
from tvm_patch.errors import TvmPatchError
from tvm_patch.memplan import Alias, Buffer, DepthwiseInPlace, InPlace, Plan, max_live, plan_memory, validate

__all__ = ["StageArena", "has_workspace_plan", "is_patch_stage", "plan_stage_arena", "without_conv_aliases"]

def has_workspace_plan(func: Any) -> bool:
    """True for a kernel whose builder already placed its buffers (`STAGE_OFFSETS_ATTR`: cache mode)."""
    return func.attrs is not None and STAGE_OFFSETS_ATTR in func.attrs


def without_conv_aliases(func: Any) -> Any | None:
    """The stage with its plan without the 1x1 convs written over their inputs (`STAGE_OFFSETS_ALT_ATTR`, set by
    `patch/cache_stage`), else None. The export takes it where the network's arena is no larger: the aliases only
    move the stage's buffers, and the moved offsets change how GCC compiles the whole stage function (mcunet-in0's
    4x4 stage 2 % slower with them, its network's peak outside the stage; session 43)."""
    if func.attrs is None or STAGE_OFFSETS_ALT_ATTR not in func.attrs:
        return None
    return func.with_attr(STAGE_OFFSETS_ATTR, func.attrs[STAGE_OFFSETS_ALT_ATTR]).without_attr(STAGE_OFFSETS_ALT_ATTR)


@dataclass
class StageArena:
    """The plan of one stage PrimFunc's per-patch buffers: sizes, steps, the aliases proven and used."""

    plan: Plan
    buffers: tuple[Buffer, ...]
    proven: tuple[Alias, ...]
    depthwise_in_place: tuple[str, ...] = field(default_factory=tuple)

    @property
    def workspace_bytes(self) -> int:
        return self.plan.arena_size


def _compact(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """`func` lowered far enough that every buffer has its compacted (per-patch) shape and every index is
    written in loop variables: the first passes of the plain-C lowering (`codegen.lowering.lowering_passes`)."""
    passes = [
        s_tir.transform.CanonicalizeLoop(),
        s_tir.transform.LowerCrossThreadReduction(),
        s_tir.transform.LowerInitBlock(),
        s_tir.transform.PlanAndUpdateBufferAllocationLocation(),
        s_tir.transform.ConvertBlocksToOpaque(),
        s_tir.transform.CompactBufferAllocation(),
    ]
    return tvm.transform.Sequential(passes)(tvm.IRModule({"main": func}))["main"]


@dataclass
class _Body:
    """The patch body of a compacted stage: its buffers and, per top-level statement, every access."""

    allocs: dict[str, Any]  # name -> Buffer (the patch block's and nested ones)
    nested: dict[str, int]  # nested allocation name -> statement index
    stmts: list[list[Access]]


def _patch_body(func: tirx.PrimFunc) -> _Body | None:
    """The block under the patch loops (the one that allocates the per-patch buffers) and its accesses."""
    found: list[Any] = []

    def on_block(b: Any) -> tvm_ffi.WalkResult:
        if len(b.alloc_buffers) and not found:
            found.append(b)
            return tvm_ffi.WalkResult.SKIP
        return tvm_ffi.WalkResult.ADVANCE

    tvm_ffi.structural_walk(func.body, [(s_tir.SBlock, on_block)], order="pre")
    if not found:
        return None
    block = found[0]
    allocs = {b.name: b for b in block.alloc_buffers}
    body = block.body
    stmts = list(body.seq) if isinstance(body, tirx.SeqStmt) else [body]
    nested: dict[str, int] = {}
    out: list[list[Access]] = []
    counter = [0]
    for k, stmt in enumerate(stmts):
        def on_nested(blk: Any, k: int = k) -> None:
            for b in blk.alloc_buffers:
                allocs[b.name] = b
                nested[b.name] = k

        try:
            out.append(ordered_accesses(stmt, counter, on_nested, evaluate=False))
        except UnmodelledTIR:
            return None
    return _Body(allocs, nested, out)


def _lifetimes(body: _Body) -> dict[str, tuple[int, int]]:
    life: dict[str, tuple[int, int]] = {}
    for k, accs in enumerate(body.stmts):
        for a in accs:
            name = a.buffer.name
            if name in body.allocs and a.buffer.same_as(body.allocs[name]):
                f, l = life.get(name, (k, k))
                life[name] = (min(f, k), max(l, k))
    return life


def _simplified(indices: list[Any], loops: tuple = ()) -> list[Any]:
    """The indices simplified, the variables of unit loops among `loops` set to 0."""
    units = {lp.loop_var: tirx.const(0, lp.loop_var.ty.dtype) for lp in loops if int(lp.extent) == 1}
    ana = tvm.sym.Analyzer()
    return [ana.simplify(substitute_vars(i, units) if units else i) for i in indices]


def _equal(a: list[Any], b: list[Any]) -> bool:
    return len(a) == len(b) and all(tvm_ffi.structural_equal(x, y) for x, y in zip(a, b))


def _bijective_store(st: Access) -> bool:
    """The store's indices are distinct loop variables of its loops (or 0 on a unit axis), each loop's extent
    the buffer's extent on that axis, and there are no other non-unit loops: each element written once."""
    idx = _simplified(st.indices, st.loops)
    shape = [int(d) for d in st.buffer.shape]
    used = set()
    for i, d in zip(idx, shape):
        if isinstance(i, tirx.IntImm) and int(i) == 0 and d == 1:
            continue
        loop = next((lp for lp in st.loops if lp.loop_var.same_as(i)), None)
        if loop is None or int(loop.min) != 0 or int(loop.extent) != d or id(loop) in used:
            return False
        used.add(id(loop))
    return all(id(lp) in used or int(lp.extent) == 1 for lp in st.loops)


def _prove_elementwise(body: _Body, k: int, src: str, dst: str) -> bool:
    """`dst` may take `src`'s bytes at statement k: dst is written once per element there (one unguarded,
    bijective store), and every read of src in statement k is at the store's element, in the same
    iteration, before the store (earlier statements have finished)."""
    s, d = body.allocs[src], body.allocs[dst]
    if [int(x) for x in s.shape] != [int(x) for x in d.shape] or str(s.ty.dtype) != str(d.ty.dtype):
        return False
    stores = [a for accs in body.stmts for a in accs if a.store and a.buffer.same_as(d)]
    if len(stores) != 1 or stores[0].guarded or stores[0] not in body.stmts[k] or not _bijective_store(stores[0]):
        return False
    st = stores[0]
    target = _simplified(st.indices, st.loops)
    for a in body.stmts[k]:
        if a.buffer.same_as(d) and not a.store:
            return False  # nothing reads dst while it is being written
        if a.buffer.same_as(s) and not _read_at_store(a, st, target):
            return False
    return True


def _read_at_store(a: Access, st: Access, target: list[Any]) -> bool:
    """``a`` is a read of the element store ``st`` writes (``target``: its simplified indices), before the
    store, in the same iteration of the same loops."""
    if a.store or a.order > st.order or len(a.loops) != len(st.loops):
        return False
    return all(x.same_as(y) for x, y in zip(a.loops, st.loops)) and _equal(_simplified(a.indices, a.loops), target)


def _prove_update(body: _Body, k: int, name: str) -> bool:
    """Statement k updates buffer `name` in place (a residual add written over its skip): one unguarded store
    whose indices are each a constant plus loop variables in mixed radix (coefficients 1, e1, e1 * e2, ... for
    loops of extents e1, e2, ...: a loop split into blocks of channels), every non-unit loop in exactly one
    index (each element written once), and every read of the buffer there is at the store's element, before
    it, in the same iteration."""
    buf = body.allocs[name]
    stores = [a for a in body.stmts[k] if a.store and a.buffer.same_as(buf)]
    if len(stores) != 1 or stores[0].guarded:
        return False
    st = stores[0]
    used = set()
    for i in _simplified(st.indices, st.loops):
        loops = [lp for lp in st.loops if int(lp.extent) != 1 and uses_var(i, lp.loop_var)]
        if not loops:
            continue
        coeffs = tvm.sym.detect_linear_equation(i, [lp.loop_var for lp in loops])
        if len(coeffs) != len(loops) + 1 or any(not isinstance(c, tirx.IntImm) for c in coeffs[:-1]):
            return False
        step = 1
        for c, lp in sorted(zip((int(c) for c in coeffs[:-1]), loops), key=lambda t: t[0]):
            if c != step or id(lp) in used or int(lp.min) != 0:
                return False
            used.add(id(lp))
            step *= int(lp.extent)
    if any(int(lp.extent) != 1 and id(lp) not in used for lp in st.loops):
        return False
    target = _simplified(st.indices, st.loops)
    return all(a is st or not a.buffer.same_as(buf) or _read_at_store(a, st, target) for a in body.stmts[k])


def _prove_depthwise(body: _Body, k: int, src: str, dst: str, copy: str) -> bool:
    """`dst` may start at `src`'s offset at statement k: src is read there only by a copy into the kernel-local
    buffer `copy`; dst is written by one store in a loop nest shared with the copy, which comes first in each
    iteration; `channel_or_pixel_safe` shows from indices and shapes that no iteration writes bytes of src
    that a later iteration copies (channel by channel, NHWC or NCHW)."""
    s, d = body.allocs[src], body.allocs[dst]
    if str(s.ty.dtype) != str(d.ty.dtype) or copy not in body.allocs or body.nested.get(copy) != k:
        return False
    accs = body.stmts[k]
    s_loads = [a for a in accs if a.buffer.same_as(s)]
    d_stores = [a for a in accs if a.buffer.same_as(d)]
    c_stores = [a for a in accs if a.store and a.buffer.same_as(body.allocs[copy])]
    if len(s_loads) != 1 or s_loads[0].store or len(d_stores) != 1 or not d_stores[0].store or len(c_stores) != 1:
        return False
    if any(a.store and a.buffer.same_as(d) for j, accs_j in enumerate(body.stmts) if j != k for a in accs_j):
        return False
    ld, st, cp = s_loads[0], d_stores[0], c_stores[0]
    if cp.loops != ld.loops or cp.order < ld.order or ld.guarded or cp.guarded:
        return False
    common = 0
    while common < min(len(cp.loops), len(st.loops)) and cp.loops[common].same_as(st.loops[common]):
        common += 1
    if common == 0 or cp.order > st.order:
        return False
    # the copy is the first child of the innermost common loop that holds it: every iteration copies, then writes
    outer = [lp.loop_var for lp in cp.loops[:common] if int(lp.extent) != 1]
    units = {lp.loop_var: tirx.const(0, lp.loop_var.ty.dtype) for lp in cp.loops + st.loops if int(lp.extent) == 1}
    ana = tvm.sym.Analyzer()
    s_idx = [ana.simplify(substitute_vars(i, units)) for i in ld.indices]
    o_idx = [ana.simplify(substitute_vars(i, units)) for i in st.indices]
    s_shape = tuple(int(x) for x in s.shape)
    o_shape = tuple(int(x) for x in d.shape)
    if len(s_shape) != 4 or s_shape[0] != 1 or len(o_shape) != 4:
        return False
    return channel_or_pixel_safe(outer, s_idx, o_idx, s_shape, o_shape)


def _copies(body: _Body, life: dict[str, tuple[int, int]]) -> list[tuple[int, str, str]]:
    """(statement, source, copy) for every kernel-local buffer filled, in one store, by a load of a buffer
    whose last statement that is: a channel copy (`build_stage(in_place=True)`)."""
    out = []
    for name, k in body.nested.items():
        stores = [a for a in body.stmts[k] if a.store and a.buffer.same_as(body.allocs[name])]
        if len(stores) != 1:
            continue
        srcs = [a for a in body.stmts[k] if not a.store and a.order < stores[0].order and a.loops == stores[0].loops
                and a.buffer.name in life and a.buffer.name != name and a.buffer.name not in body.nested]
        if srcs and life[srcs[-1].buffer.name][1] == k:
            out.append((k, srcs[-1].buffer.name, name))
    return out


def plan_stage_arena(func: tirx.PrimFunc, alignment: int = 16) -> tuple[tirx.PrimFunc, StageArena | None]:
    """`func` (a patch stage) with its per-patch buffers planned in one workspace (see the module docstring),
    `STAGE_OFFSETS_ATTR` set. Returns the function unchanged and None when its patch body is not in the form
    this module models."""
    body = _patch_body(_compact(func))
    if body is None:
        return func, None
    life = _lifetimes(body)
    buffers = []
    for name, buf in body.allocs.items():
        size = buffer_bytes(buf)
        if is_c_local(name, size) or name not in life:
            continue  # a C local (accumulators, requantization steps), or never used
        buffers.append(Buffer(name, size, *life[name]))
    if not buffers:
        return func, None
    planned = {b.name for b in buffers}
    hints: list[Alias] = []
    used_src: set[str] = set()
    taken: set[str] = set()
    for k, src, copy in _copies(body, life):
        dsts = [b.name for b in buffers if b.first == k and b.name not in body.nested and b.name != src]
        for dst in dsts:
            if src in planned and src not in used_src and _prove_depthwise(body, k, src, dst, copy):
                hints.append(DepthwiseInPlace(src, dst, 0))
                used_src.add(src)
                taken.add(dst)
                break
    for b in buffers:
        if b.name in taken or b.name in body.nested:
            continue
        for src in sorted(n for n in planned if life[n][1] == b.first and n != b.name and n not in used_src):
            if _prove_elementwise(body, b.first, src, b.name):
                hints.append(InPlace(src, b.name))
                used_src.add(src)
                break
    for b in buffers:  # a buffer written again after its first statement: a residual add over its skip
        for k in range(b.first + 1, b.last + 1):
            if any(a.store and a.buffer.name == b.name for a in body.stmts[k]) and not _prove_update(body, k, b.name):
                raise TvmPatchError(f"internal error: the patch stage updates {b.name} in place at step {k} "
                                    "and that cannot be proven safe")
    plan = plan_memory(buffers, hints, alignment)
    validate(plan, buffers)
    attr = {"offsets": {n: int(o) for n, o in plan.offsets.items()}, "bytes": int(plan.arena_size),
            "live": max_live(buffers)}
    return func.with_attr(STAGE_OFFSETS_ATTR, attr), StageArena(plan, tuple(buffers), tuple(plan.aliases),
                                                                tuple(sorted(taken)))


