"""Analytic memory and MACs of a network whose first stage runs patch by patch (MCUNetV2 Table 1).

Same convention as `tvm_patch.profile` (int8, 1 B/element; input + output + other live tensors; depthwise and
residual add in place when an operand dies there; a residual projection accumulates into its skip), applied
per patch inside the stage:
- a stage layer holds its per-patch input and output regions (the halo included), the per-patch regions of
  other values still needed in the patch (a residual block's input), and the full-size stage output that the
  patches fill; the last stage layer writes straight into that stage output;
- the full input image is not held (it is streamed patch by patch): the first layer reads only its patch
  region. `peak_bytes_with_input` instead keeps the whole image in SRAM during the stage (the first layer then
  reads its region in place, so the region is not counted twice);
- an in-place depthwise stage layer holds no extra bytes (`convention.inplace_shift` over its regions is 0:
  its input region is its output region and the halo, so raster-order writes land below every later read);
- after the stage, layers are counted exactly as layer by layer.
The patch region of a value is its per-patch buffer (the interior patch's region, the largest).
"""

from __future__ import annotations

from dataclasses import dataclass

from tvm_patch.convention import accumulates_into_skip, core_bytes, inplace_shift
from tvm_patch.errors import TvmPatchError
from tvm_patch.graph import Graph
from tvm_patch.patch.regions import HALO_MODES, cache_bytes, check_halo, execution_order, layer_macs, plan_patches
import numpy as np

from tvm_patch.patch.stage import STAGE_INPUT, Add, AddQuant, Conv, ConvQuant, Lookup, MaxPool, Stage
from tvm_patch.patch.from_graph import stage_from_graph
from tvm_patch.profile import layer_bytes, peak, profile_layers
from tvm_patch.split import valid_splits


@dataclass
class PatchMemory:
    """The patch-based figures of one (split, patches) schedule."""

    peak_bytes: int
    peak_bytes_with_input: int
    stage_peak_bytes: int  # the largest stage layer (per patch + the stage output)
    rest_peak_bytes: int  # the largest layer after the stage
    macs: int  # whole network, the stage computed patch by patch
    stage_macs_layer_by_layer: int
    stage_macs_patched: int
    patch_input_hw: tuple[int, int]
    patch_counts: tuple[int, int]
    stage_layer_bytes: list[int]
    halo: str = "recompute"
    cache_bytes: int = 0  # cache mode: the row and column caches of every intermediate, live during the stage
    layer_macs: tuple[tuple[int, int], ...] = ()  # per conv layer of the stage: (layer by layer, patched)


def _region_elems(stage: Stage, plan, v: int) -> int:
    c = stage.value_shape(v)[0]
    rows, cols = plan.region_shape(v)
    return stage.batch * c * rows * cols


def _adds_into_skip(stage: Stage, i: int, last_use: dict, pos: dict) -> bool:
    """A non-depthwise conv accumulating into a residual skip (see `tvm_patch.convention`)."""
    layer = stage.layers[i]
    dense = isinstance(layer, Conv) and stage.geometry[i].groups == 1 and i != len(stage.layers) - 1
    return accumulates_into_skip(
        dense, stage.consumers(i) if dense else [],
        residual_add=lambda j: isinstance(stage.layers[j], Add),
        skips_of=lambda j: [v for v in stage.inputs[j] if v != i],
        dies_at=lambda v, j: last_use.get(v) == pos[j])


