"""Reference runtimes and the bit-exactness check of integer-lowered models.

* `run_tflite_micro` runs a .tflite in TensorFlow Lite Micro (host build, reference kernels): the oracle
  for int8 TFLite models, bit for bit.
* `run_onnxruntime` runs an ONNX model (QDQ int8 included) in onnxruntime: the oracle for ONNX models,
  within one quantization step per layer (onnxruntime requantizes in float, TFLite in fixed point);
  `onnx_layerwise_agreement` measures that layer by layer from identical int8 inputs.
* `tflite_with_outputs` rewrites a .tflite so chosen intermediate tensors become outputs (to compare
  every layer, not only a saturated softmax).
* `verify_against_reference` (the CLI ``verify`` command) imports a model, lowers it with
  `tvm_patch.transform.lower_to_integer.LowerToInteger`, compiles it for the host with LLVM, runs it on seeded
  random inputs and compares with the reference.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from tvm_patch import frontend, zoo
from tvm_patch.errors import TvmPatchError
from tvm_patch.transform.lower_to_integer import LowerToInteger, float_ops_remaining

_DEFAULT_ARENA = 4 << 20


def _read_bytes(model: str | os.PathLike | bytes) -> bytes:
    if isinstance(model, (bytes, bytearray)):
        return bytes(model)
    with open(model, "rb") as f:
        return f.read()


def run_tflite_micro(
    model: str | os.PathLike | bytes,
    inputs: Sequence[np.ndarray],
    arena_size: int = _DEFAULT_ARENA,
) -> list[np.ndarray]:
    """Run one inference of a .tflite (path or flatbuffer bytes) in tflite-micro; returns all outputs."""
    return TfliteMicroRunner(model, arena_size)(inputs)


class TfliteMicroRunner:
    """A tflite-micro interpreter kept open for many inferences (tensors are reset between them)."""

    def __init__(self, model: str | os.PathLike | bytes, arena_size: int = _DEFAULT_ARENA) -> None:
        from tflite_micro.python.tflite_micro import runtime

        self.data = _read_bytes(model)
        self.it = runtime.Interpreter.from_bytes(self.data, arena_size=arena_size)
        self.n_outputs = _tflite_io_count(self.data)[1]

    def __call__(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        self.it.reset()
        for i, x in enumerate(inputs):
            self.it.set_input(np.ascontiguousarray(x), i)
        self.it.invoke()
        return [np.array(self.it.get_output(i)) for i in range(self.n_outputs)]


def _tflite_io_count(data: bytes) -> tuple[int, int]:
    import tflite

    g = tflite.Model.GetRootAsModel(data, 0).Subgraphs(0)
    return g.InputsLength(), g.OutputsLength()


def tflite_input_specs(model: str | os.PathLike | bytes) -> list[tuple[tuple[int, ...], str]]:
    """(shape, numpy dtype name) of each input of the first subgraph."""
    import tflite

    data = _read_bytes(model)
    g = tflite.Model.GetRootAsModel(data, 0).Subgraphs(0)
    names = {v: k.lower() for k, v in tflite.TensorType.__dict__.items() if not k.startswith("_")}
    specs = []
    for i in range(g.InputsLength()):
        t = g.Tensors(g.Inputs(i))
        specs.append((tuple(int(d) for d in t.ShapeAsNumpy()), names[t.Type()]))
    return specs


def tflite_with_outputs(model: str | os.PathLike | bytes, tensor_indices: Sequence[int]) -> bytes:
    """Copy of a .tflite whose first subgraph outputs are `tensor_indices` (intermediate tensors included).

    Both tflite-micro and TVM's frontend then return those tensors, so every layer can be compared."""
    import flatbuffers
    from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as schema

    data = _read_bytes(model)
    m = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(data, 0))
    m.subgraphs[0].outputs = [int(i) for i in tensor_indices]
    b = flatbuffers.Builder(len(data) + 4096)
    b.Finish(m.Pack(b), file_identifier=b"TFL3")
    return bytes(b.Output())


