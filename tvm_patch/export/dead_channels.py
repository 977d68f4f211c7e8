"""Output channels whose weights are all zero, requantized from a small bias.

Some trained int8 layers have output channels with all-zero weights and a bias of about +-2^30 (vww's 1x1 layers:
the channel's output is a constant). That one bias breaks the accumulator bound of the whole kernel, which then
keeps the 64-bit requantization for every channel (``codegen.requant_kernels``). Such a channel's accumulator is
its bias exactly (every product is 0), so its output is the constant t = MBQM(bias, m, s) (+ zero point, clamp);
the constants (4 t, 2^30, -1) give the same t (SRDHM(4 t, 2^30) = 2 t, an even value halved exactly; checked with
the numpy reference for every replaced channel), and their bias is small. The C export's constants only (TVM's
build of the model keeps the original ones); every output is the same.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from typing import Any

import numpy as np
import tvm
import tvm_ffi
from tvm import tirx
from tvm.ir.expr import TensorLoad

from tvm_patch.codegen.micro_kernels import _int
from tvm_patch.codegen.requant_kernels import _int8_product, _int32_value, _updates_itself
from tvm_patch.export.lower import Arg, Program
from tvm_patch.quant import REQUANT_EXTERN
from tvm_patch.quant.reference import multiply_by_quantized_multiplier_ref
from tvm_patch.tir_util import pure_extern_name

BIG_BIAS = 1 << 24  # only such biases are replaced: the others do not break the accumulator bound
MAX_CONSTANT = 1 << 16  # |t| at most this (4 t stays small)
HALF_Q31 = 1 << 30


def _param_index(params: list[Any], buf: Any) -> int | None:
    idx = [i for i, p in enumerate(params) if buf.same_as(p)]
    return idx[0] if idx else None


def _channel_dim(load: Any, var: Any) -> int | None:
    """The one index of ``load`` that is ``var`` when every other index is the constant 0, else None."""
    dims = [k for k, i in enumerate(load.indices) if isinstance(i, tirx.Var) and i.same_as(var)]
    if len(dims) != 1 or any(_int(i) != 0 for k, i in enumerate(load.indices) if k != dims[0]):
        return None
    return dims[0]


def channel_roles(func: tirx.PrimFunc, const_params: set[int]) -> tuple[tuple[int, int], ...] | None:
    """((weights, dim), (bias, dim), (multiplier, dim), (shift, dim)): the parameters and their output-channel
    dimension when ``func`` is one reduction ``acc += int8 x W`` whose channel index is one of the accumulator's and
    one requantization ``tvmp_requant(acc + bias, mult, shift)`` indexed by the same channel, with those parameters
    read nowhere else (W among ``const_params``: the parameters that are constants in every call); else None."""
    params = list(func.params)
    updates: list[Any] = []
    calls: list[Any] = []
    loads: list[Any] = []
    tvm_ffi.structural_walk(func.body, [
        (tirx.BufferStore, lambda st: (updates.append(st) if _updates_itself(st) and _int8_product(st.value.b) else None)
         or tvm_ffi.WalkResult.ADVANCE),
        (tvm.ir.Call, lambda c: (calls.append(c) if pure_extern_name(c) == REQUANT_EXTERN else None)
         or tvm_ffi.WalkResult.ADVANCE),
        (TensorLoad, lambda ld: loads.append(ld) or tvm_ffi.WalkResult.ADVANCE)], order="pre")
    if len(updates) != 1 or len(calls) != 1:
        return None
    st, call = updates[0], calls[0]
    acc_vars = [i for i in st.indices if isinstance(i, tirx.Var)]
    # the weights: the product's constant operand, one of its indices one of the accumulator's variables
    found = [(ld, k, v) for ld in (st.value.b.a.value, st.value.b.b.value) if isinstance(ld, TensorLoad)
             and _param_index(params, ld.source) in const_params
             for k, i in enumerate(ld.indices) for v in acc_vars if isinstance(i, tirx.Var) and i.same_as(v)]
    if len(found) != 1:
        return None
    w_load, w_dim, channel = found[0]
    pos = [k for k, i in enumerate(st.indices) if isinstance(i, tirx.Var) and i.same_as(channel)][0]
    x, m, s = call.args[1], _int32_value(call.args[2]), _int32_value(call.args[3])
    if not isinstance(x, tirx.Add):
        return None
    pair = [(a, b) for a, b in ((x.a, x.b), (x.b, x.a)) if isinstance(a, TensorLoad) and a.source.same_as(st.buffer)
            and isinstance(b, TensorLoad) and _param_index(params, b.source) is not None]
    if len(pair) != 1 or not all(isinstance(i, tirx.Var) for i in pair[0][0].indices):
        return None
    acc_load, b_load = pair[0]
    cv = acc_load.indices[pos]  # the epilogue's channel variable
    roles = [(w_load, channel)] + [(ld, cv) for ld in (b_load, m, s)]
    out = []
    for ld, var in roles:
        if not isinstance(ld, TensorLoad):
            return None
        p, dim = _param_index(params, ld.source), _channel_dim(ld, var) if ld is not w_load else w_dim
        if p is None or dim is None or sum(1 for other in loads if other.source.same_as(ld.source)) != 1:
            return None
        out.append((p, dim))
    return tuple(out)


def quiet_dead_channels(prog: Program, funcs: dict[str, Any]) -> Program:
    """``prog`` with the bias, multiplier and shift of every dead output channel (all-zero weights, |bias| >=
    BIG_BIAS) replaced by (4 t, 2^30, -1), t its requantized bias, in every call of a kernel ``channel_roles``
    reads; the same outputs. A constant another call shares is replaced by a changed copy for this call only."""
    consts = list(prog.constants)
    calls = list(prog.calls)
    roles = {}
    for name, f in funcs.items():
        mine = [c for c in calls if c.func == name]
        const = {p for p in range(len(mine[0].args)) if all(c.args[p].kind == "const" for c in mine)} if mine else set()
        roles[name] = channel_roles(f, const)
    uses = Counter(a.index for c in calls for a in c.args if a.kind == "const")
    changed = False
    for k, call in enumerate(calls):
        found = roles.get(call.func)
        if found is None or any(call.args[p].kind != "const" for p, _ in found):
            continue
        (pw, dw), (pb, db), (pm, dm), (ps, ds) = found
        w, b, m, s = (consts[call.args[p].index] for p, _ in found)
        nb, nm, ns = b.copy(), m.copy(), s.copy()
        hit = False
        for c in range(w.shape[dw]):
            bias = int(np.take(b, c, axis=db).item())
            if abs(bias) < BIG_BIAS or np.take(w, c, axis=dw).any():
                continue
            mult, shift = int(np.take(m, c, axis=dm).item()), int(np.take(s, c, axis=ds).item())
            t = int(multiply_by_quantized_multiplier_ref(np.array([bias]), mult, shift)[0])
            if abs(t) > MAX_CONSTANT or int(multiply_by_quantized_multiplier_ref(np.array([4 * t]), HALF_Q31, -1)[0]) != t:
                continue
            for arr, dim, value in ((nb, db, 4 * t), (nm, dm, HALF_Q31), (ns, ds, -1)):
                index = [0] * arr.ndim
                index[dim] = c
                arr[tuple(index)] = value
            hit = True
        if not hit:
            continue
        args = list(call.args)
        for p, arr in ((pb, nb), (pm, nm), (ps, ns)):
            if uses[args[p].index] == 1:  # this call's own array
                consts[args[p].index] = arr
            else:
                consts.append(arr)
                args[p] = Arg("const", len(consts) - 1)
        calls[k] = dataclasses.replace(call, args=tuple(args))
        changed = True
    return dataclasses.replace(prog, constants=consts, calls=calls) if changed else prog
