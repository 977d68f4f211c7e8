"""A pixel pair that every output-channel block of a 1x1 convolution reads, sign-extended once.

The two-pixel nest of a 1x1 convolution (``micro_kernels._px2_rows_call``) calls
``tvmp_dot_s8_px2_rows{J}(A + a, P, W + w(c), S, K, acc)`` once per block of J output channels with the same two
activation vectors, and each call sign-extends them again (two SXTB16 per word per pixel). Where a loop calls it
with activation arguments that do not depend on the loop (the channel-block loop around one pixel pair), the pair
is sign-extended once before the loop into a C local of K words (``tvmp_widen_px2``) and the loop calls
``tvmp_dot_q15_px2_rows{J}``, which reads it with word loads and no SXTB16 on the activations (``tvmp_kernels.h``;
since round 17 two LDRD per four channels, tvmp_kernels.h's TVMP_LDRD_POST). Likewise one pixel whose channels
every block of a rows kernel reads (``tvmp_dot_s8_rows{J}``: an in-place or odd-width 1x1 convolution's pixel):
``tvmp_widen_px1`` into K / 2 words, then ``tvmp_dot_q15_rows{J}`` (round 17: kws's 1x1 kernels -8.5 %).

Exact: the same products in the same sums. The widening reads the pair before the loop instead of in every
iteration; a read moved earlier sees the value it saw before, since nothing in the loop stores to the activation
buffer (checked) and the kernels' in-place proofs make every read see its input unclobbered. The copy is a C
local of the kernel (``workspace``: buffers named ``WIDE_NAME`` up to ``MAX_WIDE_BYTES`` stay on the stack), so no
arena byte; the stack it takes is in the firmware's fixed stack reserve (the emulator run reports the stack used).
In a patch stage too: its buffers share planned storage, but its in-place proofs make every read of the pair see
the unclobbered input in every channel block, so reading it once before them reads the same bytes; the widened
copy is a C local outside the stage's workspace plan.

An NCHW kernel first copies its pair pixel-major (``local[p * K + c] = src[base + c * S + p]``,
``inplace_conv.pixel_pair_copy_schedule``) and widens the copy. Where nothing else reads that copy, the widening
reads the channel planes instead (``tvmp_widen_px2_planes(&src[base], S, n, q)``: the same words) and the copy,
its buffer and its stores go (``_from_planes``). Exact for the same reason: between the copy and the widening
nothing stores to the source, so both read the same bytes.
"""

from __future__ import annotations

import math
from typing import Any

import tvm
import tvm_ffi
from tvm import tirx
from tvm.ir.expr import TensorLoad

from tvm_patch.codegen.micro_kernels import PX2_ROWS, ROWS, _extern_name, _int
from tvm_patch.tir_util import flat_seq, load_counts, seq, uses_var

WIDEN = "tvmp_widen_px2"
WIDEN_PX1 = "tvmp_widen_px1"
WIDEN_PLANES = "tvmp_widen_px2_planes"
Q15_PX2_ROWS = {2: "tvmp_dot_q15_px2_rows2", 4: "tvmp_dot_q15_px2_rows4"}
Q15_ROWS = {2: "tvmp_dot_q15_rows2", 4: "tvmp_dot_q15_rows4"}
WIDE_NAME = "px2_q15"  # the widened pair's C local
MAX_WIDE_BYTES = 2688  # resnet8's 3x3 taps over 64 channels, 1x1 pairs of up to 672 channels (mcunet-in0's last); larger keep the one-step kernel
MIN_BLOCKS = 2  # a loop of one channel block gains nothing
_PX2_NAMES = {name: rows for rows, name in PX2_ROWS.items()}
# a dot call on activations -> (its widened form, the widening's name, the activation arguments it takes): the
# pixel pair's kernels (a, as, w, ws, n, acc) and one pixel's (a, w, ws, n, acc)
_FORMS = {**{name: (Q15_PX2_ROWS[rows], WIDEN, 2) for name, rows in _PX2_NAMES.items()},
          **{name: (Q15_ROWS[rows], WIDEN_PX1, 1) for rows, name in ROWS.items()}}


