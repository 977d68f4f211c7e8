"""The requantization calls of the C export's kernels, specialised by facts proven at export time.

Every output of an int8 kernel ends in one ``tvmp_requant`` call (``tvm_patch.quant.extern_requantization``).
Where the constants of every call give each shift <= 0, the call becomes ``tvmp_requant_rs`` (no left-shift
path); where the accumulator is also proven below 2^30 in magnitude (from the reduction's int8 products and the
constant biases), ``tvmp_requant_rs_narrow`` (one SMMULR); where also every shift is <= -1,
``tvmp_requant_rb`` (one rounding add instead of TFLite's mask and comparison), and a constant output zero point
added to it ``tvmp_requant_rbz`` (the zero point in the rounding addend) where the bounds leave room. The values are
the same; see ``tvmp_kernels.h``.
"""

from __future__ import annotations

import math
from typing import Any

import tvm
import tvm_ffi
from tvm import s_tir, tirx
from tvm.ir.expr import TensorLoad

from tvm_patch.codegen.micro_kernels import SAT, _int
from tvm_patch.quant.fixedpoint import (BOUNDED_ACC_MAX, REQUANT_BOUNDED_EXTERN, REQUANT_NARROW_EXTERN, REQUANT_ZP_EXTERN,
                                        zero_point_fits)
from tvm_patch.tir_util import pure_extern_name


REQUANT = "tvmp_requant"
REQUANT_RS = "tvmp_requant_rs"


def _int32_value(expr: Any) -> Any:
    return expr.value if isinstance(expr, tirx.Cast) and str(expr.ty) == "int32" and str(expr.value.ty) == "int32" else expr


def requant_shift_params(func: tirx.PrimFunc) -> set[int] | None:
    """The parameters whose elements a ``tvmp_requant`` call takes as its shift (a load of the parameter),
    None when some call's shift is neither such a load nor a constant (nothing can be said of it)."""
    params = list(func.params)
    found: set[int] = set()
    unknown = [False]

    def on_call(call: Any) -> tvm_ffi.WalkResult:
        if pure_extern_name(call) == REQUANT:
            shift = _int32_value(call.args[3])
            idx = [i for i, p in enumerate(params) if isinstance(shift, TensorLoad) and shift.source.same_as(p)]
            if idx:
                found.add(idx[0])
            elif _int(shift) is None:
                unknown[0] = True
        return tvm_ffi.WalkResult.ADVANCE

    tvm_ffi.structural_walk(func.body, [(tvm.ir.Call, on_call)], order="pre")
    return None if unknown[0] else found


def right_shift_requant(func: tirx.PrimFunc, nonpositive: set[int]) -> tirx.PrimFunc:
    """``func`` with each ``tvmp_requant`` call whose shift is a constant <= 0 or a load of a parameter in
    ``nonpositive`` (parameters the export found <= 0 in every element, for every call of the kernel) calling
    ``tvmp_requant_rs``, which has no left-shift path: the same value for such shifts."""
    params = list(func.params)

    def on_call(call: Any) -> Any:
        if pure_extern_name(call) != REQUANT:
            return call
        shift = _int32_value(call.args[3])
        ok = (_int(shift) is not None and _int(shift) <= 0) or (
            isinstance(shift, TensorLoad) and any(shift.source.same_as(params[i]) for i in nonpositive))
        return tirx.call_pure_extern("int32", REQUANT_RS, *call.args[1:]) if ok else call

    return tvm_ffi.structural_map(func, [(tvm.ir.Call, on_call)])


REQUANT_NARROW = REQUANT_NARROW_EXTERN
REQUANT_ZP = REQUANT_ZP_EXTERN
PRODUCT_BOUND = 1 << 14  # |int8 x int8|


def _int8_cast(expr: Any) -> bool:
    return isinstance(expr, tirx.Cast) and str(expr.ty) == "int32" and str(expr.value.ty) == "int8"


