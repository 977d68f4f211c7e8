"""Dot products over a kernel-local vector of an odd length padded to a multiple of four, with zero weights.

A network's stem through its window copy (export/window_copy.py) reduces over ``C_in x k x k`` taps, 27 for a
3 x 3 stem on RGB: ``tvmp_dot_s8_rows{J}(window, W + c * 27, 27, 27, acc)``. The micro-kernels take words of four,
so three taps a row go one at a time (scalar loads and MLAs), and neither the widened pixel (``tvmp_widen_px1``)
nor widened weights (both need lengths and offsets that are multiples of four) apply: 2.4 instructions per MAC on
mcunet-in3's stem. Padded to 28, the window's last byte a zero the kernel never writes (a C local, zeroed at its
declaration; in workspace the product is zero all the same) and each weight row's last a zero too, every row is
seven words: the same sums, since each added product is a zero weight times a byte.

``pad_dot_rows`` pads where a local int8 buffer is read as the activations of ``tvmp_dot_s8_rows{J}`` calls
of length n (n % 4 != 0; the local of n elements, or already ``ceil4(n)`` or more) or of ``tvmp_dot_s8_px2_rows{J}``
calls whose pixel stride is a multiple of four of at least ``ceil4(n)`` (a patch stage's two copied windows,
``patch/blocked_convs.py``), and an int8 parameter only as those calls' weights, rows n apart at offsets that are
multiples of n: a local of n elements becomes ``ceil4(n)``, the parameter ``(rows, ceil4(n))`` (the export pads
the constant so: ``export.wide_weights.padded_layout``), the calls' length, row stride and offsets move to the
padded rows. A padded tap's byte need not be zero: its weight is.
"""

from __future__ import annotations

import math
from typing import Any

import tvm
import tvm_ffi
from tvm import tirx
from tvm.ir.expr import TensorLoad

from tvm_patch.codegen.micro_kernels import PX2_ROWS, ROWS, _extern_name, _int
from tvm_patch.codegen.wide_weights import param_views
from tvm_patch.codegen.workspace import fixed_plan

__all__ = ["PadDotRows", "pad_dot_rows"]


def _ceil4(n: int) -> int:
    return (n + 3) // 4 * 4


def _const(x: Any) -> int | None:
    """An integer constant, possibly under a cast (the rows calls' row stride), else None."""
    return _int(x.value) if isinstance(x, tirx.Cast) else _int(x)


def _operand(ptr: Any) -> TensorLoad | None:
    load = ptr.args[0] if isinstance(ptr, tvm.ir.Call) and ptr.args and isinstance(ptr.args[0], TensorLoad) else None
    return load if load is not None and len(load.indices) == 1 else None


def _dot_args(c: Any) -> tuple[int, list[Any]] | None:
    """(where the weight pointer is among the arguments, the arguments) of a rows call ``(a, w, ws, n, acc)`` or a
    pixel-pair call ``(a, as, w, ws, n, acc)``, else None."""
    name = _extern_name(c)
    return (1, list(c.args)[1:]) if name in ROWS.values() else (2, list(c.args)[1:]) if name in PX2_ROWS.values() \
        else None


def _span(wi: int, args: list[Any], n: int) -> int | None:
    """Elements of the activation local a padded call reads: ``ceil4(n)``, or a pixel stride more for a pixel pair
    (None: a stride not a constant multiple of four at least ``ceil4(n)``)."""
    if wi == 1:
        return _ceil4(n)
    stride = _const(args[1])
    return None if stride is None or stride % 4 or stride < _ceil4(n) else stride + _ceil4(n)


