"""The kernel forms the export tries once the arena is planned, each kept only where it proves what the plan
relies on and re-planning leaves the arena no larger.

After the lean schedules and a first arena plan (api.py), each step below proposes another form of some
kernels (written before their input; in place through a copy; two output pixels per iteration; a padded
channel copy), re-derives its workspace and in-place pairs, re-plans, and keeps it only where the planned
arena does not grow (and, for a kernel run in place, where the new form proves the same in-place pairs).
The export's state passes through each step as (funcs, pairs, workspace, arena plan).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from tvm_patch.codegen import C_TARGET
from tvm_patch.codegen.c_kernels import lower_plain
from tvm_patch.export.blocking import DEFAULT_ROWS, block_pixels
from tvm_patch.export.inplace import inplace_pairs
from tvm_patch.export.inplace_conv import (inplace_conv_pairs, inplace_conv_schedule, pixel_copy_schedule,
                                          pixel_pair_copy_schedule)
from tvm_patch.export.inplace_shift import shifted_inplace_pairs
from tvm_patch.export.lower import Program
from tvm_patch.export.odd_planes import block_pairs_nchw, overlap_odd_row, predicated
from tvm_patch.export.padded_copy import padded_copy_pays, padded_copy_schedule
from tvm_patch.export.plan import ArenaPlan, external_tensors, plan_arena, tensor_buffer, tensor_lifetimes
from tvm_patch.export.schedule import lean_schedule
from tvm_patch.export.window_copy import window_copy_schedule

__all__ = ["drop_unused_copies", "free_pixel_copies", "if_no_larger", "inplace_convs", "padded_copies",
           "pixel_blocked", "pixel_blocked_in_place", "pixel_pairs_nchw", "rows_of", "shifted_convs", "use_shifted",
           "window_copies"]


def shifted_convs(prog: Program, funcs: dict[str, Any], n_out: dict[str, int], io_in_arena: bool,
                  alignment: int) -> dict[str, list]:
    """Kernels that may write their output a few bytes before their input (inplace_shift.py: no copy
    buffer), where every call's input dies there and lives in the arena: {kernel: [(in, out, shift)]}."""
    life = tensor_lifetimes(prog)
    external = external_tensors(prog, io_in_arena)
    out = {}
    for name, func in funcs.items():
        calls = [(k, c) for k, c in enumerate(prog.calls) if c.func == name]
        if not calls or not any(c.args[0].kind == "tensor" and life[c.args[0].index][1] == k + 1 for k, c in calls):
            continue  # cheap filter before the enumeration: no call whose first input dies there
        plain = {p[:2] for p in inplace_pairs(func, n_out[name])}  # writing at the input's own offset is better
        found = [p for p in shifted_inplace_pairs(func, n_out[name], alignment) if p[:2] not in plain]
        if found and all(
            any(c.args[si].kind == "tensor" and c.args[si].index not in external and life[c.args[si].index][1] == k + 1
                for si, _, _ in found)
            for k, c in calls
        ):
            out[name] = found
    return out


def use_shifted(prog: Program, funcs: dict[str, Any], lean_funcs: dict[str, Any], shifted: dict[str, list],
                n_out: dict[str, int], pairs: dict[str, list], workspace: dict[str, int], aplan: ArenaPlan,
                io_in_arena: bool, alignment: int) -> tuple[dict[str, Any], dict[str, list], dict[str, int], ArenaPlan]:
    """The kernels of `shifted` as lean kernels written before their input (no copy buffer) instead of their
    current form, kept only if the arena gets smaller (the planner may not use a shifted alias)."""
    trial_funcs = dict(funcs) | {n: lean_funcs[n] for n in shifted}
    trial_pairs = dict(pairs) | {n: inplace_pairs(lean_funcs[n], n_out[n]) + shifted[n] for n in shifted}
    _, infos = lower_plain({n: lean_funcs[n] for n in shifted}, C_TARGET, alignment)
    trial_ws = dict(workspace) | {n: i.workspace_bytes for n, i in infos.items()}
    trial = plan_arena(prog, trial_ws, trial_pairs, io_in_arena, alignment)
    if trial.arena_bytes < aplan.arena_bytes:
        return trial_funcs, trial_pairs, trial_ws, trial
    return funcs, pairs, workspace, aplan


