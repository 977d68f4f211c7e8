"""What others would need for the same model: the paper's analytic peak, TVM's Relax memory plan, and
TensorFlow Lite Micro's activation arena. Reported beside the planned arena, never used to build it."""

from __future__ import annotations

import re

import tvm
from tvm import relax

from tvm_patch.errors import TvmPatchError
from tvm_patch.export.prefold import prefold_constants
from tvm_patch.export.stderr import captured_stderr
from tvm_patch.graph import build_graph
from tvm_patch.patch.figures import patch_based
from tvm_patch.patch.memory import best_schedule
from tvm_patch.patch.regions import HALO_MODES
from tvm_patch.profile import peak, profile_layers

__all__ = ["analytic_peak_bytes", "tvm_static_plan_bytes", "tflm_arena_head_bytes"]


def analytic_peak_bytes(mod: tvm.IRModule) -> int | None:
    """Peak of the per-layer analytic profile (int8 activations, the MCUNetV2 convention), or None
    when the layer graph cannot be built from this module (e.g. after a pass that left opaque calls)."""
    try:
        rows = profile_layers(build_graph(mod))
    except (TvmPatchError, RuntimeError, KeyError, IndexError, ValueError, AttributeError, TypeError):
        return None
    return peak(rows).bytes if rows else None


def analytic_patch_figures(mod: tvm.IRModule, patches: int, split: int | str, halo: str = "recompute") -> dict | None:
    """The profile's "patch_based" figures (``peak_bytes``: the patched analytic peak, full input image
    not counted; ``split``: the resolved layer count) of ``mod``, the module PatchStage runs on (after
    LowerToInteger for int8 models, so "auto" resolves to the same split), or None when the profile
    cannot be built."""
    try:
        folded = relax.transform.FoldConstant()(prefold_constants(mod))
        graph = build_graph(folded)
        if str(split) == "auto":  # as PatchStage resolves it
            best = best_schedule(graph, folded["main"], (patches, patches),
                                 HALO_MODES if halo == "auto" else (halo,))
            if best is None:
                return None
            figs = patch_based(graph, folded, patches, best.split, tir=False, imported=mod, halo=best.halo)
            return figs | {"halo_choice": best.why}
        return patch_based(graph, folded, patches, split, tir=False, imported=mod, halo=halo)
    except (TvmPatchError, RuntimeError, KeyError, IndexError, ValueError, AttributeError, TypeError):
        return None


def tvm_static_plan_bytes(fused_mod: tvm.IRModule, func_name: str = "main") -> int:
    """Total bytes of the storages TVM's StaticPlanBlockMemory allocates for ``func_name`` (after
    ToNonDataflow, RemovePurityChecking, CallTIRRewrite). It plans by storage token and size class, does
    not see kernel-internal allocations, and leaves the function's output tensor unplanned."""
    T = relax.transform
    seq = tvm.transform.Sequential([T.ToNonDataflow(), T.RemovePurityChecking(), T.CallTIRRewrite(), T.StaticPlanBlockMemory()])
    mod = seq(fused_mod)
    total = 0
    for block in mod[func_name].body.blocks:
        for b in block.bindings:
            v = b.value
            if isinstance(v, relax.Call) and isinstance(v.op, tvm.ir.Op) and v.op.name == "relax.memory.alloc_storage":
                size = v.args[0]
                if not isinstance(size, relax.ShapeExpr):
                    raise TvmPatchError("StaticPlanBlockMemory produced a storage of dynamic size")
                total += int(size.values[0])
    return total


_HEAD = re.compile(r"Arena allocation head\D*(\d+)")


def tflm_arena_head_bytes(tflite_path: str, arena_sizes: tuple[int, ...] = (8 << 20, 64 << 20)) -> int | None:
    """The "head" of TensorFlow Lite Micro's arena for a .tflite model (its activation plan), from the
    interpreter's ``print_allocations`` on C-level stderr. None when tflite-micro is not installed or
    cannot allocate the model in the largest arena tried: a missing baseline never fails an export."""
    try:
        from tflite_micro.python.tflite_micro import runtime
    except ImportError:
        return None
    for size in arena_sizes:
        try:
            with captured_stderr() as captured:
                interp = runtime.Interpreter.from_file(tflite_path, arena_size=size)
                interp.print_allocations()
        except RuntimeError:  # "TFLM failed to allocate tensors": try a larger arena
            continue
        m = _HEAD.search("".join(captured))
        return int(m.group(1)) if m else None
    return None