def tflite_operator_outputs(model: str | os.PathLike | bytes) -> list[tuple[str, int]]:
    """(operator name, output tensor index) for every operator of the first subgraph, in order."""
    import tflite

    data = _read_bytes(model)
    m = tflite.Model.GetRootAsModel(data, 0)
    g = m.Subgraphs(0)
    names = {v: k for k, v in tflite.BuiltinOperator.__dict__.items() if not k.startswith("_")}
    out = []
    for i in range(g.OperatorsLength()):
        op = g.Operators(i)
        oc = m.OperatorCodes(op.OpcodeIndex())
        out.append((names.get(max(oc.BuiltinCode(), oc.DeprecatedBuiltinCode()), "?"), int(op.Outputs(0))))
    return out


def run_onnxruntime(model: Any, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Run an ONNX model (path, bytes or ModelProto) on the CPU provider; returns all outputs."""
    return OnnxRuntimeRunner(model)(inputs)


ORT_INT8_KERNELS = {"session.qdqisint8allowed": "1"}
"""onnxruntime session configuration under which its QDQ fusion keeps int8 tensors int8 (x86 converts QDQ
pairs to uint8 by default, which leaves some convolutions and additions of the zoo models unfused, in float)."""


class OnnxRuntimeRunner:
    """An onnxruntime session kept open for many inferences (graph optimizations at their default;
    `config`: extra session configuration entries, e.g. `ORT_INT8_KERNELS`)."""

    def __init__(self, model: Any, config: dict[str, str] | None = None) -> None:
        import onnxruntime as ort

        if hasattr(model, "SerializeToString"):
            data = model.SerializeToString()
        else:
            data = _read_bytes(model)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        for k, v in (config or {}).items():
            opts.add_session_config_entry(k, v)
        self.sess = ort.InferenceSession(data, sess_options=opts, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.sess.get_inputs()]

    def __call__(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        return [np.asarray(o) for o in self.sess.run(None, dict(zip(self.input_names, inputs)))]


# ----------------------------------------------------------------------------------------------------------
# TVM side
# ----------------------------------------------------------------------------------------------------------


def compile_for_host(mod: Any) -> Callable[[Sequence[np.ndarray]], list[np.ndarray]]:
    """Compile a Relax module for the host CPU (LLVM) and return a function running "main" on the VM."""
    import tvm
    from tvm import relax

    ex = tvm.compile(mod, target=tvm.target.Target({"kind": "llvm"}))
    vm = relax.VirtualMachine(ex, tvm.cpu())

    def run(inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        out = vm["main"](*[tvm.runtime.tensor(np.ascontiguousarray(x)) for x in inputs])
        return _flatten_outputs(out)

    return run


def _flatten_outputs(out: Any) -> list[np.ndarray]:
    if hasattr(out, "numpy"):
        return [out.numpy()]
    res = []
    for o in out:
        res.extend(_flatten_outputs(o))
    return res


def relax_input_specs(mod: Any) -> list[tuple[tuple[int, ...], str]]:
    """(shape, dtype) of the tensor parameters of `main` (num_input of them when the attribute is set)."""
    func = mod["main"]
    params = list(func.params)
    attrs = func.attrs
    if attrs is not None and "num_input" in attrs:
        params = params[: int(attrs["num_input"])]
    specs = []
    for p in params:
        sinfo = p.ty
        specs.append((tuple(int(d) for d in sinfo.shape), str(sinfo.dtype)))
    return specs


def random_inputs(
    specs: Sequence[tuple[tuple[int, ...], str]],
    n: int,
    seed: int = 0,
    float_grid: Sequence[tuple[float, int] | None] | None = None,
) -> list[list[np.ndarray]]:
    """`n` seeded random input sets. Integer inputs cover their whole range; float inputs are drawn on the
    quantization grid ``(q - zp) * scale`` of `float_grid[i]` when given (so the input quantization has no
    rounding ties), else from N(0, 1)."""
    rng = np.random.default_rng(seed)
    sets = []
    for _ in range(n):
        xs = []
        for k, (shape, dtype) in enumerate(specs):
            dt = np.dtype(dtype)
            if dt.kind in "iu":
                info = np.iinfo(dt)
                xs.append(rng.integers(int(info.min), int(info.max) + 1, size=shape, dtype=np.int64).astype(dt))
            else:
                grid = float_grid[k] if float_grid is not None and k < len(float_grid) else None
                if grid is not None:
                    scale, zp = grid
                    q = rng.integers(-128, 128, size=shape)
                    xs.append(((q - zp) * np.float32(scale)).astype(dt))
                else:
                    xs.append(rng.standard_normal(size=shape).astype(dt))
        sets.append(xs)
    return sets


@dataclass
class VerifyResult:
    """Agreement of the integer-lowered model with a reference runtime over random inputs.

    End to end: every output value of the network. For ONNX QDQ models also `layers`: each quantized tensor
    computed by both runtimes from the same int8 inputs (`onnx_layerwise_agreement`), because end to end,
    one-step differences of onnxruntime's float requantization grow with depth."""

    model: str
    reference: str
    n_inputs: int
    n_values: int
    n_equal: int
    max_abs_diff: float
    max_diff_steps: float | None
    tolerance_steps: int
    float_ops: list[str] = field(default_factory=list)
    layers: list | None = None
    rounding: str = "tflite"
    ort_config: dict | None = None

    @property
    def share_equal(self) -> float:
        """Fraction of output values equal to the reference bit for bit."""
        return self.n_equal / self.n_values if self.n_values else 1.0

    @property
    def layer_share_equal(self) -> float | None:
        """Fraction of all quantized-tensor values equal when every layer gets the reference's inputs."""
        if not self.layers:
            return None
        n = sum(x.n_values for x in self.layers)
        return sum(x.n_equal for x in self.layers) / n if n else 1.0

    @property
    def layer_max_diff_steps(self) -> int | None:
        """Largest per-layer difference, in quantization steps."""
        return max(x.max_diff_steps for x in self.layers) if self.layers else None

    @property
    def passed(self) -> bool:
        """tflite-micro: every output bit-exact. onnxruntime with TFLite rounding: every layer within
        `tolerance_steps` of the reference (end to end when the model has no quantized layers); with
        onnxruntime rounding: every layer and every output within `tolerance_steps`."""
        if self.tolerance_steps == 0:
            return self.n_equal == self.n_values
        if self.rounding == "onnxruntime":
            steps = self.max_diff_steps if self.max_diff_steps is not None else self.max_abs_diff
            return steps <= self.tolerance_steps and (not self.layers or
                                                       self.layer_max_diff_steps <= self.tolerance_steps)
        if self.layers:
            return self.layer_max_diff_steps <= self.tolerance_steps
        steps = self.max_diff_steps if self.max_diff_steps is not None else self.max_abs_diff
        return steps <= self.tolerance_steps

    def summary(self) -> str:
        """One line for the CLI."""
        steps = "" if self.max_diff_steps is None else f" ({self.max_diff_steps:g} quantization steps)"
        verdict = "PASS" if self.passed else "FAIL"
        how = ""
        if self.reference == "onnxruntime":
            how = f" [{self.rounding} rounding" + (", onnxruntime int8 QDQ kernels]" if self.ort_config else "]")
        text = (f"{verdict} {self.model} vs {self.reference}{how}: {self.n_inputs} inputs, "
                f"{self.share_equal:.2%} of {self.n_values} output values equal, max |diff| "
                f"{self.max_abs_diff:g}{steps}")
        if self.layers:
            text += (f"; layer by layer ({len(self.layers)} quantized tensors from identical inputs): "
                     f"{self.layer_share_equal:.2%} equal, max {self.layer_max_diff_steps} step(s)")
        return text


def _onnx_output_steps(proto: Any) -> list[float | None]:
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


def _onnx_input_grids(proto: Any) -> list[tuple[float, int] | None]:
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
    from onnx import helper

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
    input_sets = random_inputs(shapes, n_inputs, seed, _onnx_input_grids(proto))
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


def verify_against_reference(
    model: Any,
    reference: str = "auto",
    n_inputs: int = 20,
    seed: int = 0,
    lowered: Any = None,
    layerwise: bool = True,
    rounding: str = "tflite",
    ort_config: dict[str, str] | None = None,
) -> VerifyResult:
    """Lower `model` (a .tflite / .onnx path, ``zoo:NAME[:int8]`` or an onnx ModelProto) to integer
    arithmetic, run it with TVM on `n_inputs` seeded random inputs and compare every output value with the
    reference runtime: ``"tflite-micro"`` (must be bit-exact), ``"onnxruntime"`` (every layer within one
    quantization step, see `VerifyResult`) or ``"auto"`` (by model format). `lowered` skips the import and
    lowering when the caller already has the lowered module; `layerwise` adds the per-layer comparison of
    ONNX QDQ models (one more compile). `rounding`: the `LowerToInteger` arithmetic; `ort_config`: extra
    onnxruntime session entries (`ORT_INT8_KERNELS` makes onnxruntime run its int8 kernels on every layer
    but the float classifier, which the ``"onnxruntime"`` rounding reproduces bit for bit per layer)."""
    proto = model if hasattr(model, "SerializeToString") else None
    spec = "<onnx model>" if proto is not None else str(model)
    is_zoo = proto is None and spec.startswith(frontend.ZOO_PREFIX)
    ext = ".onnx" if proto is not None else ("" if is_zoo else Path(spec).suffix.lower())
    if reference == "auto":
        reference = "tflite-micro" if ext == ".tflite" else "onnxruntime"
    if reference not in ("tflite-micro", "onnxruntime"):
        raise TvmPatchError(f"unknown reference '{reference}'; use tflite-micro, onnxruntime or auto")
    if reference == "tflite-micro" and ext != ".tflite":
        raise TvmPatchError(f"{spec}: tflite-micro needs a .tflite model")
    if reference == "onnxruntime" and ext == ".tflite":
        raise TvmPatchError(f"{spec}: onnxruntime needs an ONNX model")

    if lowered is None:
        mod = frontend.onnx_to_relax(proto, spec) if proto is not None else frontend.load(spec).mod
        lowered = LowerToInteger(rounding)(mod)
    run_tvm = compile_for_host(lowered)
    float_ops = float_ops_remaining(lowered)

    grids = None
    steps: list[float | None] = []
    if reference == "tflite-micro":
        ref = TfliteMicroRunner(spec)
        tolerance = 0
    else:
        import onnx

        if proto is not None:
            pass
        elif is_zoo:
            name, _, variant = spec[len(frontend.ZOO_PREFIX):].partition(":")
            proto = zoo.onnx_model(name, int8=variant == "int8")
        else:
            proto = onnx.load(spec)
        ref = OnnxRuntimeRunner(proto, ort_config)
        grids = _onnx_input_grids(proto)
        steps = _onnx_output_steps(proto)
        tolerance = 1

    n_values = n_equal = 0
    max_abs = 0.0
    max_steps: float | None = None
    for xs in random_inputs(relax_input_specs(lowered), n_inputs, seed, grids):
        got = run_tvm(xs)
        want = ref(xs)
        if len(got) != len(want):
            raise TvmPatchError(f"{spec}: TVM gives {len(got)} outputs, {reference} {len(want)}")
        for k, (g, w) in enumerate(zip(got, want)):
            g = np.asarray(g).reshape(np.shape(w))
            diff = np.abs(g.astype(np.float64) - np.asarray(w).astype(np.float64))
            n_values += diff.size
            n_equal += int(np.count_nonzero(g == w))
            d = float(diff.max()) if diff.size else 0.0
            max_abs = max(max_abs, d)
            if np.issubdtype(np.asarray(w).dtype, np.integer):
                s = d
            elif k < len(steps) and steps[k]:
                s = d / steps[k]
            else:
                s = None
            if s is not None:
                max_steps = s if max_steps is None else max(max_steps, s)
    layers = None
    if reference == "onnxruntime" and layerwise and any(n.op_type == "QuantizeLinear" for n in proto.graph.node):
        layers = onnx_layerwise_agreement(proto, n_inputs=min(n_inputs, 5), seed=seed, rounding=rounding,
                                          config=ort_config)
    return VerifyResult(spec, reference, n_inputs, n_values, n_equal, max_abs,
                        None if max_steps is None else round(max_steps, 3), tolerance, float_ops, layers,
                        rounding, ort_config)
