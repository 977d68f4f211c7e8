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
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import tvm
from tvm import ir, relax
from tvm.relax.expr_functor import PyExprMutator, mutator

from tvm_patch import quant as Q
from tvm_patch.errors import UnsupportedOpError
from tvm_patch.names import QPARAMS_ATTR

__all__ = ["QPARAMS_ATTR", "ROUNDINGS", "LowerToInteger", "float_ops_remaining", "lower_to_integer", "quant_params"]


_FLOAT_DTYPES = ("float16", "float32", "float64", "bfloat16")
_INT_STORAGE = ("int8", "uint8", "int16")


def _op_name(call: Any) -> str:
    op = getattr(call, "op", None)
    if isinstance(op, ir.Op):
        return op.name
    if isinstance(op, ir.GlobalVar):
        return op.name_hint
    return type(op).__name__


def _ty(expr: Any) -> Any:
    return getattr(expr, "ty", None)


def _dtype(expr: Any) -> str | None:
    t = _ty(expr)
    d = getattr(t, "dtype", None)
    return None if d is None else str(d)


def _shape(expr: Any) -> tuple[int, ...]:
    t = _ty(expr)
    shp = getattr(t, "shape", None)
    if shp is None:
        raise ValueError(f"no static shape for {expr}")
    return tuple(int(d) for d in shp)


def _is_const(expr: Any) -> bool:
    return isinstance(expr, ir.expr.Constant)


def _const_np(expr: Any) -> np.ndarray:
    v = expr.value
    return v.numpy() if hasattr(v, "numpy") else np.asarray(v)


def _prim_value(e: Any) -> float:
    """A Python number out of an attribute / PrimExpr / PrimValue argument."""
    if isinstance(e, (int, float)):
        return e
    for attr in ("value",):
        if hasattr(e, attr):
            v = getattr(e, attr)
            if isinstance(v, (int, float)):
                return v
            return _prim_value(v)
    return float(e)


# ----------------------------------------------------------------------------------------------------------
# Symbolic values of the original bindings
# ----------------------------------------------------------------------------------------------------------


@dataclass
class _Const:
    """An integer or float constant known at compile time (after folding reshape/permute on constants)."""

    array: np.ndarray


@dataclass
class _QT:
    """A quantized tensor: real = (q - zp) * scale. `scale`/`zp` broadcast against the tensor (0-d for per
    tensor; full shape for per-channel constants). `make` returns the integer tensor in the new function
    (memoised), `const` holds its values when known at compile time."""

    scale: np.ndarray
    zp: np.ndarray
    dtype: str
    shape: tuple[int, ...]
    make: Callable[[], relax.Expr] | None = None
    const: np.ndarray | None = None
    where: str = ""
    _expr: relax.Expr | None = None
    _float: relax.Expr | None = None

    @property
    def per_tensor(self) -> bool:
        s, z = self.scale.reshape(-1), self.zp.reshape(-1)
        return bool(np.all(s == s[0])) and bool(np.all(z == z[0]))

    @property
    def s(self) -> float:
        return float(self.scale.reshape(-1)[0])

    @property
    def z(self) -> int:
        return int(self.zp.reshape(-1)[0])

    def expr(self) -> relax.Expr:
        if self._expr is None:
            if self.const is not None:
                self._expr = relax.const(self.const, self.dtype)
            else:
                assert self.make is not None
                self._expr = self.make()
        return self._expr

    def same_params(self, other: "_QT") -> bool:
        return self.per_tensor and other.per_tensor and self.dtype == other.dtype and \
            np.float32(self.s) == np.float32(other.s) and self.z == other.z


@dataclass
class _FOp:
    """A float op of a quantized chain, not emitted: its lowering depends on the quantize consuming it."""

    call: Any  # the original relax Call
    args: list  # per argument: _QT | _FOp | _Const | relax.Expr (materialised)
    var: Any  # the original binding var
    materialized: relax.Expr | None = None


@dataclass
class _Pending:
    """An integer result whose final clamp is still open, so that a following int ``R.clip`` folds into it."""

    build: Callable[[int, int], relax.Expr]
    lo: int
    hi: int
    dtype: str
    shape: tuple[int, ...]
    cache: dict = field(default_factory=dict)

    def expr(self) -> relax.Expr:
        key = (self.lo, self.hi)
        if key not in self.cache:
            self.cache[key] = self.build(self.lo, self.hi)
        return self.cache[key]


# ----------------------------------------------------------------------------------------------------------
# The mutator
# ----------------------------------------------------------------------------------------------------------

_DATA_MOVEMENT = {
    "relax.reshape", "relax.permute_dims", "relax.squeeze", "relax.expand_dims", "relax.flatten",
    "relax.nn.max_pool2d", "relax.nn.pad", "relax.take", "relax.strided_slice", "relax.image.resize2d",
    "relax.broadcast_to",
}
_CONST_FOLDABLE = {"relax.reshape", "relax.permute_dims", "relax.squeeze", "relax.expand_dims", "relax.astype",
                   "relax.flatten"}
# elementwise ops evaluated on constants at compile time (the ONNX importer computes Clip bounds this way)
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


