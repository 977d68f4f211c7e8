"""Convolution weights stored output-channel-major, so a kernel's innermost reduction reads them contiguously.

TFLite models import as NHWC convolutions with HWIO weights: for one output channel the input channels of a
tap are ``O`` bytes apart, so the dot-product micro-kernel (``tvmp_dot_s8``) cannot read them as words. This
rewrite gives every NHWC convolution whose weights are a constant (groups = 1) OHWI weights instead: the
constant is transposed at export time (same bytes in Flash) and the convolution says ``kernel_layout="OHWI"``.
Dense layers likewise: ``matmul(x, W)`` with a constant (K, N) ``W`` becomes TOPI's dense over ``W``
transposed to (N, K). Every output element sums the same products, so results do not change.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax, topi
from tvm.ir.expr import Constant
from tvm.relax.expr_functor import PyExprMutator, mutator

__all__ = ["output_major_weights"]


@mutator
class _WeightLayout(PyExprMutator):
    def __init__(self, mod: tvm.IRModule) -> None:
        super().__init__(mod)
        self.mod_ = mod

    def visit_call_(self, call: relax.Call) -> relax.Expr:  # noqa: N802 (TVM's visitor name)
        call = super().visit_call_(call)
        if isinstance(call.op, tvm.ir.Op) and call.op.name == "relax.matmul":
            return self._dense(call)
        if not (isinstance(call.op, tvm.ir.Op) and call.op.name == "relax.nn.conv2d"):
            return call
        a = call.attrs
        weight = call.args[1]
        if (str(a.data_layout) != "NHWC" or str(a.kernel_layout) != "HWIO" or int(a.groups) != 1
                or not isinstance(weight, Constant)):
            return call
        ohwi = np.ascontiguousarray(np.transpose(weight.value.numpy(), (3, 0, 1, 2)))
        return relax.op.nn.conv2d(call.args[0], relax.const(ohwi), a.strides, a.padding, a.dilation, a.groups,
                                  "NHWC", "OHWI", a.out_layout, a.out_dtype)

    def _dense(self, call: relax.Call) -> relax.Expr:
        """``matmul(x, W)`` with a constant int8 (K, N) ``W`` and a 2-D ``x`` -> TOPI's dense over ``W``
        transposed to (N, K), whose reduction reads both operands contiguously."""
        x, weight = call.args
        if (not isinstance(weight, Constant) or len(weight.ty.shape) != 2 or len(x.ty.shape) != 2
                or str(weight.ty.dtype) != "int8"):
            return call
        wt = np.ascontiguousarray(weight.value.numpy().T)
        out_dtype = str(call.ty.dtype)
        return self.builder_.call_te(lambda a, b: topi.nn.dense(a, b, out_dtype=out_dtype), x, relax.const(wt),
                                     primfunc_name_hint="matmul")

    def run(self) -> tvm.IRModule:
        for gv, func in self.mod_.functions.items():
            if isinstance(func, relax.Function):
                self.builder_.update_func(gv, self.visit_expr(func))
        return self.builder_.get()


def output_major_weights(mod: tvm.IRModule) -> tvm.IRModule:
    """``mod`` with NHWC convolutions' constant HWIO weights stored OHWI and dense weights stored (N, K)
    (see the module docstring)."""
    return _WeightLayout(mod).run()