def rows_of(rows: int | Mapping[str, int] | Callable[[str, Any], int], name: str, func: Any) -> int:
    """The blocking of kernel ``name``: one for all, per name, or chosen by a callable (name, PrimFunc before
    blocking) -> rows, as tvm_patch.tune.records.TunedKernels chooses from a tuning database by workload."""
    if callable(rows):
        return rows(name, func)
    return rows.get(name, DEFAULT_ROWS) if isinstance(rows, Mapping) else rows


def pixel_blocked(prog: Program, funcs: dict[str, Any], lean_funcs: dict[str, Any], inplace_funcs: set[str],
                  workspace: dict[str, int], rows: Any, alignment: int, pairs: dict[str, list],
                  n_out: dict[str, int]) -> dict[str, Any]:
    """Kernels that kept their lean blocked form (not rescheduled in place or through a pixel copy), blocked over
    two output pixels as well (``block_pixels``: tvmp_dot_s8_px2_rows*), where the result needs the same kernel
    workspace as before (so the planned arena stays as it is) and, for a kernel run in place (a residual add
    written over its skip input), proves every in-place pair the plan may use again."""
    out = dict(funcs)
    for name, func in funcs.items():
        if func is not lean_funcs[name]:
            continue
        src = prog.funcs[name]
        blocked = block_pixels(src, min(rows_of(rows, name, src), 2))
        if blocked is src:
            continue
        cand = lean_schedule(blocked)
        if name in inplace_funcs and not set(pairs[name]) <= set(inplace_pairs(cand, n_out[name]) + inplace_conv_pairs(cand, n_out[name])):
            continue
        if lower_plain({name: cand}, C_TARGET, alignment)[1][name].workspace_bytes == workspace[name]:
            out[name] = cand
    return out


def window_copies(prog: Program, funcs: dict[str, Any], lean_funcs: dict[str, Any], inplace_funcs: set[str],
                  workspace: dict[str, int], rows: Any, alignment: int) -> dict[str, Any]:
    """Kernels that kept their lean form, not run in place: a k x k convolution over few input channels (a stem,
    NCHW or NHWC) through a copy of each output pixel's window (``window_copy_schedule``: one tvmp_dot_s8_rows*
    call per channel block), where its workspace stays as it was (the copy is a C local). Run before
    ``pixel_blocked``, which would otherwise take an NHWC stem's kernel rows in pixel pairs (vww's 3x3 stem:
    2.13 per MAC that way, 1.89 through the copy)."""
    out = dict(funcs)
    for name, func in funcs.items():
        if func is not lean_funcs[name] or name in inplace_funcs:
            continue
        src = prog.funcs[name]
        cand = window_copy_schedule(src, rows_of(rows, name, src))
        if cand is not src and lower_plain({name: cand}, C_TARGET, alignment)[1][name].workspace_bytes == workspace[name]:
            out[name] = cand
    return out


def pixel_blocked_in_place(prog: Program, funcs: dict[str, Any], lean_funcs: dict[str, Any], n_out: dict[str, int],
                           pairs: dict[str, list], workspace: dict[str, int], aplan: ArenaPlan, rows: Any,
                           io_in_arena: bool, alignment: int) -> tuple[dict[str, Any], dict[str, list], dict[str, int], ArenaPlan]:
    """In-place NHWC 1x1 kernels (a one-pixel copy) as two-pixel kernels: blocked over two output pixels
    (``block_pixels``) and copying the pixel pair (``inplace_conv_schedule``), where the two-pixel form proves
    the same in-place pairs and re-planning with its copy (2 x C_in bytes) gives no larger arena."""
    funcs, pairs, workspace = dict(funcs), dict(pairs), dict(workspace)
    running = {prog.calls[k].func for k in aplan.inplace_calls}
    for name, func in list(funcs.items()):
        proven = inplace_conv_pairs(func, n_out[name]) if func is not lean_funcs[name] and name in running else None
        if not proven:
            continue
        src = prog.funcs[name]
        blocked = block_pixels(src, min(rows_of(rows, name, src), 2))
        if blocked is src:
            continue
        cand = inplace_conv_schedule(lean_schedule(blocked), n_out[name])
        if inplace_conv_pairs(cand, n_out[name]) != proven:
            continue
        funcs, pairs, workspace, aplan = if_no_larger(prog, funcs, name, cand, n_out, pairs, workspace, aplan,
                                                      io_in_arena, alignment)
    return funcs, pairs, workspace, aplan


