"""The joint search space: an MCUNet architecture (MCUNetV2 Sec. 3.3) and its patch schedule, as one genome.

The backbone is MCUNet's (the ProxylessNAS / MobileNetV2 space of the MCUNet zoo configs): a 3x3 stride-2
stem of 32 channels, a fixed MB1 3x3 block of 16, five searched stages (24, 40, 80, 96, 192 channels; first
strides 2, 2, 2, 1, 2) of 2-4 inverted residual blocks, each with its own kernel (3/5/7) and expand ratio
(3/4/6), then one searched block of 320 channels and the classifier; channels scale with the width
(0.5/0.75/1.0, multiples of 8); resolution 96-256 in steps of 16. The schedule: layer by layer, or a patch
stage of the first N blocks (N up to the end of the third stage, output stride 16) over p x p patches
(p = 2..4, the paper's range) with a halo mode from `tvm_patch.names.HALO_MODES`.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

from tvm_patch.names import HALO_MODES
from tvm_patch.search.evaluate import Schedule
from tvm_patch.zoo.spec import BlockSpec, ConvSpec, NetSpec, make_divisible

KERNELS = (3, 5, 7)
EXPANDS = (3, 4, 6)
DEPTHS = (2, 3, 4)
WIDTHS = (0.5, 0.75, 1.0)
RESOLUTIONS = tuple(range(96, 257, 16))
PATCHES = (2, 3, 4)
STEM_CH, FIRST_CH, LAST_CH = 32, 16, 320
STAGES = ((24, 2), (40, 2), (80, 2), (96, 1), (192, 2))  # (channels at width 1, first stride)
MAX_DEPTH = max(DEPTHS)
SLOTS = len(STAGES) * MAX_DEPTH + 1  # per-block genes; the last slot is the 320-channel block
PATCH_STAGES = 3  # a patch stage may end anywhere up to the end of the third searched stage


@dataclass(frozen=True)
class Genome:
    """One point of the joint space. `kernels`/`expands` have a slot per possible block (a stage uses its
    first `depth` slots); `split` counts blocks as `--split block:N` does, 0 = layer by layer."""

    resolution: int
    width: float
    depths: tuple[int, ...]
    kernels: tuple[int, ...]
    expands: tuple[int, ...]
    split: int
    patches: int
    halo: str

    @property
    def key(self) -> str:
        """A short stable id (a hash of the genes that matter): equal architectures and schedules share it."""
        used = [(self.kernels[s], self.expands[s]) for s in active_slots(self.depths)]
        text = f"{self.resolution} {self.width} {self.depths} {used} {self.schedule()}"
        return hashlib.sha256(text.encode()).hexdigest()[:10]

    def schedule(self) -> Schedule:
        """The genome's schedule."""
        return Schedule() if self.split == 0 else Schedule(self.split, self.patches, self.halo)

    def spec(self, name: str | None = None) -> NetSpec:
        """The architecture as a zoo NetSpec (named `name`, by default after the key)."""
        def ch(c: int) -> int:
            return make_divisible(c * self.width)

        stem = ConvSpec(3, ch(STEM_CH), 3, 2)
        blocks = [BlockSpec(stem.out_ch, stem.out_ch, ch(FIRST_CH), 3, 1, expand=False, residual=False)]
        in_ch = blocks[0].out_ch
        for s, (c, stride) in enumerate(STAGES):
            for i in range(self.depths[s]):
                slot = s * MAX_DEPTH + i
                blocks.append(_block(in_ch, ch(c), self.kernels[slot], self.expands[slot], stride if i == 0 else 1))
                in_ch = ch(c)
        blocks.append(_block(in_ch, ch(LAST_CH), self.kernels[-1], self.expands[-1], 1))
        return NetSpec(name=name or f"search-{self.key}", family="MCUNet space (searched)",
                       resolution=self.resolution, width=self.width, stem=stem, blocks=tuple(blocks), head=None)


def _block(in_ch: int, out_ch: int, kernel: int, expand: int, stride: int) -> BlockSpec:
    return BlockSpec(in_ch, make_divisible(in_ch * expand), out_ch, kernel, stride, expand=True,
                     residual=stride == 1 and in_ch == out_ch)


def active_slots(depths: tuple[int, ...]) -> list[int]:
    """The kernel/expand slots the architecture uses."""
    return [s * MAX_DEPTH + i for s, d in enumerate(depths) for i in range(d)] + [SLOTS - 1]


def max_split(depths: tuple[int, ...]) -> int:
    """The deepest patch stage: stem, MB1 and the first PATCH_STAGES stages, in blocks."""
    return 2 + sum(depths[:PATCH_STAGES])


def random_genome(rng: random.Random) -> Genome:
    """A uniformly drawn genome (every gene independently)."""
    depths = tuple(rng.choice(DEPTHS) for _ in STAGES)
    split = rng.choice([0, *range(2, max_split(depths) + 1)])
    return Genome(resolution=rng.choice(RESOLUTIONS), width=rng.choice(WIDTHS), depths=depths,
                  kernels=tuple(rng.choice(KERNELS) for _ in range(SLOTS)),
                  expands=tuple(rng.choice(EXPANDS) for _ in range(SLOTS)),
                  split=split, patches=rng.choice(PATCHES), halo=rng.choice(HALO_MODES))