def patch_memory(graph: Graph, stage: Stage, n: int, patches: tuple[int, int], halo: str = "recompute") -> PatchMemory:
    """Figures for running the first n layers of `graph` (described by `stage`) over `patches` patches, the
    halos recomputed or cached (`regions.cache_bytes`: the caches, in int8, live during the whole stage)."""
    plan = plan_patches(stage, patches)
    caches = sum(cache_bytes(stage, patches, item=1).values()) if check_halo(halo) == "cache" else 0
    order = execution_order(stage)
    pos = {v: k for k, v in enumerate(order)}
    last = len(stage.layers) - 1
    last_use = {v: max(pos[c] for c in stage.consumers(v)) for v in order if v != last}
    stage_out = graph.tensors[graph.layers[n - 1].output].elements
    image = graph.tensors[graph.inputs[0]].elements

    rows = []
    rows_with_input = []
    for i in range(len(stage.layers)):
        layer = stage.layers[i]
        ins = list(dict.fromkeys(stage.inputs[i]))
        in_bytes = sum(_region_elems(stage, plan, v) for v in ins)
        out_bytes = 0 if i == last else _region_elems(stage, plan, i)
        dies = [v for v in ins if last_use[v] == pos[i]]
        depthwise = isinstance(layer, Conv) and stage.geometry[i].groups > 1
        elementwise = isinstance(layer, (Add, Lookup))
        kind = ("depthwise" if depthwise else "elementwise" if elementwise else None) if dies else None
        core = core_bytes(in_bytes, out_bytes, output_in_input=_adds_into_skip(stage, i, last_use, pos),
                          output_is_skip=isinstance(layer, Add) and any(
                              _adds_into_skip(stage, v, last_use, pos) for v in ins if v >= 0),
                          in_place=kind)
        if kind == "depthwise" and i != last:  # its buffers hold the ring: padding is memory (in practice 0, the
            g = stage.geometry[i]             # input region being the output region and its halo)
            core += inplace_shift(plan.region_shape(ins[0]), plan.region_shape(i), (g.kh, g.kw), g.stride, (0, 0))
        held = [v for v in last_use if v not in ins and pos[v] < pos[i] < last_use[v]]
        held_bytes = sum(_region_elems(stage, plan, v) for v in held)
        rows.append(core + held_bytes + stage_out + caches)
        # with the image in SRAM, the input region is a view of it: count the image instead of the region
        input_live = STAGE_INPUT in ins or STAGE_INPUT in held
        region = _region_elems(stage, plan, STAGE_INPUT) if input_live else 0
        rows_with_input.append(rows[-1] - region + image)

    rest = [layer_bytes(graph, layer) for layer in graph.layers[n:]]
    rest_peak = max(rest, default=0)
    by_layer = tuple(layer_macs(stage, patches, halo))
    patched = sum(p for _, p in by_layer)
    flat = sum(m for m, _ in by_layer)
    return PatchMemory(
        peak_bytes=max(max(rows), rest_peak),
        peak_bytes_with_input=max(max(rows_with_input), rest_peak),
        stage_peak_bytes=max(rows),
        rest_peak_bytes=rest_peak,
        macs=graph.macs - flat + patched,
        stage_macs_layer_by_layer=flat,
        stage_macs_patched=patched,
        patch_input_hw=plan.region_shape(STAGE_INPUT),
        patch_counts=plan.counts,
        stage_layer_bytes=rows,
        halo=halo,
        cache_bytes=caches,
        layer_macs=by_layer,
    )


def int8_twin(stage: Stage) -> Stage:
    """The same stage in int8 (zero weights, unit requantization): its buffers are what an int8 model allocates.

    Allocation depends only on shapes and dtypes, so this twin answers "what does the device's PrimFunc
    allocate per patch" for a float32 model too. Its outputs mean nothing.
    """
    if stage.dtype == "int8":
        return stage
    layers = []
    for i, layer in enumerate(stage.layers):
        if isinstance(layer, Conv):
            q = ConvQuant(0, 0, np.array([1 << 30], "int32"), np.array([0], "int32"))
            layers.append(Conv(np.zeros(layer.weight.shape, "int8"), None, layer.stride, layer.padding,
                               layer.groups, layer.activation, layer.kernel_layout, layer.input, q))
        elif isinstance(layer, MaxPool):  # no parameters: the same layer in an int8 stage
            layers.append(layer)
        else:
            q = AddQuant((0, 0), (1 << 30, 1 << 30), (0, 0), 0, 1 << 30, 0)
            layers.append(Add(layer.other, layer.input, layer.activation, q))
    return Stage(stage.input_shape, tuple(layers), layout=stage.layout, dtype="int8")


PEAK_SLACK = 0.10  # auto split: a peak within 10 % of the smallest counts as small enough


@dataclass(frozen=True)
class ScheduleChoice:
    """A (split, halo mode) the auto rule picked, and why, in one line (what `profile` prints and `--json` gives)."""

    split: int
    halo: str
    why: str


