"""Every activation tensor and every kernel workspace at a fixed offset in ONE arena.

Steps: the driver copies the network inputs into the arena at step 0, runs kernel call ``k`` at step
``k + 1`` and copies the outputs out at step ``len(calls) + 1``. A tensor lives from the step that writes
it to the last step that reads it (a view extends its tensor's life); a kernel's workspace lives at its
call's step only. In-place hints (:mod:`tvm_patch.export.inplace`) let a kernel output take the place of
an input that dies at that call. :func:`tvm_patch.memplan.plan_memory` places them; the plan is validated.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from tvm_patch.errors import TvmPatchError
from tvm_patch.export.lower import Arg, Program
from tvm_patch.memplan import Alias, Buffer, DepthwiseInPlace, InPlace, Plan, lower_bound, plan_memory, validate
from tvm_patch.tir_util import is_patch_stage

__all__ = ["ArenaPlan", "MAX_ARENA_BYTES", "arena_buffers", "check_fits", "external_tensors", "plan_arena", "tensor_buffer", "tensor_lifetimes",
           "workspace_buffer"]

MAX_ARENA_BYTES = 2**32 - 1  # offsets and sizes are 32-bit on the target


def tensor_buffer(index: int) -> str:
    """The planner's name of stored tensor ``index``."""
    return f"t{index}"


def workspace_buffer(call: int) -> str:
    """The planner's name of the workspace of kernel call ``call``."""
    return f"ws{call}"


@dataclass(frozen=True)
class ArenaPlan:
    """Offsets of tensors (by index; absent: outside the arena) and of workspaces (by call index)."""

    plan: Plan
    buffers: tuple[Buffer, ...]
    tensor_offsets: dict[int, int]
    workspace_offsets: dict[int, int]
    lower_bound: int
    inplace_calls: frozenset[int]  # calls whose output overlaps an input: their kernel gets no `restrict`

    @property
    def arena_bytes(self) -> int:
        return self.plan.arena_size


def tensor_lifetimes(prog: Program) -> dict[int, tuple[int, int]]:
    """(first step, last step) of every stored tensor, by index (steps as in the module docstring)."""
    end = len(prog.calls) + 1
    first: dict[int, int] = {}
    last: dict[int, int] = {}
    for io in prog.inputs:
        first[io.tensor] = 0
    for k, call in enumerate(prog.calls, start=1):
        for a in call.inputs:
            if a.kind == "tensor":
                last[a.index] = max(last.get(a.index, 0), k)
        for a in call.outputs:
            first.setdefault(a.index, k)
    for io in prog.outputs:
        last[io.tensor] = end
    out = {}
    for t in prog.tensors:
        if t.index not in first:
            raise TvmPatchError(f"tensor {t.name} is never written; the module is malformed")
        out[t.index] = (first[t.index], max(first[t.index], last.get(t.index, first[t.index])))
    return out


def arena_buffers(
    prog: Program,
    workspace: Mapping[str, int],
    pairs: Mapping[str, Sequence[tuple[int, int]]],
    io_in_arena: bool = True,
) -> tuple[list[Buffer], list[InPlace]]:
    """The planner's problem: one buffer per stored tensor (inputs/outputs only when ``io_in_arena``)
    and per non-empty kernel workspace, and the in-place hints that are safe at their call."""
    life = tensor_lifetimes(prog)
    external = external_tensors(prog, io_in_arena)
    buffers: list[Buffer] = []
    for t in prog.tensors:
        if t.index in external:
            continue
        f, l = life[t.index]
        buffers.append(Buffer(tensor_buffer(t.index), t.nbytes, f, l))
    for k, call in enumerate(prog.calls):
        ws = int(workspace.get(call.func, 0))
        if ws:
            buffers.append(Buffer(workspace_buffer(k), ws, k + 1, k + 1))
    hints: list[Alias] = []
    used_src: set[int] = set()
    for k, call in enumerate(prog.calls):
        step = k + 1
        safe = [p[:2] for p in pairs.get(call.func, ())]
        shifts = {p[:2]: p[2] for p in pairs.get(call.func, ()) if len(p) > 2}  # inplace_shift.py: (si, oi, shift)
        for si, oi in safe:
            src, dst = call.args[si], call.args[oi]
            if src.kind != "tensor" or dst.kind != "tensor" or src.index in external or dst.index in external:
                continue
            if src.index in used_src or life[src.index][1] != step or life[dst.index][0] != step:
                continue
            # the source tensor must not also be passed where the kernel reads it at other indices
            positions = [p for p, a in enumerate(call.args) if a == src]
            if any((p, oi) not in safe for p in positions):
                continue
            if (si, oi) in shifts:
                hints.append(DepthwiseInPlace(tensor_buffer(src.index), tensor_buffer(dst.index), shifts[(si, oi)]))
                used_src.add(src.index)
                continue
            if prog.tensors[dst.index].nbytes > prog.tensors[src.index].nbytes:
                continue
            hints.append(InPlace(tensor_buffer(src.index), tensor_buffer(dst.index)))
            used_src.add(src.index)
    return buffers, hints