def accumulator_bounds(func: tirx.PrimFunc) -> list[tuple[Any, int]]:
    """(buffer, bound on |value|) of each int32 buffer whose every store is in a block and is either a constant (an
    init) or ``buf[i] = buf[i] + int32(int8) * int32(int8)`` (a reduction's update): the update's reduction
    iterators' extents multiplied (the products summed into one element) x 2^14, plus the largest init. Buffers
    written in any other way are left out."""
    found: list[list[Any]] = []  # [buffer, init bound, products, stores in blocks, ok]

    def entry(buf: Any) -> list[Any]:
        for e in found:
            if e[0].same_as(buf):
                return e
        found.append([buf, 0, 0, 0, True])
        return found[-1]

    def on_block(block: Any) -> tvm_ffi.WalkResult:
        red = [iv for iv in block.iter_vars if int(iv.iter_type) == tirx.IterVar.CommReduce]
        for st in (block.init, block.body):
            if not isinstance(st, tirx.BufferStore) or str(st.buffer.dtype) != "int32":
                continue
            e = entry(st.buffer)
            e[3] += 1
            extents = [_int(iv.dom.extent) for iv in red]
            if isinstance(st.value, tirx.IntImm):
                e[1] = max(e[1], abs(int(st.value.value)))
            elif st.same_as(block.body) and red and None not in extents and _updates_itself(st) and _int8_product(st.value.b):
                e[2] += math.prod(extents)
            else:
                e[4] = False  # written otherwise: no bound
        return tvm_ffi.WalkResult.ADVANCE

    tvm_ffi.structural_walk(func.body, [(s_tir.SBlock, on_block)], order="pre")
    stores: list[Any] = []
    tvm_ffi.structural_walk(func.body, [(tirx.BufferStore, lambda st: stores.append(st.buffer) or tvm_ffi.WalkResult.ADVANCE)],
                            order="pre")
    return [(buf, init + products * PRODUCT_BOUND) for buf, init, products, n, ok in found
            if ok and sum(1 for b in stores if b.same_as(buf)) == n]


def _updates_itself(st: tirx.BufferStore) -> bool:
    """``buf[i] = buf[i] + x``: the store's value adds to a load of the same element."""
    v = st.value
    return (isinstance(v, tirx.Add) and isinstance(v.a, TensorLoad) and v.a.source.same_as(st.buffer)
            and len(v.a.indices) == len(st.indices)
            and all(tvm_ffi.structural_equal(i, j) for i, j in zip(v.a.indices, st.indices)))


def _int8_product(expr: Any) -> bool:
    return isinstance(expr, tirx.Mul) and _int8_cast(expr.a) and _int8_cast(expr.b)


def _abs_bound(expr: Any, accs: list[tuple[Any, int]], params: list[Any], param_bounds: dict[int, int]) -> int | None:
    """A bound on |expr| from the accumulator and parameter bounds and the int8 / constant leaves, else None."""
    if isinstance(expr, tirx.IntImm):
        return abs(int(expr.value))
    if isinstance(expr, tirx.Cast):
        if str(expr.value.ty) == "int8":
            return 128
        return _abs_bound(expr.value, accs, params, param_bounds) if str(expr.value.ty) == "int32" else None
    if isinstance(expr, (tirx.Add, tirx.Sub, tirx.Mul, tirx.Min, tirx.Max)):
        a, b = (_abs_bound(x, accs, params, param_bounds) for x in (expr.a, expr.b))
        if a is None or b is None:
            return None
        if isinstance(expr, (tirx.Min, tirx.Max)):  # |min(a, b)|, |max(a, b)| <= max(|a|, |b|)
            return max(a, b)
        return a * b if isinstance(expr, tirx.Mul) else a + b
    name = pure_extern_name(expr)
    if name is not None:
        if name == SAT:
            return 128
        if name in (REQUANT_RS, REQUANT_NARROW, REQUANT_BOUNDED_EXTERN):  # |SRDHM(x, m)| <= |x| + 1 for any int32 m; the right shift shrinks it
            inner = _abs_bound(expr.args[1], accs, params, param_bounds)
            return None if inner is None else inner + 1
        if name == REQUANT_ZP and _int(expr.args[4]) is not None:  # ... plus the zero point
            inner = _abs_bound(expr.args[1], accs, params, param_bounds)
            return None if inner is None else inner + 1 + abs(_int(expr.args[4]))
        return None
    if isinstance(expr, TensorLoad):
        for buf, bound in accs:
            if expr.source.same_as(buf):
                return bound
        idx = [i for i, p in enumerate(params) if expr.source.same_as(p)]
        return param_bounds.get(idx[0]) if idx else None
    return None


