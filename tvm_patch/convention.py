"""The in-place rules of the analytic memory convention, written once for the layer graph
(`tvm_patch.profile`) and the patch stage (`tvm_patch.patch.memory`).

A depthwise convolution runs in place over an input that dies there (max(input, output), plus the outputs a
kernel must hold before it may overwrite input it still reads: `inplace_shift`); an elementwise
binary op writes into a same-sized operand that dies there (inputs only); a dense convolution whose only
reader is a residual add, whose other operand (the skip held since the block's input) dies at that add,
accumulates straight into the skip's buffer: the convolution's output costs nothing, and the add then holds
only the skip, which becomes its output.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np

__all__ = ["accumulates_into_skip", "core_bytes", "inplace_shift"]

InPlace = Literal["depthwise", "elementwise"] | None


def accumulates_into_skip(dense_conv: bool, readers: Sequence[int], residual_add: Callable[[int], bool],
                          skips_of: Callable[[int], Sequence[int]], dies_at: Callable[[int, int], bool]) -> bool:
    """True for a dense convolution (`readers`: its output's readers) that accumulates into a residual skip:
    its only reader is a residual add whose one other operand (`skips_of(add)`) dies at the add."""
    if not dense_conv or len(readers) != 1 or not residual_add(readers[0]):
        return False
    skips = skips_of(readers[0])
    return len(skips) == 1 and dies_at(skips[0], readers[0])


def inplace_shift(in_hw: tuple[int, int], out_hw: tuple[int, int], kernel: tuple[int, int],
                  stride: tuple[int, int], pad_tl: tuple[int, int]) -> int:
    """Elements an in-place depthwise layer needs beyond max(input, output): how far before its input its
    output must start when it runs channel by channel, each channel in raster order (0: none).

    Output (y, x) reads the in-image part of its window (padding is no memory) and is written after its own
    reads; it must land below every input element a later output reads. A stride-1 k x k layer of one shape
    needs p (W + 1) (p = k // 2: output (y, x) may overwrite input (y, x) only once output (y + p, x + p) is
    done); a strided layer's smaller output mostly needs none. Channel 0 binds: channel c's output starts
    c (H W - Ho Wo) elements further before its input's channel. No kernel order avoids it: any order has a
    moment when half a channel is done, and the done outputs within p of an undone one are then pending, at
    least about p min(H, W) of them (docs/patch-arena-sweep.md)."""
    (h, w), (ho, wo) = in_hw, out_hw
    if ho * wo < 2 or h * w < ho * wo:
        return 0
    y, x = np.divmod(np.arange(ho * wo, dtype=np.int64), wo)
    r0 = np.maximum(0, y * stride[0] - pad_tl[0])  # the lowest input row and column each output reads
    c0 = np.maximum(0, x * stride[1] - pad_tl[1])
    first = np.where((r0 < h) & (c0 < w), r0 * w + c0, np.iinfo(np.int64).max)
    later = np.minimum.accumulate(first[::-1])[::-1][1:]  # the lowest address read by any later output
    return max(0, int(((y * wo + x)[:-1] - later).max()) + 1)


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
