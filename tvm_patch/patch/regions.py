"""Receptive-field (halo) arithmetic of a patch stage: which rows/columns of every value a patch needs.

The arithmetic mirrors what the s_tir schedule in `schedule.py` makes TVM derive, so that the analytic
figures here (per-patch buffer sizes, MACs, patch input size) are the ones the PrimFunc really has:

- The stage output is split into tiles of `ceil(H / p)` rows (and columns): patch i covers output rows
  [i*t, i*t + t); the last tile may run past the image (the output block is then predicated).
- Going backwards, each value's per-patch *region* is the hull of what its consumers read over their
  whole regions (compute_at relaxes over the consumer's loops and ignores predicates), so it has the
  same extent for every patch: that extent is the size of the patch buffer.
- Each value's *domain* (the TE tensor extent) is the hull of its regions over all patches, so no region
  is ever clipped by a buffer bound: no predicates, and every buffer compacts to the region extent.
- Each value's *live* interval is what the real (in-image) stage output needs, within the image. A conv is
  computed only at live positions of its region (the rest of the region is padding, written as a select),
  so border patches do no multiply-accumulate on padding.

All intervals are half-open [lo, hi) in a value's own image coordinates (row 0 = first image row).
H and W are independent, so everything is computed per axis.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from math import ceil
from typing import Any

import numpy as np

from tvm_patch.codegen.workspace import LOCAL_MAX_BYTES
from tvm_patch.names import HALO_MODES
from tvm_patch.patch.stage import STAGE_INPUT, Add, Conv, Lookup, MaxPool, Stage, StageError

_DTYPE_BYTES = {"float32": 4, "int8": 1, "int32": 4}


@dataclass(frozen=True)
class Interval:
    """Half-open integer interval [lo, hi)."""

    lo: int
    hi: int

    @property
    def size(self) -> int:
        return max(0, self.hi - self.lo)

    def hull(self, other: Interval) -> Interval:
        return Interval(min(self.lo, other.lo), max(self.hi, other.hi))

    def clip(self, other: Interval) -> Interval:
        return Interval(max(self.lo, other.lo), min(self.hi, other.hi))


@dataclass(frozen=True)
class AxisPlan:
    """One spatial axis (H or W) of a value under a patch split."""

    size: int  # image extent of the value
    regions: tuple[Interval, ...]  # per patch index: rows the patch's buffer holds
    live: Interval  # rows the real stage output needs, within the image
    domain: Interval  # hull of the regions: the extent of the value's TE tensor

    @property
    def extent(self) -> int:
        """The per-patch buffer extent (the same for every patch)."""
        return self.regions[0].size

    @property
    def offset(self) -> int:
        """Stored index = image index + offset."""
        return -self.domain.lo

    def computed(self, p: int) -> int:
        """Rows of patch p's region that are really computed (in the live interval)."""
        return self.regions[p].clip(self.live).size


@dataclass(frozen=True)
class PatchPlan:
    """The halo arithmetic of a stage under a (ph, pw) patch split, for every value.

    `values[v]` is indexed by value: STAGE_INPUT (-1) is the stage input, then each layer.
    `tiles` is the output tile size per axis, `counts` the number of patches per axis (at most the
    requested number: a uniform tile of ceil(H/p) rows can make fewer patches, e.g. 9 rows in 4 -> 3x3).
    """

    stage: Stage
    tiles: tuple[int, int]
    counts: tuple[int, int]
    h: dict[int, AxisPlan]
    w: dict[int, AxisPlan]

    def region_shape(self, v: int) -> tuple[int, int]:
        """(rows, cols) of value v's per-patch buffer."""
        return self.h[v].extent, self.w[v].extent


