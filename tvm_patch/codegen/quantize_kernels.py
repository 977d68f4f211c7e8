"""Calls to ``tvmp_quant_s8`` in place of the float-to-int8 quantization expression of the plain-C kernels.

A network with a float input quantizes it first (its own kernel, or the patch stage's input patch):

    int8(max(min(round(x / scale) + zp, 127), -128))      (float32 arithmetic; TIR's round is C's nearbyintf)

becomes ``int8(tvmp_quant_s8(x / scale, zp))`` (``tvmp_kernels.h``). On cores with an FPU and the DSP extension
that is VCVTR (float to int32, rounding to nearest even as nearbyint does in the default rounding mode,
saturating), QADD of the zero point and SSAT, instead of the rounding, a float add and two float compares with
their branches. Exact: for a finite quotient both give the rounded value plus zp clamped to int8 (a rounded value
beyond float's integers, |q| >= 2^24, clamps either way); infinities clamp to the same end; a NaN gives 127 in
both (the float clamp's comparisons are false), which the kernel tests first. The division stays as it is.
"""

from __future__ import annotations

from typing import Any

import tvm
import tvm_ffi
from tvm import tirx

QUANT = "tvmp_quant_s8"
_ROUNDING = ("tirx.round", "tirx.nearbyint")  # both printed as nearbyintf by TVM's C codegen


def _float_const(x: Any) -> float | None:
    return float(x.value) if isinstance(x, tirx.FloatImm) else None


def _quantize_call(node: tirx.Cast) -> Any:
    """The call replacing ``node`` when it is the quantization expression above (in either order of the clamp's
    min and max), else ``node``."""
    if str(node.ty) != "int8" or not isinstance(node.value, (tirx.Max, tirx.Min)):
        return node
    outer = node.value
    inner_type, bounds = (tirx.Min, (-128.0, 127.0)) if isinstance(outer, tirx.Max) else (tirx.Max, (127.0, -128.0))
    inner = outer.a
    if not isinstance(inner, inner_type) or str(inner.ty) != "float32":
        return node
    if _float_const(outer.b) != bounds[0] or _float_const(inner.b) != bounds[1]:
        return node
    shifted = inner.a
    if not isinstance(shifted, tirx.Add):
        return node
    rounded, zp = shifted.a, _float_const(shifted.b)
    if zp is None or zp != int(zp) or not -128 <= zp <= 127:
        return node
    if not (isinstance(rounded, tvm.ir.Call) and isinstance(rounded.op, tvm.ir.Op)
            and rounded.op.name in _ROUNDING and len(rounded.args) == 1):
        return node
    call = tirx.call_pure_extern("int32", QUANT, rounded.args[0], tirx.const(int(zp), "int32"))
    return tirx.Cast("int8", call)


def rewrite_quantize(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """``func`` with every float-to-int8 quantization expression (module docstring) as a ``tvmp_quant_s8`` call."""
    return tvm_ffi.structural_map(func, [(tirx.Cast, _quantize_call)])


def QuantizeCalls() -> tvm.transform.Pass:  # noqa: N802 (TVM's naming of passes)
    """The pass form of ``rewrite_quantize``, for the plain-C lowering pipeline."""
    return tirx.transform.prim_func_pass(lambda f, _m, _c: rewrite_quantize(f), opt_level=0,
                                         name="tvm_patch.QuantizeCalls")
