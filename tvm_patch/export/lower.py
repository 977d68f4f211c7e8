"""Relax -> an ordered list of plain kernel calls over tensors and constants (the driver's program).

The module is fused with TVM's own passes (the "zero" pipeline: LegalizeOps, AnnotateTIROpPattern,
FoldConstant, FuseOps, FuseTIR; then DeadCodeElimination and RewriteDataflowReshape), whatever passes ran
before, so every binding of the entry function is then one of:

* ``call_tir(prim_func, (args...))`` -> a :class:`KernelCall` (destination passing: the PrimFunc's
  parameters are its inputs, then its outputs);
* ``R.reshape`` (what RewriteDataflowReshape makes of a reshape-like PrimFunc), a call_tir of a PrimFunc
  with a reshape pattern (``relax.analysis.has_reshape_pattern``: the ones RewriteDataflowReshape keeps
  because they produce the function's output), a plain ``y = x``, or a ``TupleGetItem`` of a call's tuple
  output -> a view: the same stored bytes, no code;
* a constant or a tuple of values.

Anything else has no lowering to C and raises :class:`TvmPatchError` naming the op.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
import tvm
from tvm import relax, tirx
from tvm.ir.expr import Constant

from tvm_patch.codegen.c_kernels import unique_identifier
from tvm_patch.codegen.c_types import dtype_bytes
from tvm_patch.codegen.micro_kernels import micro_kernels_enabled
from tvm_patch.errors import TVM_ERRORS, TvmPatchError
from tvm_patch.export.padfuse import merge_pads
from tvm_patch.export.patterns import mark_elementwise
from tvm_patch.export.prefold import prefold_constants
from tvm_patch.export.weight_layout import output_major_weights

__all__ = ["Arg", "IOTensor", "KernelCall", "Program", "TensorInfo", "fuse", "lower_module"]


@dataclass(frozen=True)
class TensorInfo:
    """A stored activation tensor (views share it). ``role``: "input", "intermediate" or "output"."""

    index: int
    name: str
    shape: tuple[int, ...]
    dtype: str
    role: str

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * dtype_bytes(self.dtype)


@dataclass(frozen=True)
class Arg:
    """One kernel argument: a stored tensor (``kind == "tensor"``) or a constant, by index."""

    kind: Literal["tensor", "const"]
    index: int


@dataclass(frozen=True)
class KernelCall:
    """One call of ``func`` with its arguments in PrimFunc parameter order (inputs, then outputs)."""

    func: str
    args: tuple[Arg, ...]
    n_outputs: int
    binding: str

    @property
    def inputs(self) -> tuple[Arg, ...]:
        return self.args[: len(self.args) - self.n_outputs]

    @property
    def outputs(self) -> tuple[Arg, ...]:
        return self.args[len(self.args) - self.n_outputs :]


@dataclass(frozen=True)
class IOTensor:
    """A network input or output as the caller sees it: its shape and dtype, stored in ``tensor``."""

    name: str  # its C parameter name in tvmp_run (`io_names`)
    tensor: int
    shape: tuple[int, ...]
    dtype: str
    source_name: str = ""  # its tensor name in the model, when known

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * dtype_bytes(self.dtype)


@dataclass
class Program:
    """Everything the C driver needs: kernels, calls in order, tensors, constants, inputs and outputs."""

    funcs: dict[str, tirx.PrimFunc]
    calls: list[KernelCall]
    tensors: list[TensorInfo]
    constants: list[np.ndarray]
    inputs: list[IOTensor]
    outputs: list[IOTensor]
    fused_mod: tvm.IRModule = field(repr=False)

    @property
    def weights_bytes(self) -> int:
        return sum(c.nbytes for c in self.constants)

    def with_constants(self, consts: list[np.ndarray], calls: list[KernelCall], replaced: set[int]) -> "Program":
        """This program with ``consts`` and ``calls`` (a rewrite's), the ``replaced`` constants that no call reads
        any more dropped and the calls' constant indices renumbered."""
        read = {a.index for c in calls for a in c.args if a.kind == "const"}
        used = [i for i in range(len(consts)) if i in read or i not in replaced]
        renumber = {old: new for new, old in enumerate(used)}
        calls = [replace(c, args=tuple(Arg("const", renumber[a.index]) if a.kind == "const" else a for a in c.args))
                 for c in calls]
        return replace(self, constants=[consts[i] for i in used], calls=calls)


def fuse(mod: tvm.IRModule) -> tvm.IRModule:
    """TVM's fusion pipeline, after a numpy pre-fold of weight preprocessing (see prefold.py), with NHWC
    weights stored output-major (weight_layout.py) and pads merged into the convolutions (padfuse.py)."""
    T = relax.transform
    mod = prefold_constants(mod)
    mod = merge_pads(output_major_weights(mod) if micro_kernels_enabled() else mod)
    seq = tvm.transform.Sequential(
        [
            T.LegalizeOps(),
            T.AnnotateTIROpPattern(),
            mark_elementwise,
            T.FoldConstant(),
            T.FuseOps(),
            T.FuseTIR(),
            T.DeadCodeElimination(),
            T.RewriteDataflowReshape(),
            T.DeadCodeElimination(),
        ]
    )
    try:
        return seq(mod)
    except TVM_ERRORS as e:  # TVM raises these (tvm.error.* derive from RuntimeError)
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        raise TvmPatchError(f"TVM could not fuse the model: {lines[-1] if lines else type(e).__name__}") from None


def _static_shape(ty: Any, what: str) -> tuple[tuple[int, ...], str]:
    if not isinstance(ty, relax.TensorType) or ty.shape is None:
        raise TvmPatchError(f"{what} is not a tensor of known shape ({ty}); export the model with fixed shapes")
    try:
        shape = tuple(int(s) for s in ty.shape.values)
    except (TypeError, ValueError):
        raise TvmPatchError(f"{what} has a symbolic shape {ty.shape}; export the model with fixed shapes") from None
    return shape, str(ty.dtype)


_RESERVED = re.compile(r"tvmp_(run|arena\w*|c\d+|model\w*|input\w*|output\w*)")  # the driver's own names


def _c_name(name: str, taken: set[str]) -> str:
    """A unique C identifier ``tvmp_<name>`` for a kernel, clear of the driver's own names."""
    ident = "tvmp_" + re.sub(r"\W", "_", name)
    if _RESERVED.fullmatch(ident):
        ident += "_kernel"
    return unique_identifier(ident, taken)


def _op_label(call: relax.Call) -> str:
    op = call.op
    if isinstance(op, tvm.ir.Op):
        return op.name
    if isinstance(op, relax.ExternFunc):
        return f"extern function {op.global_symbol}"
    if isinstance(op, tvm.ir.GlobalVar):
        return f"call of {op.name_hint}"
    return type(op).__name__


class _Walker:
    """Walks the entry function's bindings in order and records the program."""

    def __init__(self, mod: tvm.IRModule) -> None:
        self.mod = mod
        self.tensors: list[TensorInfo] = []
        self.constants: list[np.ndarray] = []
        self.const_ids: dict[tuple[str, tuple[int, ...], bytes], int] = {}
        self.calls: list[KernelCall] = []
        self.funcs: dict[str, tirx.PrimFunc] = {}
        self.func_names: dict[str, str] = {}  # GlobalVar name -> C name
        self.taken: set[str] = set()
        # Relax var -> Arg (tensor or constant), or a tuple of Args
        self.value: dict[Any, Any] = {}

    def new_tensor(self, name: str, shape: tuple[int, ...], dtype: str, role: str) -> Arg:
        t = TensorInfo(len(self.tensors), name, shape, dtype, role)
        self.tensors.append(t)
        return Arg("tensor", t.index)

    def constant(self, c: Constant) -> Arg:
        arr = c.value.numpy()
        key = (str(arr.dtype), tuple(arr.shape), arr.tobytes())
        if key not in self.const_ids:
            self.const_ids[key] = len(self.constants)
            self.constants.append(np.array(arr, order="C"))
        return Arg("const", self.const_ids[key])

    def operand(self, expr: Any, where: str) -> Any:
        if isinstance(expr, Constant):
            return self.constant(expr)
        if isinstance(expr, relax.Var) and expr in self.value:
            return self.value[expr]
        if isinstance(expr, relax.Tuple):
            return tuple(self.operand(f, where) for f in expr.fields)
        if isinstance(expr, relax.TupleGetItem):
            tup = self.operand(expr.tuple_value, where)
            if not isinstance(tup, tuple):
                raise TvmPatchError(f"{where}: TupleGetItem of a non-tuple value")
            return tup[int(expr.index)]
        raise TvmPatchError(f"{where}: an operand of kind {type(expr).__name__} has no lowering to C")

    def call_tir(self, var: relax.Var, call: relax.Call) -> None:
        where = f"binding {var.name}"
        gv = call.args[0]
        if len(call.args) > 2:
            raise TvmPatchError(f"{where}: call_tir with symbolic shape arguments has no lowering to C")
        func = self.mod[gv] if isinstance(gv, tvm.ir.GlobalVar) else None
        if not isinstance(func, tirx.PrimFunc):
            raise TvmPatchError(f"{where}: call_tir of {gv}, which is not a TIR PrimFunc: no lowering to C")
        packed = self.operand(call.args[1], where)
        ins = list(packed) if isinstance(packed, tuple) else [packed]
        if not all(isinstance(a, Arg) for a in ins):
            raise TvmPatchError(f"{where}: a tuple passed as one call_tir argument has no lowering to C")
        ty = var.ty
        if len(ins) == 1 and ins[0].kind == "tensor" and not isinstance(ty, relax.TupleType) and relax.analysis.has_reshape_pattern(func):
            # a reshape PrimFunc that RewriteDataflowReshape left (it keeps those producing the function's output)
            self.view(var, ins[0], where)
            return
        out_tys = list(ty.fields) if isinstance(ty, relax.TupleType) else [ty]
        outs = []
        for i, oty in enumerate(out_tys):
            shape, dtype = _static_shape(oty, f"{where} (output {i})")
            outs.append(self.new_tensor(var.name if len(out_tys) == 1 else f"{var.name}_{i}", shape, dtype, "intermediate"))
        if len(ins) + len(outs) != len(func.params):
            raise TvmPatchError(f"{where}: {gv.name_hint} takes {len(func.params)} parameters, call passes {len(ins) + len(outs)}")
        name = self.func_names.get(gv.name_hint)
        if name is None:
            name = self.func_names[gv.name_hint] = _c_name(gv.name_hint, self.taken)
            self.funcs[name] = func
        self.calls.append(KernelCall(name, tuple(ins + outs), len(outs), var.name))
        self.value[var] = outs[0] if not isinstance(ty, relax.TupleType) else tuple(outs)

    def view(self, var: relax.Var, src: Any, where: str) -> None:
        if isinstance(src, Arg) and src.kind == "tensor":
            shape, dtype = _static_shape(var.ty, where)
            t = self.tensors[src.index]
            if math.prod(shape) * dtype_bytes(dtype) != t.nbytes:
                raise TvmPatchError(f"{where}: a view of {t.nbytes} B as {shape} {dtype} changes the size")
        self.value[var] = src

    def binding(self, b: Any) -> None:
        var = b.var
        where = f"binding {var.name}"
        if not isinstance(b, relax.VarBinding):
            raise TvmPatchError(f"{where}: {type(b).__name__} (a run-time shape check) has no lowering to C")
        v = b.value
        if isinstance(v, relax.Call):
            label = _op_label(v)
            if label == "relax.call_tir":
                self.call_tir(var, v)
            elif label == "relax.reshape":
                self.view(var, self.operand(v.args[0], where), where)
            else:
                raise TvmPatchError(f"{label}: an op with no lowering to C ({where} of the entry function)")
        elif isinstance(v, (relax.Var, relax.Tuple, relax.TupleGetItem, Constant)):
            self.view(var, self.operand(v, where), where)
        else:
            raise TvmPatchError(f"{where}: a {type(v).__name__} expression has no lowering to C")


def _flatten(value: Any) -> list[Any]:
    if isinstance(value, tuple):
        return [x for v in value for x in _flatten(v)]
    return [value]


def lower_module(mod: tvm.IRModule, func_name: str = "main", fused: bool = False) -> Program:
    """Fuse ``mod`` (unless ``fused``) and turn ``mod[func_name]`` into a :class:`Program`."""
    fmod = mod if fused else fuse(mod)
    try:
        func = fmod[func_name]
    except (KeyError, RuntimeError, ValueError):
        raise TvmPatchError(f"the module has no function {func_name!r} to export") from None
    if not isinstance(func, relax.Function):
        raise TvmPatchError(f"{func_name} is not a Relax function")
    w = _Walker(fmod)
    inputs: list[IOTensor] = []
    for p in func.params:
        shape, dtype = _static_shape(p.ty, f"input {p.name}")
        arg = w.new_tensor(p.name, shape, dtype, "input")
        w.value[p] = arg
        inputs.append(IOTensor("input" if len(func.params) == 1 else f"input{len(inputs)}", arg.index, shape, dtype))
    body = func.body
    if not isinstance(body, relax.SeqExpr):
        raise TvmPatchError(f"{func_name}: the function body is not a sequence of bindings")
    for block in body.blocks:
        for b in block.bindings:
            w.binding(b)
    ret = body.body
    outputs: list[IOTensor] = []
    ret_vals = _flatten(w.operand(ret, "the return value"))
    ret_tys = list(ret.ty.fields) if isinstance(ret.ty, relax.TupleType) else [ret.ty]
    if len(ret_tys) != len(ret_vals):  # a nested tuple: shapes come from the stored tensors
        ret_tys = [None] * len(ret_vals)
    for i, (a, ty) in enumerate(zip(ret_vals, ret_tys)):
        if a.kind != "tensor":
            raise TvmPatchError(f"{func_name} returns a constant (output {i}); nothing to compute")
        t = w.tensors[a.index]
        shape, dtype = _static_shape(ty, f"output {i}") if ty is not None else (t.shape, t.dtype)
        if t.role == "intermediate":
            w.tensors[a.index] = TensorInfo(t.index, t.name, t.shape, t.dtype, "output")
        outputs.append(IOTensor(f"output{i}" if len(ret_vals) > 1 else "output", a.index, shape, dtype))
    return Program(w.funcs, w.calls, w.tensors, w.constants, inputs, outputs, fmod)
