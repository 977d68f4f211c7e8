"""The table of lowerings: Relax op name -> function lowering a quantized chain that ends in that op.

Each op-family module registers its lowerings with `register`; `Lowerer` (chain.py) looks the op of a
chain up here, and an op with no entry is an `UnsupportedOpError` naming the op and the binding."""

from __future__ import annotations

from typing import Any, Callable

from tvm_patch.transform.lower_to_integer.values import FOp, Pending, QCtx


Lowering = Callable[[Any, QCtx, FOp], Pending]
"""(lowerer, the quantize ending the chain, the chain's last float op) -> the integer result."""

LOWERINGS: dict[str, Lowering] = {}


def register(*ops: str) -> Callable[[Lowering], Lowering]:
    """Decorator: `fn` lowers chains whose last float op is one of `ops`."""

    def deco(fn: Lowering) -> Lowering:
        for op in ops:
            if op in LOWERINGS:
                raise ValueError(f"LowerToInteger: {op} registered twice")
            LOWERINGS[op] = fn
        return fn

    return deco


def lowering(op: str) -> Lowering | None:
    """The registered lowering of `op`, None when the op has none."""
    return LOWERINGS.get(op)


def supported_ops() -> list[str]:
    """The Relax ops a quantized chain may end in (the table, sorted)."""
    return sorted(LOWERINGS)
