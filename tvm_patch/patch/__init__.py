"""Patch-based inference of a CNN's first stage as one TIR PrimFunc (MCUNetV2 on TVM)."""

from tvm_patch.patch.regions import (
    PatchPlan,
    macs_by_patch,
    patch_input_size,
    patch_macs,
    per_patch_bytes,
    plan_patches,
    stage_macs,
)
from tvm_patch.patch.schedule import allocated_bytes, build_reference, build_stage, lower_for_analysis
from tvm_patch.patch.stage import STAGE_INPUT, Add, AddQuant, Conv, ConvQuant, Stage, StageError
from tvm_patch.patch.te_stage import param_arrays, param_names

__all__ = [
    "STAGE_INPUT", "Add", "AddQuant", "Conv", "ConvQuant", "PatchPlan", "Stage", "StageError",
    "allocated_bytes", "build_reference", "build_stage", "lower_for_analysis", "macs_by_patch",
    "param_arrays", "param_names", "patch_input_size", "patch_macs", "per_patch_bytes", "plan_patches",
    "stage_macs",
]
