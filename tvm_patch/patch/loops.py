"""The TIR vocabulary of the patch stage's written loop nest (`cache_stage`): int constants, statement sequences,
nested serial loops, and a region split into its live part and the padding ring around it."""

from __future__ import annotations

from typing import Any, Callable

from tvm import tirx

from tvm_patch.patch.regions import Interval

__all__ = ["I32", "imm", "live_and_ring", "loops"]

I32 = "int32"


def imm(v: int, dtype: str = I32) -> Any:
    """The constant v as a TIR immediate (int32 unless told): every index and bound of the nest is one."""
    return tirx.const(int(v), dtype)


def loops(extents: list[tuple[Any, Any]], body_fn: Callable[..., Any], unroll_inner: bool = False) -> Any:
    """Nested serial loops over (min, extent) pairs; body_fn gets the loop variables. `unroll_inner`: the innermost
    loop unrolled (TVM's UnrollLoop, at lowering): a byte copy's row, which GCC's -O3 keeps a loop of five
    instructions a byte (load, store, pointer, compare, branch)."""
    vars_ = [tirx.Var(f"ax{k}", I32) for k in range(len(extents))]
    body = body_fn(*vars_)
    for k, (v, (lo, ext)) in reversed(list(enumerate(zip(vars_, extents)))):
        kind = tirx.ForKind.UNROLLED if unroll_inner and k == len(extents) - 1 else tirx.ForKind.SERIAL
        body = tirx.For(v, lo, ext, kind, body)
    return body


def live_and_ring(rows: tuple[Any, Any], cols: tuple[Any, Any], start: tuple[Any, Any],
                  live: tuple[Interval, Interval], pad_fn: Callable[[Any, Any], Any],
                  live_fn: Callable[[Any, Any], Any]) -> list:
    """Region rows x cols ((first, end) in region coordinates) split into the part inside `live` ((row, col)
    intervals in image coordinates; `start`: the region's first image row and column), given to
    `live_fn(rows, cols)` as (min, extent) pairs, and the ring around it, `pad_fn(rows, cols)` per piece:
    loop bounds computed once per patch instead of a test of every element."""
    (a_r, e_r), (a_q, e_q) = rows, cols

    def split(a, e, s0, iv):
        lo_ = tirx.min(tirx.max(a, imm(iv.lo) - s0), e)
        return lo_, tirx.max(tirx.min(e, imm(iv.hi) - s0), lo_)

    rlo, rhi = split(a_r, e_r, start[0], live[0])
    qlo, qhi = split(a_q, e_q, start[1], live[1])
    return [pad_fn((a_r, rlo - a_r), (a_q, e_q - a_q)), pad_fn((rhi, e_r - rhi), (a_q, e_q - a_q)),
            pad_fn((rlo, rhi - rlo), (a_q, qlo - a_q)), pad_fn((rlo, rhi - rlo), (qhi, e_q - qhi)),
            live_fn((rlo, rhi - rlo), (qlo, qhi - qlo))]