@mutator
class _Lowerer(PyExprMutator):
    """Rebuilds each Relax function binding by binding, keeping quantized chains symbolic until the
    quantize that ends them, then emitting the integer form."""

    def __init__(self, mod: tvm.IRModule, rounding: str = "tflite") -> None:
        super().__init__(mod)
        self.mod = mod
        self.ort = rounding == "onnxruntime"
        self.values: dict = {}  # original Var -> _QT | _FOp | _Const | _Pending
        self.orig: dict = {}  # original Var -> its bound value in the original function
        self.func_name = ""
        self.qparams: dict[str, dict] = {}  # PrimFunc name -> baked integer parameters (QPARAMS_ATTR)
        self._in_dataflow = False

    # ------------------------------------------------------------------ helpers

    def _where(self, var: Any) -> str:
        return f"{self.func_name}:{var.name}"

    def _unsupported(self, what: str, var: Any) -> UnsupportedOpError:
        return UnsupportedOpError(f"LowerToInteger: cannot lower quantized {what} at binding "
                                  f"{self._where(var)} to integer arithmetic")

    def _value_of(self, expr: Any) -> Any:
        """Symbolic value of an argument: _QT/_FOp/_Const/_Pending, or None for plain expressions."""
        if isinstance(expr, relax.Var):
            return self.values.get(expr)
        if _is_const(expr):
            return _Const(_const_np(expr))
        return None

    def _materialize(self, expr: Any) -> relax.Expr:
        """The new-function expression for an original argument (emitting what a symbolic value needs)."""
        val = self._value_of(expr) if isinstance(expr, relax.Var) else None
        if val is None:
            return self.visit_expr(expr)
        if isinstance(val, _Const):
            return relax.const(val.array, str(val.array.dtype))
        if isinstance(val, _Pending):
            return val.expr()
        if isinstance(val, _QT):
            # A float tensor is wanted: the model computes in float here (e.g. a float graph output).
            return self._emit_dequantize(val)
        if isinstance(val, _FOp):
            return self._materialize_fop(val)
        raise TypeError(val)

    def _materialize_arg(self, a: Any) -> relax.Expr:
        if isinstance(a, _QT):
            return self._emit_dequantize(a)
        if isinstance(a, _FOp):
            return self._materialize_fop(a)
        if isinstance(a, _Const):
            return relax.const(a.array, str(a.array.dtype))
        if isinstance(a, _Pending):
            return a.expr()
        return a

    def _emit_dequantize(self, qt: _QT) -> relax.Expr:
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

    def _materialize_fop(self, f: _FOp) -> relax.Expr:
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

    def _emit_te(self, fn: Callable, tensors: list, *params: Any, name: str,
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
                e = self._materialize(fv)
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
            self._bind_output(var, self._materialize(var))

    # ------------------------------------------------------------------ symbolic interpretation

    def _symbolic(self, var: Any, call: Any) -> Any:
        """Symbolic value for `var = call`, or None to re-emit the binding as it is."""
        name = _op_name(call)
        args = self._flat_args(call)
        vals = [self._value_of(a) for a in args]

        if name in _CONST_FOLDABLE and args and all(isinstance(v, _Const) for v in vals[:1]) and \
                all(not isinstance(a, relax.Var) or isinstance(self._value_of(a), _Const) for a in args):
            folded = self._fold_const(name, call, vals[0].array)
            if folded is not None:
                return _Const(folded)

        if name in _NUMPY_ELEMENTWISE and args and all(isinstance(v, _Const) for v in vals):
            dt = _dtype(var)
            try:
                res = np.asarray(_NUMPY_ELEMENTWISE[name]([v.array for v in vals]))
                if dt is not None and res.shape == _shape(var) and res.size <= 64:
                    return _Const(res.astype(dt))
            except Exception:
                pass
        if name == "relax.dequantize":
            return self._sym_dequantize(var, call, vals)
        if name == "relax.quantize":
            src = vals[0]
            if isinstance(src, (_QT, _FOp)):
                return self._lower_quantize(var, call, src)
            return None  # the model quantizes a float tensor: keep
        if name == "relax.clip" and isinstance(vals[0], _Pending):
            lo, hi = int(math.ceil(_prim_value(call.args[1]))), int(math.floor(_prim_value(call.args[2])))
            p = vals[0]
            nlo, nhi = max(p.lo, lo), min(p.hi, hi)
            if nlo <= nhi:
                return _Pending(p.build, nlo, nhi, p.dtype, p.shape, p.cache)
            return None
        if name == "relax.astype" and self._is_stock_avg_pool(call):
            return self._lower_stock_avg_pool(var, call)

        out_dtype = _dtype(var)
        if out_dtype in _FLOAT_DTYPES and any(isinstance(v, (_QT, _FOp)) for v in vals):
            # data movement on a quantized tensor stays a quantized tensor
            if name in _DATA_MOVEMENT and isinstance(vals[0], _QT) and all(
                    not isinstance(v, (_QT, _FOp)) for v in vals[1:]):
                moved = self._move(var, call, vals[0])
                if moved is not None:
                    return moved
            if name == "relax.concat" and all(isinstance(v, _QT) for v in vals):
                qts = vals
                if all(q.per_tensor for q in qts) and all(q.same_params(qts[0]) for q in qts):
                    return self._qt_from_op(var, call, qts, qts[0].scale, qts[0].zp)
            fargs = [v if v is not None else self.visit_expr(a) for v, a in zip(vals, args)]
            return _FOp(call, fargs, var)
        return None

    def _fold_const(self, name: str, call: Any, a: np.ndarray) -> np.ndarray | None:
        attrs = call.attrs
        try:
            if name in ("relax.reshape", "relax.flatten"):
                return a.reshape(_shape(call))
            if name == "relax.permute_dims":
                axes = attrs.axes
                return np.transpose(a, None if axes is None else [int(x) for x in axes])
            if name in ("relax.squeeze", "relax.expand_dims"):
                return a.reshape(_shape(call))
            if name == "relax.astype":
                return a.astype(str(attrs.dtype))
        except Exception:
            return None
        return None

    def _sym_dequantize(self, var: Any, call: Any, vals: list) -> _QT | None:
        data, scale_e, zp_e = call.args
        if not (_is_const(scale_e) and _is_const(zp_e)):
            return None
        dt = _dtype(data)
        if dt not in ("int8", "uint8", "int16", "int32"):
            return None
        shape = _shape(data)
        scale = _const_np(scale_e).astype(np.float32)
        zp = _const_np(zp_e).astype(np.int64)
        axis = int(call.attrs.axis) % max(len(shape), 1) if shape else 0
        if scale.size > 1 or zp.size > 1:
            bshape = [1] * len(shape)
            bshape[axis] = -1
            scale = scale.reshape(bshape)
            zp = np.broadcast_to(zp.reshape(bshape) if zp.size > 1 else zp.reshape([1] * len(shape)), scale.shape)
        else:
            scale, zp = scale.reshape(()), zp.reshape(())
        v = vals[0]
        if isinstance(v, _Const):
            full_s = np.broadcast_to(scale, shape).copy()
            full_z = np.broadcast_to(zp, shape).copy()
            return _QT(full_s, full_z, dt, shape, const=v.array.astype(dt), where=self._where(var))
        return _QT(scale, zp, dt, shape, make=lambda d=data: self._materialize(d), where=self._where(var))

    def _qt_from_op(self, var: Any, call: Any, qts: list, scale: np.ndarray, zp: np.ndarray) -> _QT:
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
                elif k < len(qts) and isinstance(self._value_of(orig), _QT):
                    new_args.append(qts[k].expr())
                    k += 1
                else:
                    new_args.append(self._materialize(orig))
            return self.builder_.emit(relax.Call(call.op, new_args, call.attrs, call.ty_args), var.name)

        return _QT(scale, zp, dt, _shape(var), make=make, where=self._where(var))

    def _move(self, var: Any, call: Any, qt: _QT) -> _QT | None:
        name = _op_name(call)
        out_shape = _shape(var)
        if qt.const is not None and name in ("relax.reshape", "relax.permute_dims", "relax.squeeze",
                                             "relax.expand_dims", "relax.flatten"):
            def f(a: np.ndarray) -> np.ndarray:
                return self._fold_const(name, call, np.broadcast_to(a, qt.shape))

            return _QT(f(qt.scale), f(qt.zp), qt.dtype, out_shape, const=f(qt.const), where=self._where(var))
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

            return _QT(qt.scale, qt.zp, qt.dtype, out_shape, make=make_pad, where=self._where(var))
        if name == "relax.image.resize2d" and str(call.attrs.method) != "nearest_neighbor":
            return None
        return self._qt_from_op(var, call, [qt], qt.scale, qt.zp)

    # ------------------------------------------------------------------ stock TFLite avg pool (int32)

    def _is_stock_avg_pool(self, call: Any) -> bool:
        """astype(avg_pool2d(astype(x_int8, int32)), int8): TVM's own TFLite AVERAGE_POOL_2D import."""
        if str(call.attrs.dtype) not in _INT_STORAGE:
            return False
        pool = call.args[0]
        if not isinstance(pool, relax.Var):
            return False
        pb = self.orig.get(pool)
        if not isinstance(pb, ir.Call) or _op_name(pb) != "relax.nn.avg_pool2d" or _dtype(pool) != "int32":
            return False
        cast = pb.args[0]
        cb = self.orig.get(cast) if isinstance(cast, relax.Var) else None
        return cb is not None and _op_name(cb) == "relax.astype" and _dtype(cb.args[0]) == str(call.attrs.dtype)

    def _lower_stock_avg_pool(self, var: Any, call: Any) -> _Pending:
        pool = self.orig[call.args[0]]
        src = self.orig[pool.args[0]].args[0]
        dt = str(call.attrs.dtype)
        qmin, qmax = Q.QRANGE[dt]
        a = pool.attrs
        self._check_pool_attrs(var, a)

        def build(lo: int, hi: int) -> relax.Expr:
            return self._emit_te(Q.avg_pool2d_te, [self._materialize(src)], _ints(a.pool_size), _ints(a.strides),
                                         _pool_padding(a), str(a.layout), lo, hi, dt,
                                         name="q_avg_pool2d")

        return _Pending(build, qmin, qmax, dt, _shape(var))

    def _check_pool_attrs(self, var: Any, a: Any) -> None:
        if any(int(d) != 1 for d in a.dilation) or bool(a.ceil_mode):
            raise self._unsupported("avg_pool2d with dilation or ceil_mode", var)
        if bool(a.count_include_pad) and any(int(p) for p in a.padding):
            raise self._unsupported("avg_pool2d counting padding", var)

    # ------------------------------------------------------------------ quantize: the end of a chain

    def _lower_quantize(self, var: Any, qcall: Any, src: Any) -> _Pending:
        so_e, zo_e = qcall.args[1], qcall.args[2]
        if not (_is_const(so_e) and _is_const(zo_e)):
            raise self._unsupported("quantize with non-constant parameters", var)
        so_a, zo_a = _const_np(so_e), _const_np(zo_e)
        if so_a.size != 1 or zo_a.size != 1:
            raise self._unsupported("quantize to per-channel parameters", var)
        so, zo = float(np.float32(so_a.reshape(-1)[0])), int(zo_a.reshape(-1)[0])
        out_dt = str(qcall.attrs.out_dtype)
        if out_dt not in _INT_STORAGE:
            raise self._unsupported(f"quantize to {out_dt}", var)
        qmin, qmax = Q.QRANGE[out_dt]
        shape = _shape(var)

        # fused activations in float: relu / clip -> a real clamp folded into the output range
        lo_r, hi_r = -math.inf, math.inf
        node = src
        while isinstance(node, _FOp):
            clamp = self._as_clamp(node)
            if clamp is None:
                break
            lo_r, hi_r = max(lo_r, clamp[0]), min(hi_r, clamp[1])
            node = clamp[2]
        act = Q.activation_range(so, zo, lo_r if lo_r > -math.inf else None, hi_r if hi_r < math.inf else None,
                                 out_dt)
        ctx = _QCtx(var, so, zo, out_dt, shape, act)

        if isinstance(node, _QT):
            return self._lower_requantize(ctx, node)
        name = _op_name(node.call)
        if name in ("relax.nn.conv2d", "relax.matmul"):
            return self._lower_conv(ctx, node, None)
        if name in ("relax.add", "relax.subtract", "relax.multiply"):
            a, b = node.args
            acc, bias = self._split_conv_bias(node)
            if acc is not None:
                return self._lower_conv(ctx, acc, bias)
            if isinstance(a, _QT) and isinstance(b, _QT):
                if name == "relax.multiply":
                    return self._lower_mul(ctx, node, a, b)
                return self._lower_add(ctx, node, a, b, negate=name == "relax.subtract")
            raise self._unsupported(f"{name} of {type(a).__name__}/{type(b).__name__}", node.var)
        if name == "relax.mean":
            return self._lower_mean(ctx, node)
        if name == "relax.nn.avg_pool2d":
            return self._lower_avg_pool(ctx, node)
        if name == "relax.nn.softmax":
            return self._lower_softmax(ctx, node)
        if name == "relax.sigmoid":
            inner = node.args[0]
            if isinstance(inner, _FOp):  # sigmoid straight on a conv (no quantize between): SE gates in QDQ
                acc, bias = self._split_conv_bias(inner)
                if acc is not None:
                    return self._lower_conv(ctx, acc, bias, epilogue="logistic")
            return self._lower_lut(ctx, node, "logistic")
        if name == "relax.call_tir" and self._call_tir_name(node.call).startswith("hard_swish"):
            return self._lower_lut(ctx, node, "hard_swish")
        if name == "relax.call_tir":
            padded = self._call_tir_pad(node)
            if padded is not None:
                return self._lower_requantize(ctx, padded)
        if name == "relax.concat":
            return self._lower_concat(ctx, node)
        if name in ("relax.nn.relu", "relax.clip"):
            raise self._unsupported(name, node.var)
        raise self._unsupported(name if name != "relax.call_tir" else
                                f"call_tir {self._call_tir_name(node.call)}", node.var)

    def _call_tir_pad(self, node: _FOp) -> _QT | None:
        """A call_tir whose PrimFunc only pads its one quantized input with a constant (the ONNX importer's
        Pad): the same padding on the integer tensor, pad value quantized. None for anything else."""
        import tvm_ffi

        args = node.args[1:]
        if len(args) != 1 or not isinstance(args[0], _QT) or not args[0].per_tensor:
            return None
        qt = args[0]
        pf = self.mod[node.call.args[0]]
        nodes: list = []
        tvm_ffi.structural_walk(pf.body, lambda x: nodes.append(x))
        kinds = [type(x).__name__ for x in nodes]
        loads = [x for x in nodes if type(x).__name__ in ("TensorLoad", "BufferLoad")]
        consts = [x for x in nodes if type(x).__name__ == "FloatImm"]
        arith = {"Add", "Mul", "Div", "FloorDiv", "Mod", "Max", "Min", "Cast"}
        if len(loads) != 1 or len(consts) != 1 or kinds.count("BufferStore") != 1 or \
                kinds.count("For") != len(qt.shape):
            return None
        if any(k in arith for k in kinds) or any(k == "Sub" and str(_ty(x)) not in ("int32", "int64")
                                                 for k, x in zip(kinds, nodes)):
            return None
        before = []
        for idx in loads[0].indices:
            if type(idx).__name__ == "Var":
                before.append(0)
            elif type(idx).__name__ == "Sub" and type(idx.b).__name__ == "IntImm" and type(idx.a).__name__ == "Var":
                before.append(int(idx.b.value))
            else:
                return None
        out_shape = _shape(node.var)
        if len(before) != len(qt.shape) or len(out_shape) != len(qt.shape):
            return None
        after = [o - i - b for o, i, b in zip(out_shape, qt.shape, before)]
        if any(v < 0 for v in before + after):
            return None
        qv = Q.quantize_real_to_q(float(consts[0].value), qt.s, qt.z)
        lo, hi = Q.QRANGE[qt.dtype]
        pads = [v for pair in zip(before, after) for v in pair]

        def make() -> relax.Expr:
            return self.builder_.emit(relax.op.nn.pad(qt.expr(), pads, pad_value=float(min(max(qv, lo), hi))))

        return _QT(qt.scale, qt.zp, qt.dtype, out_shape, make=make, where=self._where(node.var))

    @staticmethod
    def _split_conv_bias(node: _FOp) -> tuple[_FOp | None, Any]:
        """(conv/matmul, constant bias or None) when `node` is a conv/matmul, optionally plus a constant."""
        n = _op_name(node.call)
        if n in ("relax.nn.conv2d", "relax.matmul"):
            return node, None
        if n == "relax.add":
            a, b = node.args
            for acc, bias in ((a, b), (b, a)):
                if isinstance(acc, _FOp) and _op_name(acc.call) in ("relax.nn.conv2d", "relax.matmul") and \
                        (isinstance(bias, _Const) or isinstance(bias, _QT) and bias.const is not None):
                    return acc, bias
        return None, None

    def _as_clamp(self, node: _FOp) -> tuple[float, float, Any] | None:
        """(lo, hi, input) when the float op is a clamp by constants: relu, relu6, clip, maximum/minimum with
        a constant scalar (the ONNX importer turns Clip into call_tir maximum/minimum PrimFuncs)."""
        n = _op_name(node.call)
        if n == "relax.nn.relu":
            return 0.0, math.inf, node.args[0]
        if n == "relax.nn.relu6":
            return 0.0, 6.0, node.args[0]
        if n == "relax.clip":
            return float(_prim_value(node.call.args[1])), float(_prim_value(node.call.args[2])), node.args[0]
        args = node.args
        kind = None
        if n in ("relax.maximum", "relax.minimum"):
            kind = n.split(".")[-1]
        elif n == "relax.call_tir":
            fname = self._call_tir_name(node.call)
            args = node.args[1:]
            if fname.startswith(("maximum", "minimum")) and len(args) == 2:
                text = self.mod[node.call.args[0]].script()
                body_op = "T.max(" if fname.startswith("maximum") else "T.min("
                if body_op in text:
                    kind = fname[:7]
        if kind is None or len(args) != 2:
            return None
        for x, c in ((args[0], args[1]), (args[1], args[0])):
            if isinstance(c, _Const) and c.array.size == 1 and isinstance(x, (_QT, _FOp)):
                v = float(c.array.reshape(-1)[0])
                return (v, math.inf, x) if kind == "maximum" else (-math.inf, v, x)
        return None

    @staticmethod
    def _call_tir_name(call: Any) -> str:
        gv = call.args[0]
        return gv.name_hint if isinstance(gv, ir.GlobalVar) else str(gv)

    # ------------------------------------------------------------------ individual lowerings

    def _require_per_tensor(self, qt: _QT, what: str, var: Any) -> None:
        if not qt.per_tensor:
            raise self._unsupported(f"{what} with per-channel activation quantization", var)
        if qt.dtype not in _INT_STORAGE:
            raise self._unsupported(f"{what} on {qt.dtype}", var)

    def _lower_requantize(self, ctx: "_QCtx", qt: _QT) -> _Pending:
        self._require_per_tensor(qt, "requantize", ctx.var)
        same = np.float32(qt.s) == np.float32(ctx.so) and qt.z == ctx.zo and qt.dtype == ctx.dtype
        m, sh = Q.quantize_multiplier(float(np.float32(qt.s)) / float(np.float32(ctx.so)))

        def build(lo: int, hi: int) -> relax.Expr:
            x = qt.expr()
            qmin, qmax = Q.QRANGE[ctx.dtype]
            if same and (lo, hi) == (qmin, qmax):
                return x
            if same:
                return self.builder_.emit(relax.op.clip(x, lo, hi))
            if self.ort and qt.dtype in ("int8", "uint8"):
                t = Q.ort_requantize_table(qt.s, qt.z, ctx.so, ctx.zo, qt.dtype, ctx.dtype, lo, hi)
                return self._emit_te(Q.lut_te, [x, relax.const(t, ctx.dtype)], qt.dtype, ctx.dtype, "ort_requantize",
                                     name="ort_requantize")
            return self._emit_te(Q.requantize_int_te, [x], qt.z, m, sh, ctx.zo, ctx.dtype, lo, hi,
                                         name="q_requantize")

        return ctx.pending(build)

    def _lower_conv(self, ctx: "_QCtx", acc: _FOp, bias: Any, epilogue: str | None = None) -> _Pending:
        call = acc.call
        name = _op_name(call)
        x, w = acc.args
        if not isinstance(x, _QT) or not isinstance(w, _QT) or w.const is None:
            raise self._unsupported(f"{name} whose weight is not a constant quantized tensor", acc.var)
        self._require_per_tensor(x, name, acc.var)
        if np.any(w.zp != 0):
            raise self._unsupported(f"{name} with non-zero weight zero point", acc.var)
        if w.dtype != "int8":
            raise self._unsupported(f"{name} with {w.dtype} weights", acc.var)
        out_shape = _shape(acc.var)
        if name == "relax.nn.conv2d":
            a = call.attrs
            klayout, olayout = str(a.kernel_layout), str(a.out_layout or a.data_layout)
            o_ax = klayout.index("O")
            out_c_axis = olayout.index("C")
        else:
            o_ax = len(w.shape) - 1
            out_c_axis = len(out_shape) - 1
            if len(w.shape) != 2:
                raise self._unsupported("batched matmul with a constant weight", acc.var)
        n_out = w.shape[o_ax]
        wq = w.const.astype(np.int64)
        red_axes = tuple(i for i in range(wq.ndim) if i != o_ax)
        ws = np.moveaxis(w.scale, o_ax, 0).reshape(n_out, -1)
        if not np.all(ws == ws[:, :1]):
            raise self._unsupported(f"{name} with weight scales not per output channel", acc.var)
        w_scales = ws[:, 0]
        wsum = wq.sum(axis=red_axes)  # per output channel

        # bias as int32 per output channel
        b = np.zeros(n_out, dtype=np.int64)
        if bias is not None:
            if isinstance(bias, _QT):
                bv = bias.const.astype(np.int64) - bias.zp.astype(np.int64)
                if bv.size != n_out:
                    raise self._unsupported(f"{name} bias of {bv.size} values for {n_out} channels", acc.var)
                b = bv.reshape(-1)
            else:
                bf = np.asarray(bias.array, dtype=np.float64).reshape(-1)
                if bf.size != n_out:
                    raise self._unsupported(f"{name} bias of {bf.size} values for {n_out} channels", acc.var)
                real = float(np.float32(x.s)) * w_scales.astype(np.float64)
                b = np.array([Q.tflite_round(v) for v in bf / real], dtype=np.int64)
        if x.dtype not in ("int8", "uint8"):
            raise self._unsupported(f"{name} on {x.dtype} activations", acc.var)
        zx = x.z - 128 if x.dtype == "uint8" else x.z  # uint8 activations are shifted to int8 first
        b_eff = b - zx * wsum
        if np.any(b_eff > Q.INT32_MAX) or np.any(b_eff < Q.INT32_MIN):
            raise self._unsupported(f"{name} bias overflowing int32", acc.var)
        ort = self.ort and epilogue is None
        # |acc| bound: above 2^24 onnxruntime's int32 -> float32 conversion rounds too
        acc_bound = int((np.abs(wq).sum(axis=red_axes) * 255 + np.abs(b)).max()) if wq.size else 0
        if ort:
            try:
                mult, shift = Q.ort_conv_multipliers(x.s, w_scales, ctx.so)
            except ValueError:
                raise self._unsupported(f"{name} with an output scale too large for onnxruntime rounding",
                                        acc.var) from None
        else:
            mult, shift = Q.conv_multipliers(x.s, w_scales, ctx.so)
        per_tensor = bool(np.all(mult == mult[0]) and np.all(shift == shift[0]))
        if epilogue == "logistic":
            try:
                lm, ls = Q.acc_logistic_multipliers(x.s, w_scales)
            except ValueError:
                raise self._unsupported(f"logistic of {name}: accumulator scale too large", acc.var) from None
            om, osh = Q.quantize_multiplier(2.0**-31 / float(np.float32(ctx.so)))

        def build(lo: int, hi: int) -> relax.Expr:
            bb = self.builder_
            xin = self._as_int8(x)
            wc = relax.const(w.const.astype(np.int8), "int8")
            if name == "relax.nn.conv2d":
                a = call.attrs
                pads = [int(p) for p in a.padding]
                if zx != 0 and any(pads):
                    dl = str(a.data_layout)
                    pw = [0] * (2 * len(dl))
                    pw[2 * dl.index("H")], pw[2 * dl.index("H") + 1] = pads[0], pads[2]
                    pw[2 * dl.index("W")], pw[2 * dl.index("W") + 1] = pads[1], pads[3]
                    xin = bb.emit(relax.op.nn.pad(xin, pw, pad_value=float(zx)))
                    pads = [0, 0, 0, 0]
                accv = bb.emit(relax.op.nn.conv2d(xin, wc, strides=list(a.strides), padding=pads,
                                                  dilation=list(a.dilation), groups=int(a.groups),
                                                  data_layout=str(a.data_layout), kernel_layout=str(a.kernel_layout),
                                                  out_layout=str(a.out_layout or a.data_layout), out_dtype="int32"))
            else:
                accv = bb.emit(relax.op.matmul(xin, wc, out_dtype="int32"))
            bshape = [1] * len(out_shape)
            bshape[out_c_axis] = n_out
            bias_c = b_eff.astype(np.int32)
            if out_c_axis != len(out_shape) - 1:
                bias_c = bias_c.reshape(bshape)
            accv = bb.emit(relax.op.add(accv, relax.const(bias_c, "int32")))
            if epilogue == "logistic":
                return self._emit_te(Q.acc_logistic_te, [accv, relax.const(lm, "int32"), relax.const(ls, "int32")],
                                     out_c_axis, om, osh, ctx.zo, lo, hi, ctx.dtype, name="q_conv_logistic")
            if ort:
                rec = {"op": "ort_requantize", "output_zero_point": ctx.zo, "axis": out_c_axis}
                if per_tensor:
                    rq = self._emit_te(Q.ort_requantize_te, [accv], int(mult[0]), int(shift[0]), ctx.zo, out_c_axis,
                                       acc_bound, name="ort_requantize", record={**rec, "mantissa": int(mult[0]),
                                                                      "shift": int(shift[0])})
                else:
                    rq = self._emit_te(Q.ort_requantize_te, [accv, relax.const(mult, "int32"),
                                                             relax.const(shift, "int32")],
                                       ctx.zo, out_c_axis, acc_bound, name="ort_requantize", record=rec)
            elif per_tensor:
                rq = self._emit_te(Q.requantize_te, [accv], int(mult[0]), int(shift[0]), ctx.zo, out_c_axis,
                                name="requantize", record={"op": "requantize", "output_zero_point": ctx.zo,
                                                           "axis": out_c_axis, "multiplier": int(mult[0]),
                                                           "shift": int(shift[0])})
            else:
                rq = self._emit_te(Q.requantize_te, [accv, relax.const(mult, "int32"), relax.const(shift, "int32")],
                                   ctx.zo, out_c_axis, name="requantize",
                                   record={"op": "requantize", "output_zero_point": ctx.zo, "axis": out_c_axis})
            cl = bb.emit(relax.op.clip(rq, lo, hi))
            return bb.emit(relax.op.astype(cl, ctx.dtype))

        return ctx.pending(build)

    def _as_int8(self, qt: _QT) -> relax.Expr:
        x = qt.expr()
        if qt.dtype == "int8":
            return x
        if qt.dtype == "uint8":
            return self._emit_te(_uint8_to_int8_te, [x], name="uint8_to_int8")
        raise TypeError(qt.dtype)

    def _lower_add(self, ctx: "_QCtx", node: _FOp, a: _QT, b: _QT, negate: bool) -> _Pending:
        what = "subtract" if negate else "add"
        self._require_per_tensor(a, what, node.var)
        self._require_per_tensor(b, what, node.var)
        if ctx.dtype != "int8" and ctx.dtype != "uint8":
            raise self._unsupported(f"{what} to {ctx.dtype}", node.var)

        if self.ort and not negate and a.dtype == b.dtype == ctx.dtype == "int8":
            def build_ort(lo: int, hi: int) -> relax.Expr:
                try:
                    p = Q.ort_add_params(a.s, a.z, b.s, b.z, ctx.so, ctx.zo, (lo, hi), a.dtype)
                except ValueError as e:
                    raise self._unsupported(f"add with onnxruntime rounding ({e})", node.var) from None
                table = relax.const(np.asarray(p.b_table, dtype=np.int64), "int64")
                return self._emit_te(Q.ort_add_te, [a.expr(), b.expr(), table], p, list(ctx.shape), ctx.dtype,
                                     name="ort_add")

            return ctx.pending(build_ort)

        def build(lo: int, hi: int) -> relax.Expr:
            p = Q.add_params(a.s, a.z, b.s, b.z, ctx.so, ctx.zo, (lo, hi), float32_ratios=negate)
            return self._emit_te(Q.add_te, [a.expr(), b.expr()], p, list(ctx.shape), ctx.dtype, negate,
                                         name="q_sub" if negate else "q_add",
                                         record={"op": "q_sub" if negate else "q_add", **vars(p)})

        return ctx.pending(build)

    def _lower_mul(self, ctx: "_QCtx", node: _FOp, a: _QT, b: _QT) -> _Pending:
        self._require_per_tensor(a, "multiply", node.var)
        self._require_per_tensor(b, "multiply", node.var)

        def build(lo: int, hi: int) -> relax.Expr:
            p = Q.mul_params(a.s, a.z, b.s, b.z, ctx.so, ctx.zo, (lo, hi))
            return self._emit_te(Q.mul_te, [a.expr(), b.expr()], p, list(ctx.shape), ctx.dtype,
                                         name="q_mul", record={"op": "q_mul", **vars(p)})

        return ctx.pending(build)

    def _lower_mean(self, ctx: "_QCtx", node: _FOp) -> _Pending:
        x = node.args[0]
        if not isinstance(x, _QT):
            raise self._unsupported("mean of a non-quantized tensor", node.var)
        self._require_per_tensor(x, "mean", node.var)
        a = node.call.attrs
        axes = list(range(len(x.shape))) if a.axis is None else [int(v) % len(x.shape) for v in a.axis]
        n = int(np.prod([x.shape[i] for i in axes]))
        keep = bool(a.keepdims)
        if self.ort:
            return self._ort_mean(ctx, x, axes, keep, n)
        m, sh = Q.mean_multiplier(x.s, ctx.so, n)

        def build(lo: int, hi: int) -> relax.Expr:
            return self._emit_te(Q.mean_te, [x.expr()], axes, keep, x.z, m, sh, ctx.zo, ctx.dtype, lo, hi,
                                         name="q_mean")

        return ctx.pending(build)

    def _lower_avg_pool(self, ctx: "_QCtx", node: _FOp) -> _Pending:
        x = node.args[0]
        if not isinstance(x, _QT):
            raise self._unsupported("avg_pool2d of a non-quantized tensor", node.var)
        self._require_per_tensor(x, "avg_pool2d", node.var)
        a = node.call.attrs
        self._check_pool_attrs(node.var, a)
        if not (np.float32(x.s) == np.float32(ctx.so) and x.z == ctx.zo and x.dtype == ctx.dtype):
            if any(int(p) for p in a.padding):
                raise self._unsupported("avg_pool2d with padding and different input/output quantization",
                                        node.var)
            return self._lower_pool_as_mean(ctx, node, x)

        def build(lo: int, hi: int) -> relax.Expr:
            return self._emit_te(Q.avg_pool2d_te, [x.expr()], _ints(a.pool_size), _ints(a.strides),
                                         _pool_padding(a), str(a.layout), lo, hi, ctx.dtype,
                                         name="q_avg_pool2d")

        return ctx.pending(build)

    def _lower_pool_as_mean(self, ctx: "_QCtx", node: _FOp, x: _QT) -> _Pending:
        """Average pooling that also rescales: TFLite MEAN arithmetic per window (constant count)."""
        a = node.call.attrs
        layout = str(a.layout)
        H, W = x.shape[layout.index("H")], x.shape[layout.index("W")]
        if [int(v) for v in a.pool_size] == [H, W]:
            axes = [layout.index("H"), layout.index("W")]
            if self.ort:
                return self._ort_mean(ctx, x, axes, True, H * W)
            m, sh = Q.mean_multiplier(x.s, ctx.so, H * W)

            def build(lo: int, hi: int) -> relax.Expr:
                return self._emit_te(Q.mean_te, [x.expr()], axes, True, x.z, m, sh, ctx.zo, ctx.dtype, lo,
                                             hi, name="q_mean")

            return ctx.pending(build)
        raise self._unsupported("windowed avg_pool2d with different input/output quantization", node.var)

    def _ort_mean(self, ctx: "_QCtx", x: _QT, axes: list[int], keep: bool, n: int) -> _Pending:
        """Mean / global average pooling with onnxruntime's QLinearGlobalAveragePool arithmetic."""
        zx = x.z - 128 if x.dtype == "uint8" else x.z
        m, sh = Q.ort_mean_multiplier(x.s, ctx.so, n)

        def build(lo: int, hi: int) -> relax.Expr:
            return self._emit_te(Q.ort_mean_te, [self._as_int8(x)], axes, keep, zx, m, sh, ctx.zo, ctx.dtype, lo, hi,
                                 name="ort_mean")

        return ctx.pending(build)

    def _lower_softmax(self, ctx: "_QCtx", node: _FOp) -> _Pending:
        x = node.args[0]
        if not isinstance(x, _QT):
            raise self._unsupported("softmax of a non-quantized tensor", node.var)
        self._require_per_tensor(x, "softmax", node.var)
        if x.dtype != "int8":
            raise self._unsupported(f"softmax on {x.dtype}", node.var)
        axis = int(node.call.attrs.axis) % len(x.shape)
        if axis != len(x.shape) - 1:
            raise self._unsupported("softmax over a non-last axis", node.var)
        p = Q.softmax_params(x.s)
        table = Q.softmax_exp_table(p)
        native = ctx.dtype == "int8" and ctx.zo == -128 and np.float32(ctx.so) == np.float32(1.0 / 256)

        def build(lo: int, hi: int) -> relax.Expr:
            y = self._emit_te(Q.softmax_te, [x.expr(), relax.const(table, "int32")], "int8",
                                      name="q_softmax")
            if native and (lo, hi) == (-128, 127):
                return y
            # TFLite's result is on scale 1/256, zero point -128: requantize to the requested parameters
            m, sh = Q.quantize_multiplier((1.0 / 256) / float(np.float32(ctx.so)))
            return self._emit_te(Q.requantize_int_te, [y], -128, m, sh, ctx.zo, ctx.dtype, lo, hi,
                                         name="q_requantize")

        return ctx.pending(build)

    def _lower_lut(self, ctx: "_QCtx", node: _FOp, kind: str) -> _Pending:
        x = node.args[-1] if kind == "hard_swish" else node.args[0]
        if kind == "hard_swish":
            x = next((a for a in node.args if isinstance(a, _QT)), None)
        if not isinstance(x, _QT):
            raise self._unsupported(f"{kind} of a non-quantized tensor", node.var)
        self._require_per_tensor(x, kind, node.var)
        if x.dtype not in ("int8", "uint8"):
            raise self._unsupported(f"{kind} on {x.dtype}", node.var)
        if kind == "logistic":
            if x.dtype == "int8" and ctx.dtype == "int8" and ctx.zo == -128:
                # TFLite Micro's kernel (it checks only the output zero point, assumes scale 1/256)
                table = Q.logistic_table(Q.logistic_params(x.s, x.z), "int8")
            else:
                table = Q.float_function_table(lambda v: 1.0 / (1.0 + np.exp(-v.astype(np.float64))), x.s, x.z,
                                               ctx.so, ctx.zo, x.dtype, ctx.dtype)
        else:
            if x.dtype == ctx.dtype:
                table = Q.hard_swish_table(Q.hard_swish_params(x.s, x.z, ctx.so, ctx.zo), ctx.dtype)
            else:
                raise self._unsupported("hard_swish changing dtype", node.var)

        def build(lo: int, hi: int) -> relax.Expr:
            t = np.clip(table.astype(np.int64), lo, hi).astype(ctx.dtype)
            return self._emit_te(Q.lut_te, [x.expr(), relax.const(t, ctx.dtype)], x.dtype, ctx.dtype,
                                         f"q_{kind}", name=f"q_{kind}")

        return ctx.pending(build)

    def _lower_concat(self, ctx: "_QCtx", node: _FOp) -> _Pending:
        qts = node.args
        if not all(isinstance(q, _QT) for q in qts):
            raise self._unsupported("concat of non-quantized tensors", node.var)
        for q in qts:
            self._require_per_tensor(q, "concat", node.var)
        axis = int(node.call.attrs.axis)

        def build(lo: int, hi: int) -> relax.Expr:
            parts = []
            qmin, qmax = Q.QRANGE[ctx.dtype]
            for q in qts:
                if np.float32(q.s) == np.float32(ctx.so) and q.z == ctx.zo and q.dtype == ctx.dtype:
                    parts.append(q.expr())
                else:
                    m, sh = Q.quantize_multiplier(float(np.float32(q.s)) / float(np.float32(ctx.so)))
                    parts.append(self._emit_te(Q.requantize_int_te, [q.expr()], q.z, m, sh, ctx.zo, ctx.dtype,
                                                       qmin, qmax, name="q_requantize"))
            y = self.builder_.emit(relax.op.concat(parts, axis=axis))
            if (lo, hi) != (qmin, qmax):
                y = self.builder_.emit(relax.op.clip(y, lo, hi))
            return y

        return ctx.pending(build)


def _ints(v: Any) -> list[int]:
    return [int(x) for x in v]


def _pool_padding(a: Any) -> list[int]:
    p = [int(v) for v in a.padding]
    if len(p) == 2:
        return [p[0], p[1], p[0], p[1]]
    if len(p) == 1:
        return p * 4
    return p


def _uint8_to_int8_te(x: Any) -> Any:
    from tvm import te

    return te.compute(x.shape, lambda *i: (x[i].astype("int32") - 128).astype("int8"), name="uint8_to_int8")


@dataclass
class _QCtx:
    """The quantize ending a chain: output parameters, shape and the folded activation range."""

    var: Any
    so: float
    zo: int
    dtype: str
    shape: tuple[int, ...]
    act: tuple[int, int]

    def pending(self, build: Callable[[int, int], relax.Expr]) -> _Pending:
        return _Pending(build, self.act[0], self.act[1], self.dtype, self.shape)


# ----------------------------------------------------------------------------------------------------------
# Public interface
# ----------------------------------------------------------------------------------------------------------


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
        lw = _Lowerer(mod, self.rounding)
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
            name = _op_name(v)
            if name == "relax.call_tir":
                callee = v.args[0]
                pf = mod[callee] if isinstance(callee, ir.GlobalVar) and callee in mod.get_global_vars() else None
                if pf is not None and _prim_func_uses_float(pf):
                    out.append(f"{gv.name_hint}:{b.var.name} = call_tir {callee.name_hint}")
                continue
            tensors = [b.var] + [a for a in v.args if isinstance(a, relax.Expr) and not isinstance(a, ir.GlobalVar)]
            if any(_dtype(t) in _FLOAT_DTYPES for t in tensors):
                out.append(f"{gv.name_hint}:{b.var.name} = {name}")
    return out


def _prim_func_uses_float(pf: Any) -> bool:
    for p in pf.params:
        for cand in (p, getattr(p, "ty", None)):
            d = getattr(cand, "dtype", None)
            if d is not None and str(d) in _FLOAT_DTYPES:
                return True
    text = pf.script()
    return any(f'"{d}"' in text or f"T.{d}(" in text for d in _FLOAT_DTYPES)
