"""The bias of a convolution's epilogue as its accumulator's initial value.

Every int8 convolution kernel initialises its int32 accumulator to 0, sums its products into it and, in its
epilogue, requantizes ``acc + bias[c]``. Where every read of the accumulator outside its own reduction is such a sum
with one constant parameter (the bias) whose index follows from the accumulator's (position by position), the
initial value becomes that bias element and the epilogue reads the accumulator alone: one add fewer per output, the
same value (int32 sums do not depend on their order). The C emission's form only: it runs after the export's
requantization facts (``requant_kernels``), which read the 0 initial value for their accumulator bounds.
"""

from __future__ import annotations

from typing import Any

import tvm_ffi
from tvm import tirx
from tvm.ir.expr import TensorLoad

from tvm_patch.codegen.requant_kernels import _updates_itself
from tvm_patch.tir_util import vars_of


def _plain_vars(indices: Any) -> list[Any] | None:
    """The variables of an index list made of distinct plain variables, else None."""
    if not all(isinstance(i, tirx.Var) for i in indices):
        return None
    out = list(indices)
    return out if len({id(v) for v in out}) == len(out) and all(
        not a.same_as(b) for k, a in enumerate(out) for b in out[k + 1:]) else None


def _sum_with_param(node: Any, acc: Any, params: list[Any]) -> tuple[TensorLoad, TensorLoad] | None:
    """(accumulator load, parameter load) when ``node`` is ``acc[...] + P[...]`` (either order), P a parameter."""
    if not isinstance(node, tirx.Add):
        return None
    for a, b in ((node.a, node.b), (node.b, node.a)):
        if isinstance(a, TensorLoad) and a.source.same_as(acc) and isinstance(b, TensorLoad) \
                and any(b.source.same_as(p) for p in params):
            return a, b
    return None


def _candidates(func: tirx.PrimFunc) -> list[Any]:
    """int32 buffers allocated in the function that some store sets to the constant 0."""
    found: list[Any] = []

    def on_store(st: Any) -> tvm_ffi.WalkResult:
        if str(st.buffer.dtype) == "int32" and isinstance(st.value, tirx.IntImm) and int(st.value.value) == 0 \
                and not any(st.buffer.same_as(b) for b in found):
            found.append(st.buffer)
        return tvm_ffi.WalkResult.ADVANCE

    tvm_ffi.structural_walk(func.body, [(tirx.BufferStore, on_store)], order="pre")
    return found


def _bias_map(func: tirx.PrimFunc, acc: Any, params: list[Any]) -> tuple[Any, Any, list[Any]] | None:
    """(bias parameter, its index expressions, placeholder variables: one per accumulator dimension) when every read
    of ``acc`` outside its own updates is ``acc[v...] + bias[f(v...)]`` with the same ``bias`` and ``f``, else None."""
    dims = len(acc.shape)
    holes = [tirx.Var(f"acc_d{k}", "int64") for k in range(dims)]
    found: list[Any] = []  # [bias buffer, index with holes]
    ok = [True]
    sums: list[Any] = []

    def on_expr(node: Any) -> tvm_ffi.WalkResult:
        pair = _sum_with_param(node, acc, params)
        if pair is None:
            return tvm_ffi.WalkResult.ADVANCE
        load, bias = pair
        vs = _plain_vars(load.indices)
        if vs is None or len(vs) != dims:
            ok[0] = False
            return tvm_ffi.WalkResult.SKIP
        idx = [tvm_ffi.structural_map(i, [(tirx.Var, lambda v: next(
            (holes[k] for k, u in enumerate(vs) if u.same_as(v)), v))]) for i in bias.indices]
        if any(not any(v.same_as(h) for h in holes) for i in idx for v in vars_of(i)):
            ok[0] = False  # the bias index depends on more than the accumulator's element
        elif not found:
            found.extend([bias.source, idx])
        elif not (found[0].same_as(bias.source) and len(found[1]) == len(idx)
                  and all(tvm_ffi.structural_equal(x, y) for x, y in zip(found[1], idx))):
            ok[0] = False
        sums.append(load)
        return tvm_ffi.WalkResult.SKIP

    def on_store(st: Any) -> tvm_ffi.WalkResult:
        if st.buffer.same_as(acc):
            if not ((isinstance(st.value, tirx.IntImm) and int(st.value.value) == 0) or _updates_itself(st)):
                ok[0] = False
            # an update reads acc itself (allowed); look at the rest of its value
            if _updates_itself(st):
                tvm_ffi.structural_walk(st.value.b, [(tirx.Add, on_expr), (TensorLoad, on_load)], order="pre")
                return tvm_ffi.WalkResult.SKIP
        return tvm_ffi.WalkResult.ADVANCE

    def on_load(ld: Any) -> tvm_ffi.WalkResult:
        if ld.source.same_as(acc) and not any(ld.same_as(s) for s in sums):
            ok[0] = False  # read otherwise
        return tvm_ffi.WalkResult.ADVANCE

    tvm_ffi.structural_walk(func.body, [(tirx.BufferStore, on_store), (tirx.Add, on_expr), (TensorLoad, on_load)],
                            order="pre")
    if not ok[0] or not found or not sums:
        return None
    bias = found[0]
    if _stored(func, bias):
        return None
    return bias, found[1], holes


def _stored(func: tirx.PrimFunc, buf: Any) -> bool:
    hit = [False]

    def on_store(st: Any) -> tvm_ffi.WalkResult:
        hit[0] = hit[0] or st.buffer.same_as(buf)
        return tvm_ffi.WalkResult.ADVANCE

    tvm_ffi.structural_walk(func.body, [(tirx.BufferStore, on_store)], order="pre")
    return hit[0]


def bias_in_init(func: tirx.PrimFunc, const_params: set[int]) -> tirx.PrimFunc:
    """``func`` with each accumulator whose every outside read adds the same constant parameter (one of
    ``const_params``, constants in every call of the kernel) at an index that follows from the accumulator's
    initialised to that parameter's element instead of 0, and the additions dropped."""
    params = [p for i, p in enumerate(func.params) if i in const_params]
    for acc in _candidates(func):
        found = _bias_map(func, acc, params)
        if found is None:
            continue
        bias, index, holes = found

        def on_store(st: Any, acc: Any = acc, bias: Any = bias, index: Any = index, holes: Any = holes) -> Any:
            if not (st.buffer.same_as(acc) and isinstance(st.value, tirx.IntImm) and int(st.value.value) == 0):
                return st
            at = [tvm_ffi.structural_map(i, [(tirx.Var, lambda v: next(
                (st.indices[k] for k, h in enumerate(holes) if h.same_as(v)), v))]) for i in index]
            return tirx.BufferStore(acc, tirx.BufferLoad(bias, at), list(st.indices))

        def on_add(node: Any, acc: Any = acc) -> Any:
            pair = _sum_with_param(node, acc, params)
            return pair[0] if pair is not None else node

        func = tvm_ffi.structural_map(func, [(tirx.BufferStore, on_store), (tirx.Add, on_add)])
    return func
