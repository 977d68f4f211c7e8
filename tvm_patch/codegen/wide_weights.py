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
Depthwise weights read only by ``tvmp_window4_s8`` calls over kernel rows of kw % 4 == 3 taps (7x7) and by
``tvmp_window2_s8`` calls over rows of kw % 4 == 1 or 3 (5x5, 7x7) become the widened twins' layout (``tvmp_window4_s8w``,
``tvmp_window2_s8w``): each row padded with zeros to a multiple of four, then as above (the parameter's last axis
padded too, which tells the export). Exact: the same products in the same sums; only the weights'
storage and loads change.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import tvm
import tvm_ffi
from tvm import tirx
from tvm.ir.expr import TensorLoad

from tvm_patch.codegen.micro_kernels import PAD_ROWS, PX2_ROWS, ROWS, _extern_name, _int
from tvm_patch.codegen.widen_kernels import Q15_PX2_ROWS, Q15_ROWS
from tvm_patch.codegen.window_blocks import WINDOW2, WINDOW4

WIDEN_ATTR = "tvmp.widen_weights"  # the parameter positions the export allows to store widened
# each dot kernel: its widened-weights twin and the position of its weight operand (w, then ws, then n)
WIDE_CALLS: dict[str, tuple[str, int]] = {
    **{name: (name.replace("_s8_rows", "_s8w_rows"), 1) for name in ROWS.values()},
    **{name: (name.replace("_s8_px2", "_s8w_px2"), 2) for name in PX2_ROWS.values()},
    **{name: (name.replace("_q15_px2", "_q15w_px2"), 1) for name in Q15_PX2_ROWS.values()},
    **{name: (name.replace("_q15_rows", "_q15w_rows"), 1) for name in Q15_ROWS.values()},
    PAD_ROWS: (PAD_ROWS + "_w", 1),  # a blocked border tap's weight sums (pad, w, ws, n, rows, acc)
}


