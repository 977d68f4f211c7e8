"""The patch schedule: one TIR PrimFunc computing a stage patch by patch.

`build_stage` takes the TE of `te_stage.stage_te` and applies an s_tir schedule:
split the output's H and W into (patch, inner) by the tile size, reorder to (n, h_outer, w_outer, c,
h_inner, w_inner) (NHWC: (n, h_outer, w_outer, h_inner, w_inner, c)), then, consumers first,
`compute_at` every value's buffer block under w_outer (TVM infers each halo region) and every conv
reduction (and int8 requantization step) under the innermost loop of its epilogue (one element each;
TVM adds the predicate that keeps the conv to the live image, so padding is never convolved). Block
predicates are finally wrapped in `T.likely` so that every buffer compacts to its region (see
`_likely_predicates`).

Analysis helpers: `lower_for_analysis` / `allocated_bytes` / `allocations` (what the PrimFunc allocates)
and `measured_macs_by_patch` (MACs read off the scheduled loop nest).
"""

from __future__ import annotations

import numpy as np
import tvm
import tvm_ffi
from tvm import s_tir, te, tirx
from tvm.ir.expr import TensorLoad, TensorRegion

from tvm_patch.patch.regions import (acc_name, accumulator_rows, buffer_names, execution_order, pixel_copy_bytes,
                                     scalar_names)
from tvm_patch.convention import accumulates_into_skip
from tvm_patch.patch.stage import STAGE_INPUT, Add, Conv, Stage
from tvm_patch.patch.te_stage import stage_te


def build_reference(stage: Stage) -> tirx.PrimFunc:
    """The stage as an unscheduled PrimFunc (layer by layer, full-size buffers); same arguments."""
    t = stage_te(stage, (1, 1))
    return te.create_prim_func(t.args)


def build_stage(stage: Stage, patches: tuple[int, int], in_place: bool = False) -> tirx.PrimFunc:
    """The stage as one PrimFunc computing `patches` = (rows, cols) of output patches one by one.

    Arguments: (input, then per conv layer weight and bias [and int8 multiplier, shift] as listed by
    `te_stage.param_names`, then output), all in the stage layout / the weights' own layouts.
    `in_place`: the analytic convention's in-place rules, for the C export's plan
    (`tvm_patch.export.stage_arena` proves and places them): every depthwise layer whose input dies there
    (`depthwise_in_place_layers`) runs channel by channel from a one-channel copy of its input
    (`<input>_global`), so that its output may take its input's place; a dense conv feeding a residual
    add whose skip dies there is computed inside the add, which writes over the skip (`skip_accumulations`):
    element by element, or in NHWC a block of the conv's `accumulator_rows` channels at a time (a C local),
    register blocked like the other dense convs.
    """
    t = stage_te(stage, patches)
    sch = s_tir.Schedule(te.create_prim_func(t.args))
    th, tw = t.plan.tiles
    out = sch.get_sblock("output")
    if stage.layout == "NCHW":
        n, c, h, w = sch.get_loops(out)
    else:
        n, h, w, c = sch.get_loops(out)
    ho, hi = sch.split(h, [None, th])
    wo, wi = sch.split(w, [None, tw])
    if stage.layout == "NCHW":
        sch.reorder(ho, wo, c, hi, wi)
    else:
        sch.reorder(ho, wo, hi, wi, c)

    names = buffer_names(stage)
    last = len(stage.layers) - 1
    dw = depthwise_in_place_layers(stage) if in_place else set()
    fused = skip_accumulations(stage, t.plan) if in_place else {}
    split_adds: set[int] = set()  # residual adds whose channel loop is split by their fused convs' rows
    for v in range(last, STAGE_INPUT - 1, -1):
        if v in fused:  # computed inside its residual add: no buffer of its own
            add = out if fused[v][0] == last else sch.get_sblock(names[fused[v][0]])
            rows = accumulator_rows(stage, v) if stage.layout == "NHWC" else 1
            if rows > 1:  # a block of `rows` channels at a time (a C local), register blocked below
                if fused[v][0] not in split_adds:
                    sch.split(sch.get_loops(add)[-1], [None, rows])
                    split_adds.add(fused[v][0])
                sch.compute_at(sch.get_sblock(names[v]), sch.get_loops(add)[-2], preserve_unit_loops=True)
            else:  # element by element
                sch.compute_at(sch.get_sblock(names[v]), sch.get_loops(add)[-1], preserve_unit_loops=True)
        elif v != last:
            sch.compute_at(sch.get_sblock(names[v]), wo, preserve_unit_loops=True)
        if v >= 0:
            block = out if v == last else sch.get_sblock(names[v])
            channel = None
            if v in dw:  # channel loop outermost (before the scalars come under it: their bindings are not affine)
                loops = sch.get_loops(block)[-4:]
                if stage.layout == "NHWC":
                    _, h_, w_, channel = loops
                    sch.reorder(channel, h_, w_)
                else:
                    channel = loops[1]
            inner = sch.get_loops(block)[-1]
            blocked = v not in dw and (v not in fused or fused[v][0] in split_adds) and _blocked_channels(
                sch, stage, v, block)
            if not blocked:
                for name in reversed(scalar_names(stage, v)):
                    sch.compute_at(sch.get_sblock(name), inner)
            if channel is not None:
                _input_copy_at(sch, stage, v, sch.get_sblock(acc_name(v)), channel)
            if isinstance(stage.layers[v], Conv) and not blocked:
                _init_outside(sch, sch.get_sblock(acc_name(v)), len(sch.get_loops(block)))
    func = sch.mod["main"]
    home: dict[int, int] = {}  # value -> the value whose buffer holds it (a chain of residual blocks shares one)
    for conv, (add, skip) in sorted(fused.items(), key=lambda kv: kv[1][0]):
        if add != last and skip is not None:
            home[add] = home.get(skip, skip)
            func = _into_skip(func, stage, t.plan, add, home[add])
    return _likely_predicates(func)


