"""Model zoo: CNNs for microcontrollers built from architecture specs with seeded weights, as ONNX.

Float32 models and int8 QDQ models (min/max-calibrated on seeded synthetic inputs), cached on disk.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import onnx

from tvm_patch.errors import TvmPatchError
from tvm_patch.zoo import cache, registry
from tvm_patch.zoo.graph import lower
from tvm_patch.zoo.mcunet import META, parse_config, spec_file, to_config
from tvm_patch.zoo.onnx_export import export
from tvm_patch.zoo.quantize import calibrate
from tvm_patch.zoo.reference import forward
from tvm_patch.zoo.spec import NetSpec, macs

__all__ = ["names", "describe", "onnx_model", "onnx_model_of", "reference_forward", "spec", "macs", "NetSpec",
           "META", "parse_config", "spec_file", "to_config"]

spec = registry.spec
_lowered = lru_cache(maxsize=4)(lower)  # reference_forward is called in loops; NetSpec is hashable


def names() -> list[str]:
    """All zoo model names, sorted."""
    return sorted(registry.BUILDERS)


def describe(name: str) -> str:
    """One line: family, width, resolution, blocks, head, classifier and MACs of zoo model `name`."""
    return registry.spec(name).describe()


def build(name: str, int8: bool = False) -> onnx.ModelProto:
    """Build zoo model `name` from scratch (no cache): float32 ONNX, or int8 QDQ ONNX if `int8`."""
    return build_spec(registry.spec(name), int8)


def build_spec(net: NetSpec, int8: bool = False) -> onnx.ModelProto:
    """The network `net` as ONNX, built from scratch with weights seeded from its name (see `build`)."""
    layers = lower(net)
    qparams = calibrate(net.name, layers, net.resolution) if int8 else None
    return export(net, layers, qparams)


def onnx_model(name: str, int8: bool = False) -> onnx.ModelProto:
    """Zoo model `name` as ONNX (float32, or int8 QDQ if `int8`), from the disk cache when it is current."""
    return onnx_model_of(registry.spec(name), int8)


def onnx_model_of(net: NetSpec, int8: bool = False) -> onnx.ModelProto:
    """The network `net` (a zoo model's, or one read from a spec JSON file) as ONNX, through the disk cache."""
    path = cache.cache_path(net.name, "int8" if int8 else "fp32", repr(net))
    return cache.cached(path, lambda: build_spec(net, int8))


def reference_forward(name: str, x: np.ndarray) -> np.ndarray:
    """Numpy float32 forward of the float model on `x` (N,3,R,R) -> logits (N,classes)."""
    net = registry.spec(name)
    r = net.resolution
    if x.ndim != 4 or x.shape[1:] != (3, r, r):
        raise TvmPatchError(f"zoo model {name!r} takes input of shape (N, 3, {r}, {r}), got {x.shape}")
    return forward(_lowered(net), x)
