"""A convolution written over its own input, the output placed a few bytes *before* it: in place with no copy.

`inplace_conv` runs a depthwise layer in place through a one-channel copy of its input, a workspace the
analytic convention does not count (a 28x28 channel: 784 B above the analytic peak when that layer is the
peak). A kernel that computes its outputs in raster order, each from a window of its input, reads at a
given moment nothing before a known distance behind the element it writes: with the output starting S bytes
before the input, every write lands on input bytes no later iteration reads. S is about one image row (a
3x3 stride-1 layer: W + 1 elements, rounded up to the arena's alignment), not a channel.

:func:`shifted_inplace_pairs` measures S for a kernel and proves the placement on its TIR by enumeration: the
flat address of the one store to the output in every iteration of its loop nest, and of every load of the
input in every iteration and reduction step (evaluated with numpy over the loops' whole ranges), must put
each write strictly below every read of the iterations after it, the store coming after its own
iteration's loads. The planner gets `memplan.DepthwiseInPlace(src, dst, shift=-S)`.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
import tvm
from tvm import s_tir, tirx
from tvm.tirx.buffer import is_buffer_var

from tvm_patch.errors import TVM_ERRORS
from tvm_patch.export.inplace import Access, UnmodelledTIR, ordered_accesses
from tvm_patch.export.patterns import const_shape
from tvm_patch.patch.schedule import eval_int_expr

__all__ = ["shifted_inplace_pairs"]

MAX_ITERATIONS = 64_000_000  # the enumeration's budget (loads x iterations); larger kernels are not proven
CHUNK = 1 << 20  # elements evaluated at once: the enumeration runs over blocks of the outer loops' values


def _opaque(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """Indices in loop variables: blocks made opaque (their iterators replaced by the loops' expressions)."""
    passes = [s_tir.transform.LowerInitBlock(), s_tir.transform.ConvertBlocksToOpaque()]
    return tvm.transform.Sequential(passes)(tvm.IRModule({"main": func}))["main"]


def _accesses(func: tirx.PrimFunc, bufs: set) -> list[Access] | None:
    """Every access to `bufs` in program order (``inplace.ordered_accesses``); None for unmodelled TIR."""
    try:
        return [a for a in ordered_accesses(func.body) if any(a.buffer.same_as(b) for b in bufs)]
    except UnmodelledTIR:
        return None


def _flat(indices: list, shape: tuple[int, ...], env: dict) -> np.ndarray:
    addr = np.int64(0)
    for i, d in zip(indices, shape):
        addr = addr * d + eval_int_expr(i, env)
    return addr


def shifted_inplace_pairs(func: tirx.PrimFunc, n_outputs: int, alignment: int = 16) -> list[tuple[int, int, int]]:
    """(input param, output param, shift in bytes < 0) for a single-output kernel whose output may start
    -shift bytes before that input (see the module docstring); [] when not proven."""
    params = list(func.params)
    if n_outputs != 1 or not all(is_buffer_var(p) for p in params):
        return []
    out = params[-1]
    o_shape = const_shape(out)
    if o_shape is None:
        return []
    try:
        lowered = _opaque(func)
    except TVM_ERRORS:
        return []
    lparams = list(lowered.params)
    found = []
    for si, src in enumerate(lparams[:-1]):
        s_shape = const_shape(params[si])
        if s_shape is None or len(s_shape) != len(o_shape) or math.prod(o_shape) > math.prod(s_shape) \
                or str(src.ty.dtype) != str(lparams[-1].ty.dtype):
            continue
        try:
            need = _measure(lowered, src, lparams[-1], s_shape, o_shape)
        except (KeyError, NotImplementedError):  # an index with variables other than the loops'
            need = None
        if need is not None:  # need <= 0: at the input's own offset (a strided layer's smaller output)
            item = tvm.runtime.DataType(str(src.ty.dtype)).bits // 8
            found.append((si, len(params) - 1, -(-(-(max(need, 0) * item) // alignment) * alignment)))
    return found


def _measure(func: tirx.PrimFunc, src: Any, dst: Any, shape: tuple[int, ...],
             o_shape: tuple[int, ...]) -> int | None:
    """The smallest S (elements; <= 0: none needed) such that dst placed S elements before src is never read
    after being written, or None when the kernel's form is not the modelled one."""
    acc = _accesses(func, {src, dst})
    if acc is None:
        return None
    stores = [a for a in acc if a.store and a.buffer.same_as(dst)]
    if len(stores) != 1 or any(a.store and a.buffer.same_as(src) for a in acc) or any(
            not a.store and a.buffer.same_as(dst) for a in acc):
        return None
    w = stores[0]
    w_idx, w_all, w_order, w_guarded = w.indices, w.loops, w.order, w.guarded
    reads = [a for a in acc if not a.store]
    if w_guarded or not reads:
        return None
    # the iterations: the loops the store shares with every load (the store's own further loops must be unit
    # loops, e.g. an epilogue computed at the reduction's spatial loop)
    common = len(w_all)
    for r in reads:
        n = 0
        while n < min(common, len(r.loops)) and r.loops[n].same_as(w_all[n]):
            n += 1
        common = n
    if any(int(lp.extent) != 1 for lp in w_all[common:]):
        return None
    w_loops = w_all[:common]
    units = {lp.loop_var: np.int64(int(lp.min)) for lp in w_all[common:]}
    n_iter = math.prod(int(lp.extent) for lp in w_loops)
    if n_iter != math.prod(o_shape):
        return None  # each output element written once, by one iteration of the store's loops
    ranges = [np.arange(int(lp.min), int(lp.min) + int(lp.extent)) for lp in w_loops]
    grids = np.meshgrid(*ranges, indexing="ij")
    env = {lp.loop_var: g for lp, g in zip(w_loops, grids)} | units
    write = np.broadcast_to(_flat(w_idx, o_shape, env), grids[0].shape).reshape(-1)
    if len(np.unique(write)) != write.size:
        return None
    earliest = np.full(write.size, np.iinfo(np.int64).max)
    for r in reads:
        r_idx, r_loops, r_order = r.indices, r.loops, r.order
        if len(r_loops) < len(w_loops) or not all(a.same_as(b) for a, b in zip(r_loops, w_loops)) or r_order > w_order:
            return None  # every load inside the store's iteration, before the store
        inner = r_loops[len(w_loops):]
        n_inner = math.prod(int(lp.extent) for lp in inner)
        if n_iter * n_inner > MAX_ITERATIONS:
            return None
        earliest = np.minimum(earliest, _earliest_reads(r_idx, shape, w_loops, inner, units))
    later = np.minimum.accumulate(earliest[::-1])[::-1]  # the lowest address read from iteration i on
    if write.size < 2:
        return None
    return int((write[:-1] - later[1:]).max()) + 1  # write[i] - S < later[i + 1] for every i


def _earliest_reads(r_idx: list, shape: tuple[int, ...], w_loops: list, inner: list, units: dict) -> np.ndarray:
    """Per iteration of `w_loops` (row-major), the lowest flat address the load reads over its `inner` loops
    (a masked, padding read counts too: conservative). Evaluated over blocks of the outer loops' values, at
    most about `CHUNK` elements at once, so a large layer is enumerated in bounded memory."""
    loops = [*w_loops, *inner]
    ranges = [np.arange(int(lp.min), int(lp.min) + int(lp.extent)) for lp in loops]
    m = 0  # the first m loops run in Python, the rest as one numpy grid per block
    while m < len(w_loops) and math.prod(len(r) for r in ranges[m:]) > CHUNK:
        m += 1
    n_rest = math.prod(len(r) for r in ranges[m:len(w_loops)])
    n_inner = math.prod(len(r) for r in ranges[len(w_loops):])
    out = []
    for head in itertools.product(*ranges[:m]):
        full = np.meshgrid(*[np.array([h]) for h in head], *ranges[m:], indexing="ij")
        env = {lp.loop_var: g for lp, g in zip(loops, full)} | units
        addr = np.broadcast_to(_flat(r_idx, shape, env), full[0].shape).reshape(n_rest, n_inner)
        out.append(addr.min(axis=1))
    return np.concatenate(out)
