"""Integer arithmetic of TFLite's int8 kernels: parameters, numpy references and TE expressions.

Why this module exists: an int8 network on a microcontroller must not touch floats, and to be useful its
outputs must equal TensorFlow Lite Micro's bit for bit. TFLite (Micro) fixes the arithmetic precisely:

* a real multiplier ``M`` becomes ``(quantized_multiplier, shift)`` by ``QuantizeMultiplier`` (frexp, round
  half away from zero to Q31, shift > 0 is a left shift);
* ``MultiplyByQuantizedMultiplier(x, m, shift)`` (default "double rounding" build) is
  ``RoundingDivideByPOT(SaturatingRoundingDoublingHighMul(x * 2**max(shift, 0), m), max(-shift, 0))``:
  two roundings, both half away from zero;
* softmax and logistic run gemmlowp fixed-point math (``exp_on_negative_values``,
  ``one_over_one_plus_x_for_x_in_0_1``, ``logistic``), hard swish 16-bit fixed point, average pooling
  rounds half away from zero, MEAN folds ``1/n`` into the multiplier, ADD rescales both inputs after a
  left shift of 20.

TVM's own ``topi.fixed_point_multiply`` lowers to ``T.q_multiply_shift``, which rounds once, half up
(towards +inf) on a 64-bit product: it differs from TFLite on negative ties and wherever the two roundings of
TFLite differ from one (``test_lower_to_integer.py`` shows a counterexample). So the arithmetic is written
here once, generically over a small backend (`fixedpoint.NumpyOps` on int64 arrays holding int32 values,
`fixedpoint.TEOps` on ``PrimExpr``), and instantiated twice: the ``*_ref`` functions (numpy, reference and test oracle) and the
``*_te`` functions (TE compute definitions the Relax pass emits with ``BlockBuilder.emit_te``). The numpy
backend keeps gemmlowp's literal formulations, the TE backend uses shorter equivalent ones (checked equal
by the tests). Element-wise functions of one int8 value (logistic, hard swish) and softmax's exponential
of ``x - max`` have only 256 possible inputs: their exact integer arithmetic is evaluated at compile time
into a table that the TE gathers from (as TFLite's optimized kernels do); softmax's sum, reciprocal and
scaling stay TE arithmetic. Everything is integer at run time; floats appear only in the compile-time
parameter derivation, where TFLite's Prepare() uses them.

The package, by job: `params` (compile-time parameters), `fixedpoint` (the core over the numpy and TE
backends), `reference` (numpy references and compile-time tables), `te` (TE computes), `ort` (the
onnxruntime mode). This ``__init__`` only re-exports.
"""

from __future__ import annotations

from tvm_patch.quant.params import (  # noqa: F401
    INT32_MIN, INT32_MAX, QRANGE, tflite_round, quantize_multiplier, quantize_multiplier_smaller_than_one_exp,
    quantize_multiplier_greater_than_one, quantize_real_to_q, activation_range, conv_multipliers, AddParams,
    add_params, MulParams, mul_params, mean_multiplier, calculate_input_radius, SoftmaxParams,
    SOFTMAX_SCALED_DIFF_INTEGER_BITS, SOFTMAX_ACCUMULATION_INTEGER_BITS, softmax_params, LogisticParams,
    LOGISTIC_INPUT_INTEGER_BITS, logistic_params, HardSwishParams, downscale_int32_to_int16_multiplier,
    hard_swish_params, acc_logistic_multipliers,
)
from tvm_patch.quant.reference import (  # noqa: F401
    srdhm_ref, rounding_divide_by_pot_ref, multiply_by_quantized_multiplier_ref, requantize_ref, add_ref, mul_ref,
    softmax_ref, logistic_ref, mean_ref, avg_pool_round_ref, softmax_exp_table, logistic_table, hard_swish_ref,
    hard_swish_table, float_function_table, acc_logistic_ref,
)
from tvm_patch.quant.te import (  # noqa: F401
    requantize_te, requantize_int_te, add_te, mul_te, avg_pool2d_te, mean_te,
    softmax_te, lut_te, acc_logistic_te,
)
from tvm_patch.quant.fixedpoint import (  # noqa: F401
    REQUANT_EXTERN, extern_requantization, expand_extern_requantization,
)
from tvm_patch.quant.ort import (  # noqa: F401
    float32_mantissa_exponent, ORT_SATURATED, ort_multiplier, ort_conv_multipliers, ort_mean_multiplier,
    ort_requantize_ref, ort_requantize_te, ort_mean_te, OrtAddParams, ort_add_params, ort_add_ref, ort_add_te,
    ort_requantize_table,
)

__all__ = [
    "REQUANT_EXTERN",
    "expand_extern_requantization",
    "extern_requantization",
    "AddParams",
    "HardSwishParams",
    "INT32_MAX",
    "INT32_MIN",
    "LOGISTIC_INPUT_INTEGER_BITS",
    "LogisticParams",
    "MulParams",
    "ORT_SATURATED",
    "OrtAddParams",
    "QRANGE",
    "SOFTMAX_ACCUMULATION_INTEGER_BITS",
    "SOFTMAX_SCALED_DIFF_INTEGER_BITS",
    "SoftmaxParams",
    "acc_logistic_multipliers",
    "acc_logistic_ref",
    "acc_logistic_te",
    "activation_range",
    "add_params",
    "add_ref",
    "add_te",
    "avg_pool2d_te",
    "avg_pool_round_ref",
    "calculate_input_radius",
    "conv_multipliers",
    "downscale_int32_to_int16_multiplier",
    "float32_mantissa_exponent",
    "float_function_table",
    "hard_swish_params",
    "hard_swish_ref",
    "hard_swish_table",
    "logistic_params",
    "logistic_ref",
    "logistic_table",
    "lut_te",
    "mean_multiplier",
    "mean_ref",
    "mean_te",
    "mul_params",
    "mul_ref",
    "mul_te",
    "multiply_by_quantized_multiplier_ref",
    "ort_add_params",
    "ort_add_ref",
    "ort_add_te",
    "ort_conv_multipliers",
    "ort_mean_multiplier",
    "ort_mean_te",
    "ort_multiplier",
    "ort_requantize_ref",
    "ort_requantize_table",
    "ort_requantize_te",
    "quantize_multiplier",
    "quantize_multiplier_greater_than_one",
    "quantize_multiplier_smaller_than_one_exp",
    "quantize_real_to_q",
    "requantize_int_te",
    "requantize_ref",
    "requantize_te",
    "rounding_divide_by_pot_ref",
    "softmax_exp_table",
    "softmax_params",
    "softmax_ref",
    "softmax_te",
    "srdhm_ref",
    "tflite_round",
]