def _dot_evals(stmt: Any) -> list[tirx.Evaluate]:
    found: list[tirx.Evaluate] = []

    def on_eval(ev: Any) -> tvm_ffi.WalkResult:
        if _extern_name(ev.value) in _FORMS:
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
    """``loop`` with its dot calls on a loop-invariant pixel pair (or pixel) reading it widened once before the
    loop, else None."""
    if loop.kind != tirx.ForKind.SERIAL or (_int(loop.extent) or 0) < MIN_BLOCKS:
        return None
    evals = _dot_evals(loop.body)
    if not evals or len({_FORMS[_extern_name(ev.value)][1] for ev in evals}) != 1:
        return None
    _, widen_name, n_act = _FORMS[_extern_name(evals[0].value)]
    args0 = list(evals[0].value.args)[1:]  # the activation arguments (a, as or a), then w, ws, n, acc
    acts, n = args0[:n_act], _int(args0[n_act + 2])
    a_ptr = acts[0]
    if n is None or n % 4 or n * 4 > MAX_WIDE_BYTES:
        return None
    for ev in evals:
        args = list(ev.value.args)[1:]
        if not (all(tvm_ffi.structural_equal(x, y) for x, y in zip(args[:n_act], acts))
                and _int(args[n_act + 2]) == n):
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
    if any(uses_var(e, v) for e in acts for v in inner):
        return None
    count = math.prod(_int(f.extent) for f in taps)
    words = n * n_act // 2  # a pair: 4 words per 4 channels; one pixel: 2
    if count * words * 4 > MAX_WIDE_BYTES:
        return None
    load = a_ptr.args[0] if isinstance(a_ptr, tvm.ir.Call) and a_ptr.args else None
    if not isinstance(load, TensorLoad) or _stores_to(loop.body, load.source):
        return None
    q = tirx.decl_buffer((count * words,), "uint32", WIDE_NAME)

    def at(vs: list[Any]) -> Any:  # the widened pair of tap iteration vs
        flat = tirx.const(0, "int32")
        for f, v in zip(taps, vs):
            flat = flat * _int(f.extent) + tirx.Cast("int32", v)
        return tirx.address_of(tirx.BufferLoad(q, [tvm.sym.Analyzer().simplify(flat * words)]))

    def on_eval(ev: Any) -> Any:
        name = _extern_name(ev.value)
        if name not in _FORMS:
            return ev
        args = list(ev.value.args)[1:]
        return tirx.Evaluate(tirx.call_extern("void", _FORMS[name][0], at([f.loop_var for f in taps]),
                                              *args[n_act:]))

    body = tvm_ffi.structural_map(loop.body, [(tirx.Evaluate, on_eval)])
    fresh = [tirx.Var(f.loop_var.name + "_w", f.loop_var.ty) for f in taps]
    moved = [tvm_ffi.structural_map(e, [(tirx.Var, lambda v: next(
        (u for f, u in zip(taps, fresh) if f.loop_var.same_as(v)), v))]) for e in acts]
    widen: Any = tirx.Evaluate(tirx.call_extern("void", widen_name, *moved, tirx.const(n, "int32"), at(fresh)))
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


def _pair_copy(stmt: Any) -> tuple[Any, int, TensorLoad, int] | None:
    """(local buffer, K, the source's load at channel 0 of pixel 0, channel stride S) of a pixel-major copy of
    a pixel pair out of channel planes, ``for c < K: for p < 2: local[p * K + c] = src[base + c * S + p]``
    (either loop order), else None."""
    if not (isinstance(stmt, tirx.For) and isinstance(stmt.body, tirx.For) and isinstance(stmt.body.body, tirx.BufferStore)):
        return None
    loops, store = [stmt, stmt.body], stmt.body.body
    if any(f.kind != tirx.ForKind.SERIAL or _int(f.min) != 0 or _int(f.extent) is None for f in loops):
        return None
    pix = [f for f in loops if _int(f.extent) == 2]
    chan = [f for f in loops if _int(f.extent) != 2]
    load = store.value
    if len(pix) != 1 or len(chan) != 1 or len(store.indices) != 1 or not isinstance(load, TensorLoad) \
            or len(load.indices) != 1 or str(load.ty) != "int8" or str(store.buffer.ty.dtype) != "int8":
        return None
    p, c, k = pix[0].loop_var, chan[0].loop_var, _int(chan[0].extent)
    dst = [_int(x) for x in tvm.sym.detect_linear_equation(store.indices[0], [p, c])]
    src = list(tvm.sym.detect_linear_equation(load.indices[0], [c, p]))
    if dst != [k, 1, 0] or len(src) != 3 or _int(src[1]) != 1 or _int(src[0]) is None:
        return None
    base, stride = src[2], _int(src[0])
    return store.buffer, k, tirx.BufferLoad(load.source, [base]), stride


