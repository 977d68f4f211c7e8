"""How often each part of a kernel's final TIR runs: the executed multiply-accumulates (by the shape of their
reduction), the micro-kernel calls (by name, with the elements they process), the other element stores.
Read from the TIR the C code is emitted from, so the counts follow the kernels as they are generated now
(register blocking, depthwise windows, the patch stage's loop nests in either halo mode) rather than the
operator they implement. Loops whose bounds depend on an outer loop (a cache-mode stage's first patch of a
row computes more than the next) are counted exactly by running the outer loop's values; a condition that
depends on inner loops (a border patch's in-image check) is counted as taken.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import tvm
import tvm_ffi
from tvm import s_tir, tirx

from tvm_patch.export.kernel_info import has_mac
from tvm_patch.export.patterns import substitute_vars
from tvm_patch.tir_util import uses_var

MAX_ENUMERATE = 64  # a loop whose variable bounds inner loops is run value by value up to this extent


def _controls(body: Any, var: tirx.Var) -> bool:
    """Does ``var`` appear in the bounds of a loop or the condition of a branch inside ``body``?"""
    found = [False]

    def on_for(f: Any) -> tvm_ffi.WalkResult:
        found[0] = found[0] or uses_var(f.extent, var) or uses_var(f.min, var)
        return tvm_ffi.WalkResult.SKIP if found[0] else tvm_ffi.WalkResult.ADVANCE

    def on_if(s: Any) -> tvm_ffi.WalkResult:
        found[0] = found[0] or uses_var(s.condition, var)
        return tvm_ffi.WalkResult.SKIP if found[0] else tvm_ffi.WalkResult.ADVANCE

    tvm_ffi.structural_walk(body, [(tirx.For, on_for), (tirx.IfThenElse, on_if)], order="pre")
    return found[0]


def _mac_class(extents: list[int]) -> str:
    """A reduction's shape from its loops' extents: one loop = a 1x1 convolution or a dense row (over channels),
    two = a depthwise window (or a k x k convolution over one channel), three = a k x k over channels."""
    n = len([e for e in extents if e > 1])
    return "1x1" if n <= 1 else "dw" if n == 2 else "kxk"


def _micro_macs(name: str, args: list[int | None]) -> int:
    """Multiply-accumulates of one micro-kernel call (tvmp_kernels.h signatures; 0 when a length is not
    constant): tvmp_dot_s8(a, b, n, acc) n; tvmp_dot_s8_rowsJ(a, w, ws, n, acc) J x n; tvmp_window_s8(p, pb, sy,
    sx, w, wb, wy, wx, kh, kw, ...) kh x kw; the two-pixel and two-window kernels twice theirs."""
    if name == "tvmp_dot_s8" and len(args) > 2:
        return args[2] or 0
    if name.startswith("tvmp_dot_s8_rows") and len(args) > 3:
        return int(name.removeprefix("tvmp_dot_s8_rows")) * (args[3] or 0)
    if name.startswith("tvmp_dot_s8_px2_rows") and len(args) > 4:  # (a, as, w, ws, n, acc): 2 pixels x J rows x n
        return 2 * int(name.removeprefix("tvmp_dot_s8_px2_rows")) * (args[4] or 0)
    if name == "tvmp_window_s8" and len(args) > 9:
        return (args[8] or 0) * (args[9] or 0)
    if name == "tvmp_window2_s8" and len(args) > 10:  # (p, pb, d, sy, sx, w, wb, wy, wx, kh, kw, acc): two windows
        return 2 * (args[9] or 0) * (args[10] or 0)
    return 0


def executed(func: tirx.PrimFunc) -> Counter:
    """Execution counts of ``func``'s final TIR: ``mac_<class>`` and ``out_<class>`` (MACs and the outputs they
    accumulate, class 1x1 / dw / kxk), ``mac_loop`` / ``mac_flat`` (MACs in a loop / unrolled) and
    ``red_loops`` (starts of the innermost loop around looped MACs), ``micro_macs`` (the MACs of the
    micro-kernel calls), ``call_<name>`` and ``elems_<name>`` per extern call (its length
    argument times its calls, when constant), ``stores`` (element stores that are not accumulations)."""
    ana = tvm.sym.Analyzer()
    out: Counter = Counter()

    def const(e: Any, env: dict) -> int | None:
        e = ana.simplify(substitute_vars(e, env) if env else e)
        return int(e.value) if isinstance(e, tirx.IntImm) else None

    def calls(expr: Any, trips: int, env: dict) -> None:
        def on_call(call: Any) -> tvm_ffi.WalkResult:
            if call.op.name.endswith(("call_extern", "call_pure_extern")) and call.args and hasattr(call.args[0], "value"):
                name = str(call.args[0].value)
                if name.startswith("tvmp_"):
                    out[f"call_{name}"] += trips
                    lengths = [const(a, env) for a in call.args[1:] if isinstance(a, tirx.IntImm)]
                    out[f"elems_{name}"] += trips * max([x for x in lengths if x is not None] + [1])
                    macs = _micro_macs(name, [const(a, env) if not isinstance(a, tvm.ir.Call) else None
                                              for a in call.args[1:]])
                    out["micro_macs"] += trips * macs
            return tvm_ffi.WalkResult.ADVANCE

        tvm_ffi.structural_walk(expr, [(tvm.ir.Call, on_call)], order="pre")

    def visit(node: Any, trips: int, env: dict, chain: list[int], red: list[int] | None) -> None:
        if trips == 0:
            return
        if isinstance(node, tirx.For):
            ext, lo = const(node.extent, env), const(node.min, env)
            ext = 1 if ext is None else ext
            if lo is not None and 1 < ext <= MAX_ENUMERATE and _controls(node.body, node.loop_var):
                for v in range(lo, lo + ext):
                    visit(node.body, trips, env | {node.loop_var: tirx.IntImm(str(node.extent.ty), v)},
                          chain + [ext], red)
            else:
                visit(node.body, trips * ext, env, chain + [ext], red)
        elif isinstance(node, tirx.SeqStmt):
            # several MAC stores in one sequence: an unrolled reduction; otherwise the loops around the sequence
            # stay the reduction's (an accumulator's init, lets and the epilogue beside it)
            macs = sum(isinstance(s, tirx.BufferStore) and has_mac(s.value) for s in node.seq)
            for s in node.seq:
                if isinstance(s, tirx.Bind):  # a let: later statements see its value
                    env = env | {s.var: ana.simplify(substitute_vars(s.value, env) if env else s.value)}
                else:
                    visit(s, trips, env, [] if macs > 1 else chain, red)
        elif isinstance(node, tirx.LetStmt):
            visit(node.body, trips, env | {node.var: ana.simplify(substitute_vars(node.value, env) if env else node.value)},
                  chain, red)
        elif isinstance(node, tirx.IfThenElse):
            c = const(node.condition, env)
            if c is None or c:
                visit(node.then_case, trips, env, [], red)
            elif node.else_case is not None:
                visit(node.else_case, trips, env, [], red)
        elif isinstance(node, s_tir.SBlockRealize):
            block = node.block
            extents = [int(iv.dom.extent) for iv in block.iter_vars if int(iv.iter_type) == 2
                       and isinstance(iv.dom.extent, tirx.IntImm)]
            visit(block.body, trips, env, chain, extents if extents else None)
        elif isinstance(node, tirx.BufferStore):
            calls(node.value, trips, env)
            if has_mac(node.value):
                ext = red if red is not None else chain
                cls = _mac_class(ext)
                length = 1
                for e in ext:
                    length *= e
                out[f"mac_{cls}"] += trips
                out[f"out_{cls}"] += trips / max(1, length)
                # in the lowered code: a MAC inside a loop (one loop start per chain[-1] MACs) or unrolled
                if chain and chain[-1] > 1:
                    out["mac_loop"] += trips
                    out["red_loops"] += trips / chain[-1]
                else:
                    out["mac_flat"] += trips
            else:
                out["stores"] += trips
        elif isinstance(node, tirx.Evaluate):
            calls(node.value, trips, env)
        elif hasattr(node, "body"):
            visit(node.body, trips, env, chain, red)

    visit(func.body, 1, {}, [], None)
    return out