def padded_layout(weights: np.ndarray, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """An int8 constant in the layout of a C parameter of ``shape``: as it is where the element counts agree, else
    as rows of ``shape[-1]`` (``prod(shape[:-1])`` of them), each of its rows padded with zeros to that length (a
    depthwise kernel row of 7 taps stored as 8, a stem's 27 weights as 28: pad_rows.py)."""
    arr = np.asarray(weights)
    if shape is None or not len(shape) or int(np.prod(shape)) == arr.size:
        return arr
    rows = int(np.prod(shape[:-1]))
    if arr.size % rows or arr.size // rows > shape[-1]:
        raise ValueError(f"a constant of {arr.size} elements cannot be stored as {rows} rows of {shape[-1]}")
    flat = arr.reshape(rows, -1)
    return np.pad(flat, [(0, 0), (0, shape[-1] - flat.shape[1])]).reshape(shape)


def widened_layout(weights: np.ndarray, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """An int8 constant as the widened kernels read it: flat int16, each four (w0, w1, w2, w3) as (w0, w2, w1, w3);
    with ``shape`` (the widened C parameter's) its rows first padded to it (``padded_layout``: a depthwise row of
    7 taps as 8, its last four (w4, w6, w5, 0))."""
    flat = padded_layout(weights, shape).reshape(-1)
    if flat.dtype != np.int8 or flat.size % 4:
        raise ValueError(f"widened weights need int8 in groups of four, got {flat.dtype} x {flat.size}")
    return flat.reshape(-1, 4)[:, [0, 2, 1, 3]].reshape(-1).astype(np.int16)


WINDOW4_W = WINDOW4 + "w"  # tvmp_window4_s8w: (p, pb, d, sy, sx, w, wb, wy, wx, kh, kw, acc) as tvmp_window4_s8
WINDOW2_W = WINDOW2 + "w"  # tvmp_window2_s8w: the same arguments as tvmp_window2_s8
# the window calls whose rows of kw taps (kw % 4 one of the values) have a widened twin: 7-wide quads, 5- and
# 7-wide pairs
WIDE_WINDOWS = {WINDOW4: ((3,), WINDOW4_W), WINDOW2: ((1, 3), WINDOW2_W)}


def _padded_row(kw: int) -> int:
    """A widened depthwise kernel row's int16 for ``kw`` taps: padded to a multiple of four."""
    return (kw + 3) // 4 * 4


def _multiple_of_4(expr: Any, ana: tvm.sym.Analyzer) -> bool:
    value = _int(expr.value) if isinstance(expr, tirx.Cast) and isinstance(expr.value, tirx.IntImm) else _int(expr)
    if value is not None:
        return value % 4 == 0
    mod = ana.modular_set(expr)
    return int(mod.coeff) % 4 == 0 and int(mod.base) % 4 == 0 and int(mod.coeff) != 0


def param_views(func: tirx.PrimFunc) -> dict[int, list[Any]]:
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


def _window_operand(c: Any, ana: tvm.sym.Analyzer) -> tuple[Any, int, int] | None:
    """(weight load, kh, kw) of a window call its widened twin can take (``WIDE_WINDOWS``: ``tvmp_window4_s8`` over
    rows of kw % 4 == 3 taps, ``tvmp_window2_s8`` over kw % 4 == 1 or 3): contiguous taps (wx 1, wy kw), the window's
    base wb a multiple of kh x kw (a channel's kernel), else None."""
    if _extern_name(c) not in WIDE_WINDOWS:
        return None
    args = list(c.args)[1:]
    w, wb, wy, wx, kh, kw = args[5:11]
    kh, kw = _int(kh), _int(kw)
    load = w.args[0] if isinstance(w, tvm.ir.Call) and w.args and isinstance(w.args[0], TensorLoad) else None
    if (load is None or len(load.indices) != 1 or _int(load.indices[0]) != 0 or kh is None or kw is None
            or kw % 4 not in WIDE_WINDOWS[_extern_name(c)][0] or _int(wx) != 1 or _int(wy) != kw
            or not ana.can_prove_equal(tirx.floormod(wb, kh * kw), 0)):
        return None
    return load, kh, kw


def _rewritten(body: Any, swap: dict[Any, tuple[Any, Any]]) -> Any:
    """``body`` with each dot call on one of ``swap``'s views (at a multiple of four) on its widened twin and
    the int16 view, each window call on one whose rows are padded (``_window_operand``) on its widened twin
    (``WIDE_WINDOWS``); every other read left as it was."""
    ana = tvm.sym.Analyzer()

    def on_call(c: Any) -> Any:
        window = _window_operand(c, ana)
        if window is not None:
            load, kh, kw = window
            new = next((v for old, v in swap.items() if load.source.same_as(old)), None)
            if new is None or int(new[1].shape[-1]) != _padded_row(kw):
                return c
            args = list(c.args)[1:]
            args[5] = tirx.address_of(tirx.BufferLoad(new[0], [tirx.const(0, "int32")]))
            args[6] = ana.simplify(tirx.floordiv(args[6], kh * kw) * (kh * _padded_row(kw)))
            args[7] = tirx.const(_padded_row(kw), "int32")
            return tirx.call_extern("void", WIDE_WINDOWS[_extern_name(c)][1], *args)
        load = _wide_operand(c, ana)
        new = next((v for old, v in swap.items() if load is not None and load.source.same_as(old)), None)
        if new is None or _numel(new[0]) != _numel(load.source):
            return c  # (a parameter widened with padded rows: the dot kernels read the plain layout)
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
    views = param_views(func)
    chosen = {i for i in (int(x) for x in func.attrs[WIDEN_ATTR])
              if i < len(func.params) and str(func.params[i].ty.dtype) == "int8" and i in views}
    rows = _window_rows(func.body)
    while chosen:  # a parameter some other read still takes after the rewrite keeps its int8 storage
        shapes = {i: [int(d) for d in func.params[i].ty.shape] for i in chosen}
        for i in chosen:  # read by window calls with widened twins: each kernel row padded to a multiple of four
            kws = {kw for v in views[i] for b, kw in rows if b.same_as(v)}
            if len(kws) == 1 and shapes[i][-1] in kws and all(len(v.ty.shape) == 1 for v in views[i]):
                shapes[i][-1] = _padded_row(shapes[i][-1])
        params16 = {i: tirx.decl_buffer(shapes[i], "int16", func.params[i].name) for i in chosen}
        swap = {v: (tirx.decl_buffer([_numel(params16[i])] if len(v.ty.shape) == 1 else [int(d) for d in v.ty.shape],
                                     "int16", v.name), params16[i])
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


def _numel(buf: Any) -> int:
    return math.prod(int(d) for d in buf.shape)


def _window_rows(body: Any) -> list[tuple[Any, int]]:
    """(weights view, kw) of every window call in ``body`` that its widened twin can take (``WIDE_WINDOWS``)."""
    ana = tvm.sym.Analyzer()
    out: list[tuple[Any, int]] = []

    def on_call(c: Any) -> tvm_ffi.WalkResult:
        found = _window_operand(c, ana)
        if found is not None:
            out.append((found[0].source, found[2]))
        return tvm_ffi.WalkResult.ADVANCE

    tvm_ffi.structural_walk(body, [(tvm.ir.Call, on_call)], order="pre")
    return out


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