def _candidates(func: tirx.PrimFunc) -> tuple[dict[str, int | None], dict[int, tuple[list[Any], int]]]:
    """({local buffer's name: n, or None where it is long enough already}, {parameter position: (its views, n)}) of
    the dot calls that may be padded (see the module doc); a parameter some other read takes, or read by calls of
    several lengths, is left out, and so are the locals its calls read."""
    views = param_views(func)
    by_view = {v: i for i, vs in views.items() for v in vs}
    locals_: list[Any] = []
    tvm_ffi.structural_walk(func.body, (tirx.AllocBuffer, lambda a: locals_.append(a.buffer)))
    ana = tvm.sym.Analyzer()
    acts: dict[Any, set[int]] = {}
    weights: dict[int, set[int]] = {}
    bad: set[Any] = set()
    called: list[Any] = []
    pairs: set[tuple[str, int]] = set()  # (activation local, weight parameter) of each call

    def on_call(c: Any) -> tvm_ffi.WalkResult:
        found = _dot_args(c)
        if found is None:
            return tvm_ffi.WalkResult.ADVANCE
        wi, args = found
        a, w, ws, n = args[0], *args[wi:wi + 3]
        a_load, w_load, n = _operand(a), _operand(w), _const(n)
        if a_load is None or w_load is None or n is None or _const(ws) != n:
            return tvm_ffi.WalkResult.ADVANCE
        called.extend([a_load, w_load])
        # (by name: the border partition's copies of a loop nest may hold their own Buffer object for a local)
        local = next((b for b in locals_ if a_load.source.name == b.name), None)
        param = next((i for v, i in by_view.items() if w_load.source.same_as(v)), None)
        if n % 4 == 0:  # whole words: the call reads its local as it is (its weights are not padded: see below)
            if param is not None:
                weights.setdefault(param, set()).add(n)
            return tvm_ffi.WalkResult.ADVANCE
        span = _span(wi, args, n)
        if (local is None or param is None or span is None or _int(a_load.indices[0]) != 0
                or not ana.can_prove_equal(tirx.floormod(w_load.indices[0], n), 0)):
            bad.update({a_load.source, w_load.source})
            return tvm_ffi.WalkResult.ADVANCE
        weights.setdefault(param, set()).add(n)
        acts.setdefault(local, set()).add((n, span))
        pairs.add((local.name, param))
        return tvm_ffi.WalkResult.ADVANCE

    tvm_ffi.structural_walk(func.body, [(tvm.ir.Call, on_call)], order="pre")
    # every other load of a parameter (not a call's operand) rules it out; a local's do not (its padded taps' bytes
    # are multiplied by zero weights, whatever they hold)
    loads: list[Any] = []
    tvm_ffi.structural_walk(func.body, [(TensorLoad, lambda ld: loads.append(ld) or tvm_ffi.WalkResult.ADVANCE)],
                            order="pre")
    other = [ld.source for ld in loads if not any(ld.same_as(x) for x in called)]
    placed = fixed_plan(func)  # a buffer its builder placed (a cache-mode stage's) keeps the size it was placed at
    local_n: dict[str, int | None] = {}  # a local -> its padded length (None: long enough already)
    for b, uses in acts.items():
        ns, size = {n for n, _ in uses}, math.prod(int(d) for d in b.shape)
        if ((placed is not None and b.name in placed[0]) or len(b.shape) != 1 or any(b.name == x.name for x in bad)
                or sum(1 for x in locals_ if x.name == b.name) != 1):
            continue
        if size >= max(span for _, span in uses):  # (a stage's pixel window: sized for its widest use)
            local_n[b.name] = None
        elif ns == {size} and all(span == _ceil4(size) for _, span in uses):  # one window of n: grown by the padding
            local_n[b.name] = size
    param_n: dict[int, tuple[list[Any], int]] = {}
    for i, ns in weights.items():
        if len(ns) != 1 or next(iter(ns)) % 4 == 0 or not all(len(v.shape) == 1 for v in views[i]):
            continue
        if any(v.same_as(x) for v in views[i] for x in [*bad, *other]):
            continue
        param_n[i] = (views[i], next(iter(ns)))
    # a call is padded whole or not at all: a local and a parameter only where every call pairing them is padded
    while unpaired := {(a, i) for a, i in pairs if (a in local_n) != (i in param_n)}:
        for a, i in unpaired:
            local_n.pop(a, None)
            param_n.pop(i, None)
    return local_n, param_n


