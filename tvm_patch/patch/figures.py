"""The "patch_based" figures of a model: patched peak, reduction, MAC overhead and what the stage allocates.

Library logic shared by the profile (`tvm_patch.report`), the export's baselines and the bench."""

from __future__ import annotations

from tvm import relax

from tvm_patch.errors import TvmPatchError
from tvm_patch.graph import build_graph
from tvm_patch.patch.from_graph import is_qdq_stage, stage_from_graph, stage_from_qdq
from tvm_patch.patch.memory import PEAK_SLACK, ScheduleChoice, best_halo, best_schedule, int8_twin, patch_memory
from tvm_patch.patch.regions import HALO_MODES, input_reads
from tvm_patch.patch.regions import per_patch_bytes
from tvm_patch.patch.schedule import allocated_bytes, build_stage
from tvm_patch.profile import peak, profile_layers
from tvm_patch.split import resolve_split
from tvm_patch.transform.lower_to_integer import lower_to_integer


def _auto_split(graph, mod, imported, pp: tuple[int, int], halos: tuple[str, ...]) -> ScheduleChoice | None:
    """The (split, halo mode) `PatchStage(split="auto")` picks, on the module it would run on: an int8 QDQ model's
    stage is chosen after LowerToInteger (whose layers are numbered as the imported ones)."""
    if not is_qdq_stage(graph, 1, mod["main"]):
        return best_schedule(graph, mod["main"], pp, halos)
    low = relax.transform.FoldConstant()(lower_to_integer(imported if imported is not None else mod))
    return best_schedule(build_graph(low), low["main"], pp, halos)


def patch_based(graph, mod, patches: int, split: int | str, tir: bool, imported=None, halo: str = "recompute") -> dict:
    """The "patch_based" entry of the profile (see tvm_patch.patch.memory for the convention).

    `mod` is the folded module of `graph`; `imported` the module as imported, needed for quantized (QDQ)
    models, whose int8 stage is read from the integer-lowered module. `halo`: "recompute", "cache" or "auto"
    (the mode `best_schedule` picks); "halo_modes" gives both modes' peak and MACs for the same split."""
    if patches < 1:
        raise TvmPatchError(f"--patches {patches}: give a patch count of at least 1")
    if halo not in (*HALO_MODES, "auto"):
        raise TvmPatchError(f"--halo {halo}: use {', '.join(HALO_MODES)} or auto")
    pp = (patches, patches)
    auto = str(split).strip() == "auto"
    halos = HALO_MODES if halo == "auto" else (halo,)
    if auto:
        chosen = _auto_split(graph, mod, imported, pp, halos)
        if chosen is None:
            raise TvmPatchError(f"split auto: no patch stage with {patches}x{patches} patches lowers this network's "
                                "peak, so auto runs it layer by layer; give --split N or block:N to see a stage")
        split, halo, why = chosen.split, chosen.halo, chosen.why
    n = resolve_split(graph, split, pp)
    if is_qdq_stage(graph, n, mod["main"]):
        stage, _ = stage_from_qdq(imported if imported is not None else mod, graph, n)
    else:
        stage, _ = stage_from_graph(graph, n, mod["main"])
    modes = {h: patch_memory(graph, stage, n, pp, h) for h in HALO_MODES}
    if halo == "auto":
        chosen = best_halo(graph, None, n, pp, stage)
        halo, why = chosen.halo, chosen.why
    elif not auto:
        why = f"halo {halo}: given"
    m = modes[halo]
    out = {
        "peak_bytes": m.peak_bytes,
        "peak_bytes_with_input": m.peak_bytes_with_input,
        "stage_peak_bytes": m.stage_peak_bytes,
        "after_stage_peak_bytes": m.rest_peak_bytes,
        "macs": m.macs,
        "mac_overhead": m.macs / graph.macs - 1,
        "stage_mac_overhead": m.stage_macs_patched / m.stage_macs_layer_by_layer - 1,
        "stage_layer_macs": [list(x) for x in m.layer_macs],
        "stage_input_reads": list(input_reads(stage, pp, halo)),
        "split": n,
        "split_layer": graph.layers[n - 1].name,
        "split_choice": (f"auto: the fewest MACs among the splits whose peak is within {PEAK_SLACK:.0%} of the "
                         "smallest" if auto else "given") + (f"; halo {halo} (auto: both modes considered)"
                                                             if len(halos) > 1 else ""),
        "halo": halo,
        "halo_choice": why,
        "halo_modes": {h: {"peak_bytes": x.peak_bytes, "macs": x.macs, "mac_overhead": x.macs / graph.macs - 1,
                           "stage_mac_overhead": x.stage_macs_patched / x.stage_macs_layer_by_layer - 1,
                           "cache_bytes": x.cache_bytes} for h, x in modes.items()},
        "patches": list(m.patch_counts),
        "patch_input_hw": list(m.patch_input_hw),
        "reduction": None,
    }
    lbl_peak = peak(profile_layers(graph)).bytes
    out["reduction"] = lbl_peak / m.peak_bytes
    if tir:
        twin = int8_twin(stage)  # the int8 stage: what the device runs, one byte per activation
        analytic = per_patch_bytes(twin, pp)
        out["tir_allocated_bytes"] = allocated_bytes(build_stage(twin, pp))
        entries = sum(v for k, v in analytic.items() if k not in ("total", "peak"))
        out["tir_buffer_bytes"] = {"total": analytic["total"], "peak": analytic["peak"], "entries": entries}
    return out
