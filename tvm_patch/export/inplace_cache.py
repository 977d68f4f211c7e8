"""Cache mode's workspace plan proven on its TIR, as `stage_arena.py` proves recompute mode's.

`patch/cache_stage.py` places its buffers itself (`STAGE_OFFSETS_ATTR`, `patch/cache_plan.py`): per-patch region
buffers, one-channel copies and the row / column caches, with lifetimes and aliases it knows by construction. This
module checks the plan against the function's TIR alone (loads, stores, loops, conditions, indices), so that a plan
the TIR does not bear out is an error, never a silent wrong kernel:

- lifetimes: a per-patch buffer lives from the first to the last statement of the patch body that touches it
  (the statements under the patch loops, in order), a cache (`CACHE_SUFFIXES`: the stage allocates every buffer
  above the patch loops, so the name says which are caches; a buffer taken for per-patch must pass the checks
  below, so a wrong name is a refusal, never a wrong proof) always. Two buffers whose bytes overlap must not
  live at once, except as a proven in-place depthwise step; a buffer one statement uses (the one-channel copy)
  that shares bytes is written whole before it is read there (`_fills_whole_first`: by one store, or by several
  whose nests run before the reads' and whose sure writes cover the reads in every patch: an output channel's
  ring and live part, `_filled_by_stores`);
- an in-place depthwise step (`_prove_depthwise`): at the one statement where the input's life ends and the
  output's starts, at the same offset, the input is read only by a copy into a one-channel buffer, inside a
  loop over channels whose every write of the output comes after that copy; `inplace_conv.channel_or_pixel_safe`
  shows from indices and shapes that no write of channel c reaches bytes of a channel copied later;
- a layer written over its input's buffer at the same offset (`cache_plan.over_input`, `_prove_over_input`): in
  every patch, every element the two share last read before it is first written, every iteration of the step
  enumerated in program order (`access_times`);
- an in-place update (a residual add written over its skip's buffer, `_prove_update`): a statement that reads
  and writes one buffer reads it only at the element it stores, in the same iteration, before the store, each
  element stored once (each store's indices in mixed radix, as `stage_arena._prove_update`; several stores of
  different elements, as a pair loop and its odd last pixel, disjoint in every patch); and the statements before it that fill that buffer from
  the caches of the updated value (the add's cached rows and columns: caches the buffer is copied to after
  the update) write, in every patch, none of the elements the update reads (per-axis bounds, each patch's
  indices substituted);
- nothing is carried from one patch to the next (`_written_before_read`): in every patch, every element of a
  per-patch buffer that a statement reads was surely written by an earlier statement of the same patch (reads
  over-approximated by per-axis bounds; writes under-approximated: a store in no condition that varies within the
  patch, or an if and its else storing one element, each index a constant plus loop variables in mixed radix, as
  a register-blocked channel loop writes); a buffer used by
  one statement only (the one-channel copy) is filled whole before it is read (`_prove_depthwise`).

Not shown here: that the values are the right ones (the executor `run_numpy_cached` and the bit-exact C tests).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import tvm
import tvm_ffi
from tvm import s_tir, tirx
from tvm.ir.expr import TensorLoad

from tvm_patch.codegen.c_types import buffer_bytes, dtype_bytes
from tvm_patch.codegen.workspace import is_c_local
from tvm_patch.errors import TvmPatchError
from tvm_patch.export.access_times import flat_elements, iterations, timed_accesses
from tvm_patch.export.inplace import Access, UnmodelledTIR, ordered_accesses
from tvm_patch.export.inplace_conv import channel_or_pixel_safe
from tvm_patch.names import STAGE_OFFSETS_ATTR
from tvm_patch.quant.fixedpoint import is_c_barrier
from tvm_patch.tir_util import mixed_radix, substitute_vars, uses_var
from tvm_patch.patch.stage_forms import ONE_NEST, form_default, with_form

__all__ = ["CachedProof", "prove_cached_plan"]

CACHE_SUFFIXES = ("_rows", "_cols")  # `cache_stage`'s names of the row and column caches


@dataclass
class CachedProof:
    """What `prove_cached_plan` established: buffers' lives (statement indices; caches: the whole stage) and the
    in-place steps it proved."""

    lives: dict[str, tuple[int, int]]
    caches: tuple[str, ...]
    depthwise: tuple[tuple[str, str, int], ...]  # (input, output, statement)
    updates: tuple[tuple[str, int], ...]  # (buffer, statement)
    over: tuple[tuple[str, str, int], ...] = ()  # (input, output, statement): `_prove_over_input`


@dataclass
class _Body:
    patch_loops: list[Any]  # the For nodes of the batch and patch loops, outermost first
    stmts: list[Any]
    accs: list[list[Access]]
    caches: dict[str, Any]
    bufs: dict[str, Any]  # every buffer by name: the root block's and the caches


def _cached_body(func: tirx.PrimFunc) -> _Body:
    """The statements under the batch and patch loops of a cache-mode stage (`cache_stage.build_cached_stage`)."""
    realize = func.body
    if not isinstance(realize, s_tir.SBlockRealize):
        raise UnmodelledTIR("no root block")
    root = realize.block
    bufs = {b.name: b for b in root.alloc_buffers}
    caches: dict[str, Any] = {}
    node = root.body
    while isinstance(node, tirx.SeqStmt) and isinstance(node.seq[0], tirx.AllocBuffer):
        seq = list(node.seq)
        while len(seq) > 1 and isinstance(seq[0], tirx.AllocBuffer):
            buf = seq.pop(0).buffer
            # allocated above the patch loops: the caches and, since the stage allocates them there too (no pass
            # may compact them), the per-patch buffers; which is which the proof does not take on trust: a cache
            # is treated as live throughout, every other buffer is proven to carry nothing between patches
            (caches if buf.name.endswith(CACHE_SUFFIXES) else bufs)[buf.name] = buf
        if len(seq) != 1:
            raise UnmodelledTIR("statements beside the patch loops")
        node = seq[0]
    loops = []
    while isinstance(node, tirx.For) and len(loops) < 3:
        loops.append(node)
        node = node.body
    if len(loops) != 3:
        raise UnmodelledTIR("not the batch and patch loops")
    stmts = [s for s in (node.seq if isinstance(node, tirx.SeqStmt) else [node]) if not is_c_barrier(s)]
    counter = [0]
    accs = [ordered_accesses(s, counter, evaluate=False) for s in stmts]
    return _Body(loops, stmts, accs, caches, bufs | caches)


def _fills_whole_first(body: _Body, k: int, name: str, patches: list[dict[Any, Any]]) -> bool:
    """A buffer that only statement k uses is written whole before any read of it, in each iteration of the loops
    that enclose both (the one-channel copy; an output channel's buffer filled by its ring and live part): it
    carries nothing from one use to the next. One store over the whole buffer, or `_filled_by_stores`."""
    accs = [a for a in body.accs[k] if a.buffer.name == name]
    stores = [a for a in accs if a.store]
    if len(stores) != 1 or stores[0].guarded:
        return _filled_by_stores(body, k, name, accs, patches)
    cp = stores[0]
    reads = [a for a in accs if not a.store]
    if any(a.order < cp.order for a in reads):
        return False
    n = len(cp.loops)
    for a in reads:
        n = min(n, next((i for i, (x, y) in enumerate(zip(cp.loops, a.loops)) if not x.same_as(y)),
                        min(len(cp.loops), len(a.loops))))
    inner = cp.loops[n:]
    return _store_once(replace(cp, loops=tuple(inner))) and all(isinstance(lp.extent, tirx.IntImm) for lp in inner) \
        and math.prod(int(lp.extent) for lp in inner) == buffer_bytes(body.bufs[name]) // dtype_bytes(str(cp.buffer.ty.dtype))


def _filled_by_stores(body: _Body, k: int, name: str, accs: list[Access], patches: list[dict[Any, Any]]) -> bool:
    """Several stores fill the buffer before its reads: the loops enclosing every access of it (the channel loop)
    appear in none of its indices, so each of their iterations does the same to it; a store and a read share no
    other loop (each read's nest runs after the stores' nests are done, in program order); and in every patch the
    stores surely written before each read (`_patch_accesses`: definite boxes, in program order) cover what it
    reads."""
    common = list(accs[0].loops)
    for a in accs[1:]:
        n = next((i for i, (x, y) in enumerate(zip(common, a.loops)) if not x.same_as(y)), min(len(common), len(a.loops)))
        common = common[:n]
    if any(uses_var(i, lp.loop_var) for a in accs for i in a.indices for lp in common):
        return False
    for st in (a for a in accs if a.store):
        for ld in (a for a in accs if not a.store):
            if any(lp.same_as(other) for lp in st.loops[len(common):] for other in ld.loops):
                return False
    buf = body.bufs[name]
    try:
        for env in patches:
            written = np.zeros([int(d) for d in buf.shape], bool)
            for r in _patch_accesses(body.stmts[k], env):
                if r.name != name:
                    continue
                if r.store and r.definite:
                    written[tuple(slice(lo, hi + 1) for lo, hi in r.box)] = True
                elif not r.store and not written[tuple(slice(max(lo, 0), hi + 1) for lo, hi in r.box)].all():
                    return False
    except UnmodelledTIR:
        return False
    return True


def _lives(body: _Body) -> dict[str, tuple[int, int]]:
    life: dict[str, tuple[int, int]] = {}
    for k, accs in enumerate(body.accs):
        for a in accs:
            f, l = life.get(a.buffer.name, (k, k))
            life[a.buffer.name] = (min(f, k), max(l, k))
    return life


def _units(loops: Any) -> dict[Any, Any]:
    """Loops of one iteration -> their start (e.g. a channel loop `for ax0 in range(ch, ch + 1)`)."""
    return {lp.loop_var: lp.min for lp in loops if isinstance(lp.extent, tirx.IntImm) and int(lp.extent) == 1}


def _channel_step(body: _Body, k: int, src: str, dst: str) -> tuple[Any, Any, Any] | None:
    """(src buffer, dst buffer, statement k) when statement k is a loop (over channels) and both buffers are
    three-dimensional of one dtype, else None: what both in-place depthwise forms have in common."""
    s, d = body.bufs[src], body.bufs[dst]
    if str(s.ty.dtype) != str(d.ty.dtype) or len(s.shape) != 3 or len(d.shape) != 3:
        return None
    stmt = body.stmts[k]
    return (s, d, stmt) if isinstance(stmt, tirx.For) else None


def _prove_depthwise(body: _Body, k: int, src: str, dst: str) -> bool:
    """Statement k writes `dst` over `src` (same offset), channel by channel, from a copy (module docstring)."""
    found = _channel_step(body, k, src, dst)
    if found is None:
        return False
    s, d, stmt = found
    ch = stmt.loop_var
    accs = body.accs[k]
    s_acc = [a for a in accs if a.buffer.same_as(s)]
    if len(s_acc) != 1 or s_acc[0].store or s_acc[0].guarded:
        return False
    ld = s_acc[0]
    copies = [a for a in accs if a.store and not a.guarded and a.loops == ld.loops and a.order == ld.order + 1]
    if len(copies) != 1 or copies[0].buffer.name in body.caches or copies[0].buffer.same_as(d):
        return False
    cp = copies[0]
    if any(not a.store and a.buffer.same_as(cp.buffer) and a.order < cp.order for a in accs):
        return False
    # the copy fills its whole buffer in each channel's iteration (each element once, as many as it holds)
    inner = [lp for lp in cp.loops if not lp.same_as(stmt)]
    if not _store_once(replace(cp, loops=tuple(inner))) or not all(isinstance(lp.extent, tirx.IntImm) for lp in inner) or \
            math.prod(int(lp.extent) for lp in inner) != math.prod(int(x) for x in cp.buffer.shape):
        return False
    ana = tvm.sym.Analyzer()
    s_idx = [tirx.const(0, "int32")] + [ana.simplify(substitute_vars(i, _units(ld.loops))) for i in ld.indices]
    s_shape = (1, *(int(x) for x in s.shape))
    o_shape = (1, *(int(x) for x in d.shape))
    for st in (a for a in accs if a.buffer.same_as(d)):
        if not st.store:
            continue
        if st.order < cp.order or not st.loops or not st.loops[0].same_as(stmt):
            return False
        o_idx = [tirx.const(0, "int32")] + [ana.simplify(substitute_vars(i, _units(st.loops))) for i in st.indices]
        if not channel_or_pixel_safe([ch], s_idx, o_idx, s_shape, o_shape):
            return False
    return True


def _prove_depthwise_out(body: _Body, k: int, src: str, dst: str) -> bool:
    """Statement k writes `dst` over `src` (same offset), channel by channel, each channel computed from `src` itself
    into a one-channel buffer and then copied over (`cache_plan.copies_output`): in the loop over channels, every
    access of `src` reads that channel, and the one store of `dst` comes after all of them in a nest of its own, so
    channel c's output, which lands on bytes of channels at most c (`channel_or_pixel_safe`), is written after
    channel c was read whole and before a later channel is read."""
    found = _channel_step(body, k, src, dst)
    if found is None:
        return False
    s, d, stmt = found
    ch = stmt.loop_var
    reads = [a for a in body.accs[k] if a.buffer.same_as(s)]
    writes = [a for a in body.accs[k] if a.buffer.same_as(d)]
    if not reads or any(a.store for a in reads) or len(writes) != 1 or not writes[0].store or writes[0].guarded:
        return False
    st = writes[0]
    if len(st.loops) < 2 or not st.loops[0].same_as(stmt):
        return False
    for a in reads:  # in the channel loop, before the store, outside the store's own nest
        if not a.loops or not a.loops[0].same_as(stmt) or a.order > st.order or any(
                lp.same_as(st.loops[1]) for lp in a.loops):
            return False
    ana = tvm.sym.Analyzer()
    s_shape = (1, *(int(x) for x in s.shape))
    o_shape = (1, *(int(x) for x in d.shape))
    o_idx = [tirx.const(0, "int32")] + [ana.simplify(substitute_vars(i, _units(st.loops))) for i in st.indices]
    for a in reads:
        s_idx = [tirx.const(0, "int32")] + [ana.simplify(substitute_vars(i, _units(a.loops))) for i in a.indices]
        if not channel_or_pixel_safe([ch], s_idx, o_idx, s_shape, o_shape):
            return False
    return True


def _store_once(st: Access) -> bool:
    """The store's indices are each a constant plus loop variables in mixed radix (`tir_util.mixed_radix`: one
    loop, or a loop split into blocks, as a register-blocked channel loop or a loop over pixel pairs writes), no
    loop in two indices, every loop of more than one iteration in one (so each element is stored by one
    iteration). A loop whose start or extent is not a constant (a bound in the patch index) may only be the
    outermost of its index."""
    ana = tvm.sym.Analyzer()
    units = _units(st.loops)
    spans = [(lp.loop_var, int(lp.min) if isinstance(lp.min, tirx.IntImm) else -1,
              int(lp.extent) if isinstance(lp.extent, tirx.IntImm) else 0) for lp in st.loops if lp.loop_var not in units]
    used: set[int] = set()
    for i in (ana.simplify(substitute_vars(x, units)) for x in st.indices):
        ks = mixed_radix(i, spans)
        if ks is None or used.intersection(ks):
            return False
        used.update(ks)
    return len(used) == len(spans)


def _same_element(a: Access, b: Access) -> bool:
    """Accesses in the same loops at indices that are provably equal."""
    if len(a.loops) != len(b.loops) or not all(x.same_as(y) for x, y in zip(a.loops, b.loops)):
        return False
    ana = tvm.sym.Analyzer()
    return all(ana.can_prove_equal(substitute_vars(x, _units(a.loops)), substitute_vars(y, _units(b.loops)))
               for x, y in zip(a.indices, b.indices))


def _read_at_a_store(a: Access, stores: list[Access]) -> bool:
    """A read of the element a later store of the same iteration writes."""
    return any(st.order > a.order and _same_element(a, st) for st in stores)


Box = list[tuple[int, int]]  # per-axis (lowest, highest) index


@dataclass
class _Rec:
    """One load or store of a patch's statement: the buffer, the per-axis bounds of its indices, and (stores) whether
    it surely writes every element of that box (unconditionally, or in both arms of an if, each index a loop
    variable or a constant)."""

    store: bool
    name: str
    box: Box
    definite: bool = False


def _patch_accesses(stmt: Any, env: dict[Any, Any]) -> list[_Rec]:
    """The loads and stores of `stmt` with the patch loops' variables at the values of `env` (conditions that then
    hold or fail are followed, others taken both ways, their stores not definite)."""
    ana = tvm.sym.Analyzer()
    env = dict(env)  # the patch loops' values, then each one-iteration loop's start
    out: list[_Rec] = []

    def box(indices: Any) -> Box:
        b = []
        for i in indices:
            bound = ana.const_int_bound(ana.simplify(substitute_vars(i, env)))
            b.append((int(bound.min_value), int(bound.max_value)))
        return b

    spans: dict[Any, tuple[int, int]] = {}  # each walked loop's (start, extent), the patch's values substituted

    def exact(indices: Any, loops: list[Any]) -> bool:
        """Each index sweeps every value between its bounds: a constant plus loop variables in mixed radix
        (coefficients 1, e1, e1 * e2, ... for loops of extents e1, e2, ..., the inner ones from 0: a channel loop
        split into register blocks), no loop in two indices."""
        used = set()
        for i in indices:
            i = ana.simplify(substitute_vars(i, env))
            if isinstance(i, tirx.IntImm):
                continue
            ks = mixed_radix(i, [(v, *spans[v]) for v in loops])
            if not ks or used.intersection(ks):
                return False
            used.update(ks)
        return True

    def loads(expr: Any) -> None:
        def on_load(ld: Any) -> tvm_ffi.WalkResult:
            out.append(_Rec(False, ld.source.name, box(ld.indices)))
            return tvm_ffi.WalkResult.ADVANCE

        tvm_ffi.structural_walk(expr, [(TensorLoad, on_load)], order="pre")

    def top_stores(node: Any) -> list[Any]:
        return [s for s in (node.seq if isinstance(node, tirx.SeqStmt) else [node]) if isinstance(s, tirx.BufferStore)]

    def walk(node: Any, loops: list[Any], sure: bool) -> None:
        if isinstance(node, tirx.For):
            lo = ana.simplify(substitute_vars(node.min, env))
            ext = ana.simplify(substitute_vars(node.extent, env))
            if isinstance(ext, tirx.IntImm) and int(ext) == 1:  # one iteration: the variable is its start
                env[node.loop_var] = lo
                walk(node.body, loops, sure)
                return
            if not isinstance(lo, tirx.IntImm) or not isinstance(ext, tirx.IntImm):
                raise UnmodelledTIR("a loop bound that depends on more than the patch")
            if int(ext) <= 0:
                return
            ana.bind(node.loop_var, tvm.ir.Range.from_min_extent(lo, ext))
            spans[node.loop_var] = (int(lo), int(ext))
            walk(node.body, loops + [node.loop_var], sure)
        elif isinstance(node, tirx.SeqStmt):
            for s in node.seq:
                walk(s, loops, sure)
        elif isinstance(node, tirx.AttrStmt) and node.attr_key == ONE_NEST:  # statements kept one (stage_forms.py)
            walk(node.body, loops, sure)
        elif isinstance(node, tirx.BufferStore):
            loads(node.value)
            out.append(_Rec(True, node.buffer.name, box(node.indices), sure and exact(node.indices, loops)))
        elif isinstance(node, tirx.IfThenElse):
            loads(node.condition)
            cond = ana.simplify(substitute_vars(node.condition, env))
            known = isinstance(cond, tirx.IntImm)
            if not (known and int(cond) == 0):
                walk(node.then_case, loops, sure and known)
            if node.else_case is not None and not (known and int(cond) == 1):
                walk(node.else_case, loops, sure and known)
            if not known and node.else_case is not None:  # one element stored either way
                for a in top_stores(node.then_case):
                    for b in top_stores(node.else_case):
                        if a.buffer.same_as(b.buffer) and all(
                                tvm_ffi.structural_equal(x, y) for x, y in zip(a.indices, b.indices)):
                            out.append(_Rec(True, a.buffer.name, box(a.indices), sure and exact(a.indices, loops)))
        else:
            raise UnmodelledTIR(type(node).__name__)

    walk(stmt, [], True)
    return out


def _boxes(stmt: Any, name: str, env: dict[Any, Any]) -> tuple[Box | None, Box | None]:
    """Per-axis bounds of the elements of buffer `name` that `stmt` stores and loads in the patch of `env`:
    (stores, loads), None where there are none."""
    boxes: list[Box | None] = [None, None]
    for r in _patch_accesses(stmt, env):
        if r.name == name:
            old = boxes[not r.store]
            boxes[not r.store] = r.box if old is None else [(min(x[0], y[0]), max(x[1], y[1])) for x, y in zip(old, r.box)]
    return boxes[0], boxes[1]


def _written_before_read(body: _Body, tracked: dict[str, Any], env: dict[Any, Any]) -> str | None:
    """In the patch of `env`, is every element of a tracked buffer that a statement reads surely written by an
    earlier statement of the same patch? The first buffer for which that fails, else None."""
    written = {n: np.zeros([int(d) for d in b.shape], bool) for n, b in tracked.items()}
    for stmt in body.stmts:
        recs = _patch_accesses(stmt, env)
        for r in recs:
            if not r.store and r.name in written:
                w = written[r.name]
                sl = tuple(slice(max(lo, 0), min(hi, d - 1) + 1) for (lo, hi), d in zip(r.box, w.shape))
                if not w[sl].all():
                    return r.name
        for r in recs:
            if r.store and r.definite and r.name in written:
                written[r.name][tuple(slice(lo, hi + 1) for lo, hi in r.box)] = True
    return None


def _disjoint(a: Box | None, b: Box | None) -> bool:
    return a is None or b is None or any(x[1] < y[0] or y[1] < x[0] for x, y in zip(a, b))


def _prove_update(body: _Body, k: int, name: str, patches: list[dict[Any, Any]]) -> bool:
    """Statement k updates buffer `name` in place (module docstring): reads at the element stored, each element
    stored once, and the updated value's cache fills before it clear of what it reads, in every patch."""
    buf = body.bufs[name]
    accs = [a for a in body.accs[k] if a.buffer.same_as(buf)]
    stores = [a for a in accs if a.store]
    if not all(_store_once(st) for st in stores) or not all(a.store or _read_at_a_store(a, stores) for a in accs):
        return False
    if any(not _same_element(st, stores[0]) for st in stores[1:]):
        # several stores of other elements (pixel pairs, then an odd last pixel alone): in every patch, disjoint
        try:
            for env in patches:
                boxes = [r.box for r in _patch_accesses(body.stmts[k], env) if r.store and r.name == name]
                if not all(_disjoint(a, b) for x, a in enumerate(boxes) for b in boxes[x + 1:]):
                    return False
        except UnmodelledTIR:
            return False
    return _fills_clear(body, k, name, patches)


