"""Calls to ``tvmp_copy_s8`` / ``tvmp_fill_s8`` in place of the int8 copy and fill loops of the plain-C kernels.

A TIR pass for the plain-C lowering (after the buffers are flat): an innermost serial loop

    for k in range(E):  D[d + k] = S[s + k]      (or  D[d + k] = v, a constant)

over int8 elements, d and s free of k, becomes ``tvmp_copy_s8(&D[d], &S[s], E)`` (``tvmp_fill_s8(&D[d], v, E)``),
which moves four bytes a load and a store, then a halfword and a byte for the tail (``tvmp_kernels.h``; a long run
apart from its source: the C library's memcpy). In an NCHW patch stage only (``rewrite_copy_loops`` says what was
measured): its regions' rings (pad values), its halo caches' rows and columns saved and restored; in the per-layer
kernels only whole channel planes (``_plane_copy``). Exact: the call gives every byte the value the loop gave it,
for any overlap of D and S (the kernel falls back to bytes where a word read could see a byte the loop had already
written).
Constant extents shorter than ``MIN_RUN`` stay loops where D or S is a C local (a pixel window: GCC keeps those in
registers) or the run is shorter than ``SHORT_RUN``; between two of the stage's planned buffers (the cache mode's
3- and 5-byte column runs) they are calls, which GCC compiles to a word, halfword and byte each: measured below.
A run-time length the same for a whole nest (a border patch's ring) is tested once before the nest, ``if (n > 0)``,
instead of a call of length 0 per row and channel in the patches without that border.
"""

from __future__ import annotations

from typing import Any

import tvm
import tvm_ffi
from tvm import tirx
from tvm.ir.expr import TensorLoad

from tvm_patch.codegen.c_types import buffer_bytes
from tvm_patch.codegen.micro_kernels import _int, _unit_stride_base
from tvm_patch.codegen.workspace import is_c_local
from tvm_patch.names import STAGE_LAYOUT_ATTR
from tvm_patch.tir_util import address_load, is_patch_stage, uses_var

COPY = "tvmp_copy_s8"
FILL = "tvmp_fill_s8"
MIN_RUN = 8  # bytes: a constant-extent loop shorter than this stays a loop (a run-time extent is called) ...
SHORT_RUN = 3  # ... unless it is at least this long and between two of the stage's planned buffers (no C local)
PLANE_RUN = 256  # bytes: a per-layer kernel's whole-plane copy at least this long is one call (round 37)


def _copy_call(loop: tirx.For) -> tirx.Stmt | None:
    """The call replacing ``loop`` when it is an int8 copy or fill loop (module docstring), else None."""
    if loop.kind != tirx.ForKind.SERIAL or _int(loop.min) != 0 or not isinstance(loop.body, tirx.BufferStore):
        return None
    extent, k, st = loop.extent, loop.loop_var, loop.body
    if uses_var(extent, k) or (_int(extent) is not None and _int(extent) < SHORT_RUN):
        return None
    if _int(extent) is not None and _int(extent) < MIN_RUN:
        value = st.value
        touched = [st.buffer] + ([value.source] if isinstance(value, TensorLoad) else [])
        if any(is_c_local(b.name, buffer_bytes(b)) for b in touched):
            return None
    if str(st.buffer.ty.dtype) != "int8" or len(st.indices) != 1:
        return None
    d = _unit_stride_base(st.indices[0], k)
    if d is None:
        return None
    dst = tirx.address_of(tirx.BufferLoad(st.buffer, [d]))
    value = st.value
    if isinstance(value, tirx.IntImm):
        return tirx.Evaluate(tirx.call_extern("void", FILL, dst, tirx.const(int(value.value), "int32"),
                                              tirx.Cast("int32", extent)))
    if not (isinstance(value, TensorLoad) and str(value.source.ty.dtype) == "int8" and len(value.indices) == 1):
        return None
    s = _unit_stride_base(value.indices[0], k)
    if s is None:
        return None
    src = tirx.address_of(tirx.BufferLoad(value.source, [s]))
    return tirx.Evaluate(tirx.call_extern("void", COPY, dst, src, tirx.Cast("int32", extent)))


def _is_run(stmt: Any) -> bool:
    """Is ``stmt`` a copy / fill call, or a loop nest (possibly guarded, `_guarded`) around one?"""
    while True:
        if isinstance(stmt, tirx.For):
            stmt = stmt.body
        elif isinstance(stmt, tirx.IfThenElse) and stmt.else_case is None:
            stmt = stmt.then_case
        else:
            return isinstance(stmt, tirx.Evaluate) and run_length(stmt.value) is not None


