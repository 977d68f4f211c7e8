"""Lowered layers to ONNX (opset 13, NCHW): float32, or int8 QDQ when activation QParams are given.

Forms: Conv with bias; Clip(x, 0, 6) with constant initializer bounds for relu6; Relu; Sigmoid; Add; Mul;
GlobalAveragePool; Flatten; Gemm(transB=1). int8: int8/int32 initializers behind per-channel
DequantizeLinear (axis 0) for weights and biases, QuantizeLinear -> DequantizeLinear on activations.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tvm_patch.zoo.graph import INPUT, Layer
from tvm_patch.zoo.quantize import QParams, quantize_bias, quantize_weight
from tvm_patch.zoo.spec import NetSpec

OPSET = 13
IR_VERSION = 8
OUTPUT = "output"
_ONNX_OP = {"conv": "Conv", "relu": "Relu", "relu6": "Clip", "sigmoid": "Sigmoid", "add": "Add", "mul": "Mul",
            "pool": "GlobalAveragePool", "flatten": "Flatten", "gemm": "Gemm"}


class _Writer:
    def __init__(self, qparams: dict[str, QParams] | None, final: str) -> None:
        self.q = qparams
        self.final = final
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.ref: dict[str, str] = {}  # tensor name -> the name its consumers read (after any QDQ)
        self.scale: dict[str, float] = {}  # consumer-facing tensor -> its activation scale (int8 only)

    def init(self, name: str, value: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(value, name))
        return name

    def produced(self, tensor: str, onnx_name: str) -> None:
        """Register the output of a node; insert a QDQ pair when the tensor is quantized."""
        if self.q is None or tensor not in self.q:
            self.ref[tensor] = onnx_name
            return
        p = self.q[tensor]
        s = self.init(f"{tensor}.scale", np.array(p.scale, np.float32))
        z = self.init(f"{tensor}.zero_point", np.array(p.zero_point, np.int8))
        self.nodes.append(helper.make_node("QuantizeLinear", [onnx_name, s, z], [f"{tensor}.q"], f"{tensor}.quant"))
        out = OUTPUT if tensor == self.final else f"{tensor}.dq"
        self.nodes.append(helper.make_node("DequantizeLinear", [f"{tensor}.q", s, z], [out], f"{tensor}.dequant"))
        self.ref[tensor] = out
        self.scale[out] = p.scale

    def param(self, layer: Layer, x: str) -> tuple[str, str]:
        """Weight and bias inputs: float initializers, or int8/int32 initializers with DequantizeLinear."""
        w_name, b_name = f"{layer.name}.weight", f"{layer.name}.bias"
        if self.q is None:
            return self.init(w_name, layer.weight), self.init(b_name, layer.bias)
        wq, ws = quantize_weight(layer.weight)
        bq, bs = quantize_bias(layer.bias, self.scale[x], ws)
        for name, q, s, zdtype in ((w_name, wq, ws, np.int8), (b_name, bq, bs, np.int32)):
            ins = [self.init(f"{name}_q", q), self.init(f"{name}_scale", s),
                   self.init(f"{name}_zero_point", np.zeros(len(s), zdtype))]
            self.nodes.append(helper.make_node("DequantizeLinear", ins, [name], f"{name}.dequant", axis=0))
        return w_name, b_name

    def layer(self, layer: Layer) -> None:
        ins = [self.ref[name] for name in layer.inputs]
        attrs: dict[str, object] = {}
        if layer.kind == "conv":
            k, pad = layer.weight.shape[2], layer.attrs["pad"]
            attrs = {"kernel_shape": [k, k], "strides": [layer.attrs["stride"]] * 2, "pads": [pad] * 4,
                     "group": layer.attrs["groups"]}
            ins += self.param(layer, ins[0])
        elif layer.kind == "gemm":
            attrs = {"transB": 1}
            ins += self.param(layer, ins[0])
        elif layer.kind == "relu6":
            ins += ["relu6.min", "relu6.max"]
        elif layer.kind == "flatten":
            attrs = {"axis": 1}
        quantized = self.q is not None and layer.name in self.q
        out = OUTPUT if layer.name == self.final and not quantized else layer.name
        self.nodes.append(helper.make_node(_ONNX_OP[layer.kind], ins, [out], layer.name, **attrs))
        if layer.kind == "flatten" and ins[0] in self.scale:
            self.scale[out] = self.scale[ins[0]]
        self.produced(layer.name, out)


def export(net: NetSpec, layers: list[Layer], qparams: dict[str, QParams] | None = None) -> onnx.ModelProto:
    """The ONNX model of `layers`: input "input" [1,3,R,R] float32, output "output" [1,classes] float32."""
    w = _Writer(qparams, final=layers[-1].name)
    if any(layer.kind == "relu6" for layer in layers):
        w.init("relu6.min", np.array(0.0, np.float32))
        w.init("relu6.max", np.array(6.0, np.float32))
    w.produced(INPUT, INPUT)
    for layer in layers:
        w.layer(layer)
    r = net.resolution
    variant = "int8 QDQ" if qparams is not None else "float32"
    graph = helper.make_graph(
        w.nodes, net.name,
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, [1, 3, r, r])],
        [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, [1, net.num_classes])],
        w.inits, doc_string=f"{net.describe()} ({variant}, seeded random weights)")
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="tvm-patch.zoo", ir_version=IR_VERSION)
    return model