def _fills_clear(body: _Body, k: int, name: str, patches: list[dict[Any, Any]]) -> bool:
    """The updated value's cache fills before statement k (from its caches into buffer `name`) write, in every
    patch, none of the elements statement k reads."""
    buf = body.bufs[name]
    # the updated value's caches: filled from this buffer after k, before the buffer is next updated
    later_updates = [j for j in range(k + 1, len(body.stmts)) if _reads_and_writes(body, j, name)]
    end = later_updates[0] if later_updates else len(body.stmts)
    own = {a.buffer.name for j in range(k + 1, end) if any(not b.store and b.buffer.same_as(buf) for b in body.accs[j])
           for a in body.accs[j] if a.store and a.buffer.name in body.caches}
    fills = [j for j in range(k) if any(a.store and a.buffer.same_as(buf) for a in body.accs[j])
             and any(not a.store and a.buffer.name in own for a in body.accs[j])]
    try:
        for env in patches:
            read = _boxes(body.stmts[k], name, env)[1]
            if not all(_disjoint(_boxes(body.stmts[j], name, env)[0], read) for j in fills):
                return False
    except UnmodelledTIR:
        return False
    return True


def _prove_window_update(body: _Body, k: int, name: str, patches: list[dict[Any, Any]]) -> bool:
    """Statement k computes values from elements of buffer `name` and stores them over elements of it that no later
    iteration reads (an in-place depthwise layer written over its input's region at the region's top-left corner,
    `cache_stage`): one store, each element once, its loops enclosing every load, each load before it in the
    iteration; then, exactly in every patch (every index affine in the loops, enumerated), the last iteration that
    loads an element is no later than the one that stores over it; and the cache fills before k clear of what k
    reads (`_fills_clear`)."""
    buf = body.bufs[name]
    accs = [a for a in body.accs[k] if a.buffer.same_as(buf)]
    stores = [a for a in accs if a.store]
    loads = [a for a in accs if not a.store]
    if len(stores) != 1 or stores[0].guarded or not loads or any(a.guarded for a in loads) \
            or not _store_once(stores[0]):
        return False
    st = stores[0]
    outer = st.loops
    if any(len(ld.loops) < len(outer) or not all(x.same_as(y) for x, y in zip(outer, ld.loops)) or ld.order > st.order
           for ld in loads):
        return False
    strides = [math.prod(int(d) for d in buf.shape[i + 1:]) for i in range(len(buf.shape))]
    ana = tvm.sym.Analyzer()

    def grid(loops: Any, env: dict[Any, Any]) -> tuple[list[Any], list[np.ndarray], int] | None:
        """The loops' variables, their values at every iteration in execution order (lexicographic), and the
        number of iterations."""
        vars_, ranges = [], []
        for lp in loops:
            lo = ana.simplify(substitute_vars(lp.min, env))
            ext = ana.simplify(substitute_vars(lp.extent, env))
            if not isinstance(lo, tirx.IntImm) or not isinstance(ext, tirx.IntImm):
                return None
            vars_.append(lp.loop_var)
            ranges.append((int(lo), max(int(ext), 0)))
        return (vars_, *iterations(ranges))

    def address(indices: Any, env: dict[Any, Any], vars_: list[Any], values: list[np.ndarray],
                n: int) -> np.ndarray | None:
        """The flat element each of the n iterations (``values`` of ``vars_``) addresses; None where not affine."""
        return flat_elements(ana, indices, strides, env, vars_, values, n)

    for env in patches:
        g = grid(outer, env)
        if g is None:
            return False
        vars_, values, n = g
        if n == 0:
            continue
        stored = address(st.indices, env, vars_, values, n)
        if stored is None:
            return False
        last = np.full(buffer_bytes(buf) // dtype_bytes(str(buf.ty.dtype)), -1, np.int64)
        for ld in loads:
            inner = grid(ld.loops[len(outer):], env)
            if inner is None:
                return False
            ivars, ivalues, m = inner
            if m == 0:
                continue
            both = [np.repeat(v, m) for v in values] + [np.tile(v, n) for v in ivalues]
            addr = address(ld.indices, env, vars_ + ivars, both, n * m)
            if addr is None or addr.min() < 0 or addr.max() >= last.size:
                return False
            np.maximum.at(last, addr, np.repeat(np.arange(n), m))
        if (last[stored] > np.arange(n)).any():
            return False
    return _fills_clear(body, k, name, patches)


def _prove_over_input(body: _Body, k: int, src: str, dst: str, patches: list[dict[Any, Any]]) -> bool:
    """Statement k writes `dst` over `src` (same offset and element size, `cache_plan.over_input`): exactly, in every
    patch, each element the two share is read as `src` for the last time before it is first written as `dst`
    (`access_times.timed_accesses`: every iteration of every access in program order; counting an access as
    executed where its condition depends on more than the patch can only make the test stricter); `src` is not
    written there, `dst` not read, and every access stays inside its buffer."""
    s, d = body.bufs[src], body.bufs[dst]
    if str(s.ty.dtype) != str(d.ty.dtype):
        return False
    sizes = {src: math.prod(int(x) for x in s.shape), dst: math.prod(int(x) for x in d.shape)}
    strides = {b.name: [math.prod(int(x) for x in b.shape[i + 1:]) for i in range(len(b.shape))] for b in (s, d)}
    shared = min(sizes.values())
    try:
        for env in patches:
            last_read = np.full(shared, -1, np.int64)
            first_write = np.full(shared, np.iinfo(np.int64).max, np.int64)
            for name, store, times, addrs in timed_accesses(body.stmts[k], env, {src, dst}, strides):
                if store != (name == dst) or addrs.min(initial=0) < 0 or addrs.max(initial=0) >= sizes[name]:
                    return False
                keep = addrs < shared
                (np.minimum if store else np.maximum).at(first_write if store else last_read, addrs[keep], times[keep])
            if (last_read >= first_write).any():
                return False
    except UnmodelledTIR:
        return False
    return True


def _reads_and_writes(body: _Body, k: int, name: str) -> bool:
    accs = [a for a in body.accs[k] if a.buffer.name == name]
    return any(a.store for a in accs) and any(not a.store for a in accs)


def prove_cached_plan(func: tirx.PrimFunc) -> CachedProof:
    """Check a cache-mode stage's workspace plan on its TIR (module docstring); TvmPatchError when it does not hold.
    A stage of two forms (patch/stage_forms.py) has each proven; the proof returned is its default form's."""
    default = form_default(func)
    if default is not None:
        prove_cached_plan(with_form(func, not default))
        return prove_cached_plan(with_form(func, default))
    plan = func.attrs[STAGE_OFFSETS_ATTR]
    offsets = {str(n): int(o) for n, o in plan["offsets"].items()}
    try:
        body = _cached_body(func)
        life = _lives(body)
    except UnmodelledTIR as e:
        raise TvmPatchError(f"internal error: the cache-mode stage's TIR is not in the proven form ({e})") from e
    end = len(body.stmts) - 1
    for name in body.caches:
        life[name] = (0, end)
    if any(n not in body.bufs for n in offsets):
        raise TvmPatchError("internal error: the cache-mode stage's plan places a buffer its TIR does not have")
    sizes = {n: buffer_bytes(body.bufs[n]) for n in offsets}
    if any(o < 0 or o + sizes[n] > int(plan["bytes"]) for n, o in offsets.items()):
        raise TvmPatchError("internal error: the cache-mode stage's plan places a buffer outside its workspace")
    for n, b in body.bufs.items():
        if n not in offsets and not is_c_local(n, buffer_bytes(b)) and n in life:
            raise TvmPatchError(f"internal error: the cache-mode stage's buffer {n} has no place in its plan")
    loops = body.patch_loops
    patches = [{lp.loop_var: tirx.const(v, lp.loop_var.ty.dtype) for lp, v in zip(loops, ijk)}
               for ijk in itertools.product(*(range(int(lp.extent)) for lp in loops))]
    depthwise: list[tuple[str, str, int]] = []
    over: list[tuple[str, str, int]] = []
    names = sorted(n for n in offsets if n in life)
    shares = {a for a in names for b in names if a != b and offsets[a] < offsets[b] + sizes[b]
              and offsets[b] < offsets[a] + sizes[a]}
    for n in shares:  # a one-statement buffer whose bytes others use holds nothing from before its statement
        if n not in body.caches and life[n][0] == life[n][1] and not _fills_whole_first(body, life[n][0], n, patches):
            raise TvmPatchError(f"internal error: the cache-mode stage's buffer {n} shares bytes and is read before "
                                "it is filled")
    for x, a in enumerate(names):
        for b in names[x + 1:]:
            if offsets[a] + sizes[a] <= offsets[b] or offsets[b] + sizes[b] <= offsets[a]:
                continue  # no common byte
            (fa, la), (fb, lb) = life[a], life[b]
            if la < fb or lb < fa:
                continue  # never live at once (a cache always is; a per-patch buffer holds nothing across patches)
            src, dst = (a, b) if la == fb else (b, a)
            k = life[src][1]
            if offsets[a] != offsets[b] or life[dst][0] != k:
                proven = None
            elif _prove_depthwise(body, k, src, dst) or _prove_depthwise_out(body, k, src, dst):
                proven = depthwise
            elif _prove_over_input(body, k, src, dst, patches):
                proven = over
            else:
                proven = None
            if proven is None:
                raise TvmPatchError(f"internal error: the cache-mode stage's plan overlaps {a} and {b} while both "
                                    "live, and no in-place step is proven there")
            proven.append((src, dst, k))
    # nothing carried from patch to patch: what a statement reads of a per-patch buffer, an earlier one wrote (a
    # buffer used by one statement only, the one-channel copy, is written first there: _prove_depthwise)
    tracked = {n: body.bufs[n] for n in names if n not in body.caches and life[n][0] < life[n][1]}
    try:
        stale = next((b for env in patches if (b := _written_before_read(body, tracked, env)) is not None), None)
    except UnmodelledTIR as e:
        raise TvmPatchError(f"internal error: the cache-mode stage's TIR is not in the proven form ({e})") from e
    if stale is not None:
        raise TvmPatchError(f"internal error: the cache-mode stage reads {stale} where no earlier statement of the "
                            "patch surely wrote it")
    updates = []
    for name in names:
        for k in range(life[name][0] + 1, life[name][1] + 1):
            if _reads_and_writes(body, k, name):
                if not (_prove_update(body, k, name, patches) or _prove_window_update(body, k, name, patches)):
                    raise TvmPatchError(f"internal error: the cache-mode stage updates {name} in place at statement "
                                        f"{k} and that cannot be proven safe")
                updates.append((name, k))
    return CachedProof(life, tuple(body.caches), tuple(depthwise), tuple(updates), tuple(over))
