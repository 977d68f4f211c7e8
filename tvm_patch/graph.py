"""The layer graph: a Relax module seen as a sequence of layers over activation tensors.

Every analysis of this project (memory profile, patch stage, memory plan) works on this one view, so ONNX,
TFLite and zoo models go through the same code. A *layer* is one anchor op (convolution, dense, pooling,
binary elementwise op, data movement ...) together with the unary elementwise ops that follow it (bias add,
activation, quantize/dequantize, cast, reshape), which a device fuses into the anchor. A *tensor* is what a
layer produces (or the network input); weights, and anything else computed only from constants, are not
tensors: they live in Flash.

Two rules make a quantized model and its `LowerToInteger` form number their layers alike (so that a split
`N` or `block:N` names the same layer in both):

- a spatial constant pad whose only readers are convolutions (LowerToInteger's zero-point pad, a TFLite PAD
  before a VALID convolution) is no layer: it folds into each convolution that reads it (`Layer.prologue`,
  `pad_width`, `pad_value`; `padding` is the total);
- a clip that only saturates (its bounds cover the int8 range, or its dtype's range) is no activation,
  unless its floor is the zero point of the values it clamps: that is a ReLU / ReLU6 whose clamp coincides
  with the range (TFLite and LowerToInteger fold the activation into the clip when the output zero point is
  -128). LowerToInteger ends every convolution in such a clip, and a linear projection must stay linear.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import tvm
from tvm import relax

from tvm_patch.errors import TvmPatchError
from tvm_patch.relax_util import call_tir_name, ints, op_name
from tvm_patch.geometry import RegionMap
from tvm_patch.names import (Q_ADD, Q_AVG_POOL2D, Q_CONV_LOGISTIC, Q_HARD_SWISH, Q_LOGISTIC, Q_MEAN, Q_MUL,
                             Q_SOFTMAX, Q_SUB, QPARAMS_ATTR)

# Relax ops that start a layer of their own when applied to an activation.
_CONV = "relax.nn.conv2d"
_DENSE = {"relax.matmul", "relax.linear", "relax.nn.dense"}
_POOL = {"relax.nn.avg_pool2d": "avg_pool2d", "relax.nn.max_pool2d": "max_pool2d",
         "relax.nn.adaptive_avg_pool2d": "global_pool2d", "relax.mean": "mean"}
_BINARY = {"relax.add": "add", "relax.multiply": "mul", "relax.subtract": "sub", "relax.divide": "div"}
# call_tir PrimFuncs (LowerToInteger's integer binary ops) that are the binary op of two activations
_TIR_BINARY = {Q_ADD: "add", Q_SUB: "sub", Q_MUL: "mul"}
# call_tir PrimFuncs of LowerToInteger that are activations fused into the producer
_TIR_ACTIVATIONS = {Q_LOGISTIC: "relax.sigmoid", Q_CONV_LOGISTIC: "relax.sigmoid", Q_HARD_SWISH: "relax.hard_swish"}
# layers whose requantized output a ReLU clamp may coincide with (see _clamps)
_WEIGHTED = {"conv2d", "depthwise_conv2d", "dense"}
# call_tir PrimFuncs of LowerToInteger that are layers of their own (never fused into the producer)
_TIR_LAYERS = {Q_AVG_POOL2D: "avg_pool2d", Q_MEAN: "mean", Q_SOFTMAX: "softmax"}
# Unary ops fused into the preceding layer (no tensor of their own when their input has no other user).
_FUSIBLE = {
    "relax.add", "relax.multiply", "relax.subtract", "relax.divide", "relax.clip", "relax.nn.relu",
    "relax.nn.relu6", "relax.sigmoid", "relax.nn.silu", "relax.tanh", "relax.quantize", "relax.dequantize",
    "relax.astype", "relax.maximum", "relax.minimum", "relax.nn.leakyrelu", "relax.round",
}
# Ops that are views of their input's stored bytes (reshapes, and the int8 <-> float conversions that a device
# fuses into the reader): never a tensor of their own, whatever the number of readers.
_ALIASES = {"relax.reshape", "relax.flatten", "relax.squeeze", "relax.expand_dims", "relax.quantize",
            "relax.dequantize", "relax.astype"}
_ACTIVATIONS = {"relax.clip", "relax.nn.relu", "relax.nn.relu6", "relax.sigmoid", "relax.maximum",
                "relax.minimum", "relax.nn.silu", "relax.tanh", "relax.nn.leakyrelu",
                "relax.hard_swish"}  # TFLite's HARD_SWISH: TVM's hard_swish PrimFunc, or LowerToInteger's table
# dtype conversions a folded pad may pass through before its convolution (QDQ: pad on int8, then dequantize)
_CONVERSIONS = {"relax.quantize", "relax.dequantize", "relax.astype"}
_INT8_RANGE = (-128, 127)


@dataclass
class Tensor:
    """An activation tensor: the network input or a layer's output."""

    id: int
    shape: tuple[int, ...]
    dtype: str
    producer: int | None  # index of the producing layer, None for a network input
    consumers: list[int] = field(default_factory=list)

    @property
    def elements(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def nbytes(self) -> int:
        """Bytes in the imported dtype (float32: 4, int8: 1)."""
        return self.elements * tvm.runtime.DataType(self.dtype).bits // 8


@dataclass
class Layer:
    """One layer: an anchor op plus the fused unary ops after it."""

    index: int  # 0-based position; the CLI numbers layers from 1
    op: str  # conv2d, depthwise_conv2d, dense, add, mul, avg_pool2d, max_pool2d, global_pool2d, mean, ...
    inputs: list[int]  # activation tensor ids, in argument order
    output: int  # tensor id
    anchor: relax.Var  # the binding of the anchor op
    out_var: relax.Var  # the last binding fused into this layer (its value is the layer's output)
    bindings: list[relax.Var] = field(default_factory=list)  # anchor and fused bindings, in order
    kernel: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int, int, int] = (0, 0, 0, 0)  # top, left, bottom, right
    groups: int = 1
    macs: int = 0
    activation: str | None = None  # the fused activation op, if any
    block: int = 0  # 1-based block number (the stem is block 1)
    name: str = ""
    rf: tuple[int, int] = (1, 1)  # receptive field (H, W) of one output element, in input pixels
    # a pad folded into this convolution: its bindings (the pad, then dtype conversions), before the anchor
    prologue: list[relax.Var] = field(default_factory=list)
    pad_width: tuple[int, int, int, int] = (0, 0, 0, 0)  # the folded pad's (top, left, bottom, right)
    pad_value: float | None = None  # the folded pad's value (None: no folded pad)

    broadcast_free: bool = False  # for binary ops: both inputs have the output's shape

    @property
    def region(self) -> RegionMap:
        """The layer's per-axis region map (identity for layers without a window)."""
        return RegionMap.of(self.kernel, self.stride, self.padding)


