"""Receptive-field redistribution (MCUNetV2 Sec. 3.2): the transform's rules, and MbV2-RD's patch figures
against an independent count of the halo arithmetic."""

from __future__ import annotations

from math import ceil

import pytest

from tvm_patch import report, zoo
from tvm_patch.errors import TvmPatchError
from tvm_patch.zoo.mbv2 import mobilenet_v2
from tvm_patch.zoo.redistribute import redistribute
from tvm_patch.zoo.registry import RD_STAGE_BLOCKS

RD = "mbv2-rd-w1.0-r224"


def _stage_convs(net, stage_blocks):
    """The convolutions of the first `stage_blocks` blocks (stem included), in order (main path)."""
    convs = [net.stem]
    for block in net.blocks[:stage_blocks - 1]:
        convs += [c for _, c in block.convs()]
    return convs


def _sizes(convs, resolution):
    sizes = [resolution]
    for c in convs:
        sizes.append(c.out_size(sizes[-1]))
    return sizes


def _count(net, stage_blocks, p):
    """(rows of the largest patch input, stage MACs layer by layer): the halo walked back from each output
    tile through the stage's convolutions, written here from scratch. A residual add reads its block's output
    range, inside what the block's expansion reads, so the main path's ranges are the regions."""
    convs = _stage_convs(net, stage_blocks)
    sizes = _sizes(convs, net.resolution)
    tile = ceil(sizes[-1] / p)
    rows = 0
    for i in range(ceil(sizes[-1] / tile)):
        lo, hi = i * tile, (i + 1) * tile
        for c in reversed(convs):
            pad = c.kernel // 2
            lo, hi = lo * c.stride - pad, (hi - 1) * c.stride - pad + c.kernel
        rows = max(rows, hi - lo)
    return rows, sum(c.macs(sizes[i]) for i, c in enumerate(convs))


def _grid_macs(net, stage_blocks, p):
    """Patched stage MACs summed over the p x p grid: (in-image only, whole regions with their padding).
    H and W are alike (square input and kernels), so a conv's MACs over the grid are (its rows summed over
    the patch rows) x (the same for columns) x MACs per output pixel."""
    convs = _stage_convs(net, stage_blocks)
    sizes = _sizes(convs, net.resolution)
    tile = ceil(sizes[-1] / p)
    n = ceil(sizes[-1] / tile)
    per_conv_in, per_conv_pad = [0] * len(convs), [0] * len(convs)
    for i in range(n):
        lo, hi = i * tile, (i + 1) * tile
        for j in range(len(convs) - 1, -1, -1):
            per_conv_in[j] += min(hi, sizes[j + 1]) - max(lo, 0)
            per_conv_pad[j] += hi - lo
            c = convs[j]
            pad = c.kernel // 2
            lo, hi = lo * c.stride - pad, (hi - 1) * c.stride - pad + c.kernel
    in_image = padded = 0
    for j, c in enumerate(convs):
        per_px = c.out_ch * (c.in_ch // c.groups) * c.kernel ** 2
        in_image += per_conv_in[j] ** 2 * per_px
        padded += per_conv_pad[j] ** 2 * per_px
    return in_image, padded


def test_transform_rules():
    """Fewer blocks (residual repeats leave the stage), smaller kernels (stride-1 windows become 1x1), the
    blocks added after the stage; the stage still ends at 28x28 and the block count is unchanged."""
    base = mobilenet_v2("mbv2-w1.0-r224", 1.0, 224)
    rd, stage = redistribute(base, RD_STAGE_BLOCKS, RD)
    assert rd == zoo.spec(RD) and stage == 4
    inside = rd.blocks[:stage - 1]
    assert not any(b.residual for b in inside)
    assert all(b.kernel == 1 for b in inside if b.stride == 1)
    assert [b.stride for b in inside] == [1, 2, 2]
    assert len(rd.blocks) == len(base.blocks)
    moved = [b for b in base.blocks[:RD_STAGE_BLOCKS - 1] if b.residual]
    assert len(moved) == 1 and sum(b.residual for b in rd.blocks) == sum(b.residual for b in base.blocks)
    first, added = rd.blocks[stage - 1], rd.blocks[stage]  # the block after the stage, then the one added
    assert added.residual and added.in_ch == first.out_ch and added.kernel == moved[0].kernel
    assert added.mid_ch / added.in_ch == moved[0].mid_ch / moved[0].in_ch
    with pytest.raises(TvmPatchError, match="2..17 blocks"):
        redistribute(base, 1, "x")


def test_redistribution_shrinks_halo_overhead():
    """Independent count: the patch input falls from 75 to 63 rows at 4x4 and so do both overheads."""
    base = zoo.spec("mbv2-w1.0-r224")
    rd = zoo.spec(RD)
    rows_base, flat_base = _count(base, 5, 4)
    rows_rd, flat_rd = _count(rd, 4, 4)
    assert (rows_base, rows_rd) == (75, 63)
    (in_base, pad_base), (in_rd, pad_rd) = _grid_macs(base, 5, 4), _grid_macs(rd, 4, 4)
    assert in_rd / flat_rd < in_base / flat_base and pad_rd / flat_rd < pad_base / flat_base
    net_base = (zoo.macs(base) - flat_base + in_base) / zoo.macs(base)
    net_rd = (zoo.macs(rd) - flat_rd + in_rd) / zoo.macs(rd)
    assert net_rd < net_base


def test_profile_of_mbv2_rd_matches_the_count():
    """`tvm-patch profile zoo:mbv2-rd-w1.0-r224 --patches 4 --split block:4` (the imported model): patch input
    63x63, stage and network MAC overheads equal to the independent in-image count."""
    rd = zoo.spec(RD)
    result = report.profile(f"zoo:{RD}", patches=4, split="block:4", tir=False)
    pb = result["patch_based"]
    _, flat = _count(rd, 4, 4)
    in_image, _ = _grid_macs(rd, 4, 4)
    assert pb["patch_input_hw"] == [63, 63]
    assert result["layer_by_layer"]["macs"] == zoo.macs(rd)
    assert pb["macs"] == zoo.macs(rd) - flat + in_image
    assert pb["stage_mac_overhead"] == pytest.approx(in_image / flat - 1, abs=1e-12)
    assert pb["mac_overhead"] == pytest.approx((zoo.macs(rd) - flat + in_image) / zoo.macs(rd) - 1, abs=1e-12)
