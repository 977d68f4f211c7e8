"""``export_model``: a model (spec, loaded Model or Relax IRModule) -> a directory of plain C.

Pipeline: [PatchStage] -> fuse and walk (lower.py) -> lean kernel schedules (schedule.py) -> in-place
analysis (inplace.py) -> one arena (plan.py) -> other kernel forms where the arena allows (reschedule.py)
-> C kernels (tvm_patch.codegen) + driver (driver.py) + host program (host.py). The directory is written
beside its target under a temporary name and renamed at the end, so a failed export leaves nothing
half-written.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import tvm

from tvm_patch.codegen import ARM_TARGET, C_TARGET, emit_c, emit_object
from tvm_patch.codegen.c_kernels import CSource, lower_plain, mark_in_place
from tvm_patch.codegen.micro_kernels import micro_kernels_enabled, plain_kernels
from tvm_patch.codegen.bias_init import bias_in_init
from tvm_patch.codegen.requant_kernels import narrow_requant, requant_shift_params, right_shift_requant
from tvm_patch.codegen.workspace import planned_workspace_bytes
from tvm_patch.export.dead_channels import quiet_dead_channels
from tvm_patch.errors import TvmPatchError
from tvm_patch.memplan import max_live
from tvm_patch.names import STAGE_OFFSETS_ATTR
from tvm_patch.quant import expand_extern_requantization, extern_requantization
from tvm_patch.export import baselines
from tvm_patch.export.blocking import DEFAULT_ROWS, block_output_channels
from tvm_patch.export.driver import driver_source, model_header
from tvm_patch.export.io_names import name_io
from tvm_patch.export.host import CheckResult, build_host, check_outputs, host_main, makefile
from tvm_patch.export.inplace import inplace_pairs
from tvm_patch.export.kernel_info import KernelInfo, kernel_info
from tvm_patch.export.inplace_cache import prove_cached_plan
from tvm_patch.export.inplace_conv import channel_outer_schedule, inplace_conv_pairs, pixel_copy_schedule
from tvm_patch.export.lower import IOTensor, Program, lower_module
from tvm_patch.export.packed_constants import pack_channel_constants
from tvm_patch.export.weight_sums import mark_sums, sum_constants
from tvm_patch.export.wide_weights import keyed_by_weights, mark_wide, widen_constants
from tvm_patch.export.prefold import prefold_constants
from tvm_patch.export.prologue import merge_prologues
from tvm_patch.export.plan import ArenaPlan, arena_buffers, check_fits, external_tensors, plan_arena
from tvm_patch.export.reschedule import (drop_unused_copies, free_pixel_copies, inplace_convs, padded_copies,
                                         pixel_blocked, pixel_blocked_in_place, pixel_pairs_nchw, rows_of,
                                         shifted_convs, use_shifted, window_copies)
from tvm_patch.export.schedule import lean_schedule
from tvm_patch.export.stage_arena import has_workspace_plan, is_patch_stage, plan_stage_arena, without_conv_aliases
from tvm_patch.export.stderr import captured_stderr
from tvm_patch.frontend import load, model_sha256
from tvm_patch.patch.stage_forms import with_form
from tvm_patch.transform.lower_to_integer import lower_to_integer
from tvm_patch.transform.patch_stage import PatchStage

__all__ = ["ExportResult", "OUTPUT_FILES", "apply_patch_stage", "check_target", "export_model", "write_directory"]

# Every file an export may write; an existing output directory holding anything else is not replaced.
OUTPUT_FILES = frozenset(
    {"model.c", "tvmp_model.h", "main.c", "Makefile", "tvmp_export.json", "model_host",
     "model_driver.c", "tvmp_kernels.h", "tvmp_kernels_cm7.o"}
)


@dataclass
class ExportResult:
    """What an export wrote and measured. Sizes in bytes; ``None`` where a figure does not apply."""

    model: str
    out_dir: Path
    files: list[str]
    arena_bytes: int
    analytic_peak_bytes: int | None
    analytic_patch_peak_bytes: int | None  # patch mode: the profile's patched peak (input image not counted)
    lower_bound_bytes: int
    weights_bytes: int
    tvm_static_plan_bytes: int
    tflm_arena_head_bytes: int | None
    plan: dict[str, int | str | None]
    kernels: int
    calls: int
    inplace_calls: int
    heuristic: str
    export_seconds: float
    program: Program = field(repr=False)
    arena_plan: ArenaPlan = field(repr=False)
    source_mod: tvm.IRModule = field(repr=False)
    check: CheckResult | None = None
    model_sha256: str | None = None  # of the model file (zoo: of its serialized ONNX); None for an IRModule
    call_info: list[dict[str, Any]] = field(default_factory=list)  # per kernel call: func, kind, macs
    micro_kernels: bool = True  # False: TVM's own kernels only (--kernels plain)
    # as emitted, after every schedule (the widened weights' kernels marked: their lowering widens them again)
    kernel_funcs: dict[str, Any] = field(default_factory=dict, repr=False)
    # the goal's allowance over an analytic peak: alignment x (the most buffers live at once in the network's plan
    # + in each planned stage kernel's workspace), each buffer's start padded to the alignment at most once
    alignment_allowance_bytes: int = 0
    # the largest C-local scratch of one kernel outside the arena (a widened pixel pair, codegen.widen_kernels): stack
    kernel_stack_scratch_bytes: int = 0
    # the kernels whose weights are stored widened to int16 (export/wide_weights.py): their extra Flash bytes
    wide_weights: dict[str, int] = field(default_factory=dict)
    wide_narrowed: list[str] = field(default_factory=list)  # kept int8 to fit the Flash (board_build.fit_wide)
    # the kernels whose padded taps read tables of weight sums (export/weight_sums.py): the tables' Flash bytes
    weight_sum_tables: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "out_dir": str(self.out_dir),
            "files": self.files,
            "arena_bytes": self.arena_bytes,
            "analytic_peak_bytes": self.analytic_peak_bytes,
            "analytic_patch_peak_bytes": self.analytic_patch_peak_bytes,
            "alignment_allowance_bytes": self.alignment_allowance_bytes,
            "kernel_stack_scratch_bytes": self.kernel_stack_scratch_bytes,
            "lower_bound_bytes": self.lower_bound_bytes,
            "weights_bytes": self.weights_bytes,
            "wide_weights": dict(self.wide_weights),
            "wide_narrowed": list(self.wide_narrowed),
            "weight_sum_tables": dict(self.weight_sum_tables),
            "plan": dict(self.plan),
            "tvm_static_plan_bytes": self.tvm_static_plan_bytes,
            "tflm_arena_head_bytes": self.tflm_arena_head_bytes,
            "kernels": self.kernels,
            "calls": self.calls,
            "inplace_calls": self.inplace_calls,
            "planner_heuristic": self.heuristic,
            "export_seconds": round(self.export_seconds, 3),
            "check": self.check.to_json() if self.check is not None else None,
            "model_sha256": self.model_sha256,
            "micro_kernels": self.micro_kernels,
            "macs": sum(c["macs"] for c in self.call_info),
            "call_info": self.call_info,
            "inputs": [_io_json(io) for io in self.program.inputs],
            "outputs": [_io_json(io) for io in self.program.outputs],
        }


def expand_micro_kernels(mod: tvm.IRModule) -> tvm.IRModule:
    """``mod`` with every micro-kernel call spelled out in TIR again, so TVM itself can build and run it
    (the reference the exported C is checked against)."""
    out = {}
    for gv, func in mod.functions.items():
        out[gv] = expand_extern_requantization(func) if isinstance(func, tvm.tirx.PrimFunc) else func
    return tvm.IRModule(out, attrs=mod.attrs)


def _io_json(io: IOTensor) -> dict[str, Any]:
    """An input or output of ``tvmp_run`` as the board projects need it: name, dtype, shape, bytes."""
    return {"name": io.name, "dtype": io.dtype, "shape": list(io.shape), "bytes": io.nbytes}


def _repeated_args(prog: Program, name: str) -> list[tuple[int, int]]:
    """Parameter pairs of kernel ``name`` that some call passes the same buffer (e.g. one constant twice): their
    ``restrict`` must go too (gcc's -Wrestrict rejects the call otherwise)."""
    return [(i, j) for c in prog.calls if c.func == name
            for i in range(len(c.args)) for j in range(i + 1, len(c.args)) if c.args[i] == c.args[j]]


def apply_patch_stage(mod: tvm.IRModule, patches: int, split: int | str, halo: str = "recompute") -> tvm.IRModule:
    """Run the ``PatchStage`` pass (the first ``split`` layers — a count, "block:N" or "auto" — over
    ``patches`` x ``patches`` patches, the halo recomputed or cached)."""
    if patches < 1:
        raise TvmPatchError(f"--patches must be positive (got {patches})")
    return PatchStage(split=split, patches=patches, halo=halo)(mod)


def _resolve(model: Any) -> tuple[str, tvm.IRModule, str | None, tuple[tuple[str, ...], tuple[str, ...]]]:
    """(name, Relax module, .tflite path or None, (input names, output names) of the model's tensors, () when
    unknown) of a spec, a frontend Model or an IRModule."""
    if isinstance(model, (str, os.PathLike)):
        spec = os.fspath(model)
        m = load(spec)
        tflite = spec if spec.lower().endswith(".tflite") else None
        return spec, m.mod, tflite, (m.input_names, m.output_names)
    if isinstance(model, tvm.IRModule):
        return "IRModule", model, None, ((), ())
    mod = getattr(model, "mod", None)
    if isinstance(mod, tvm.IRModule):
        names = (tuple(getattr(model, "input_names", ())), tuple(getattr(model, "output_names", ())))
        return str(getattr(model, "name", "model")), mod, None, names
    raise TvmPatchError(f"cannot export a {type(model).__name__}: give a model path, zoo:NAME, a Model or an IRModule")


def export_model(
    model: Any,
    out_dir: str | os.PathLike,
    *,
    patches: int | None = None,
    split: int | str | None = None,
    emit: str = "c",
    check: bool = False,
    seeds: tuple[int, ...] = (0, 1, 2),
    lean: bool = True,
    io_in_arena: bool = True,
    alignment: int = 16,
    tflite_path: str | None = None,
    integer: bool = True,
    rounding: str = "tflite",
    kernels: str = "micro",
    rows: int | Mapping[str, int] | Callable[[str, Any], int] = DEFAULT_ROWS,
    halo: str = "recompute",
    packing: Callable[[str, Any], bool] | None = None,
    wide: Callable[[str], bool] | None = None,
    unroll: Callable[[str, Any], bool] | None = None,
    outline: Callable[[str, Any], tuple[int, ...]] | None = None,
    peel: Callable[[str, Any], bool] | None = None,
    pairs_down: Callable[[str, Any], bool | None] | None = None,
) -> ExportResult:
    """Export ``model`` as plain C over one static arena into ``out_dir`` (see the package docstring).

    ``emit="object"`` also writes the kernels as a Cortex-M7 object (``tvmp_kernels_cm7.o``, with
    ``tvmp_kernels.h`` and ``model_driver.c``). ``check`` builds the host program and compares it with
    TVM on ``seeds``. ``lean=False`` keeps TVM's kernel schedules (full-size intermediates in workspaces).
    ``io_in_arena=False`` leaves inputs/outputs in the caller's buffers instead of copying them in/out.
    ``integer`` (default) first runs LowerToInteger, so quantized models compute and store int8 (a float32
    model is left as it is); ``integer=False`` exports the float dequantize/quantize chains as imported.
    ``kernels="plain"`` leaves TVM's own kernels (no micro-kernel calls: the baseline they are measured against).
    ``rows``: the micro-kernels' register blocking over output channels (1, 2 or 4; see export/blocking.py),
    one for all kernels, per kernel name (kernels not named get the default), or a callable (name, PrimFunc) ->
    rows (a tuning database's choice by workload: ``tvm_patch.tune.TunedKernels``).
    ``packing``: a callable (name, PrimFunc before blocking) -> whether that kernel's per-channel constants are
    packed into one array (export/packed_constants.py); default every kernel's (``TunedKernels.packed``: a tuning
    database's choice).
    ``wide``: a callable (kernel name) -> whether that kernel may store its weights widened to int16 (twice their
    Flash, fewer instructions: codegen/wide_weights.py); default none (``board_build`` chooses within the Flash).
    ``unroll``: a callable (name, PrimFunc before blocking) -> whether that kernel is compiled with GCC's loop
    unroller (``TunedKernels.unroll``: a tuning database's choice); default none is.
    ``outline``: a callable (name, PrimFunc before blocking) -> which layer nests of that patch stage are compiled as
    functions of their own (codegen/outline.py; ``TunedKernels.outline``: a tuning database's choice); default none.
    ``peel``: a callable (name, PrimFunc before blocking) -> whether that patch stage's patch loops are peeled
    (codegen/peel_patches.py; ``TunedKernels.peel``); default none is.
    ``pairs_down``: a callable (name, PrimFunc before blocking) -> whether that patch stage computes its odd last
    columns in pairs down them (patch/stage_forms.py; ``TunedKernels.pairs_down``); None, or no callable: the
    stage's default.
    ``halo`` (patch mode): "recompute", "cache" (each intermediate element computed once, the halo kept in
    row and column caches) or "auto" (see ``PatchStage``).
    ``rounding`` is LowerToInteger's: "tflite" (TFLite Micro's) or "onnxruntime" (its int8 kernels'; not with
    patches, which need TFLite's requantization).
    """
    if kernels not in ("micro", "plain"):
        raise TvmPatchError(f"unknown --kernels {kernels!r}; use micro or plain")
    with plain_kernels() if kernels == "plain" else contextlib.nullcontext():
        return _export(model, out_dir, patches, split, emit, check, seeds, lean, io_in_arena, alignment, tflite_path,
                       integer, rounding, rows, halo, packing, wide, unroll, outline, peel, pairs_down)


def emit_kernels(prog: Program, final: dict[str, Any], alignment: int, micro: bool = True,
                 packing: Callable[[str, Any], bool] | None = None, wide: Callable[[str], bool] | None = None,
                 unroll: Callable[[str, Any], bool] | None = None,
                 outline: Callable[[str, Any], tuple[int, ...]] | None = None,
                 peel: Callable[[str, Any], bool] | None = None
                 ) -> tuple[Program, CSource, dict[str, int], dict[str, int]]:
    """The kernels ``final`` as C, in the micro-kernels' forms (their requantization facts, the constants packed
    as ``packing`` says, the weights ``wide`` allows widened, GCC's unroller on the kernels ``unroll`` names, the
    patch stages' nests ``outline`` says outlined, their patch loops peeled where ``peel`` says) and
    the program whose constants they take; with each widened kernel's extra Flash bytes and each kernel's
    weight-sum tables' bytes. The one emission of the export and of the tuning harness."""
    emitted, c_prog = final, prog
    if micro:
        c_prog, emitted = packed_constants(prog, nonpositive_shift_requant(prog, final), packing)
        emitted = mark_sums(c_prog, emitted)
        if wide is not None:
            emitted = mark_wide(c_prog, emitted, wide)
    unrolled = [n for n in emitted if micro and unroll is not None and unroll(n, prog.funcs.get(n, final[n]))]
    outlined = {n: outline(n, prog.funcs.get(n, final[n])) for n in emitted if micro and outline is not None}
    peeled = [n for n in emitted if micro and peel is not None and peel(n, prog.funcs.get(n, final[n]))]
    csrc = emit_c(emitted, alignment, unrolled, outlined, peeled)
    c_prog, sum_bytes = sum_constants(c_prog, csrc.functions)  # before the widening: the tables sum the int8 weights
    c_prog, wide_bytes = widen_constants(c_prog, csrc.functions)
    return c_prog, csrc, wide_bytes, sum_bytes


def packed_constants(prog: Program, funcs: dict[str, Any], packing: Callable[[str, Any], bool] | None = None
                     ) -> tuple[Program, dict[str, Any]]:
    """``pack_channel_constants`` over the kernels ``packing`` (name, PrimFunc before blocking) packs, every kernel
    by default; the others keep their constants as they are (a tuning database's choice per kernel)."""
    chosen = {n: f for n, f in funcs.items() if packing is None or packing(n, prog.funcs.get(n, f))}
    c_prog, packed = pack_channel_constants(prog, chosen)
    return c_prog, {**funcs, **packed}


def _export(model: Any, out_dir: str | os.PathLike, patches: int | None, split: int | str | None, emit: str,
            check: bool, seeds: tuple[int, ...], lean: bool, io_in_arena: bool, alignment: int,
            tflite_path: str | None, integer: bool, rounding: str,
            rows: int | Mapping[str, int] | Callable[[str, Any], int], halo: str = "recompute",
            packing: Callable[[str, Any], bool] | None = None,
            wide: Callable[[str], bool] | None = None,
            unroll: Callable[[str, Any], bool] | None = None,
            outline: Callable[[str, Any], tuple[int, ...]] | None = None,
            peel: Callable[[str, Any], bool] | None = None,
            pairs_down: Callable[[str, Any], bool | None] | None = None) -> ExportResult:
    """``export_model`` with its arguments checked, under the chosen kernels' context."""
    t0 = time.monotonic()
    if emit not in ("c", "object"):
        raise TvmPatchError(f"unknown --emit {emit!r}; use c or object")
    if (patches is None) != (split is None):
        raise TvmPatchError("patch mode needs both --patches and --split")
    check_target(Path(out_dir))  # before the work: a bad output path fails at once
    # a database's choices, asked by the weights' form
    rows, packing, unroll, outline, peel, pairs_down = (keyed_by_weights(c, wide)
                                                        for c in (rows, packing, unroll, outline, peel, pairs_down))
    name, src_mod, tflite, io_names = _resolve(model)
    tflite = tflite_path or tflite
    imported = src_mod  # the analytic peak is the model's, as imported (the paper's convention)
    if rounding != "tflite" and patches is not None:
        raise TvmPatchError(f"--rounding {rounding} works layer by layer only; patch stages use TFLite's "
                            "requantization: drop --patches/--split or use --rounding tflite")
    micro = micro_kernels_enabled()
    # micro-kernels: the kernels call tvmp_requant (codegen/tvmp_kernels.h) for the requantization
    with extern_requantization() if micro else contextlib.nullcontext():
        if integer:
            src_mod = lower_to_integer(src_mod, rounding)
        # the numpy pre-fold first: PatchStage runs FoldConstant, which is slow on unfolded weights
        base = prefold_constants(src_mod) if patches is not None else src_mod
        mod = apply_patch_stage(base, patches, split, halo) if patches is not None else src_mod
    prog = lower_module(mod)
    if patches is not None:
        prog = merge_prologues(prog)
    prog = name_io(prog, *io_names)  # tvmp_run's buffers after the model's tensor names
    # each patch stage in one of its forms (prog.funcs keeps both: the workloads the choices are asked with)
    formed = {n: with_form(f, pairs_down(n, f) if pairs_down is not None else None) for n, f in prog.funcs.items()}
    blocked = formed
    if lean and micro:  # register blocking over output channels (the micro-kernels' tvmp_dot_s8_rows*)
        blocked = {n: block_output_channels(formed[n], rows_of(rows, n, f)) for n, f in prog.funcs.items()}
    funcs = {n: lean_schedule(f) for n, f in blocked.items()} if lean else dict(formed)
    lean_funcs = dict(funcs)
    cached = [n for n, f in funcs.items() if is_patch_stage(f) and has_workspace_plan(f)]  # cache mode's own plan
    n_out = {c.func: c.n_outputs for c in prog.calls}
    shifted: dict[str, list] = {}
    if lean:
        shifted = shifted_convs(prog, funcs, n_out, io_in_arena, alignment)
        convs = inplace_convs(prog, funcs, n_out, io_in_arena)
        copied = {n for n in funcs if convs[n] is not funcs[n]}
        funcs = convs
        if micro:
            funcs = {n: pixel_copy_schedule(f, n_out[n]) if f is lean_funcs[n] else f for n, f in funcs.items()}
        # the stage's per-patch buffers in one plan with in-place depthwise and adds (stage_arena.py)
        funcs = {n: plan_stage_arena(f, alignment)[0] if is_patch_stage(f) and not has_workspace_plan(f) else f
                 for n, f in funcs.items()}
    for n in cached:  # its aliases proven on its TIR, as stage_arena proves recompute mode's (an error if not)
        prove_cached_plan(funcs[n])
    pairs = {n: inplace_pairs(f, n_out[n]) + inplace_conv_pairs(f, n_out[n]) for n, f in funcs.items()}
    check_fits(*arena_buffers(prog, {}, pairs, io_in_arena))  # fail fast, before lowering huge loops
    workspace = _workspaces(funcs, alignment)
    aplan = plan_arena(prog, workspace, pairs, io_in_arena, alignment)
    for n in cached:  # a stage's 1x1 convs over their inputs only where the network's arena falls with them
        alt = without_conv_aliases(funcs[n])
        if alt is not None and (alt_bytes := planned_workspace_bytes(alt)) is not None:
            alt_workspace = workspace | {n: alt_bytes}
            alt_plan = plan_arena(prog, alt_workspace, pairs, io_in_arena, alignment)
            if alt_plan.arena_bytes <= aplan.arena_bytes:
                prove_cached_plan(alt)
                funcs[n] = lean_funcs[n] = alt
                workspace, aplan = alt_workspace, alt_plan
    if shifted:
        funcs, pairs, workspace, aplan = use_shifted(prog, funcs, lean_funcs, shifted, n_out, pairs, workspace, aplan,
                                                     io_in_arena, alignment)
    if lean:
        funcs, pairs, workspace, aplan = drop_unused_copies(prog, funcs, lean_funcs, copied, n_out, pairs, workspace,
                                                            aplan, io_in_arena, alignment, micro)
    if lean and micro:
        funcs, pairs, workspace, aplan = free_pixel_copies(prog, funcs, lean_funcs, n_out, pairs, workspace, aplan,
                                                           io_in_arena, alignment)
        funcs, pairs, workspace, aplan = pixel_blocked_in_place(prog, funcs, lean_funcs, n_out, pairs, workspace,
                                                                aplan, rows, io_in_arena, alignment)
        funcs, pairs, workspace, aplan = pixel_pairs_nchw(prog, funcs, lean_funcs, n_out, pairs, workspace, aplan,
                                                          rows, io_in_arena, alignment)
        funcs, pairs, workspace, aplan = padded_copies(prog, funcs, n_out, pairs, workspace, aplan, io_in_arena,
                                                       alignment)
    inplace_funcs = {prog.calls[k].func for k in aplan.inplace_calls}
    if lean and micro:
        funcs = window_copies(prog, funcs, lean_funcs, inplace_funcs, workspace, rows, alignment)
        funcs = pixel_blocked(prog, funcs, lean_funcs, inplace_funcs, workspace, rows, alignment, pairs, n_out)
        funcs = {n: channel_outer_schedule(f, n_out[n]) if f is lean_funcs[n] and n not in inplace_funcs else f
                 for n, f in funcs.items()}
    overlaps = {n: (list(pairs[n]) if n in inplace_funcs else []) + _repeated_args(prog, n) for n in funcs}
    final = {n: mark_in_place(f, overlaps[n]) if n in inplace_funcs or overlaps[n] else f for n, f in funcs.items()}
    if micro:  # dead channels' huge biases would keep their kernels' 64-bit requantization
        prog = quiet_dead_channels(prog, final)
    c_prog, csrc, wide_bytes, sum_bytes = emit_kernels(prog, final, alignment, micro, packing, wide, unroll,
                                                         outline, peel)
    if csrc.workspace_bytes != workspace:
        raise TvmPatchError("internal error: kernel workspace sizes changed between planning and emission")
    files: dict[str, bytes | str] = {
        "model.c": driver_source(c_prog, csrc.functions, aplan, name, csrc),
        "tvmp_model.h": model_header(prog, aplan.arena_bytes, name, frozenset(external_tensors(prog, io_in_arena))),
        "main.c": host_main(prog.inputs, prog.outputs),
        "Makefile": makefile(),
    }
    if emit == "object":
        with captured_stderr():  # LLVM's note on the thumb target's vector width
            obj, oinfos = emit_object({n: expand_extern_requantization(f) for n, f in final.items()}, ARM_TARGET,
                                      alignment)
        files["tvmp_kernels_cm7.o"] = obj
        files["tvmp_kernels.h"] = csrc.header("TVMP_KERNELS_H")
        files["model_driver.c"] = driver_source(prog, oinfos, aplan, name, None, "tvmp_kernels.h")
    patch_figs = baselines.analytic_patch_figures(base, patches, split, halo) if patches is not None else None
    result = ExportResult(
        model=name,
        out_dir=Path(out_dir),
        files=sorted(files) + ["tvmp_export.json"],
        arena_bytes=aplan.arena_bytes,
        analytic_peak_bytes=baselines.analytic_peak_bytes(imported),
        analytic_patch_peak_bytes=patch_figs["peak_bytes"] if patch_figs else None,
        lower_bound_bytes=aplan.lower_bound,
        weights_bytes=c_prog.weights_bytes,
        wide_weights=wide_bytes,
        weight_sum_tables=sum_bytes,
        tvm_static_plan_bytes=baselines.tvm_static_plan_bytes(prog.fused_mod),
        tflm_arena_head_bytes=baselines.tflm_arena_head_bytes(tflite) if tflite else None,
        plan={"split": split, "patches": patches, "split_layers": patch_figs["split"] if patch_figs else None,
              "halo": patch_figs["halo"] if patch_figs else None,
              "halo_choice": patch_figs["halo_choice"] if patch_figs else None},
        kernels=len(prog.funcs),
        calls=len(prog.calls),
        inplace_calls=len(aplan.inplace_calls),
        heuristic=aplan.plan.heuristic,
        export_seconds=0.0,
        program=prog,
        arena_plan=aplan,
        source_mod=mod,
        model_sha256=model_sha256(os.fspath(model)) if isinstance(model, (str, os.PathLike)) else None,
        call_info=[{"index": k, "func": c.func, **asdict(_call_kind(prog.funcs[c.func], patch_figs))}
                   for k, c in enumerate(prog.calls)],
        micro_kernels=micro,
        # widened and with weight-sum tables as emitted (the cost features')
        kernel_funcs=mark_wide(prog, mark_sums(prog, final) if micro else final, wide_bytes.__contains__),
        kernel_stack_scratch_bytes=max((f.stack_scratch_bytes for f in csrc.functions.values()), default=0),
        alignment_allowance_bytes=alignment * (max_live(aplan.buffers) + sum(
            int(f.attrs[STAGE_OFFSETS_ATTR].get("live", 0)) for f in final.values() if has_workspace_plan(f))),
    )
    result.export_seconds = time.monotonic() - t0
    files["tvmp_export.json"] = json.dumps(result.to_json(), indent=1) + "\n"
    write_directory(Path(out_dir), files)
    if check:
        exe = build_host(out_dir)
        result.check = check_outputs(exe, expand_micro_kernels(mod), prog.inputs, prog.outputs, seeds)
    return result


def nonpositive_shift_requant(prog: Program, funcs: dict[str, Any]) -> dict[str, Any]:
    """Each kernel whose requantization shifts are parameters found <= 0 in every element for every call of the
    kernel (per-channel constants, known at export time) calling ``tvmp_requant_rs`` for them (no left-shift
    path): the same value, fewer instructions per output; with a proven accumulator bound the narrow or (every
    shift in [-31, -1]) the rounding-add form; the bias as the accumulator's initial value (``bias_in_init``). The
    C emission's form only (TVM's builds keep theirs)."""
    out = {}
    for name, func in funcs.items():
        found = requant_shift_params(func) or set()
        calls = [c for c in prog.calls if c.func == name]
        ok = {p for p in found if calls and all(
            c.args[p].kind == "const" and bool((prog.constants[c.args[p].index] <= 0).all()) for c in calls)}
        out[name] = right_shift_requant(func, ok) if ok else func
        negative = {p for p in ok if all(bool(((prog.constants[c.args[p].index] <= -1)
                                               & (prog.constants[c.args[p].index] >= -31)).all()) for c in calls)}
        nonnegative = {p for p in range(len(calls[0].args) if calls else 0)
                       if all(c.args[p].kind == "const" and bool((prog.constants[c.args[p].index] >= 0).all())
                              for c in calls)}  # (the multipliers among them: tvmp_requant_rb's sign from acc)
        if not is_patch_stage(func):  # the stage's buffers share planned storage: its accumulators are not proven
            out[name] = narrow_requant(out[name], _constant_bounds(prog, name), negative, nonnegative)
            out[name] = bias_in_init(out[name], set(_constant_bounds(prog, name)))
    return out


def _constant_bounds(prog: Program, name: str) -> dict[int, int]:
    """{parameter index: the largest |element|} of kernel ``name``'s parameters that are constants in every call."""
    calls = [c for c in prog.calls if c.func == name]
    if not calls:
        return {}
    return {p: max(int(abs(prog.constants[c.args[p].index].astype("int64")).max(initial=0)) for c in calls)
            for p in range(len(calls[0].args)) if all(c.args[p].kind == "const" for c in calls)}


def _workspaces(funcs: dict[str, Any], alignment: int) -> dict[str, int]:
    """Each kernel's workspace bytes: lowered, except a kernel whose builder planned every buffer (a cache-mode
    stage: its plan's extent, `planned_workspace_bytes`; emission checks that the lowered size agrees)."""
    known = {n: b for n, f in funcs.items() if (b := planned_workspace_bytes(f)) is not None}
    rest = {n: f for n, f in funcs.items() if n not in known}
    infos = lower_plain(rest, C_TARGET, alignment)[1] if rest else {}
    return known | {n: i.workspace_bytes for n, i in infos.items()}


def _created_parents(path: Path) -> list[Path]:
    missing = []
    p = path
    while not p.exists() and p != p.parent:
        missing.append(p)
        p = p.parent
    return missing


def check_target(out_dir: Path) -> None:
    """Refuse an output path that is a file, lies under a file, or is a directory with foreign files."""
    out = Path(os.path.abspath(out_dir))
    if out.exists() and not out.is_dir():
        raise TvmPatchError(f"{out_dir}: exists and is not a directory; choose a directory path")
    ancestor = out.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise TvmPatchError(f"{out_dir}: cannot write ({ancestor} is not a directory); nothing was left behind")
    if out.is_dir():
        try:
            foreign = sorted(set(os.listdir(out)) - OUTPUT_FILES)
        except OSError as e:
            raise TvmPatchError(f"{out_dir}: cannot read ({e.strerror}); choose a writable directory") from None
        if foreign:
            raise TvmPatchError(f"{out_dir}: holds files an export did not write ({', '.join(foreign[:3])}); choose an empty or new directory")


def write_directory(out_dir: Path, files: dict[str, bytes | str]) -> None:
    """Write ``files`` into ``out_dir`` atomically: a temporary directory beside it, renamed at the end.
    An existing ``out_dir`` is replaced only when it holds nothing but export files."""
    check_target(out_dir)
    out = Path(os.path.abspath(out_dir))
    made = _created_parents(out.parent)
    tmp: Path | None = None
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp", dir=out.parent))
        for fname, data in files.items():
            mode = "wb" if isinstance(data, bytes) else "w"
            with open(tmp / fname, mode) as f:
                f.write(data)
        os.chmod(tmp, 0o755)
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old", dir=out.parent))
            os.rename(out, old / out.name)
            try:
                os.rename(tmp, out)
            except OSError:
                os.rename(old / out.name, out)  # put the previous export back
                old.rmdir()
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, out)
    except OSError as e:
        left = []
        if tmp is not None and tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
            if tmp.exists():
                left.append(str(tmp))
        for d in made:
            try:
                d.rmdir()
            except OSError:
                if d.exists():
                    left.append(str(d))
        tail = f"; left behind: {', '.join(left)}" if left else "; nothing was left behind"
        raise TvmPatchError(f"{out_dir}: cannot write ({e.strerror or e}){tail}") from None


def _call_kind(func: Any, patch_figs: dict | None) -> KernelInfo:
    """A call's kind and MACs: the patch stage (a loop nest written in TIR, no MAC blocks to read) counts the
    analytic profile's patched MACs of its layers, halos included; 0 where the profile could not be built."""
    if not is_patch_stage(func):
        return kernel_info(func)
    return KernelInfo("patch_stage", sum(int(p) for _, p in patch_figs["stage_layer_macs"]) if patch_figs else 0)
