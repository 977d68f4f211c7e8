"""MnasNet-A1 (Tan et al. 2019) as a NetSpec: relu activations, squeeze-excite in three stages."""

from __future__ import annotations

from tvm_patch.zoo.spec import BlockSpec, ConvSpec, NetSpec

# (expand ratio, kernel, output channels, repeats, first stride, squeeze-excite) after the SepConv block.
STAGES = ((6, 3, 24, 2, 2, False), (3, 5, 40, 3, 2, True), (6, 3, 80, 4, 2, False),
          (6, 3, 112, 2, 1, True), (6, 5, 160, 3, 2, True), (6, 3, 320, 1, 1, False))
SE_RATIO = 0.25


def mnasnet_a1(name: str, resolution: int = 224) -> NetSpec:
    """MnasNet-A1: stem 3x3/2 32, SepConv to 16, six MBConv stages, 1x1 head 1280, classifier 1000.

    The SE bottleneck is max(1, int(block input channels * 0.25)), as in the reference TF implementation.
    """
    # SepConv: depthwise 3x3 relu then linear 1x1 projection, i.e. an inverted residual block without expansion.
    blocks = [BlockSpec(32, 32, 16, 3, 1, expand=False, residual=False, act="relu")]
    in_ch = 16
    for t, k, c, n, s, se in STAGES:
        for i in range(n):
            stride = s if i == 0 else 1
            se_ch = max(1, int(in_ch * SE_RATIO)) if se else 0
            blocks.append(BlockSpec(in_ch, in_ch * t, c, k, stride, expand=True,
                                    residual=stride == 1 and in_ch == c, act="relu", se_ch=se_ch))
            in_ch = c
    return NetSpec(name=name, family="MnasNet-A1", resolution=resolution, width=1.0,
                   stem=ConvSpec(3, 32, 3, 2, act="relu"), blocks=tuple(blocks),
                   head=ConvSpec(in_ch, 1280, act="relu"))
