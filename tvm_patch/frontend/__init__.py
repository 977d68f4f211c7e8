"""Model loading: `.onnx`, `.tflite` or `zoo:NAME[:int8]` into a Relax IRModule with weights as constants."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Any

import tvm

from tvm_patch import zoo
from tvm_patch.errors import TvmPatchError, UnsupportedOpError
from tvm_patch.frontend.tflite_ext import tflite_to_relax


@dataclass
class Model:
    """A loaded model: its Relax module (function "main", weights bound as constants) and where it came from."""

    name: str
    mod: tvm.IRModule
    source: str  # "onnx" or "tflite"
    layout: str  # activation layout: "NCHW" (ONNX) or "NHWC" (TFLite)
    # the model's own tensor names of its inputs and outputs, in `main`'s order (the C export names them so)
    input_names: tuple[str, ...] = ()
    output_names: tuple[str, ...] = ()


ZOO_PREFIX = "zoo:"


def load(spec: str) -> Model:
    """Load `spec`: a path to an .onnx/.tflite file, a zoo spec .json file (ProxylessNAS/MCUNet config, as
    `tvm-patch search` writes them), or `zoo:NAME` (float32) / `zoo:NAME:int8` (QDQ int8)."""
    if spec.startswith(ZOO_PREFIX):
        proto = _zoo_onnx(spec)
        return Model(spec, onnx_to_relax(proto, spec), "onnx", "NCHW", *onnx_io_names(proto))
    _check_file(spec)
    ext = os.path.splitext(spec)[1].lower()
    if ext == ".json":
        net, int8 = zoo.spec_file(spec)
        proto = zoo.onnx_model_of(net, int8)
        return Model(os.path.basename(spec), onnx_to_relax(proto, spec), "onnx", "NCHW", *onnx_io_names(proto))
    with open(spec, "rb") as f:
        data = f.read()
    if ext == ".onnx":
        import onnx

        try:
            proto = onnx.load_model_from_string(data)
        except Exception as e:  # protobuf decode errors have many types
            raise TvmPatchError(f"{spec}: not a valid ONNX model ({_first_line(e)}); is the file complete?") from None
        _check_onnx_ops(proto, spec)
        try:
            onnx.checker.check_model(proto)
        except Exception as e:
            raise TvmPatchError(f"{spec}: invalid ONNX model: {_first_line(e)}") from None
        return Model(os.path.basename(spec), onnx_to_relax(proto, spec), "onnx", "NCHW", *onnx_io_names(proto))
    if ext == ".tflite":
        return Model(os.path.basename(spec), tflite_to_relax(data, spec), "tflite", "NHWC", *tflite_io_names(data))
    raise TvmPatchError(f"{spec}: unknown model format '{ext or '(none)'}'; expected .onnx, .tflite or a "
                        "zoo spec .json")


def _zoo_onnx(spec: str) -> Any:
    """The ONNX model of ``zoo:NAME[:int8]``; one line for an unknown variant (an unknown name: ``zoo``'s)."""
    name, _, variant = spec[len(ZOO_PREFIX):].partition(":")
    if variant not in ("", "int8"):
        raise TvmPatchError(f"{spec}: unknown zoo variant '{variant}'; use zoo:NAME or zoo:NAME:int8")
    return zoo.onnx_model(name, int8=variant == "int8")


def _check_file(spec: str) -> None:
    """One line naming ``spec`` (a model path) when there is no file to read there."""
    if not os.path.exists(spec):
        raise TvmPatchError(f"{spec}: no such file; give an .onnx or .tflite path, or zoo:NAME (see `tvm-patch zoo`)")
    if os.path.isdir(spec):
        raise TvmPatchError(f"{spec}: is a directory; give an .onnx or .tflite file")


def model_sha256(spec: str) -> str:
    """The SHA-256 of a model (a cache key): the file's bytes, or for ``zoo:NAME[:int8]`` the bytes of its ONNX
    model. Raises TvmPatchError as ``load`` does for a spec that names no file."""
    if spec.startswith(ZOO_PREFIX):
        return hashlib.sha256(_zoo_onnx(spec).SerializeToString()).hexdigest()
    _check_file(spec)
    with open(spec, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def onnx_io_names(proto) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The names of an ONNX model's inputs (initializers left out) and outputs, in the graph's order (TVM's
    ONNX frontend keeps it for `main`'s parameters and results)."""
    init = {i.name for i in proto.graph.initializer}
    return (tuple(i.name for i in proto.graph.input if i.name not in init),
            tuple(o.name for o in proto.graph.output))


def tflite_io_names(data: bytes) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The tensor names of a .tflite model's main subgraph inputs and outputs, in the subgraph's order (the
    order of `main`'s parameters and results); () when the flatbuffer has none."""
    import tflite

    g = tflite.Model.GetRootAsModel(data, 0).Subgraphs(0)

    def name(i: int) -> str:
        raw = g.Tensors(i).Name()
        return raw.decode("utf-8", "replace") if raw is not None else ""

    return (tuple(name(g.Inputs(k)) for k in range(g.InputsLength())),
            tuple(name(g.Outputs(k)) for k in range(g.OutputsLength())))


def onnx_to_relax(proto, where: str) -> tvm.IRModule:
    """Import an ONNX ModelProto with TVM's frontend; a symbolic batch dimension is fixed to 1, any other
    symbolic dimension is refused (fixed to 1 it would compile a network for a 1-pixel image)."""
    from tvm.relax.frontend.onnx import from_onnx

    init_names = {i.name for i in proto.graph.initializer}
    shapes = {}
    for inp in proto.graph.input:
        if inp.name in init_names:
            continue
        dims = inp.type.tensor_type.shape.dim
        fixed = [d.HasField("dim_value") and d.dim_value > 0 for d in dims]
        if not all(fixed[1:]):
            k = fixed.index(False, 1)
            what = dims[k].dim_param or "unknown"
            raise TvmPatchError(f"{where}: input {inp.name!r} has a dynamic dimension {k} ({what!r}); tvm-patch "
                                "compiles one fixed shape: export the model with a fixed input shape (only the "
                                "batch may be dynamic; it is compiled as 1)")
        shapes[inp.name] = [d.dim_value if ok else 1 for d, ok in zip(dims, fixed)]
    try:
        return from_onnx(proto, shape_dict=shapes, keep_params_in_input=False)
    except Exception as e:
        raise _import_error(e, where) from None


def _check_onnx_ops(proto, where: str) -> None:
    """Name the first node whose operator TVM's ONNX frontend cannot convert, before importing."""
    from tvm.relax.frontend.onnx.onnx_frontend import _get_convert_map

    supported = _get_convert_map()
    for i, node in enumerate(proto.graph.node):
        if node.domain not in ("", "ai.onnx") or node.op_type not in supported:
            dom = f"{node.domain}." if node.domain not in ("", "ai.onnx") else ""
            raise UnsupportedOpError(
                f"{where}: unsupported ONNX operator {dom}{node.op_type} at node #{i} '{node.name or node.output[0]}'; "
                "TVM's ONNX frontend cannot import it: replace it, or export the model without it")


def _import_error(e: Exception, where: str) -> TvmPatchError:
    msg = _first_line(e)
    if type(e).__name__ == "OpNotImplemented" or "not supported" in msg.lower() or "not implemented" in msg.lower():
        return UnsupportedOpError(f"{where}: unsupported operator: {msg}")
    return TvmPatchError(f"{where}: TVM could not import the model: {msg}")


def _first_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    # TVM errors put the useful line last, after a traceback
    return lines[-1] if lines else type(e).__name__