@dataclass
class Graph:
    """Layers in execution order over tensors; `layout` is "NCHW" or "NHWC"."""

    layers: list[Layer]
    tensors: list[Tensor]
    inputs: list[int]
    outputs: list[int]
    layout: str

    def last_use(self, tid: int) -> int:
        """Index of the last layer reading tensor `tid` (len(layers) for a network output)."""
        if tid in self.outputs:
            return len(self.layers)
        t = self.tensors[tid]
        return max(t.consumers) if t.consumers else (t.producer if t.producer is not None else -1)

    def hw(self, tid: int) -> tuple[int, int]:
        """Spatial size (H, W) of a 4-D tensor in this graph's layout."""
        shape = self.tensors[tid].shape
        if len(shape) != 4:
            return (1, 1)
        return (shape[2], shape[3]) if self.layout == "NCHW" else (shape[1], shape[2])

    def channels(self, tid: int) -> int:
        shape = self.tensors[tid].shape
        if len(shape) != 4:
            return shape[-1]
        return shape[1] if self.layout == "NCHW" else shape[3]

    @property
    def macs(self) -> int:
        return sum(layer.macs for layer in self.layers)


def _shape_of(expr: relax.Expr) -> tuple[int, ...]:
    sinfo = expr.ty  # TVM 0.27 calls struct info `ty` (relax.TensorType)
    if not isinstance(sinfo, relax.TensorType) or sinfo.shape is None:
        raise TvmPatchError(f"tensor {expr} has no static shape; export the model with fixed input shapes")
    try:
        return tuple(ints(sinfo.shape.values))
    except (TypeError, ValueError):
        raise TvmPatchError(f"tensor {expr} has a symbolic shape {sinfo.shape}; export with fixed shapes") from None


def _dtype_of(expr: relax.Expr) -> str:
    return str(expr.ty.dtype)


