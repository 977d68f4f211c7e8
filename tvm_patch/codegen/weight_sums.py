"""A padded convolution's border taps from a table of weight sums in Flash instead of summing weights at run time.

Where a border tap reads the pad value (the input zero point: -128 after a ReLU in TFLite's int8 models), the
micro-kernel rewrite adds ``pad * sum(weight row)`` for it (``tvmp_pad_rows``, ``tvmp_pad_rows_w``, or
``pad * tvmp_sum_s8`` in the one-row case): the same sum again for every border pixel, ``n`` loads and adds a row.
Measured on resnet8 (emulated M7): 3.2 M of its 17.1 M instructions, 1.56 M of its 8 x 8, 64-channel layer's 3.64 M.
Those sums depend only on the weights, so a table ``S[r] = pad * sum(W[r * n : (r + 1) * n])`` holds them, one
int32 per weight row of the tap's length (4 bytes per output channel and tap), and each border tap becomes a load
and an add a row (``tvmp_pad_sums``). Exact: the same integer added.

The table is a new trailing parameter of the kernel (before its workspace), which the export fills for every call
from that call's weight constant (``export/weight_sums.py``): the export lists the int8 parameters that are
constants in every call (``SUMS_ATTR``); this pass tables the ones whose border taps start rows at multiples of
``n`` with row strides multiple of ``n``, and records each new parameter as (weight parameter, n, pad) in
``SUM_TABLES_ATTR`` (``CFunction.weight_sums``). After ``WidenWeights``: a widened row of four-groups has the same
sum.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import tvm
import tvm_ffi
from tvm import tirx

from tvm_patch.codegen.micro_kernels import PAD_ROWS, SUM, _extern_name
from tvm_patch.codegen.pad_rows import _const, _operand
from tvm_patch.codegen.wide_weights import WIDE_CALLS, param_views

__all__ = ["PAD_SUMS", "SUMS_ATTR", "SUM_TABLES_ATTR", "WeightSums", "table_sums", "weight_sums"]

SUMS_ATTR = "tvmp.weight_sums"  # the int8 parameter positions that are constants in every call (the export's)
SUM_TABLES_ATTR = "tvmp.weight_sum_tables"  # each appended parameter: (weight parameter, row length n, pad)
PAD_SUMS = "tvmp_pad_sums"
_PAD_ROW_CALLS = (PAD_ROWS, WIDE_CALLS[PAD_ROWS][0])  # int8 and widened weights


def table_sums(weights: np.ndarray, n: int, pad: int) -> np.ndarray:
    """The table of ``weights`` (flat, as the kernel's parameter stores them) for rows of ``n``: ``pad`` times each
    row's sum, int32."""
    flat = np.asarray(weights).reshape(-1).astype(np.int64)
    if flat.size % n:
        raise ValueError(f"{flat.size} weights are not rows of {n}")
    return (pad * flat.reshape(-1, n).sum(axis=1)).astype(np.int32)


class _Tables:
    """The tables a function gets, one per (weight parameter, n, pad), created as the rewrite asks for them."""

    def __init__(self, func: tirx.PrimFunc, allowed: set[int]) -> None:
        self.func = func
        self.by_view = {v: i for i, vs in param_views(func).items() if i in allowed for v in vs}
        self.made: dict[tuple[int, int, int], Any] = {}
        self.ana = tvm.sym.Analyzer()

    def entry(self, w_ptr: Any, n: int | None, pad: int | None) -> tuple[Any, Any] | None:
        """(table buffer, row index) for a border tap's weight pointer over rows of ``n``, else None."""
        load = _operand(w_ptr)
        pos = next((i for v, i in self.by_view.items() if load is not None and load.source.same_as(v)), None)
        if pos is None or n is None or n <= 0 or pad is None:
            return None
        numel = math.prod(int(d) for d in self.func.params[pos].ty.shape)
        index = load.indices[0]
        if numel % n or not self.ana.can_prove_equal(tirx.floormod(index, n), 0):
            return None
        key = (pos, n, pad)
        if key not in self.made:
            name = f"{self.func.params[pos].name}_sums{len(self.made)}"
            self.made[key] = tirx.decl_buffer([numel // n], "int32", name)
        return self.made[key], self.ana.simplify(tirx.floordiv(index, n))


def _rewritten(body: Any, tables: _Tables) -> Any:
    def on_call(c: Any) -> Any:
        if _extern_name(c) not in _PAD_ROW_CALLS:
            return c
        pad, w_ptr, ws, n, rows, acc = list(c.args)[1:]
        stride, length = _const(ws), _const(n)
        found = tables.entry(w_ptr, length, _const(pad))
        if found is None or stride is None or stride % length:
            return c
        table, row = found
        return tirx.call_extern("void", PAD_SUMS, tirx.address_of(tirx.BufferLoad(table, [row])),
                                tirx.const(stride // length, "int32"), rows, acc)

    def on_mul(m: Any) -> Any:  # pad * tvmp_sum_s8(w, n): one row
        for pad, s in ((m.a, m.b), (m.b, m.a)):
            if isinstance(s, tvm.ir.Call) and _extern_name(s) == SUM:
                w_ptr, n = list(s.args)[1:]
                found = tables.entry(w_ptr, _const(n), _const(pad))
                if found is not None:
                    return tirx.BufferLoad(found[0], [found[1]])
        return m

    return tvm_ffi.structural_map(body, [(tvm.ir.Call, on_call), (tirx.Mul, on_mul)])


def weight_sums(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """``func`` with its border taps on weights listed in ``SUMS_ATTR`` reading sum tables (new trailing
    parameters, ``SUM_TABLES_ATTR``); unchanged without the attribute or such taps."""
    if func.attrs is None or SUMS_ATTR not in func.attrs:
        return func
    tables = _Tables(func, {int(i) for i in func.attrs[SUMS_ATTR]})
    body = _rewritten(func.body, tables)
    if not tables.made:
        return func
    spec = [[tirx.IntImm("int32", v) for v in key] for key in tables.made]
    out = tirx.PrimFunc([*func.params, *tables.made.values()], body, ret_type=None, attrs=func.attrs)
    return out.with_attr(SUM_TABLES_ATTR, spec)


def WeightSums() -> tvm.transform.Pass:  # noqa: N802 (TVM's naming of passes)
    """The pass form of ``weight_sums``, after ``WidenWeights`` in the plain-C lowering."""
    return tirx.transform.prim_func_pass(lambda f, _m, _c: weight_sums(f), opt_level=0,
                                         name="tvm_patch.WeightSums")