def narrow_requant(func: tirx.PrimFunc, param_bounds: dict[int, int], negative: set[int] | None = None,
                   nonnegative: set[int] | None = None) -> tirx.PrimFunc:
    """``func`` with each ``tvmp_requant_rs`` call whose accumulator is proven below 2^30 in magnitude (from
    ``accumulator_bounds`` and ``param_bounds``: parameter index -> bound on |element|, the export's constants)
    calling ``tvmp_requant_rs_narrow`` (SMMULR on 2 x acc: no 64-bit accumulate, no saturation case), or
    ``tvmp_requant_rb`` where its shift is also a constant in [-31, -1] or a load of a parameter in ``negative``
    (every element in [-31, -1] for every call) and its multiplier a constant >= 0 or a load of a parameter in
    ``nonnegative`` (every element >= 0: the kernel takes the rounding's sign from the accumulator), and
    ``tvmp_requant_rbz`` for such a call plus a constant (the output zero point) where |acc| + 1 + |zp| 2^right +
    2^(right - 1) + 1 <= 2^31 - 1 for the largest right shift: the same value for such accumulators and shifts."""
    accs = accumulator_bounds(func)
    params = list(func.params)
    negative = negative or set()
    nonnegative = nonnegative or set()

    def right_only(shift: Any) -> bool:
        shift = _int32_value(shift)
        if _int(shift) is not None:
            return -31 <= _int(shift) <= -1
        return isinstance(shift, TensorLoad) and any(shift.source.same_as(params[i]) for i in negative)

    def nonnegative_mult(mult: Any) -> bool:
        mult = _int32_value(mult)
        if _int(mult) is not None:
            return _int(mult) >= 0
        return isinstance(mult, TensorLoad) and any(mult.source.same_as(params[i]) for i in nonnegative)

    def on_call(call: Any) -> Any:
        if pure_extern_name(call) != REQUANT_RS:
            return call
        bound = _abs_bound(call.args[1], accs, params, param_bounds)
        if bound is None or bound > BOUNDED_ACC_MAX:
            return call
        name = REQUANT_BOUNDED_EXTERN if right_only(call.args[3]) and nonnegative_mult(call.args[2]) else REQUANT_NARROW
        return tirx.call_pure_extern("int32", name, *call.args[1:])

    def max_right(shift: Any) -> int | None:
        shift = _int32_value(shift)
        if _int(shift) is not None:
            return -_int(shift)
        idx = [i for i, p in enumerate(params) if isinstance(shift, TensorLoad) and shift.source.same_as(p)]
        return param_bounds.get(idx[0]) if idx else None  # every element in [-31, -1]: the largest |element|

    def on_add(node: Any) -> Any:  # rb(acc, m, s) + zp -> rbz(acc, m, s, zp) where the sum cannot overflow
        for call, other, sign in ((node.a, node.b, 1), (node.b, node.a, 1 if isinstance(node, tirx.Add) else None)):
            zp = _int(other)
            if sign is None or zp is None or pure_extern_name(call) != REQUANT_BOUNDED_EXTERN:
                continue
            zp = zp if isinstance(node, tirx.Add) else -zp
            bound, right = _abs_bound(call.args[1], accs, params, param_bounds), max_right(call.args[3])
            if bound is None or right is None or not zero_point_fits(bound, zp, right):
                continue
            return tirx.call_pure_extern("int32", REQUANT_ZP, *call.args[1:], tirx.const(zp, "int32"))
        return node

    narrowed = tvm_ffi.structural_map(func, [(tvm.ir.Call, on_call)])
    return tvm_ffi.structural_map(narrowed, [(tirx.Add, on_add), (tirx.Sub, on_add)])
