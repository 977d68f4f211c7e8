"""C types of tensor dtypes and their sizes, shared by the kernel code generator and the export's driver; the error
of a kernel that has no plain C form."""

from __future__ import annotations

import math
import struct
from typing import Any

import tvm
from tvm import tirx
from tvm.ir import PrimType

from tvm_patch.errors import TvmPatchError

__all__ = ["C_TYPES", "PlainCError", "c_float_literal", "c_type", "buffer_bytes", "const_shape", "dtype_bytes", "dtype_str", "to_f32"]

C_TYPES = {
    "int8": "int8_t", "int16": "int16_t", "int32": "int32_t", "int64": "int64_t",
    "uint8": "uint8_t", "uint16": "uint16_t", "uint32": "uint32_t", "uint64": "uint64_t",
    "float32": "float", "float64": "double", "bool": "bool",
}


class PlainCError(TvmPatchError):
    """A PrimFunc cannot become plain C (dynamic allocation, unsupported dtype or scope, TVM runtime call)."""


def c_type(dtype: str) -> str:
    """The C type of a tensor dtype."""
    if dtype not in C_TYPES:
        raise TvmPatchError(f"tensors of dtype {dtype} have no plain C type")
    return C_TYPES[dtype]


def dtype_bytes(dtype: str) -> int:
    """Bytes of one element of `dtype` (vector lanes included, rounded up to whole bytes)."""
    t = tvm.runtime.DataType(dtype)
    return (t.bits * t.lanes + 7) // 8


def buffer_bytes(buf: Any) -> int:
    """Bytes of a buffer of constant shape (a stage's planned buffers, a kernel's locals)."""
    return math.prod(int(d) for d in buf.shape) * dtype_bytes(str(buf.ty.dtype))


def dtype_str(dtype: Any) -> str:
    """The dtype of a PrimType (a buffer's or a scalar parameter's), or ``dtype`` itself, as a string."""
    return str(dtype.dtype if isinstance(dtype, PrimType) else dtype)


def const_shape(buf: Any, what: str) -> tuple[int, ...]:
    """The shape of ``buf``, which plain C needs constant (``what`` names the buffer's role in the error)."""
    shape = []
    for s in buf.shape:
        if not isinstance(s, (tirx.IntImm, int)):
            raise PlainCError(f"{what} {buf.name!r} has a non-constant shape {list(buf.shape)}")
        shape.append(int(s))
    return tuple(shape)


def to_f32(value: float) -> float:
    """Round a double to the nearest float32, as a C compiler does with a float literal."""
    return struct.unpack("<f", struct.pack("<f", value))[0]


def c_float_literal(value: float, bits: int) -> str:
    """A C literal of exactly ``value`` as a float (``bits`` 32, hex ``...f``) or a double (64)."""
    if math.isnan(value):
        return "NAN" if bits == 32 else "((double)NAN)"
    if math.isinf(value):
        s = "INFINITY" if bits == 32 else "((double)INFINITY)"
        return f"(-{s})" if value < 0 else s
    return f"{to_f32(value).hex()}f" if bits == 32 else float(value).hex()
