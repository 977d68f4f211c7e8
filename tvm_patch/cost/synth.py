"""Seeded synthetic networks for the cost model's measurements (nn-Meter's way: configurations sampled
around the ones real networks use). Each is a small MCUNet-space classifier (stem, inverted residual
blocks with kernel 3/5/7, expand ratio 1/3/4/6, stride 1/2, optional head conv, pool, linear) with, from
the second collection round on, plain k x k convolutions over many channels inserted as ResNet-like
layers (the kernels the first round's held-out error was largest on), built by the zoo's own lowering,
calibration and ONNX export as an int8 QDQ model, so one firmware run measures all of its kernels at once
with the per-kernel profile."""

from __future__ import annotations

import random
import zlib
from collections.abc import Callable
from pathlib import Path

from dataclasses import dataclass, replace

import numpy as np
import tvm

from tvm_patch.cost.nhwc import nhwc_module
from tvm_patch.zoo.graph import Layer, lower
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


@dataclass(frozen=True)
class Inserted:
    """A plain k x k convolution (channels kept, then relu6) inserted after the layer named ``after``."""

    after: str
    channels: int
    kernel: int
    stride: int


def _sample_body(rng: random.Random, resolutions: tuple[int, ...], stem_channels: tuple[int, ...],
                 n_blocks: tuple[int, int], stride_above: int, p_stride: float, p_keep: float,
                 draw_expand: Callable[[int], int]) -> tuple[int, ConvSpec, tuple[BlockSpec, ...], int]:
    """A sampled resolution, stride-2 stem and ``n_blocks`` (lo, hi) inverted residual blocks, and the last
    block's channels: stride 2 with probability ``p_stride`` while the input is larger than ``stride_above``, the
    channels kept with probability ``p_keep``, block k's expand ratio from ``draw_expand(k)``, a residual where it
    can be (p 0.8)."""
    res = rng.choice(resolutions)
    ch = rng.choice(stem_channels)
    stem = ConvSpec(3, ch, rng.choice((3, 3, 5)), 2, 1, "relu6")
    size = stem.out_size(res)
    blocks: list[BlockSpec] = []
    for k in range(rng.randint(*n_blocks)):
        stride = 2 if size > stride_above and rng.random() < p_stride else 1
        out = ch if rng.random() < p_keep else _near(rng, ch)
        expand = draw_expand(k)
        mid = min(MAX_MID, ch * expand, max(ch, MAX_TENSOR // (size * size) // 8 * 8))
        residual = stride == 1 and out == ch and rng.random() < 0.8
        blocks.append(BlockSpec(ch, mid if expand != 1 else ch, out, rng.choice(KERNELS), stride, expand != 1, residual))
        size = (size + 2 * (blocks[-1].kernel // 2) - blocks[-1].kernel) // stride + 1
        ch = out
    return res, stem, tuple(blocks), ch


def sample_net(seed: int) -> NetSpec:
    """The synthetic network of ``seed`` (the same seed gives the same network)."""
    rng = random.Random(seed)
    res, stem, blocks, ch = _sample_body(rng, RESOLUTIONS, CHANNELS[:4], (2, 6), 6, 0.35, 0.4,
                                         lambda k: rng.choice(EXPANDS))
    head = ConvSpec(ch, rng.choice((64, 96, 128, 160)), 1, 1, 1, "relu6") if rng.random() < 0.5 else None
    return NetSpec(f"synth-{seed}", "synthetic", res, stem, blocks, head, num_classes=rng.choice((10, 100)))


DEEP_RESOLUTIONS = (64, 80, 96, 112)


def sample_deep(seed: int) -> NetSpec:
    """A deep synthetic network of ``seed`` for the patch stage's training (the configurations real networks
    patch: MCUNet / MobileNetV2 stages of 10-30 layers over many patches, which round 0's 2-6 blocks rarely
    reach): resolution 64-112, a narrow stem, 6-12 inverted residual blocks with expand ratio 3/4/6 (and 1 for
    the first) and channels growing slowly, stride 2 about every third block."""
    rng = random.Random(seed * 6271 + 17)
    res, stem, blocks, _ = _sample_body(rng, DEEP_RESOLUTIONS, CHANNELS[:3], (6, 12), 5, 0.3, 0.5,
                                        lambda k: 1 if k == 0 and rng.random() < 0.5 else rng.choice(EXPANDS[1:]))
    return NetSpec(f"synth-deep-{seed}", "synthetic", res, stem, blocks, None, num_classes=10)


def sample_near(seed: int, variant: int) -> NetSpec:
    """A neighbour of the network of ``seed`` (adaptive sampling, nn-Meter's way: more samples where the model
    errs most): the same blocks and channels, each block's kernel redrawn with probability 0.4 and the
    resolution one step down, kept or one step up (seeded by ``variant``)."""
    net = sample_net(seed)
    rng = random.Random(seed * 1009 + variant * 7 + 3)
    i = RESOLUTIONS.index(net.resolution)
    res = RESOLUTIONS[max(0, min(len(RESOLUTIONS) - 1, i + rng.choice((-1, 0, 0, 1))))]
    blocks = tuple(replace(b, kernel=rng.choice(KERNELS)) if rng.random() < 0.4 else b for b in net.blocks)
    return replace(net, name=f"{net.name}-near{variant}", resolution=res, blocks=blocks)


def sample_inserts(net: NetSpec, seed: int) -> tuple[Inserted, ...]:
    """0 to 2 plain k x k convolutions for ``net`` (seeded): after the stem or a block output."""
    rng = random.Random(seed * 7919 + 1)
    points = [("stem." + (net.stem.act or ""), net.stem.out_ch)]
    for i, b in enumerate(net.blocks, start=2):
        points.append((f"b{i}.add" if b.residual else f"b{i}.project", b.out_ch))
    out = []
    for _ in range(rng.choice((0, 1, 1, 2))):
        after, ch = rng.choice(points)
        out.append(Inserted(after, ch, rng.choice((3, 3, 5)), rng.choice((1, 1, 2))))
    return tuple(out)


def _insert(layers: list[Layer], net_name: str, ins: Inserted, k: int) -> list[Layer]:
    """``layers`` with ``ins`` after its layer: every reader of that layer reads the new convolution."""
    name = f"x{k}.conv"
    rng = np.random.default_rng([zlib.crc32(net_name.encode()), k])
    fan_in = ins.channels * ins.kernel * ins.kernel
    w = rng.normal(0.0, np.sqrt(2.0 / fan_in), (ins.channels, ins.channels, ins.kernel, ins.kernel)).astype(np.float32)
    b = rng.normal(0.0, 0.1, ins.channels).astype(np.float32)
    conv = Layer("conv", name, (ins.after,), w, b, {"stride": ins.stride, "pad": ins.kernel // 2, "groups": 1})
    act = Layer("relu6", f"x{k}.relu6", (name,))
    out = []
    for layer in layers:
        if ins.after in layer.inputs:
            layer = Layer(layer.kind, layer.name, tuple(act.name if i == ins.after else i for i in layer.inputs),
                          layer.weight, layer.bias, layer.attrs)
        out.append(layer)
        if layer.name == ins.after:
            out += [conv, act]
    return out


def synth_layers(net: NetSpec, inserts: tuple[Inserted, ...] = ()) -> list[Layer]:
    """The zoo's layers of ``net`` with ``inserts`` (seeded weights)."""
    layers = lower(net)
    for k, ins in enumerate(inserts):
        layers = _insert(layers, net.name, ins, k)
    return layers


def nhwc_model(net: NetSpec, inserts: tuple[Inserted, ...] = ()) -> tvm.IRModule:
    """``net`` (with ``inserts``) as the NHWC int8 module a TFLite import of it would give (nhwc.py)."""
    layers = synth_layers(net, inserts)
    return nhwc_module(net, layers, calibrate(net.name, layers, net.resolution))


def write_onnx(net: NetSpec, path: str | Path, inserts: tuple[Inserted, ...] = ()) -> Path:
    """``net`` (with ``inserts``) as an int8 QDQ ONNX file (seeded weights, min/max calibration on seeded
    inputs)."""
    layers = synth_layers(net, inserts)
    model = export(net, layers, calibrate(net.name, layers, net.resolution))
    path = Path(path)
    path.write_bytes(model.SerializeToString())
    return path
