"""What each exported kernel does, read from its TIR: its kind (1x1 / k x k / depthwise convolution, dense,
other) and its multiply-accumulates. Reported per kernel call in the export's JSON, so the board's
per-kernel counts (``--profile``) turn into instructions or cycles per MAC per op type.

A MAC block is a block with reduction iterators whose update multiplies two loaded values; its MACs are the product
of all its iterator extents (one multiply-accumulate per point of the iteration domain), the convention of
the analytic profile (pooling and elementwise ops count zero).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import tvm_ffi
from tvm import s_tir, tirx
from tvm.ir.expr import TensorLoad

__all__ = ["KernelInfo", "count_loads", "kernel_info"]

_REDUCE = 2  # IterVar.iter_type of a reduction iterator


@dataclass(frozen=True)
class KernelInfo:
    """A kernel's kind and multiply-accumulates (0 for kernels without a MAC block)."""

    kind: str
    macs: int


def count_loads(expr: Any) -> int:
    """How many buffer loads ``expr`` holds."""
    n = [0]

    def on_load(_: Any) -> tvm_ffi.WalkResult:
        n[0] += 1
        return tvm_ffi.WalkResult.ADVANCE

    tvm_ffi.structural_walk(expr, [(TensorLoad, on_load)], order="pre")
    return n[0]


def has_mac(expr: Any) -> bool:
    """A product of two loaded values (a weight and an activation), not a scaling by a constant."""
    found = [False]

    def on_mul(m: Any) -> tvm_ffi.WalkResult:
        found[0] = found[0] or (count_loads(m.a) > 0 and count_loads(m.b) > 0)
        return tvm_ffi.WalkResult.ADVANCE

    tvm_ffi.structural_walk(expr, [(tirx.Mul, on_mul)], order="pre")
    return found[0]


def _kind(block: s_tir.SBlock) -> str:
    extents = {iv.var.name.removeprefix("v_"): int(iv.dom.extent) for iv in block.iter_vars
               if int(iv.iter_type) == _REDUCE}
    name = block.name_hint
    if "conv" in name:
        ry, rx, rc = extents.get("ry", 1), extents.get("rx", 1), extents.get("rc", 1)
        if "group" in name and rc == 1:
            return "depthwise"
        return "conv1x1" if ry == rx == 1 else f"conv{ry}x{rx}"
    if "matmul" in name or "dense" in name:
        return "dense"
    return "other"


def kernel_info(func: tirx.PrimFunc) -> KernelInfo:
    """The kind and MACs of ``func`` (a fused kernel before scheduling); several MAC blocks add up."""
    kinds: list[str] = []
    macs = [0]

    def on_block(block: s_tir.SBlock) -> tvm_ffi.WalkResult:
        if any(int(iv.iter_type) == _REDUCE for iv in block.iter_vars) and has_mac(block.body):
            kinds.append(_kind(block))
            macs[0] += math.prod(int(iv.dom.extent) for iv in block.iter_vars)
        return tvm_ffi.WalkResult.ADVANCE

    tvm_ffi.structural_walk(func.body, [(s_tir.SBlock, on_block)], order="pre")
    if not kinds:
        return KernelInfo("other", 0)
    return KernelInfo(kinds[0] if len(set(kinds)) == 1 else "fused", macs[0])