def _op_name(call: relax.Call) -> str:
    """A layer's op as the profile names it: 'relax.<op>', 'extern:<symbol>', or 'call' for anything else."""
    if isinstance(call.op, relax.ExternFunc):
        return f"extern:{call.op.global_symbol}"
    return op_name(call) if isinstance(call.op, tvm.ir.Op) else "call"


def _call_tir_name(call: relax.Call) -> str:
    """The PrimFunc name of a call_tir (e.g. 'maximum'), stripped of numeric suffixes."""
    return call_tir_name(call).rstrip("0123456789").rstrip("_")


def build_graph(mod: tvm.IRModule, func_name: str = "main") -> Graph:
    """Extract the layer graph of `mod[func_name]` (a Relax function whose weights are constants)."""
    func = mod[func_name]
    if not isinstance(func, relax.Function):
        raise TvmPatchError(f"{func_name} is not a Relax function")
    layout = _detect_layout(func)
    tensors: list[Tensor] = []
    layers: list[Layer] = []
    act: dict[relax.Var, int] = {}  # Relax var -> activation tensor id
    uses: dict[relax.Var, int] = {}  # Relax var -> number of uses
    zero_point: dict[int, int] = {}  # tensor id -> the zero point its layer's chain last wrote (for clips)
    pending: dict[relax.Var, _FoldedPad] = {}  # var of a pad folding into its convolutions -> the pad
    tuples: dict[relax.Var, list[int]] = {}  # var bound to a tuple of activations -> their tensor ids
    qparams = recorded_qparams(func)

    for p in func.params:
        tid = len(tensors)
        tensors.append(Tensor(tid, _shape_of(p), _dtype_of(p), None))
        act[p] = tid
    graph_inputs = list(act.values())

    bindings = [b for block in func.body.blocks for b in block.bindings]
    for b in bindings:
        for v in _vars_in(b.value):
            uses[v] = uses.get(v, 0) + 1
    ret = func.body.body
    for v in _vars_in(ret):
        uses[v] = uses.get(v, 0) + 1
    folding = _pads_into_convs(bindings, ret)

    for b in bindings:
        value = b.value
        if isinstance(value, relax.Var) and value in act:  # plain alias binding
            _extend(layers, tensors, act, act[value], b.var, None)
            continue
        if not isinstance(value, relax.Call):
            if isinstance(value, relax.Tuple):  # a tuple of tensors (the outputs of a multi-output model): no layer
                tuples[b.var] = [t for f in value.fields for t in _tensors_of(f, act, tuples)]
            elif isinstance(value, relax.TupleGetItem) and isinstance(value.tuple_value, relax.Var) \
                    and value.tuple_value in tuples:
                act[b.var] = tuples[value.tuple_value][int(value.index)]
            elif isinstance(value, (relax.Tuple, relax.TupleGetItem)) and any(v in act for v in _vars_in(value)):
                raise TvmPatchError(f"binding {b.var.name}: a tuple produced by an op is not supported "
                                    "(multi-output ops such as SPLIT); the profile handles single-output ops")
            continue
        args = value.args
        op = _op_name(value)
        if b.var in folding and isinstance(args[0], relax.Var) and args[0] in act:
            pending[b.var] = _FoldedPad(act[args[0]], [b.var], folding[b.var], float(value.attrs.pad_value))
            continue
        if args and isinstance(args[0], relax.Var) and args[0] in pending:
            pad = pending[args[0]]
            if op == _CONV:
                _conv_layer(layers, tensors, act, value, b.var, layout, pad)
            else:  # a dtype conversion between the pad and its convolutions (checked by _pads_into_convs)
                pending[b.var] = _FoldedPad(pad.source, [*pad.bindings, b.var], pad.width, pad.value)
            continue
        if op == "relax.call_tir":
            tir_args = list(args[1].fields) if isinstance(args[1], relax.Tuple) else [args[1]]
            acts = [a for a in tir_args if isinstance(a, relax.Var) and a in act]
            if not acts:
                continue
            src = act[acts[0]]
            same = _shape_of(b.var) == tensors[src].shape
            rec = qparams.get(args[0].name_hint, {}) if isinstance(args[0], tvm.ir.GlobalVar) else {}
            zp = rec.get("output_zero_point", rec.get("output_offset"))
            kind = _call_tir_name(value)
            if kind in _TIR_LAYERS and len(acts) == 1:  # LowerToInteger's pooling, mean, softmax
                layer = _new_layer(layers, tensors, act, _TIR_LAYERS[kind], [src], b.var)
                if kind in (Q_AVG_POOL2D, Q_MEAN) and _reduces_hw(layout, tensors[src].shape, _shape_of(b.var)):
                    layer.op = "global_pool2d"
                out = layer.output
            elif len(acts) == 1 and same and _single_use(acts[0], uses, layers, tensors, src):
                _extend(layers, tensors, act, src, b.var, _TIR_ACTIVATIONS.get(kind, f"relax.{kind}"))
                out = src
            else:
                binary = _TIR_BINARY.get(kind) if len(acts) == 2 else None
                layer = _new_layer(layers, tensors, act, binary or kind, [act[a] for a in acts], b.var)
                if binary:  # LowerToInteger's TFLite ADD / SUB / MUL of two activations
                    layer.broadcast_free = all(tensors[act[a]].shape == _shape_of(b.var) for a in acts)
                    if "act_min" in rec and _clamps(rec["act_min"], rec["act_max"], "int8", None):
                        layer.activation = "clip"  # the fused activation folded into the op's clamp
                out = layer.output
            if zp is not None:
                zero_point[out] = int(zp)
            continue
        acts = [v for a in args for v in _vars_in(a) if v in act]  # a concat's operands come in a tuple
        if not acts:
            continue  # a computation on constants only: part of the weights
        if op == _CONV:
            _conv_layer(layers, tensors, act, value, b.var, layout)
        elif op in _DENSE:
            layer = _new_layer(layers, tensors, act, "dense", [act[acts[0]]], b.var)
            k = _shape_of(args[0])[-1]
            out_elems = tensors[layer.output].elements
            layer.macs = out_elems * k
            if len(acts) > 1:
                layer.inputs = [act[a] for a in acts]
                for a in acts[1:]:
                    tensors[act[a]].consumers.append(layer.index)
        elif op in _POOL:
            _pool_layer(layers, tensors, act, value, b.var, _POOL[op], layout)
        elif op in _BINARY and len(acts) == 2:
            layer = _new_layer(layers, tensors, act, _BINARY[op], [act[a] for a in acts], b.var)
            layer.broadcast_free = all(tensors[act[a]].shape == _shape_of(b.var) for a in acts)
        elif op in _ALIASES and len(acts) == 1:
            src = act[acts[0]]
            if _single_use(acts[0], uses, layers, tensors, src):
                _extend(layers, tensors, act, src, b.var, None)
                if op == "relax.quantize" and _scalar_int(args[2]) is not None:
                    zero_point[src] = _scalar_int(args[2])
            else:
                act[b.var] = src  # a view read by one of several consumers
        elif op in _FUSIBLE and len(acts) == 1 and _single_use(acts[0], uses, layers, tensors, act[acts[0]]):
            src = act[acts[0]]
            producer = tensors[src].producer
            written = zero_point.get(src) if producer is not None and layers[producer].op in _WEIGHTED else None
            is_act = op != "relax.clip" or _clamps(_bound(args[1]), _bound(args[2]), _dtype_of(args[0]), written)
            _extend(layers, tensors, act, src, b.var, op if is_act else None)
        else:
            kind = op.split(".")[-1] if op.startswith("relax.") else op
            layer = _new_layer(layers, tensors, act, kind, [act[a] for a in acts], b.var)
            if op == "relax.nn.pad":
                _set_pad(layer, value, layout)

    outputs = _tensors_of(ret, act, tuples)
    graph = Graph(layers, tensors, graph_inputs, outputs, layout)
    _assign_blocks(graph)
    _receptive_fields(graph)
    return graph


