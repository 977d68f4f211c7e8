"""LowerToInteger: rewrite every quantized ``R.dequantize -> float op -> R.quantize`` chain into integer
arithmetic, bit-exact with TensorFlow Lite Micro's int8 reference kernels.

TVM 0.27's frontends import a quantized op as dequantize -> float op -> quantize (and TFLite fused
activations as an int8 ``R.clip`` after the quantize). On a microcontroller that needs float math, and it
does not round like TFLite. This pass recognises each chain and emits integer Relax instead; the integer
arithmetic (QuantizeMultiplier, double-rounding MultiplyByQuantizedMultiplier, gemmlowp fixed point) is in
`tvm_patch.quant`.

Relax form produced (``x``, ``y`` int8 tensors, per-tensor activation parameters; constants are
``R.const``; every ``call_tir`` comes from ``BlockBuilder.emit_te`` and its PrimFunc name is given)::

  conv2d / depthwise conv2d (groups = channels) / dense (matmul):
    [xp = R.nn.pad(x, pad_width, pad_value=zp_x)]        only when zp_x != 0 and the conv pads
    acc = R.nn.conv2d(xp, w_int8, strides, padding=0 if padded above, dilation, groups, layouts,
                      out_dtype="int32")                 (R.matmul(x, w_int8, out_dtype="int32") for dense)
    acc = R.add(acc, bias_int32)                         bias' = bias - zp_x * sum(w) per output channel,
                                                         shape (C,) for NHWC/dense, (1, C, 1, 1) for NCHW
    acc = R.call_tir("requantize", (acc[, multiplier_int32[C], shift_int32[C]]))
                                                         MBQM(acc, m[c], shift[c]) + zp_y, int32; per
                                                         tensor m/shift are baked in, per channel they are
                                                         int32 constant tensors
    acc = R.clip(acc, act_min, act_max)                  fused activation and dtype range, folded
    y   = R.astype(acc, "int8")
  add / sub (TFLite ADD/SUB, left shift 20):   y = R.call_tir("q_add" | "q_sub", (a, b))
  mul:                                          y = R.call_tir("q_mul", (a, b))
  average pool (same in/out quantization):      y = R.call_tir("q_avg_pool2d", (x,))
  mean:                                         y = R.call_tir("q_mean", (x,))
  softmax (last axis):                          y = R.call_tir("q_softmax", (x, exp_table_int32[256]))
                                                exp of (row max - x) from the table, integer sum,
                                                gemmlowp reciprocal, output scaling; other output
                                                parameters than (1/256, -128): then "q_requantize"
  logistic / hard swish:                        y = R.call_tir("q_logistic" | "q_hard_swish", (x, lut_int8[256]))
                                                the table is TFLite Micro's integer kernel evaluated at
                                                compile time for all 256 inputs (a logistic whose output
                                                is not (1/256, -128): table populated like TFLite's
                                                LUTPopulate)
  sigmoid straight on a conv / dense (no quantize between, as QDQ exporters write squeeze-excite gates):
    acc = conv2d / matmul and bias add as above, then
    y = R.call_tir("q_conv_logistic", (acc, multiplier_int32[C], shift_int32[C]))
                                                acc -> Q4.27 fixed point -> gemmlowp logistic -> y
  requantize (quantize(dequantize(x)), concat inputs with other parameters, data movement whose output
  parameters differ from the input's):         y = R.call_tir("q_requantize", (x,))
  data movement (reshape, permute_dims, squeeze, expand_dims, flatten, max_pool2d, pad [pad value = zero
  point], take, strided_slice, resize2d nearest, concat with equal parameters): the same Relax op applied to
  the int8 tensor itself.

The integer parameters baked into the ``requantize``, ``q_add``, ``q_sub`` and ``q_mul`` PrimFuncs are also
recorded in the lowered function's ``tvm_patch.qparams`` attribute, {PrimFunc name: {parameter: int}} (see
`quant_params`), so that later passes (the patch stage) recover them without reading TIR.

The ``call_tir`` ops for add, mul, pooling, mean, softmax, LUTs and requantize already include the fused
activation clamp and the cast, so their result is the int8 tensor. An int8 ``R.clip`` right after a
lowered chain is folded into the chain's clamp. Nothing of the float chain remains; a ``R.dequantize`` /
``R.quantize`` stays only where the model itself computes in float (float inputs or outputs); see
`float_ops_remaining`. A quantized chain this pass cannot lower raises `UnsupportedOpError` naming the op
and the binding: there is no silent float fallback.

``LowerToInteger(rounding="onnxruntime")`` replaces TFLite's fixed-point requantization of conv / dense
("ort_requantize"), add ("ort_add"), mean / global pooling ("ort_mean") and requantize (a 256-entry table)
by onnxruntime's float32 requantization, reproduced exactly with int64 integer operations
(`tvm_patch.quant.ort_requantize_te`); softmax, logistic, hard swish, mul, sub and windowed average pooling
keep TFLite's arithmetic. Bit-exact with onnxruntime's int8 kernels (session entry
``session.qdqisint8allowed=1``) layer by layer. The patch stage reads only the "tflite" form.

uint8 activations (ONNX) are accepted: a conv input is first shifted to int8 ("uint8_to_int8", zero
point - 128). Known limits: TFLite softmax ``beta`` is dropped by TVM's importer (assumed 1); weights
must be symmetric (zero point 0) as in TFLite; average pooling with different input/output quantization
needs a global window; tanh, leaky relu, prelu, exp and other float ops in a chain raise.

The package, by job: `values` (symbolic values), `chain` (the chain tracker), `registry` (op -> lowering),
one module per op family (`conv`, `binary`, `pool`, `softmax`, `lut`, `concat`, `requantize`) and `api` (the
pass). This ``__init__`` imports the op-family modules, which registers their lowerings, and re-exports.
"""

from __future__ import annotations

from tvm_patch.names import QPARAMS_ATTR
from tvm_patch.transform.lower_to_integer import binary, concat, conv, lut, pool, requantize, softmax  # noqa: F401
from tvm_patch.transform.lower_to_integer.api import (ROUNDINGS, LowerToInteger, float_ops_remaining,
                                                      lower_to_integer, quant_params)
from tvm_patch.transform.lower_to_integer.registry import supported_ops

__all__ = ["QPARAMS_ATTR", "ROUNDINGS", "LowerToInteger", "float_ops_remaining", "lower_to_integer", "quant_params",
           "supported_ops"]
