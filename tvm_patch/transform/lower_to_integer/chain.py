"""The chain tracker: `Lowerer` rebuilds each Relax function binding by binding, keeping quantized
``dequantize -> float ops`` chains symbolic until the ``quantize`` that ends them; there it folds the
float clamps into the output range and hands the chain to the lowering registered for its last op."""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np
import tvm
from tvm import ir, relax, te
from tvm.relax.expr_functor import PyExprMutator, mutator

from tvm_patch import quant as Q
from tvm_patch.errors import UnsupportedOpError
from tvm_patch.relax_util import call_tir_name, op_name
from tvm_patch.transform.lower_to_integer.pool import lower_stock_avg_pool
from tvm_patch.transform.lower_to_integer.registry import lowering
from tvm_patch.transform.lower_to_integer.requantize import lower_requantize
from tvm_patch.transform.lower_to_integer.values import (FLOAT_DTYPES, INT_STORAGE, QT, Const, FOp, Pending, QCtx,
                                                         const_np, dtype_of, is_const, prim_value, shape_of)


_DATA_MOVEMENT = {
    "relax.reshape", "relax.permute_dims", "relax.squeeze", "relax.expand_dims", "relax.flatten",
    "relax.nn.max_pool2d", "relax.nn.pad", "relax.take", "relax.strided_slice", "relax.image.resize2d",
    "relax.broadcast_to",
}
_CONST_FOLDABLE = {"relax.reshape", "relax.permute_dims", "relax.squeeze", "relax.expand_dims", "relax.astype",
                   "relax.flatten"}
_NUMPY_ELEMENTWISE = {
    "relax.isnan": lambda a: np.isnan(a[0]),
    "relax.where": lambda a: np.where(a[0], a[1], a[2]),
    "relax.add": lambda a: a[0] + a[1],
    "relax.subtract": lambda a: a[0] - a[1],
    "relax.multiply": lambda a: a[0] * a[1],
    "relax.maximum": lambda a: np.maximum(a[0], a[1]),
    "relax.minimum": lambda a: np.minimum(a[0], a[1]),
    "relax.negative": lambda a: -a[0],
}


def uint8_to_int8_te(x: Any) -> Any:
    return te.compute(x.shape, lambda *i: (x[i].astype("int32") - 128).astype("int8"), name="uint8_to_int8")