def pick_schedule(options: list[tuple[PatchMemory, str, int]], lbl_peak: int | None = None) -> ScheduleChoice | None:
    """The rule of `best_schedule` over (figures, halo mode, split) options; None when `lbl_peak` is given and no
    option's peak lies below it. Ties: recompute, then the smaller peak, then the smaller stage peak, then the
    shallower split."""
    if not options:
        return None
    smallest = min(m.peak_bytes for m, _, _ in options)
    if lbl_peak is not None and smallest >= lbl_peak:
        return None
    bound = smallest * (1 + PEAK_SLACK)
    ok = [o for o in options if o[0].peak_bytes <= bound]
    m, halo, n = min(ok, key=lambda o: (o[0].macs, HALO_MODES.index(o[1]), o[0].peak_bytes, o[0].stage_peak_bytes, o[2]))
    splits = len({o[2] for o in options}) > 1
    at = f"split {n}, " if splits else ""
    why = (f"{at}halo {halo}: the fewest MACs ({m.macs:,}) among the {len(ok)} of {len(options)} "
           f"{'(split, halo) options' if splits else 'halo modes'} whose peak is within {PEAK_SLACK:.0%} of the "
           f"smallest ({smallest:,} B); this one: peak {m.peak_bytes:,} B")
    for other in HALO_MODES:  # the best option of the other mode(s), for the trade
        if other == halo:
            continue
        alts = [o for o in options if o[1] == other]
        if not alts:
            continue
        near = [o for o in alts if o[0].peak_bytes <= bound]
        a = (min(near, key=lambda o: (o[0].macs, o[0].peak_bytes, o[0].stage_peak_bytes, o[2])) if near
             else min(alts, key=lambda o: (o[0].peak_bytes, o[2])))
        where = f"split {a[2]}, " if splits else ""
        verdict = (("as many MACs (ties go to recompute)" if a[0].macs == m.macs else "more MACs") if near else
                   f"peak {a[0].peak_bytes / smallest - 1:+.0%} over the smallest")
        why += f"; best {other} ({where}peak {a[0].peak_bytes:,} B, {a[0].macs:,} MACs): {verdict}"
    return ScheduleChoice(n, halo, why)


def best_split(graph: Graph, func, patches: tuple[int, int]) -> int | None:
    """The split `PatchStage(split="auto")` picks (halos recomputed): see `best_schedule`."""
    best = best_schedule(graph, func, patches, ("recompute",))
    return None if best is None else best.split


def best_halo(graph: Graph, func, n: int, patches: tuple[int, int], stage: Stage | None = None) -> ScheduleChoice:
    """The halo mode `best_schedule`'s rule picks for a given split n (`stage`: the stage of split n, when the
    caller already has it)."""
    if stage is None:
        stage, _ = stage_from_graph(graph, n, func)
    choice = pick_schedule([(patch_memory(graph, stage, n, patches, h), h, n) for h in HALO_MODES])
    assert choice is not None
    return choice


def best_schedule(graph: Graph, func, patches: tuple[int, int],
                  halos: tuple[str, ...] = HALO_MODES) -> ScheduleChoice | None:
    """(split, halo mode, why) with the fewest MACs among those whose patch-based peak is within PEAK_SLACK of the
    smallest (deeper stages buy little memory for many recomputed MACs; caching the halo trades its caches'
    bytes for the recomputed MACs), or None when no split lowers the layer-by-layer peak. Ties: recompute,
    then the smaller peak, then the smaller stage peak (the same network peak and MACs, but more room in the
    stage: det_net's stage then goes through its max pool), then the shallower split. A split whose stage
    cannot be built (`stage_from_graph` refuses a layer's bindings) is no candidate."""
    options = []
    for n in valid_splits(graph, patches):
        try:
            stage, _ = stage_from_graph(graph, n, func)
        except TvmPatchError:  # a layer the graph admits but its bindings do not fit (e.g. a requantizing pool)
            continue
        for halo in halos:
            options.append((patch_memory(graph, stage, n, patches, halo), halo, n))
    return pick_schedule(options, peak(profile_layers(graph)).bytes)
