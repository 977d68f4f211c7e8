"""Assemble what `tvm-patch profile` prints: a JSON-ready dict, and its text table."""

from __future__ import annotations

from tvm_patch.frontend import load
from tvm_patch.graph import build_graph
from tvm_patch.profile import describe_layer, peak, profile_layers

CONVENTION = ("int8 activations (1 B/element); layer = inputs + output + other live tensors; depthwise in place; "
              "residual add in place; weights in Flash; kB = 1024 B")


def profile(model_spec: str) -> dict:
    """Load a model and return its per-layer profile as a JSON-ready dict."""
    model = load(model_spec)
    graph = build_graph(model.mod)
    rows = profile_layers(graph)
    top = peak(rows)
    return {
        "model": model.name,
        "layout": graph.layout,
        "convention": CONVENTION,
        "layers": [r.to_json() for r in rows],
        "layer_by_layer": {"peak_bytes": top.bytes, "macs": graph.macs, "peak_layer": describe_layer(top),
                           "peak_index": top.index},
    }


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
    return "\n".join(lines)