@mutator
class Lowerer(PyExprMutator):
    """Rebuilds each Relax function binding by binding, keeping quantized chains symbolic until the
    quantize that ends them, then emitting the integer form."""

    def __init__(self, mod: tvm.IRModule, rounding: str = "tflite") -> None:
        super().__init__(mod)
        self.mod = mod
        self.ort = rounding == "onnxruntime"
        self.values: dict = {}  # original Var -> QT | FOp | Const | Pending
        self.orig: dict = {}  # original Var -> its bound value in the original function
        self.func_name = ""
        self.qparams: dict[str, dict] = {}  # PrimFunc name -> baked integer parameters (QPARAMS_ATTR)
        self._in_dataflow = False

    # ------------------------------------------------------------------ helpers

    def where(self, var: Any) -> str:
        return f"{self.func_name}:{var.name}"

    def unsupported(self, what: str, var: Any) -> UnsupportedOpError:
        return UnsupportedOpError(f"LowerToInteger: cannot lower quantized {what} at binding "
                                  f"{self.where(var)} to integer arithmetic")

    def _value_of(self, expr: Any) -> Any:
        """Symbolic value of an argument: QT/FOp/Const/Pending, or None for plain expressions."""
        if isinstance(expr, relax.Var):
            return self.values.get(expr)
        if is_const(expr):
            return Const(const_np(expr))
        return None

    def materialize(self, expr: Any) -> relax.Expr:
        """The new-function expression for an original argument (emitting what a symbolic value needs)."""
        val = self._value_of(expr) if isinstance(expr, relax.Var) else None
        if val is None:
            return self.visit_expr(expr)
        if isinstance(val, Const):
            return relax.const(val.array, str(val.array.dtype))
        if isinstance(val, Pending):
            return val.expr()
        if isinstance(val, QT):
            # A float tensor is wanted: the model computes in float here (e.g. a float graph output).
            return self._emit_dequantize(val)
        if isinstance(val, FOp):
            return self._materialize_fop(val)
        raise TypeError(val)

    def _materialize_arg(self, a: Any) -> relax.Expr:
        if isinstance(a, QT):
            return self._emit_dequantize(a)
        if isinstance(a, FOp):
            return self._materialize_fop(a)
        if isinstance(a, Const):
            return relax.const(a.array, str(a.array.dtype))
        if isinstance(a, Pending):
            return a.expr()
        return a

    def _emit_dequantize(self, qt: QT) -> relax.Expr:
        """The float tensor of a quantized one, where the model itself continues in float."""
        if qt._float is None:
            if qt.per_tensor:
                qt._float = self.builder_.emit(relax.op.dequantize(qt.expr(), relax.const(np.float32(qt.s)),
                                                                   relax.const(np.int32(qt.z))))
            else:
                scale = np.broadcast_to(qt.scale, qt.shape).astype(np.float32)
                zp = np.broadcast_to(qt.zp, qt.shape).astype(np.float32)
                q = self.builder_.emit(relax.op.astype(qt.expr(), "float32"))
                qt._float = self.builder_.emit(relax.op.multiply(relax.op.subtract(q, relax.const(zp)),
                                                                 relax.const(scale)))
        return qt._float

    def _materialize_fop(self, f: FOp) -> relax.Expr:
        if f.materialized is None:
            args = [self._materialize_arg(a) for a in f.args]
            c = f.call
            new_args = []
            i = 0
            for orig in c.args:
                if isinstance(orig, relax.Tuple):
                    n = len(orig.fields)
                    new_args.append(relax.Tuple(args[i:i + n]))
                    i += n
                else:
                    new_args.append(args[i])
                    i += 1
            f.materialized = self.builder_.emit(relax.Call(c.op, new_args, c.attrs, c.ty_args), f.var.name)
        return f.materialized

    def _flat_args(self, call: Any) -> list:
        out = []
        for a in call.args:
            if isinstance(a, relax.Tuple):
                out.extend(a.fields)
            else:
                out.append(a)
        return out

    def emit_te(self, fn: Callable, tensors: list, *params: Any, name: str,
                 record: dict | None = None) -> relax.Expr:
        """emit_te of `fn(*te_tensors, *params)`; params (ints, lists, dataclasses) are closed over.

        `record`: the integer parameters baked into the PrimFunc, kept in the function's `QPARAMS_ATTR`
        map under the PrimFunc's name (see `quant_params`)."""
        call = self.builder_.call_te(lambda *ts: fn(*ts, *params), *tensors, primfunc_name_hint=name)
        if record is not None:
            key = call.args[0].name_hint
            rec = {k: (v if isinstance(v, str) else int(v)) for k, v in record.items()}
            if self.qparams.setdefault(key, rec) != rec:  # identical PrimFuncs bake identical parameters
                raise AssertionError(f"LowerToInteger: PrimFunc {key} recorded with two parameter sets")
        return self.builder_.emit(call)

    def _bind_output(self, var: Any, expr: relax.Expr) -> None:
        """Bind `var` of the original function to `expr` in the new one (an output var stays an output)."""
        if isinstance(var, relax.DataflowVar) or not self._in_dataflow:
            new = expr if isinstance(expr, relax.Var) else self.builder_.emit(expr, var.name)
        else:
            new = self.builder_.emit_output(expr, var.name)
        self.set_var_remap(var, new)

    # ------------------------------------------------------------------ traversal

    def visit_dataflow_block_(self, block: Any) -> Any:
        self._in_dataflow = True
        try:
            return super().visit_dataflow_block_(block)
        finally:
            self._in_dataflow = False

    def visit_binding_block_(self, block: Any) -> Any:
        self._in_dataflow = False
        return super().visit_binding_block_(block)

    def _materialize_free_vars(self, expr: Any) -> None:
        for fv in relax.analysis.free_vars(expr):
            if self.values.get(fv) is not None:
                e = self.materialize(fv)
                if not isinstance(e, relax.Var):
                    e = self.builder_.emit(e, fv.name)
                self.set_var_remap(fv, e)

    def visit_match_cast_(self, binding: Any) -> None:
        self._materialize_free_vars(binding.value)
        super().visit_match_cast_(binding)

    def visit_var_binding_(self, binding: Any) -> None:
        var, val = binding.var, binding.value
        self.orig[var] = val
        sym = None
        if isinstance(val, ir.Call):
            sym = self._symbolic(var, val)
        if sym is None:
            # ordinary binding: symbolic arguments are materialised, then the default re-emission
            self._materialize_free_vars(val)
            super().visit_var_binding_(binding)
            return
        self.values[var] = sym
        if not isinstance(var, relax.DataflowVar):
            self._bind_output(var, self.materialize(var))

    # ------------------------------------------------------------------ symbolic interpretation

    def _symbolic(self, var: Any, call: Any) -> Any:
        """Symbolic value for `var = call`, or None to re-emit the binding as it is."""
        name = op_name(call)
        args = self._flat_args(call)
        vals = [self._value_of(a) for a in args]

        if name in _CONST_FOLDABLE and args and all(isinstance(v, Const) for v in vals[:1]) and \
                all(not isinstance(a, relax.Var) or isinstance(self._value_of(a), Const) for a in args):
            folded = self._fold_const(name, call, vals[0].array)
            if folded is not None:
                return Const(folded)

        if name in _NUMPY_ELEMENTWISE and args and all(isinstance(v, Const) for v in vals):
            dt = dtype_of(var)
            try:
                res = np.asarray(_NUMPY_ELEMENTWISE[name]([v.array for v in vals]))
                if dt is not None and res.shape == shape_of(var) and res.size <= 64:
                    return Const(res.astype(dt))
            except Exception:
                pass
        if name == "relax.dequantize":
            return self._sym_dequantize(var, call, vals)
        if name == "relax.quantize":
            src = vals[0]
            if isinstance(src, (QT, FOp)):
                return self._lower_quantize(var, call, src)
            return None  # the model quantizes a float tensor: keep
        if name == "relax.clip" and isinstance(vals[0], Pending):
            lo, hi = int(math.ceil(prim_value(call.args[1]))), int(math.floor(prim_value(call.args[2])))
            p = vals[0]
            nlo, nhi = max(p.lo, lo), min(p.hi, hi)
            if nlo <= nhi:
                return Pending(p.build, nlo, nhi, p.dtype, p.shape, p.cache)
            return None
        if name == "relax.astype" and self._is_stock_avg_pool(call):
            return lower_stock_avg_pool(self, var, call)

        out_dtype = dtype_of(var)
        if out_dtype in FLOAT_DTYPES and any(isinstance(v, (QT, FOp)) for v in vals):
            # data movement on a quantized tensor stays a quantized tensor
            if name in _DATA_MOVEMENT and isinstance(vals[0], QT) and all(
                    not isinstance(v, (QT, FOp)) for v in vals[1:]):
                moved = self._move(var, call, vals[0])
                if moved is not None:
                    return moved
            if name == "relax.concat" and all(isinstance(v, QT) for v in vals):
                qts = vals
                if all(q.per_tensor for q in qts) and all(q.same_params(qts[0]) for q in qts):
                    return self._qt_from_op(var, call, qts, qts[0].scale, qts[0].zp)
            fargs = [v if v is not None else self.visit_expr(a) for v, a in zip(vals, args)]
            return FOp(call, fargs, var)
        return None

    def _fold_const(self, name: str, call: Any, a: np.ndarray) -> np.ndarray | None:
        attrs = call.attrs
        try:
            if name in ("relax.reshape", "relax.flatten"):
                return a.reshape(shape_of(call))
            if name == "relax.permute_dims":
                axes = attrs.axes
                return np.transpose(a, None if axes is None else [int(x) for x in axes])
            if name in ("relax.squeeze", "relax.expand_dims"):
                return a.reshape(shape_of(call))
            if name == "relax.astype":
                return a.astype(str(attrs.dtype))
        except Exception:
            return None
        return None

    def _sym_dequantize(self, var: Any, call: Any, vals: list) -> QT | None:
        data, scale_e, zp_e = call.args
        if not (is_const(scale_e) and is_const(zp_e)):
            return None
        dt = dtype_of(data)
        if dt not in ("int8", "uint8", "int16", "int32"):
            return None
        shape = shape_of(data)
        scale = const_np(scale_e).astype(np.float32)
        zp = const_np(zp_e).astype(np.int64)
        axis = int(call.attrs.axis) % max(len(shape), 1) if shape else 0
        if scale.size > 1 or zp.size > 1:
            bshape = [1] * len(shape)
            bshape[axis] = -1
            scale = scale.reshape(bshape)
            zp = np.broadcast_to(zp.reshape(bshape) if zp.size > 1 else zp.reshape([1] * len(shape)), scale.shape)
        else:
            scale, zp = scale.reshape(()), zp.reshape(())
        v = vals[0]
        if isinstance(v, Const):
            full_s = np.broadcast_to(scale, shape).copy()
            full_z = np.broadcast_to(zp, shape).copy()
            return QT(full_s, full_z, dt, shape, const=v.array.astype(dt), where=self.where(var))
        return QT(scale, zp, dt, shape, make=lambda d=data: self.materialize(d), where=self.where(var))

    def _qt_from_op(self, var: Any, call: Any, qts: list, scale: np.ndarray, zp: np.ndarray) -> QT:
        """The same op applied to the integer tensors: a quantized tensor with the given parameters."""
        dt = qts[0].dtype

        def make() -> relax.Expr:
            new_args = []
            k = 0
            for orig in call.args:
                if isinstance(orig, relax.Tuple):
                    n = len(orig.fields)
                    new_args.append(relax.Tuple([q.expr() for q in qts[k:k + n]]))
                    k += n
                elif k < len(qts) and isinstance(self._value_of(orig), QT):
                    new_args.append(qts[k].expr())
                    k += 1
                else:
                    new_args.append(self.materialize(orig))
            return self.builder_.emit(relax.Call(call.op, new_args, call.attrs, call.ty_args), var.name)

        return QT(scale, zp, dt, shape_of(var), make=make, where=self.where(var))

    def _move(self, var: Any, call: Any, qt: QT) -> QT | None:
        name = op_name(call)
        out_shape = shape_of(var)
        if qt.const is not None and name in ("relax.reshape", "relax.permute_dims", "relax.squeeze",
                                             "relax.expand_dims", "relax.flatten"):
            def f(a: np.ndarray) -> np.ndarray:
                return self._fold_const(name, call, np.broadcast_to(a, qt.shape))

            return QT(f(qt.scale), f(qt.zp), qt.dtype, out_shape, const=f(qt.const), where=self.where(var))
        if not qt.per_tensor:
            return None
        if name == "relax.nn.pad":
            mode = str(call.attrs.pad_mode) if hasattr(call.attrs, "pad_mode") else "constant"
            if mode != "constant":
                return None
            real = float(call.attrs.pad_value) if hasattr(call.attrs, "pad_value") else 0.0
            qv = Q.quantize_real_to_q(real, qt.s, qt.z)
            qmin, qmax = Q.QRANGE[qt.dtype]
            qv = min(max(qv, qmin), qmax)
            pads = [int(p) for p in call.attrs.pad_width]

            def make_pad() -> relax.Expr:
                return self.builder_.emit(relax.op.nn.pad(qt.expr(), pads, pad_value=float(qv)), var.name)

            return QT(qt.scale, qt.zp, qt.dtype, out_shape, make=make_pad, where=self.where(var))
        if name == "relax.image.resize2d" and str(call.attrs.method) != "nearest_neighbor":
            return None
        return self._qt_from_op(var, call, [qt], qt.scale, qt.zp)

    # ------------------------------------------------------------------ stock TFLite avg pool (int32)

    def _is_stock_avg_pool(self, call: Any) -> bool:
        """astype(avg_pool2d(astype(x_int8, int32)), int8): TVM's own TFLite AVERAGE_POOL_2D import."""
        if str(call.attrs.dtype) not in INT_STORAGE:
            return False
        pool = call.args[0]
        if not isinstance(pool, relax.Var):
            return False
        pb = self.orig.get(pool)
        if not isinstance(pb, ir.Call) or op_name(pb) != "relax.nn.avg_pool2d" or dtype_of(pool) != "int32":
            return False
        cast = pb.args[0]
        cb = self.orig.get(cast) if isinstance(cast, relax.Var) else None
        return cb is not None and op_name(cb) == "relax.astype" and dtype_of(cb.args[0]) == str(call.attrs.dtype)

    # ------------------------------------------------------------------ quantize: the end of a chain

    def _lower_quantize(self, var: Any, qcall: Any, src: Any) -> Pending:
        so_e, zo_e = qcall.args[1], qcall.args[2]
        if not (is_const(so_e) and is_const(zo_e)):
            raise self.unsupported("quantize with non-constant parameters", var)
        so_a, zo_a = const_np(so_e), const_np(zo_e)
        if so_a.size != 1 or zo_a.size != 1:
            raise self.unsupported("quantize to per-channel parameters", var)
        so, zo = float(np.float32(so_a.reshape(-1)[0])), int(zo_a.reshape(-1)[0])
        out_dt = str(qcall.attrs.out_dtype)
        if out_dt not in INT_STORAGE:
            raise self.unsupported(f"quantize to {out_dt}", var)
        qmin, qmax = Q.QRANGE[out_dt]
        shape = shape_of(var)

        # fused activations in float: relu / clip -> a real clamp folded into the output range
        lo_r, hi_r = -math.inf, math.inf
        node = src
        while isinstance(node, FOp):
            clamp = self._as_clamp(node)
            if clamp is None:
                break
            lo_r, hi_r = max(lo_r, clamp[0]), min(hi_r, clamp[1])
            node = clamp[2]
        act = Q.activation_range(so, zo, lo_r if lo_r > -math.inf else None, hi_r if hi_r < math.inf else None,
                                 out_dt)
        ctx = QCtx(var, so, zo, out_dt, shape, act)

        if isinstance(node, QT):
            return lower_requantize(self, ctx, node)
        name = op_name(node.call)
        lower = lowering(name)
        if lower is None:
            raise self.unsupported(name, node.var)
        return lower(self, ctx, node)

    @staticmethod
    def split_conv_bias(node: FOp) -> tuple[FOp | None, Any]:
        """(conv/matmul, constant bias or None) when `node` is a conv/matmul, optionally plus a constant."""
        n = op_name(node.call)
        if n in ("relax.nn.conv2d", "relax.matmul"):
            return node, None
        if n == "relax.add":
            a, b = node.args
            for acc, bias in ((a, b), (b, a)):
                if isinstance(acc, FOp) and op_name(acc.call) in ("relax.nn.conv2d", "relax.matmul") and \
                        (isinstance(bias, Const) or isinstance(bias, QT) and bias.const is not None):
                    return acc, bias
        return None, None

    def _as_clamp(self, node: FOp) -> tuple[float, float, Any] | None:
        """(lo, hi, input) when the float op is a clamp by constants: relu, relu6, clip, maximum/minimum with
        a constant scalar (the ONNX importer turns Clip into call_tir maximum/minimum PrimFuncs)."""
        n = op_name(node.call)
        if n == "relax.nn.relu":
            return 0.0, math.inf, node.args[0]
        if n == "relax.nn.relu6":
            return 0.0, 6.0, node.args[0]
        if n == "relax.clip":
            return float(prim_value(node.call.args[1])), float(prim_value(node.call.args[2])), node.args[0]
        args = node.args
        kind = None
        if n in ("relax.maximum", "relax.minimum"):
            kind = n.split(".")[-1]
        elif n == "relax.call_tir":
            fname = call_tir_name(node.call)
            args = node.args[1:]
            if fname.startswith(("maximum", "minimum")) and len(args) == 2:
                text = self.mod[node.call.args[0]].script()
                body_op = "T.max(" if fname.startswith("maximum") else "T.min("
                if body_op in text:
                    kind = fname[:7]
        if kind is None or len(args) != 2:
            return None
        for x, c in ((args[0], args[1]), (args[1], args[0])):
            if isinstance(c, Const) and c.array.size == 1 and isinstance(x, (QT, FOp)):
                v = float(c.array.reshape(-1)[0])
                return (v, math.inf, x) if kind == "maximum" else (-math.inf, v, x)
        return None

    # ------------------------------------------------------------------ individual lowerings

    def quantized_input(self, node: FOp, what: str) -> QT:
        """The first argument of `node` as a per-tensor quantized tensor (else UnsupportedOpError)."""
        x = node.args[0]
        if not isinstance(x, QT):
            raise self.unsupported(f"{what} of a non-quantized tensor", node.var)
        self.require_per_tensor(x, what, node.var)
        return x

    def require_per_tensor(self, qt: QT, what: str, var: Any) -> None:
        if not qt.per_tensor:
            raise self.unsupported(f"{what} with per-channel activation quantization", var)
        if qt.dtype not in INT_STORAGE:
            raise self.unsupported(f"{what} on {qt.dtype}", var)

    def as_int8(self, qt: QT) -> relax.Expr:
        x = qt.expr()
        if qt.dtype == "int8":
            return x
        if qt.dtype == "uint8":
            return self.emit_te(uint8_to_int8_te, [x], name="uint8_to_int8")
        raise TypeError(qt.dtype)
