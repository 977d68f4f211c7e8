"""Tiny ONNX graphs built in the tests, with layer shapes chosen so that memory figures are easy to check."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


class OnnxBuilder:
    """Append Conv/Clip/Add/... nodes to a float32 NCHW graph with seeded weights."""

    def __init__(self, shape: tuple[int, ...], seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)
        self.inits: list[onnx.TensorProto] = []
        self.nodes: list[onnx.NodeProto] = []
        self.shape = shape
        self.n = 0

    def _const(self, name: str, arr: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(arr, dtype=np.float32), name))
        return name

    def _name(self, prefix: str) -> str:
        self.n += 1
        return f"{prefix}{self.n}"

    def conv(self, x: str, cin: int, cout: int, k: int, stride: int = 1, groups: int = 1,
             act: str | None = "relu6") -> str:
        name = self._name("conv")
        w = self._const(name + ".w", self.rng.normal(0, 0.3, (cout, cin // groups, k, k)))
        b = self._const(name + ".b", self.rng.normal(0, 0.1, (cout,)))
        self.nodes.append(helper.make_node("Conv", [x, w, b], [name], name=name, kernel_shape=[k, k],
                                           strides=[stride, stride], pads=[k // 2] * 4, group=groups))
        if act == "relu6":
            lo, hi = self._const(name + ".lo", np.array(0.0)), self._const(name + ".hi", np.array(6.0))
            self.nodes.append(helper.make_node("Clip", [name, lo, hi], [name + ".a"]))
            return name + ".a"
        if act == "relu":
            self.nodes.append(helper.make_node("Relu", [name], [name + ".a"]))
            return name + ".a"
        return name

    def add(self, a: str, b: str) -> str:
        name = self._name("add")
        self.nodes.append(helper.make_node("Add", [a, b], [name], name=name))
        return name

    def head(self, x: str, cin: int, classes: int) -> str:
        self.nodes.append(helper.make_node("GlobalAveragePool", [x], ["gap"]))
        self.nodes.append(helper.make_node("Flatten", ["gap"], ["flat"]))
        w = self._const("fc.w", self.rng.normal(0, 0.3, (classes, cin)))
        b = self._const("fc.b", self.rng.normal(0, 0.3, (classes,)))
        self.nodes.append(helper.make_node("Gemm", ["flat", w, b], ["output"], transB=1))
        return "output"

    def model(self, out: str, out_shape: list[int]) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, "test", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                                     list(self.shape))],
                                  [helper.make_tensor_value_info(out, TensorProto.FLOAT, out_shape)], self.inits)
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def tiny_residual() -> onnx.ModelProto:
    """stem 3x3 s2 (3->8, 16x16 -> 8x8), dw 3x3, linear pw, residual add with the stem output, pool, dense 10."""
    b = OnnxBuilder((1, 3, 16, 16))
    x = b.conv("input", 3, 8, 3, stride=2)
    y = b.conv(x, 8, 8, 3, groups=8)
    y = b.conv(y, 8, 8, 1, act=None)
    z = b.add(x, y)
    return b.model(b.head(z, 8, 10), [1, 10])
