"""Which kernels store their weights widened to int16 (codegen/wide_weights.py), and those constants.

The export lets a kernel widen the int8 parameters that are constants in every call (``mark_wide``); the C
emission widens those only its dot micro-kernels read; the C interface says which (an int16 parameter), and
``widen_constants`` stores each such call's constant in the widened layout. Twice those weights' Flash, so the
choice is the caller's: per kernel name (``wide``), ``board_build`` widening as many as the board's Flash holds.
A kernel's best blocking depends on that form, so tuning records key a kernel by it too (``weights_key``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from tvm_patch.codegen.c_kernels import CFunction
from tvm_patch.codegen.wide_weights import WIDEN_ATTR, padded_layout, widened_layout
from tvm_patch.export.lower import Arg, Program


INT8_WEIGHTS_ATTR = "tvmp.int8_weights"  # on a tuning workload: the kernel's weights stay int8


def weights_key(func: Any, widened: bool) -> Any:
    """``func`` (a kernel before blocking) as tuning records key it: marked when its weights stay int8, since its
    best blocking depends on their form (the F412's int8 one-pixel 1x1 kernels of mcunet-in0 in kernels round 28:
    two rows beat the default four on one, lost on three; docs/tuning.md)."""
    return func if widened else func.with_attr(INT8_WEIGHTS_ATTR, True)


def keyed_by_weights(choose: Any, wide: Callable[[str], bool] | None) -> Any:
    """A per-kernel choice (a callable (name, PrimFunc before blocking), as a tuning database's) asked with the
    PrimFunc keyed by the form ``wide`` gives that kernel's weights (``weights_key``); any other choice as is."""
    if not callable(choose):
        return choose
    return lambda name, func: choose(name, weights_key(func, wide is not None and wide(name)))


def int8_constant_params(prog: Program, name: str) -> list[int]:
    """The parameter positions of kernel ``name`` that every call of it passes an int8 constant (its weights)."""
    calls = [c for c in prog.calls if c.func == name]
    if not calls:
        return []
    return [p for p in range(len(calls[0].args))
            if all(c.args[p].kind == "const" and prog.constants[c.args[p].index].dtype == np.int8 for c in calls)]


def mark_wide(prog: Program, funcs: Mapping[str, object], wide: Callable[[str], bool]) -> dict[str, object]:
    """``funcs`` with each kernel ``wide`` names allowed to widen its int8 parameters that are constants in every
    call (the ``WIDEN_ATTR`` attribute; the C emission decides which it can)."""
    out = dict(funcs)
    for name, func in funcs.items():
        consts = int8_constant_params(prog, name) if wide(name) else []
        if consts:
            out[name] = func.with_attr(WIDEN_ATTR, consts)
    return out


def widen_constants(prog: Program, functions: Mapping[str, CFunction]) -> tuple[Program, dict[str, int]]:
    """``prog`` with every constant an int16 C parameter takes stored widened (a new constant where another call
    still reads it as int8; the int8 one dropped where none does), its rows padded to the parameter's shape
    (depthwise rows, ``widened_layout``), and every int8 one whose parameter has more elements stored with its
    rows padded (``padded_layout``: pad_rows.py); and each widened kernel's extra Flash bytes (the widened
    constant's size less the int8 one's: the widened first use of a constant counts it)."""
    consts = list(prog.constants)
    made: dict[tuple[int, tuple[int, ...], bool], int] = {}
    extra: dict[str, int] = {}
    calls = []
    for call in prog.calls:
        params = functions[call.func].params if call.func in functions else ()
        args = list(call.args)
        for p, a in enumerate(args):
            if a.kind != "const" or p >= len(params) or consts[a.index].dtype != np.int8:
                continue
            shape = tuple(params[p].shape or ())
            widen = params[p].dtype == "int16"
            if not widen and (params[p].dtype != "int8" or not shape or math.prod(shape) == consts[a.index].size):
                continue  # as it is
            key = (a.index, shape, widen)
            if key not in made:  # widened (and its rows padded), or only padded (pad_rows.py)
                consts.append(widened_layout(consts[a.index], shape) if widen else padded_layout(consts[a.index], shape))
                made[key] = len(consts) - 1
                if widen:
                    extra[call.func] = extra.get(call.func, 0) + int(consts[-1].nbytes - consts[a.index].nbytes)
            args[p] = Arg("const", made[key])
        calls.append(dataclasses.replace(call, args=tuple(args)))
    if not made:
        return prog, {}
    return prog.with_constants(consts, calls, {i for i, _, _ in made}), extra
