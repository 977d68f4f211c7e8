"""Patch-based inference of a CNN's first stage as one TIR PrimFunc (MCUNetV2 on TVM).

- `stage`: the description (`Stage` of `Conv` / `Add` / `MaxPool` / `Lookup` layers, int8 `ConvQuant` /
  `AddQuant`).
- `regions`: the halo arithmetic (`plan_patches`), per-patch bytes, patch input size, MACs.
- `te_stage`: the TE compute; `schedule`: `build_stage` (patched PrimFunc), `build_reference`.
- `reference`: numpy reference and runner (TFLite's integer arithmetic comes from `tvm_patch.quant`).
"""

from tvm_patch.patch.regions import (
    PatchPlan,
    execution_order,
    full_size_bytes,
    macs_by_patch,
    patch_input_size,
    patch_macs,
    per_patch_bytes,
    plan_patches,
    scalar_names,
    stage_macs,
)
from tvm_patch.patch.schedule import (
    allocated_bytes,
    allocations,
    build_reference,
    build_stage,
    lower_for_analysis,
    measured_macs_by_patch,
)
from tvm_patch.patch.stage import STAGE_INPUT, Add, AddQuant, Conv, ConvQuant, Lookup, MaxPool, Stage, StageError
from tvm_patch.patch.te_stage import StageTE, param_arrays, param_names, stage_te

__all__ = [
    "STAGE_INPUT",
    "Add",
    "AddQuant",
    "Conv",
    "ConvQuant",
    "Lookup",
    "MaxPool",
    "PatchPlan",
    "Stage",
    "StageError",
    "StageTE",
    "allocated_bytes",
    "allocations",
    "build_reference",
    "build_stage",
    "execution_order",
    "full_size_bytes",
    "lower_for_analysis",
    "macs_by_patch",
    "measured_macs_by_patch",
    "param_arrays",
    "param_names",
    "patch_input_size",
    "patch_macs",
    "per_patch_bytes",
    "plan_patches",
    "scalar_names",
    "stage_macs",
    "stage_te",
]
