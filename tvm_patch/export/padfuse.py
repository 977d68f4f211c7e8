"""Pads that feed convolutions become part of the convolution kernel: no padded tensor in the arena.

LowerToInteger writes a zero-point pad before every padded convolution (``R.nn.pad(x, pad_value=zp)``
then a convolution with ``padding=0``), and TFLite / ONNX models carry explicit PAD ops. TVM's FuseOps
never fuses a producer into a convolution, so each pad would be a kernel of its own with a padded copy
of its input in the arena (or, worse, fused as a trailing stage of the previous convolution, which keeps
that convolution's whole output as kernel workspace). A device kernel reads the border from the pad
value instead; the paper's memory convention assumes exactly that.

:func:`merge_pads` rewrites ``conv2d(pad(x, value), w, padding=0)`` into one ``call_tir`` whose TE
computes the pad as an internal stage of the convolution (TOPI's own ``conv`` over a ``pad`` with the
given value), the same form as TVM's legalization of a convolution with its own zero padding. The
lean kernel schedule (:mod:`tvm_patch.export.schedule`) then inlines that stage, so the border is an
``if_then_else`` in the convolution's read. Arithmetic is unchanged: every output element sums the same
products. A pad read by anything but convolutions stays as it is for those readers.
"""

from __future__ import annotations

from typing import Any

import tvm
from tvm import relax, topi
from tvm.relax.expr_functor import PyExprMutator, mutator

from tvm_patch.relax_util import op_name

__all__ = ["merge_pads"]


def _spatial_pad(pad: relax.Call, data_layout: str) -> tuple[list[int], list[int]] | None:
    """(before, after) per axis of a constant-mode pad that pads only the H and W axes, or None."""
    a = pad.attrs
    if str(a.pad_mode) != "constant":
        return None
    width = [int(p) for p in a.pad_width]
    if len(width) != 2 * len(data_layout):
        return None
    before, after = width[0::2], width[1::2]
    for axis, name in enumerate(data_layout):
        if name not in "HW" and (before[axis] or after[axis]):
            return None
    return before, after


@mutator
class _PadMerger(PyExprMutator):
    def __init__(self, mod: tvm.IRModule) -> None:
        super().__init__(mod)
        self.mod_ = mod
        self.merged = 0

    def visit_call_(self, call: relax.Call) -> relax.Expr:  # noqa: N802 (TVM's visitor name)
        call = super().visit_call_(call)
        if op_name(call) != "relax.nn.conv2d":
            return call
        a = call.attrs
        if any(int(p) for p in a.padding) or str(a.out_layout or a.data_layout) != str(a.data_layout):
            return call
        data = call.args[0]
        bound = self.lookup_binding(data) if isinstance(data, relax.Var) else None
        if op_name(bound) != "relax.nn.pad":
            return call
        pads = _spatial_pad(bound, str(a.data_layout))
        if pads is None:
            return call
        before, after = pads
        x = bound.args[0]
        value = float(bound.attrs.pad_value)
        dtype = str(x.ty.dtype)
        if dtype.startswith(("int", "uint")):
            if value != int(value):
                return call
            value = int(value)
        out_dtype = str(a.out_dtype) if str(a.out_dtype) else None

        def pad_conv(inp: Any, filt: Any) -> Any:
            padded = topi.nn.pad(inp, before, after, pad_value=tvm.tirx.const(value, dtype), name="pad_temp")
            return topi.nn.conv(padded, filt, a.strides, 0, a.dilation, a.groups, str(a.data_layout),
                                str(a.kernel_layout), out_dtype)

        self.merged += 1
        return self.builder_.call_te(pad_conv, x, call.args[1], primfunc_name_hint="conv2d")

    def run(self) -> tvm.IRModule:
        for gv, func in self.mod_.functions.items():
            if isinstance(func, relax.Function):
                self.builder_.update_func(gv, self.visit_expr(func))
        return self.builder_.get()


def merge_pads(mod: tvm.IRModule) -> tvm.IRModule:
    """``mod`` with every ``conv2d(pad(x), w, padding=0)`` computed as one pad-and-convolve call (see the
    module docstring); pads left without readers are removed."""
    merger = _PadMerger(mod)
    out = merger.run()
    if not merger.merged:
        return mod
    return relax.transform.DeadCodeElimination()(out)
