"""One geometry for windowed layers: a per-axis region map (stride, kernel extent, padding).

An output index i of a convolution or pooling reads input indices [i * stride - pad_before,
i * stride - pad_before + extent) along each spatial axis. Everything spatial is derived from that map, once:
the output size (`output_size`), the input rows an output range reads (`input_range`, the halo going
backwards, used by the patch plan) and the receptive field going forwards (`receptive`, used by the profile).
The layer graph (`tvm_patch.graph.Layer.region`) and the patch stage (`tvm_patch.patch.stage.ConvGeometry.region`)
attach one to each layer.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["AxisMap", "RegionMap"]


@dataclass(frozen=True)
class AxisMap:
    """The region map of one spatial axis: output i reads [i * stride - pad_before, ... + extent)."""

    stride: int = 1
    extent: int = 1  # the kernel (window) size along this axis
    pad_before: int = 0
    pad_after: int = 0

    def output_size(self, n: int) -> int:
        """Output length over an input of length n (padding included, floor division as in conv2d)."""
        return (n + self.pad_before + self.pad_after - self.extent) // self.stride + 1

    def input_range(self, lo: int, hi: int) -> tuple[int, int]:
        """The input indices [lo', hi') read by outputs [lo, hi) (in padded coordinates: may leave the image);
        an empty range maps to itself."""
        if hi <= lo:
            return lo, hi
        return lo * self.stride - self.pad_before, (hi - 1) * self.stride - self.pad_before + self.extent

    def receptive(self, field: int, jump: int) -> tuple[int, int]:
        """(receptive field, jump) of an output element, given those of an input element (in image pixels)."""
        return field + (self.extent - 1) * jump, jump * self.stride


@dataclass(frozen=True)
class RegionMap:
    """The region maps of the two spatial axes (H, W) of a layer."""

    h: AxisMap = AxisMap()
    w: AxisMap = AxisMap()

    @classmethod
    def of(cls, kernel: tuple[int, int], stride: tuple[int, int],
           padding: tuple[int, int, int, int]) -> RegionMap:
        """From (kh, kw), (sh, sw) and (top, left, bottom, right) padding."""
        return cls(AxisMap(stride[0], kernel[0], padding[0], padding[2]),
                   AxisMap(stride[1], kernel[1], padding[1], padding[3]))

    def axis(self, a: int) -> AxisMap:
        """The map of axis a (0 = H, 1 = W)."""
        return self.h if a == 0 else self.w
