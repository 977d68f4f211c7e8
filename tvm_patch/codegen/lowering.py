"""The TIR lowering of the plain-C export (step 1 of ``c_kernels``): the passes of
``tvm.s_tir.pipeline.default_s_tir_pipeline`` (what ``tvm.compile`` runs on a PrimFunc) that a kernel needs
before its plain signature, with this project's rewrites into micro-kernel calls among them, and the rest of
the host finalization after it (step 4).

Three passes of that pipeline are left out: ``AnnotateEntryFunc`` (it makes the C backend append a TVM-FFI entry
wrapper), ``MakePackedAPI`` (``c_kernels`` writes the plain signature instead) and, from the host finalization,
``LowerTVMBuiltin``. For C, ``VectorizeLoop`` runs with vectorization off: the C backend would print vector types
C does not have; the loops stay serial, same arithmetic. ``LowerIntrin`` (step 4) makes ``q_multiply_shift``
plain 64-bit integer arithmetic.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import tvm
from tvm import s_tir, tirx

from tvm_patch.codegen.border_partition import PartitionPadding
from tvm_patch.codegen.channel_rows import ChannelRows
from tvm_patch.codegen.copy_kernels import CopyLoops
from tvm_patch.codegen.four_pixels import FourPixels
from tvm_patch.codegen.merge_taps import MergeTaps
from tvm_patch.codegen.micro_kernels import MicroKernels, micro_kernels_enabled
from tvm_patch.codegen.pad_rows import PadDotRows
from tvm_patch.codegen.quantize_kernels import QuantizeCalls
from tvm_patch.codegen.widen_kernels import WidenPixelPairs
from tvm_patch.codegen.wide_weights import WidenWeights
from tvm_patch.codegen.weight_sums import WeightSums
from tvm_patch.codegen.workspace import fixed_plan
from tvm_patch.codegen.window_blocks import WindowBlocks

__all__ = ["finalize_passes", "lower_tir", "lowering_passes"]


def lowering_passes(for_c: bool, storage_rewrite: bool = True) -> list[tvm.transform.Pass]:
    """The lowering passes run before the plain-API rewrite (see the module docstring);
    ``storage_rewrite=False`` for a function whose buffers the caller placed (`STAGE_OFFSETS_ATTR`)."""
    config = tvm.transform.PassContext.current().config
    passes = [
        s_tir.transform.CanonicalizeLoop(),
        s_tir.transform.LowerCrossThreadReduction(),
        s_tir.transform.LowerInitBlock(),
        s_tir.transform.PlanAndUpdateBufferAllocationLocation(),
        s_tir.transform.ConvertBlocksToOpaque(),
        s_tir.transform.LiftThreadBinding(),
        s_tir.transform.ManifestSharedMemoryLocalStage(),
        s_tir.transform.CompactBufferAllocation(),
        s_tir.transform.LowerAutoCopy(),
        s_tir.transform.UnifyThreadBinding(),
        s_tir.transform.LowerMatchBuffer(),
        s_tir.transform.StmtSimplify(),
        s_tir.transform.InjectPermutedLayout(),
        s_tir.transform.AnnotateIrregularLoop(),
        s_tir.transform.InjectSoftwarePipeline(),
        s_tir.transform.TransformMmaBufferLayout(),
        s_tir.transform.LowerOpaqueBlock(),
        tirx.transform.FlattenBuffer(),
        # interior windows without tests; not in a function whose buffers the caller placed (one name, one place)
        *([PartitionPadding()] if for_c and micro_kernels_enabled() and storage_rewrite else []),
        tirx.transform.BF16ComputeLegalize(),
        tirx.transform.NarrowDataType(32),
        s_tir.transform.LoopPartition(),
        tirx.transform.VectorizeLoop(not for_c and not bool(config.get("tirx.disable_vectorize", False))),
        s_tir.transform.InjectVirtualThread(),
        s_tir.transform.InjectDoubleBuffer(),
    ]
    if storage_rewrite and not bool(config.get("tirx.disable_storage_rewrite", False)):
        passes.append(tirx.transform.StorageRewrite())
    passes += [
        s_tir.transform.HoistIfThenElse(),
        tirx.transform.UnrollLoop(),
        s_tir.transform.RenormalizeSplitPattern(),
        tirx.transform.StmtSimplify(),
        tirx.transform.RemoveNoOp(),
        s_tir.transform.RewriteUnsafeSelect(),
    ]
    if for_c and micro_kernels_enabled():
        passes.append(MicroKernels())  # contiguous int8 dot products -> tvmp_dot_s8 (tvmp_kernels.h)
        passes.append(WindowBlocks())  # neighbouring windows two or four a call (tvmp_window2_s8 / _window4_s8)
        passes.append(PadDotRows())  # odd-length dot rows over a local copy (a stem's window) padded to words
        passes.append(WidenPixelPairs())  # a pixel pair every channel block reads: sign-extended once
        passes.append(WidenWeights())  # weights the export stores as int16: no SXTB16 on them
        passes.append(WeightSums())  # border taps' weight sums from a table the export stores
        passes.append(ChannelRows())  # a low-K 1x1 convolution channel by channel along a row, epilogue fused
        passes.append(MergeTaps())  # a window's per-tap dot calls over contiguous runs as one call
        passes.append(FourPixels())  # two pixel pairs on int8 weights: each weight word extended once for four
        passes.append(CopyLoops())  # int8 copy and fill loops -> tvmp_copy_s8 / tvmp_fill_s8, a word at a time
        passes.append(QuantizeCalls())  # float -> int8 quantization -> tvmp_quant_s8 (VCVTR, QADD, SSAT)
    if not bool(config.get("tirx.disable_cse_tir", False)):
        passes.append(tirx.transform.CommonSubexprElim())
    passes += [
        tirx.transform.FP8ComputeLegalize(),
        s_tir.transform.VerifyVTCMLimit(),
        s_tir.transform.LowerVtcmAlloc(),
        tirx.transform.VerifyMemory(),
        s_tir.transform.MergeSharedMemoryAllocations(),
        tirx.transform.SplitHostDevice(),
    ]
    return passes



def finalize_passes() -> list[tvm.transform.Pass]:
    """The host finalization's passes after the plain-API rewrite (step 4 of ``c_kernels``)."""
    return [
        tirx.transform.FP8StorageLegalize(),
        tirx.transform.BF16StorageLegalize(),
        tirx.transform.LowerIntrin(),
    ]


def lower_tir(funcs: Mapping[str, tirx.PrimFunc], tgt: tvm.target.Target) -> list[tuple[Any, tirx.PrimFunc]]:
    """(GlobalVar, PrimFunc) of each of ``funcs`` bound to ``tgt`` and through ``lowering_passes``, under the
    ambient PassContext as ``tvm.compile`` runs them (its opt_level and config keys apply); the functions whose
    builder placed their buffers (``fixed_plan``) lowered apart, without StorageRewrite."""
    for_c = tgt.kind.name == "c"
    lowered = []
    for planned in (False, True):  # functions with a caller's workspace plan keep their buffers apart
        group = {name: f for name, f in funcs.items() if (fixed_plan(f) is not None) == planned}
        if not group:
            continue
        mod = tvm.IRModule({name: f.with_attr("global_symbol", name) for name, f in group.items()})
        mod = tirx.transform.BindTarget(tgt.with_host(tgt))(mod)
        lowered += list(tvm.transform.Sequential(lowering_passes(for_c, storage_rewrite=not planned))(mod).functions.items())
    return lowered