def _blocked_channels(sch: s_tir.Schedule, stage: Stage, v: int, block) -> bool:
    """Register blocking of dense conv v's output channels (`export/blocking.py`'s form, inside the patch):
    the channel loop of v's epilogue goes innermost and splits by `STAGE_ROWS` dividing the channels; the
    accumulator, computed at the outer part, holds that many outputs, its reduction loops outside the inner
    part (the `tvmp_dot_s8_rows*` nest); the requantization stays one element at a time. In NCHW a 1x1 conv
    with at most `LOCAL_MAX_BYTES` input channels first copies the pixel's channels into a C local, so the
    reduction reads them contiguously; a k x k conv with a small window (an NCHW stem) likewise copies
    the pixel's window and runs its reduction loops fused into one (`regions.pixel_copy_bytes`). False (nothing
    changed) for other layers."""
    rows = accumulator_rows(stage, v)
    if rows == 1:
        return False
    acc_n, *rest = scalar_names(stage, v)
    loops = sch.get_loops(block)
    if stage.layout == "NCHW":  # (.., c, h, w) -> (.., h, w, c)
        sch.reorder(loops[-2], loops[-1], loops[-3])
        loops = sch.get_loops(block)
    outer, inner = sch.split(loops[-1], [None, rows])
    for name in reversed(rest):
        sch.compute_at(sch.get_sblock(name), inner)
    acc = sch.get_sblock(acc_n)
    sch.compute_at(acc, outer)
    acc_loops = sch.get_loops(acc)
    n_out = len(sch.get_loops(block)) - 1  # the loops down to `outer`
    channel, reduction = acc_loops[n_out], acc_loops[n_out + 1:]
    if reduction:
        try:  # (TVM refuses when the accumulator's binding is not affine there, e.g. a one-block channel loop)
            sch.reorder(*reduction, channel)
        except tvm.s_tir.schedule.ScheduleError:
            pass  # still correct: the rows are reduced one after the other
    if pixel_copy_bytes(stage, v):
        _input_copy_at(sch, stage, v, acc, loops[-2])
        g = stage.geometry[v]
        if g.kh * g.kw > 1:  # the window's loops as one contiguous run: one rows call
            try:
                sch.fuse(*sch.get_loops(acc)[n_out:n_out + len(reduction)])
            except tvm.s_tir.schedule.ScheduleError:
                pass  # still correct: the kernel rows are reduced one by one
    _init_outside(sch, acc, n_out)
    return True