def pixel_pairs_nchw(prog: Program, funcs: dict[str, Any], lean_funcs: dict[str, Any], n_out: dict[str, int],
                     pairs: dict[str, list], workspace: dict[str, int], aplan: ArenaPlan, rows: Any,
                     io_in_arena: bool, alignment: int) -> tuple[dict[str, Any], dict[str, list], dict[str, int], ArenaPlan]:
    """NCHW 1x1 kernels that copy their pixel's channels (run in place, or for contiguous reads) as two-pixel
    kernels: blocked over two output pixels (``odd_planes.block_pairs_nchw``) and copying the pixel pair
    pixel-major (``pixel_pair_copy_schedule``: tvmp_dot_s8_px2_rows*), where re-planning with the pair's copy (2 x
    C_in bytes) and the in-place pairs that form proves (none, for an NCHW kernel run in place pixel by pixel: the
    planner then keeps its input and output apart) gives no larger arena (mcunet-in0's 2 x 2, 672 -> 192 layer, in
    place one pixel at a time: 576,701 -> 468,007 instructions as widened pairs, round 25). Where
    the lowering widens the pair straight from the channel planes (``widen_kernels._from_planes``) the copy is gone,
    workspace and all. Planes of odd width pair along their H x W row (``odd_planes``: an odd row's last pair
    overlaps the one before, recomputing a pixel, so such a kernel never runs in place)."""
    funcs, pairs, workspace = dict(funcs), dict(pairs), dict(workspace)
    running = {prog.calls[k].func for k in aplan.inplace_calls}
    for name, func in list(funcs.items()):
        if func is lean_funcs[name]:
            continue  # no pixel copy (nor any other rescheduling) to extend
        src = prog.funcs[name]
        blocked = block_pairs_nchw(src, min(rows_of(rows, name, src), 2))  # odd planes: along their H x W row
        if blocked is src:
            continue
        lean = lean_schedule(blocked)
        copied = pixel_pair_copy_schedule(lean, n_out[name])
        cand = overlap_odd_row(copied)  # an odd row's last pair overlapping the one before
        if copied is lean or predicated(cand):
            continue
        if name in running and not workspace[name] and lower_plain({name: cand}, C_TARGET, alignment)[1][name].workspace_bytes:
            # an in-place kernel whose one-pixel copy is a C local and whose pair copy would not be: the workspace
            # loses `restrict` in place, GCC reloads the pair per channel block (mcunet-in0: +4 % on such a kernel);
            # a pair widened from the planes has no copy, so no workspace (mcunet-in3's conv2d22: -20 %)
            continue
        funcs, pairs, workspace, aplan = if_no_larger(prog, funcs, name, cand, n_out, pairs, workspace, aplan,
                                                      io_in_arena, alignment)
    return funcs, pairs, workspace, aplan


def padded_copies(prog: Program, funcs: dict[str, Any], n_out: dict[str, int], pairs: dict[str, list],
                  workspace: dict[str, int], aplan: ArenaPlan, io_in_arena: bool,
                  alignment: int) -> tuple[dict[str, Any], dict[str, list], dict[str, int], ArenaPlan]:
    """Depthwise kernels whose windows and planes are large enough (``padded_copy_pays``) through a padded copy of
    each channel (padded_copy.py: no border window), where a kernel run in place proves the same in-place pairs in that form
    and re-planning with the copy's workspace gives no larger arena."""
    funcs, pairs, workspace = dict(funcs), dict(pairs), dict(workspace)
    running = {prog.calls[k].func for k in aplan.inplace_calls}
    for name, src in prog.funcs.items():
        if not padded_copy_pays(src):
            continue
        cand = padded_copy_schedule(src, n_out[name])
        if cand is src or (name in running and not set(inplace_conv_pairs(funcs[name], n_out[name]))
                           <= set(inplace_conv_pairs(cand, n_out[name]))):
            continue
        funcs, pairs, workspace, aplan = if_no_larger(prog, funcs, name, cand, n_out, pairs, workspace, aplan,
                                                      io_in_arena, alignment)
    return funcs, pairs, workspace, aplan


