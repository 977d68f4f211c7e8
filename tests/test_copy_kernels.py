"""The copy and fill rewrite (tvm_patch/codegen/copy_kernels.py): which loops of a patch stage become
tvmp_copy_s8 / tvmp_fill_s8 calls, and that other kernels keep theirs. The calls' bytes are checked on the emulated
Cortex-M4/M7 for every overlap (test_micro_kernels.py, "C" and "F" lines) and in every patch stage the halo-cache
tests run through the C path on the host."""

from __future__ import annotations

import tvm
import tvm_ffi
from tvm import tirx
from tvm.script import tirx as T

from tvm_patch.codegen.copy_kernels import COPY, FILL, MIN_RUN, rewrite_copy_loops
from tvm_patch.names import PATCHES_ATTR, STAGE_LAYOUT_ATTR
from tvm_patch.tir_util import is_call


@T.prim_func
def _kernel(a: T.Buffer((64,), "int8"), b: T.Buffer((64,), "int8"), n: T.int32):
    # flat TIR as the C export's lowering leaves it: per row r, a copy of a run of n bytes (a run-time extent), a
    # fill of 12 pad values, a copy of MIN_RUN - 1 = 7 bytes, and a strided copy (a column)
    for r in range(2):
        for k0 in range(n):
            b[r * 16 + k0 + 1] = a[r * 16 + k0]
        for k1 in range(12):
            b[k1 + 40] = T.int8(-128)
        for k2 in range(7):
            b[k2 + 52] = a[k2]
        for k3 in range(12):
            b[k3] = a[k3 * 4]


def _calls(func: tirx.PrimFunc) -> list[str]:
    names: list[str] = []

    def on_call(call) -> tvm_ffi.WalkResult:
        if is_call(call, ".call_extern") and call.args:
            names.append(str(call.args[0].value))
        return tvm_ffi.WalkResult.ADVANCE

    tvm_ffi.structural_walk(func.body, [(tvm.ir.Call, on_call)], order="pre")
    return names


def test_stage_copy_and_fill_loops_become_calls():
    assert MIN_RUN == 8
    calls = _calls(rewrite_copy_loops(_kernel.with_attr(PATCHES_ATTR, [1, 1]).with_attr(STAGE_LAYOUT_ATTR, "NCHW")))
    assert sorted(calls) == [COPY, FILL]  # not the short constant run, not the strided column


def test_other_kernels_keep_their_loops():
    assert _calls(rewrite_copy_loops(_kernel)) == []  # per-layer kernels: measured no gain
    nhwc = _kernel.with_attr(PATCHES_ATTR, [1, 1]).with_attr(STAGE_LAYOUT_ATTR, "NHWC")
    assert _calls(rewrite_copy_loops(nhwc)) == []  # NHWC stages: measured slower