def _input_copy_at(sch: s_tir.Schedule, stage: Stage, v: int, acc, loop) -> None:
    """Layer v's accumulator reads its input from a copy (`<input>_global`) made under `loop`: one channel of
    an in-place depthwise's input, or one pixel's channels for an NCHW 1x1 conv."""
    src = buffer_names(stage)[stage.inputs[v][0]]
    index = [k for k, r in enumerate(sch.get(acc).reads) if r.source.name == src][0]
    sch.compute_at(sch.cache_read(acc, index, "global"), loop, preserve_unit_loops=True)


def _init_outside(sch: s_tir.Schedule, acc, depth: int) -> None:
    """acc = 0 before the reduction loops under the first `depth` loops of the accumulator block, instead of a
    test of every reduction index inside them (TVM's lowering of a block's init); the micro-kernel rewrites
    need the bare `acc += a * w` nest. Left as it is when there is no such loop (a one-tap reduction)."""
    loops = sch.get_loops(acc)
    if depth < len(loops):
        try:
            sch.decompose_reduction(acc, loops[depth])
        except tvm.s_tir.schedule.ScheduleError:
            pass


def skip_accumulations(stage: Stage, plan) -> dict[int, tuple[int, int | None]]:
    """conv -> (its residual add, the skip the add writes over or None): a dense conv whose only reader is a
    residual add whose other operand dies there (`convention.accumulates_into_skip`, the analytic rule). The
    conv is computed inside the add, one element at a time; a non-final add writes its output over the skip
    (a sub-rectangle of the skip's region, checked patch by patch), as the projection accumulating into the
    skip does in MCUNetV2's count."""
    order = execution_order(stage)
    pos = {v: k for k, v in enumerate(order)}
    last = len(stage.layers) - 1
    last_use = {v: max(pos[c] for c in stage.consumers(v)) for v in order if v != last}
    out = {}
    for i, layer in enumerate(stage.layers[:-1]):
        g = stage.geometry[i]
        readers = stage.consumers(i)
        dense = g is not None and g.groups == 1
        if not accumulates_into_skip(dense, readers, lambda j: isinstance(stage.layers[j], Add),
                                     lambda j: [v for v in stage.inputs[j] if v != i],
                                     lambda v, j: last_use.get(v) == pos[j]):
            continue
        add = readers[0]
        skip = next(v for v in stage.inputs[add] if v != i)
        inside = all(plan.h[skip].regions[p].lo <= plan.h[add].regions[p].lo
                     and plan.h[add].regions[p].hi <= plan.h[skip].regions[p].hi for p in range(plan.counts[0])) and all(
            plan.w[skip].regions[p].lo <= plan.w[add].regions[p].lo
            and plan.w[add].regions[p].hi <= plan.w[skip].regions[p].hi for p in range(plan.counts[1]))
        # the conv reads its input over a window (and all its channels) while the add writes element by element:
        # a skip that is the conv's own input (x + conv(x)) cannot be written over
        over = inside and add != last and skip != stage.inputs[i][0]
        out[i] = (add, skip if over else None)
    return out


def _into_skip(func: tirx.PrimFunc, stage: Stage, plan, add: int, skip: int) -> tirx.PrimFunc:
    """`func` with value `add`'s buffer replaced by `skip`'s (same image position: index + offset change):
    the residual add updates the skip in place and its readers read it there. (`skip` is the buffer's owner:
    for a chain of residual blocks, the first block's input.)"""
    names = buffer_names(stage)
    root = func.body.block
    bufs = {b.name: b for b in root.alloc_buffers}
    old, new = bufs[names[add]], bufs[names[skip]]
    hx, wx = (2, 3) if stage.layout == "NCHW" else (1, 2)
    delta = {hx: plan.h[skip].offset - plan.h[add].offset, wx: plan.w[skip].offset - plan.w[add].offset}

    def idx(indices):
        return [i + delta[k] if delta.get(k) else i for k, i in enumerate(indices)]

    def on_load(ld):
        return tirx.BufferLoad(new, idx(list(ld.indices))) if ld.source.same_as(old) else ld

    def on_store(st):
        return tirx.BufferStore(new, st.value, idx(list(st.indices))) if st.buffer.same_as(old) else st

    def on_region(r, *_):
        if not r.source.same_as(old):
            return r
        return tirx.BufferRegion(new, [tvm.ir.Range.from_min_extent(rg.min + delta.get(k, 0), rg.extent)
                                       for k, rg in enumerate(r.region)])

    body = tvm_ffi.structural_map(func.body, [(TensorLoad, on_load), (tirx.BufferStore, on_store)],
                                  (TensorRegion, on_region))
    blk = body.block
    blk = s_tir.SBlock(blk.iter_vars, blk.reads, blk.writes, blk.name_hint, blk.body, blk.init,
                       [b for b in blk.alloc_buffers if not b.same_as(old)], blk.match_buffers, blk.annotations)
    body = s_tir.SBlockRealize(body.iter_values, body.predicate, blk)
    return tirx.PrimFunc(func.params, body, func.ret_type, func.attrs)


