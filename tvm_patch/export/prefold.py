"""Fold weight preprocessing (reshape, transpose, dequantize, ...) with numpy before legalization.

Why: TVM's ``FoldConstant`` compiles and runs one PrimFunc per constant-only binding, about 0.1 s each; a
zoo model has a few hundred of them (bias reshapes, the ONNX Clip's isnan/where, QDQ weight
dequantization), so folding dominated export time. Only ops whose numpy result is bit-identical to TVM's
legalized computation are folded here (pure data movement, isnan/where, float32 dequantize computed in
TVM's order: int32 subtract, then one float32 multiply); everything else is left to ``FoldConstant``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import tvm
from tvm import relax
from tvm.ir.expr import Constant

__all__ = ["prefold_constants"]


def _ints(values: Any) -> list[int]:
    return [int(v) for v in values]


def _axes(attr: Any, ndim: int) -> list[int] | None:
    if attr is None:
        return None
    return [a % ndim for a in _ints(attr)] if ndim else []


def _reshape(call: relax.Call, x: np.ndarray) -> np.ndarray | None:
    shape = call.args[1]
    if not isinstance(shape, relax.ShapeExpr):
        return None
    return x.reshape(_ints(shape.values))


def _permute(call: relax.Call, x: np.ndarray) -> np.ndarray:
    axes = _axes(call.attrs.axes, x.ndim)
    return np.transpose(x, axes)


def _expand_dims(call: relax.Call, x: np.ndarray) -> np.ndarray:
    out_ndim = x.ndim + len(call.attrs.axis)
    return np.expand_dims(x, tuple(a % out_ndim for a in _ints(call.attrs.axis)))


def _squeeze(call: relax.Call, x: np.ndarray) -> np.ndarray:
    axes = _axes(call.attrs.axis, x.ndim)
    return np.squeeze(x, None if axes is None else tuple(axes))


def _flatten(call: relax.Call, x: np.ndarray) -> np.ndarray:
    return x.reshape(-1)


def _isnan(call: relax.Call, x: np.ndarray) -> np.ndarray:
    return np.isnan(x)


def _where(call: relax.Call, c: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray | None:
    if a.dtype != b.dtype:
        return None
    return np.where(c.astype(bool), a, b)


def _dequantize(call: relax.Call, x: np.ndarray, scale: np.ndarray, zp: np.ndarray) -> np.ndarray | None:
    if str(call.attrs.out_dtype) != "float32" or x.dtype.kind not in "iu" or scale.dtype != np.float32:
        return None
    axis = int(call.attrs.axis) % x.ndim if x.ndim else 0
    shape = [1] * x.ndim

    def per_axis(p: np.ndarray) -> np.ndarray:
        if p.size == 1:
            return p.reshape(())
        s = list(shape)
        s[axis] = p.size
        return p.reshape(s)

    sub = x.astype(np.int32) - per_axis(zp).astype(np.int32)
    return (sub.astype(np.float32) * per_axis(scale)).astype(np.float32)


_FOLDERS: dict[str, Callable[..., np.ndarray | None]] = {
    "relax.reshape": _reshape,
    "relax.permute_dims": _permute,
    "relax.expand_dims": _expand_dims,
    "relax.squeeze": _squeeze,
    "relax.flatten": _flatten,
    "relax.isnan": _isnan,
    "relax.where": _where,
    "relax.dequantize": _dequantize,
}
# Number of leading tensor arguments each folder takes (the rest are shapes or attributes).
_ARITY = {"relax.reshape": 1, "relax.where": 3, "relax.dequantize": 3}


def _fold_values(func: relax.Function) -> dict[Any, np.ndarray]:
    """Relax var -> folded numpy value, for every constant-only binding numpy can compute exactly."""
    values: dict[Any, np.ndarray] = {}
    for block in func.body.blocks:
        for b in block.bindings:
            call = b.value
            if not isinstance(b, relax.VarBinding) or not isinstance(call, relax.Call):
                continue
            if not isinstance(call.op, tvm.ir.Op) or call.op.name not in _FOLDERS:
                continue
            n = _ARITY.get(call.op.name, 1)
            args = []
            for a in call.args[:n]:
                if isinstance(a, Constant):
                    args.append(a.value.numpy())
                elif isinstance(a, relax.Var) and a in values:
                    args.append(values[a])
                else:
                    break
            if len(args) != n:
                continue
            try:
                out = _FOLDERS[call.op.name](call, *args)
            except (ValueError, TypeError, AttributeError):
                out = None
            ty = b.var.ty
            if out is None or not isinstance(ty, relax.TensorType) or ty.shape is None:
                continue
            if str(out.dtype) != str(ty.dtype) or list(out.shape) != _ints(ty.shape.values):
                continue
            values[b.var] = np.array(out, order="C")  # ascontiguousarray would make 0-d arrays 1-d
    return values


@relax.expr_functor.mutator
class _Substitute(relax.PyExprMutator):
    """Drop the folded bindings and use their values as constants."""

    def __init__(self, mod: tvm.IRModule, values: dict[Any, np.ndarray]) -> None:
        super().__init__(mod)
        self.values = values
        self.consts: dict[Any, Any] = {}

    def visit_var_(self, op: relax.Var) -> relax.Expr:  # noqa: N802 (TVM's visitor naming)
        if op in self.values:
            if op not in self.consts:
                self.consts[op] = relax.const(self.values[op])
            return self.consts[op]
        return super().visit_var_(op)

    def visit_dataflow_var_(self, op: relax.Var) -> relax.Expr:  # noqa: N802
        return self.visit_var_(op)

    def visit_var_binding_(self, binding: relax.VarBinding) -> None:  # noqa: N802
        if binding.var in self.values:
            return
        super().visit_var_binding_(binding)


def prefold_constants(mod: tvm.IRModule, func_name: str = "main") -> tvm.IRModule:
    """``mod`` with the numpy-foldable constant-only bindings of ``func_name`` replaced by constants."""
    func = mod[func_name]
    if not isinstance(func, relax.Function) or not isinstance(func.body, relax.SeqExpr):
        return mod
    values = _fold_values(func)
    if not values:
        return mod
    new_func = _Substitute(mod, values).visit_expr(func)
    out = tvm.IRModule(dict(mod.functions.items()), attrs=mod.attrs)
    out[func_name] = new_func
    return out
