"""A kernel's per-channel int32 constants packed into one array per call.

A convolution's epilogue reads its bias, multiplier and shift per output channel from three constant arrays, so
three pointers stay live through the channel loop beside the weights, the activations, the output and the
accumulators; on Cortex-M's 13 usable registers GCC spills the loop's pointers and counters to the stack.
Interleaved per channel in one array, ``E[c * n + k]`` the k-th of the n arrays' element c, the loop keeps one
pointer, and the Flash is the same.

Where the shift is read only as the shift of ``tvmp_requant_rbz(acc, mult, shift, zp)`` calls, its column
holds the right shift -shift and the calls become ``tvmp_requant_rbzr(acc, mult, right, zp)``: no negation per
channel. Storing the rounding addend too (a fourth column, 4 bytes a channel and call) was measured faster on some
networks and slower on others, for 1-8 % more Flash in constants: not kept (docs/kernels.md, round 10).

Exact: each read ``P_k[i]`` becomes ``E[i * n + k]``, the same value, and ``tvmp_requant_rbzr`` computes
``tvmp_requant_rbz``'s expression from -shift. The export's C only (TVM's builds of the model keep the original
constants); after the requantization facts, which read the original arrays by parameter.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import tvm
import tvm_ffi
from tvm import tirx
from tvm.ir.expr import TensorLoad

from tvm_patch.export.lower import Arg, Program
from tvm_patch.export.stage_arena import is_patch_stage
from tvm_patch.patch.te_stage import channel_constant_layer
from tvm_patch.quant.fixedpoint import REQUANT_ZP_EXTERN, REQUANT_ZP_RIGHT_EXTERN
from tvm_patch.names import ALIASED_PARAMS
from tvm_patch.tir_util import is_call, load_counts, pure_extern_name

MAX_PACKED = 3  # a channel's bias, multiplier and shift (a fourth, unused column measured no faster)
MIN_CHANNELS = 2


def _reads(func: tirx.PrimFunc) -> tuple[dict[str, int], set[str]]:
    """(loads per buffer name, names whose address is taken, that are stored to, or that some other buffer than
    the parameter of that name is read as: a view of it)."""
    unsafe: set[str] = set()
    params = {p.name: p for p in func.params if isinstance(p, tirx.Buffer)}

    def on_load(ld: Any) -> tvm_ffi.WalkResult:
        if ld.source.name in params and not ld.source.same_as(params[ld.source.name]):
            unsafe.add(ld.source.name)
        return tvm_ffi.WalkResult.ADVANCE

    def on_call(c: Any) -> tvm_ffi.WalkResult:
        if is_call(c, ".address_of"):
            tvm_ffi.structural_walk(c, [(TensorLoad, lambda ld: unsafe.add(ld.source.name) or tvm_ffi.WalkResult.ADVANCE)],
                                    order="pre")
        return tvm_ffi.WalkResult.ADVANCE

    def on_store(st: Any) -> tvm_ffi.WalkResult:
        unsafe.add(st.buffer.name)
        return tvm_ffi.WalkResult.ADVANCE

    def on_decl(d: Any) -> tvm_ffi.WalkResult:  # a buffer declared over a parameter's data (a view)
        unsafe.update(n for n, p in params.items() if d.buffer.data.same_as(p.data) or d.buffer.name == n)
        return tvm_ffi.WalkResult.ADVANCE

    tvm_ffi.structural_walk(func.body, [(TensorLoad, on_load), (tvm.ir.Call, on_call), (tirx.BufferStore, on_store),
                                        (tirx.DeclBuffer, on_decl)], order="pre")
    return load_counts(func.body), unsafe


def packable(func: tirx.PrimFunc, const_params: set[int]) -> list[int]:
    """The parameters to pack, in order: the largest group (2 to MAX_PACKED of them) of int32 parameters among
    ``const_params`` (constants in every call) with the same element count of at least MIN_CHANNELS, each read
    only by plain loads (no address taken, never stored) and sharing its name with no other buffer; else []."""
    loads, unsafe = _reads(func)
    names = [p.name for p in func.params if isinstance(p, tirx.Buffer)]
    groups: dict[int, list[int]] = {}
    for i, p in enumerate(func.params):
        if i not in const_params or not isinstance(p, tirx.Buffer) or str(p.dtype) != "int32":
            continue
        shape = [int(d) for d in p.shape] if all(isinstance(d, tirx.IntImm) for d in p.shape) else None
        if shape is None or math.prod(shape) < MIN_CHANNELS or p.name in unsafe or not loads.get(p.name) \
                or names.count(p.name) != 1:
            continue
        groups.setdefault(math.prod(shape), []).append(i)
    best = max(groups.values(), key=len, default=[])
    return best[:MAX_PACKED] if len(best) >= 2 else []


def _rbz_calls(func: tirx.PrimFunc) -> list[Any]:
    found: list[Any] = []
    tvm_ffi.structural_walk(func.body, [(tvm.ir.Call, lambda c: (found.append(c) if pure_extern_name(c) == REQUANT_ZP_EXTERN
                                                                 else None) or tvm_ffi.WalkResult.ADVANCE)], order="pre")
    return found


def rbz_shift(func: tirx.PrimFunc, group: list[int]) -> int | None:
    """The position in ``group`` of the first grouped parameter read only as the shift of ``tvmp_requant_rbz``
    calls, else None."""
    loads = load_counts(func.body)
    calls = _rbz_calls(func)
    shifts = [c.args[3].source.name if isinstance(c.args[3], TensorLoad) else None for c in calls]
    for k, p in enumerate(group):
        name = func.params[p].name
        if shifts.count(name) and loads.get(name) == shifts.count(name):  # (a stage's other layers have their own)
            return k
    return None


def _flat(load: Any, shape: list[int]) -> Any:
    flat = tirx.const(0, "int32")
    for idx, dim in zip(load.indices, shape):
        flat = flat * dim + tirx.Cast("int32", idx) if str(idx.ty) != "int32" else flat * dim + idx
    return flat


def packed_func(func: tirx.PrimFunc, group: list[int], right: int | None = None) -> tirx.PrimFunc:
    """``func`` reading the parameters ``group`` from one packed (C * len(group),) int32 parameter in the first
    one's place, the others dropped (the in-place attribute's parameter positions moved with them); with ``right``
    (``rbz_shift``: the shift's position, stored as the right shift) its ``tvmp_requant_rbz`` calls become
    ``tvmp_requant_rbzr``."""
    params = list(func.params)
    first = params[group[0]]
    n = len(group)
    packed = tirx.decl_buffer((math.prod(int(d) for d in first.shape) * n,), "int32", first.name)
    slot = {params[i].name: k for k, i in enumerate(group)}
    shapes = {params[i].name: [int(d) for d in params[i].shape] for i in group}
    ana = tvm.sym.Analyzer()

    def on_load(ld: Any) -> Any:
        name = ld.source.name
        if name not in slot or not any(ld.source.same_as(params[i]) for i in group):
            return ld
        return tirx.BufferLoad(packed, [ana.simplify(_flat(ld, shapes[name]) * n + slot[name])])

    def on_call(c: Any) -> Any:  # only the calls whose shift is the one stored as the right shift
        if (right is None or pure_extern_name(c) != REQUANT_ZP_EXTERN or not isinstance(c.args[3], TensorLoad)
                or not c.args[3].source.same_as(params[group[right]])):
            return c
        return tirx.call_pure_extern("int32", REQUANT_ZP_RIGHT_EXTERN, *c.args[1:])

    body = tvm_ffi.structural_map(func.body, [(tvm.ir.Call, on_call)])
    body = tvm_ffi.structural_map(body, [(TensorLoad, on_load)])
    new_params = [packed if i == group[0] else p for i, p in enumerate(params) if i not in group[1:]]
    out = tirx.PrimFunc(new_params, body, ret_type=None, attrs=func.attrs)
    if func.attrs is not None and ALIASED_PARAMS in func.attrs:
        moved = [int(i) - sum(1 for g in group[1:] if g < int(i)) for i in func.attrs[ALIASED_PARAMS]]
        out = out.with_attr(ALIASED_PARAMS, [tirx.IntImm("int32", i) for i in moved])
    return out


def packed_table(cols: list[np.ndarray], right: int | None) -> np.ndarray:
    """One call's packed constant: the columns interleaved per channel, column ``right`` (a shift) negated."""
    table = [c.astype(np.int32).reshape(-1) for c in cols]
    if right is not None:
        table[right] = -table[right]  # shifts in [-31, -1] (the rbz form's precondition): no overflow
    return np.stack(table, axis=1).reshape(-1)


def _candidates(func: tirx.PrimFunc) -> list[set[str] | None]:
    """The parameter names each packing may take from: any (None) in a layer's kernel; in a patch stage one layer's
    bias, multiplier and shift at a time (its parameters are many layers', of equal channel counts at times)."""
    if not is_patch_stage(func):
        return [None]
    layers: dict[int, set[str]] = {}
    for p in func.params:
        if (layer := channel_constant_layer(p.name)) is not None:
            layers.setdefault(layer, set()).add(p.name)
    return [layers[i] for i in sorted(layers)]


def pack_channel_constants(prog: Program, funcs: dict[str, tirx.PrimFunc]) -> tuple[Program, dict[str, tirx.PrimFunc]]:
    """``prog`` and ``funcs`` with each kernel's ``packable`` parameters packed (``packed_func``) and every call
    passing one interleaved constant for them; constants no call reads any more dropped."""
    consts = list(prog.constants)
    calls = list(prog.calls)
    out = dict(funcs)
    made: dict[bytes, int] = {}
    replaced: set[int] = set()
    for name, func in funcs.items():
        ks = [k for k, c in enumerate(calls) if c.func == name]
        if not ks:
            continue
        for names in _candidates(func):
            const = {p for p in range(len(func.params)) if all(calls[k].args[p].kind == "const" for k in ks)
                     and (names is None or func.params[p].name in names)}
            group = packable(func, const)
            if not group:
                continue
            right = rbz_shift(func, group)
            func = packed_func(func, group, right)
            for k in ks:
                args = list(calls[k].args)
                arr = packed_table([consts[args[p].index] for p in group], right)
                key = arr.tobytes()
                if key not in made:
                    consts.append(arr)
                    made[key] = len(consts) - 1
                replaced.update(args[p].index for p in group)
                args[group[0]] = Arg("const", made[key])
                calls[k] = dataclasses.replace(calls[k], args=tuple(a for p, a in enumerate(args) if p not in group[1:]))
        out[name] = func
    if not replaced:
        return prog, funcs
    return prog.with_constants(consts, calls, replaced), out
