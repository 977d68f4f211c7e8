"""Assemble what `tvm-patch profile` prints: a JSON-ready dict, and its text table."""

from __future__ import annotations

from tvm import relax

from tvm_patch.errors import TvmPatchError
from tvm_patch.export.prefold import prefold_constants
from tvm_patch.frontend import load
from tvm_patch.graph import build_graph
from tvm_patch.patch.figures import patch_based
from tvm_patch.profile import describe_layer, peak, profile_layers
from tvm_patch.transform.lower_to_integer import float_ops_remaining, lower_to_integer

CONVENTION = ("int8 activations (1 B/element); layer = inputs + output + other live tensors; depthwise in place "
              "(plus the p (W + 1) outputs a k x k stride-1 kernel holds); residual add in place; weights in Flash; "
              "kB = 1024 B")


def profile(model_spec: str, patches: int | None = None, split: int | str | None = None,
            tir: bool = True, lowering: bool = True, halo: str = "recompute") -> dict:
    """Load a model and return its per-layer profile as a JSON-ready dict.

    With `patches` and `split`, a "patch_based" entry gives the figures of running the first `split` layers
    patch by patch over patches x patches patches (and, with `tir`, what the generated PrimFunc allocates).
    With `lowering`, a quantized model is run through LowerToInteger and "integer_lowering" lists the ops
    still computing in float.
    """
    if (patches is None) != (split is None):
        raise TvmPatchError("--patches and --split go together: give both, e.g. --patches 4 --split block:5")
    model = load(model_spec)
    mod = relax.transform.FoldConstant()(prefold_constants(model.mod))  # prefold: 14 s -> 0.4 s on mcunet-in0
    graph = build_graph(mod)
    rows = profile_layers(graph)
    top = peak(rows)
    result = {
        "model": model.name,
        "layout": graph.layout,
        "convention": CONVENTION,
        "layers": [r.to_json() for r in rows],
        "layer_by_layer": {"peak_bytes": top.bytes, "macs": graph.macs, "peak_layer": describe_layer(top),
                           "peak_index": top.index},
    }
    if lowering and _quantized(mod):
        left = float_ops_remaining(lower_to_integer(model.mod))
        result["integer_lowering"] = {"integer_only": not left, "float_ops": left}
    if patches is not None:
        result["patch_based"] = patch_based(graph, mod, patches, split, tir, imported=model.mod, halo=halo)
    return result


def _quantized(mod) -> bool:
    """True when `main` has quantize/dequantize ops (an int8 model imported as float chains)."""
    func = mod["main"]
    return any(isinstance(b.value, relax.Call) and getattr(b.value.op, "name", "") in ("relax.quantize",
                                                                                      "relax.dequantize")
               for blk in func.body.blocks for b in blk.bindings)


def _kb(n: int) -> str:
    return f"{n / 1024:.1f}"


def format_profile(result: dict) -> str:
    """A fixed-width table of the profile, with the peak marked."""
    lines = [f"model {result['model']} ({result['layout']}); {result['convention']}",
             f"{'#':>4} {'name':8} {'op':18} {'k':>5} {'s':>2} {'out shape':18} {'bytes':>10} {'kB':>8} "
             f"{'MACs':>12} {'RF':>9}"]
    peak_index = result["layer_by_layer"]["peak_index"]
    for r in result["layers"]:
        k = f"{r['kernel'][0]}x{r['kernel'][1]}" if r["op"] in ("conv2d", "depthwise_conv2d", "avg_pool2d",
                                                                 "max_pool2d") else ""
        mark = " <- peak" if r["index"] == peak_index else ""
        shape = "x".join(str(d) for d in r["out_shape"])
        rf = "x".join(str(d) for d in r["receptive_field"])
        lines.append(f"{r['index']:>4} {r['name']:8} {r['op']:18} {k:>5} {r['stride'][0]:>2} {shape:18} "
                     f"{r['bytes']:>10} {_kb(r['bytes']):>8} {r['macs']:>12} {rf:>9}{mark}")
    lbl = result["layer_by_layer"]
    lines.append(f"layer-by-layer peak: {lbl['peak_bytes']} B ({_kb(lbl['peak_bytes'])} kB) at "
                 f"layer {lbl['peak_index']} {lbl['peak_layer']}; MACs {lbl['macs']:,} ({lbl['macs'] / 1e6:.1f} M)")
    il = result.get("integer_lowering")
    if il:
        lines.append("after LowerToInteger: integer only" if il["integer_only"] else
                     f"after LowerToInteger, still in float (the model's own float boundary): {', '.join(il['float_ops'])}")
    pb = result.get("patch_based")
    if pb:
        ph, pw = pb["patches"]
        ih, iw = pb["patch_input_hw"]
        if pb["split_choice"] != "given":
            lines.append(f"split {pb['split_choice']}: layer {pb['split']}")
        lines.append(f"patch-based ({ph}x{pw} patches, stage = layers 1..{pb['split']} ending at {pb['split_layer']}, "
                     f"patch input {ih}x{iw}): peak {pb['peak_bytes']} B ({_kb(pb['peak_bytes'])} kB, "
                     f"{pb['reduction']:.1f}x smaller; {pb['peak_bytes_with_input']} B with the input image); "
                     f"MACs {pb['macs']:,} (+{pb['mac_overhead']:.1%} network, +{pb['stage_mac_overhead']:.1%} stage)")
        if pb.get("halo", "recompute") != "recompute" or "halo" in pb["split_choice"]:
            lines.append("halo: " + "; ".join(
                f"{h}{' (chosen)' if h == pb['halo'] else ''}: peak {x['peak_bytes']} B, MACs {x['macs']:,} "
                f"({x['mac_overhead']:+.1%} network)" + (f", caches {x['cache_bytes']} B" if x["cache_bytes"] else "")
                for h, x in pb["halo_modes"].items()))
            lines.append(f"chosen: {pb['halo_choice']}")
        if "tir_allocated_bytes" in pb:
            lines.append(f"patch stage PrimFunc (int8) allocates {pb['tir_allocated_bytes']} B per patch "
                         f"(its buffers: {pb['tir_buffer_bytes']['peak']} B live at most, "
                         f"{pb['tir_buffer_bytes']['total']} B in all)")
    return "\n".join(lines)
