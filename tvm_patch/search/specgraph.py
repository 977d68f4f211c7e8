"""The layer graph and patch stage of a zoo spec, built straight from the spec: no weights, no ONNX, no import.

A search evaluates thousands of architectures; importing each through ONNX and Relax would take seconds.
This builds the same `tvm_patch.graph.Graph` the import of the zoo's ONNX model gives (same layers, ops,
shapes, names and blocks; tests/test_search.py checks it against the import), so the analytic profile
(`tvm_patch.profile`) and the patch-based memory (`tvm_patch.patch.memory`) count it with their own code.
Relax bindings and receptive fields are left empty: nothing here reads them.
"""

from __future__ import annotations

import numpy as np

from tvm_patch.graph import Graph, Layer, Tensor
from tvm_patch.patch.stage import STAGE_INPUT, Add, Conv, Stage
from tvm_patch.zoo.spec import ConvSpec, NetSpec

INT8_WEIGHT_BYTES = 1
# per output channel of every convolution and the classifier, as the C export stores an int8 model:
# the int32 bias, and the int32 multiplier and shift of its requantization
PER_CHANNEL_BYTES = 4 + 8


class _Builder:
    def __init__(self, net: NetSpec) -> None:
        r = net.resolution
        self.tensors = [Tensor(0, (1, 3, r, r), "float32", None)]
        self.layers: list[Layer] = []
        self.block = 1
        self.n = 0

    def _add(self, op: str, inputs: list[int], shape: tuple[int, ...], **kw) -> int:
        idx, tid = len(self.layers), len(self.tensors)
        self.tensors.append(Tensor(tid, shape, "float32", idx))
        for t in dict.fromkeys(inputs):
            self.tensors[t].consumers.append(idx)
        self.n += 1
        self.layers.append(Layer(idx, op, list(dict.fromkeys(inputs)), tid, None, None, [], block=self.block,
                                 name=f"b{self.block}.{self.n}", **kw))
        return tid

    def conv(self, x: int, conv: ConvSpec) -> int:
        _, _, h, _ = self.tensors[x].shape
        out = conv.out_size(h)
        p = conv.kernel // 2
        op = "depthwise_conv2d" if conv.groups > 1 else "conv2d"
        return self._add(op, [x], (1, conv.out_ch, out, out), kernel=(conv.kernel, conv.kernel),
                         stride=(conv.stride, conv.stride), padding=(p, p, p, p), groups=conv.groups,
                         macs=conv.macs(h), activation=conv.act)

    def end_block(self) -> None:
        self.block, self.n = self.block + 1, 0


def spec_graph(net: NetSpec) -> Graph:
    """The layer graph of `net` as `build_graph` gives it for the zoo's ONNX model of `net` (float32, NCHW)."""
    if any(b.se_ch for b in net.blocks):
        raise ValueError(f"{net.name}: squeeze-excite blocks are not modelled here")
    b = _Builder(net)
    x = b.conv(0, net.stem)
    b.end_block()
    for block in net.blocks:
        skip = x
        for _, conv in block.convs():
            x = b.conv(x, conv)
        if block.residual:
            x = b._add("add", [x, skip], b.tensors[x].shape, broadcast_free=True)
        b.end_block()
    if net.head is not None:
        x = b.conv(x, net.head)
    c = b.tensors[x].shape[1]
    x = b._add("global_pool2d", [x], (1, c))
    x = b._add("dense", [x], (1, net.num_classes), macs=c * net.num_classes)
    return Graph(b.layers, b.tensors, [0], [x], "NCHW")


def spec_stage(graph: Graph, n: int) -> Stage:
    """The first n layers of a `spec_graph` as a float32 patch `Stage` with zero weights (shapes are all the
    patch arithmetic reads; the weights are broadcast views, so this allocates nothing)."""
    value = {graph.inputs[0]: STAGE_INPUT}
    layers = []
    for layer in graph.layers[:n]:
        if layer.op == "add":
            a, skip = layer.inputs
            layers.append(Add(other=value[skip], input=value[a]))
        else:
            c_in = graph.channels(layer.inputs[0])
            c_out = graph.channels(layer.output)
            shape = (c_out, c_in // layer.groups, *layer.kernel)
            act = layer.activation if layer.activation in ("relu", "relu6") else "none"
            layers.append(Conv(np.broadcast_to(np.float32(0), shape), None, layer.stride, layer.padding,
                               layer.groups, act, input=value[layer.inputs[0]]))
        value[layer.output] = len(layers) - 1
    return Stage(graph.tensors[graph.inputs[0]].shape, tuple(layers), layout="NCHW", dtype="float32")


def weight_bytes(net: NetSpec) -> int:
    """Bytes of the weights of `net`'s int8 model as the C export stores them (`weights_bytes` of
    `tvm-patch build`): int8 weights, and per output channel an int32 bias, multiplier and shift."""
    convs = [net.stem, *(c for blk in net.blocks for _, c in blk.convs())]
    if net.head is not None:
        convs.append(net.head)
    total = sum(c.out_ch * (c.in_ch // c.groups) * c.kernel ** 2 * INT8_WEIGHT_BYTES + c.out_ch * PER_CHANNEL_BYTES
                for c in convs)
    return total + net.feature_ch * net.num_classes * INT8_WEIGHT_BYTES + net.num_classes * PER_CHANNEL_BYTES
