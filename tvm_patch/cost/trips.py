"""How often each part of a kernel's final TIR runs: the executed multiply-accumulates (by the shape of their
reduction), the micro-kernel calls (by name, with the elements they process), the other element stores.
Read from the TIR the C code is emitted from, so the counts follow the kernels as they are generated now
(register blocking, depthwise windows, the patch stage's loop nests in either halo mode) rather than the
operator they implement. Loops whose bounds depend on an outer loop (a cache-mode stage's first patch of a
row computes more than the next) are counted exactly by running the outer loop's values; a condition that
depends on inner loops (a border patch's in-image check) is evaluated over those loops' values (numpy), and
each branch counts the share of iterations that take it (counted as taken only when it cannot be evaluated:
a data-dependent condition, or more than MAX_GRID combinations).
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any, Callable

import numpy as np
import tvm
import tvm_ffi
from tvm import s_tir, tirx
from tvm.ir.expr import TensorLoad

from tvm_patch.codegen.channel_rows import ROW_KERNEL
from tvm_patch.codegen.copy_kernels import run_length
from tvm_patch.codegen.quantize_kernels import QUANT_ROW
from tvm_patch.export.kernel_info import has_mac
from tvm_patch.patch.schedule import eval_int_expr
from tvm_patch.tir_util import mixed_radix, uses_var, vars_of

MAX_ENUMERATE = 64  # a loop whose variable bounds inner loops is run value by value up to this extent
MAX_GRID = 1 << 20  # a branch condition is evaluated over at most this many combinations of its loops' values
# a buffer the function allocates itself with at most this many elements is an accumulator that the compiler keeps
# in registers (a TE-form stage's ``layer0_acc_ptr[0] = 0;``): a constant stored into it is ``stores_reg``
REG_ELEMS = 4
# bytes: a contiguous fill nest of an int8 constant at least this long is counted as a fill call (_fill_run); a
# shorter one stays ``stores_const``. GCC 12.2 -O3 (cortex-m7) compiles a row of n such bytes to ``str`` words from
# n = 4 on (4: one word, 8: two, 12-24: three to six, 32 and more: a memset call), below to a halfword and a byte
# (n = 2: one strh, 3: strh and strb), so byte stores price those as well as a fill's tail bytes would. vww 96 3x3
# split 14 recompute (M7): the stage's 52 padding fill nests measured 0.33-0.52 instructions a byte (least squares:
# 2.06 a word store), their runs 32 bytes or more once their patch-dependent extents are known (a few of 1 and 4)
MIN_FILL = 4


def _controls(body: Any, var: tirx.Var) -> bool:
    """Does ``var`` appear in the bounds of a loop, the condition of a branch or the length of a copy / fill
    call (a patch stage's border runs) inside ``body``, directly or through a let (`tirx.Bind`, `tirx.LetStmt`)
    whose value uses it (common subexpression elimination binds the patch stage's loop bounds so)?"""
    found = [False]
    deps = [var]

    def uses(e: Any) -> bool:
        return any(uses_var(e, v) for v in deps)

    def on_let(s: Any) -> tvm_ffi.WalkResult:
        if uses(s.value):
            deps.append(s.var)
        return tvm_ffi.WalkResult.ADVANCE

    def on_for(f: Any) -> tvm_ffi.WalkResult:
        found[0] = found[0] or uses(f.extent) or uses(f.min)
        return tvm_ffi.WalkResult.SKIP if found[0] else tvm_ffi.WalkResult.ADVANCE

    def on_if(s: Any) -> tvm_ffi.WalkResult:
        found[0] = found[0] or uses(s.condition)
        return tvm_ffi.WalkResult.SKIP if found[0] else tvm_ffi.WalkResult.ADVANCE

    def on_call(c: Any) -> tvm_ffi.WalkResult:
        n = run_length(c)
        found[0] = found[0] or (n is not None and uses(n))
        return tvm_ffi.WalkResult.SKIP if found[0] else tvm_ffi.WalkResult.ADVANCE

    tvm_ffi.structural_walk(body, [(tirx.Bind, on_let), (tirx.LetStmt, on_let), (tirx.For, on_for),
                                   (tirx.IfThenElse, on_if), (tvm.ir.Call, on_call)], order="pre")
    return found[0]


def _mul64(value: Any) -> int:
    """The 64-bit multiplications in ``value``: TVM's fixed-point arithmetic spelt out (a patch stage's residual
    add rescaling both inputs), several instructions each on a 32-bit core where a store of a requantization
    call's result is one."""
    n = [0]

    def on_mul(e: Any) -> tvm_ffi.WalkResult:
        n[0] += str(e.ty) == "int64"
        return tvm_ffi.WalkResult.ADVANCE

    tvm_ffi.structural_walk(value, [(tirx.Mul, on_mul)], order="pre")
    return n[0]


# the integer operations eval_int_expr does not know, as numpy: C's truncating division, the bitwise ones
_NUMPY_OPS = {tirx.Div: lambda x, y: np.sign(x) * np.sign(y) * (np.abs(x) // np.abs(y)),
              tirx.BitwiseAnd: np.bitwise_and, tirx.BitwiseOr: np.bitwise_or, tirx.BitwiseXor: np.bitwise_xor,
              tirx.LShift: np.left_shift}


def _evaluable(cond: Any) -> tuple[Any, list[tuple[Any, Any, Any, Any]]]:
    """``cond`` in the terms ``eval_int_expr`` evaluates: a shift right by a constant as a floor division (equal
    for any sign), each operation of _NUMPY_OPS as a new variable (var, numpy function, a, b), in evaluation
    order (inner ones first)."""
    ops: list[tuple[Any, Any, Any, Any]] = []

    def shift(n: Any) -> Any:
        return tirx.FloorDiv(n.a, tirx.IntImm(str(n.a.ty), 1 << int(n.b.value))) if isinstance(n.b, tirx.IntImm) else n

    def as_var(n: Any) -> Any:
        ops.append((tirx.Var(f"op{len(ops)}", str(n.a.ty)), _NUMPY_OPS[type(n)], n.a, n.b))
        return ops[-1][0]

    return tvm_ffi.structural_map(cond, [(tirx.RShift, shift)] + [(t, as_var) for t in _NUMPY_OPS]), ops


def taken_share(cond: Any, doms: dict[Any, tuple[int, int]]) -> float | None:
    """The share of the iterations of the loops ``cond`` depends on (``doms``: loop variable -> (min, extent))
    for which it holds; None when it cannot be evaluated (another variable, a buffer load, too many values)."""
    found: list[Any] = []
    for v in vars_of(cond):
        if not any(v.same_as(u) for u in found):
            found.append(v)
    if any(v not in doms for v in found) or math.prod(doms[v][1] for v in found) > MAX_GRID:
        return None
    grid = np.meshgrid(*[np.arange(doms[v][0], doms[v][0] + doms[v][1]) for v in found], indexing="ij", sparse=True)
    env = dict(zip(found, grid))
    expr, ops = _evaluable(cond)
    try:
        for var, fn, a, b in ops:
            env[var] = fn(eval_int_expr(a, env), eval_int_expr(b, env))
        value = eval_int_expr(expr, env)
    except (NotImplementedError, KeyError, ZeroDivisionError):
        return None
    return float(np.mean(np.broadcast_to(value, tuple(doms[v][1] for v in found)) if found else value))


def _share(cond: Any, doms: dict[Any, tuple[int, int]]) -> float | None:
    """taken_share of a simplified condition: 1 or 0 for a constant, None when it cannot be evaluated."""
    if isinstance(cond, tirx.IntImm):
        return 1.0 if cond.value else 0.0
    return taken_share(cond, doms)


def _select(value: Any) -> tuple[Any, Any, Any] | None:
    """(condition, then, else) of a stored value that is an ``if_then_else`` (under casts), else None."""
    while isinstance(value, tirx.Cast):
        value = value.value
    if isinstance(value, tvm.ir.Call) and isinstance(value.op, tvm.ir.Op) and value.op.name.endswith("if_then_else"):
        return value.args[0], value.args[1], value.args[2]
    return None


def _calls_tvmp(expr: Any) -> bool:
    """Does ``expr`` call a micro-kernel or helper (an extern ``tvmp_*``)?"""
    found = [False]

    def on_call(call: Any) -> tvm_ffi.WalkResult:
        found[0] = found[0] or (call.op.name.endswith(("call_extern", "call_pure_extern")) and bool(call.args)
                                and str(getattr(call.args[0], "value", "")).startswith("tvmp_"))
        return tvm_ffi.WalkResult.SKIP if found[0] else tvm_ffi.WalkResult.ADVANCE

    tvm_ffi.structural_walk(expr, [(tvm.ir.Call, on_call)], order="pre")
    return found[0]


def _weights(expr: Any) -> list[str]:
    """The names of the weight buffers (``*_weight``: the patch stage's ``layer{i}_weight``) ``expr`` loads."""
    found: list[str] = []

    def on_load(load: Any) -> tvm_ffi.WalkResult:
        name = str(load.source.name)
        if name.endswith("_weight") and name not in found:
            found.append(name)
        return tvm_ffi.WalkResult.ADVANCE

    tvm_ffi.structural_walk(expr, [(TensorLoad, on_load)], order="pre")
    return found


def _mac_class(extents: list[int]) -> str:
    """A reduction's shape from its loops' extents: one loop = a 1x1 convolution or a dense row (over channels),
    two = a depthwise window (or a k x k convolution over one channel), three = a k x k over channels."""
    n = len([e for e in extents if e > 1])
    return "1x1" if n <= 1 else "dw" if n == 2 else "kxk"


def _dot_shape(name: str, args: list[int | None]) -> tuple[int, int] | None:
    """(rows, length) of a dot-product micro-kernel call (tvmp_kernels.h signatures: tvmp_dot_s8(a, b, n, acc)
    1 row; tvmp_dot_s8_rowsJ(a, w, ws, n, acc) J; tvmp_dot_s8_px2_rowsJ(a, as, w, ws, n, acc) and tvmp_dot_q15_px2_rowsJ(q, w, ws, n, acc) 2 pixels x J;
    tvmp_dot_q15_rowsJ(q, w, ws, n, acc) J; tvmp_dot_q15_px4_rowsJ(q, w, ws, n, acc) 4 pixels x J),
    None for another call or a length that is not constant. The widened-weights twins (``tvmp_dot_s8w_*``,
    ``tvmp_dot_q15w_*``: codegen/wide_weights.py) have their originals' signatures."""
    if name == ROW_KERNEL:  # (q, pairs, w, n, ...): one channel along pairs of pixels (codegen/channel_rows.py)
        return (2 * args[1], args[3]) if len(args) > 3 and args[1] and args[3] else None
    name = name.replace("_s8w_", "_s8_").replace("_q15w_", "_q15_")
    if name == "tvmp_dot_s8" and len(args) > 2 and args[2]:
        return 1, args[2]
    if name.startswith("tvmp_dot_s8_rows") and len(args) > 3 and args[3]:
        return int(name.removeprefix("tvmp_dot_s8_rows")), args[3]
    if name.startswith("tvmp_dot_s8_px2_rows") and len(args) > 4 and args[4]:
        return 2 * int(name.removeprefix("tvmp_dot_s8_px2_rows")), args[4]
    if name.startswith("tvmp_dot_q15_px2_rows") and len(args) > 3 and args[3]:  # (q, w, ws, n, acc): a widened pair
        return 2 * int(name.removeprefix("tvmp_dot_q15_px2_rows")), args[3]
    if name.startswith("tvmp_dot_q15_px4_rows") and len(args) > 3 and args[3]:  # (q, w, ws, n, acc): two pairs
        return 4 * int(name.removeprefix("tvmp_dot_q15_px4_rows")), args[3]
    if name.startswith("tvmp_dot_q15_rows") and len(args) > 3 and args[3]:  # (q, w, ws, n, acc): a widened pixel
        return int(name.removeprefix("tvmp_dot_q15_rows")), args[3]
    return None


def _micro_macs(name: str, args: list[int | None]) -> int:
    """Multiply-accumulates of one micro-kernel call (0 when a length is not constant): a dot product's rows x
    length (_dot_shape); tvmp_window_s8(p, pb, sy, sx, w, wb, wy, wx, kh, kw, ...) kh x kw; tvmp_window2_s8 /
    tvmp_window4_s8[w] (two / four windows) twice / four times its."""
    shape = _dot_shape(name, args)
    if shape is not None:
        return shape[0] * shape[1]
    if name == "tvmp_window_s8" and len(args) > 9:
        return (args[8] or 0) * (args[9] or 0)
    blocks = {"tvmp_window2_s8": 2, "tvmp_window2_s8w": 2, "tvmp_window4_s8": 4, "tvmp_window4_s8w": 4}  # (p, pb, d, sy, sx, w, wb, wy,
    # wx, kh, kw, acc)
    if name in blocks and len(args) > 10:
        return blocks[name] * (args[9] or 0) * (args[10] or 0)
    return 0


def _has_let(e: Any) -> bool:
    """Does expression ``e`` hold a let expression (``tirx.Let``: TVM's lowering of floor division binds one)?"""
    found = [False]

    def on_let(_: Any) -> tvm_ffi.WalkResult:
        found[0] = True
        return tvm_ffi.WalkResult.SKIP

    tvm_ffi.structural_walk(e, [(tirx.Let, on_let)], order="pre")
    return found[0]


def _store_class(value: Any) -> str:
    """What an element store writes: ``const`` (a constant: an accumulator's or a local copy's initialisation,
    a padding value), ``copy`` (a loaded element: the gathers and copies between a stage's buffers), ``float``
    (computed in floating point: a float input quantized into the first patch), ``int`` (another integer
    computation: a layer's output after its requantization and clamp)."""
    if isinstance(value, tirx.IntImm):
        return "const"
    if isinstance(value, TensorLoad):
        return "copy"
    floats = [False]

    def on_expr(e: Any) -> tvm_ffi.WalkResult:
        floats[0] = floats[0] or str(getattr(e, "ty", "")).startswith("float")
        return tvm_ffi.WalkResult.SKIP if floats[0] else tvm_ffi.WalkResult.ADVANCE

    tvm_ffi.structural_walk(value, [(tvm.ir.expr.Expr, on_expr)], order="pre")
    return "float" if floats[0] else "int"


def _fill_nest(loop: tirx.For) -> tuple[list[tirx.For], tirx.BufferStore] | None:
    """``loop`` and the loops perfectly nested in it (nothing else in them: no branch, no let) around one store of
    an int8 constant into a flat buffer: (the loops, outermost first; the store), else None (_fill_run)."""
    loops = []
    node: Any = loop
    while isinstance(node, tirx.For):
        loops.append(node)
        node = node.body
    if isinstance(node, tirx.BufferStore) and isinstance(node.value, tirx.IntImm) \
            and str(node.buffer.ty.dtype) == "int8" and len(node.indices) == 1:
        return loops, node
    return None


def _fill_run(nest: tuple[list[tirx.For], tirx.BufferStore], spans: list[tuple[int, int]]) -> int | None:
    """The length of the one unit-stride run a fill nest (_fill_nest; its loops' (min, extent) ``spans``, known in
    this visit) writes, where its index is the base plus the loops' variables in mixed radix in their nesting order
    (`tir_util.mixed_radix`: innermost stride 1, the next the inner extent, ...) and the run is at least MIN_FILL
    bytes; None otherwise (a strided store, a shorter run: stores_const)."""
    loops, store = nest
    length = math.prod(e for _, e in spans)
    order = mixed_radix(store.indices[0], [(f.loop_var, lo, e) for f, (lo, e) in zip(loops, spans)])
    return length if length >= MIN_FILL and order == list(range(len(loops)))[::-1] else None


def _register_locals(func: tirx.PrimFunc) -> Callable[[Any], bool]:
    """Whether a buffer is one that ``func`` allocates with at most REG_ELEMS elements (an accumulator); buffers
    compared by identity (``same_as``), found by name."""
    small: dict[str, list[Any]] = {}

    def on_alloc(node: Any) -> tvm_ffi.WalkResult:
        n = 1
        for d in node.buffer.shape:
            n = n * int(d) if isinstance(d, tirx.IntImm) else REG_ELEMS + 1
        if n <= REG_ELEMS:
            small.setdefault(node.buffer.name, []).append(node.buffer)
        return tvm_ffi.WalkResult.ADVANCE

    tvm_ffi.structural_walk(func.body, [(tirx.AllocBuffer, on_alloc)], order="pre")
    return lambda buf: any(b.same_as(buf) for b in small.get(buf.name, ()))


def _reduction(chain: list[tuple[int, Any]], indices: Any) -> tuple[list[int], bool]:
    """The reduction loops' extents of an accumulation in lowered code (``chain``: (extent, variable) of the loops
    around it since the last statement sequence; a reduction loop's variable is not in the accumulator's
    ``indices``) and whether it is register-blocked (a loop over several accumulators inside the reduction: a
    scalar 1x1 convolution computing 4 output channels per loaded input)."""
    red = [not any(uses_var(i, v) for i in indices) for _, v in chain]
    first = red.index(True) if True in red else len(chain)
    blocked = any(not r and e > 1 for (e, _), r in list(zip(chain, red))[first:])
    return [e for (e, _), r in zip(chain, red) if r], blocked


def executed(func: tirx.PrimFunc) -> Counter:
    """Execution counts of ``func``'s final TIR: ``mac_<class>`` and ``out_<class>`` (MACs and the outputs they
    accumulate, class 1x1 / dw / kxk by the number of reduction loops, or blk: register-blocked, _reduction), ``mac_loop`` / ``mac_flat`` (MACs in a loop / unrolled) and
    ``red_loops`` (starts of the innermost loop around looped MACs), ``micro_macs`` (the MACs of the
    micro-kernel calls; ``window_macs`` those of the depthwise window calls, kh x kw each), ``call_<name>`` and ``elems_<name>`` per extern call (its length
    argument times its calls, when constant), ``stores`` (element stores that are not accumulations, and the store
    instructions of the ``tvmp_copy_s8`` / ``tvmp_fill_s8`` calls: a word each, then the tail bytes; the element
    stores by what they write: ``stores_const``, ``stores_copy``, ``stores_float``, ``stores_int``, see _store_class,
    a constant into a small local (an accumulator's initialisation, kept in a register) as ``stores_reg`` instead of
    ``stores_const``, and the calls' word stores as ``stores_call``; a loop nest storing an int8 constant through
    one unit-stride run of at least MIN_FILL bytes (_fill_run: GCC compiles it to word stores or a memset) as
    ``stores_fill`` (its words and tail bytes) and ``fill_runs`` (its runs), apart from the calls (measured about
    2 instructions a word against a call's 6); ``mul64`` the 64-bit multiplications the stored values compute;
    a store of ``if_then_else(c, a, b)``
    counts as a's class and b's in the shares of the iterations that take each, as do the calls in a and b),
    ``branches`` (evaluations of a branch condition, ``branches_varying`` those whose outcome varies over the
    loops: a border patch's in-image check, ``branches_skipped`` its evaluations that skip the guarded statement,
    ``branches_repeated`` those of a condition already evaluated on the way: by an enclosing branch or an earlier
    one of the same statement sequence, whose outcome the compiler reuses),
    ``dot_simd_macs`` / ``dot_tail_macs`` the dot-product calls' MACs in words of four (SMLAD) and in their
    scalar tails (length % 4: a 5-tap kernel row is one word and one scalar MAC), ``dot_wide_macs`` those on
    weights stored widened (codegen/wide_weights.py), ``wmacs:<buffer>`` the MACs (scalar and micro-kernel) that read each weight buffer named ``*_weight`` (the
    patch stage's layers: ``layer{i}_weight``)."""
    ana = tvm.sym.Analyzer()
    out: Counter = Counter()

    # hash(expression) -> (the expression, kept alive so that its hash, the address of its object, stays its own;
    # does it hold a let expression). Keyed by that hash, as the loop values are (env: hash(variable) -> value):
    # a TIR expression's == builds an expression, which a dict keyed by expressions calls on every hit
    lets: dict[int, tuple[Any, bool]] = {}

    def has_let(e: Any) -> bool:
        key = hash(e)
        if key not in lets:
            lets[key] = (e, _has_let(e))
        return lets[key][1]

    def simplify(e: Any, env: dict) -> Any:
        if isinstance(e, tirx.IntImm):
            return e
        # simplifying a let expression binds its variable in the analyzer for good; the same expression under
        # other loop values would bind it again to another value, which TVM refuses (and a stale binding would be
        # wrong): such expressions get an analyzer of their own
        own = [has_let(e)]

        def sub(v: Any) -> Any:
            new = env.get(hash(v))
            if new is None:
                return v
            own[0] = own[0] or has_let(new)
            return new

        e = tvm_ffi.structural_map(e, (tirx.Var, sub)) if env else e
        return (tvm.sym.Analyzer() if own[0] else ana).simplify(e)

    def const(e: Any, env: dict) -> int | None:
        e = simplify(e, env)
        return int(e.value) if isinstance(e, tirx.IntImm) else None

    def calls(expr: Any, trips: int, env: dict) -> None:
        def on_call(call: Any) -> tvm_ffi.WalkResult:
            if call.op.name.endswith(("call_extern", "call_pure_extern")) and call.args and hasattr(call.args[0], "value"):
                name = str(call.args[0].value)
                length = run_length(call)
                if length is not None:  # a run of bytes: its store instructions (words and tail bytes)
                    n = const(length, env)
                    words = (n // 4 + n % 4) if n is not None and n > 0 else 0
                    out["stores"] += trips * words
                    out["stores_call"] += trips * words  # words a store: priced apart from the byte loops' stores
                if name == QUANT_ROW:  # a row of quantization stores, counted as the loop it replaces counted them
                    values = trips * max(const(call.args[3], env) or 0, 0)
                    out["stores"] += values
                    out["stores_float"] += values
                if name.startswith("tvmp_"):
                    out[f"call_{name}"] += trips
                    lengths = [const(a, env) for a in call.args[1:] if isinstance(a, tirx.IntImm)]
                    out[f"elems_{name}"] += trips * max([x for x in lengths if x is not None] + [1])
                    vals = [const(a, env) if not isinstance(a, tvm.ir.Call) else None for a in call.args[1:]]
                    macs = _micro_macs(name, vals)
                    out["micro_macs"] += trips * macs
                    if name.startswith("tvmp_window"):
                        out["window_macs"] += trips * macs
                    if name.startswith("tvmp_window4"):  # four outputs a call: fewer instructions per MAC than pairs
                        out["window4_macs"] += trips * macs
                    shape = _dot_shape(name, vals)
                    if shape is not None:  # the SIMD part (words of 4) and the scalar tail (n % 4) of the dot
                        out["dot_tail_macs"] += trips * shape[0] * (shape[1] % 4)
                        out["dot_simd_macs"] += trips * shape[0] * (shape[1] - shape[1] % 4)
                        if "_s8w_" in name or "_q15w_" in name:  # weights widened in Flash: no SXTB16 on them
                            out["dot_wide_macs"] += trips * shape[0] * shape[1]
                        if "_q15" not in name:  # activations sign-extended in the call (not widened before it)
                            out["dot_s8act_macs"] += trips * shape[0] * shape[1]
                    if name == ROW_KERNEL and shape is not None:  # counted as the nest it replaces: a two-pixel dot
                        pairs, n = shape[0] // 2, shape[1]  # per pair, and per output its epilogue and store
                        out["call_tvmp_dot_row_px2"] += trips * pairs
                        out["elems_tvmp_dot_row_px2"] += trips * pairs * n
                        for key in ("call_tvmp_requant_rbzr", "call_tvmp_sat_s8", "stores", "stores_int"):
                            out[key] += trips * shape[0]
                    for w in _weights(call):
                        out[f"wmacs:{w}"] += trips * macs
            return tvm_ffi.WalkResult.ADVANCE

        tvm_ffi.structural_walk(expr, [(tvm.ir.Call, on_call)], order="pre")

    doms: dict[Any, tuple[int, int]] = {}  # the loops being visited that are not enumerated: (min, extent)
    # per statement, what does not depend on the loop values (a loop run value by value visits its body once per
    # value: without these, each visit walks the whole body again; statements hash by identity)
    controls: dict[Any, bool] = {}
    mac: dict[Any, bool] = {}
    tvmp: dict[Any, bool] = {}
    seq_macs: dict[Any, int] = {}
    fills: dict[Any, Any] = {}  # loop -> its fill nest (_fill_nest), or None

    def has_calls(stmt: Any) -> bool:  # does the statement's value call a tvmp_ function
        if stmt not in tvmp:
            tvmp[stmt] = _calls_tvmp(stmt.value)
        return tvmp[stmt]

    def is_mac(store: Any) -> bool:
        if store not in mac:
            mac[store] = isinstance(store, tirx.BufferStore) and has_mac(store.value)
        return mac[store]

    seen: dict[Any, bool] = {}  # (branch, the conditions known on the way to it) -> is its condition among them

    def known_already(node: Any, known: tuple) -> bool:
        if (node, known) not in seen:
            seen[(node, known)] = any(tvm_ffi.structural_equal(node.condition, k) for k in known)
        return seen[(node, known)]

    # element store -> (its select's condition or None, whether that condition calls a tvmp_ function, the parts
    # it writes: [(expression, store class (``reg``: a constant into a register local), calls a tvmp_ function)],
    # the whole value as one part)
    parts: dict[Any, tuple] = {}
    in_register = _register_locals(func)

    def store(node: Any, trips: float, env: dict) -> None:
        # an element store of if_then_else(condition, a, b) (a border position's pad value, computed or not):
        # what it writes and calls split by the share of the iterations that take each side
        def kind(e: Any) -> tuple[Any, str, bool, int]:
            cls = _store_class(e)
            return e, "reg" if cls == "const" and in_register(node.buffer) else cls, _calls_tvmp(e), _mul64(e)

        if node not in parts:
            sel = _select(node.value)
            parts[node] = (None, False, [], [kind(node.value)]) if sel is None else \
                (sel[0], _calls_tvmp(sel[0]), [kind(sel[1]), kind(sel[2])], [kind(node.value)])
        cond, cond_calls, sides, whole = parts[node]
        share = None if cond is None else _share(simplify(cond, env), doms)
        if share is None:  # no select, or one that cannot be evaluated: the whole value, every time
            sides, shares = whole, (trips,)
        else:
            if cond_calls:
                calls(cond, trips, env)
            shares = (trips * share, trips * (1 - share))
        for (part, cls, has_calls, mul64), t in zip(sides, shares):
            if t:
                if has_calls:
                    calls(part, t, env)
                out[f"stores_{cls}"] += t
                out["mul64"] += t * mul64

    runs: dict[tuple, int | None] = {}  # (loop, its nest's spans) -> the run's length (_fill_run), or None

    def fill(loop: tirx.For, nest: tuple, trips: float, env: dict) -> bool:
        # a contiguous fill of an int8 constant (_fill_nest, _fill_run), its loops' bounds known in this visit
        # (constant, or known from the patch loops around, value by value): GCC compiles the nest to word stores (a
        # memset, or its own unrolled ones), counted as its words (stores_fill) and runs (fill_runs); False when it is
        # not such a nest
        if in_register(nest[1].buffer):  # a register local's initialisation: stores_reg (store())
            return False
        spans = [(const(f.min, env), const(f.extent, env)) for f in nest[0]]
        if any(lo is None or e is None for lo, e in spans):
            return False
        if any(e <= 0 for _, e in spans):  # the nest does not run
            return True
        key = (loop, tuple(spans))
        if key not in runs:
            runs[key] = _fill_run(nest, spans)
        if runs[key] is None:
            return False
        n = runs[key]
        out["stores"] += trips * (n // 4 + n % 4)
        out["stores_fill"] += trips * (n // 4 + n % 4)  # words, then the tail bytes: priced apart from the calls'
        out["fill_runs"] += trips
        return True

    def visit(node: Any, trips: float, env: dict, chain: list[tuple[int, Any]], red: list[int] | None,
              known: tuple = ()) -> None:
        # known: the branch conditions evaluated on the way to ``node`` in this iteration (an enclosing branch, an
        # earlier branch of the same statement sequence); the compiler reuses their outcome (jump threading)
        if trips == 0:
            return
        if isinstance(node, tirx.For):
            if node not in fills:
                fills[node] = _fill_nest(node)
            if fills[node] is not None and fill(node, fills[node], trips, env):
                return
            ext, lo = const(node.extent, env), const(node.min, env)
            ext = 1 if ext is None else ext
            if lo is not None and 1 < ext <= MAX_ENUMERATE and node not in controls:
                controls[node] = _controls(node.body, node.loop_var)
            if lo is not None and 1 < ext <= MAX_ENUMERATE and controls[node]:
                for v in range(lo, lo + ext):
                    visit(node.body, trips, env | {hash(node.loop_var): tirx.IntImm(str(node.extent.ty), v)},
                          chain + [(ext, node.loop_var)], red, known)
            else:
                if lo is not None:
                    doms[node.loop_var] = (lo, ext)
                visit(node.body, trips * ext, env, chain + [(ext, node.loop_var)], red, known)
                doms.pop(node.loop_var, None)
        elif isinstance(node, tirx.SeqStmt):
            # several MAC stores in one sequence: an unrolled reduction; otherwise the loops around the sequence
            # stay the reduction's (an accumulator's init, lets and the epilogue beside it)
            if node not in seq_macs:
                seq_macs[node] = sum(is_mac(s) for s in node.seq)
            macs = seq_macs[node]
            for s in node.seq:
                if isinstance(s, tirx.Bind):  # a let: later statements see its value
                    env = env | {hash(s.var): simplify(s.value, env)}
                else:
                    visit(s, trips, env, [] if macs > 1 else chain, red, known)
                    if isinstance(s, tirx.IfThenElse):
                        known = known + (s.condition,)
        elif isinstance(node, tirx.LetStmt):
            visit(node.body, trips, env | {hash(node.var): simplify(node.value, env)},
                  chain, red, known)
        elif isinstance(node, tirx.IfThenElse):
            cond = simplify(node.condition, env)
            c = int(cond.value) if isinstance(cond, tirx.IntImm) else None
            share = _share(cond, doms)
            share = 1.0 if share is None else share  # a condition it cannot evaluate: counted as taken
            out["branches"] += trips
            if known and known_already(node, known):
                out["branches_repeated"] += trips
            if c is None:
                out["branches_varying"] += trips
                out["branches_skipped"] += trips * (1.0 - share)
            visit(node.then_case, trips * share, env, [], red, known + (node.condition,))
            if node.else_case is not None:
                visit(node.else_case, trips * (1.0 - share), env, [], red, known + (node.condition,))
        elif isinstance(node, s_tir.SBlockRealize):
            block = node.block
            extents = [int(iv.dom.extent) for iv in block.iter_vars if int(iv.iter_type) == 2
                       and isinstance(iv.dom.extent, tirx.IntImm)]
            visit(block.body, trips, env, chain, extents if extents else None, known)
        elif isinstance(node, tirx.BufferStore):
            if is_mac(node):
                if has_calls(node):
                    calls(node.value, trips, env)
                ext, blocked = red, False
                if red is None:
                    ext, blocked = _reduction(chain, node.indices)
                cls = "blk" if blocked else _mac_class(ext)
                length = 1
                for e in ext:
                    length *= e
                out[f"mac_{cls}"] += trips
                out[f"out_{cls}"] += trips / max(1, length)
                for w in _weights(node.value):
                    out[f"wmacs:{w}"] += trips
                # in the lowered code: a MAC inside a loop (one loop start per chain[-1] MACs) or unrolled
                if chain and chain[-1][0] > 1:
                    out["mac_loop"] += trips
                    out["red_loops"] += trips / chain[-1][0]
                else:
                    out["mac_flat"] += trips
            else:
                out["stores"] += trips
                store(node, trips, env)
        elif isinstance(node, tirx.Evaluate):
            if has_calls(node):
                calls(node.value, trips, env)
        elif hasattr(node, "body"):
            visit(node.body, trips, env, chain, red, known)

    visit(func.body, 1, {}, [], None)
    return out
