"""The in-place rules of the analytic memory convention, written once for the layer graph
(`tvm_patch.profile`) and the patch stage (`tvm_patch.patch.memory`).

A depthwise convolution runs in place over an input that dies there (max(input, output)); an elementwise
binary op writes into a same-sized operand that dies there (inputs only); a dense convolution whose only
reader is a residual add, whose other operand (the skip held since the block's input) dies at that add,
accumulates straight into the skip's buffer: the convolution's output costs nothing, and the add then holds
only the skip, which becomes its output.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

__all__ = ["accumulates_into_skip", "core_bytes"]

InPlace = Literal["depthwise", "elementwise"] | None


def accumulates_into_skip(dense_conv: bool, readers: Sequence[int], residual_add: Callable[[int], bool],
                          skips_of: Callable[[int], Sequence[int]], dies_at: Callable[[int, int], bool]) -> bool:
    """True for a dense convolution (`readers`: its output's readers) that accumulates into a residual skip:
    its only reader is a residual add whose one other operand (`skips_of(add)`) dies at the add."""
    if not dense_conv or len(readers) != 1 or not residual_add(readers[0]):
        return False
    skips = skips_of(readers[0])
    return len(skips) == 1 and dies_at(skips[0], readers[0])


def core_bytes(ins: int, out: int, *, output_in_input: bool = False, output_is_skip: bool = False,
               in_place: InPlace = None) -> int:
    """Bytes a layer holds for its own inputs and output (tensors live across it are counted apart).

    `output_in_input`: the output is written into an input's buffer (accumulation into the skip, padding done
    by the convolution); `output_is_skip`: the add after such a convolution, holding only the skip;
    `in_place`: the op overwrites an input that dies there."""
    if output_in_input:
        return ins
    if output_is_skip:
        return out
    if in_place == "depthwise":
        return max(ins, out)
    if in_place == "elementwise":
        return ins
    return ins + out
