"""Cache mode's buffer plan: which per-patch region buffer holds each value (a residual add computed over its
skip's, ``homes``), which way an in-place depthwise layer's one-channel buffer goes (``copies_output``) or whether it
needs none (``writes_top_left``), and
every buffer's offset in the kernel's workspace (``workspace_plan``, the function's ``STAGE_OFFSETS_ATTR``): per-patch
buffers live from their producer to their last reader in the patch body, the row and column caches during the
whole stage. ``cache_stage`` builds the loop nest over these buffers; ``export/inplace_cache.prove_cached_plan``
proves the plan on its TIR.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tvm_patch.codegen.workspace import LOCAL_MAX_BYTES
from tvm_patch.memplan import Alias, Buffer, DepthwiseInPlace, Plan, max_live, plan_memory, validate
from tvm_patch.patch.block_plan import window_bytes
from tvm_patch.patch.regions import execution_order
from tvm_patch.patch.stage import Conv, Stage

__all__ = ["copies_output", "homes", "over_input", "workspace_plan", "writes_top_left"]


def copies_output(stage: Stage, plan, v: int, caches: bool = False) -> bool:
    """Whether in-place depthwise layer v computes each channel from its input region itself into a one-channel
    buffer that is then copied over the input (instead of copying the input's channel first): wherever that buffer
    is smaller than the input's channel (fewer bytes copied), a C local up to `LOCAL_MAX_BYTES`, else planned in
    the workspace (`workspace_plan`); except an NHWC stride-1 layer whose output channel is a C local. Round 3 kept NHWC
    stride 1 to the copy-first form, whose contiguous copy `tvmp_window2_s8` reads by words; measured in round 4
    (vww 4x4 recompute): the stride-2 depthwise 1.04 M -> 0.71 M (network 21.31 M -> 20.98 M), then the stride-1
    ones too: the 19 x 19 plane 1.76 M -> 1.39 M, but the 7 x 7 one 0.83 M -> 0.89 M, hence the exception (network
    20.98 M -> 20.65 M; mcunet-in0, NCHW, -13,000 in both modes). Safe as the
    copy-first form is: channel c's output lands on bytes of channels at most c (`DepthwiseInPlace`), written after
    channel c was read whole (`inplace_cache` proves both, and that a planned channel buffer is filled before it
    is copied). `caches` (cache mode): every NHWC stride-1 layer copies its input channel first (vww 4x4 cache: its
    48 x 48 depthwise layer's windows pair in the contiguous copy, the stage 2.47 M -> 2.37 M instructions; the same
    in recompute mode measured +125,000, so recompute mode keeps the rule above; kernels round 26). Strided layers
    too measured +512,000 on vww's deeper cache stage (split 12), so they keep the rule above."""
    out_bytes, in_bytes = _plane_bytes(stage, plan, v), _plane_bytes(stage, plan, stage.inputs[v][0])
    if stage.layout == "NHWC" and caches and stage.geometry[v].stride[1] == 1:
        return False  # a cache-mode patch's windows pair in the copy: it costs less than the windows it speeds up
    if stage.layout == "NHWC" and stage.geometry[v].stride[1] == 1 and out_bytes <= LOCAL_MAX_BYTES:
        return False  # a small plane: its copy is cheap, its windows pair faster in it (measured, see above)
    return out_bytes < in_bytes


def writes_top_left(stage: Stage, plan, v: int, caches: bool = False) -> bool:
    """Whether in-place depthwise layer v writes each output over its input's region at the region's top-left
    corner (output (r, q) of channel c over input (r, q) of channel c; no one-channel buffer, no copy): where every
    patch's window of output (r, q) starts at input (r s + a, q s + b) with the same a, b >= 0, so that in raster
    order no later window reads an element already written (`inplace_cache` proves it per patch). Not where the
    output channel would be a C local (`copies_output`: its copy is cheap, its windows over a small plane faster)
    nor for cache mode's NHWC stride-1 layers (their copy's windows pair by words): measured, kernels.md."""
    u = stage.inputs[v][0]
    g = stage.geometry[v]
    (uh, uw), (vh, vw) = plan.region_shape(u), plan.region_shape(v)
    if copies_output(stage, plan, v, caches) and _plane_bytes(stage, plan, v) <= LOCAL_MAX_BYTES:
        return False
    if stage.layout == "NHWC" and caches and g.stride[1] == 1:
        return False
    starts = set()
    for ax, stride, pad in ((plan.h, g.stride[0], g.padding[0]), (plan.w, g.stride[1], g.padding[1])):
        offs = {ax[v].regions[k].lo * stride - pad - ax[u].regions[k].lo for k in range(len(ax[v].regions))}
        starts.add(offs.pop() if len(offs) == 1 else -1)
    return min(starts) >= 0 and vh <= uh and vw <= uw


def over_input(stage: Stage, plan, v: int, home: dict, blocked: dict, top_left: set, caches: bool) -> bool:
    """Whether layer v may write its own region buffer over its input's, at the same offset (`workspace_plan` offers
    the alias, `inplace_cache` proves it on the TIR, per patch and element), its live part first:
    - a strided top-left depthwise layer (`writes_top_left`) in recompute mode: its compact buffer instead of its
      input's whole region held until v's last reader (in cache mode its caches fill the buffer before the
      windows read under it). Output (c, r, q) lands at or before its window's first input element, in raster
      order channel by channel, as in its input's buffer;
    - an int8 NCHW register-blocked 1x1 conv (stride 1) whose input is read last by it, of the same region: it
      copies each pixel's (pair's) channels before it writes that pixel's outputs (`block_plan.window_bytes`), and
      output (c, r, q) lands on input element (c, r, q) or past the input's end.
    Session 42 measured why: the TE form had these two aliases and round 33's written nest did not (mcunet-in3 4x4
    recompute: 116,544 B against 123,024)."""
    u = stage.inputs[v][0]
    g = stage.geometry[v]
    if v in top_left:
        return not caches and max(g.stride) > 1
    if not isinstance(stage.layers[v], Conv) or g is None or stage.dtype != "int8" or stage.layout != "NCHW":
        return False
    if (g.kh, g.kw, g.groups) != (1, 1, 1) or g.stride != (1, 1) or any(g.padding) or v in home or v not in blocked \
            or not window_bytes(stage, v):
        return False
    owner, dh, dw_ = home.get(u, (u, 0, 0))
    same = all(ax[owner].regions[k].lo == ax[v].regions[k].lo for ax in (plan.h, plan.w)
               for k in range(len(ax[v].regions)))
    return (dh, dw_) == (0, 0) and same and plan.region_shape(owner) == plan.region_shape(v)


def _plane_bytes(stage: Stage, plan, v: int) -> int:
    """Bytes of one channel of value v's per-patch region."""
    return int(np.prod(plan.region_shape(v))) * (4 if stage.dtype == "float32" else 1)


def homes(plan, fused: dict[int, tuple[int, int | None]], last: int) -> dict[int, tuple[int, int, int]]:
    """Residual add -> (the value whose region buffer holds it, row offset, column offset): an add whose
    projection is fused into it writes over its skip's region (a chain of residual blocks shares the first
    block input's buffer), where its region is a sub-rectangle of the skip's at a constant offset."""
    home: dict[int, tuple[int, int, int]] = {}
    for _, (add, skip) in sorted(fused.items(), key=lambda kv: kv[1][0]):
        if add == last or skip is None:
            continue
        owner, dh0, dw0 = home.get(skip, (skip, 0, 0))
        offs = []
        for ax in (plan.h, plan.w):
            a, s = ax[add].regions, ax[skip].regions
            steps = {(a[k].lo - s[k].lo) for k in range(len(a))}
            offs.append(steps.pop() if len(steps) == 1 else None)
        if None in offs:
            continue  # the add's region moves against the skip's from patch to patch: keep its own buffer
        home[add] = (owner, dh0 + offs[0], dw0 + offs[1])
    return home


def workspace_plan(stage: Stage, region: dict, rows_c: dict, cols_c: dict, chan: dict, home: dict, alignment: int,
                   over: set[int] = frozenset()) -> dict:
    """The buffers' offsets in the kernel's workspace: a region buffer lives from the first value stored in it to
    the last reader of any value it holds in the patch body, a depthwise input's channel copy at its layer's step,
    the caches during the whole stage (C locals, at most LOCAL_MAX_BYTES, are left out). An in-place depthwise
    layer's region may start at its input's (`DepthwiseInPlace`: channel c written after channel c was copied,
    over bytes of input channels at most c in NCHW, of residue c in NHWC), and so may a layer of `over`
    (`over_input`: an `Alias`, proven on the TIR by `inplace_cache`)."""
    order = execution_order(stage)
    pos = {v: k for k, v in enumerate(order)}
    end = len(order) - 1
    item = 4 if stage.dtype == "float32" else 1
    life: dict[int, tuple[int, int]] = {}
    for v in order[:-1]:
        if v not in region and v not in home:
            continue  # fused into its add
        owner = home.get(v, (v,))[0]
        last_use = max(pos[c] for c in stage.consumers(v))
        f, l = life.get(owner, (pos[v], last_use))
        life[owner] = (min(f, pos[v]), max(l, last_use))
    bufs = [Buffer(region[v].name, _nbytes(region[v], item), *life[v]) for v in region]
    bufs += [Buffer(b.name, _nbytes(b, item), pos[v], pos[v]) for v, b in chan.items()]
    bufs += [Buffer(b.name, _nbytes(b, item), 0, end) for b in [*rows_c.values(), *cols_c.values()]]
    bufs = [b for b in bufs if b.size > LOCAL_MAX_BYTES]
    names = {b.name for b in bufs}
    hints = []
    for v in chan:
        u = home.get(stage.inputs[v][0], (stage.inputs[v][0],))[0]
        src, dst = region[u].name, region[home.get(v, (v,))[0]].name
        if src in names and dst in names and life[u][1] == pos[v] == life[home.get(v, (v,))[0]][0]:
            hints.append(DepthwiseInPlace(src, dst, 0))
    for v in over:
        u = home.get(stage.inputs[v][0], (stage.inputs[v][0],))[0]
        if u not in region or v not in region:
            continue
        src, dst = region[u].name, region[v].name
        if src in names and dst in names and life[u][1] == pos[v] == life[v][0]:
            hints.append(Alias(src, dst, 0))
    p = min(plan_memory(bufs, hints, alignment), _caches_below(bufs, hints, alignment, end),
            key=lambda q: q.arena_size)
    validate(p, bufs)
    return {"offsets": {k: int(o) for k, o in p.offsets.items()}, "bytes": int(p.arena_size), "live": max_live(bufs)}


def _caches_below(bufs: list[Buffer], hints: list, alignment: int, end: int) -> Plan:
    """The caches (live at every step) stacked at the bottom, the per-patch buffers planned apart above them: the
    planner's heuristics, run on all buffers at once, interleave the two (mcunet-in2, 4x4, block:5: 4 kB above
    the lower bound); stacked, the plan is as good as the per-patch plan."""
    always = [b for b in bufs if b.first == 0 and b.last == end]
    rest = [b for b in bufs if b not in always]
    offsets, top = {}, 0
    for b in always:
        offsets[b.name] = top
        top = -(-(top + b.size) // alignment) * alignment
    inner = plan_memory(rest, [h for h in hints if h.src not in offsets and h.dst not in offsets], alignment)
    offsets |= {n: top + o for n, o in inner.offsets.items()}
    return Plan(offsets, top + inner.arena_size, alignment, "caches below + " + inner.heuristic, inner.hints,
                inner.aliases)


def _nbytes(buf: Any, item: int) -> int:
    return int(np.prod([int(d) for d in buf.shape])) * item