def external_tensors(prog: Program, io_in_arena: bool) -> set[int]:
    """Tensors the kernels use straight from the caller's buffers instead of the arena: every input and
    output when not ``io_in_arena``. Otherwise two kinds of input, as the paper's convention counts them:
    an input read only by a patch stage (patch mode streams the image patch by patch: each patch reads
    its own window of the caller's buffer), and a float input that the model itself quantizes first (an
    ONNX QDQ model's image), read once by its quantize kernel, so the arena holds int8 tensors only."""
    if not io_in_arena:
        return {io.tensor for io in prog.inputs} | {io.tensor for io in prog.outputs}
    outputs = {io.tensor for io in prog.outputs}
    ext = set()
    for io in prog.inputs:
        if io.tensor in outputs:
            continue
        readers = [c for c in prog.calls if any(a == Arg("tensor", io.tensor) for a in c.inputs)]
        if readers and all(is_patch_stage(prog.funcs[c.func]) for c in readers):
            ext.add(io.tensor)
        elif io.dtype.startswith(("float", "bfloat")) and len(readers) == 1 and all(
            o.kind == "tensor" and prog.tensors[o.index].dtype in ("int8", "uint8") for o in readers[0].outputs
        ):
            ext.add(io.tensor)
    return ext


def check_fits(buffers: Sequence[Buffer], hints: Sequence[InPlace]) -> int:
    """The lower bound of the arena; :class:`TvmPatchError` when even that exceeds 4 GB."""
    lb = lower_bound(buffers, hints)
    if lb > MAX_ARENA_BYTES:
        raise TvmPatchError(
            f"the model needs at least {lb} B of arena, more than 4 GB (32-bit offsets); use a smaller model or patch mode"
        )
    return lb


def plan_arena(
    prog: Program,
    workspace: Mapping[str, int],
    pairs: Mapping[str, Sequence[tuple[int, int]]],
    io_in_arena: bool = True,
    alignment: int = 16,
) -> ArenaPlan:
    """Place tensors (inputs/outputs too when ``io_in_arena``) and workspaces in one arena.

    ``workspace[func]``: bytes the kernel needs; ``pairs[func]``: its safe (input param, output param)
    in-place pairs. Raises :class:`TvmPatchError` when the arena would exceed 4 GB.
    """
    buffers, hints = arena_buffers(prog, workspace, pairs, io_in_arena)
    external = external_tensors(prog, io_in_arena)
    lb = check_fits(buffers, hints)
    plan = plan_memory(buffers, hints, alignment)
    if plan.arena_size > MAX_ARENA_BYTES:
        raise TvmPatchError(f"the planned arena ({plan.arena_size} B) exceeds 4 GB (32-bit offsets)")
    validate(plan, buffers)
    tensor_offsets = {t.index: plan.offsets[tensor_buffer(t.index)] for t in prog.tensors if t.index not in external}
    ws_offsets = {k: plan.offsets[workspace_buffer(k)] for k in range(len(prog.calls)) if workspace_buffer(k) in plan.offsets}
    used = {(a.src, a.dst) for a in plan.aliases}
    inplace_calls = set()
    for k, call in enumerate(prog.calls):
        names = {tensor_buffer(a.index) for a in call.args if a.kind == "tensor"}
        if any(s in names and d in names for s, d in used):
            inplace_calls.add(k)
    return ArenaPlan(plan, tuple(buffers), tensor_offsets, ws_offsets, lb, frozenset(inplace_calls))
