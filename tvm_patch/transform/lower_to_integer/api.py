"""The LowerToInteger module pass and its functional forms (see the package docstring)."""

from __future__ import annotations

from typing import Any

import tvm
from tvm import ir, relax

from tvm_patch.names import QPARAMS_ATTR
from tvm_patch.relax_util import op_name
from tvm_patch.transform.lower_to_integer.chain import Lowerer
from tvm_patch.transform.lower_to_integer.values import FLOAT_DTYPES, dtype_of


ROUNDINGS = ("tflite", "onnxruntime")


@tvm.transform.module_pass(opt_level=0, name="LowerToInteger")
class LowerToInteger:
    """Module pass: rewrite every quantized dequantize -> float op -> quantize chain of every Relax function
    into integer arithmetic (see the module docstring for the Relax form).

    `rounding`: ``"tflite"`` (default) is bit-exact with TFLite Micro's int8 kernels; ``"onnxruntime"``
    reproduces onnxruntime's float32 requantization with integer operations (conv / depthwise / dense,
    add, mean / global average pooling, requantize; see `tvm_patch.quant.ort_requantize_te`), the other ops
    keep TFLite's arithmetic. Both emit integer-only TIR.

    Raises `tvm_patch.errors.UnsupportedOpError` for a quantized chain it cannot lower."""

    def __init__(self, rounding: str = "tflite") -> None:
        if rounding not in ROUNDINGS:
            raise ValueError(f"LowerToInteger: rounding must be one of {ROUNDINGS}, not {rounding!r}")
        self.rounding = rounding

    def transform_module(self, mod: tvm.IRModule, ctx: Any) -> tvm.IRModule:
        lw = Lowerer(mod, self.rounding)
        for gv, func in list(mod.functions_items()):
            if isinstance(func, relax.Function):
                lw.func_name = gv.name_hint
                lw.values = {}
                lw.qparams = {}
                new = lw.visit_expr(func)
                new = relax.analysis.remove_all_unused(new)
                if lw.qparams:
                    new = new.with_attr(QPARAMS_ATTR, lw.qparams)
                lw.builder_.update_func(gv, new)
        out = lw.builder_.get()
        return _drop_unused_prim_funcs(out)


def quant_params(func: relax.Function) -> dict[str, dict]:
    """The integer parameters LowerToInteger baked into the PrimFuncs `func` calls (its `QPARAMS_ATTR`):
    {PrimFunc name: {"op": "requantize", "output_zero_point", "axis"[, "multiplier", "shift"]}} (per-tensor
    multiplier and shift are baked; per channel they are the call's 2nd and 3rd arguments), or
    {"op": "q_add" | "q_sub", **AddParams fields} / {"op": "q_mul", **MulParams fields}. Empty when absent."""
    attrs = func.attrs
    if attrs is None or QPARAMS_ATTR not in attrs:
        return {}
    return {str(k): {str(n): (str(v) if isinstance(v, str) else int(v)) for n, v in rec.items()}
            for k, rec in attrs[QPARAMS_ATTR].items()}


def lower_to_integer(mod: tvm.IRModule, rounding: str = "tflite") -> tvm.IRModule:
    """Apply `LowerToInteger(rounding)` to `mod` (convenience for callers that do not build pass pipelines)."""
    return LowerToInteger(rounding)(mod)


def _drop_unused_prim_funcs(mod: tvm.IRModule) -> tvm.IRModule:
    """Remove PrimFuncs no Relax function refers to any more (e.g. the float ``hard_swish`` or the
    ``maximum``/``minimum`` of an ONNX Clip whose chains were lowered)."""
    used: set[str] = set()
    for _, func in mod.functions_items():
        if isinstance(func, relax.Function):
            used.update(gv.name_hint for gv in relax.analysis.all_global_vars(func))
    keep = {gv: f for gv, f in mod.functions_items() if isinstance(f, relax.Function) or gv.name_hint in used}
    return tvm.IRModule(keep, attrs=mod.attrs)


def _bindings(func: Any) -> list:
    out = []
    body = func.body
    if isinstance(body, relax.SeqExpr):
        for blk in body.blocks:
            out.extend(blk.bindings)
    return out


def float_ops_remaining(mod: tvm.IRModule) -> list[str]:
    """Bindings that still compute in float after lowering: ``"func:var = op"`` for every Relax op whose
    result or a tensor argument is a float tensor, and every call_tir whose PrimFunc reads or writes a float
    buffer. Empty for an int8 model lowered by `LowerToInteger` with integer inputs and outputs."""
    out: list[str] = []
    for gv, func in mod.functions_items():
        if not isinstance(func, relax.Function):
            continue
        for b in _bindings(func):
            v = b.value
            if not isinstance(v, ir.Call):
                continue
            name = op_name(v)
            if name == "relax.call_tir":
                callee = v.args[0]
                pf = mod[callee] if isinstance(callee, ir.GlobalVar) and callee in mod.get_global_vars() else None
                if pf is not None and _prim_func_uses_float(pf):
                    out.append(f"{gv.name_hint}:{b.var.name} = call_tir {callee.name_hint}")
                continue
            tensors = [b.var] + [a for a in v.args if isinstance(a, relax.Expr) and not isinstance(a, ir.GlobalVar)]
            if any(dtype_of(t) in FLOAT_DTYPES for t in tensors):
                out.append(f"{gv.name_hint}:{b.var.name} = {name}")
    return out


def _prim_func_uses_float(pf: Any) -> bool:
    for p in pf.params:
        for cand in (p, getattr(p, "ty", None)):
            d = getattr(cand, "dtype", None)
            if d is not None and str(d) in FLOAT_DTYPES:
                return True
    text = pf.script()
    return any(f'"{d}"' in text or f"T.{d}(" in text for d in FLOAT_DTYPES)
