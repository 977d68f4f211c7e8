"""Analytic per-layer memory profile (MCUNetV2 Sec. 2, Fig. 1) computed from the layer graph.

Convention (the paper's analytic profiling, which reproduces its figures exactly):
- activations are int8, one byte per element, whatever dtype the imported graph computes in;
- a layer's memory is its input(s) + its output + every other tensor live at that moment (e.g. the input of
  a residual block, held for the skip connection);
- a depthwise convolution runs in place: max(input, output) instead of input + output, when its input dies
  there (an input still held for a skip connection cannot be overwritten), plus the outputs it must hold
  before it may overwrite input it still reads (`convention.inplace_shift`: p (W + 1) for a stride-1 k x k
  layer, p = k // 2; none for a 1x1 or a 3x3 stride-2 layer). The paper counts no such bytes; no kernel
  can do without them (docs/patch-arena-sweep.md);
- an elementwise binary op (the residual add, the squeeze-and-excitation multiply) writes into an input that
  dies there, so its output adds nothing;
- the projection of a residual block adds the skip in place: a convolution whose only reader is a residual
  add, whose other operand (the held skip) dies there, accumulates into the skip's buffer, so its output
  adds nothing either (and the add itself then holds only the skip);
- a pad that only feeds convolutions is done inside them (the convolution reads its padding as the zero
  point, as MCU kernels do): the pad holds only its input, and the convolution counts the unpadded input;
- weights live in Flash and are not counted; kB = 1024 B.
"""

from __future__ import annotations

from dataclasses import dataclass

from tvm_patch.convention import accumulates_into_skip, core_bytes, inplace_shift
from tvm_patch.graph import Graph, Layer

BYTES_PER_ELEMENT = 1  # int8 activations


@dataclass
class LayerProfile:
    """One row of the profile."""

    index: int  # 1-based, as the CLI numbers layers (and `--split N` counts them)
    name: str
    op: str
    out_shape: tuple[int, ...]
    bytes: int
    macs: int
    rf: tuple[int, int]
    kernel: tuple[int, int]
    stride: tuple[int, int]
    block: int

    def to_json(self) -> dict:
        return {"index": self.index, "name": self.name, "op": self.op, "out_shape": list(self.out_shape),
                "bytes": self.bytes, "macs": self.macs, "receptive_field": list(self.rf),
                "kernel": list(self.kernel), "stride": list(self.stride), "block": self.block}


_CONVS = ("conv2d", "depthwise_conv2d")


def pad_into_conv(graph: Graph, layer: Layer) -> bool:
    """True for a pad layer whose every reader is a convolution (see the module docstring)."""
    readers = graph.tensors[layer.output].consumers
    return (layer.op == "pad" and bool(readers) and layer.output not in graph.outputs
            and all(graph.layers[r].op in _CONVS for r in readers))


def _elems(graph: Graph, tid: int) -> int:
    """Bytes of a tensor; a pad done inside its convolutions stands for its unpadded input."""
    t = graph.tensors[tid]
    if t.producer is not None and pad_into_conv(graph, graph.layers[t.producer]):
        return _elems(graph, graph.layers[t.producer].inputs[0])
    return t.elements * BYTES_PER_ELEMENT


def live_others(graph: Graph, layer: Layer) -> list[int]:
    """Tensors other than the layer's inputs and output that are live while it runs."""
    i = layer.index
    out = []
    for t in graph.tensors:
        if t.id == layer.output or t.id in layer.inputs:
            continue
        produced = t.producer if t.producer is not None else -1
        if produced < i < graph.last_use(t.id):
            out.append(t.id)
    return out


def in_place(graph: Graph, layer: Layer) -> bool:
    """True when the layer's output may overwrite one of its inputs (see the module docstring)."""
    if layer.op == "depthwise_conv2d":
        return graph.last_use(layer.inputs[0]) == layer.index
    if layer.op in ("add", "mul", "sub"):
        n_out = graph.tensors[layer.output].elements
        return any(graph.tensors[t].elements == n_out and graph.last_use(t) == layer.index for t in layer.inputs)
    return False


def adds_into_skip(graph: Graph, layer: Layer) -> bool:
    """True for a convolution that accumulates into a residual skip (see `tvm_patch.convention`)."""
    dense = layer.op == "conv2d" and layer.output not in graph.outputs
    return accumulates_into_skip(
        dense, graph.tensors[layer.output].consumers,
        residual_add=lambda j: graph.layers[j].op == "add" and graph.layers[j].broadcast_free,
        skips_of=lambda j: [t for t in graph.layers[j].inputs if t != layer.output],
        dies_at=lambda t, j: graph.last_use(t) == graph.layers[j].index)


def _hw(graph: Graph, tid: int) -> tuple[int, int]:
    shape = graph.tensors[tid].shape
    return (shape[2], shape[3]) if graph.layout == "NCHW" else (shape[1], shape[2])


def depthwise_shift_bytes(graph: Graph, layer: Layer) -> int:
    """The bytes an in-place depthwise layer holds beyond max(input, output) (`convention.inplace_shift`),
    over its unpadded input (a pad layer done inside it adds its widths to the layer's padding)."""
    src, top, left = layer.inputs[0], layer.padding[0], layer.padding[1]
    producer = graph.tensors[src].producer
    if producer is not None and pad_into_conv(graph, graph.layers[producer]):
        pad = graph.layers[producer]
        src, top, left = pad.inputs[0], top + pad.padding[0], left + pad.padding[1]
    return inplace_shift(_hw(graph, src), _hw(graph, layer.output), layer.kernel, layer.stride,
                         (top, left)) * BYTES_PER_ELEMENT


def layer_bytes(graph: Graph, layer: Layer) -> int:
    """Activation bytes of one layer under the paper's convention."""
    ins = sum(_elems(graph, t) for t in layer.inputs)
    out = _elems(graph, layer.output)
    fused_into_skip = [t for t in layer.inputs if graph.tensors[t].producer is not None
                       and adds_into_skip(graph, graph.layers[graph.tensors[t].producer])]
    kind = ("depthwise" if layer.op == "depthwise_conv2d" else "elementwise") if in_place(graph, layer) else None
    core = core_bytes(ins, out, output_in_input=adds_into_skip(graph, layer) or pad_into_conv(graph, layer),
                      output_is_skip=layer.op == "add" and bool(fused_into_skip), in_place=kind)
    if kind == "depthwise":
        core += depthwise_shift_bytes(graph, layer)
    return core + sum(_elems(graph, t) for t in live_others(graph, layer))


def profile_layers(graph: Graph) -> list[LayerProfile]:
    """The per-layer rows of the profile."""
    return [
        LayerProfile(layer.index + 1, layer.name, layer.op, graph.tensors[layer.output].shape,
                     layer_bytes(graph, layer), layer.macs, layer.rf, layer.kernel, layer.stride, layer.block)
        for layer in graph.layers
    ]


def peak(rows: list[LayerProfile]) -> LayerProfile:
    """The row with the largest memory (the first one on ties)."""
    return max(rows, key=lambda r: (r.bytes, -r.index))


def describe_layer(row: LayerProfile) -> str:
    """e.g. 'b3.1 (conv2d 1x1)': the name readers see for the peak layer."""
    kind = row.op
    if row.op in ("conv2d", "depthwise_conv2d", "avg_pool2d", "max_pool2d"):
        kind += f" {row.kernel[0]}x{row.kernel[1]}" + (f" s{row.stride[0]}" if row.stride[0] > 1 else "")
    return f"{row.name} ({kind})"
