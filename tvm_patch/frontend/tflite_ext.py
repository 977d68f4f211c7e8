"""TFLite import for int8 MCUNet/TinyEngine models: TVM 0.27's TFLite frontend, extended.

TVM 0.27's `from_tflite` refuses int8 models that contain quantized PAD, TRANSPOSE or RESIZE_NEAREST_NEIGHBOR
(nearly every MCUNet/TinyEngine export has PAD and TRANSPOSE), and imports quantized AVERAGE_POOL_2D with
integer truncation where TFLite rounds. `ExtOperatorConverter` subclasses TVM's converter (passed to
`from_tflite` as `op_converter`; site-packages stays untouched) and gives these ops TFLite's int8 semantics:

* data movement (PAD/PADV2, TRANSPOSE, RESHAPE, RESIZE_NEAREST_NEIGHBOR, MAX_POOL_2D, CONCATENATION with
  equal quantization) runs on the int8 tensors themselves, as TFLite's kernels copy raw int8 values:
  PAD fills with the output zero point, MAX_POOL_2D takes the max of raw values;
* arithmetic whose scale changes (ADD, SUB, MUL, AVERAGE_POOL_2D, HARD_SWISH, CONCATENATION with unequal
  quantization; MEAN, LOGISTIC, SOFTMAX as TVM already imports them) is a regular chain: `R.dequantize` of
  each int8 input -> one float op -> `R.quantize`, then an int8 `R.clip` when the op has a fused activation,
  for the integer-lowering pass to rewrite later. CONV_2D, DEPTHWISE_CONV_2D and FULLY_CONNECTED keep TVM's
  own form (dequantize input and weights -> conv2d/matmul -> add dequantized bias -> quantize -> clip);
* anything else quantized raises `UnsupportedOpError` naming the op and its operator index; a corrupt or
  truncated flatbuffer raises `TvmPatchError`. Both are one line.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

import numpy as np
import tflite
import tvm
from tvm import relax
from tvm.relax.frontend.tflite import tflite_frontend as _tfl

from tvm_patch.errors import TvmPatchError, UnsupportedOpError
from tvm_patch.quant.params import QRANGE, quantize_real_to_q

__all__ = ["ExtOperatorConverter", "SUPPORTED_INT8_OPS", "tflite_to_relax"]

# Quantized ops TVM 0.27 refuses outright and this converter imports. It also re-implements ADD, SUB, MUL,
# AVERAGE_POOL_2D, MAX_POOL_2D, CONCATENATION, RESHAPE and HARD_SWISH (exactness, chain form, activation
# bounds) and reshapes FULLY_CONNECTED outputs to TFLite's shape.
_ADDED_INT8_OPS = frozenset({"PAD", "PADV2", "TRANSPOSE", "RESIZE_NEAREST_NEIGHBOR"})
#: Every TFLite builtin this module imports when its tensors are quantized.
SUPPORTED_INT8_OPS = _tfl.OperatorConverter._SUPPORTED_QUANTIZED_OPS | _ADDED_INT8_OPS

class _OpImportError(Exception):
    """Raised inside the converter; `tflite_to_relax` turns it into a one-line user error."""

    def __init__(self, op_name: str, op_index: int, subgraph: int, reason: str, unsupported: bool) -> None:
        super().__init__(reason)
        self.op_name, self.op_index, self.subgraph = op_name, op_index, subgraph
        self.reason, self.unsupported = reason, unsupported


class _Refuse(Exception):
    """An op's attributes are outside what this importer handles exactly (reported as unsupported)."""


def _one_line(e: BaseException) -> str:
    """Last non-empty line of an exception message (TVM errors carry multi-line context)."""
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    return lines[-1] if lines else type(e).__name__


def _nearest_indices(in_size: int, out_size: int, align_corners: bool, half_pixel: bool) -> np.ndarray:
    """Source index of every output row/column of TFLite's RESIZE_NEAREST_NEIGHBOR: coordinates in float32
    as TFLite computes them, then round half away from zero (align_corners) or floor, clamped to the input."""
    if align_corners and out_size > 1:
        scale = np.float32(in_size - 1) / np.float32(out_size - 1)
    else:
        scale = np.float32(in_size) / np.float32(out_size)
    offset = np.float32(0.5 if half_pixel else 0.0)
    coord = ((np.arange(out_size, dtype=np.float32) + offset) * scale).astype(np.float64)  # exact widening
    if align_corners:
        idx = np.sign(coord) * np.floor(np.abs(coord) + 0.5)
    else:
        idx = np.floor(coord)
    idx = np.minimum(idx, in_size - 1)
    if half_pixel:
        idx = np.maximum(idx, 0)
    return idx.astype("int32")