def depthwise_in_place_layers(stage: Stage) -> set[int]:
    """Depthwise layers (as many outputs as input channels, not the last layer) whose input's last reader
    they are in the patch body's order: their output may take their input's place, channel by channel."""
    order = execution_order(stage)
    pos = {v: k for k, v in enumerate(order)}
    out = set()
    for i, layer in enumerate(stage.layers[:-1]):
        g = stage.geometry[i]
        if g is None or g.groups == 1 or g.groups != g.c_in or g.c_out != g.c_in:
            continue
        src = stage.inputs[i][0]
        if max(pos[c] for c in stage.consumers(src)) == pos[i]:
            out.add(i)
    return out


def _likely_predicates(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """Wrap every block predicate in `T.likely` (a hint; the value is unchanged).

    compute_at derived each buffer region ignoring predicates, so every patch buffer is written over a
    region of constant extent. CompactBufferAllocation, though, narrows the reads of a predicated block
    (a conv clipped to its live image part, the output clipped by the split) by the predicate into
    min/max expressions; their union with the constant-extent write region is exact, but the analyzer
    cannot always prove it (e.g. min(4p, 4p + 2*max(1 - 2p, 0)) with a stride-2 conv) and falls back to
    a loose bound, up to the full buffer. Under `likely` the compactor does not parse the predicate and
    relaxes the reads over their loops, as compute_at did, so the buffer compacts to that region.
    """

    def visit(realize: s_tir.SBlockRealize) -> s_tir.SBlockRealize:
        pred = realize.predicate
        if isinstance(pred, tirx.IntImm) or _is_likely(pred):
            return realize
        return s_tir.SBlockRealize(realize.iter_values, tirx.likely(pred), realize.block)

    return tvm_ffi.structural_map(func, (s_tir.SBlockRealize, visit))


def _is_likely(e) -> bool:
    return isinstance(e, tvm.ir.expr.Call) and e.op.name in ("tirx.likely", "prim.likely")


def lower_for_analysis(func: tirx.PrimFunc, storage_rewrite: bool = True) -> tvm.IRModule:
    """Lower `func` far enough to see its real allocations, with TVM's allocation-analysis pass list.

    `s_tir.analysis.get_vtcm_compaction_passes()` is the memory-relevant part of the default s_tir
    pipeline (LowerInitBlock, PlanAndUpdateBufferAllocationLocation, ConvertBlocksToOpaque,
    CompactBufferAllocation, LowerMatchBuffer, InjectSoftwarePipeline, LowerOpaqueBlock, FlattenBuffer,
    StmtSimplify, VectorizeLoop, StorageRewrite). `storage_rewrite=False` drops StorageRewrite, leaving
    each buffer's own compacted allocation.
    """
    passes = [
        p
        for p in s_tir.analysis.get_vtcm_compaction_passes()
        if storage_rewrite or p.info.name != "tirx.StorageRewrite"
    ]
    return tvm.transform.Sequential(passes)(tvm.IRModule({"main": func}))


def allocated_bytes(func: tirx.PrimFunc, storage_rewrite: bool = True) -> int:
    """What `calculate_allocated_bytes` reports for `func` after `lower_for_analysis` (global scope)."""
    sizes = s_tir.analysis.calculate_allocated_bytes(lower_for_analysis(func, storage_rewrite)["main"])
    return int(sum(int(v) for v in sizes["main"].values()))


def allocations(func: tirx.PrimFunc) -> dict[str, int]:
    """Bytes of each buffer after compaction (`lower_for_analysis` without StorageRewrite), by name."""
    out: dict[str, int] = {}

    def visit(node: tirx.AllocBuffer) -> None:
        buf = node.buffer
        n = int(np.prod([int(d) for d in buf.shape]))
        out[buf.name] = n * tvm.runtime.DataType(buf.dtype).bits // 8

    lowered = lower_for_analysis(func, storage_rewrite=False)["main"]
    tvm_ffi.structural_walk(lowered.body, (tirx.AllocBuffer, visit))
    return out


# -- MACs as the schedule performs them --------------------------------------------------------------


def eval_int_expr(e, env: dict):
    """Evaluate an integer/boolean TIR expression with numpy (loop variables bound to arrays)."""
    ev = lambda x: eval_int_expr(x, env)  # noqa: E731
    if isinstance(e, tirx.IntImm):
        return bool(e.value) if str(e.ty) == "bool" else np.int64(e.value)
    if isinstance(e, tirx.Var):
        return env[e]
    table = {
        tirx.Add: np.add, tirx.Sub: np.subtract, tirx.Mul: np.multiply, tirx.FloorDiv: np.floor_divide,
        tirx.FloorMod: np.mod, tirx.Min: np.minimum, tirx.Max: np.maximum, tirx.LT: np.less,
        tirx.LE: np.less_equal, tirx.GT: np.greater, tirx.GE: np.greater_equal, tirx.EQ: np.equal,
        tirx.NE: np.not_equal, tirx.And: np.logical_and, tirx.Or: np.logical_or,
    }
    for cls, f in table.items():
        if isinstance(e, cls):
            return f(ev(e.a), ev(e.b))
    if isinstance(e, tirx.Not):
        return np.logical_not(ev(e.a))
    if isinstance(e, tirx.Cast):
        return ev(e.value)
    if _is_likely(e):
        return ev(e.args[0])
    raise NotImplementedError(f"cannot evaluate {type(e).__name__}: {e}")


def measured_macs_by_patch(func: tirx.PrimFunc, stage: Stage) -> np.ndarray:
    """MACs per patch that the scheduled (not yet lowered) `func` executes, read off its loop nest.

    For every conv reduction block, the loops around it and its predicate are evaluated for each patch:
    the number of loop iterations whose predicate holds is the number of multiply-accumulates.
    An independent check of `regions.macs_by_patch`.
    """
    body = func.body
    convs = {acc_name(i) + suffix for i, layer in enumerate(stage.layers) if isinstance(layer, Conv)
             for suffix in ("", "_update")}  # decompose_reduction's name for the update
    found: list[tuple[list, object]] = []

    def walk(node, loops):
        if isinstance(node, tirx.For):
            walk(node.body, loops + [node])
        elif isinstance(node, tirx.SeqStmt):
            for s in node.seq:
                walk(s, loops)
        elif isinstance(node, s_tir.SBlockRealize):
            if node.block.name_hint in convs:
                found.append((loops, node.predicate))
            else:
                walk(node.block.body, loops)
        elif hasattr(node, "body"):
            walk(node.body, loops)

    root = body.block.body if isinstance(body, s_tir.SBlockRealize) else body
    walk(root, [])
    # the outer nest is (n, h_outer, w_outer) by construction of build_stage
    outer = []
    node = root
    while isinstance(node, tirx.For) and len(outer) < 3:
        outer.append(node)
        node = node.body
    common = len(outer)
    patch_loops = outer[1:3]
    nh, nw = (int(lp.extent) for lp in patch_loops)
    out = np.zeros((nh, nw), dtype=np.int64)
    for loops, pred in found:
        inner = loops[common:]
        pred_vars = set(tirx.analysis.undefined_vars(pred))
        grid_loops = [lp for lp in inner if lp.loop_var in pred_vars]
        other = int(np.prod([int(lp.extent) for lp in inner if lp.loop_var not in pred_vars]))
        outer_n = int(outer[0].extent)
        ranges = [np.arange(int(lp.min), int(lp.min) + int(lp.extent)) for lp in grid_loops]
        grids = np.meshgrid(*ranges, indexing="ij")
        for i in range(nh):
            for j in range(nw):
                env = {patch_loops[0].loop_var: np.int64(i), patch_loops[1].loop_var: np.int64(j)}
                env.update({lp.loop_var: g for lp, g in zip(grid_loops, grids)})
                ok = np.broadcast_to(eval_int_expr(pred, env), grids[0].shape if grids else ())
                out[i, j] += int(np.count_nonzero(ok)) * other * outer_n
    return out
