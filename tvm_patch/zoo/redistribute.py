"""Receptive-field redistribution (MCUNetV2 Sec. 3.2) as a transform of architecture specs.

The halo a patch recomputes grows with the receptive field of the patch stage. Redistribution shrinks that
field and gives it back after the stage, where the network runs layer by layer:

- fewer blocks: every residual block inside the stage (a stride-1 repeat whose input and output have the
  same shape) leaves the stage;
- smaller kernels: every other stride-1 block inside the stage gets a 1x1 depthwise kernel, so the only
  windows left in the stage are the ones that downsample (the stem and the stride-2 depthwise convolutions);
- blocks added after it: each block that left comes back as a residual block (same expand ratio and kernel)
  right after the first block that follows the stage, at that block's channels and resolution.

It is a spec transform, not a Relax pass: the result is another architecture with other weights (the zoo
seeds them), which has to be retrained before its accuracy means anything. Retraining is out of scope.
Applied to MobileNetV2-224 with a 5-block stage, the 4x4-patch input shrinks from 75x75 to 63x63, as the
paper's MbV2-RD (docs/patch-stage.md has the measured overheads).
"""

from __future__ import annotations

from dataclasses import replace

from tvm_patch.errors import TvmPatchError
from tvm_patch.zoo.spec import BlockSpec, NetSpec


def redistribute(net: NetSpec, stage_blocks: int, name: str) -> tuple[NetSpec, int]:
    """`net` with its receptive field moved out of a patch stage of `stage_blocks` blocks (the stem is block
    1, as `--split block:N` counts) and renamed `name`; returns the new spec and its stage's block count."""
    if not 2 <= stage_blocks <= len(net.blocks):
        raise TvmPatchError(f"redistribution needs a stage of 2..{len(net.blocks)} blocks (stem included), "
                            f"got {stage_blocks}")
    inside = net.blocks[:stage_blocks - 1]
    after = net.blocks[stage_blocks - 1:]
    kept = [b if b.stride != 1 else replace(b, kernel=1) for b in inside if not b.residual]
    moved = [b for b in inside if b.residual]
    first = after[0]
    added = [BlockSpec(first.out_ch, round(first.out_ch * b.mid_ch / b.in_ch), first.out_ch, b.kernel, 1,
                       expand=b.expand, residual=True, act=b.act, se_ch=0) if b.expand else
             BlockSpec(first.out_ch, first.out_ch, first.out_ch, b.kernel, 1, expand=False, residual=True,
                       act=b.act) for b in moved]
    blocks = (*kept, first, *added, *after[1:])
    out = replace(net, name=name, family=f"{net.family}, receptive field redistributed", blocks=blocks)
    return out, 1 + len(kept)
