"""A pixel pair that every output-channel block of a 1x1 convolution reads, sign-extended once.

The two-pixel nest of a 1x1 convolution (``micro_kernels._px2_rows_call``) calls
``tvmp_dot_s8_px2_rows{J}(A + a, P, W + w(c), S, K, acc)`` once per block of J output channels with the same two
activation vectors, and each call sign-extends them again (two SXTB16 per word per pixel). Where a loop calls it
with activation arguments that do not depend on the loop (the channel-block loop around one pixel pair), the pair
is sign-extended once before the loop into a C local of K words (``tvmp_widen_px2``) and the loop calls
``tvmp_dot_q15_px2_rows{J}``, which reads it with word loads and no SXTB16 on the activations (``tvmp_kernels.h``;
two LDRD per four channels measured slower: GCC then spills).

Exact: the same products in the same sums. The widening reads the pair before the loop instead of in every
iteration; a read moved earlier sees the value it saw before, since nothing in the loop stores to the activation
buffer (checked) and the kernels' in-place proofs make every read see its input unclobbered. The copy is a C
local of the kernel (``c_kernels``: buffers named ``WIDE_NAME`` up to ``MAX_WIDE_BYTES`` stay on the stack), so no
arena byte; the stack it takes is in the firmware's fixed stack reserve (the emulator run reports the stack used).
In a patch stage too: its buffers share planned storage, but its in-place proofs make every read of the pair see
the unclobbered input in every channel block, so reading it once before them reads the same bytes; the widened
copy is a C local outside the stage's workspace plan.
"""

from __future__ import annotations

import math
from typing import Any

import tvm
import tvm_ffi
from tvm import tirx
from tvm.ir.expr import TensorLoad

from tvm_patch.codegen.micro_kernels import PX2_ROWS, _extern_name, _int
from tvm_patch.tir_util import uses_var

WIDEN = "tvmp_widen_px2"
Q15_PX2_ROWS = {2: "tvmp_dot_q15_px2_rows2", 4: "tvmp_dot_q15_px2_rows4"}
WIDE_NAME = "px2_q15"  # the widened pair's C local
MAX_WIDE_BYTES = 1024  # 256 input channels: larger pairs keep the one-step kernel
MIN_BLOCKS = 2  # a loop of one channel block gains nothing
_PX2_NAMES = {name: rows for rows, name in PX2_ROWS.items()}


def _px2_evals(stmt: Any) -> list[tirx.Evaluate]:
    found: list[tirx.Evaluate] = []

    def on_eval(ev: Any) -> tvm_ffi.WalkResult:
        if _extern_name(ev.value) in _PX2_NAMES:
            found.append(ev)
        return tvm_ffi.WalkResult.ADVANCE

    tvm_ffi.structural_walk(stmt, [(tirx.Evaluate, on_eval)], order="pre")
    return found


def _bound_vars(stmt: Any) -> list[Any]:
    """The variables ``stmt`` binds (loop variables, lets)."""
    out: list[Any] = []

    def on_for(loop: Any) -> tvm_ffi.WalkResult:
        out.append(loop.loop_var)
        return tvm_ffi.WalkResult.ADVANCE

    def on_bind(b: Any) -> tvm_ffi.WalkResult:
        out.append(b.var)
        return tvm_ffi.WalkResult.ADVANCE

    tvm_ffi.structural_walk(stmt, [(tirx.For, on_for), (tirx.Bind, on_bind), (tirx.LetStmt, on_bind)], order="pre")
    return out


def _stores_to(stmt: Any, buf: Any) -> bool:
    """Whether ``stmt`` stores to ``buf`` (the same buffer, name or storage: conservative)."""
    hit = [False]

    def on_store(st: Any) -> tvm_ffi.WalkResult:
        if st.buffer.same_as(buf) or st.buffer.name == buf.name or tvm_ffi.structural_equal(st.buffer.data, buf.data):
            hit[0] = True
        return tvm_ffi.WalkResult.ADVANCE

    tvm_ffi.structural_walk(stmt, [(tirx.BufferStore, on_store)], order="pre")
    return hit[0]


