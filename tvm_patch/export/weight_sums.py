"""The weight-sum tables of padded convolutions' border taps (codegen/weight_sums.py): which kernels may have
them, and the constants every call passes for them.

``mark_sums`` lists, per kernel, the int8 parameters that are constants in every call (``SUMS_ATTR``); the C
emission tables the border taps over those it can and appends one int32 parameter per table
(``CFunction.weight_sums``: weight parameter, row length, pad); ``sum_constants`` gives each call the table of
its own weights, as the C parameter lays them out (``padded_layout``: rows padded with zeros sum the same).
Flash: 4 bytes per weight row of a tap (per output channel and tap of a k x k convolution), counted with the
other constants.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from tvm_patch.codegen.c_kernels import CFunction
from tvm_patch.codegen.weight_sums import SUMS_ATTR, table_sums
from tvm_patch.codegen.wide_weights import padded_layout
from tvm_patch.errors import TvmPatchError
from tvm_patch.export.lower import Arg, Program
from tvm_patch.export.wide_weights import int8_constant_params

__all__ = ["mark_sums", "sum_constants"]


def mark_sums(prog: Program, funcs: Mapping[str, object]) -> dict[str, object]:
    """``funcs`` with each kernel's int8 parameters that are constants in every call listed (``SUMS_ATTR``)."""
    out = dict(funcs)
    for name, func in funcs.items():
        consts = int8_constant_params(prog, name)
        if consts:
            out[name] = func.with_attr(SUMS_ATTR, consts)
    return out


def sum_constants(prog: Program, functions: Mapping[str, CFunction]) -> tuple[Program, dict[str, int]]:
    """``prog`` with every call of a kernel with weight-sum tables passing them (new constants, after its other
    arguments), each computed from the weight constant that call passes; and each such kernel's tables' Flash bytes
    (a table counts for the first kernel that takes it)."""
    consts = list(prog.constants)
    made: dict[tuple[int, int, int, tuple[int, ...]], int] = {}
    table_bytes: dict[str, int] = {}
    calls = []
    for call in prog.calls:
        fn = functions.get(call.func)
        if fn is None or not fn.weight_sums:
            calls.append(call)
            continue
        args = list(call.args)
        for src, n, pad in fn.weight_sums:
            a = call.args[src]
            if a.kind != "const":
                raise TvmPatchError(f"{call.func}: the weight-sum table of parameter {src} needs a constant there")
            shape = tuple(fn.params[src].shape or ())
            key = (a.index, n, pad, shape)
            if key not in made:
                consts.append(table_sums(padded_layout(consts[a.index], shape), n, pad))
                made[key] = len(consts) - 1
                table_bytes[call.func] = table_bytes.get(call.func, 0) + int(consts[-1].nbytes)
            args.append(Arg("const", made[key]))
        calls.append(dataclasses.replace(call, args=tuple(args)))
    return (prog.with_constants(consts, calls, set()), table_bytes) if made else (prog, {})