def _from_planes(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """``func`` with each widening of a pixel-major pair copy read by nothing else (``_pair_copy``, in the same
    sequence before it, only declarations in between) widening the source's channel
    planes instead, and the copy gone (its buffer too when nothing else stores to it: ``_drop_unread``)."""
    reads = load_counts(func)  # buffers sharing a name count together: errs towards keeping a copy
    dropped: list[Any] = []

    def on_seq(node: Any) -> Any:
        flat, changed = flat_seq(node), False
        for i, st in enumerate(flat):
            if not (isinstance(st, tirx.Evaluate) and _extern_name(st.value) == WIDEN):
                continue
            a, a_step, n, q = list(st.value.args)[1:]
            local = a.args[0] if isinstance(a, tvm.ir.Call) and a.args and isinstance(a.args[0], TensorLoad) else None
            if local is None or _int(local.indices[0]) != 0 or reads.get(local.source.name) != 1:
                continue
            for j in range(i - 1, -1, -1):
                copy = _pair_copy(flat[j])
                if copy is not None and copy[0].same_as(local.source):
                    break
                if not isinstance(flat[j], tirx.AllocBuffer):
                    copy = None
                    break
            else:
                copy = None
            ana = tvm.sym.Analyzer()
            if copy is None or _int(ana.simplify(a_step)) != copy[1] or (_int(n) or 0) > copy[1]:
                continue
            _, _, src, stride = copy
            flat[i] = tirx.Evaluate(tirx.call_extern("void", WIDEN_PLANES, tirx.address_of(src),
                                                     tirx.const(stride, "int32"), n, q))
            flat[j] = tirx.Evaluate(0)
            dropped.append(local.source)
            changed = True
        return seq([st for st in flat if not _is_noop(st)]) if changed else node

    out = tvm_ffi.structural_map(func, [(tirx.SeqStmt, on_seq)])
    return _drop_unread(out, dropped) if dropped else out


def _is_noop(st: Any) -> bool:
    return isinstance(st, tirx.Evaluate) and isinstance(st.value, tirx.IntImm)


def _drop_unread(func: tirx.PrimFunc, bufs: list[Any]) -> tirx.PrimFunc:
    """``func`` without the declarations of ``bufs`` and their stores, where nothing reads them any more (a C
    local written and never read: the host's -Werror build refuses it)."""
    reads = load_counts(func)  # buffers sharing a name count together: errs towards keeping a copy
    gone = [b for b in bufs if not reads.get(b.name)]

    def dead(st: Any) -> bool:
        return isinstance(st, (tirx.AllocBuffer, tirx.BufferStore)) and any(st.buffer.same_as(b) for b in gone)

    def on_seq(node: Any) -> Any:
        flat = flat_seq(node)
        kept = [st for st in flat if not dead(st)]
        return node if len(kept) == len(flat) else seq(kept)

    return tvm_ffi.structural_map(func, [(tirx.SeqStmt, on_seq)])


def widen_pixel_pairs(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """``func`` with each loop of two-pixel calls on a pair it does not move (``_widened``) widening the pair once,
    innermost such loops first, and such a pair copied out of channel planes widened from them (``_from_planes``)."""
    return _from_planes(tvm_ffi.structural_map(func, [(tirx.For, lambda loop: _widened(loop) or loop)]))


def WidenPixelPairs() -> tvm.transform.Pass:  # noqa: N802 (TVM's naming of passes)
    """The pass form of ``widen_pixel_pairs``, after ``MicroKernels`` in the plain-C lowering."""
    return tirx.transform.prim_func_pass(lambda f, _m, _c: widen_pixel_pairs(f), opt_level=0,
                                         name="tvm_patch.WidenPixelPairs")
