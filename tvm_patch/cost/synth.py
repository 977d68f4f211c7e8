"""Seeded synthetic networks for the cost model's measurements (nn-Meter's way: configurations sampled
around the ones real networks use). Each is a small MCUNet-space classifier (stem, inverted residual
blocks with kernel 3/5/7, expand ratio 1/3/4/6, stride 1/2, optional head conv, pool, linear), built by the
zoo's own lowering, calibration and ONNX export as an int8 QDQ model, so one firmware run measures all of
its kernels at once with the per-kernel profile."""

from __future__ import annotations

import random
from pathlib import Path

from tvm_patch.zoo.graph import lower
from tvm_patch.zoo.onnx_export import export
from tvm_patch.zoo.quantize import calibrate
from tvm_patch.zoo.spec import BlockSpec, ConvSpec, NetSpec

CHANNELS = (8, 16, 24, 32, 40, 48, 64, 80, 96, 128)
KERNELS = (3, 5, 7)
EXPANDS = (1, 3, 4, 6)
RESOLUTIONS = (32, 40, 48, 56, 64, 80, 96)
MAX_MID = 384
MAX_TENSOR = 96 * 1024  # bytes of the widest tensor: a sample fits the smallest board layer by layer


def _near(rng: random.Random, ch: int) -> int:
    """A channel count next to ``ch`` in CHANNELS (the way widths grow along real networks)."""
    i = CHANNELS.index(ch)
    return CHANNELS[max(0, min(len(CHANNELS) - 1, i + rng.choice((-1, 0, 0, 1, 1, 2))))]


def sample_net(seed: int) -> NetSpec:
    """The synthetic network of ``seed`` (the same seed gives the same network)."""
    rng = random.Random(seed)
    res = rng.choice(RESOLUTIONS)
    stem_ch = rng.choice(CHANNELS[:4])
    stem = ConvSpec(3, stem_ch, rng.choice((3, 3, 5)), 2, 1, "relu6")
    size = stem.out_size(res)
    blocks: list[BlockSpec] = []
    ch = stem_ch
    for _ in range(rng.randint(2, 6)):
        stride = 2 if size > 6 and rng.random() < 0.35 else 1
        out = ch if rng.random() < 0.4 else _near(rng, ch)
        expand = rng.choice(EXPANDS)
        mid = min(MAX_MID, ch * expand, max(ch, MAX_TENSOR // (size * size) // 8 * 8))
        has_expand = expand != 1
        residual = stride == 1 and out == ch and rng.random() < 0.8
        blocks.append(BlockSpec(ch, mid if has_expand else ch, out, rng.choice(KERNELS), stride, has_expand, residual))
        size = (size + 2 * (blocks[-1].kernel // 2) - blocks[-1].kernel) // stride + 1
        ch = out
    head = ConvSpec(ch, rng.choice((64, 96, 128, 160)), 1, 1, 1, "relu6") if rng.random() < 0.5 else None
    return NetSpec(f"synth-{seed}", "synthetic", res, stem, tuple(blocks), head, num_classes=rng.choice((10, 100)))


def write_onnx(net: NetSpec, path: str | Path) -> Path:
    """``net`` as an int8 QDQ ONNX file (seeded weights, min/max calibration on seeded inputs)."""
    layers = lower(net)
    model = export(net, layers, calibrate(net.name, layers, net.resolution))
    path = Path(path)
    path.write_bytes(model.SerializeToString())
    return path
