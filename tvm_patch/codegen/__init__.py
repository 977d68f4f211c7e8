"""C export of TIR kernels: plain C99 functions and bare-metal objects, no TVM runtime."""

from tvm_patch.codegen.c_kernels import (
    ARM_TARGET,
    C_TARGET,
    CFunction,
    CParam,
    CSource,
    emit_c,
    emit_object,
    lower_plain,
    undefined_symbols,
)
from tvm_patch.codegen.c_types import PlainCError
from tvm_patch.codegen.lowering import lowering_passes

__all__ = [
    "ARM_TARGET",
    "C_TARGET",
    "CFunction",
    "CParam",
    "CSource",
    "PlainCError",
    "emit_c",
    "emit_object",
    "lower_plain",
    "lowering_passes",
    "undefined_symbols",
]
