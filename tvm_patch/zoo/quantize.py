"""int8 post-training quantization parameters: min/max calibration of activations, per-channel weights.

Activations: per-tensor asymmetric int8 from the min/max seen over seeded synthetic inputs (relu6 outputs
use exactly [0, 6], so the quantized range is the activation's range). Weights: per-output-channel
symmetric int8. Biases: int32 at scale input_scale * weight_scale.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from tvm_patch.zoo.graph import INPUT, Layer
from tvm_patch.zoo.reference import forward

CALIBRATION_INPUTS = 8
ACTIVATIONS = ("relu", "relu6", "sigmoid")


@dataclass(frozen=True)
class QParams:
    """Per-tensor asymmetric int8 quantization: real = scale * (q - zero_point)."""

    scale: float
    zero_point: int


def qparams_from_range(lo: float, hi: float) -> QParams:
    """int8 parameters covering [lo, hi] widened to include 0 (so zero padding is exact)."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if hi - lo < 1e-8:
        hi = lo + 1e-8
    scale = np.float32((hi - lo) / 255.0)
    zero_point = int(np.clip(np.round(-128.0 - lo / float(scale)), -128, 127))
    return QParams(float(scale), zero_point)


def quantized_tensors(layers: list[Layer]) -> list[str]:
    """Tensors that get a QuantizeLinear/DequantizeLinear pair, in graph order.

    The input and every layer output, except a conv whose only consumer is its activation (the pair goes
    after the activation) and flatten (a reshape of the already quantized pool output).
    """
    consumers: dict[str, list[Layer]] = {}
    for layer in layers:
        for name in layer.inputs:
            consumers.setdefault(name, []).append(layer)
    out = [INPUT]
    for layer in layers:
        users = consumers.get(layer.name, [])
        fused = layer.kind == "conv" and len(users) == 1 and users[0].kind in ACTIVATIONS
        if not fused and layer.kind != "flatten":
            out.append(layer.name)
    return out


def calibration_inputs(model: str, resolution: int) -> np.ndarray:
    """The seeded synthetic calibration batch: standard normal noise, like normalized images."""
    rng = np.random.default_rng([zlib.crc32(model.encode()), zlib.crc32(b"calibration")])
    return rng.standard_normal((CALIBRATION_INPUTS, 3, resolution, resolution)).astype(np.float32)


def calibrate(model: str, layers: list[Layer], resolution: int) -> dict[str, QParams]:
    """Activation quantization parameters for every tensor of `quantized_tensors`, by min/max calibration."""
    wanted = set(quantized_tensors(layers))
    kinds = {layer.name: layer.kind for layer in layers}
    ranges: dict[str, tuple[float, float]] = {}

    def observe(name: str, value: np.ndarray) -> None:
        if name in wanted:
            lo, hi = ranges.get(name, (np.inf, -np.inf))
            ranges[name] = (min(lo, float(value.min())), max(hi, float(value.max())))

    batch = calibration_inputs(model, resolution)
    for i in range(0, len(batch), 4):  # two half batches keep the peak memory of mbv2 at 224 moderate
        forward(layers, batch[i:i + 4], observe)
    return {name: qparams_from_range(*((0.0, 6.0) if kinds.get(name) == "relu6" else ranges[name]))
            for name in quantized_tensors(layers)}


def quantize_weight(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-output-channel (axis 0) symmetric int8 weights in [-127, 127] and their float32 scales."""
    absmax = np.abs(w.reshape(w.shape[0], -1)).max(axis=1)
    scale = (np.maximum(absmax, 1e-12) / 127.0).astype(np.float32)
    shape = (-1,) + (1,) * (w.ndim - 1)
    q = np.clip(np.round(w / scale.reshape(shape)), -127, 127).astype(np.int8)
    return q, scale


def quantize_bias(b: np.ndarray, in_scale: float, w_scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """int32 bias at scale in_scale * w_scale (per channel), as int8 kernels accumulate it."""
    scale = (np.float32(in_scale) * w_scale).astype(np.float32)
    q = np.clip(np.round(b / scale), -(2**31), 2**31 - 1).astype(np.int32)
    return q, scale