@dataclass
class _FoldedPad:
    """A pad folding into the convolutions that read it: its input tensor, bindings, widths and value."""

    source: int
    bindings: list[relax.Var]
    width: tuple[int, int, int, int]  # top, left, bottom, right
    value: float


def recorded_qparams(func: relax.Function) -> dict[str, dict]:
    """LowerToInteger's recorded integer parameters, {PrimFunc name: {parameter: value}} (or {})."""
    attrs = func.attrs
    if attrs is None or QPARAMS_ATTR not in attrs:
        return {}
    return {str(k): {str(n): (str(v) if isinstance(v, str) else int(v)) for n, v in rec.items()}
            for k, rec in attrs[QPARAMS_ATTR].items()}


def _scalar_int(expr) -> int | None:
    """The value of a one-element integer constant (a zero point), else None."""
    if not isinstance(expr, tvm.ir.expr.Constant):
        return None
    v = expr.value.numpy()
    if v.size != 1 or v.dtype.kind not in "iu":
        return None
    return int(v.reshape(-1)[0])


def _bound(v) -> float:
    """A clip bound (PrimValue / IntImm / FloatImm) as a number."""
    while hasattr(v, "value") and not isinstance(v, (int, float)):
        v = v.value
    return float(v)


def _clamps(lo: float, hi: float, dtype: str, zero_point: int | None) -> bool:
    """True when clamping `dtype` values to [lo, hi] is an activation: not when it only saturates (the bounds
    cover int8's range or the dtype's), unless its floor is `zero_point`, the zero point a convolution or
    dense layer wrote (a ReLU / ReLU6 whose clamp coincides with the range; a residual add or a multiply
    whose output zero point is -128 is no ReLU for that, as LowerToInteger clamps them all)."""
    if not dtype.startswith(("int", "uint")):
        return True
    bits = tvm.runtime.DataType(dtype).bits
    full = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if dtype.startswith("int") else (0, 2**bits - 1)
    if not any(lo <= a and b <= hi for a, b in (_INT8_RANGE, full)):
        return True
    return zero_point is not None and lo == zero_point


