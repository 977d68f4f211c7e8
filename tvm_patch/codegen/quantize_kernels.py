"""Calls to ``tvmp_quant_s8`` in place of the float-to-int8 quantization expression of the plain-C kernels.

A network with a float input quantizes it first (its own kernel, or the patch stage's input patch):

    int8(max(min(round(x / scale) + zp, 127), -128))      (float32 arithmetic; TIR's round is C's nearbyintf)

(without the ``+ zp`` when zp is 0, which TVM's simplifier drops) becomes ``int8(tvmp_quant_s8(x / scale, zp))``
(``tvmp_kernels.h``). On cores with an FPU and the DSP extension that is VCVTR (float to int32, rounding to nearest
even as nearbyint does in the default rounding mode, saturating), QADD of the zero point and SSAT, instead of the
rounding, a float add and two float compares with their branches. Exact: for a finite quotient both give the
rounded value plus zp clamped to int8 (a rounded value beyond float's integers, |q| >= 2^24, clamps either way);
infinities clamp to the same end; a NaN gives 127 in both (the float clamp's comparisons are false), which the
kernel tests first. The division stays as it is.

An innermost serial loop of such stores, ``for k in range(E): D[d + k] = int8(tvmp_quant_s8(S[s + k] / c, zp))``
(d, s free of k, c a constant), is then one ``tvmp_quant_row_s8(&D[d], &S[s], E, c, zp)``, the same values four a
step (kernels round 39). Measured on mbv2-w0.3-r80 (M7, instructions): the per-layer quantization 10.1 -> 9.1 a
value, the 4 x 4 patch stage's (rows of 27 at most) 12.4 -> 8.8: the loop's own test had cost 4 a value there.
"""

from __future__ import annotations

from typing import Any

import tvm
import tvm_ffi
from tvm import tirx
from tvm.ir.expr import TensorLoad

from tvm_patch.codegen.micro_kernels import _int, _unit_stride_base
from tvm_patch.tir_util import pure_extern_name, uses_var

QUANT = "tvmp_quant_s8"
QUANT_ROW = "tvmp_quant_row_s8"
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
    # a zero point of 0: TVM's simplifier drops the "+ 0" (proxyless-w0.3-r176's input)
    rounded, zp = (shifted.a, _float_const(shifted.b)) if isinstance(shifted, tirx.Add) else (shifted, 0.0)
    if zp is None or zp != int(zp) or not -128 <= zp <= 127:
        return node
    if not (isinstance(rounded, tvm.ir.Call) and isinstance(rounded.op, tvm.ir.Op)
            and rounded.op.name in _ROUNDING and len(rounded.args) == 1):
        return node
    call = tirx.call_pure_extern("int32", QUANT, rounded.args[0], tirx.const(int(zp), "int32"))
    return tirx.Cast("int8", call)


def _row_call(loop: tirx.For) -> Any:
    """The ``tvmp_quant_row_s8`` call replacing ``loop`` when it is a row of quantization stores (module
    docstring), else ``loop``."""
    st = loop.body
    if loop.kind != tirx.ForKind.SERIAL or _int(loop.min) != 0 or not isinstance(st, tirx.BufferStore) \
            or uses_var(loop.extent, loop.loop_var) or len(st.indices) != 1 or str(st.buffer.ty.dtype) != "int8":
        return loop
    cast = st.value
    call = cast.value if isinstance(cast, tirx.Cast) and str(cast.ty) == "int8" else None
    if pure_extern_name(call) != QUANT or not isinstance(call.args[1], tirx.Div):
        return loop
    load, scale = call.args[1].a, call.args[1].b
    if not (isinstance(load, TensorLoad) and len(load.indices) == 1 and str(load.source.ty.dtype) == "float32"
            and _float_const(scale) is not None):
        return loop
    d, s = _unit_stride_base(st.indices[0], loop.loop_var), _unit_stride_base(load.indices[0], loop.loop_var)
    if d is None or s is None:
        return loop
    return tirx.Evaluate(tirx.call_extern(
        "void", QUANT_ROW, tirx.address_of(tirx.BufferLoad(st.buffer, [d])),
        tirx.address_of(tirx.BufferLoad(load.source, [s])), tirx.Cast("int32", loop.extent), scale, call.args[2]))


def rewrite_quantize(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """``func`` with every float-to-int8 quantization expression (module docstring) as a ``tvmp_quant_s8`` call,
    and every row of them as one ``tvmp_quant_row_s8``."""
    calls = tvm_ffi.structural_map(func, [(tirx.Cast, _quantize_call)])
    return tvm_ffi.structural_map(calls, [(tirx.For, _row_call)])


def QuantizeCalls() -> tvm.transform.Pass:  # noqa: N802 (TVM's naming of passes)
    """The pass form of ``rewrite_quantize``, for the plain-C lowering pipeline."""
    return tirx.transform.prim_func_pass(lambda f, _m, _c: rewrite_quantize(f), opt_level=0,
                                         name="tvm_patch.QuantizeCalls")
