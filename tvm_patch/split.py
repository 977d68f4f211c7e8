"""Where the patch stage ends: parsing `--split`, and checking that a split can be run patch by patch.

A split counts layers from the network input, as `tvm-patch profile` numbers them (`5` = the first five
layers), or blocks (`block:5` = the first five blocks, the stem being block 1). A quantized model is
numbered the same as imported and after LowerToInteger (see `tvm_patch.graph`), so a split read from the
profile of the imported model names the same layers in the lowered module that is patched.
"""

from __future__ import annotations

from tvm_patch.errors import TvmPatchError
from tvm_patch.graph import Graph, Layer, cut_after

# Ops whose output pixel depends on a bounded window of the input: they can be computed patch by patch.
# (A pad feeding convolutions is part of each convolution that reads it: `tvm_patch.graph` folds it in.)
TILEABLE = ("conv2d", "depthwise_conv2d", "add", "max_pool2d")
# Layers whose every output reads the whole feature map.
GLOBAL_REDUCTIONS = ("global_pool2d", "mean")
# Activations a stage layer can end in (relu, relu6 and their clamp forms); sigmoid, float hard swish ... cannot.
STAGE_ACTIVATIONS = (None, "relu", "relu6", "clip", "maximum", "minimum")
# Activations an int8 stage layer can also end in: LowerToInteger makes them a 256-entry table (a `Lookup`).
# (A sigmoid that LowerToInteger computes on a convolution's accumulator, ONNX QDQ's form, is no table:
# `stage_from_graph` refuses it, and the auto split skips such splits.)
INT8_TABLE_ACTIVATIONS = ("hard_swish", "sigmoid")


def _quantized(graph: Graph) -> bool:
    """True for a quantized model, as imported (its quantize ops make int8 tensors) or lowered."""
    return any(t.dtype in ("int8", "uint8") for t in graph.tensors)


def _untileable(graph: Graph, layer: Layer, quantized: bool) -> str | None:
    """What keeps `layer` out of a patch stage (the op, its activation, ...), or None when it can be in one.
    `quantized`: the model is int8, so LowerToInteger makes its hard swish and sigmoid tables."""
    if layer.op not in TILEABLE:
        return layer.op
    table = layer.activation in INT8_TABLE_ACTIVATIONS and quantized
    if layer.activation not in STAGE_ACTIVATIONS and not table:
        return f"{layer.op} with {layer.activation}"
    if layer.op == "add" and not layer.broadcast_free:  # a residual add of two same-shaped tensors only
        return "add with broadcasting"
    if layer.op == "max_pool2d":  # the window's output size (a ceil-mode pool may add a window)
        (h, w), (ho, wo) = graph.hw(layer.inputs[0]), graph.hw(layer.output)
        if (layer.region.h.output_size(h), layer.region.w.output_size(w)) != (ho, wo):
            return "max_pool2d with a ceil-mode window"
    return None


def check_split(graph: Graph, n: int, patches: tuple[int, int] | None = None) -> str | None:
    """Why the first n layers cannot be one patch stage, or None when they can."""
    if n < 1 or n > len(graph.layers):
        return f"outside the network (1..{len(graph.layers)} layers)"
    if len(graph.inputs) != 1:
        return "the network has several inputs"
    quantized = _quantized(graph)
    for layer in graph.layers[:n]:
        if layer.op in GLOBAL_REDUCTIONS:
            return (f"layer {layer.index + 1} {layer.name} ({layer.op}) cannot be computed patch by patch: it is a "
                    "global reduction (a squeeze-and-excitation MEAN, global pooling) whose every output reads the whole "
                    "feature map, so the stage must end before it")
        what = _untileable(graph, layer, quantized)
        if what is not None:
            return f"layer {layer.index + 1} {layer.name} ({what}) cannot be computed patch by patch"
    if not cut_after(graph, n - 1):  # only the stage output may be needed after the stage
        return f"a tensor of the stage is still needed after layer {n} (the split falls inside a residual block)"
    out = graph.layers[n - 1].output
    if len(graph.tensors[out].shape) != 4:
        return f"the stage output of layer {n} is not a 4-D feature map"
    if patches is not None:
        h, w = graph.hw(out)
        if patches[0] > h or patches[1] > w:
            return f"{patches[0]}x{patches[1]} patches do not fit the {h}x{w} stage output of layer {n}"
    return None


def valid_splits(graph: Graph, patches: tuple[int, int] | None = None) -> list[int]:
    """All layer counts that make a valid patch stage."""
    return [n for n in range(1, len(graph.layers) + 1) if check_split(graph, n, patches) is None]


def parse_split(graph: Graph, split: int | str) -> int:
    """Turn `split` (a layer count, or 'block:N') into a layer count; errors name the valid range."""
    text = str(split).strip()
    if text.startswith("block:"):
        try:
            nb = int(text[len("block:"):])
        except ValueError:
            raise TvmPatchError(f"split '{text}': expected block:N with N a whole number") from None
        blocks = max(layer.block for layer in graph.layers)
        if nb < 1 or nb > blocks:
            raise TvmPatchError(f"split '{text}' is beyond the network: it has blocks 1..{blocks}")
        return max(layer.index for layer in graph.layers if layer.block == nb) + 1
    try:
        return int(text)
    except ValueError:
        raise TvmPatchError(f"split '{text}': expected a layer count N or block:N") from None


def resolve_split(graph: Graph, split: int | str, patches: tuple[int, int]) -> int:
    """The layer count of a valid split, or a TvmPatchError naming the problem and the largest valid split."""
    n = parse_split(graph, split)
    why = check_split(graph, n, patches)
    if why is None:
        return n
    valid = valid_splits(graph, patches)
    hint = (f"the largest valid split is {valid[-1]} (layer {graph.layers[valid[-1] - 1].name}, "
            f"block:{graph.layers[valid[-1] - 1].block})" if valid else "no split of this network can be patched")
    raise TvmPatchError(f"split {split}: {why}; {hint}")