def _reduces_hw(layout: str, src: tuple[int, ...], out: tuple[int, ...]) -> bool:
    """True when a pooling / mean of a 4-D `src` keeps batch and channels and reduces H and W to 1."""
    if len(src) != 4:
        return False
    n, c = src[0], (src[1] if layout == "NCHW" else src[3])
    return out in ((n, c), (n, c, 1, 1) if layout == "NCHW" else (n, 1, 1, c))


def _pads_into_convs(bindings: list, ret: relax.Expr) -> dict[relax.Var, tuple[int, int, int, int]]:
    """The pads that fold into their convolutions: {pad var: (top, left, bottom, right)}.

    A constant-mode `R.nn.pad` of H and W only, not returned, whose every reader is a conv2d reading it as
    its data (through one chain of dtype conversions, as a QDQ model reads an int8 pad in float)."""
    readers: dict[relax.Var, list] = {}
    for b in bindings:
        for v in _vars_in(b.value):
            readers.setdefault(v, []).append(b)
    returned = _vars_in(ret)

    def conv_layouts(var) -> set[str] | None:
        """The data layouts of the convolutions reading `var` (through conversions), None if not all convs."""
        if any(var.same_as(r) for r in returned):
            return None
        rs = readers.get(var, [])
        if len(rs) == 1 and isinstance(rs[0].value, relax.Call) and _op_name(rs[0].value) in _CONVERSIONS:
            return conv_layouts(rs[0].var) if rs[0].value.args[0].same_as(var) else None
        if not rs or not all(isinstance(r.value, relax.Call) and _op_name(r.value) == _CONV
                             and r.value.args[0].same_as(var) and not r.value.args[1].same_as(var) for r in rs):
            return None
        return {str(r.value.attrs.data_layout) for r in rs}

    out = {}
    for b in bindings:
        v = b.value
        if not (isinstance(v, relax.Call) and _op_name(v) == "relax.nn.pad") or str(v.attrs.pad_mode) != "constant":
            continue
        layouts = conv_layouts(b.var)
        width = tuple(ints(v.attrs.pad_width))
        if layouts is None or len(layouts) != 1 or len(width) != 8:
            continue
        lay = next(iter(layouts))
        if lay not in ("NCHW", "NHWC") or any(width[2 * lay.index(a) + k] for a in "NC" for k in (0, 1)):
            continue
        h, w = lay.index("H"), lay.index("W")
        out[b.var] = (width[2 * h], width[2 * w], width[2 * h + 1], width[2 * w + 1])
    return out


def _tensors_of(expr, act: dict, tuples: dict) -> list[int]:
    """The activation tensors an expression holds, in order (a tensor, or a tuple of them, nested or bound)."""
    if isinstance(expr, relax.Var):
        return list(tuples[expr]) if expr in tuples else [act[expr]] if expr in act else []
    if isinstance(expr, relax.Tuple):
        return [t for f in expr.fields for t in _tensors_of(f, act, tuples)]
    return []