def _axis(stage: Stage, axis: int, tile: int, count: int) -> dict[int, AxisPlan]:
    """Per-value plan along one axis (0 = H, 1 = W)."""
    n_layers = len(stage.layers)
    out = n_layers - 1
    size = {v: stage.value_shape(v)[1 + axis] for v in range(STAGE_INPUT, n_layers)}

    def back(layer: int, iv: Interval) -> Interval:
        return Interval(*stage.window(layer).axis(axis).input_range(iv.lo, iv.hi))

    regions: dict[int, list[Interval]] = {out: [Interval(i * tile, i * tile + tile) for i in range(count)]}
    live: dict[int, Interval] = {out: Interval(0, size[out])}
    for v in range(out - 1, STAGE_INPUT - 1, -1):
        cons = stage.consumers(v)
        reg = [None] * count
        lv = None
        slopes = set()
        for c in cons:
            mapped = [back(c, regions[c][i]) for i in range(count)]
            if count > 1:
                slopes.add((mapped[1].lo - mapped[0].lo, mapped[1].hi - mapped[0].hi))
            for i in range(count):
                reg[i] = mapped[i] if reg[i] is None else reg[i].hull(mapped[i])
            r = back(c, live[c])
            lv = r if lv is None else lv.hull(r)
        if len(slopes) > 1:
            # compute_at would have to take the hull of differently strided regions: no constant extent
            raise StageError(
                f"value {v} reaches the output along paths with different strides (axis {axis}); "
                "patching such a stage is not supported"
            )
        extents = {r.size for r in reg}
        if len(extents) != 1:
            # Only possible if two paths from v to the output have different total strides.
            raise StageError(f"value {v}: per-patch regions of unequal size {sorted(extents)} along axis {axis}")
        regions[v] = reg
        live[v] = lv.clip(Interval(0, size[v]))
    plans = {}
    for v, reg in regions.items():
        dom = reg[0]
        for r in reg[1:]:
            dom = dom.hull(r)
        if v == out:
            dom = Interval(0, size[v])  # the output is the PrimFunc parameter, exact size
        plans[v] = AxisPlan(size[v], tuple(reg), live[v], dom)
    return plans


def plan_patches(stage: Stage, patches: tuple[int, int]) -> PatchPlan:
    """The halo arithmetic of `stage` split into `patches` = (rows, cols) of output patches."""
    ph, pw = (int(p) for p in patches)
    _, ho, wo = stage.value_shape(len(stage.layers) - 1)
    if ph < 1 or pw < 1 or ph > ho or pw > wo:
        raise StageError(f"patches {patches} must be between 1 and the output size {ho}x{wo}")
    th, tw = ceil(ho / ph), ceil(wo / pw)
    nh, nw = ceil(ho / th), ceil(wo / tw)
    return PatchPlan(stage, (th, tw), (nh, nw), _axis(stage, 0, th, nh), _axis(stage, 1, tw, nw))


# -- figures -----------------------------------------------------------------------------------------


def acc_dtype(stage: Stage) -> str:
    """The accumulator dtype of a conv: float32, or int32 for int8."""
    return "float32" if stage.dtype == "float32" else "int32"


def buffer_names(stage: Stage) -> dict[int, str]:
    """Name of the patch buffer (TE tensor / TIR block) holding value v; the output is the parameter."""
    names = {STAGE_INPUT: "input_patch"}
    for i in range(len(stage.layers) - 1):
        names[i] = f"layer{i}"
    return names


STAGE_ROWS = (4, 2)  # output channels per accumulator block of a dense conv in the patched PrimFunc


def accumulator_rows(stage: Stage, i: int) -> int:
    """Output channels layer i's accumulator holds at once in the patched PrimFunc: a dense conv is register
    blocked (`schedule.build_stage`, the `tvmp_dot_s8_rows*` micro-kernels) by the first of `STAGE_ROWS`
    dividing its channels; 1 otherwise. (`build_stage(in_place=True)` computes a conv that accumulates into its
    residual skip one element at a time, inside the add.)"""
    g = stage.geometry[i]
    if not isinstance(stage.layers[i], Conv) or g.groups != 1:
        return 1
    return next((r for r in STAGE_ROWS if g.c_out % r == 0), 1)


def pixel_copy_bytes(stage: Stage, i: int) -> int:
    """Bytes of the copy of one output pixel's input window (channels x kernel rows x columns: a 1x1 conv's
    channels, a stem's 3 x 3 x 3) that dense conv i reads in an NCHW stage (so its reduction runs over one
    contiguous run, in the weights' I, H, W order), or 0: only where the copy stays a C local
    (`LOCAL_MAX_BYTES`) and the input has no other reader (TVM's compute_at refuses the copy of a value read
    elsewhere). Not in NHWC: a stem's kernel rows are contiguous runs already (fused taps), and the copy measured
    slower on resnet8 (stage +0.8 %) for 1.2 % on vww."""
    g = stage.geometry[i]
    if stage.layout != "NCHW" or accumulator_rows(stage, i) == 1:
        return 0
    size = g.c_in * g.kh * g.kw * _DTYPE_BYTES[stage.dtype]
    ok = size <= LOCAL_MAX_BYTES and len(stage.consumers(stage.inputs[i][0])) == 1
    return size if ok else 0


def acc_name(i: int) -> str:
    """Name of layer i's conv (or max pool) accumulator (TE tensor / TIR block)."""
    return f"layer{i}_acc"


