"""A patch stage described from the layer graph: the first n layers of a Relax module as a `Stage`.

Weights and biases come from the module's constants (run FoldConstant first).

float32 graphs: the epilogue ops fused into each layer (bias add, relu/relu6 as imported by TVM's frontends)
become the stage layer's bias and activation.

int8 graphs after `LowerToInteger` (its Relax form, see `tvm_patch.transform.lower_to_integer`):

- a conv layer ``conv2d(int8, int8) -> add(bias') -> call_tir requantize -> clip(lo, hi) -> astype(int8)``
  becomes ``Conv(weight, bias, quant=ConvQuant(z, zo, multiplier[C], shift[C], 0, lo, hi))``. The
  requantize parameters (zo, per-tensor multiplier/shift) come from the function's ``tvm_patch.qparams``
  attribute (`tvm_patch.transform.lower_to_integer.quant_params`), per-channel ones from the call's constant
  arguments: no TIR is read. The lowered bias has ``-zx * sum(w)`` folded in and the conv computes
  ``sum(x * w)`` over an input padded with ``zx``; the stage computes ``sum((x - z) * w) + bias`` with a
  ring of ``z``, so the bias is un-folded with the stage's ``z``: ``bias = bias' + z * sum(w)`` per output
  channel (exact integers; for ``z = zx`` it is the model's own bias). ``z`` is the value that pads the
  conv's input (the explicit pad's value, 0 for a conv that pads itself), else the zero point its
  producer writes, so every conv reading a value agrees on its zero ring;
- a pad feeding convolutions (the zero-point pad LowerToInteger writes when zx != 0, or a model's own PAD)
  is part of each conv that reads it in the layer graph (`Layer.prologue`): its H/W widths are in the conv's
  padding, its value is the conv's z;
- a residual ``call_tir q_add(a, b)`` becomes ``Add(quant=AddQuant(...))`` from the recorded TFLite ADD
  parameters (an int8 clip after it narrows the clamp);
- ``max_pool2d`` (int8, no requantization; an int8 clip after it is TFLite's fused activation) becomes
  ``MaxPool(kernel, stride, padding, act_min, act_max)``; in float32 graphs its relu / relu6 epilogue is the
  pool's activation. Dilated pools, and ceil-mode pools that add a window (`check_split`), are refused;
- a table lookup fused at the end of any of these layers (LowerToInteger's ``q_hard_swish`` / ``q_logistic``
  with its constant 256-entry table: TFLite's int8 HARD_SWISH, LOGISTIC) becomes a ``Lookup`` stage layer
  after it.

The stage requantizes with LowerToInteger's own arithmetic (`tvm_patch.quant`), so the patched module
equals the unpatched one bit for bit.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tvm
from tvm import relax

from tvm_patch.errors import TvmPatchError
from tvm_patch.graph import Graph, Layer, build_graph, recorded_qparams
from tvm_patch.names import Q_ADD, Q_CONV_LOGISTIC, Q_HARD_SWISH, Q_LOGISTIC, QPARAMS_ATTR
from tvm_patch.patch.stage import STAGE_INPUT, Add, AddQuant, Conv, ConvQuant, Lookup, MaxPool, Stage
from tvm_patch.split import check_split
from tvm_patch.transform.lower_to_integer import lower_to_integer

_INT8 = (-128, 127)
# LowerToInteger's table lookups (call_tir of the PrimFunc, (x, table[256])) a stage runs as a `Lookup` layer
_TABLES = {Q_HARD_SWISH: "hard_swish", Q_LOGISTIC: "logistic"}


def _const(expr: relax.Expr, what: str) -> np.ndarray:
    if not isinstance(expr, tvm.ir.expr.Constant):
        raise TvmPatchError(f"{what} is not a constant; the patch stage needs weights known at compile time")
    return expr.value.numpy()


def _op(call: relax.Call) -> str:
    """'relax.<op>', or 'tir:<PrimFunc name>' for a call_tir."""
    name = call.op.name if isinstance(call.op, tvm.ir.Op) else str(call.op)
    if name == "relax.call_tir":
        return "tir:" + call.args[0].name_hint
    return name


def _prim_int(v) -> int:
    """An int out of a PrimValue / IntImm / FloatImm argument holding an integral value."""
    while hasattr(v, "value") and not isinstance(v, (int, float)):
        v = v.value
    if float(v) != int(v):
        raise TvmPatchError(f"expected an integral bound, got {v}")
    return int(v)




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


def _record(layer: Layer, call: relax.Call, qparams: dict, ops: tuple[str, ...]) -> dict:
    name = call.args[0].name_hint
    rec = qparams.get(name)
    if rec is None or rec.get("op") not in ops:
        raise TvmPatchError(f"layer {layer.name}: no LowerToInteger parameters recorded for call_tir {name} "
                            f"(the function's {QPARAMS_ATTR} attribute); int8 stages need a module lowered by "
                            "LowerToInteger")
    return rec


def _int8_conv_epilogue(layer: Layer, bindings: dict, qparams: dict, channels: int, out_c_axis: int):
    """(bias', multiplier[C], shift[C], output zero point, act_min, act_max) of a lowered int8 conv layer."""
    bias = np.zeros(channels, dtype=np.int64)
    rec = mult = shift = None
    lo, hi = _INT8
    dtype = None
    has_bias = False
    for var in layer.bindings[1:]:
        call = bindings[var]
        op = _op(call)
        if op == "relax.add" and rec is None and not has_bias:
            has_bias = True
            operands = [a for a in call.args[:2] if isinstance(a, tvm.ir.expr.Constant)]
            if len(operands) != 1:
                raise TvmPatchError(f"layer {layer.name}: an add after the conv that is not a constant bias")
            b = _const(operands[0], f"layer {layer.name}: bias")
            if b.size != channels or b.dtype != np.int32:
                raise TvmPatchError(f"layer {layer.name}: a {b.dtype} bias of {b.size} values for {channels} "
                                    "channels")
            bias = b.reshape(-1).astype(np.int64)
        elif op.startswith("tir:") and rec is None:
            if op[4:].rstrip("0123456789_") == Q_CONV_LOGISTIC:
                raise TvmPatchError(f"layer {layer.name}: a sigmoid computed on the convolution's accumulator "
                                    "(LowerToInteger's q_conv_logistic, ONNX QDQ's form) cannot be part of a patch "
                                    "stage; end the stage before it")
            rec = _record(layer, call, qparams, ("requantize",))
            args = list(call.args[1].fields)
            if rec["axis"] != out_c_axis:
                raise TvmPatchError(f"layer {layer.name}: requantize along axis {rec['axis']}, not the channels")
            if "multiplier" in rec:
                mult = np.full(channels, rec["multiplier"], dtype=np.int64)
                shift = np.full(channels, rec["shift"], dtype=np.int64)
            elif len(args) == 3:
                mult = _const(args[1], f"layer {layer.name}: multiplier").astype(np.int64).reshape(-1)
                shift = _const(args[2], f"layer {layer.name}: shift").astype(np.int64).reshape(-1)
            else:
                raise TvmPatchError(f"layer {layer.name}: requantize without multipliers")
        elif op == "relax.clip" and rec is not None and dtype is None:
            lo, hi = max(lo, _prim_int(call.args[1])), min(hi, _prim_int(call.args[2]))
        elif op == "relax.astype" and rec is not None and dtype is None:
            dtype = str(call.attrs.dtype)
            if dtype != "int8":
                raise TvmPatchError(f"layer {layer.name}: int8 patch stages need int8 activations, not {dtype}")
        else:
            raise TvmPatchError(f"layer {layer.name}: {op} after the {layer.op} cannot be fused into the int8 "
                                "patch stage (it takes LowerToInteger's bias, requantize, clip, astype)")
    if rec is None or dtype is None:
        raise TvmPatchError(f"layer {layer.name}: the {layer.op} does not end in LowerToInteger's requantize "
                            "and int8 cast")
    return bias, mult, shift, rec["output_zero_point"], lo, hi


def _int8_add(layer: Layer, bindings: dict, qparams: dict) -> AddQuant:
    rec = None
    lo = hi = None
    for var in layer.bindings:
        call = bindings[var]
        op = _op(call)
        if op.startswith("tir:") and rec is None:
            rec = _record(layer, call, qparams, (Q_ADD,))
            lo, hi = rec["act_min"], rec["act_max"]
        elif op == "relax.clip" and rec is not None:  # an int8 clip LowerToInteger did not fold
            lo, hi = max(lo, _prim_int(call.args[1])), min(hi, _prim_int(call.args[2]))
        else:
            raise TvmPatchError(f"layer {layer.name}: {op} in the residual add cannot be part of an int8 patch "
                                "stage (it takes LowerToInteger's q_add)")
    if rec is None:
        raise TvmPatchError(f"layer {layer.name}: an int8 residual add that is not LowerToInteger's q_add")
    return AddQuant(input_zero_points=(-rec["input1_offset"], -rec["input2_offset"]),
                    input_multipliers=(rec["input1_multiplier"], rec["input2_multiplier"]),
                    input_shifts=(rec["input1_shift"], rec["input2_shift"]),
                    output_zero_point=rec["output_offset"], output_multiplier=rec["output_multiplier"],
                    output_shift=rec["output_shift"], left_shift=rec["left_shift"], act_min=lo, act_max=hi)


def _split_tables(layer: Layer, bindings: dict) -> tuple[Layer, list[Lookup]]:
    """The table lookups ending a layer's bindings (`_TABLES`) as `Lookup` stage layers, in order, and the
    layer without them (what the conv / add / pool epilogue readers see)."""
    tables: list[Lookup] = []
    k = len(layer.bindings)
    while k > 1:
        call = bindings[layer.bindings[k - 1]]
        op = _op(call)
        kind = _TABLES.get(op[4:].rstrip("0123456789_")) if op.startswith("tir:") else None
        if kind is None:
            break
        args = _operands(call)
        table = _const(args[-1], f"layer {layer.name}: {kind} table") if len(args) == 2 else None
        if table is None or table.shape != (256,) or table.dtype != np.int8:
            raise TvmPatchError(f"layer {layer.name}: the {kind} is not a 256-entry int8 table lookup")
        tables.insert(0, Lookup(table, kind=kind))
        k -= 1
    return dataclasses.replace(layer, bindings=layer.bindings[:k]), tables


def _pool_epilogue(layer: Layer, bindings: dict, int8: bool) -> tuple[str, int, int]:
    """(float activation, int8 clamp low, high) of a max pool layer; refuses dilation (ceil mode changes nothing
    when the output size is the floor one; otherwise `check_split` refused it)."""
    attrs = bindings[layer.anchor].attrs
    if any(int(d) != 1 for d in attrs.dilation):
        raise TvmPatchError(f"layer {layer.name}: a dilated max pool cannot be part of a patch stage")
    if not int8:
        if any(_op(bindings[v]) == "relax.add" for v in layer.bindings[1:]):
            raise TvmPatchError(f"layer {layer.name}: an add after the max pool cannot be fused into the patch stage")
        return _epilogue(layer, bindings, 0)[1], *_INT8
    lo, hi = _INT8
    for var in layer.bindings[1:]:
        call = bindings[var]
        op = _op(call)
        if op == "relax.clip":
            lo, hi = max(lo, _prim_int(call.args[1])), min(hi, _prim_int(call.args[2]))
        elif not (op == "relax.astype" and str(call.attrs.dtype) == "int8"):
            raise TvmPatchError(f"layer {layer.name}: {op} after the max pool cannot be fused into the int8 patch "
                                "stage (it takes an int8 clip)")
    return "none", lo, hi


def _operands(call: relax.Call) -> list:
    """The tensor arguments of a layer's anchor call, in order."""
    if _op(call).startswith("tir:"):
        args = call.args[1]
        return list(args.fields) if isinstance(args, relax.Tuple) else [args]
    return list(call.args)


def is_qdq_stage(graph: Graph, n: int, func: relax.Function) -> bool:
    """True when the first n layers hold quantize / dequantize ops (a quantized model as imported, not lowered:
    its stage is `stage_from_qdq`'s)."""
    bindings = {b.var: b.value for blk in func.body.blocks for b in blk.bindings}
    return any(isinstance(bindings.get(v), relax.Call) and _op(bindings[v]) in ("relax.quantize", "relax.dequantize")
               for layer in graph.layers[:n] for v in [*layer.prologue, *layer.bindings])


def needs_integer_lowering(mod: tvm.IRModule) -> bool:
    """True for a quantized model as imported: an op of `main` computes on dequantized values (a QDQ chain,
    which LowerToInteger rewrites). False for float models and for modules already lowered (their
    dequantize, if any, only hands a float output back)."""
    func = mod["main"]
    deq = set()
    for blk in func.body.blocks:
        for b in blk.bindings:
            v = b.value
            if not isinstance(v, relax.Call):
                continue
            if _op(v) == "relax.dequantize":
                deq.add(b.var)
            elif _op(v) != "relax.quantize":
                args = [f for a in v.args for f in (a.fields if isinstance(a, relax.Tuple) else [a])]
                if any(isinstance(a, relax.Var) and a in deq for a in args):
                    return True
    return False


def lower_for_patching(mod: tvm.IRModule) -> tvm.IRModule:
    """`mod` run through LowerToInteger and FoldConstant: what int8 patch stages are built from.

    The layer graph numbers the lowered module's layers as the imported one's (`tvm_patch.graph`), so a split
    means the same layers in both."""
    return relax.transform.FoldConstant()(lower_to_integer(mod))


def stage_from_qdq(mod: tvm.IRModule, graph: Graph, n: int) -> tuple[Stage, tvm.IRModule]:
    """The int8 stage of the first n layers of a quantized model as imported (QDQ: dequantize -> float op ->
    quantize chains), whose layer graph is `graph`: what `PatchStage` builds once the model is lowered.

    `mod` is the imported module before FoldConstant (LowerToInteger needs the quantized weights as
    ``dequantize(constant)``). It is lowered (`lower_for_patching`) and the stage read from the lowered
    graph, whose first n layers are the same ops. Returns (stage, lowered module)."""
    low = lower_for_patching(mod)
    lgraph = build_graph(low)

    def kinds(g: Graph) -> list:
        return [(la.op, g.tensors[la.output].shape) for la in g.layers[:n]]

    if len(lgraph.layers) < n or kinds(lgraph) != kinds(graph):
        raise TvmPatchError(f"the first {n} layers do not match the integer-lowered graph's layers")
    why = check_split(lgraph, n)
    if why is not None:
        raise TvmPatchError(f"split {n} in the integer-lowered graph: {why}")
    stage, _ = stage_from_graph(lgraph, n, low["main"])
    return stage, low


def stage_from_graph(graph: Graph, n: int, func: relax.Function) -> tuple[Stage, relax.Expr]:
    """The first n layers of `func` (whose layer graph is `graph`) as a Stage, and the stage input expression.

    float32 graphs, and int8 graphs lowered by LowerToInteger (see the module docstring for the mapping)."""
    bindings = {b.var: b.value for blk in func.body.blocks for b in blk.bindings}
    out_tensor = {layer.out_var: layer.output for layer in graph.layers}
    value = {graph.inputs[0]: STAGE_INPUT}  # tensor id -> stage value index
    stage_input = None

    def operand_tensors(layer: Layer, args: list) -> list[int]:
        """The activation tensors `args` are, in order (repeats kept); the one not produced by a layer's
        last binding (an alias of the network input, e.g. its quantize) is the layer's remaining input."""
        nonlocal stage_input
        tids = [out_tensor.get(a) for a in args]
        missing = [t for t in layer.inputs if t not in tids]
        if None in tids:
            if len(missing) != 1:
                raise TvmPatchError(f"layer {layer.name}: cannot tell which tensors the {layer.op} reads")
            for k, a in enumerate(args):
                if tids[k] is None:
                    tids[k] = missing[0]
                    if missing[0] == graph.inputs[0] and stage_input is None:
                        stage_input = a
        return tids

    # pass 1: the layers (a pad folded into a conv is part of its padding)
    specs = []  # (layer, source tensors, padding, pad value or None when the conv pads itself or not at all)
    for layer in graph.layers[:n]:
        anchor = bindings[layer.anchor]
        if layer.op in ("conv2d", "depthwise_conv2d"):
            data = bindings[layer.prologue[0]].args[0] if layer.prologue else anchor.args[0]
            (src,) = operand_tensors(layer, [data])
            own = tuple(a - b for a, b in zip(layer.padding, layer.pad_width))  # the conv's own padding
            pv = 0.0 if any(own) else None
            if any(layer.pad_width):
                if any(own) and layer.pad_value != 0.0:
                    raise TvmPatchError(f"layer {layer.name}: a conv padding itself with 0 after a pad with "
                                        f"{layer.pad_value:g}")
                pv = layer.pad_value
            specs.append((layer, [src], layer.padding, pv))
        elif layer.op == "add":
            specs.append((layer, operand_tensors(layer, _operands(anchor)[:2]), None, None))
        elif layer.op == "max_pool2d":
            specs.append((layer, operand_tensors(layer, [anchor.args[0]]), layer.padding, None))
        else:  # resolve_split already refused it; keep the message if called directly
            raise TvmPatchError(f"layer {layer.name} ({layer.op}) cannot be computed patch by patch")
    if stage_input is None:
        raise TvmPatchError("the patch stage does not read the network input")
    dtype = str(stage_input.ty.dtype)
    in_shape = tuple(int(d) for d in stage_input.ty.shape.values)
    if dtype not in ("float32", "int8"):
        raise TvmPatchError(f"patch stages of {dtype} graphs need the integer lowering (LowerToInteger) first")
    int8 = dtype == "int8"
    qparams = recorded_qparams(func) if int8 else {}

    # pass 2 (int8): each value's zero ring z, then the layers
    if int8:
        zero_point: dict[int, int] = {}  # tensor -> the zero point its producer writes
        ring: dict[int, set] = {}  # tensor -> pad values its padded readers need
        for layer, srcs, padding, pv in specs:
            if layer.op != "add" and pv is not None:
                if float(pv) != int(pv):
                    raise TvmPatchError(f"layer {layer.name}: pad value {pv} is not an integer")
                ring.setdefault(srcs[0], set()).add(int(pv))
        for t, values in ring.items():
            if len(values) > 1:
                raise TvmPatchError(f"tensor {t} is padded with {sorted(values)} by different convolutions")

    layers = []
    for layer, srcs, padding, pv in specs:
        tables: list[Lookup] = []
        if int8:
            layer, tables = _split_tables(layer, bindings)
        if layer.op == "max_pool2d":
            if str(bindings[layer.anchor].attrs.layout) != graph.layout:
                raise TvmPatchError(f"layer {layer.name}: a max pool in layout {bindings[layer.anchor].attrs.layout} "
                                    f"in a {graph.layout} stage")
            act, lo, hi = _pool_epilogue(layer, bindings, int8)
            layers.append(MaxPool(layer.kernel, layer.stride, padding, act, value[srcs[0]], lo, hi))
            if int8 and srcs[0] in zero_point:
                zero_point[layer.output] = zero_point[srcs[0]]  # a max pool keeps its input's zero point
        elif layer.op in ("conv2d", "depthwise_conv2d"):
            anchor = bindings[layer.anchor]
            attrs = anchor.attrs
            kl = str(attrs.kernel_layout)
            weight = _const(anchor.args[1], f"layer {layer.name}: weight")
            src = srcs[0]
            if not int8:
                if pv not in (None, 0.0):
                    raise TvmPatchError(f"layer {layer.name}: a float32 pad with {pv:g} cannot be merged into "
                                        "the convolution (the stage pads with 0)")
                bias, act = _epilogue(layer, bindings, graph.channels(layer.output))
                layers.append(Conv(weight, bias, stride=layer.stride, padding=padding, groups=layer.groups,
                                   activation=act, kernel_layout=kl, input=value[src]))
            else:
                c_out = graph.channels(layer.output)
                out_layout = str(attrs.out_layout or attrs.data_layout)
                bias, mult, shift, zo, lo, hi = _int8_conv_epilogue(layer, bindings, qparams, c_out,
                                                                    out_layout.index("C"))
                z = next(iter(ring[src])) if src in ring else zero_point.get(src, 0)
                w64 = weight.astype(np.int64)
                wsum = w64.sum(axis=tuple(i for i in range(4) if i != kl.index("O")))
                full = bias + z * wsum  # un-fold: bias' = bias - zx * sum(w)
                if full.min() < -(2**31) or full.max() >= 2**31:
                    raise TvmPatchError(f"layer {layer.name}: the bias with the zero point {z} overflows int32")
                q = ConvQuant(z, zo, mult.astype(np.int32), shift.astype(np.int32), 0, lo, hi)
                layers.append(Conv(weight, full.astype(np.int32), stride=layer.stride, padding=padding,
                                   groups=layer.groups, kernel_layout=kl, input=value[src], quant=q))
                zero_point[layer.output] = zo
        else:  # add
            if len(srcs) != 2:
                raise TvmPatchError(f"layer {layer.name}: an add of {len(srcs)} operands")
            a, b = srcs
            if int8:
                q = _int8_add(layer, bindings, qparams)
                layers.append(Add(other=value[b], input=value[a], quant=q))
                zero_point[layer.output] = q.output_zero_point
            else:
                _, act = _epilogue(layer, bindings, graph.channels(layer.output))
                layers.append(Add(other=value[b], input=value[a], activation=act))
        if tables:  # each reads the layer before it; the value's zero point is the table's, unknown here
            layers += tables
            zero_point.pop(layer.output, None)
        value[layer.output] = len(layers) - 1
    stage = Stage(in_shape, tuple(layers), layout=graph.layout, dtype=dtype)
    for t, v in value.items():  # the stage computes every value at the graph's shape
        shape = graph.tensors[t].shape
        chw = (shape[1], shape[2], shape[3]) if graph.layout == "NCHW" else (shape[3], shape[1], shape[2])
        if v != STAGE_INPUT and stage.value_shape(v) != chw:
            raise TvmPatchError(f"the patch stage computes tensor {t} as {stage.value_shape(v)} (CHW), the graph "
                                f"has {shape}")
    return stage, stage_input