def _vars_in(expr) -> list[relax.Var]:
    if isinstance(expr, relax.Var):
        return [expr]
    if isinstance(expr, relax.Call):
        out = []
        for a in expr.args:
            out.extend(_vars_in(a))
        return out
    if isinstance(expr, relax.Tuple):
        out = []
        for f in expr.fields:
            out.extend(_vars_in(f))
        return out
    if isinstance(expr, relax.TupleGetItem):
        return _vars_in(expr.tuple_value)
    return []


def _single_use(var: relax.Var, uses: dict, layers: list[Layer], tensors: list[Tensor], tid: int) -> bool:
    """A unary op fuses into the producer only when it is the sole reader of the producer's value."""
    return uses.get(var, 0) == 1 and not tensors[tid].consumers


def _new_layer(layers, tensors, act, op: str, inputs: list[int], var: relax.Var) -> Layer:
    idx = len(layers)
    tid = len(tensors)
    tensors.append(Tensor(tid, _shape_of(var), _dtype_of(var), idx))
    inputs = list(dict.fromkeys(inputs))
    for i in inputs:
        tensors[i].consumers.append(idx)
    layer = Layer(idx, op, inputs, tid, var, var, [var])
    layers.append(layer)
    act[var] = tid
    return layer


def _extend(layers, tensors, act, tid: int, var: relax.Var, op: str | None) -> None:
    """Fuse `var` into the layer producing tensor `tid` (or alias the network input)."""
    producer = tensors[tid].producer
    act[var] = tid
    if producer is None:
        return
    layer = layers[producer]
    layer.bindings.append(var)
    layer.out_var = var
    t = tensors[tid]
    t.shape = _shape_of(var)
    t.dtype = _dtype_of(var)
    if op in _ACTIVATIONS:
        layer.activation = op.split(".")[-1]


def _detect_layout(func: relax.Function) -> str:
    found = {"NCHW": 0, "NHWC": 0}
    for block in func.body.blocks:
        for b in block.bindings:
            v = b.value
            if isinstance(v, relax.Call) and isinstance(v.op, tvm.ir.Op) and v.op.name == _CONV:
                lay = str(v.attrs.data_layout)
                if lay in found:
                    found[lay] += 1
    return "NHWC" if found["NHWC"] > found["NCHW"] else "NCHW"


def _conv_layer(layers, tensors, act, call: relax.Call, var: relax.Var, layout: str,
                pad: _FoldedPad | None = None) -> None:
    attrs = call.attrs
    data_layout = str(attrs.data_layout)
    if data_layout not in ("NCHW", "NHWC"):
        raise TvmPatchError(f"conv2d with data layout {data_layout} is not supported (NCHW or NHWC)")
    x, w = call.args[0], call.args[1]
    x_tid = pad.source if pad is not None else act[x]
    if w in act:
        layer = _new_layer(layers, tensors, act, "conv2d_dynamic_weight", [x_tid, act[w]], var)
    else:
        wshape = _shape_of(w)
        klayout = str(attrs.kernel_layout)
        kh, kw = wshape[klayout.index("H")], wshape[klayout.index("W")]
        cin_per_group = wshape[klayout.index("I")]
        groups = int(attrs.groups)
        cin = _shape_of(x)[data_layout.index("C")]
        op = "depthwise_conv2d" if groups > 1 and groups == cin and cin_per_group == 1 else "conv2d"
        layer = _new_layer(layers, tensors, act, op, [x_tid], var)
        layer.kernel = (kh, kw)
        layer.stride = tuple(ints(attrs.strides))[:2]
        p = tuple(ints(attrs.padding))
        layer.padding = (p[0], p[1], p[2], p[3]) if len(p) == 4 else (p[0], p[1], p[0], p[1])
        layer.groups = groups
        layer.macs = tensors[layer.output].elements * kh * kw * cin_per_group
    if pad is not None:
        layer.prologue = list(pad.bindings)
        layer.pad_width, layer.pad_value = pad.width, pad.value
        layer.padding = tuple(a + b for a, b in zip(layer.padding, pad.width))