def pad_dot_rows(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """``func`` with its rows calls over odd-length local vectors padded to a multiple of four (module doc), or
    ``func`` itself where nothing qualifies (a call whose local or weights cannot both be padded stays)."""
    local_n, param_n = _candidates(func)
    if not local_n or not param_n:
        return func
    ana = tvm.sym.Analyzer()
    new_local = {name: tirx.decl_buffer([_ceil4(n)], "int8", name) for name, n in local_n.items() if n is not None}
    padded = set(local_n)
    new_param: dict[int, Any] = {}
    new_view: dict[Any, Any] = {}
    for i, (views, n) in param_n.items():
        p = func.params[i]
        numel = math.prod(int(d) for d in p.ty.shape)
        new_param[i] = tirx.decl_buffer([numel // n, _ceil4(n)], "int8", p.name)
        for v in views:
            new_view[v] = tirx.decl_buffer([numel // n * _ceil4(n)], "int8", v.name)

    def local_of(buf: Any) -> Any:
        return new_local.get(buf.name) if str(buf.dtype) == "int8" else None

    def view_of(buf: Any) -> Any:
        return next((nb for b, nb in new_view.items() if buf.same_as(b)), None)

    def on_call(c: Any) -> Any:
        found = _dot_args(c)
        if found is None:
            return c
        wi, args = found
        a_load, w_load, n = _operand(args[0]), _operand(args[wi]), _const(args[wi + 2])
        if a_load is None or w_load is None or str(a_load.source.dtype) != "int8" or a_load.source.name not in padded:
            return c
        vw = view_of(w_load.source)
        if vw is None:
            return c
        n4 = _ceil4(n)
        la = local_of(a_load.source)
        if la is not None:
            args[0] = tirx.address_of(tirx.BufferLoad(la, [tirx.const(0, "int32")]))
        args[wi] = tirx.address_of(tirx.BufferLoad(vw, [ana.simplify(tirx.floordiv(w_load.indices[0], n) * n4)]))
        args[wi + 1] = args[wi + 2] = tirx.const(n4, "int32")
        return tirx.call_extern("void", _extern_name(c), *args)

    def on_store(st: Any) -> Any:
        nb = local_of(st.buffer)
        return st if nb is None else tirx.BufferStore(nb, st.value, list(st.indices))

    def on_load(ld: Any) -> Any:
        nb = local_of(ld.source)
        return ld if nb is None else tirx.BufferLoad(nb, list(ld.indices))

    def on_alloc(a: Any) -> Any:
        nb = local_of(a.buffer)
        return a if nb is None else tirx.AllocBuffer(nb)

    def on_decl(d: Any) -> Any:
        local = local_of(d.buffer)
        if local is not None:  # a loop partition's declaration of the local over its data: the padded one's
            return tirx.DeclBuffer(tirx.decl_buffer(local.shape, "int8", local.name, data=local.data), data=local.data)
        nb = view_of(d.buffer)
        if nb is None:
            return d
        i = next(i for i, (vs, _) in param_n.items() if any(d.buffer.same_as(v) for v in vs))
        return tirx.DeclBuffer(nb, data=new_param[i].data)

    body = tvm_ffi.structural_map(func.body, [(tvm.ir.Call, on_call)])
    body = tvm_ffi.structural_map(body, [(tirx.BufferStore, on_store), (TensorLoad, on_load),
                                         (tirx.AllocBuffer, on_alloc), (tirx.DeclBuffer, on_decl)])
    params = [new_param.get(i, p) for i, p in enumerate(func.params)]
    return tirx.PrimFunc(params, body, ret_type=None, attrs=func.attrs)


def PadDotRows() -> tvm.transform.Pass:  # noqa: N802 (TVM's naming of passes)
    """The pass form of ``pad_dot_rows``, after ``MicroKernels`` in the plain-C lowering."""
    return tirx.transform.prim_func_pass(lambda f, _m, _c: pad_dot_rows(f), opt_level=0,
                                         name="tvm_patch.PadDotRows")
