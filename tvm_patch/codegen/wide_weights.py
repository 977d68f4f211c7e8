"""Weights stored widened to int16 in Flash, in the order the SMLAD paths read them.

The dot micro-kernels (``tvmp_dot_s8_rows{J}``, ``tvmp_dot_s8_px2_rows{J}``, ``tvmp_dot_q15[_px2]_rows{J}``) load
each int8 weight word and sign-extend it twice (SXTB16 and SXTB16 ror 8) into the halfword pairs (w0, w2) and
(w1, w3) that SMLAD multiplies; every pixel (pair) of a layer does it again for every weight. Stored as int16 in
that order, four weights (w0, w1, w2, w3) as (w0, w2, w1, w3), the two words are one LDRD and the SXTB16 go:
measured on the emulated M7 (docs/kernels.md, round 16) 9-16 % fewer instructions in mcunet-in0's 1x1 layers
and up to a third in the one-pixel rows kernels. Twice those weights' Flash, so the export asks for it per
kernel (``WIDEN_ATTR``, a list of parameter positions: constants the board's Flash can afford).

``widen_weights`` widens a listed int8 parameter where every read of it is the weight operand of one of those
calls at an element offset, a row stride and a length that are multiples of four, so each call's row starts a
group of four (a padded convolution's border taps, ``tvmp_pad_rows``, sum the same rows: the same weights); the
calls become ``tvmp_dot_s8w_*`` / ``tvmp_dot_q15w_*`` / ``tvmp_pad_rows_w`` (tvmp_kernels.h) and the parameter
int16 (the C emission's parameter type, so the export knows to store that constant widened: ``widened_layout``).
Exact: the same products in the same sums; only the weights' storage and loads change.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tvm
import tvm_ffi
from tvm import tirx
from tvm.ir.expr import TensorLoad

from tvm_patch.codegen.micro_kernels import PAD_ROWS, PX2_ROWS, ROWS, _extern_name, _int
from tvm_patch.codegen.widen_kernels import Q15_PX2_ROWS, Q15_ROWS

WIDEN_ATTR = "tvmp.widen_weights"  # the parameter positions the export allows to store widened
# each dot kernel: its widened-weights twin and the position of its weight operand (w, then ws, then n)
WIDE_CALLS: dict[str, tuple[str, int]] = {
    **{name: (name.replace("_s8_rows", "_s8w_rows"), 1) for name in ROWS.values()},
    **{name: (name.replace("_s8_px2", "_s8w_px2"), 2) for name in PX2_ROWS.values()},
    **{name: (name.replace("_q15_px2", "_q15w_px2"), 1) for name in Q15_PX2_ROWS.values()},
    **{name: (name.replace("_q15_rows", "_q15w_rows"), 1) for name in Q15_ROWS.values()},
    PAD_ROWS: (PAD_ROWS + "_w", 1),  # a blocked border tap's weight sums (pad, w, ws, n, rows, acc)
}


def widened_layout(weights: np.ndarray) -> np.ndarray:
    """An int8 constant as the widened kernels read it: flat int16, each four (w0, w1, w2, w3) as (w0, w2, w1, w3)."""
    flat = np.asarray(weights).reshape(-1)
    if flat.dtype != np.int8 or flat.size % 4:
        raise ValueError(f"widened weights need int8 in groups of four, got {flat.dtype} x {flat.size}")
    return flat.reshape(-1, 4)[:, [0, 2, 1, 3]].reshape(-1).astype(np.int16)


def _multiple_of_4(expr: Any, ana: tvm.sym.Analyzer) -> bool:
    value = _int(expr.value) if isinstance(expr, tirx.Cast) and isinstance(expr.value, tirx.IntImm) else _int(expr)
    if value is not None:
        return value % 4 == 0
    mod = ana.modular_set(expr)
    return int(mod.coeff) % 4 == 0 and int(mod.base) % 4 == 0 and int(mod.coeff) != 0


def _views(func: tirx.PrimFunc) -> dict[int, list[Any]]:
    """{parameter position: the buffers declared over its data (FlattenBuffer's flat views)}."""
    views: dict[int, list[Any]] = {}

    def on_decl(d: Any) -> tvm_ffi.WalkResult:
        for i, p in enumerate(func.params):
            if d.data is not None and tvm_ffi.structural_equal(d.data, p.data, map_free_vars=False):
                views.setdefault(i, []).append(d.buffer)
        return tvm_ffi.WalkResult.ADVANCE

    tvm_ffi.structural_walk(func.body, [(tirx.DeclBuffer, on_decl)], order="pre")
    return views


def _wide_operand(c: Any, ana: tvm.sym.Analyzer) -> Any | None:
    """The weight load of a dot call the widened kernels can take (its offset, row stride and length multiples
    of four), else None."""
    name = _extern_name(c)
    if name not in WIDE_CALLS:
        return None
    w, ws, n = list(c.args)[1 + WIDE_CALLS[name][1]: 4 + WIDE_CALLS[name][1]]
    load = w.args[0] if isinstance(w, tvm.ir.Call) and w.args and isinstance(w.args[0], TensorLoad) else None
    if load is None or len(load.indices) != 1 or not all(_multiple_of_4(e, ana) for e in (load.indices[0], ws, n)):
        return None
    return load


def _rewritten(body: Any, swap: dict[Any, tuple[Any, Any]]) -> Any:
    """``body`` with each dot call on one of ``swap``'s views (at a multiple of four) on its widened twin and
    the int16 view; every other read left as it was."""
    ana = tvm.sym.Analyzer()

    def on_call(c: Any) -> Any:
        load = _wide_operand(c, ana)
        new = next((v for old, v in swap.items() if load is not None and load.source.same_as(old)), None)
        if new is None:
            return c
        args = list(c.args)[1:]
        pos = WIDE_CALLS[_extern_name(c)][1]
        args[pos] = tirx.address_of(tirx.BufferLoad(new[0], list(load.indices)))
        return tirx.call_extern("void", WIDE_CALLS[_extern_name(c)][0], *args)  # the dot kernels return nothing

    return tvm_ffi.structural_map(body, [(tvm.ir.Call, on_call)])


def _still_read(body: Any, bufs: list[Any]) -> set[int]:
    """The positions in ``bufs`` of the buffers some load in ``body`` still reads."""
    hit: set[int] = set()

    def on_load(ld: Any) -> tvm_ffi.WalkResult:
        hit.update(i for i, b in enumerate(bufs) if ld.source.same_as(b))
        return tvm_ffi.WalkResult.ADVANCE

    tvm_ffi.structural_walk(body, [(TensorLoad, on_load)], order="pre")
    return hit


def widen_weights(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """``func`` with each parameter listed in its ``WIDEN_ATTR`` that only widenable dot calls read stored as
    int16 (``widened_layout``), those calls on the widened kernels; unchanged without the attribute."""
    if func.attrs is None or WIDEN_ATTR not in func.attrs:
        return func
    views = _views(func)
    chosen = {i for i in (int(x) for x in func.attrs[WIDEN_ATTR])
              if i < len(func.params) and str(func.params[i].ty.dtype) == "int8" and i in views}
    while chosen:  # a parameter some other read still takes after the rewrite keeps its int8 storage
        params16 = {i: tirx.decl_buffer([int(d) for d in func.params[i].ty.shape], "int16", func.params[i].name)
                    for i in chosen}
        swap = {v: (tirx.decl_buffer([int(d) for d in v.ty.shape], "int16", v.name), params16[i])
                for i in chosen for v in views[i]}
        body = _rewritten(func.body, swap)
        old = [(i, b) for i in sorted(chosen) for b in (func.params[i], *views[i])]
        kept = {old[k][0] for k in _still_read(body, [b for _, b in old])}
        untouched = {i for i in chosen if not any(v.same_as(new[0]) for v in _views_read(body) for new in
                                                  (swap[w] for w in views[i]))}
        if kept or untouched:
            chosen -= kept | untouched
            continue

        def on_decl(d: Any) -> Any:
            new = next((v for o, v in swap.items() if d.buffer.same_as(o)), None)
            return d if new is None else tirx.DeclBuffer(new[0], data=new[1].data)

        body = tvm_ffi.structural_map(body, [(tirx.DeclBuffer, on_decl)])
        params = [params16.get(i, p) for i, p in enumerate(func.params)]
        return tirx.PrimFunc(params, body, ret_type=None, attrs=func.attrs)
    return func


def _views_read(body: Any) -> list[Any]:
    """Every buffer some load in ``body`` reads."""
    out: list[Any] = []
    tvm_ffi.structural_walk(body, [(TensorLoad, lambda ld: out.append(ld.source) or tvm_ffi.WalkResult.ADVANCE)],
                            order="pre")
    return out


def WidenWeights() -> tvm.transform.Pass:  # noqa: N802 (TVM's naming of passes)
    """The pass form of ``widen_weights``, after ``WidenPixelPairs`` in the plain-C lowering."""
    return tirx.transform.prim_func_pass(lambda f, _m, _c: widen_weights(f), opt_level=0,
                                         name="tvm_patch.WidenWeights")