def scalar_names(stage: Stage, i: int) -> list[str]:
    """Names of layer i's per-element temporaries, each a one-element buffer in the patched PrimFunc.

    A conv: its accumulator, and in int8 its requantized value before the zero point ("_high"). A max pool:
    its accumulator (the running max, in the conv accumulator's dtype). An int8 add: the two rescaled inputs,
    their sum and the output SRDHM result. A float add, a table lookup: none.
    """
    if isinstance(stage.layers[i], Conv):
        return [acc_name(i)] + ([f"layer{i}_high"] if stage.dtype == "int8" else [])
    if isinstance(stage.layers[i], MaxPool):
        return [acc_name(i)]
    if isinstance(stage.layers[i], Lookup):
        return []
    if stage.dtype == "int8":
        return [f"layer{i}_in0", f"layer{i}_in1", f"layer{i}_sum", f"layer{i}_high"]
    return []


def patch_input_size(stage: Stage, patches: tuple[int, int]) -> tuple[int, int]:
    """(rows, cols) of the input region one patch reads (its receptive field, halo included).

    Border patches read only the in-image part; the buffer still has this size (the rest is padding).
    """
    return plan_patches(stage, patches).region_shape(STAGE_INPUT)


def execution_order(stage: Stage) -> list[int]:
    """The order in which the patch loop body produces the values (STAGE_INPUT first).

    Mirrors compute_at's rule (consumers first, each producer inserted just before its first consumer);
    for a chain that is simply -1, 0, 1, ...
    """
    last = len(stage.layers) - 1
    order = [last]
    for v in range(last - 1, STAGE_INPUT - 1, -1):
        first = min(order.index(c) for c in stage.consumers(v))
        order.insert(first, v)
    return order


def per_patch_bytes(stage: Stage, patches: tuple[int, int]) -> dict[str, int]:
    """Analytic bytes of every buffer the patched PrimFunc allocates, plus "total" and "peak".

    Sizes are for one image (the batch loop is outside the patch loops). Per buffer: "input_patch"
    (the input receptive field, copied with its zero ring), "layer{i}" (each intermediate:
    C x region rows x region cols in the stage dtype), and each layer's per-element temporaries
    (`scalar_names`: the conv accumulator, int8 requantization steps), 4 bytes each, since
    they are computed per output element inside their consumer's loop. The stage output is a
    parameter, not an allocation.

    "total" = all value buffers + the largest layer's temporaries (a layer's temporaries are allocated
    inside its consumer's loop, so only one layer's exist at a time). This is exactly what
    `calculate_allocated_bytes` reports after `lower_for_analysis(func, storage_rewrite=False)`, and each
    buffer's compacted size equals its entry. (Degenerate exception, irrelevant to real networks: when a
    layer's loop nest has a single iteration -- one channel, a 1x1 patch region, see
    `single_iteration_layers` -- TVM hoists its temporaries into the patch loop body, up to 4 bytes
    each more.)

    "peak" = the most bytes live at once in the patch loop body (values live from their production to
    their last consumer, plus the running layer's temporaries; elementwise steps may write in place: an
    add over an input that dies with it, each requantization step over the previous one): what an ideal
    arena planner needs, and MCUNetV2's way of counting (without its in-place depthwise trick).

    With TVM's StorageRewrite (the default lowering, `lower_for_analysis(func)`), memory of dead buffers
    is reused by later ones, grouped by TVM's own size-class heuristic (an elementwise add may reuse its
    dying input in place), and the temporaries are hoisted to function scope. So the reported figure R
    satisfies peak <= R <= the sum of all entries; an exact figure would mean re-implementing
    StorageRewrite's heuristic.
    (MbV2 at 96, float32, 3x3 patches: peak 249,604, R 302,576, total 661,776.)
    """
    plan = plan_patches(stage, patches)
    item = _DTYPE_BYTES[stage.dtype]
    names = buffer_names(stage)
    sizes: dict[int, int] = {}
    out: dict[str, int] = {}
    for v, name in names.items():
        c = stage.value_shape(v)[0]
        rows, cols = plan.region_shape(v)
        sizes[v] = c * rows * cols * item
        out[name] = sizes[v]
    temps = {}
    for i in range(len(stage.layers)):
        acc, *rest = scalar_names(stage, i) or [None]
        if acc is not None:
            out[acc] = 4 * accumulator_rows(stage, i) if isinstance(stage.layers[i], Conv) else 4
        for name in rest:
            out[name] = 4
        copy = pixel_copy_bytes(stage, i)
        if copy:
            out[f"{names[stage.inputs[i][0]]}_global"] = copy
        temps[i] = sum(out[n] for n in scalar_names(stage, i)) + copy
    out["total"] = sum(sizes.values()) + max(temps.values())
    order = execution_order(stage)
    pos = {v: k for k, v in enumerate(order)}
    last_use = {v: max(pos[c] for c in stage.consumers(v)) for v in sizes}
    peak = 0
    for k, v in enumerate(order):
        live = sum(sz for u, sz in sizes.items() if pos[u] <= k <= last_use[u])
        if v in sizes and isinstance(stage.layers[v], (Add, Lookup)):
            # an add (or a table lookup) may write over an input that dies with it (MCUNetV2 adds in place)
            if any(last_use[u] == k and sizes[u] >= sizes[v] for u in stage.inputs[v]):
                live -= sizes[v]
        peak = max(peak, live + _temps_peak(stage, v) if v >= 0 else live)
    out["peak"] = peak
    return out


