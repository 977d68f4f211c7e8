"""Symbolic values of a quantized chain (constants, quantized tensors, pending float ops, integer results
with an open clamp) and the small Relax expression helpers the lowerings share."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
from tvm import ir, relax


FLOAT_DTYPES = ("float16", "float32", "float64", "bfloat16")
INT_STORAGE = ("int8", "uint8", "int16")


def ty(expr: Any) -> Any:
    return getattr(expr, "ty", None)


def dtype_of(expr: Any) -> str | None:
    t = ty(expr)
    d = getattr(t, "dtype", None)
    return None if d is None else str(d)


def shape_of(expr: Any) -> tuple[int, ...]:
    t = ty(expr)
    shp = getattr(t, "shape", None)
    if shp is None:
        raise ValueError(f"no static shape for {expr}")
    return tuple(int(d) for d in shp)


def is_const(expr: Any) -> bool:
    return isinstance(expr, ir.expr.Constant)


def const_np(expr: Any) -> np.ndarray:
    v = expr.value
    return v.numpy() if hasattr(v, "numpy") else np.asarray(v)


def prim_value(e: Any) -> float:
    """A Python number out of an attribute / PrimExpr / PrimValue argument."""
    if isinstance(e, (int, float)):
        return e
    for attr in ("value",):
        if hasattr(e, attr):
            v = getattr(e, attr)
            if isinstance(v, (int, float)):
                return v
            return prim_value(v)
    return float(e)


def ints(v: Any) -> list[int]:
    return [int(x) for x in v]


def pool_padding(a: Any) -> list[int]:
    p = [int(v) for v in a.padding]
    if len(p) == 2:
        return [p[0], p[1], p[0], p[1]]
    if len(p) == 1:
        return p * 4
    return p


@dataclass
class Const:
    """An integer or float constant known at compile time (after folding reshape/permute on constants)."""

    array: np.ndarray


@dataclass
class QT:
    """A quantized tensor: real = (q - zp) * scale. `scale`/`zp` broadcast against the tensor (0-d for per
    tensor; full shape for per-channel constants). `make` returns the integer tensor in the new function
    (memoised), `const` holds its values when known at compile time."""

    scale: np.ndarray
    zp: np.ndarray
    dtype: str
    shape: tuple[int, ...]
    make: Callable[[], relax.Expr] | None = None
    const: np.ndarray | None = None
    where: str = ""
    _expr: relax.Expr | None = None
    _float: relax.Expr | None = None

    @property
    def per_tensor(self) -> bool:
        s, z = self.scale.reshape(-1), self.zp.reshape(-1)
        return bool(np.all(s == s[0])) and bool(np.all(z == z[0]))

    @property
    def s(self) -> float:
        return float(self.scale.reshape(-1)[0])

    @property
    def z(self) -> int:
        return int(self.zp.reshape(-1)[0])

    def expr(self) -> relax.Expr:
        if self._expr is None:
            if self.const is not None:
                self._expr = relax.const(self.const, self.dtype)
            else:
                assert self.make is not None
                self._expr = self.make()
        return self._expr

    def same_params(self, other: QT) -> bool:
        return self.per_tensor and other.per_tensor and self.dtype == other.dtype and \
            np.float32(self.s) == np.float32(other.s) and self.z == other.z


@dataclass
class FOp:
    """A float op of a quantized chain, not emitted: its lowering depends on the quantize consuming it."""

    call: Any  # the original relax Call
    args: list  # per argument: QT | FOp | Const | relax.Expr (materialised)
    var: Any  # the original binding var
    materialized: relax.Expr | None = None


@dataclass
class Pending:
    """An integer result whose final clamp is still open, so that a following int ``R.clip`` folds into it."""

    build: Callable[[int, int], relax.Expr]
    lo: int
    hi: int
    dtype: str
    shape: tuple[int, ...]
    cache: dict = field(default_factory=dict)

    def expr(self) -> relax.Expr:
        key = (self.lo, self.hi)
        if key not in self.cache:
            self.cache[key] = self.build(self.lo, self.hi)
        return self.cache[key]


@dataclass
class QCtx:
    """The quantize ending a chain: output parameters, shape and the folded activation range."""

    var: Any
    so: float
    zo: int
    dtype: str
    shape: tuple[int, ...]
    act: tuple[int, int]

    def pending(self, build: Callable[[int, int], relax.Expr]) -> Pending:
        return Pending(build, self.act[0], self.act[1], self.dtype, self.shape)
