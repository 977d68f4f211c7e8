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

The package, by job: `runners` (the runtimes and inputs), `onnx_layers` (layer-by-layer agreement of ONNX
QDQ models), `check` (`verify_against_reference`). This ``__init__`` only re-exports.
"""

from __future__ import annotations

from tvm_patch.reference.runners import (  # noqa: F401
    ORT_INT8_KERNELS, OnnxRuntimeRunner, TfliteMicroRunner, compile_for_host, random_inputs, relax_input_specs,
    run_onnxruntime, run_tflite_micro, tflite_input_specs, tflite_operator_outputs, tflite_with_outputs,
)
from tvm_patch.reference.onnx_layers import (  # noqa: F401
    LayerAgreement, onnx_cut_at_quantized_tensors, onnx_input_grids, onnx_layerwise_agreement, onnx_output_steps,
)
from tvm_patch.reference.check import (  # noqa: F401
    VerifyResult, verify_against_reference,
)

__all__ = [
    "LayerAgreement", "ORT_INT8_KERNELS", "OnnxRuntimeRunner", "TfliteMicroRunner", "VerifyResult",
    "compile_for_host", "onnx_cut_at_quantized_tensors", "onnx_input_grids", "onnx_layerwise_agreement",
    "onnx_output_steps", "random_inputs", "relax_input_specs", "run_onnxruntime", "run_tflite_micro",
    "tflite_input_specs", "tflite_operator_outputs", "tflite_with_outputs", "verify_against_reference",
]
