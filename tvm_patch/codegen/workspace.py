"""Where a plain-C kernel's intermediate buffers live (step 3 of ``c_kernels``): every ``AllocBuffer`` becomes a
``DeclBuffer`` whose data is ``workspace + offset``, the caller-provided workspace the whole-network driver places
in its static arena. Offsets follow scope nesting like a C stack: allocations in sibling scopes share bytes,
nested ones stack up, each aligned to ``workspace_align``; the peak is the function's workspace size.
Exception: a buffer of at most ``LOCAL_MAX_BYTES`` (a convolution's one-element accumulator, see
``tvm_patch.export.schedule``) stays a C local array: a register or a few bytes of stack, not arena; so do a
widened pixel pair (``widen_kernels``, up to ``MAX_WIDE_BYTES``; two pairs, ``four_pixels``, up to twice that)
and a patch stage's pixel window copy (up to ``PIXEL_MAX_BYTES``): ``is_c_local``. A function whose builder
placed its buffers (``STAGE_OFFSETS_ATTR``) keeps that plan. The one rule for what is a C local, used by the C
emitter and both stage planners.
"""

from __future__ import annotations

import math
from typing import Any

import tvm_ffi
from tvm import s_tir, tirx

from tvm_patch.codegen.c_types import PlainCError, const_shape, dtype_bytes, dtype_str
from tvm_patch.codegen.four_pixels import MAX_WIDE4_BYTES, WIDE4_NAME
from tvm_patch.codegen.widen_kernels import MAX_WIDE_BYTES, WIDE_NAME
from tvm_patch.names import STAGE_OFFSETS_ATTR

__all__ = ["LOCAL_MAX_BYTES", "PIXEL_MAX_BYTES", "PIXEL_NAME", "fixed_plan", "is_c_local", "plan_workspace",
           "planned_workspace_bytes", "stack_scratch_bytes", "zero_locals", "zero_stores"]

LOCAL_MAX_BYTES = 64  # intermediate buffers up to this size are C locals (stack/registers), not workspace
PIXEL_NAME = "pixel"  # a patch stage's copy of one or two output pixels' input windows (patch/nest_context.py)
PIXEL_MAX_BYTES = 256  # ... a C local up to this size: a 1x1 conv's pixel pair over up to 128 channels


def _stack_bound(name: str) -> int:
    """The bound up to which a buffer of this name stays a C local on the stack: a widened pixel pair's, a stage's
    pixel window's (``pixel``, or a 1x1 conv's own ``pixel_pair{v}``), else 0 (the general LOCAL_MAX_BYTES)."""
    if name == WIDE_NAME:
        return MAX_WIDE_BYTES
    if name == WIDE4_NAME:
        return MAX_WIDE4_BYTES
    return PIXEL_MAX_BYTES if name == PIXEL_NAME or name.startswith(PIXEL_NAME + "_") else 0


def is_c_local(name: str, nbytes: int) -> bool:
    """Whether a kernel's buffer of ``nbytes`` named ``name`` is a C local (registers or the stack) rather than
    workspace: any buffer up to LOCAL_MAX_BYTES, a widened pixel pair or a stage's pixel window up to their own
    bounds (their stack is reported as the kernel's stack scratch)."""
    return nbytes <= max(LOCAL_MAX_BYTES, _stack_bound(name))

# STAGE_OFFSETS_ATTR (tvm_patch.names): a plan made by the kernel's builder. Such a function is lowered without
# StorageRewrite and each named buffer is placed at its offset (its size checked against the plan's); other
# buffers stack above it.


def fixed_plan(func: tirx.PrimFunc) -> tuple[dict[str, int], int] | None:
    """(offsets by buffer name, their extent) of a function whose builder placed its buffers, else None."""
    plan = func.attrs.get(STAGE_OFFSETS_ATTR) if func.attrs is not None else None
    if plan is None:
        return None
    return {str(k): int(v) for k, v in plan["offsets"].items()}, int(plan["bytes"])


def planned_workspace_bytes(func: tirx.PrimFunc) -> int | None:
    """The workspace of a function whose builder placed its buffers (`STAGE_OFFSETS_ATTR`), read from its TIR
    without lowering it: the plan's extent when every buffer it declares above LOCAL_MAX_BYTES is in the plan
    and fits there at its declared size (lowering only compacts buffers, and keeps this function's apart), else
    None (lower it to know). Cache-mode stages: the export's first lowering skipped, 4-6 s on mcunet-in3."""
    fixed = fixed_plan(func)
    if fixed is None:
        return None
    offsets, base = fixed
    bufs: list[Any] = []

    def on_block(b: Any) -> None:
        bufs.extend(b.alloc_buffers)

    tvm_ffi.structural_walk(func.body, [(s_tir.SBlock, on_block), (tirx.AllocBuffer, lambda a: bufs.append(a.buffer))])
    for buf in bufs:
        if not all(isinstance(d, (tirx.IntImm, int)) for d in buf.shape):
            return None
        nbytes = math.prod(int(d) for d in buf.shape) * dtype_bytes(dtype_str(buf.ty.dtype))
        if not is_c_local(buf.name, nbytes) and (buf.name not in offsets or offsets[buf.name] + nbytes > base):
            return None
    return base


