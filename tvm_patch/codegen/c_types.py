"""C types of tensor dtypes and their sizes, shared by the kernel code generator and the export's driver."""

from __future__ import annotations

import tvm

from tvm_patch.errors import TvmPatchError

__all__ = ["C_TYPES", "c_type", "dtype_bytes"]

C_TYPES = {
    "int8": "int8_t", "int16": "int16_t", "int32": "int32_t", "int64": "int64_t",
    "uint8": "uint8_t", "uint16": "uint16_t", "uint32": "uint32_t", "uint64": "uint64_t",
    "float32": "float", "float64": "double", "bool": "bool",
}


def c_type(dtype: str) -> str:
    """The C type of a tensor dtype."""
    if dtype not in C_TYPES:
        raise TvmPatchError(f"tensors of dtype {dtype} have no plain C type")
    return C_TYPES[dtype]


def dtype_bytes(dtype: str) -> int:
    """Bytes of one element of `dtype` (vector lanes included, rounded up to whole bytes)."""
    t = tvm.runtime.DataType(dtype)
    return (t.bits * t.lanes + 7) // 8