def _plane_copy(loop: tirx.For) -> tirx.Stmt | None:
    """``for i in range(H): for k in range(W): D[d + i W + k] = S[s + i W + k]`` (int8; d, s free of both: a
    whole channel plane copied, as an in-place NCHW depthwise kernel copies its input channel) as one
    ``tvmp_copy_s8(&D[d], &S[s], H W)`` when H W >= PLANE_RUN, else None: the row's own copy (``_copy_call``),
    its two bases W bytes on a row."""
    h, inner = _int(loop.extent), loop.body
    row = _copy_call(inner) if isinstance(inner, tirx.For) else None
    w = _int(inner.extent) if row is not None else None
    if (h is None or w is None or h * w < PLANE_RUN or loop.kind != tirx.ForKind.SERIAL or _int(loop.min) != 0
            or str(row.value.args[0].value) != COPY):
        return None
    bases = []
    for ptr in row.value.args[1:3]:
        load = address_load(ptr)
        lin = tvm.sym.detect_linear_equation(load.indices[0], [loop.loop_var]) if load is not None else []
        if len(lin) != 2 or _int(lin[0]) != w:
            return None
        bases.append(tirx.address_of(tirx.BufferLoad(load.source, [lin[1]])))
    return tirx.Evaluate(tirx.call_extern("void", COPY, *bases, tirx.const(h * w, "int32")))


def run_length(value: Any) -> Any:
    """The byte count argument of a ``tvmp_copy_s8`` / ``tvmp_fill_s8`` call (dst, src or value, n), else None."""
    if isinstance(value, tvm.ir.Call) and value.op.name.endswith(("call_extern", "call_pure_extern")) \
            and len(value.args) > 3 and str(getattr(value.args[0], "value", "")) in (COPY, FILL):
        return value.args[3]
    return None


def _guarded(loop: tirx.For) -> tirx.Stmt:
    """``loop`` (its body already rewritten) with the test of a run-time copy or fill length moved out of it: a
    call whose length does not depend on the loop's variables runs under ``if (n > 0)``, and such a test goes out
    of every loop of its nest that does not set it, so a border ring's nest costs one test in a patch with no such
    border instead of a call of length 0 per row and channel."""
    body = loop.body
    if isinstance(body, tirx.Evaluate):
        n = run_length(body.value)
        if n is None or _int(n) is not None or uses_var(n, loop.loop_var):
            return loop
        return tirx.IfThenElse(n > 0, loop, None)
    if isinstance(body, tirx.IfThenElse) and body.else_case is None and _is_run(body.then_case) \
            and not uses_var(body.condition, loop.loop_var):
        return tirx.IfThenElse(body.condition, tirx.For(loop.loop_var, loop.min, loop.extent, loop.kind,
                                                        body.then_case, loop.thread_binding, loop.annotations, loop.step),
                               None)
    return loop


def rewrite_copy_loops(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """``func``, when it is an NCHW patch stage, with every int8 copy or fill loop (module docstring) replaced by its
    ``tvmp_copy_s8`` / ``tvmp_fill_s8`` call. Where it was measured (M7, instructions of the stage): mcunet-in0 3x3
    cache mode -2.8 %, recompute -0.9 %; mcunet-in1 4x4 -0.4 % and -0.05 %; the short runs, the tested nests and
    the tails (kernels round 31, docs/kernels.md) then the network: mcunet-in0 3x3 cache -0.4 %, 4x4 recompute
    -0.3 %, mcunet-in1 4x4 recompute -0.2 %, but its cache mode +0.25 % (the stage's last 1x1 nest, its C unchanged,
    compiled worse in the longer function). Not NHWC stages: vww 4x4 recompute
    +1.5 %, cache +0.4 %, resnet8 +0.01 % (few runs to copy there, a row of channels; the long function's other
    nests then compiled worse). Not the per-layer kernels: on mcunet-in0 their padded copies' rows (12-24 bytes)
    gained nothing and three 3x3 depthwise kernels lost 8-12 % (GCC then spilled the window loop's weight words);
    but a per-layer kernel's whole-plane copy (``_plane_copy``, round 37: an in-place NCHW depthwise kernel's input
    channel) is one call, which the C library's memcpy runs: mbv2-w0.35-r144's stride-2 depthwise layers -2.5 to
    -8 %."""
    if not is_patch_stage(func):
        return tvm_ffi.structural_map(func, [(tirx.For, lambda loop: _plane_copy(loop) or loop)])
    if str(func.attrs.get(STAGE_LAYOUT_ATTR, "")) != "NCHW":
        return func
    calls = tvm_ffi.structural_map(func, [(tirx.For, lambda loop: _copy_call(loop) or loop)])
    return tvm_ffi.structural_map(calls, [(tirx.For, _guarded)])


def CopyLoops() -> tvm.transform.Pass:  # noqa: N802 (TVM's naming of passes)
    """The pass form of ``rewrite_copy_loops``, for the plain-C lowering pipeline (after the micro-kernel passes,
    whose patterns read some of these loops)."""
    return tirx.transform.prim_func_pass(lambda f, _m, _c: rewrite_copy_loops(f), opt_level=0,
                                         name="tvm_patch.CopyLoops")
