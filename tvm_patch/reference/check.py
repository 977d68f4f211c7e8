"""`verify_against_reference` (the CLI ``verify --reference`` command): lower, run on seeded inputs, compare
with the reference runtime."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tvm_patch import frontend, zoo
from tvm_patch.errors import TvmPatchError
from tvm_patch.reference.onnx_layers import onnx_input_grids, onnx_layerwise_agreement, onnx_output_steps
from tvm_patch.reference.runners import (OnnxRuntimeRunner, TfliteMicroRunner, compile_for_host, random_inputs,
                                         relax_input_specs)
from tvm_patch.transform.lower_to_integer import LowerToInteger, float_ops_remaining


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
        grids = onnx_input_grids(proto)
        steps = onnx_output_steps(proto)
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