def plan_workspace(body: Any, align: int, fname: str,
                    fixed: tuple[dict[str, int], int] | None = None) -> tuple[list[tuple[Any, int]], int]:
    """Stack-discipline offsets for every AllocBuffer in ``body``: [(buffer var, offset)], peak bytes.
    ``fixed`` (offsets by buffer name, their extent): those buffers at their offsets, the stack above them."""
    offsets, base = fixed if fixed is not None else ({}, 0)
    state = {"top": base, "peak": base}
    placed: list[tuple[Any, int]] = []
    seen: set[str] = set()

    def on_alloc(stmt: Any, visitor: Any) -> None:
        buf = stmt.buffer
        scope = buf.ty.storage_scope
        if scope not in ("", "global", "local"):
            raise PlainCError(f"{fname}: buffer {buf.name!r} has storage scope {scope!r}; only global/local")
        nbytes = math.prod(const_shape(buf, f"{fname}: intermediate buffer")) * dtype_bytes(dtype_str(buf.ty.dtype))
        if buf.name in offsets and not is_c_local(buf.name, nbytes):
            if buf.name in seen:
                raise PlainCError(f"{fname}: two buffers named {buf.name!r}; the workspace plan is ambiguous")
            seen.add(buf.name)
            off = offsets[buf.name]
            if off + nbytes > base:
                raise PlainCError(f"{fname}: buffer {buf.name!r} ({nbytes} B at {off}) exceeds its workspace plan")
            placed.append((buf, off))
            return
        if is_c_local(buf.name, nbytes):
            return  # a C local of the kernel (a register or a few bytes of stack; a widened pixel pair), not workspace
        off = -(-state["top"] // align) * align
        placed.append((buf, off))
        state["top"] = off + nbytes
        state["peak"] = max(state["peak"], state["top"])

    def on_other(value: Any, visitor: Any) -> None:
        saved = state["top"]
        visitor.default_visit(value)
        state["top"] = saved

    tvm_ffi.structural_visit(body, [(tirx.AllocBuffer, on_alloc), (object, on_other)])
    peak = -(-state["peak"] // align) * align
    return placed, peak


def stack_scratch_bytes(body: Any) -> int:
    """The stack ``body``'s large C locals take at most: per name kept on the stack above LOCAL_MAX_BYTES (a
    widened pixel pair, a stage's pixel windows), its largest buffer; summed, as they may be live at once."""
    sizes: dict[str, int] = {}

    def on_alloc(a: Any) -> tvm_ffi.WalkResult:
        if _stack_bound(a.buffer.name):
            n = math.prod(const_shape(a.buffer, "stack local")) * dtype_bytes(dtype_str(a.buffer.ty.dtype))
            if LOCAL_MAX_BYTES < n <= _stack_bound(a.buffer.name):
                sizes[a.buffer.name] = max(sizes.get(a.buffer.name, 0), n)
        return tvm_ffi.WalkResult.ADVANCE

    tvm_ffi.structural_walk(body, [(tirx.AllocBuffer, on_alloc)], order="pre")
    return sum(sizes.values())


def zero_stores(buf: Any) -> list[Any]:
    """One store of zero per element of the C-local array ``buf`` (none for a stack-bound one: a pixel window
    or widened pixel pair, which its kernel writes whole first)."""
    if _stack_bound(buf.name):
        return []
    shape = const_shape(buf, "local buffer")
    zero = tirx.const(0, dtype_str(buf.ty.dtype))
    stores = []
    for i in range(math.prod(shape)):
        idx = []
        for d in reversed(shape):
            idx.append(i % d)
            i //= d
        stores.append(tirx.BufferStore(buf, zero, [tirx.IntImm("int32", j) for j in reversed(idx)]))
    return stores


def zero_locals(body: Any, in_workspace: set[Any]) -> Any:
    """Each small buffer kept as a C local is zeroed right after its declaration. The kernels always write
    before they read (TVM's reduction init), but a reduction whose init sits under a condition in the
    loop nest makes gcc's -Wmaybe-uninitialized fire; one store per element settles it for any compiler."""

    def on_seq(seq: Any) -> Any:
        out: list[Any] = []
        changed = False
        for stmt in seq.seq:
            out.append(stmt)
            if isinstance(stmt, tirx.AllocBuffer) and stmt.buffer not in in_workspace:
                zeros = zero_stores(stmt.buffer)
                out.extend(zeros)
                changed = changed or bool(zeros)
        return tirx.SeqStmt(out) if changed else seq

    return tvm_ffi.structural_map(body, (tirx.SeqStmt, on_seq))
