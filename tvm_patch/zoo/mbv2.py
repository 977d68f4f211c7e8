"""MobileNetV2 (Sandler et al. 2018) as a NetSpec, for any width multiplier and resolution."""

from __future__ import annotations

from tvm_patch.zoo.spec import BlockSpec, ConvSpec, NetSpec, make_divisible

# (expand ratio t, output channels c, repeats n, first stride s) of the paper's Table 2.
STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


def mobilenet_v2(name: str, width: float, resolution: int) -> NetSpec:
    """MobileNetV2 with channels scaled by `width` (multiples of 8); the 1280-channel head never shrinks."""
    stem_ch = make_divisible(32 * width)
    blocks = []
    in_ch = stem_ch
    for t, c, n, s in STAGES:
        out_ch = make_divisible(c * width)
        for i in range(n):
            stride = s if i == 0 else 1
            mid = int(round(in_ch * t))
            blocks.append(BlockSpec(in_ch, mid, out_ch, 3, stride, expand=t != 1,
                                    residual=stride == 1 and in_ch == out_ch))
            in_ch = out_ch
    head_ch = make_divisible(1280 * max(1.0, width))
    return NetSpec(name=name, family="MobileNetV2", resolution=resolution, width=width,
                   stem=ConvSpec(3, stem_ch, 3, 2), blocks=tuple(blocks), head=ConvSpec(in_ch, head_ch))