class ExtOperatorConverter(_tfl.OperatorConverter):
    """TVM's TFLite OperatorConverter with exact int8 importers for the ops MCUNet/TinyEngine models use."""

    _SUPPORTED_QUANTIZED_OPS = SUPPORTED_INT8_OPS

    def __init__(self, model: Any, subgraph: Any, exp_tab: Any, ctx: Any, conversion_state: Any = None) -> None:
        super().__init__(model, subgraph, exp_tab, ctx, conversion_state)
        ext: dict[str, Callable[..., Any]] = {
            "PAD": self._ext_pad,
            "PADV2": self._ext_pad,
            "TRANSPOSE": self._ext_transpose,
            "RESHAPE": self._ext_reshape,
            "RESIZE_NEAREST_NEIGHBOR": self._ext_resize_nearest,
            "MAX_POOL_2D": self._ext_max_pool,
            "AVERAGE_POOL_2D": self._ext_avg_pool,
            "CONCATENATION": self._ext_concat,
            "ADD": lambda op: self._ext_binary(op, relax.op.add),
            "SUB": lambda op: self._ext_binary(op, relax.op.subtract),
            "MUL": lambda op: self._ext_binary(op, relax.op.multiply),
            "HARD_SWISH": self._ext_hard_swish,
            "FULLY_CONNECTED": self._ext_fully_connected,
        }
        self._stock = {name: self.convert_map[name] for name in ext if name in self.convert_map}
        self.convert_map.update(ext)
        self._subgraph_index = 0
        for i in range(model.SubgraphsLength()):
            if model.Subgraphs(i)._tab.Pos == subgraph._tab.Pos:
                self._subgraph_index = i

    # ------------------------------------------------------------------ checks and the conversion loop

    def _failure(self, op_index: int, op_name: str, reason: str, unsupported: bool) -> _OpImportError:
        return _OpImportError(op_name, op_index, self._subgraph_index, reason, unsupported)

    def _op_name(self, op_index: int) -> str:
        op = self.subgraph.Operators(op_index)
        try:
            return self.get_op_code_str(op)
        except NotImplementedError:
            code = self.model.OperatorCodes(op.OpcodeIndex())
            custom = code.CustomCode()
            if custom:
                return f"CUSTOM({custom.decode('utf-8', 'replace')})"
            return f"builtin code {max(code.BuiltinCode(), code.DeprecatedBuiltinCode())}"

    def check_unsupported_ops(self) -> None:
        """Refuse, with the operator index, the first op that has no importer or no exact int8 importer."""
        for i in range(self.subgraph.OperatorsLength()):
            name = self._op_name(i)
            if name not in self.convert_map:
                raise self._failure(i, name, "no importer for this operator", True)
            op = self.subgraph.Operators(i)
            try:
                ins, outs = self.get_input_tensors(op), self.get_output_tensors(op)
            except Exception as e:  # noqa: BLE001 - a damaged operator record
                raise self._failure(i, name, f"{type(e).__name__}: {_one_line(e)}", False) from None
            quantized = any(t.qnn_params is not None for t in ins + outs if t.tensor_idx >= 0)
            if quantized and name not in SUPPORTED_INT8_OPS:
                raise self._failure(i, name, "no int8 (quantized) importer for this operator", True)
            weights_only = (
                ins and ins[0].qnn_params is None and all(t.qnn_params is None for t in outs)
                and any(t.qnn_params is not None for t in ins[1:] if t.tensor_idx >= 0)
            )
            if weights_only:
                raise self._failure(
                    i, name, "float activations with int8 weights (dynamic-range quantization)", True
                )

    def convert_op_to_relax(self) -> None:
        """Convert every operator in order, binding its outputs; failures carry the operator index."""
        for i in range(self.subgraph.OperatorsLength()):
            op = self.subgraph.Operators(i)
            name = self._op_name(i)
            try:
                outputs = self.get_output_tensors(op)
                ret = self.convert_map[name](op=op)
                if ret is None:
                    continue
                ret = self.bb.normalize(ret)
            except _OpImportError:
                raise
            except _Refuse as e:
                raise self._failure(i, name, str(e), True) from None
            except tvm.error.OpNotImplemented as e:
                raise self._failure(i, name, _one_line(e), True) from None
            except Exception as e:  # noqa: BLE001 - any importer failure becomes one line naming the op
                raise self._failure(i, name, f"{type(e).__name__}: {_one_line(e)}", False) from None
            if len(outputs) == 1:
                self.exp_tab.set_expr(_tfl.get_tensor_name(self.subgraph, outputs[0].tensor_idx), ret)
            else:
                for k, t in enumerate(outputs):
                    self.exp_tab.set_expr(_tfl.get_tensor_name(self.subgraph, t.tensor_idx), ret[k])

    # ------------------------------------------------------------------ helpers

    def _options(self, op: Any, cls: type) -> Any:
        opts = cls()
        raw = op.BuiltinOptions()
        if raw is None:
            return None
        opts.Init(raw.Bytes, raw.Pos)
        return opts

    def _one_in_one_out(self, op: Any) -> tuple[Any, Any]:
        ins, outs = self.get_input_tensors(op), self.get_output_tensors(op)
        if len(outs) != 1:
            raise _Refuse(f"expected one output, got {len(outs)}")
        return ins[0], outs[0]

    @staticmethod
    def _qparams(t: Any) -> tuple[float, int] | None:
        """(scale, zero_point) of a per-tensor quantized tensor, None if not quantized."""
        if t.qnn_params is None:
            return None
        scale = t.qnn_params["scale"].value.numpy()
        if scale.size != 1:
            raise _Refuse("per-axis quantized activation tensor")
        return float(scale.reshape(())), int(t.qnn_params["zero_point"].value.numpy().reshape(()))

    def _dtype(self, t: Any) -> str:
        return self.get_tensor_type_str(t.tensor.Type())

    def _same_q(self, a: Any, b: Any) -> bool:
        qa, qb = self._qparams(a), self._qparams(b)
        return qa is not None and qb is not None and qa[1] == qb[1] and np.float32(qa[0]) == np.float32(qb[0])

    def _act_clip(self, expr: relax.Expr, fused: int, out: Any) -> relax.Expr:
        """Apply a fused activation on the quantized output as TFLite does: clamp to the activation's range
        in the output's integer domain (bounds rounded half away from zero, in float32)."""
        from tflite.ActivationFunctionType import ActivationFunctionType as A

        if fused == A.NONE:
            return expr
        scale, zp = self._qparams(out)
        lo, hi = QRANGE[self._dtype(out)]

        def q(v: float) -> int:
            return quantize_real_to_q(v, scale, zp)

        bounds = {A.RELU: (q(0.0), hi), A.RELU6: (q(0.0), q(6.0)), A.RELU_N1_TO_1: (q(-1.0), q(1.0))}
        if fused not in bounds:
            raise _Refuse(f"fused activation {self.activation_fn_type[fused]} on int8 output")
        a, b = bounds[fused]
        return relax.op.clip(expr, max(lo, a), min(hi, b))

    def _op_name_of(self, op: Any) -> str:
        return self.get_op_code_str(op)

    def _deq(self, t: Any) -> relax.Expr:
        return self.dequantize(self.get_tensor_expr(t), t)

    def _quantized(self, *tensors: Any) -> bool:
        return any(t.qnn_params is not None for t in tensors)

    # ------------------------------------------------------------------ data movement on int8

    def _ext_pad(self, op: Any) -> relax.Expr:
        """PAD/PADV2: int8 values copied unchanged, padding filled with the output zero point (PAD) or the
        raw constant value (PADV2), as TFLite's int8 kernel does."""
        ins = self.get_input_tensors(op)
        inp, out = ins[0], self.get_output_tensors(op)[0]
        if not self._quantized(inp, out):
            return self._stock[self._op_name_of(op)](op=op)
        if self.has_expr(ins[1].tensor_idx):
            raise _Refuse("paddings computed at run time")
        paddings = np.asarray(self.get_tensor_value(ins[1])).reshape(-1, 2)
        if len(ins) == 3 and ins[2].tensor_idx >= 0:
            if self.has_expr(ins[2].tensor_idx):
                raise _Refuse("pad value computed at run time")
            pad_value = int(np.asarray(self.get_tensor_value(ins[2])).reshape(-1)[0])
        else:
            pad_value = self._qparams(out)[1]
        width = [int(v) for pair in paddings for v in pair]
        return relax.op.nn.pad(self.get_tensor_expr(inp), pad_width=width, pad_value=float(pad_value))

    def _ext_transpose(self, op: Any) -> relax.Expr:
        """TRANSPOSE: a permutation of the int8 tensor (raw values, whatever the quantization says)."""
        ins = self.get_input_tensors(op)
        if self.has_expr(ins[1].tensor_idx):
            raise _Refuse("permutation computed at run time")
        perm = [int(v) for v in np.asarray(self.get_tensor_value(ins[1])).reshape(-1)]
        data = self.get_tensor_expr(ins[0])
        return relax.op.permute_dims(data, perm if perm else None)

    def _ext_reshape(self, op: Any) -> relax.Expr:
        """RESHAPE: int8 data unchanged; the target is the output tensor's static shape."""
        inp, out = self._one_in_one_out(op)
        if not self._quantized(inp, out):
            return self._stock["RESHAPE"](op=op)
        shape = [int(v) for v in out.tensor.ShapeAsNumpy()] if out.tensor.ShapeLength() else []
        if any(v < 0 for v in shape):
            raise _Refuse("dynamic output shape")
        return relax.op.reshape(self.get_tensor_expr(inp), shape)

    def _ext_resize_nearest(self, op: Any) -> relax.Expr:
        """RESIZE_NEAREST_NEIGHBOR on int8 with TFLite's index rule. An integer upscale whose TFLite indices
        are i // k becomes `R.image.resize2d(asymmetric, floor)` (TVM computes those with integer
        division, so exactly); any other geometry gathers rows and columns with `R.take` and constant index
        tables computed here by TFLite's formula."""
        from tflite.ResizeNearestNeighborOptions import ResizeNearestNeighborOptions

        inp, out = self._one_in_one_out(op)
        ins = self.get_input_tensors(op)
        if self.has_expr(ins[1].tensor_idx):
            raise _Refuse("output size computed at run time")
        oh, ow = (int(v) for v in np.asarray(self.get_tensor_value(ins[1])).reshape(-1))
        declared = [int(v) for v in out.tensor.ShapeAsNumpy()]
        if declared[1:3] != [oh, ow]:
            raise ValueError(f"size tensor {oh}x{ow} disagrees with the output shape {declared}")
        opts = self._options(op, ResizeNearestNeighborOptions)
        align = bool(opts.AlignCorners()) if opts is not None else False
        half = bool(opts.HalfPixelCenters()) if opts is not None else False
        if align and half:
            raise _Refuse("align_corners together with half_pixel_centers")
        _, ih, iw, _ = (int(v) for v in inp.tensor.ShapeAsNumpy())
        rows = _nearest_indices(ih, oh, align, half)
        cols = _nearest_indices(iw, ow, align, half)
        data = self.get_tensor_expr(inp)

        def integer_upscale(idx: np.ndarray, n_in: int, n_out: int) -> bool:
            return n_out % n_in == 0 and np.array_equal(idx, np.arange(n_out) // (n_out // n_in))

        if integer_upscale(rows, ih, oh) and integer_upscale(cols, iw, ow):
            return relax.op.image.resize2d(
                data, (oh, ow), layout="NHWC", method="nearest_neighbor",
                coordinate_transformation_mode="asymmetric", rounding_method="floor",
            )
        if not np.array_equal(rows, np.arange(ih)):
            data = self.bb.normalize(relax.op.take(data, relax.const(rows, "int32"), axis=1))
        if not np.array_equal(cols, np.arange(iw)):
            data = relax.op.take(data, relax.const(cols, "int32"), axis=2)
        return data

    def _pool_params(self, op: Any, inp: Any) -> tuple[dict[str, Any], int]:
        from tflite.Padding import Padding
        from tflite.Pool2DOptions import Pool2DOptions

        o = self._options(op, Pool2DOptions)
        _, ih, iw, _ = (int(v) for v in inp.tensor.ShapeAsNumpy())
        kh, kw, sh, sw = o.FilterHeight(), o.FilterWidth(), o.StrideH(), o.StrideW()
        if o.Padding() == Padding.SAME:
            pt, pb = _tfl.get_pad_value(ih, kh, sh)
            pl, pr = _tfl.get_pad_value(iw, kw, sw)
            padding = [pt, pl, pb, pr]
        elif o.Padding() == Padding.VALID:
            padding = [0, 0, 0, 0]
        else:
            raise _Refuse(f"padding mode {o.Padding()}")
        params = {"pool_size": (kh, kw), "strides": (sh, sw), "padding": padding, "layout": "NHWC"}
        return params, o.FusedActivationFunction()

    def _ext_max_pool(self, op: Any) -> relax.Expr:
        """MAX_POOL_2D on int8: max of the raw values (implicit padding never wins), then the fused
        activation clamp, as TFLite's int8 kernel; no requantization."""
        inp, out = self._one_in_one_out(op)
        if not self._quantized(inp, out):
            return self._stock["MAX_POOL_2D"](op=op)
        params, fused = self._pool_params(op, inp)
        res = relax.op.nn.max_pool2d(self.get_tensor_expr(inp), **params)
        return self._act_clip(res, fused, out)

    def _ext_avg_pool(self, op: Any) -> relax.Expr:
        """AVERAGE_POOL_2D: dequantize -> avg_pool2d (padding excluded from the count, as TFLite) ->
        quantize [-> clip]. TVM's own import averages int32 with truncation where TFLite rounds."""
        inp, out = self._one_in_one_out(op)
        if not self._quantized(inp, out):
            return self._stock["AVERAGE_POOL_2D"](op=op)
        params, fused = self._pool_params(op, inp)
        res = relax.op.nn.avg_pool2d(self._deq(inp), count_include_pad=False, **params)
        return self._act_clip(self.quantize(res, out), fused, out)

    def _ext_concat(self, op: Any) -> relax.Expr:
        """CONCATENATION: on int8 directly when every input has the output's scale and zero point,
        otherwise dequantize each input -> concat -> quantize. Then the fused activation clamp."""
        from tflite.ConcatenationOptions import ConcatenationOptions

        ins, out = self.get_input_tensors(op), self.get_output_tensors(op)[0]
        if not self._quantized(out, *ins):
            return self._stock["CONCATENATION"](op=op)
        o = self._options(op, ConcatenationOptions)
        axis = o.Axis() if o is not None else 0
        fused = o.FusedActivationFunction() if o is not None else 0
        if all(self._same_q(t, out) for t in ins):
            res = relax.op.concat([self.get_tensor_expr(t) for t in ins], axis=axis)
        else:
            res = self.quantize(relax.op.concat([self._deq(t) for t in ins], axis=axis), out)
        return self._act_clip(res, fused, out)

    # ------------------------------------------------------------------ arithmetic as dequantize/op/quantize

    def _ext_binary(self, op: Any, relax_op: Callable[[relax.Expr, relax.Expr], relax.Expr]) -> relax.Expr:
        """ADD/SUB/MUL: dequantize each int8 input (constants included) -> one float op -> quantize, then the
        fused activation as an int8 clamp, the form TVM uses for quantized convolutions."""
        from tflite.AddOptions import AddOptions
        from tflite.BuiltinOptions import BuiltinOptions
        from tflite.MulOptions import MulOptions
        from tflite.SubOptions import SubOptions

        ins, out = self.get_input_tensors(op), self.get_output_tensors(op)[0]
        name = self._op_name_of(op)
        if not self._quantized(out, *ins):
            return self._stock[name](op=op)
        if len(ins) != 2:
            raise _Refuse(f"expected two inputs, got {len(ins)}")
        if any(t.qnn_params is None for t in (*ins, out)):
            raise _Refuse("mixes quantized and float tensors")
        cls = {BuiltinOptions.AddOptions: AddOptions, BuiltinOptions.SubOptions: SubOptions,
               BuiltinOptions.MulOptions: MulOptions}.get(op.BuiltinOptionsType())
        o = self._options(op, cls) if cls is not None else None
        fused = o.FusedActivationFunction() if o is not None else 0
        res = self.quantize(relax_op(self._deq(ins[0]), self._deq(ins[1])), out)
        return self._act_clip(res, fused, out)

    def _ext_hard_swish(self, op: Any) -> relax.Expr:
        """HARD_SWISH: dequantize -> one float op (x * relu6(x + 3) / 6 as a single TE function, emitted as
        one call_tir named "hard_swish") -> quantize."""
        inp, out = self._one_in_one_out(op)
        if not self._quantized(inp, out):
            return self._stock["HARD_SWISH"](op=op)

        def hard_swish(x: tvm.te.Tensor) -> tvm.te.Tensor:
            def f(*i: Any) -> Any:
                v = x(*i)
                three, six, zero = (tvm.tirx.const(c, x.dtype) for c in (3.0, 6.0, 0.0))
                return v * tvm.tirx.min(tvm.tirx.max(v + three, zero), six) / six

            return tvm.te.compute(x.shape, f, name="hard_swish")

        x = self.bb.emit(self._deq(inp))
        fx = self.bb.emit_te(hard_swish, x, primfunc_name_hint="hard_swish")
        return self.quantize(fx, out)

    def _ext_fully_connected(self, op: Any) -> relax.Expr:
        """FULLY_CONNECTED via TVM's importer, reshaped to the TFLite output shape: TFLite flattens a
        rank>2 input to [-1, in] when keep_num_dims is false, TVM's importer does not."""
        res = self._stock["FULLY_CONNECTED"](op=op)
        out = self.get_output_tensors(op)[0]
        shape = [int(v) for v in out.tensor.ShapeAsNumpy()] if out.tensor.ShapeLength() else None
        res = self.bb.normalize(res)
        ty_shape = getattr(res.ty, "shape", None)
        have = [int(v) for v in ty_shape] if ty_shape is not None else None
        if shape and have is not None and have != shape and all(v > 0 for v in shape):
            res = relax.op.reshape(res, shape)
        return res


# ---------------------------------------------------------------------- flatbuffer sanity checks

# TFLite TensorType codes TVM's importer accepts for graph inputs (no STRING, no unknown codes).
_INPUT_TYPES = frozenset({0, 1, 2, 3, 4, 6, 7, 8, 9, 12, 15})
_FIXED_ITEMSIZE = {0: 4, 1: 2, 2: 4, 3: 1, 4: 8, 6: 1, 7: 2, 8: 8, 9: 1, 10: 8, 11: 16, 12: 8, 15: 4, 16: 2}


def _check_flatbuffer(data: bytes, where: str) -> Any:
    """Walk the whole model once so a corrupt or truncated file fails here with one line, not deep inside
    TVM: every table, vector and buffer must lie inside the file, every index must point at something,
    and every constant tensor's buffer must hold exactly shape x element size bytes."""
    import tflite

    def bad(why: str) -> TvmPatchError:
        return TvmPatchError(f"{where}: corrupt or truncated TFLite file ({why}); re-export or re-download it")

    if len(data) < 8 or data[4:8] != b"TFL3":
        raise TvmPatchError(f"{where}: not a TFLite flatbuffer (no TFL3 identifier); is the file complete?")
    n = len(data)
    try:
        model = tflite.Model.GetRootAsModel(data, 0)

        def count(length: int, what: str) -> int:
            if length < 0 or length * 4 > n:
                raise bad(f"{what} count {length} exceeds the file")
            return length

        model.Version(), model.Description()
        for i in range(count(model.MetadataLength(), "metadata")):
            meta = model.Metadata(i)
            meta.Name(), meta.Buffer()
        n_codes = count(model.OperatorCodesLength(), "operator code")
        for i in range(n_codes):
            oc = model.OperatorCodes(i)
            oc.BuiltinCode(), oc.DeprecatedBuiltinCode(), oc.CustomCode(), oc.Version()
        n_buf = count(model.BuffersLength(), "buffer")
        buf_bytes = []
        for i in range(n_buf):
            b = model.Buffers(i)
            size = b.DataLength()
            if size:
                if size > n:
                    raise bad(f"buffer {i} longer than the file")
                arr = b.DataAsNumpy()  # numpy raises if the vector runs past the end of the file
                size = int(arr.size)
            if b.Offset() > 1:
                if b.Offset() + b.Size() > n:
                    raise bad(f"buffer {i} lies past the end of the file")
                size = int(b.Size())
            buf_bytes.append(size)
        n_sub = count(model.SubgraphsLength(), "subgraph")
        if n_sub < 1:
            raise bad("no subgraph")
        for s in range(n_sub):
            sg = model.Subgraphs(s)
            n_t = count(sg.TensorsLength(), "tensor")
            names: dict[bytes, int] = {}
            for t in range(n_t):
                ten = sg.Tensors(t)
                shape = ten.ShapeAsNumpy() if ten.ShapeLength() else np.zeros(0, "int32")
                if ten.ShapeSignatureLength():
                    ten.ShapeSignatureAsNumpy()
                ten.IsVariable()
                if ten.ShapeLength() > 16:
                    raise bad(f"tensor {t} has rank {ten.ShapeLength()}")
                b = ten.Buffer()
                if not 0 <= b < max(n_buf, 1):
                    raise bad(f"tensor {t} points at buffer {b} of {n_buf}")
                try:
                    (ten.Name() or b"").decode("utf-8")
                except UnicodeDecodeError:
                    raise bad(f"tensor {t} has a name that is not UTF-8") from None
                q = ten.Quantization()
                if q is not None:
                    if q.ScaleLength() and not np.all(np.isfinite(q.ScaleAsNumpy()) & (q.ScaleAsNumpy() >= 0)):
                        raise bad(f"tensor {t} has a negative or non-finite quantization scale")
                    if q.ZeroPointLength() and np.any(np.abs(q.ZeroPointAsNumpy().astype(np.float64)) > 2**31 - 1):
                        raise bad(f"tensor {t} has a zero point outside int32")
                size = buf_bytes[b] if n_buf else 0
                item = _FIXED_ITEMSIZE.get(ten.Type())
                if size and item and ten.Sparsity() is None:
                    want = int(np.prod([int(v) for v in shape], dtype=np.int64)) * item
                    if want != size:
                        raise bad(f"tensor {t} needs {want} bytes, its buffer has {size}")
                if not size:
                    name = ten.Name() or b""
                    if name and name in names and s == 0:
                        raise TvmPatchError(
                            f"{where}: tensors {names[name]} and {t} share the name {name.decode()!r}; TVM's "
                            "importer keys tensors by name and would wire the graph wrongly; rename one"
                        )
                    names[name] = t
            for i in (sg.InputsAsNumpy() if sg.InputsLength() else []):
                if not 0 <= int(i) < n_t:
                    raise bad(f"subgraph {s} input {int(i)} out of range")
            for i in (sg.OutputsAsNumpy() if sg.OutputsLength() else []):
                if not 0 <= int(i) < n_t:
                    raise bad(f"subgraph {s} output {int(i)} out of range")
            for k in range(count(sg.OperatorsLength(), "operator")):
                op = sg.Operators(k)
                if not 0 <= op.OpcodeIndex() < n_codes:
                    raise bad(f"operator #{k} uses opcode {op.OpcodeIndex()} of {n_codes}")
                for vec in (op.InputsAsNumpy() if op.InputsLength() else [],
                            op.OutputsAsNumpy() if op.OutputsLength() else []):
                    for i in vec:
                        if not -1 <= int(i) < n_t:
                            raise bad(f"operator #{k} refers to tensor {int(i)} of {n_t}")
                op.BuiltinOptionsType(), op.BuiltinOptions()
        main = model.Subgraphs(0)
        if main.InputsLength() < 1 or main.OutputsLength() < 1:
            raise bad("the main subgraph has no inputs or no outputs")
        for i in main.InputsAsNumpy():
            ten = main.Tensors(int(i))
            if ten.Type() not in _INPUT_TYPES:
                raise bad(f"model input {int(i)} has tensor type {ten.Type()}")
            if ten.ShapeLength() < 1:
                raise TvmPatchError(f"{where}: model input {int(i)} has no shape; TVM's TFLite importer needs it")
        return model
    except TvmPatchError:
        raise
    except Exception as e:  # noqa: BLE001 - flatbuffers reports damage as struct/index/value errors
        kind = "struct.error" if isinstance(e, struct.error) else type(e).__name__
        raise bad(f"{kind}: {_one_line(e)}") from None


def tflite_to_relax(data: bytes, where: str) -> tvm.IRModule:
    """Parse a .tflite flatbuffer and import it into a Relax IRModule with `ExtOperatorConverter`.

    `where` names the model in error messages (usually its path). Raises `UnsupportedOpError` for an operator
    this importer cannot bring in exactly and `TvmPatchError` for a damaged file or any other import failure,
    each with a one-line message."""
    from tvm.relax.frontend.tflite import from_tflite

    model = _check_flatbuffer(bytes(data), where)
    _check_static_inputs(model, where)
    _check_no_uint8(model, where)
    made: list[ExtOperatorConverter] = []

    def make_converter(*args: Any, **kwargs: Any) -> ExtOperatorConverter:
        conv = ExtOperatorConverter(*args, **kwargs)
        made.append(conv)
        return conv

    try:
        return from_tflite(model, op_converter=make_converter)
    except Exception as e:  # noqa: BLE001 - never a traceback to the user
        # An import aborted mid-function leaves a binding block open in TVM's BlockBuilder, which then logs
        # a warning when it is destroyed; close it so the user sees only the one-line error.
        for conv in made:
            try:
                conv.bb._end_block()
            except Exception:  # noqa: BLE001
                pass
        raise _user_error(e, where) from None


def _check_static_inputs(model: Any, where: str) -> None:
    """Refuse an input with a dynamic dimension other than the batch (-1 in its shape signature): TFLite
    stores 1 in its shape, which would compile a network for a 1-pixel image. A dynamic batch is compiled
    as batch 1, what the shape says (every MLPerf Tiny model has one)."""
    graph = model.Subgraphs(0)
    for i in range(graph.InputsLength()):
        t = graph.Tensors(graph.Inputs(i))
        sig = [int(d) for d in t.ShapeSignatureAsNumpy()] if t.ShapeSignatureLength() else []
        dynamic = [k for k, d in enumerate(sig) if d < 0 and k > 0]
        if dynamic:
            name = t.Name().decode(errors="replace") if t.Name() else f"#{i}"
            raise TvmPatchError(f"{where}: input {name!r} has a dynamic dimension {dynamic[0]} (shape signature "
                                f"{sig}); tvm-patch compiles one fixed shape: convert the model with a fixed input "
                                "shape (only the batch may be dynamic; it is compiled as 1)")


def _check_no_uint8(model: Any, where: str) -> None:
    """Refuse uint8 (asymmetric, older TFLite) tensors anywhere but at a QUANTIZE / DEQUANTIZE (the uint8
    input or output of an int8 model, which converts exactly): TFLite Micro and LowerToInteger compute int8."""
    names = {v: k for k, v in vars(tflite.BuiltinOperator).items() if not k.startswith("_")}
    graph = model.Subgraphs(0)
    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        code = model.OperatorCodes(op.OpcodeIndex())
        kind = names.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()), "?")
        if kind in ("QUANTIZE", "DEQUANTIZE"):
            continue
        tensors = [op.Inputs(k) for k in range(op.InputsLength())] + [op.Outputs(k) for k in range(op.OutputsLength())]
        for t_index in tensors:
            t = graph.Tensors(t_index) if t_index >= 0 else None  # -1: an optional input left out
            if t is not None and t.Type() == tflite.TensorType.UINT8:
                name = t.Name().decode(errors="replace") if t.Name() else f"#{t_index}"
                raise UnsupportedOpError(
                    f"{where}: tensor {name!r} of operator #{i} {kind} is uint8 (asymmetric quantization of older "
                    "TFLite); tvm-patch, like TFLite Micro, computes int8: convert the model to full-integer int8 "
                    "(TFLiteConverter, supported_ops TFLITE_BUILTINS_INT8; uint8 input/output types are fine)")


def _user_error(e: Exception, where: str) -> TvmPatchError:
    """The one-line project error for an import failure."""
    if isinstance(e, _OpImportError):
        loc = f"operator #{e.op_index} in subgraph {e.subgraph}"
        if e.unsupported:
            return UnsupportedOpError(
                f"{where}: unsupported TFLite operator {e.op_name} ({loc}): {e.reason}; "
                "replace it in the model, or see tvm_patch.frontend.tflite_ext.SUPPORTED_INT8_OPS "
                "for the int8 operators tvm-patch imports"
            )
        return TvmPatchError(f"{where}: could not import TFLite operator {e.op_name} ({loc}): {e.reason}")
    if isinstance(e, TvmPatchError):
        return e
    return TvmPatchError(f"{where}: TVM could not import the model: {type(e).__name__}: {_one_line(e)}")