def _pool_layer(layers, tensors, act, call: relax.Call, var: relax.Var, op: str, layout: str) -> None:
    x = call.args[0]
    layer = _new_layer(layers, tensors, act, op, [act[x]], var)
    in_shape = _shape_of(x)
    if op in ("avg_pool2d", "max_pool2d"):
        layer.kernel = tuple(ints(call.attrs.pool_size))[:2]
        layer.stride = tuple(ints(call.attrs.strides))[:2]
        pad = tuple(ints(call.attrs.padding))
        layer.padding = (pad[0], pad[1], pad[2], pad[3]) if len(pad) == 4 else (pad[0], pad[1], pad[0], pad[1])
        h = 2 if layout == "NCHW" else 1
        if op == "avg_pool2d" and len(in_shape) == 4 and layer.kernel == (in_shape[h], in_shape[h + 1]) \
                and layer.padding == (0, 0, 0, 0):
            layer.op = "global_pool2d"
    elif len(in_shape) == 4 and _is_spatial_reduce(call, layout, in_shape):
        layer.op = "global_pool2d"
    else:
        layer.op = "mean"


def _is_spatial_reduce(call: relax.Call, layout: str, in_shape) -> bool:
    if _op_name(call) == "relax.nn.adaptive_avg_pool2d":
        return True
    axes = call.attrs.axis
    if axes is None:
        return False
    axes = sorted(int(a) % len(in_shape) for a in axes)
    return axes == ([2, 3] if layout == "NCHW" else [1, 2])


def _set_pad(layer: Layer, call: relax.Call, layout: str) -> None:
    width = tuple(ints(call.attrs.pad_width))
    h = 2 if layout == "NCHW" else 1
    if len(width) == 8:
        layer.padding = (width[2 * h], width[2 * (h + 1)], width[2 * h + 1], width[2 * (h + 1) + 1])


# ---------------------------------------------------------------------------------------------------------
# Blocks and receptive fields


def cut_after(graph: Graph, i: int) -> bool:
    """True when only the output of layer i is live after it (nothing else is held for later layers)."""
    out = graph.layers[i].output
    for t in graph.tensors:
        if t.id == out:
            continue
        produced = t.producer if t.producer is not None else -1
        if produced <= i < graph.last_use(t.id):
            return False
    return True


def _assign_blocks(graph: Graph) -> None:
    """Number blocks from 1 (the stem is block 1) and name layers `b<block>.<n>`.

    A block ends at a point where a single tensor is live, right after a layer with no activation (the linear
    projection of an inverted-residual block, or its residual add) or after the stem. Networks with no linear
    layers (MobileNetV1, ResNet, DS-CNN) end a block at every such point after a non-depthwise conv or an add.
    """
    layers = graph.layers
    if not layers:
        return
    cuts = [cut_after(graph, i) for i in range(len(layers))]
    compute = {"conv2d", "depthwise_conv2d", "dense", "add"}
    linear = [layer.op in compute and layer.activation is None for layer in layers]
    boundaries = set()
    first_conv = next((i for i, layer in enumerate(layers) if layer.op in ("conv2d", "depthwise_conv2d")), None)
    if first_conv is not None and cuts[first_conv]:
        boundaries.add(first_conv)
    spatial_linear = [i for i in range(len(layers)) if linear[i] and cuts[i] and layers[i].op != "dense"]
    if len(spatial_linear) >= 2:
        boundaries.update(spatial_linear)
    else:
        boundaries.update(i for i in range(len(layers)) if cuts[i] and layers[i].op in ("conv2d", "add"))
    block, n = 1, 0
    for i, layer in enumerate(layers):
        n += 1
        layer.block = block
        layer.name = f"b{block}.{n}"
        if i in boundaries:
            block, n = block + 1, 0


def _receptive_fields(graph: Graph) -> None:
    """Receptive field of every layer's output element in network-input pixels, per axis."""
    rf = {tid: (1, 1) for tid in graph.inputs}
    jump = {tid: (1, 1) for tid in graph.inputs}
    for layer in graph.layers:
        ins = [t for t in layer.inputs if t in rf] or list(graph.inputs)
        r = tuple(max(rf.get(t, (1, 1))[a] for t in ins) for a in (0, 1))
        j = tuple(max(jump.get(t, (1, 1))[a] for t in ins) for a in (0, 1))
        if layer.op in ("conv2d", "depthwise_conv2d", "avg_pool2d", "max_pool2d"):
            (rh, jh), (rw, jw) = (layer.region.axis(a).receptive(r[a], j[a]) for a in (0, 1))
            r, j = (rh, rw), (jh, jw)
        elif layer.op in ("global_pool2d", "mean", "dense"):
            full = graph.hw(graph.inputs[0]) if graph.inputs else (1, 1)
            r = full
        rf[layer.output] = r
        jump[layer.output] = j
        layer.rf = r
