"""Small Relax helpers shared by the passes and the analyses, defined once."""

from __future__ import annotations

from typing import Any

from tvm import ir

__all__ = ["call_tir_name", "ints", "op_name"]


def op_name(call: Any) -> str:
    """The operator of a call: 'relax.<op>' for an operator, the callee's name for a GlobalVar, else its type."""
    op = getattr(call, "op", None)
    if isinstance(op, ir.Op):
        return op.name
    if isinstance(op, ir.GlobalVar):
        return op.name_hint
    return type(op).__name__


def call_tir_name(call: Any) -> str:
    """The PrimFunc name a ``call_tir`` calls, as written (TVM may have suffixed it, e.g. 'maximum1')."""
    gv = call.args[0]
    return gv.name_hint if isinstance(gv, ir.GlobalVar) else str(gv)


def ints(values: Any) -> list[int]:
    """A list of Python ints from an attribute array of IntImms."""
    return [int(v) for v in values]
