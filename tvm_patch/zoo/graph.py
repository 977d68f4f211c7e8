"""Lower a NetSpec to a flat list of named layers with seeded weights (batch norm folded into conv).

The layer list is the single source that both the ONNX exporter and the numpy reference walk, so the two
can never disagree about structure. Weights are seeded from (model name, layer name) with zlib.crc32, so a
model is bit-for-bit reproducible across processes and one layer's weights do not depend on the others.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import numpy as np

from tvm_patch.zoo.spec import ConvSpec, NetSpec

BN_EPS = 1e-5
INPUT = "input"


@dataclass
class Layer:
    """One ONNX node to be: kind in conv, relu, relu6, sigmoid, add, mul, pool, flatten, gemm.

    `name` is both the node name and its output tensor name; conv/gemm carry `weight` and `bias`.
    """

    kind: str
    name: str
    inputs: tuple[str, ...]
    weight: np.ndarray | None = None
    bias: np.ndarray | None = None
    attrs: dict[str, int] = field(default_factory=dict)


def _rng(model: str, layer: str) -> np.random.Generator:
    return np.random.default_rng([zlib.crc32(model.encode()), zlib.crc32(layer.encode())])


def _conv_weights(model: str, layer: str, conv: ConvSpec, gain: float) -> tuple[np.ndarray, np.ndarray]:
    """He-style normal weights scaled by `gain`, then a random batch norm folded into weight and bias."""
    rng = _rng(model, layer)
    fan_in = (conv.in_ch // conv.groups) * conv.kernel * conv.kernel
    shape = (conv.out_ch, conv.in_ch // conv.groups, conv.kernel, conv.kernel)
    w = rng.normal(0.0, gain / np.sqrt(fan_in), size=shape)
    gamma = rng.uniform(0.7, 1.3, conv.out_ch)
    beta = rng.normal(0.0, 0.2, conv.out_ch)
    mean = rng.normal(0.0, 0.1, conv.out_ch)
    var = rng.uniform(0.7, 1.3, conv.out_ch)
    scale = gamma / np.sqrt(var + BN_EPS)
    w = w * scale[:, None, None, None]
    b = beta - mean * scale
    return w.astype(np.float32), b.astype(np.float32)


class _Lowering:
    def __init__(self, net: NetSpec) -> None:
        self.net = net
        self.layers: list[Layer] = []

    def conv(self, name: str, x: str, conv: ConvSpec, gain: float | None = None) -> str:
        # sqrt(2) keeps the second moment through relu-like activations; linear convs get 1.
        gain = gain if gain is not None else (np.sqrt(2.0) if conv.act else 1.0)
        w, b = _conv_weights(self.net.name, name, conv, gain)
        self.layers.append(Layer("conv", name, (x,), w, b,
                                 {"stride": conv.stride, "pad": conv.kernel // 2, "groups": conv.groups}))
        if conv.act is None:
            return name
        return self.op(conv.act, f"{name}.{conv.act}", name)

    def op(self, kind: str, name: str, *inputs: str) -> str:
        self.layers.append(Layer(kind, name, inputs))
        return name

    def se(self, prefix: str, x: str, channels: int, reduced: int, act: str) -> str:
        pooled = self.op("pool", f"{prefix}.se.pool", x)
        r = self.conv(f"{prefix}.se.reduce", pooled, ConvSpec(channels, reduced, act=act))
        e = self.conv(f"{prefix}.se.expand", r, ConvSpec(reduced, channels, act=None))
        gate = self.op("sigmoid", f"{prefix}.se.sigmoid", e)
        return self.op("mul", f"{prefix}.se.mul", x, gate)

    def run(self) -> list[Layer]:
        net = self.net
        x = self.conv("stem", INPUT, net.stem)
        for index, block in enumerate(net.blocks, start=2):  # the stem is block 1
            prefix, skip = f"b{index}", x
            for role, conv in block.convs():
                # residual branches start small so the skip stream does not double at every block
                gain = 0.5 if role == "project" and block.residual else None
                x = self.conv(f"{prefix}.{role}", x, conv, gain)
                if role == "dw" and block.se_ch:
                    x = self.se(prefix, x, block.mid_ch, block.se_ch, block.act)
            if block.residual:
                x = self.op("add", f"{prefix}.add", x, skip)
        if net.head is not None:
            x = self.conv("head", x, net.head)
        x = self.op("flatten", "flatten", self.op("pool", "pool", x))
        rng = _rng(net.name, "classifier")
        w = rng.normal(0.0, 1.0 / np.sqrt(net.feature_ch), (net.num_classes, net.feature_ch)).astype(np.float32)
        b = rng.normal(0.0, 0.1, net.num_classes).astype(np.float32)
        self.layers.append(Layer("gemm", "classifier", (x,), w, b))
        return self.layers


def lower(net: NetSpec) -> list[Layer]:
    """The network as layers in topological order; the last layer ("classifier") gives the logits."""
    return _Lowering(net).run()