def _widened(loop: tirx.For) -> tirx.Stmt | None:
    """``loop`` with its two-pixel calls on a loop-invariant pair reading a pair widened once before it, else None."""
    if loop.kind != tirx.ForKind.SERIAL or (_int(loop.extent) or 0) < MIN_BLOCKS:
        return None
    evals = _px2_evals(loop.body)
    if not evals:
        return None
    args0 = list(evals[0].value.args)[1:]  # a, as, w, ws, n, acc
    a_ptr, a_step, n = args0[0], args0[1], _int(args0[4])
    if n is None or n % 4 or n * 4 > MAX_WIDE_BYTES:
        return None
    for ev in evals:
        args = list(ev.value.args)[1:]
        if not (tvm_ffi.structural_equal(args[0], a_ptr) and tvm_ffi.structural_equal(args[1], a_step)
                and _int(args[4]) == n):
            return None
    # the pair may move with loops between ``loop`` and the call (a k x k kernel's taps): one widened pair per
    # iteration of those it uses, each read unconditionally in every iteration of ``loop`` (no test on the path)
    path = _path_loops(loop.body, evals[0]) if len(evals) == 1 else None
    if path is None:
        return None
    taps = [f for f in path if uses_var(a_ptr, f.loop_var)]
    if any(_int(f.min) != 0 or _int(f.extent) is None for f in taps):
        return None
    inner = [v for v in [loop.loop_var, *_bound_vars(loop.body)] if not any(v.same_as(f.loop_var) for f in taps)]
    if any(uses_var(e, v) for e in (a_ptr, a_step) for v in inner):
        return None
    count = math.prod(_int(f.extent) for f in taps)
    if count * n * 4 > MAX_WIDE_BYTES:
        return None
    load = a_ptr.args[0] if isinstance(a_ptr, tvm.ir.Call) and a_ptr.args else None
    if not isinstance(load, TensorLoad) or _stores_to(loop.body, load.source):
        return None
    q = tirx.decl_buffer((count * n,), "uint32", WIDE_NAME)

    def at(vs: list[Any]) -> Any:  # the widened pair of tap iteration vs
        flat = tirx.const(0, "int32")
        for f, v in zip(taps, vs):
            flat = flat * _int(f.extent) + tirx.Cast("int32", v)
        return tirx.address_of(tirx.BufferLoad(q, [tvm.sym.Analyzer().simplify(flat * n)]))

    def on_eval(ev: Any) -> Any:
        name = _extern_name(ev.value)
        if name not in _PX2_NAMES:
            return ev
        args = list(ev.value.args)[1:]
        return tirx.Evaluate(tirx.call_extern("void", Q15_PX2_ROWS[_PX2_NAMES[name]], at([f.loop_var for f in taps]),
                                              *args[2:]))

    body = tvm_ffi.structural_map(loop.body, [(tirx.Evaluate, on_eval)])
    fresh = [tirx.Var(f.loop_var.name + "_w", f.loop_var.ty) for f in taps]
    moved = tvm_ffi.structural_map(a_ptr, [(tirx.Var, lambda v: next(
        (u for f, u in zip(taps, fresh) if f.loop_var.same_as(v)), v))])
    widen: Any = tirx.Evaluate(tirx.call_extern("void", WIDEN, moved, a_step, tirx.const(n, "int32"), at(fresh)))
    for f, v in reversed(list(zip(taps, fresh))):
        widen = tirx.For(v, f.min, f.extent, tirx.ForKind.SERIAL, widen)
    return tirx.SeqStmt([tirx.AllocBuffer(q), widen,
                         tirx.For(loop.loop_var, loop.min, loop.extent, loop.kind, body)])


def _path_loops(stmt: Any, target: Any) -> list[Any] | None:
    """The loops around ``target`` inside ``stmt`` (outermost first), None when it is not there or sits under
    anything but sequences and serial loops (a test: its reads are not unconditional)."""
    if stmt.same_as(target):
        return []
    if isinstance(stmt, tirx.SeqStmt):
        for st in stmt.seq:
            found = _path_loops(st, target)
            if found is not None:
                return found
        return None
    if isinstance(stmt, tirx.For) and stmt.kind == tirx.ForKind.SERIAL:
        found = _path_loops(stmt.body, target)
        return None if found is None else [stmt, *found]
    return None


def widen_pixel_pairs(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """``func`` with each loop of two-pixel calls on a pair it does not move (``_widened``) widening the pair once,
    innermost such loops first."""
    return tvm_ffi.structural_map(func, [(tirx.For, lambda loop: _widened(loop) or loop)])


def WidenPixelPairs() -> tvm.transform.Pass:  # noqa: N802 (TVM's naming of passes)
    """The pass form of ``widen_pixel_pairs``, after ``MicroKernels`` in the plain-C lowering."""
    return tirx.transform.prim_func_pass(lambda f, _m, _c: widen_pixel_pairs(f), opt_level=0,
                                         name="tvm_patch.WidenPixelPairs")