def inplace_convs(prog: Program, funcs: dict[str, Any], n_out: dict[str, int], io_in_arena: bool) -> dict[str, Any]:
    """Depthwise / 1x1 kernels rescheduled to run in place (inplace_conv.py), where every call of the
    kernel can use it: its input dies at that call and lives in the arena. Elsewhere the copy buffer
    would only cost workspace, so the lean kernel stays."""
    life = tensor_lifetimes(prog)
    external = external_tensors(prog, io_in_arena)
    out = dict(funcs)
    for name, func in funcs.items():
        cand = inplace_conv_schedule(func, n_out[name])
        if cand is func:
            continue
        found = inplace_conv_pairs(cand, n_out[name])
        calls = [(k, c) for k, c in enumerate(prog.calls) if c.func == name]
        if found and all(
            any(c.args[si].kind == "tensor" and c.args[si].index not in external and life[c.args[si].index][1] == k + 1
                for si, _ in found)
            for k, c in calls
        ):
            out[name] = cand
    return out


def if_no_larger(prog: Program, funcs: dict[str, Any], name: str, cand: Any, n_out: dict[str, int],
                 pairs: dict[str, list], workspace: dict[str, int], aplan: ArenaPlan, io_in_arena: bool,
                 alignment: int) -> tuple[dict[str, Any], dict[str, list], dict[str, int], ArenaPlan]:
    """The export's state with kernel `name` replaced by `cand` (its workspace and in-place pairs re-derived, the
    arena re-planned) if that gives no larger arena; else the state as it is."""
    _, info = lower_plain({name: cand}, C_TARGET, alignment)
    trial_ws = {**workspace, name: info[name].workspace_bytes}
    trial_pairs = {**pairs, name: inplace_pairs(cand, n_out[name]) + inplace_conv_pairs(cand, n_out[name])}
    trial = plan_arena(prog, trial_ws, trial_pairs, io_in_arena, alignment)
    if trial.arena_bytes <= aplan.arena_bytes:
        return {**funcs, name: cand}, trial_pairs, trial_ws, trial
    return funcs, pairs, workspace, aplan


def drop_unused_copies(prog: Program, funcs: dict[str, Any], lean_funcs: dict[str, Any], copied: set[str],
                       n_out: dict[str, int], pairs: dict[str, list], workspace: dict[str, int], aplan: ArenaPlan,
                       io_in_arena: bool, alignment: int,
                       micro: bool) -> tuple[dict[str, Any], dict[str, list], dict[str, int], ArenaPlan]:
    """The in-place kernels of `inplace_convs` whose copy buffer is workspace while the plan writes their output
    elsewhere (a 1x1 projection whose residual add writes over the skip instead: the copy only costs bytes)
    back to their lean form, each kept only if re-planning gives no larger arena."""
    funcs, pairs, workspace = dict(funcs), dict(pairs), dict(workspace)
    for name in sorted(copied):
        if funcs[name] is lean_funcs[name] or not workspace.get(name):
            continue
        used = {(a.src, a.dst) for a in aplan.plan.aliases}
        calls = [c for c in prog.calls if c.func == name]
        if any(c.args[si].kind == "tensor" and c.args[oi].kind == "tensor"
               and (tensor_buffer(c.args[si].index), tensor_buffer(c.args[oi].index)) in used
               for c in calls for si, oi in inplace_conv_pairs(funcs[name], n_out[name])):
            continue
        cand = pixel_copy_schedule(lean_funcs[name], n_out[name]) if micro else lean_funcs[name]
        funcs, pairs, workspace, aplan = if_no_larger(prog, funcs, name, cand, n_out, pairs, workspace, aplan,
                                                      io_in_arena, alignment)
    return funcs, pairs, workspace, aplan


def free_pixel_copies(prog: Program, funcs: dict[str, Any], lean_funcs: dict[str, Any], n_out: dict[str, int],
                      pairs: dict[str, list], workspace: dict[str, int], aplan: ArenaPlan, io_in_arena: bool,
                      alignment: int) -> tuple[dict[str, Any], dict[str, list], dict[str, int], ArenaPlan]:
    """NCHW 1x1 kernels with more input channels than a C local holds get the pixel copy too (it lets the
    dot-product micro-kernels read the channels contiguously) wherever its workspace leaves the planned arena
    as it is: each candidate is kept only if re-planning with its workspace gives no larger arena."""
    funcs, pairs, workspace = dict(funcs), dict(pairs), dict(workspace)
    for name, func in list(funcs.items()):
        if func is not lean_funcs[name]:
            continue  # already rescheduled (in place, or a pixel copy in a C local)
        cand = pixel_copy_schedule(func, n_out[name], max_channels=1 << 30)
        if cand is func:
            continue
        funcs, pairs, workspace, aplan = if_no_larger(prog, funcs, name, cand, n_out, pairs, workspace, aplan,
                                                      io_in_arena, alignment)
    return funcs, pairs, workspace, aplan
