"""Numpy float32 forward pass over lowered layers (NCHW): the ground truth for tests and int8 calibration."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from tvm_patch.zoo.graph import INPUT, Layer


def conv2d(x: np.ndarray, w: np.ndarray, b: np.ndarray, stride: int, pad: int, groups: int) -> np.ndarray:
    """Convolution with zero padding; handles dense (groups 1) and depthwise (groups == channels) only."""
    n, c, _, _ = x.shape
    o, _, k, _ = w.shape
    if pad:
        x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    if groups == 1 and k == 1:
        xs = x[:, :, ::stride, ::stride]
        y = np.einsum("oc,nchw->nohw", w[:, :, 0, 0], xs, optimize=True)
    elif groups == 1:
        win = sliding_window_view(x, (k, k), axis=(2, 3))[:, :, ::stride, ::stride]  # n c ho wo k k
        y = np.tensordot(win, w, axes=([1, 4, 5], [1, 2, 3])).transpose(0, 3, 1, 2)
    elif groups == c == o:
        ho = (x.shape[2] - k) // stride + 1
        wo = (x.shape[3] - k) // stride + 1
        y = np.zeros((n, c, ho, wo), np.float32)
        for i in range(k):
            for j in range(k):
                tap = x[:, :, i:i + stride * (ho - 1) + 1:stride, j:j + stride * (wo - 1) + 1:stride]
                y += tap * w[None, :, 0, i, j, None, None]
    else:
        raise ValueError(f"grouped convolution with {groups} groups is not supported")
    return (y + b[None, :, None, None]).astype(np.float32, copy=False)


def _apply(layer: Layer, args: list[np.ndarray]) -> np.ndarray:
    kind = layer.kind
    if kind == "conv":
        return conv2d(args[0], layer.weight, layer.bias, **layer.attrs)
    if kind == "relu6":
        return np.clip(args[0], 0.0, 6.0)
    if kind == "relu":
        return np.maximum(args[0], 0.0)
    if kind == "sigmoid":
        return (1.0 / (1.0 + np.exp(-args[0]))).astype(np.float32)
    if kind == "add":
        return args[0] + args[1]
    if kind == "mul":
        return args[0] * args[1]
    if kind == "pool":
        return args[0].mean(axis=(2, 3), keepdims=True, dtype=np.float32)
    if kind == "flatten":
        return args[0].reshape(args[0].shape[0], -1)
    if kind == "gemm":
        return args[0] @ layer.weight.T + layer.bias
    raise ValueError(f"unknown layer kind {kind!r}")


def forward(layers: list[Layer], x: np.ndarray,
            observe: Callable[[str, np.ndarray], None] | None = None) -> np.ndarray:
    """Run the layers on `x` (N,3,R,R); `observe(tensor name, value)` sees the input and every layer output."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    # free each tensor after its last use: mbv2 at 224 with a calibration batch would otherwise hold ~1 GB
    last_use = {name: i for i, layer in enumerate(layers) for name in layer.inputs}
    values = {INPUT: x}
    if observe:
        observe(INPUT, x)
    for i, layer in enumerate(layers):
        out = _apply(layer, [values[name] for name in layer.inputs])
        values[layer.name] = out
        if observe:
            observe(layer.name, out)
        for name in layer.inputs:
            if last_use[name] == i:
                del values[name]
    return values[layers[-1].name]
