"""Graph-level TVM passes of tvm-patch (Relax IR; the package keeps the name our users know from Relay).

The passes live in `tvm_patch.transform`; this package is their public face: it re-exports them and
registers the Relax pipeline "mcunetv2", so that `tvm.compile(mod, target, relax_pipeline="mcunetv2")` runs
LowerToInteger (int8 models become integer-only; float32 models pass unchanged), the patch stage
(split="auto", 4x4 patches) and then TVM's default build pipeline. To choose the schedule, or to add the
passes to a pipeline of your own:

    import relay_passes
    seq = tvm.transform.Sequential([relay_passes.LowerToInteger(), relay_passes.PatchStage("block:5", (4, 4)),
                                    relax.get_pipeline("default")])
    tvm.compile(mod, target, relax_pipeline=seq)        # or relax.get_pipeline("mcunetv2", split=..., patches=...)
"""

from __future__ import annotations

import tvm
from tvm import relax

from tvm_patch.names import PATCHES_ATTR, QPARAMS_ATTR
from tvm_patch.transform.lower_to_integer import (ROUNDINGS, LowerToInteger, float_ops_remaining, lower_to_integer,
                                                  quant_params)
from tvm_patch.transform.patch_stage import PatchStage

__all__ = ["PATCHES_ATTR", "QPARAMS_ATTR", "ROUNDINGS", "LowerToInteger", "PatchStage", "float_ops_remaining",
           "lower_to_integer", "mcunetv2_pipeline", "quant_params"]

PIPELINE = "mcunetv2"


def mcunetv2_pipeline(split: int | str | None = "auto", patches: int | tuple[int, int] = 4,
                      integer: bool = True, halo: str = "recompute") -> tvm.transform.Pass:
    """The tvm-patch pipeline: integer lowering (skipped with integer=False), the patch stage (skipped with
    split=None; `halo`: "recompute", "cache" or "auto", see PatchStage), then TVM's default build passes."""
    passes = []
    if integer:
        passes.append(LowerToInteger())
    if split is not None:
        passes.append(PatchStage(split, patches, halo))
    passes.append(relax.get_pipeline("default"))
    return tvm.transform.Sequential(passes, name=PIPELINE)


if PIPELINE not in relax.pipeline.PIPELINE_MAP:  # re-import safe (register_pipeline raises on duplicates)
    relax.register_pipeline(PIPELINE)(mcunetv2_pipeline)