def _temps_peak(stage: Stage, i: int) -> int:
    """Bytes of layer i's temporaries live at once when elementwise steps work in place."""
    if isinstance(stage.layers[i], Conv):
        # the accumulator block (each int8 requantized value overwrites its accumulator); the pixel copy of an
        # NCHW 1x1 conv is left out: TVM's StorageRewrite may overlap it with the layer's input
        return 4 * accumulator_rows(stage, i)
    if isinstance(stage.layers[i], MaxPool):
        return 4  # the running max
    if isinstance(stage.layers[i], Lookup):
        return 0
    return 8 if stage.dtype == "int8" else 0  # int8 add: both rescaled inputs, then in place


def single_iteration_layers(stage: Stage, patches: tuple[int, int]) -> list[int]:
    """Layers whose value is computed by a loop nest of one iteration (1 channel, 1x1 patch region), whose
    accumulator block loop has one iteration (as many channels as `accumulator_rows`), or whose pixel copy
    (`pixel_copy_bytes`) sits under a pixel loop of one iteration (a 1x1 patch region): TVM hoists their
    temporaries."""
    plan = plan_patches(stage, patches)
    last = len(stage.layers) - 1
    out = []
    for i in range(len(stage.layers)):
        c = stage.value_shape(i)[0]
        pixels = plan.tiles[0] * plan.tiles[1] if i == last else math.prod(plan.region_shape(i))
        n = c * pixels
        rows = accumulator_rows(stage, i)
        if n == 1 or (rows > 1 and c == rows) or (pixels == 1 and pixel_copy_bytes(stage, i)):
            out.append(i)
    return out


def full_size_bytes(stage: Stage) -> dict[str, int]:
    """Bytes of every intermediate at full size for one image (layer-by-layer execution), for comparison."""
    item = _DTYPE_BYTES[stage.dtype]
    out = {}
    for v, name in buffer_names(stage).items():
        c, h, w = stage.value_shape(v)
        out[name] = c * h * w * item
    return out


def _recomputed(region: AxisPlan, p: int) -> int:
    """Rows (columns) patch p computes in recompute mode: its region's live part."""
    return region.computed(p)


def _cached(region: AxisPlan, p: int) -> int:
    """Rows (columns) patch p computes in cache mode: the live part of what the previous patch did not compute."""
    return new_interval(region, p).clip(region.live).size


def macs_by_patch(stage: Stage, patches: tuple[int, int]) -> np.ndarray:
    """MACs each patch position performs (summed over the batch), shape (rows of patches, cols of patches).

    A conv computes the live part of its region only: the padding ring is a select, not a convolution.
    """
    return _macs_grid(stage, patches, _recomputed)


def _macs_grid(stage: Stage, patches: tuple[int, int], computed: Callable[[Any, int], int]) -> np.ndarray:
    """MACs per patch position: per conv layer, rows x cols computed (``computed(axis region, patch)``)."""
    return sum(_layer_grids(stage, patches, computed).values(), np.zeros(plan_patches(stage, patches).counts,
                                                                          dtype=np.int64))


def _layer_grids(stage: Stage, patches: tuple[int, int],
                 computed: Callable[[Any, int], int]) -> dict[int, np.ndarray]:
    """Conv layer -> the MACs it performs at each patch position (rows x cols computed, as `_macs_grid`)."""
    plan = plan_patches(stage, patches)
    nh, nw = plan.counts
    out = {}
    for i, g in enumerate(stage.geometry):
        if g is None:
            continue
        rows = np.array([computed(plan.h[i], p) for p in range(nh)], dtype=np.int64)
        cols = np.array([computed(plan.w[i], p) for p in range(nw)], dtype=np.int64)
        out[i] = np.outer(rows, cols) * (stage.batch * g.c_out * g.macs_per_output)
    return out


