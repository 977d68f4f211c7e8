"""The float input's quantization as a tvmp_quant_s8 call (tvm_patch/codegen/quantize_kernels.py): the expression
it replaces, a row of them as one tvmp_quant_row_s8, and the kernels' plain-C path on the host against numpy (the
VCVTR path on the emulated Cortex-M4/M7: test_micro_kernels.py, "U" and "N" lines)."""

from __future__ import annotations

import ctypes
import subprocess

import numpy as np
import tvm
import tvm_ffi
from tvm.script import tirx as T

from tvm_patch.codegen.c_kernels import MICRO_KERNELS
from tvm_patch.codegen.quantize_kernels import QUANT, QUANT_ROW, rewrite_quantize
from tvm_patch.tir_util import pure_extern_name


@T.prim_func
def _quantize(x: T.Buffer((16,), "float32"), y: T.Buffer((16,), "int8"), z: T.Buffer((16,), "int8")):
    for i in range(16):
        y[i] = T.Cast("int8", T.max(T.min(T.round(x[i] / T.float32(0.035)) + T.float32(-11.0), T.float32(127.0)),
                                    T.float32(-128.0)))
        z[i] = T.Cast("int8", T.max(T.min(T.round(x[i]) + T.float32(0.5), T.float32(127.0)), T.float32(-128.0)))


@T.prim_func
def _rows(x: T.Buffer((48,), "float32"), y: T.Buffer((64,), "int8"), n: T.int32):
    for r in range(3):
        for i in range(n):  # a row of a patch's input: run-time length, unit stride on both sides
            y[r * 20 + i + 1] = T.Cast("int8", T.max(T.min(T.round(x[r * 16 + i] / T.float32(0.035))
                                                           + T.float32(-11.0), T.float32(127.0)), T.float32(-128.0)))
        for i in range(4):  # every other value: not a row
            y[r * 20 + i * 2] = T.Cast("int8", T.max(T.min(T.round(x[r * 16 + i * 2] / T.float32(0.035))
                                                           + T.float32(-11.0), T.float32(127.0)), T.float32(-128.0)))


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


@T.prim_func
def _quantize_zp0(x: T.Buffer((16,), "float32"), y: T.Buffer((16,), "int8"), z: T.Buffer((16,), "int8")):
    for i in range(16):
        y[i] = T.Cast("int8", T.max(T.min(T.round(x[i] / T.float32(0.035)), T.float32(127.0)), T.float32(-128.0)))
        z[i] = T.Cast("int8", T.max(T.min(x[i] / T.float32(0.035), T.float32(127.0)), T.float32(-128.0)))


def test_quantization_with_zero_point_0_becomes_one_call():
    """A zero point of 0 (the simplifier drops the "+ 0": proxyless-w0.3-r176's input) is the call with zp 0; a
    clamp without the rounding is not a quantization."""
    func = rewrite_quantize(_quantize_zp0)
    assert _externs(func) == [QUANT]
    zps: list[int] = []

    def on_call(call) -> tvm_ffi.WalkResult:
        if pure_extern_name(call) == QUANT:
            zps.append(int(call.args[2].value))
        return tvm_ffi.WalkResult.ADVANCE

    tvm_ffi.structural_walk(func.body, [(tvm.ir.Call, on_call)], order="pre")
    assert zps == [0]


def test_a_row_of_quantizations_becomes_one_row_call():
    rows: list[list] = []

    def on_call(call) -> tvm_ffi.WalkResult:
        if call.args and str(getattr(call.args[0], "value", "")) == QUANT_ROW:
            rows.append(list(call.args[1:]))
        return tvm_ffi.WalkResult.ADVANCE

    func = rewrite_quantize(_rows)
    tvm_ffi.structural_walk(func.body, [(tvm.ir.Call, on_call)], order="pre")
    assert len(rows) == 1 and _externs(func) == [QUANT]  # the strided loop keeps its per-value calls
    dst, src, n, scale, zp = rows[0]
    assert [str(dst.args[0].source.name), str(src.args[0].source.name)] == ["y", "x"]
    assert str(getattr(n, "value", n)) == "n" and float(scale.value) == np.float32(0.035) and int(zp.value) == -11


def _host_lib(tmp_path, body: str) -> ctypes.CDLL:
    """``body`` (C functions over the kernels header) built for the host and loaded."""
    (tmp_path / "k.c").write_text(f'#include "{MICRO_KERNELS}"\n' + body)
    subprocess.run(["gcc", "-O2", "-Wall", "-Werror", "-std=c99", "-shared", "-fPIC", str(tmp_path / "k.c"), "-o",
                    str(tmp_path / "k.so"), "-lm"], check=True, timeout=120)
    return ctypes.CDLL(str(tmp_path / "k.so"))


def test_plain_c_path_equals_the_float_expression(tmp_path):
    lib = _host_lib(tmp_path, "void q(const float *x, const int *zp, int *o, int n) {\n"
                              "  for (int i = 0; i < n; i++) o[i] = tvmp_quant_s8(x[i], zp[i]);\n}\n")
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


def test_row_kernel_equals_its_values_on_the_host(tmp_path):
    lib = _host_lib(tmp_path, "void r(signed char *d, const float *x, int n, float s, int zp) {\n"
                              "  tvmp_quant_row_s8(d, x, n, s, zp);\n}\n")
    rng = np.random.default_rng(5)
    for n in range(14):  # steps of four and every tail, at every byte offset
        scale, zp, offset = np.float32(rng.uniform(0.005, 0.5)), int(rng.integers(-128, 128)), n % 4
        x = (rng.integers(-200, 200, n) + 0.5 * rng.integers(0, 2, n)).astype(np.float32) * scale
        out = np.full(20, 0x55, np.int8)
        lib.r(out[offset:].ctypes.data_as(ctypes.c_void_p), x.ctypes.data_as(ctypes.c_void_p), ctypes.c_int(n),
              ctypes.c_float(scale), ctypes.c_int(zp))
        v = np.rint(x / scale) + np.float32(zp)
        want = np.full(20, 0x55, np.int8)
        want[offset:offset + n] = np.clip(v, -128, 127)
        np.testing.assert_array_equal(out, want)
