"""The reference runtimes and their inputs: TensorFlow Lite Micro (with .tflite rewriting so intermediate
tensors become outputs), onnxruntime, TVM compiled for the host, seeded random inputs."""

from __future__ import annotations

import os
from typing import Any, Callable, Sequence

import numpy as np


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
