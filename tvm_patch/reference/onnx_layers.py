"""Layer-by-layer agreement of an integer-lowered ONNX QDQ model with onnxruntime, from onnxruntime's own
int8 inputs (the model cut at every quantized tensor)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from tvm_patch import frontend
from tvm_patch.reference.runners import OnnxRuntimeRunner, compile_for_host, random_inputs
from tvm_patch.transform.lower_to_integer import LowerToInteger


def onnx_output_steps(proto: Any) -> list[float | None]:
    """Quantization step of each graph output produced by a DequantizeLinear with a constant scale."""
    from onnx import numpy_helper

    inits = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    consts = {}
    for node in proto.graph.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    consts[node.output[0]] = numpy_helper.to_array(a.t)
    producer = {o: n for n in proto.graph.node for o in n.output}
    steps: list[float | None] = []
    for out in proto.graph.output:
        node = producer.get(out.name)
        while node is not None and node.op_type == "Identity":
            node = producer.get(node.input[0])
        step = None
        if node is not None and node.op_type == "DequantizeLinear":
            s = inits.get(node.input[1], consts.get(node.input[1]))
            if s is not None and np.size(s) == 1:
                step = float(np.asarray(s).reshape(-1)[0])
        steps.append(step)
    return steps


def onnx_input_grids(proto: Any) -> list[tuple[float, int] | None]:
    """(scale, zero point) of the QuantizeLinear that consumes each graph input, if any."""
    from onnx import numpy_helper

    inits = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    init_names = set(inits)
    grids: list[tuple[float, int] | None] = []
    for inp in proto.graph.input:
        if inp.name in init_names:
            continue
        grid = None
        for node in proto.graph.node:
            if node.op_type == "QuantizeLinear" and node.input[0] == inp.name and node.input[1] in inits:
                scale = float(np.asarray(inits[node.input[1]]).reshape(-1)[0])
                zp = int(np.asarray(inits[node.input[2]]).reshape(-1)[0]) if len(node.input) > 2 and \
                    node.input[2] in inits else 0
                grid = (scale, zp)
                break
        grids.append(grid)
    return grids


@dataclass
class LayerAgreement:
    """Agreement of one quantized tensor (the output of one QuantizeLinear) when both runtimes compute its
    layer from the same int8 inputs."""

    tensor: str
    op: str
    n_values: int
    n_equal: int
    max_diff_steps: int


def _cut_name(tensor: str) -> str:
    import zlib

    return "cut_" + "".join(c if c.isalnum() else "_" for c in tensor) + f"_{zlib.crc32(tensor.encode()):08x}"


def onnx_cut_at_quantized_tensors(proto: Any) -> tuple[Any, list[str], list[str]]:
    """A copy of a QDQ ONNX model in which every layer reads its quantized inputs from new graph inputs.

    Every activation DequantizeLinear whose data is a QuantizeLinear output gets its data from a new int8
    graph input ``cut:<tensor>``; the outputs are all QuantizeLinear outputs. Fed with the quantized tensors
    of one runtime, each layer of the cut model then computes from identical integer inputs in both runtimes,
    so their difference is the layer's own arithmetic, not accumulated upstream differences.
    Returns (cut model, names of the cut inputs' source tensors, output tensor names)."""
    import onnx
    from onnx import TensorProto, helper

    m = onnx.ModelProto()
    m.CopyFrom(proto)
    g = m.graph
    q_outputs = [n.output[0] for n in g.node if n.op_type == "QuantizeLinear"]
    qset = set(q_outputs)
    elem = {n.output[0]: TensorProto.INT8 for n in g.node if n.op_type == "QuantizeLinear"}
    inits = {i.name: i for i in g.initializer}
    for n in g.node:  # uint8 quantization when the zero point says so
        if n.op_type == "QuantizeLinear" and len(n.input) > 2 and n.input[2] in inits:
            elem[n.output[0]] = inits[n.input[2]].data_type
    cut_sources: list[str] = []
    for n in g.node:
        if n.op_type == "DequantizeLinear" and n.input[0] in qset:
            src = n.input[0]
            if src not in cut_sources:
                cut_sources.append(src)
            n.input[0] = _cut_name(src)
    for src in cut_sources:
        g.input.append(helper.make_tensor_value_info(_cut_name(src), elem[src], None))
    del g.output[:]
    for q in q_outputs:
        g.output.append(helper.make_tensor_value_info(q, elem[q], None))
    return m, cut_sources, q_outputs


def onnx_layerwise_agreement(proto: Any, n_inputs: int = 5, seed: int = 0, rounding: str = "tflite",
                             config: dict[str, str] | None = None) -> list[LayerAgreement]:
    """Per quantized tensor of a QDQ ONNX model: how often the integer-lowered TVM layer (`rounding` of
    `LowerToInteger`) equals onnxruntime's (session `config`) and the largest difference in quantization
    steps, both computing from onnxruntime's own int8 inputs (see `onnx_cut_at_quantized_tensors`)."""
    import onnx

    cut, sources, outputs = onnx_cut_at_quantized_tensors(proto)
    # the full model with every quantized tensor as an output gives the layer inputs
    full = onnx.ModelProto()
    full.CopyFrom(proto)
    del full.graph.output[:]
    for o in cut.graph.output:
        full.graph.output.append(o)
    full_run = OnnxRuntimeRunner(full, config)
    float_inputs = [i for i in proto.graph.input if i.name not in {x.name for x in proto.graph.initializer}]
    shapes = [(tuple(d.dim_value if d.dim_value > 0 else 1 for d in i.type.tensor_type.shape.dim), "float32")
              for i in float_inputs]
    input_sets = random_inputs(shapes, n_inputs, seed, onnx_input_grids(proto))
    first = dict(zip(outputs, full_run(input_sets[0])))
    source_of = {_cut_name(src): src for src in sources}
    for inp in cut.graph.input:  # static shapes for the importer
        if inp.name in source_of:
            shp = first[source_of[inp.name]].shape
            inp.type.tensor_type.ClearField("shape")
            for d in shp:
                inp.type.tensor_type.shape.dim.add().dim_value = int(d)
    # the importer needs output types too
    for out in cut.graph.output:
        shp = first[out.name].shape
        out.type.tensor_type.ClearField("shape")
        for d in shp:
            out.type.tensor_type.shape.dim.add().dim_value = int(d)
    run_tvm = compile_for_host(LowerToInteger(rounding)(frontend.onnx_to_relax(cut, "<cut onnx model>")))
    cut_run = OnnxRuntimeRunner(cut, config)
    cut_input_names = [i.name for i in cut.graph.input if i.name not in {x.name for x in cut.graph.initializer}]
    prod = {o: n for n in proto.graph.node for o in n.output}
    agg = {o: [0, 0, 0] for o in outputs}
    for xs in input_sets:
        vals = dict(zip(outputs, full_run(xs)))
        feed = []
        for name, x in zip(cut_input_names, [*xs, *[None] * len(cut_input_names)]):
            feed.append(vals[source_of[name]] if name in source_of else x)
        got = run_tvm(feed)
        want = cut_run(feed)
        for o, g_, w_ in zip(outputs, got, want):
            d = np.abs(np.asarray(g_).reshape(w_.shape).astype(np.int64) - w_.astype(np.int64))
            a = agg[o]
            a[0] += d.size
            a[1] += int(np.count_nonzero(d == 0))
            a[2] = max(a[2], int(d.max()) if d.size else 0)
    res = []
    for o in outputs:
        src = prod[o].input[0]
        op = prod[src].op_type if src in prod else "input"
        res.append(LayerAgreement(o, op, *agg[o]))
    return res
