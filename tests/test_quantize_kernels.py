"""The float input's quantization as a tvmp_quant_s8 call (tvm_patch/codegen/quantize_kernels.py): the expression
it replaces, and the kernel's plain-C path on the host against numpy (the VCVTR path on the emulated Cortex-M4/M7:
test_micro_kernels.py, "U" lines)."""

from __future__ import annotations

import ctypes
import subprocess

import numpy as np
import tvm
import tvm_ffi
from tvm.script import tirx as T

from tvm_patch.codegen.c_kernels import MICRO_KERNELS
from tvm_patch.codegen.quantize_kernels import QUANT, rewrite_quantize
from tvm_patch.tir_util import pure_extern_name


@T.prim_func
def _quantize(x: T.Buffer((16,), "float32"), y: T.Buffer((16,), "int8"), z: T.Buffer((16,), "int8")):
    for i in range(16):
        y[i] = T.Cast("int8", T.max(T.min(T.round(x[i] / T.float32(0.035)) + T.float32(-11.0), T.float32(127.0)),
                                    T.float32(-128.0)))
        z[i] = T.Cast("int8", T.max(T.min(T.round(x[i]) + T.float32(0.5), T.float32(127.0)), T.float32(-128.0)))


def _externs(func) -> list[str]:
    names: list[str] = []

    def on_call(call) -> tvm_ffi.WalkResult:
        if pure_extern_name(call):
            names.append(pure_extern_name(call))
        return tvm_ffi.WalkResult.ADVANCE

    tvm_ffi.structural_walk(func.body, [(tvm.ir.Call, on_call)], order="pre")
    return names


def test_quantization_becomes_one_call():
    # y's expression is a quantization; z's is not (its "zero point" is not an integer)
    assert _externs(rewrite_quantize(_quantize)) == [QUANT]


def test_plain_c_path_equals_the_float_expression(tmp_path):
    (tmp_path / "q.c").write_text(f'#include "{MICRO_KERNELS}"\n'
                                  "void q(const float *x, const int *zp, int *o, int n) {\n"
                                  "  for (int i = 0; i < n; i++) o[i] = tvmp_quant_s8(x[i], zp[i]);\n}\n")
    subprocess.run(["gcc", "-O2", "-Wall", "-Werror", "-std=c99", "-shared", "-fPIC", str(tmp_path / "q.c"), "-o",
                    str(tmp_path / "q.so"), "-lm"], check=True, timeout=120)
    lib = ctypes.CDLL(str(tmp_path / "q.so"))
    rng = np.random.default_rng(3)
    x = np.concatenate([rng.uniform(-300, 300, 20_000), np.arange(-200, 200) + 0.5,
                        [np.nan, np.inf, -np.inf, 2.0**24 + 2, -(2.0**31), 3e38]]).astype(np.float32)
    zp = rng.integers(-128, 128, len(x)).astype(np.int32)
    out = np.zeros(len(x), np.int32)
    ptr = np.ctypeslib.as_ctypes
    lib.q(ptr(x), ptr(zp), ptr(out), ctypes.c_int(len(x)))
    with np.errstate(invalid="ignore"):
        v = np.rint(x) + zp.astype(np.float32)
        want = np.where(v < 127, np.where(v > -128, v, -128), 127)
    np.testing.assert_array_equal(out, want)
