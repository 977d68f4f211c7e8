"""The copy and fill rewrite (tvm_patch/codegen/copy_kernels.py): which loops of a patch stage become
tvmp_copy_s8 / tvmp_fill_s8 calls, and that other kernels keep theirs. The calls' bytes are checked on the emulated
Cortex-M4/M7 for every overlap (test_micro_kernels.py, "C" and "F" lines) and in every patch stage the halo-cache
tests run through the C path on the host."""

from __future__ import annotations

import tvm
import tvm_ffi
from tvm import tirx
from tvm.script import tirx as T

from tvm_patch.codegen.copy_kernels import COPY, FILL, MIN_RUN, PLANE_RUN, SHORT_RUN, rewrite_copy_loops
from tvm_patch.names import PATCHES_ATTR, STAGE_LAYOUT_ATTR
from tvm_patch.tir_util import is_call, uses_var


@T.prim_func
def _kernel(a: T.Buffer((128,), "int8"), b: T.Buffer((128,), "int8"), n: T.int32):
    # flat TIR as the C export's lowering leaves it (a and b over LOCAL_MAX_BYTES: planned buffers, not C locals):
    # per row r, a copy of a run of n bytes (a run-time extent), a fill of 12 pad values, a copy of 7 bytes (shorter
    # than MIN_RUN, between two planned buffers), a strided copy (a column), a copy of 2 bytes (shorter than
    # SHORT_RUN) and one of 3 bytes into a C-local pixel window
    pixel = T.alloc_buffer((8,), "int8")
    for r in range(2):
        for k0 in range(n):
            b[r * 16 + k0 + 1] = a[r * 16 + k0]
        for k1 in range(12):
            b[k1 + 40] = T.int8(-128)
        for k2 in range(7):
            b[k2 + 52] = a[k2]
        for k3 in range(12):
            b[k3] = a[k3 * 4]
        for k4 in range(2):
            b[k4 + 60] = a[k4]
        for k5 in range(3):
            pixel[k5] = a[k5 + 8]
        b[63] = pixel[r]


@T.prim_func
def _rings(b: T.Buffer((128,), "int8"), n: T.int32, m: T.int32):
    # a patch stage's ring fills: n pad values a row and channel (the same for the whole nest: a patch's border),
    # then runs whose length depends on the row
    for c in range(4):
        for r in range(3):
            for k in range(n):
                b[c * 16 + r * 4 + k] = T.int8(-128)
    for c in range(4):
        for r in range(3):
            for k in range(m + r):
                b[c * 16 + r * 4 + k] = T.int8(0)


@T.prim_func
def _planes(a: T.Buffer((4 * 400,), "int8"), b: T.Buffer((4 * 22 * 20,), "int8")):
    # an in-place NCHW depthwise kernel's input channel copied whole into its buffer (20 x 20 = 400 bytes), then a
    # padded copy's rows (20 bytes of 22, not one run) and a small plane (4 x 4)
    plane = T.alloc_buffer((400,), "int8")
    for c in range(4):
        for y in range(20):
            for x in range(20):
                plane[y * 20 + x] = a[c * 400 + y * 20 + x]
        for y in range(20):
            for x in range(20):
                b[c * 440 + y * 22 + x + 1] = plane[y * 20 + x]
        for y in range(4):
            for x in range(4):
                plane[y * 4 + x] = a[c * 400 + y * 4 + x]


def _calls(node) -> list[str]:
    names: list[str] = []

    def on_call(call) -> tvm_ffi.WalkResult:
        if is_call(call, ".call_extern") and call.args:
            names.append(str(call.args[0].value))
        return tvm_ffi.WalkResult.ADVANCE

    tvm_ffi.structural_walk(node.body if isinstance(node, tirx.PrimFunc) else node, [(tvm.ir.Call, on_call)],
                            order="pre")
    return names


def _stage(func: tirx.PrimFunc) -> tirx.PrimFunc:
    return func.with_attr(PATCHES_ATTR, [1, 1]).with_attr(STAGE_LAYOUT_ATTR, "NCHW")


def test_stage_copy_and_fill_loops_become_calls():
    assert SHORT_RUN <= 7 < MIN_RUN
    calls = _calls(rewrite_copy_loops(_stage(_kernel)))
    # the run-time run, the fill, the 7 bytes between planned buffers; not the 2 bytes, the column, the pixel copy
    assert sorted(calls) == [COPY, COPY, FILL]


def test_a_nests_run_length_is_tested_once():
    func = rewrite_copy_loops(_stage(_rings))
    first, second = func.body.seq
    # the fill's length is the same for the whole nest: one test before it, the calls inside
    assert isinstance(first, tirx.IfThenElse) and first.else_case is None
    assert isinstance(first.then_case, tirx.For) and isinstance(first.then_case.body, tirx.For)
    cond = first.condition  # n > 0
    assert isinstance(cond, tirx.GT) and uses_var(cond.a, _rings.params[1]) and int(cond.b.value) == 0
    assert _calls(first) == [FILL]
    # a length that varies with the row: no test (the loops as they were, the call inside)
    assert isinstance(second, tirx.For) and isinstance(second.body, tirx.For)
    assert isinstance(second.body.body, tirx.Evaluate) and _calls(second) == [FILL]


def test_other_kernels_keep_their_loops():
    assert _calls(rewrite_copy_loops(_kernel)) == []  # per-layer kernels: measured no gain (but whole planes, below)
    nhwc = _kernel.with_attr(PATCHES_ATTR, [1, 1]).with_attr(STAGE_LAYOUT_ATTR, "NHWC")
    assert _calls(rewrite_copy_loops(nhwc)) == []  # NHWC stages: measured slower


def test_a_per_layer_kernels_whole_plane_copy_is_one_call():
    assert 16 < PLANE_RUN <= 400
    func = rewrite_copy_loops(_planes)
    assert _calls(func) == [COPY]  # the 20 x 20 plane; not the padded rows, not the 4 x 4 plane
    copies: list = []
    tvm_ffi.structural_walk(func.body, [(tvm.ir.Call, lambda c: copies.append(c) if is_call(c, ".call_extern")
                                         else None)])
    assert int(copies[0].args[3]) == 400
