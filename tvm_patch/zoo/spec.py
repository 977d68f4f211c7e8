"""Architecture descriptions of the zoo's CNNs: plain frozen dataclasses plus MAC counting.

A `NetSpec` is what every builder (MobileNetV2, MnasNet, the MCUNet JSON parser) produces; lowering to
weighted layers, ONNX export and the numpy reference all start from it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ConvSpec:
    """A kxk convolution (same padding k//2), batch norm folded in, then an optional activation."""

    in_ch: int
    out_ch: int
    kernel: int = 1
    stride: int = 1
    groups: int = 1
    act: str | None = "relu6"

    def out_size(self, size: int) -> int:
        """Output height/width for an input of height/width `size`."""
        pad = self.kernel // 2
        return (size + 2 * pad - self.kernel) // self.stride + 1

    def macs(self, size: int) -> int:
        """Multiply-accumulates for an input of height/width `size`."""
        out = self.out_size(size)
        return out * out * self.out_ch * (self.in_ch // self.groups) * self.kernel * self.kernel


@dataclass(frozen=True)
class BlockSpec:
    """An inverted residual block: [1x1 expand] -> kxk depthwise -> [squeeze-excite] -> 1x1 linear project.

    `expand` is False when the block has no expansion conv (expand ratio 1, or MnasNet's SepConv);
    `se_ch` is the squeeze-excite bottleneck width (0: no SE); `residual` adds the block input to the output.
    """

    in_ch: int
    mid_ch: int
    out_ch: int
    kernel: int
    stride: int
    expand: bool
    residual: bool
    act: str = "relu6"
    se_ch: int = 0

    def __post_init__(self) -> None:
        if not self.expand and self.mid_ch != self.in_ch:
            raise ValueError(f"block without expansion needs mid_ch == in_ch, got {self.in_ch}->{self.mid_ch}")
        if self.residual and (self.stride != 1 or self.in_ch != self.out_ch):
            raise ValueError("residual block needs stride 1 and in_ch == out_ch")

    def convs(self) -> list[tuple[str, ConvSpec]]:
        """The block's main-path convolutions (SE excluded), named by role."""
        out = []
        if self.expand:
            out.append(("expand", ConvSpec(self.in_ch, self.mid_ch, 1, 1, 1, self.act)))
        out.append(("dw", ConvSpec(self.mid_ch, self.mid_ch, self.kernel, self.stride, self.mid_ch, self.act)))
        out.append(("project", ConvSpec(self.mid_ch, self.out_ch, 1, 1, 1, None)))
        return out


@dataclass(frozen=True)
class NetSpec:
    """A whole classifier: stem conv, inverted residual blocks, optional 1x1 head conv, pool, linear."""

    name: str
    family: str
    resolution: int
    stem: ConvSpec
    blocks: tuple[BlockSpec, ...]
    head: ConvSpec | None
    num_classes: int = 1000
    width: float | None = None

    @property
    def feature_ch(self) -> int:
        """Channels entering the classifier."""
        if self.head is not None:
            return self.head.out_ch
        return self.blocks[-1].out_ch if self.blocks else self.stem.out_ch

    def describe(self) -> str:
        """One line: family, width, resolution, blocks, MACs."""
        width = "n/a" if self.width is None else f"{self.width:g}"
        head = f"head 1x1 {self.head.out_ch}" if self.head else "no head conv"
        return (
            f"{self.name}: {self.family}, width {width}, resolution {self.resolution}, "
            f"{len(self.blocks) + 1} blocks (stem {self.stem.out_ch}ch + {len(self.blocks)} inverted residual), "
            f"{head}, classifier {self.feature_ch}->{self.num_classes}, {macs(self) / 1e6:.1f} M MACs"
        )


def macs(net: NetSpec) -> int:
    """Multiply-accumulates of all convolutions (SE included) and the classifier; pools, adds, muls excluded."""
    size = net.resolution
    total = net.stem.macs(size)
    size = net.stem.out_size(size)
    for block in net.blocks:
        for _, conv in block.convs():
            total += conv.macs(size)
            size = conv.out_size(size)
        if block.se_ch:
            total += 2 * block.mid_ch * block.se_ch
    if net.head is not None:
        total += net.head.macs(size)
    return total + net.feature_ch * net.num_classes


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round a scaled channel count to a multiple of `divisor`, never going more than 10 % below `value`.

    The rule of the MobileNet reference implementations (torchvision's `_make_divisible`).
    """
    min_value = divisor if min_value is None else min_value
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded
