"""An elementwise kernel in front of a patch stage becomes the stage's prologue: no full-size tensor between.

Why: an ONNX QDQ model quantizes its float image first. After PatchStage the quantize is a kernel of its
own whose int8 output, the whole image, sits in the arena while the stage runs (zoo:mbv2-w1.0-r224:int8,
4x4 patches: 150,528 B on top of the stage's 175 kB). The stage reads its input only through its own
patch windows, so reading ``quantize(x)`` instead of ``q`` costs a few float operations per read and the
image is streamed from the caller's buffer like an int8 model's.

:func:`merge_prologues` rewrites the Program: for a patch-stage call whose input tensor is written by a
one-block elementwise kernel (``patterns.is_elementwise``) with one tensor input and read by nothing else,
every load of that input in the stage becomes the producer's expression at the same indices (TVM's
legalized arithmetic, unchanged), the stage takes the producer's input instead, and the producer call and
its tensor disappear.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import tvm_ffi
from tvm import tirx
from tvm.ir.expr import TensorLoad, TensorRegion
from tvm.tirx.buffer import is_buffer_var

from tvm_patch.export.lower import Arg, IOTensor, KernelCall, Program, TensorInfo
from tvm_patch.export.patterns import is_elementwise, single_block
from tvm_patch.names import PATCHES_ATTR
from tvm_patch.tir_util import substitute_vars

__all__ = ["merge_prologues"]


def _with_prologue(stage: tirx.PrimFunc, pos: int, producer: tirx.PrimFunc) -> tirx.PrimFunc:
    """``stage`` with parameter ``pos`` replaced by ``producer``'s input, each of its loads by the
    producer's expression at the load's indices."""
    block = single_block(producer)  # is_elementwise() checked: one block, one store
    store = block.body
    src = producer.params[0]
    new = tirx.decl_buffer(tuple(int(d) for d in src.shape), str(src.ty.dtype), name=src.name)
    old = stage.params[pos]
    ivs = [iv.var for iv in block.iter_vars]

    def retarget(ld: Any) -> Any:  # the producer's own read of its input -> the new parameter
        return tirx.BufferLoad(new, list(ld.indices)) if ld.source.same_as(src) else ld

    template = tvm_ffi.structural_map(store.value, (TensorLoad, retarget))

    def on_load(ld: Any) -> Any:
        if not ld.source.same_as(old):
            return ld
        return substitute_vars(template, dict(zip(ivs, ld.indices)))

    def on_region(r: Any, *_: Any) -> Any:  # (TVM passes a definition-region kind too)
        return tirx.BufferRegion(new, list(r.region)) if r.source.same_as(old) else r

    body = tvm_ffi.structural_map(stage.body, (TensorLoad, on_load), (TensorRegion, on_region))
    params = list(stage.params)
    params[pos] = new
    return tirx.PrimFunc(params, body, stage.ret_type, stage.attrs)


def _mergeable(prog: Program, k: int, a: Arg) -> int | None:
    """The index of the call producing ``a`` when it can become call ``k``'s prologue, else None."""
    if a.kind != "tensor" or any(io.tensor == a.index for io in prog.outputs + prog.inputs):
        return None
    readers = [j for j, c in enumerate(prog.calls) if a in c.inputs]
    writers = [j for j, c in enumerate(prog.calls) if a in c.outputs]
    if readers != [k] or len(writers) != 1:
        return None
    p = prog.calls[writers[0]]
    func = prog.funcs[p.func]
    if p.n_outputs != 1 or len(p.args) != 2 or p.args[0].kind != "tensor" or not is_elementwise(func):
        return None
    if not all(is_buffer_var(x) for x in func.params):
        return None
    return writers[0]


def merge_prologues(prog: Program) -> Program:
    """``prog`` with each elementwise producer of a patch stage's input folded into the stage (see the
    module docstring); unchanged when there is none."""
    for k, call in enumerate(prog.calls):
        func = prog.funcs[call.func]
        if func.attrs is None or PATCHES_ATTR not in func.attrs:
            continue
        for pos, a in enumerate(call.inputs):
            j = _mergeable(prog, k, a)
            if j is None:
                continue
            producer = prog.calls[j]
            if sum(c.func == call.func for c in prog.calls) != 1:
                continue  # the stage kernel is shared: rewrite only a kernel of one call
            merged = _with_prologue(func, pos, prog.funcs[producer.func])
            args = list(call.args)
            args[pos] = producer.args[0]
            funcs = dict(prog.funcs)
            funcs[call.func] = merged
            calls = list(prog.calls)
            calls[k] = KernelCall(call.func, tuple(args), call.n_outputs, call.binding)
            del calls[j]
            if not any(c.func == producer.func for c in calls):
                del funcs[producer.func]
            return merge_prologues(_drop_tensor(replace(prog, funcs=funcs, calls=calls), a.index))
    return prog


def _drop_tensor(prog: Program, index: int) -> Program:
    """``prog`` without stored tensor ``index`` (nothing refers to it any more); the others renumbered."""
    remap = {t.index: i for i, t in enumerate(t for t in prog.tensors if t.index != index)}
    tensors = [TensorInfo(remap[t.index], t.name, t.shape, t.dtype, t.role) for t in prog.tensors if t.index != index]

    def arg(a: Arg) -> Arg:
        return Arg("tensor", remap[a.index]) if a.kind == "tensor" else a

    calls = [KernelCall(c.func, tuple(arg(a) for a in c.args), c.n_outputs, c.binding) for c in prog.calls]
    ios = [[IOTensor(io.name, remap[io.tensor], io.shape, io.dtype) for io in group] for group in (prog.inputs, prog.outputs)]
    return replace(prog, tensors=tensors, calls=calls, inputs=ios[0], outputs=ios[1])
