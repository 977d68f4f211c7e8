"""Names shared by the passes and their consumers (function attributes, PrimFunc names), defined once."""

from __future__ import annotations

QPARAMS_ATTR = "tvm_patch.qparams"
"""Relax function attribute LowerToInteger sets: {PrimFunc name: {parameter: int}} of the integer parameters
baked into the ``q_requantize``, ``q_add``, ``q_sub`` and ``q_mul`` PrimFuncs it emits."""

PATCHES_ATTR = "tvm_patch.patches"
"""PrimFunc attribute PatchStage sets on the stage: (rows, cols) of patches (the C export streams its input)."""

STAGE_LAYOUT_ATTR = "tvm_patch.stage_layout"
"""PrimFunc attribute PatchStage sets on the stage: its layout, "NCHW" or "NHWC" (the C export's copy calls,
`tvm_patch.codegen.copy_kernels`, are for NCHW stages)."""

STAGE_OFFSETS_ATTR = "tvm_patch.workspace_plan"
"""PrimFunc attribute {"offsets": {buffer name: byte offset}, "bytes": workspace size, "live": the most of its
buffers live at once}: the kernel's buffers as
planned by its builder (`tvm_patch.export.stage_arena`, `tvm_patch.patch.cache_plan`); the C code generator
places them there, lowering the function without StorageRewrite."""

STAGE_OFFSETS_ALT_ATTR = "tvm_patch.workspace_plan_without_conv_aliases"
"""PrimFunc attribute, as STAGE_OFFSETS_ATTR: the stage's plan without its 1x1 convs written over their inputs
(`tvm_patch.patch.cache_plan.over_input`), which the export takes where the network's arena is no larger with it
(`tvm_patch.export.stage_arena.without_conv_aliases`)."""

ALIASED_PARAMS = "tvmp.aliased_params"
"""PrimFunc attribute: the parameters a driver may pass overlapping (an in-place input and output,
`tvm_patch.codegen.c_kernels.mark_in_place`); passes that move reads past stores leave such kernels alone."""

STAGE_FUNC = "patch_stage"
"""Global symbol of the PrimFunc PatchStage emits."""

# PrimFuncs LowerToInteger emits (the TE compute names; TVM may suffix them when several exist)
Q_REQUANTIZE = "q_requantize"
Q_ADD = "q_add"
Q_SUB = "q_sub"
Q_MUL = "q_mul"
Q_AVG_POOL2D = "q_avg_pool2d"
Q_MEAN = "q_mean"
Q_SOFTMAX = "q_softmax"
Q_LOGISTIC = "q_logistic"
Q_HARD_SWISH = "q_hard_swish"
Q_CONV_LOGISTIC = "q_conv_logistic"
Q_LUT = "q_lut"

HALO_MODES: tuple[str, ...] = ("recompute", "cache")
"""How a patch stage treats the overlapping halos of neighbouring patches, the schedule dimension `plan` and
`search` enumerate: "recompute" (every patch computes its whole receptive field, MCUNetV2's way) or "cache"
(row and column caches keep the halos: every intermediate element computed once; `tvm_patch.patch.regions`)."""
