"""A patch stage described from the layer graph: the first n layers of a Relax module as a `Stage`.

Weights and biases come from the module's constants (run FoldConstant first); the epilogue ops fused into
each layer (bias add, relu/relu6 as imported by TVM's frontends) become the stage layer's bias and activation.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from tvm_patch.errors import TvmPatchError
from tvm_patch.graph import Graph, Layer
from tvm_patch.patch.stage import STAGE_INPUT, Add, Conv, Stage


def _const(expr: relax.Expr, what: str) -> np.ndarray:
    if not isinstance(expr, tvm.ir.expr.Constant):
        raise TvmPatchError(f"{what} is not a constant; the patch stage needs weights known at compile time")
    return expr.value.numpy()


def _epilogue(layer: Layer, bindings: dict, channels: int) -> tuple[np.ndarray | None, str]:
    """Bias and activation from the unary ops fused after a layer's anchor (float32 graphs)."""
    bias: np.ndarray | None = None
    act = "none"
    for var in layer.bindings[1:]:
        call = bindings[var]
        op = call.op.name if isinstance(call.op, tvm.ir.Op) else ""
        operands = list(call.args)
        if op == "relax.call_tir":  # ONNX Clip imports as call_tir(maximum/minimum) PrimFuncs
            op = "relax." + call.args[0].name_hint.rstrip("0123456789_")
            operands = list(call.args[1].fields)
        scalar = None
        if op in ("relax.maximum", "relax.minimum") and len(operands) == 2:
            bound = _const(operands[1], f"layer {layer.name}: {op} bound")
            scalar = float(bound.reshape(-1)[0]) if bound.size == 1 else None
        if op == "relax.add" and bias is None and act == "none":
            b = _const(call.args[1], f"layer {layer.name}: bias")
            if b.size != channels:
                raise TvmPatchError(f"layer {layer.name}: a bias of {b.size} values for {channels} channels")
            bias = b.reshape(-1)
        elif op == "relax.nn.relu" and act == "none":
            act = "relu"
        elif op == "relax.maximum" and scalar == 0.0 and act == "none":
            act = "relu"
        elif op == "relax.minimum" and scalar == 6.0 and act == "relu":
            act = "relu6"
        elif op == "relax.clip":
            lo, hi = float(call.args[1].value), float(call.args[2].value)
            if (lo, hi) == (0.0, 6.0) and act == "none":
                act = "relu6"
            elif lo == 0.0 and hi >= 3.0e38 and act == "none":
                act = "relu"
            else:
                raise TvmPatchError(f"layer {layer.name}: clip({lo}, {hi}) is not relu/relu6")
        else:
            raise TvmPatchError(f"layer {layer.name}: {op or call.op} after the {layer.op} cannot be fused into "
                                "the patch stage (float32 stages take bias + relu/relu6; run LowerToInteger first "
                                "for int8 models)")
    return bias, act


def stage_from_graph(graph: Graph, n: int, func: relax.Function) -> tuple[Stage, relax.Expr]:
    """The first n layers of `func` (whose layer graph is `graph`) as a Stage, and the stage input expression."""
    bindings = {b.var: b.value for blk in func.body.blocks for b in blk.bindings}
    value = {graph.inputs[0]: STAGE_INPUT}  # tensor id -> stage value index
    layers = []
    stage_input = None
    for layer in graph.layers[:n]:
        anchor = bindings[layer.anchor]
        if layer.op in ("conv2d", "depthwise_conv2d"):
            src = layer.inputs[0]
            if src == graph.inputs[0]:
                stage_input = anchor.args[0]
            attrs = anchor.attrs
            weight = _const(anchor.args[1], f"layer {layer.name}: weight")
            bias, act = _epilogue(layer, bindings, graph.channels(layer.output))
            layers.append(Conv(weight, bias, stride=layer.stride, padding=layer.padding, groups=layer.groups,
                               activation=act, kernel_layout=str(attrs.kernel_layout), input=value[src]))
        elif layer.op == "add":
            a, b = layer.inputs
            _, act = _epilogue(layer, bindings, graph.channels(layer.output))
            layers.append(Add(other=value[b], input=value[a], activation=act))
        else:  # resolve_split already refused it; keep the message if called directly
            raise TvmPatchError(f"layer {layer.name} ({layer.op}) cannot be computed patch by patch")
        value[layer.output] = len(layers) - 1
    if stage_input is None:
        raise TvmPatchError("the patch stage does not read the network input")
    in_shape = graph.tensors[graph.inputs[0]].shape
    dtype = str(stage_input.ty.dtype)
    if dtype != "float32":
        raise TvmPatchError(f"patch stages of {dtype} graphs need the integer lowering (LowerToInteger) first")
    return Stage(in_shape, tuple(layers), layout=graph.layout, dtype=dtype), stage_input