def patch_macs(stage: Stage, patches: tuple[int, int]) -> int:
    """Total MACs of the stage computed patch by patch (all patches; halos recomputed)."""
    return int(macs_by_patch(stage, patches).sum())


def stage_macs(stage: Stage) -> int:
    """MACs of the stage computed layer by layer (every output element once)."""
    return sum(_flat_macs(stage, i) for i, g in enumerate(stage.geometry) if g is not None)


def _flat_macs(stage: Stage, i: int) -> int:
    """MACs of conv layer i computed layer by layer."""
    _, h, w = stage.shapes[i]
    g = stage.geometry[i]
    return stage.batch * g.c_out * h * w * g.macs_per_output


# -- halo caching (cache mode) -------------------------------------------------------------------------
#
# The patches run in raster order. Patch p of an axis computes only its *new* rows, those the previous
# patch of that axis did not already compute: [max(lo(p), hi(p - 1)), hi(p)); the rest of its region
# comes from a cache. Per intermediate (every layer's output but the last; the input image is streamed,
# not computed): a row cache of the halo rows the next row of patches needs, over the value's whole domain
# width, and a column cache of the halo columns the next patch to the right needs, over the region's rows.
# Every element of an intermediate is then computed once.



def check_halo(halo: str) -> str:
    """`halo` if it is a known mode, else a StageError naming the choices."""
    if halo not in HALO_MODES:
        raise StageError(f"halo must be one of {HALO_MODES}, got {halo!r}")
    return halo


def halo_overlap(ax: AxisPlan) -> int:
    """Rows (or columns) two consecutive patches' regions share: what a cache keeps for the next patch."""
    if len(ax.regions) < 2:
        return 0
    return max(0, ax.regions[0].hi - ax.regions[1].lo)


def new_interval(ax: AxisPlan, p: int) -> Interval:
    """The part of patch p's region the previous patch along this axis has not computed (cache mode)."""
    r = ax.regions[p]
    return r if p == 0 else Interval(max(r.lo, ax.regions[p - 1].hi), r.hi)


def cache_bytes(stage: Stage, patches: tuple[int, int], item: int | None = None) -> dict[int, int]:
    """Bytes of the row and column caches of every intermediate (value index -> bytes), for one image:
    C x halo rows x domain width + C x region rows x halo columns, `item` bytes an element (default: the
    stage dtype's; the profile's convention counts 1)."""
    plan = plan_patches(stage, patches)
    item = _DTYPE_BYTES[stage.dtype] if item is None else item
    out = {}
    for v in range(len(stage.layers) - 1):
        c = stage.value_shape(v)[0]
        rows = halo_overlap(plan.h[v]) * plan.w[v].domain.size
        cols = plan.h[v].extent * halo_overlap(plan.w[v])
        out[v] = c * (rows + cols) * item
    return out


def cache_macs_by_patch(stage: Stage, patches: tuple[int, int]) -> np.ndarray:
    """MACs each patch performs in cache mode: the live part of its new rows x new columns only."""
    return _macs_grid(stage, patches, _cached)


def halo_macs(stage: Stage, patches: tuple[int, int], halo: str = "recompute") -> int:
    """Total MACs of the stage patch by patch: halos recomputed, or cached (each live element once)."""
    return sum(patched for _, patched in layer_macs(stage, patches, halo))


def input_reads(stage: Stage, patches: tuple[int, int], halo: str = "recompute") -> tuple[int, int]:
    """(the stage input's elements, the elements the patches read of it): recompute mode reads every patch's input
    region inside the image again (a float input is quantized again per patch); cache mode counts each element once
    (its patches skip the rows and columns their readers' caches hold: an approximation, a stride-2 window's
    overlap row or column is read by two patches)."""
    plan = plan_patches(stage, patches)
    c, h, w = stage.input_chw
    image = stage.batch * c * h * w
    if check_halo(halo) == "cache":
        return image, image
    inside = Interval(0, h), Interval(0, w)
    rows = sum(r.clip(inside[0]).size for r in plan.h[STAGE_INPUT].regions)
    cols = sum(r.clip(inside[1]).size for r in plan.w[STAGE_INPUT].regions)
    return image, stage.batch * c * rows * cols


def layer_macs(stage: Stage, patches: tuple[int, int], halo: str = "recompute") -> list[tuple[int, int]]:
    """(MACs layer by layer, MACs patch by patch) of each conv layer of the stage, in layer order: where the
    recompute mode's extra MACs fall (the stem and the early layers, whose regions overlap most)."""
    grids = _layer_grids(stage, patches, _cached if check_halo(halo) == "cache" else _recomputed)
    return [(_flat_macs(stage, i), int(grid.sum())) for i, grid in grids.items()]
