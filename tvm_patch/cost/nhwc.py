"""A synthetic network as the NHWC int8 Relax module TVM's TFLite frontend would import for it: the same
dequantize -> op -> quantize -> clip chains over NHWC tensors, HWIO / HWOI kernels and int8 input and
output, so the cost model trains on the NHWC kernels TFLite models compile to (the ONNX networks give NCHW
ones only). The weights and activation ranges are the zoo's (seeded, batch norm folded, min/max
calibration), as the ONNX export of the same network uses them.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from tvm_patch.errors import TvmPatchError
from tvm_patch.zoo.graph import INPUT, Layer
from tvm_patch.zoo.quantize import QParams, quantize_bias, quantize_weight, quantized_tensors
from tvm_patch.zoo.spec import NetSpec

_ACTS = ("relu6", "relu")


def _c(value: np.ndarray | float | int, dtype: str) -> relax.Constant:
    return relax.const(np.asarray(value, dtype=dtype), dtype)


class _Emitter:
    def __init__(self, bb: relax.BlockBuilder, q: dict[str, QParams]) -> None:
        self.bb, self.q = bb, q
        self.int8: dict[str, relax.Expr] = {}  # tensor name -> its int8 value
        self.scale: dict[str, float] = {}

    def dq(self, name: str) -> relax.Expr:
        p = self.q[name]
        return self.bb.emit(relax.op.dequantize(self.int8[name], _c(p.scale, "float32"), _c(p.zero_point, "int32"),
                                                axis=0, out_dtype="float32"))

    def q8(self, x: relax.Expr, name: str, act: str | None) -> None:
        p = self.q[name]
        y = self.bb.emit(relax.op.quantize(x, _c(p.scale, "float32"), _c(p.zero_point, "int32"), axis=0,
                                           out_dtype="int8"))
        lo, hi = -128, 127
        if act in _ACTS:  # TFLite's fused activation: an int8 clamp at the quantized bounds
            lo = max(lo, p.zero_point)
            if act == "relu6":
                hi = min(hi, p.zero_point + int(round(6.0 / p.scale)))
        self.int8[name] = self.bb.emit(relax.op.clip(y, lo, hi))
        self.scale[name] = p.scale

    def conv(self, layer: Layer, out_name: str, act: str | None) -> None:
        x = self.dq(layer.inputs[0])
        wq, ws = quantize_weight(layer.weight)
        groups = int(layer.attrs["groups"])
        if groups == 1:  # OIHW -> HWIO
            w, layout, axis = wq.transpose(2, 3, 1, 0), "HWIO", 3
        else:  # depthwise (C, 1, k, k) -> HWOI (k, k, C, 1)
            w, layout, axis = wq.transpose(2, 3, 0, 1), "HWOI", 2
        wf = self.bb.emit(relax.op.dequantize(_c(np.ascontiguousarray(w), "int8"), _c(ws, "float32"),
                                              _c(0, "int32"), axis=axis, out_dtype="float32"))
        s, p = int(layer.attrs["stride"]), int(layer.attrs["pad"])
        y = self.bb.emit(relax.op.nn.conv2d(x, wf, strides=(s, s), padding=(p, p, p, p), groups=groups,
                                            data_layout="NHWC", kernel_layout=layout, out_layout="NHWC"))
        bq, bs = quantize_bias(layer.bias, self.scale[layer.inputs[0]], ws)
        b = self.bb.emit(relax.op.dequantize(_c(bq, "int32"), _c(bs, "float32"), _c(0, "int32"), axis=0,
                                             out_dtype="float32"))
        self.q8(self.bb.emit(relax.op.add(y, b)), out_name, act)

    def gemm(self, layer: Layer) -> None:
        x = self.dq(layer.inputs[0])
        wq, ws = quantize_weight(layer.weight)  # (out, in), per output channel
        wt = self.bb.emit(relax.op.permute_dims(_c(wq, "int8"), axes=[1, 0]))
        wf = self.bb.emit(relax.op.dequantize(wt, _c(ws, "float32"), _c(0, "int32"), axis=1, out_dtype="float32"))
        y = self.bb.emit(relax.op.matmul(x, wf))
        bq, bs = quantize_bias(layer.bias, self.scale[layer.inputs[0]], ws)
        b = self.bb.emit(relax.op.dequantize(_c(bq, "int32"), _c(bs, "float32"), _c(0, "int32"), axis=0,
                                             out_dtype="float32"))
        self.q8(self.bb.emit(relax.op.add(y, b)), layer.name, None)


def nhwc_module(net: NetSpec, layers: list[Layer], qparams: dict[str, QParams]) -> tvm.IRModule:
    """``layers`` (conv, relu/relu6, add, pool, flatten, gemm) as an NHWC int8 Relax module in the TFLite
    frontend's form; any other layer kind is refused."""
    quantized = set(quantized_tensors(layers))
    consumers: dict[str, list[Layer]] = {}
    for layer in layers:
        for name in layer.inputs:
            consumers.setdefault(name, []).append(layer)
    r = net.resolution
    bb = relax.BlockBuilder()
    inp = relax.Var(INPUT, relax.TensorType((1, r, r, 3), "int8"))
    with bb.function("main", [inp], attrs={"num_input": 1}):
        with bb.dataflow():
            e = _Emitter(bb, qparams)
            e.int8[INPUT], e.scale[INPUT] = inp, qparams[INPUT].scale
            alias: dict[str, str] = {}  # a fused activation's output -> the conv value it is
            for layer in layers:
                ins = tuple(alias.get(i, i) for i in layer.inputs)
                layer = Layer(layer.kind, layer.name, ins, layer.weight, layer.bias, layer.attrs)
                users = consumers.get(layer.name, [])
                if layer.kind == "conv":
                    fused = layer.name not in quantized
                    act = users[0].kind if fused else None
                    out = users[0].name if fused else layer.name
                    e.conv(layer, out, act)
                elif layer.kind in _ACTS:
                    alias[layer.name] = layer.name  # produced by its conv (fused)
                elif layer.kind == "add":
                    a, b = e.dq(ins[0]), e.dq(ins[1])
                    e.q8(bb.emit(relax.op.add(a, b)), layer.name, None)
                elif layer.kind == "pool":
                    x = e.dq(ins[0])
                    _, h, w, _ = [int(d) for d in x.ty.shape]
                    y = bb.emit(relax.op.nn.avg_pool2d(x, pool_size=(h, w), strides=(h, w), layout="NHWC",
                                                       out_layout="NHWC"))
                    e.q8(y, layer.name, None)
                elif layer.kind == "flatten":
                    src = e.int8[ins[0]]
                    c = int(src.ty.shape[-1])
                    e.int8[layer.name] = bb.emit(relax.op.reshape(src, (1, c)))
                    e.scale[layer.name] = e.scale[ins[0]]
                    qparams = {**qparams, layer.name: qparams[ins[0]]}
                    e.q = qparams
                elif layer.kind == "gemm":
                    e.gemm(layer)
                else:
                    raise TvmPatchError(f"{net.name}: layer {layer.name} ({layer.kind}) has no NHWC form here")
            gv = bb.emit_output(e.int8[layers[-1].name])
        bb.emit_func_output(gv)
    return bb.get()
