"""Example stages with random weights (for tests and benchmarks): the MobileNetV2 head the paper patches."""

from __future__ import annotations

import time

import numpy as np

from tvm_patch.patch.regions import full_size_bytes, patch_input_size, patch_macs, per_patch_bytes, stage_macs
from tvm_patch.patch.schedule import allocated_bytes, allocations, build_stage
from tvm_patch.patch.stage import Add, AddQuant, Conv, ConvQuant, Layer, Stage
from tvm_patch.quant.params import quantize_multiplier

# MobileNetV2 inverted residual settings (expand ratio t, output channels c, repeats n, first stride s)
MBV2_SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1))


def _same_pad(size: int, k: int, s: int) -> tuple[int, int]:
    """TF "SAME" padding (before, after) of one axis."""
    out = -(-size // s)
    total = max((out - 1) * s + k - size, 0)
    return total // 2, total - total // 2


class _Builder:
    def __init__(self, shape, layout: str, dtype: str, padding: str, seed: int):
        self.layout, self.dtype, self.padding = layout, dtype, padding
        self.rng = np.random.default_rng(seed)
        self.layers: list[Layer] = []
        n, a, b, c = shape
        self.c, self.h, self.w = (a, b, c) if layout == "NCHW" else (c, a, b)

    def conv(self, cout: int, k: int, s: int, depthwise: bool = False, act: str = "relu6") -> int:
        cin = self.c
        groups = cin if depthwise else 1
        if self.padding == "same":
            pt, pb = _same_pad(self.h, k, s)
            pl, pr = _same_pad(self.w, k, s)
        else:
            pt = pb = pl = pr = k // 2
        cg = cin // groups
        if self.layout == "NCHW":
            shape = (cout, cg, k, k)
        else:
            shape = (k, k, cout, 1) if depthwise else (k, k, cg, cout)
        fan_in = cg * k * k
        if self.dtype == "float32":
            weight = (self.rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype("float32")
            bias = (self.rng.standard_normal(cout) * 0.1).astype("float32")
            quant = None
        else:
            weight = self.rng.integers(-127, 128, shape, dtype=np.int8)
            bias = self.rng.integers(-2000, 2000, cout).astype("int32")
            # scale the accumulator (std ~ 128*74*sqrt(fan_in)) back to ~ +-64
            reals = 40.0 / (9000.0 * np.sqrt(fan_in)) * self.rng.uniform(0.5, 1.5, cout)
            mults, shifts = zip(*(quantize_multiplier(float(r)) for r in reals))
            zp_in = self.layers[-1].quant.output_zero_point if self.layers else -5
            zp_out = int(self.rng.integers(-20, 20))
            lo, hi = (-128, 127) if act == "none" else (zp_out, 127 if act == "relu" else min(127, zp_out + 90))
            quant = ConvQuant(zp_in, zp_out, np.array(mults), np.array(shifts), 0, lo, hi)
        self.layers.append(Conv(weight, bias, s, (pt, pl, pb, pr), groups, act, quant=quant))
        self.c = cout
        self.h = (self.h + pt + pb - k) // s + 1
        self.w = (self.w + pl + pr - k) // s + 1
        return len(self.layers) - 1

    def add(self, other: int) -> int:
        quant = None
        if self.dtype == "int8":
            a, b = self.layers[-1].quant, self.layers[other].quant
            m1, s1 = quantize_multiplier(0.5)
            m2, s2 = quantize_multiplier(0.4)
            mo, so = quantize_multiplier(1.0 / (1 << 20) / 0.6)
            quant = AddQuant((a.output_zero_point, b.output_zero_point), (m1, m2), (s1, s2), 3, mo, so)
        self.layers.append(Add(other, quant=quant))
        return len(self.layers) - 1


def mbv2_stage(
    resolution: int = 224,
    blocks: int = 5,
    layout: str = "NCHW",
    dtype: str = "float32",
    width: float = 1.0,
    padding: str = "symmetric",
    seed: int = 0,
) -> Stage:
    """The first `blocks` blocks of MobileNetV2 (stem counts as one) with random weights.

    blocks=5 is the paper's patch stage: stem + 4 inverted residual blocks, output res/8 (28x28 at 224).
    padding "symmetric" is k//2 on every side (PyTorch/ONNX); "same" is TF SAME (TFLite).
    """
    shape = (1, 3, resolution, resolution) if layout == "NCHW" else (1, resolution, resolution, 3)
    b = _Builder(shape, layout, dtype, padding, seed)
    ch = lambda c: max(8, int(round(c * width / 8)) * 8)  # noqa: E731
    b.conv(ch(32), 3, 2)
    done = 1
    for t, c, n, s in MBV2_SETTINGS:
        for r in range(n):
            if done >= blocks:
                return Stage(shape, tuple(b.layers), layout, dtype)
            block_in = len(b.layers) - 1
            cin = b.c
            if t != 1:
                b.conv(cin * t, 1, 1)
            b.conv(cin * t, 3, s if r == 0 else 1, depthwise=True)
            b.conv(ch(c), 1, 1, act="none")
            if r > 0 and cin == b.c:
                b.add(block_in)
            done += 1
    return Stage(shape, tuple(b.layers), layout, dtype)


def report(resolution: int = 224, patches: int = 4, layout: str = "NCHW", dtype: str = "float32") -> dict:
    """Build the MbV2 head patched and print/return its figures (build time, bytes, MACs)."""
    stage = mbv2_stage(resolution, layout=layout, dtype=dtype, padding="symmetric" if layout == "NCHW" else "same")
    p = (patches, patches)
    t0 = time.perf_counter()
    func = build_stage(stage, p)
    build_s = time.perf_counter() - t0
    analytic = per_patch_bytes(stage, p)
    buffers = {k: v for k, v in analytic.items() if k not in ("total", "peak")}
    figures = {
        "stage": f"MbV2 {resolution} {layout} {dtype}, {len(stage.layers)} layers, output {stage.output_shape}",
        "patches": p,
        "build_stage_s": round(build_s, 3),
        "patch_input": patch_input_size(stage, p),
        "buffers_match_analytic": allocations(func) == buffers,
        "allocated_no_storage_rewrite": allocated_bytes(func, storage_rewrite=False),
        "analytic_total": analytic["total"],
        "allocated_default_lowering": allocated_bytes(func),
        "analytic_peak": analytic["peak"],
        "full_size_intermediates": sum(full_size_bytes(stage).values()),
        "mac_overhead": round(patch_macs(stage, p) / stage_macs(stage) - 1, 4),
    }
    for k, v in figures.items():
        print(f"{k:30s} {v}")
    return figures


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="figures of the patched MobileNetV2 head")
    ap.add_argument("--res", type=int, default=224)
    ap.add_argument("--patches", type=int, default=4)
    ap.add_argument("--layout", default="NCHW", choices=["NCHW", "NHWC"])
    ap.add_argument("--dtype", default="float32", choices=["float32", "int8"])
    a = ap.parse_args()
    report(a.res, a.patches, a.layout, a.dtype)
