"""Halo caching (cache mode): patches in raster order, every intermediate element computed once, the halo kept in
row and column caches. Property tests on random stages (numpy executor with checked caches), the analytic figures
against what it counts, the TIR PrimFunc and the C export bit-exact."""

from __future__ import annotations

import ctypes
import json
import shutil
import sys
from dataclasses import replace
import re
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest
import tvm_ffi
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tvm import tirx
from tvm.ir.expr import TensorLoad

from tvm_patch.codegen import emit_c
from tvm_patch.codegen.c_kernels import MICRO_KERNELS
from tvm_patch.codegen.wide_weights import padded_layout
from tvm_patch.cost.fingerprint import DW_ROWS_NET
from tvm_patch.cost.synth import write_onnx
from tvm_patch.errors import TvmPatchError
from tvm_patch.names import STAGE_OFFSETS_ATTR
from tvm_patch.export import export_model
from tvm_patch.export.inplace_cache import prove_cached_plan
from tvm_patch.export.stage_arena import has_workspace_plan, plan_stage_arena
from tvm_patch.patch import Add, AddQuant, Conv, ConvQuant, Stage
from tvm_patch import report
from tvm_patch.patch import cache_stage
from tvm_patch.patch.cache_plan import writes_top_left
from tvm_patch.patch.block_plan import blocked_adds, pairs_down, window_bytes
from tvm_patch.patch.cache_stage import build_cached_stage, build_recompute_stage
from tvm_patch.patch.stage_forms import PAIRS_DOWN, form_default, pairs_down_default, with_form
from tvm_patch.patch.memory import PatchMemory, pick_schedule
from tvm_patch.patch.examples import mbv2_stage
from tvm_patch.patch.reference import compile_func, run_numpy, run_numpy_cached, run_tvm
from tvm_patch.patch.schedule import build_stage, depthwise_in_place_layers, skip_accumulations
from tvm_patch.patch.te_stage import bounded_requantization, param_arrays, zero_point_requantization
from tvm_patch.patch.regions import (Interval, cache_bytes, cache_macs_by_patch, halo_macs, input_reads, layer_macs,
                                     macs_by_patch, new_interval, plan_patches, stage_macs)
from tvm_patch.patch.stage import StageError
from tvm_patch.quant import extern_requantization, multiply_by_quantized_multiplier_ref
from tvm_patch.quant.fixedpoint import BOUNDED_ACC_MAX
from tvm_patch.quant.params import quantize_multiplier
from tvm_patch.transform.patch_stage import PatchStage


@st.composite
def stages(draw, dtype: str | None = None) -> tuple[Stage, np.ndarray, tuple[int, int]]:
    """A random stage (kernels 1/3/5/7, strides 1/2, depthwise, residual blocks, odd sizes), an input and a
    patch split (counts that need not divide the output)."""
    dtype = dtype or draw(st.sampled_from(["float32", "int8"]))
    layout = draw(st.sampled_from(["NCHW", "NHWC"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    c = draw(st.integers(1, 3))
    h, w = draw(st.integers(5, 19)), draw(st.integers(5, 19))
    layers: list = []
    shapes = {-1: (c, h, w)}

    def quant(cout, zp_in):
        if dtype == "float32":
            return None
        mults, shifts = zip(*(quantize_multiplier(float(r)) for r in rng.uniform(0.001, 0.02, cout)))
        return ConvQuant(zp_in, int(rng.integers(-10, 10)), np.array(mults), np.array(shifts), 0, -128, 127)

    def zp_of(v):
        if dtype == "float32" or v < 0:
            return 3
        q = layers[v].quant
        return q.output_zero_point

    for _ in range(draw(st.integers(1, 4))):
        cur = len(layers) - 1
        cin, hh, ww = shapes[cur]
        kind = draw(st.sampled_from(["conv", "dw", "res"]))
        k = draw(st.sampled_from([1, 3, 5, 7]))
        s = draw(st.sampled_from([1, 2]))
        if (hh + 2 * (k // 2) - k) // s + 1 < 1 or (ww + 2 * (k // 2) - k) // s + 1 < 1:
            continue
        if kind == "res":  # conv(k, stride 1, same channels) + add with the block input
            cout, s = cin, 1
        elif kind == "dw":
            cout = cin
        else:
            cout = draw(st.integers(1, 4))
        groups = cin if kind == "dw" else 1
        shape = (cout, cin // groups, k, k) if layout == "NCHW" else (k, k, cin // groups, cout)
        if kind == "dw" and layout == "NHWC":
            shape = (k, k, cout, 1)
        if dtype == "float32":  # small integers: every sum is exact in float32 and float64
            weight = rng.integers(-2, 3, shape).astype("float32")
            bias = rng.integers(-3, 4, cout).astype("float32")
        else:
            weight = rng.integers(-127, 128, shape).astype("int8")
            bias = rng.integers(-500, 500, cout).astype("int32")
        act = draw(st.sampled_from(["none", "relu"]))
        layers.append(Conv(weight, bias, s, k // 2, groups, act if dtype == "float32" else "none",
                           quant=quant(cout, zp_of(cur))))
        shapes[len(layers) - 1] = (cout, (hh + 2 * (k // 2) - k) // s + 1, (ww + 2 * (k // 2) - k) // s + 1)
        if kind == "res":
            q = None
            if dtype == "int8":
                m1, s1 = quantize_multiplier(0.5)
                mo, so = quantize_multiplier(1.0 / (1 << 20) / 0.6)
                q = AddQuant((zp_of(len(layers) - 1), zp_of(cur)), (m1, m1), (s1, s1), 0, mo, so)
            layers.append(Add(cur, quant=q))
            shapes[len(layers) - 1] = shapes[len(layers) - 2]
    if not layers:
        layers.append(Conv(rng.integers(-2, 3, (1, c, 1, 1) if layout == "NCHW" else (1, 1, c, 1)).astype(
            "float32" if dtype == "float32" else "int8"), None, 1, 0, quant=quant(1, 3)))
    in_shape = (1, c, h, w) if layout == "NCHW" else (1, h, w, c)
    try:
        stage = Stage(in_shape, tuple(layers), layout, dtype)
    except StageError:
        stage = Stage(in_shape, (layers[0],), layout, dtype)
    _, ho, wo = stage.value_shape(len(stage.layers) - 1)
    patches = (draw(st.integers(1, min(4, ho))), draw(st.integers(1, min(4, wo))))
    x = (rng.integers(-3, 4, in_shape).astype("float32") if dtype == "float32"
         else rng.integers(-128, 128, in_shape).astype("int8"))
    return stage, x, patches


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stages())
def test_cache_mode_is_exact_and_computes_each_element_once(case):
    """Random stages: the cached run equals the layer-by-layer reference bit for bit; it computes every live
    element once (checked inside the executor) and so performs the layer-by-layer MACs on the live parts; its
    MACs and cache sizes are what `regions` predicts, and every cache entry it writes is read (tight caches)."""
    stage, x, patches = case
    try:
        plan_patches(stage, patches)
    except StageError:
        return  # a stage PatchStage refuses too
    run = run_numpy_cached(stage, x, patches)
    assert np.array_equal(run.output, run_numpy(stage, x))
    assert run.macs == halo_macs(stage, patches, "cache") <= stage_macs(stage)
    assert halo_macs(stage, patches, "cache") <= halo_macs(stage, patches, "recompute")
    assert {v: n for v, n in run.cache_elements.items()} == cache_bytes(stage, patches, item=1)
    assert not any(run.unread_cache_elements.values())


def test_cache_figures_by_hand():
    """One 3x3 conv chain, 8x8, 2x2 patches, counted by hand: layer 0 (3x3, stride 1, pad 1) feeds a 3x3
    conv, so the patches' regions of layer 0 overlap by 2 rows / columns; each patch computes its new part."""
    w = np.ones((2, 1, 3, 3), "float32")
    stage = Stage((1, 1, 8, 8), (Conv(w, None, 1, 1), Conv(np.ones((1, 2, 3, 3), "float32"), None, 1, 1)))
    plan = plan_patches(stage, (2, 2))
    assert (plan.h[0].regions[0], plan.h[0].regions[1]) == (Interval(-1, 5), Interval(3, 9))
    assert new_interval(plan.h[0], 1) == Interval(5, 9)  # rows 3 and 4 come from the row cache
    # caches of layer 0: 2 channels x (2 halo rows x 10 domain columns + 6 region rows x 2 halo columns)
    assert cache_bytes(stage, (2, 2)) == {0: 4 * 2 * (2 * 10 + 6 * 2)}
    macs = cache_macs_by_patch(stage, (2, 2))
    assert macs.sum() == stage_macs(stage) == 8 * 8 * 2 * 9 + 8 * 8 * 1 * 18
    # patch (0, 0) computes layer 0 rows/columns 0..4 (5 x 5 live of its 6 x 6 region), the output 4 x 4
    assert macs[0, 0] == 5 * 5 * 2 * 9 + 4 * 4 * 18
    # per layer (layer by layer, patched): cache mode computes each element once; recompute mode computes layer
    # 0's 5 live rows and columns of its 6-wide region in both patches, 10 x 10 where layer by layer has 8 x 8
    assert layer_macs(stage, (2, 2), "cache") == [(1152, 1152), (1152, 1152)]
    assert layer_macs(stage, (2, 2), "recompute") == [(1152, 10 * 10 * 2 * 9), (1152, 1152)]
    assert halo_macs(stage, (2, 2), "recompute") == 1800 + 1152 == macs_by_patch(stage, (2, 2)).sum()
    # the input's regions: rows (columns) -2..5 and 2..9, two 3x3 convs' halos, 6 of each inside the 8 x 8 image;
    # recompute mode reads 12 x 12 elements of its 8 x 8; cache mode counts each once
    assert input_reads(stage, (2, 2), "recompute") == (64, 12 * 12)
    assert input_reads(stage, (2, 2), "cache") == (64, 64)


@pytest.mark.parametrize("layout,dtype,patches", [("NCHW", "int8", (2, 2)), ("NHWC", "int8", (3, 2)),
                                                  ("NHWC", "float32", (2, 3))])
def test_cached_primfunc_bit_exact(layout, dtype, patches):
    """The TIR loop nest of cache mode (MbV2's first blocks: depthwise, stride 2, residual adds) equals the
    numpy reference (int8 bit for bit; float32 within float rounding)."""
    stage = mbv2_stage(resolution=24, blocks=5, layout=layout, dtype=dtype, width=0.25)
    rng = np.random.default_rng(1)
    x = (rng.integers(-128, 128, stage.input_shape).astype("int8") if dtype == "int8"
         else rng.standard_normal(stage.input_shape).astype("float32"))
    got = run_tvm(compile_func(build_cached_stage(stage, patches), fast=True), stage, x)
    ref = run_numpy(stage, x)
    if dtype == "int8":
        assert np.array_equal(got, ref)
    else:
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)


def test_patch_stage_rejects_an_unknown_halo():
    with pytest.raises(TvmPatchError, match="halo must be one of recompute, cache or auto"):
        PatchStage("auto", 4, halo="keep")


def test_vww_cache_mode_export_bit_exact(mlperf_paths, tmp_path):
    """The C export in cache mode (vww, 4x4 patches, auto split), weights widened: bit-exact with TVM, the arena
    within the analytic cache-mode peak, the plan says which mode ran. Kernels round 26's forms: the 8 -> 16 layer
    channel by channel along rows whose length the patch decides (`tvmp_row_q15w_px2` with a run-time pair count),
    the 48 x 48 depthwise over its input channel copied first, the last (stride-2) depthwise in window pairs."""
    result = export_model(str(mlperf_paths["vww_96_int8"]), tmp_path / "vww", patches=4, split="auto", halo="cache",
                          check=True, seeds=(0,), wide=lambda _n: True)
    assert result.check.bit_exact, result.check.summary()
    assert result.plan["halo"] == "cache"
    assert result.arena_bytes <= result.analytic_patch_peak_bytes
    # each layer's bias, multiplier and shift packed into one parameter (export/packed_constants.py), the shifts
    # stored as right shifts
    code = (tmp_path / "vww" / "model.c").read_text()
    signature, body = re.search(r"void tvmp_patch_stage\(([^)]*)\) \{(.*?)\n\}\n", code, re.S).groups()
    layers = re.findall(r"layer(\d+)_weight", signature)
    assert len(layers) >= 3 and re.findall(r"layer(\d+)_bias", signature) == layers
    assert "_multiplier" not in signature and "_shift" not in signature
    assert "tvmp_requant_rbzr(" in body and "tvmp_requant_rbz(" not in body
    rows = re.findall(r"tvmp_row_q15w_px2\(([^;]*)\);", body)  # (row, pairs, weights, K, ...)
    assert rows and all(not c.split(",")[1].strip().isdigit() and c.split(",")[3].strip() == "8" for c in rows)
    assert "layer1_in_chan" in body and "layer1_chan" not in body
    last = body[body.rindex("tvmp_barrier();"):]
    assert "tvmp_window2_s8(" in last and "output[" in last


def run_c(func, stage: Stage, x: np.ndarray, seed: int = 0) -> np.ndarray:
    """The stage PrimFunc as the C export emits it (its buffers at their planned offsets in one workspace,
    in-place steps sharing bytes), compiled with gcc and run on a workspace full of garbage."""
    src = emit_c({"stage": func})
    cf = src.functions["stage"]
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory(prefix="tvmp_cached_") as tmp:
        c, so = Path(tmp) / "stage.c", Path(tmp) / "stage.so"
        c.write_text(src.code)
        subprocess.run(["gcc", "-O1", "-std=c99", "-shared", "-fPIC", str(c), "-o", str(so), "-lm"], check=True,
                       capture_output=True, text=True, timeout=120)
        lib = ctypes.CDLL(str(so))
        out = np.full(stage.output_shape, 77, stage.dtype)
        data = iter([np.ascontiguousarray(x, stage.dtype), *param_arrays(stage), out])
        args, keep = [], []
        for p in cf.params:
            if p.role == "workspace":
                raw = rng.integers(0, 256, cf.workspace_bytes + 16, dtype=np.uint8)
                ws = raw[(-raw.ctypes.data) % 16:][:cf.workspace_bytes]
                keep.append(raw)
                args.append(ctypes.c_void_p(ws.ctypes.data))
            else:
                a = next(data)
                if p.dtype == "int8" and p.shape and int(np.prod(p.shape)) != a.size:  # rows padded (pad_rows.py)
                    a = padded_layout(a, tuple(p.shape))
                keep.append(a)
                args.append(ctypes.c_void_p(a.ctypes.data))
        fn = lib.stage
        fn.restype = None
        fn.argtypes = [ctypes.c_void_p] * len(args)
        fn(*args)
    return out


@settings(max_examples=24, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stages())
def test_cached_stage_in_c_is_exact(case):
    """Random stages (kernels 1/3/5/7, strides 1/2, depthwise, residual blocks, odd sizes, non-dividing patch
    counts), cache mode with its in-place steps, as the C export runs it (buffers at their planned offsets, so
    an in-place depthwise or an add over its skip really shares bytes): equal to the layer-by-layer numpy
    reference bit for bit."""
    stage, x, patches = case
    try:
        plan_patches(stage, patches)
    except StageError:
        return
    func = build_cached_stage(stage, patches)
    prove_cached_plan(func)
    assert np.array_equal(run_c(func, stage, x), run_numpy(stage, x))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stages())
def test_cached_plan_is_proven_on_its_tir(case):
    """Random stages: the cache-mode plan's overlaps (in-place depthwise, adds over their skips) hold on the TIR
    (`inplace_cache.prove_cached_plan`), in both layouts and dtypes."""
    stage, _, patches = case
    try:
        plan_patches(stage, patches)
    except StageError:
        return
    proof = prove_cached_plan(build_cached_stage(stage, patches))
    assert set(proof.caches) <= set(proof.lives)


def test_consecutive_in_place_depthwise_channel_buffers():
    """Two in-place depthwise layers in a row, the first in the output-copy form (its output channel the smaller:
    stride 2) and the second copying its input channel first, the first's output (a stage hypothesis found):
    each layer's one-channel buffer has a name of its own, so the planner takes them and the plan is proven."""
    dw = lambda w, b, s: Conv(np.array(w, "float32").reshape(2, 1, 1, 1), np.array(b, "float32"), s, 0, 2, "none")
    layers = (dw([2, 1], [0, -2], 2), dw([-1, -2], [-3, -3], 1),
              Conv(np.array([-2, 2], "float32").reshape(1, 2, 1, 1), np.array([1], "float32"), 1, 0, 1, "none"))
    stage = Stage((1, 2, 11, 5), layers, "NCHW", "float32")
    func = build_cached_stage(stage, (1, 1))
    offs = {str(k) for k in func.attrs[STAGE_OFFSETS_ATTR]["offsets"]}
    assert "layer0_chan" in offs and ("layer1_in_chan" in offs or "layer1" not in offs)  # (or at layer0's top-left)
    proof = prove_cached_plan(func)
    assert set(proof.caches) <= set(proof.lives)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_cached_stage_in_place(layout):
    """MbV2's first blocks in cache mode: each depthwise layer whose input dies there starts at its input's offset
    (channel by channel from a one-channel copy), the projections have no buffer of their own (computed inside
    their residual adds, which write over the skip), so the workspace is smaller than without in-place steps;
    the C run is bit-exact."""
    stage = mbv2_stage(resolution=32, blocks=5, layout=layout, dtype="int8", width=0.5)
    func = build_cached_stage(stage, (3, 3))
    plain = build_cached_stage(stage, (3, 3), in_place=False)
    offs = {str(k): int(v) for k, v in func.attrs[STAGE_OFFSETS_ATTR]["offsets"].items()}
    assert int(func.attrs[STAGE_OFFSETS_ATTR]["bytes"]) < int(plain.attrs[STAGE_OFFSETS_ATTR]["bytes"])
    shared = [v for v in depthwise_in_place_layers(stage) if offs.get(f"layer{v}") is not None
              and offs.get(f"layer{v}") == offs.get(f"layer{stage.inputs[v][0]}")]
    assert shared  # at least one depthwise output over its input
    assert "layer8" not in offs and "layer9" not in offs  # block 5's projection and add: in the skip's buffer
    proof = prove_cached_plan(func)  # the same on the TIR: the shared offsets and the add over its skip
    assert {(f"layer{stage.inputs[v][0]}", f"layer{v}") for v in shared} <= {(s, d) for s, d, _ in proof.depthwise}
    assert proof.updates
    x = np.random.default_rng(3).integers(-128, 128, stage.input_shape).astype("int8")
    assert np.array_equal(run_c(func, stage, x), run_numpy(stage, x))


def _figures(peak: int, macs: int, halo: str) -> PatchMemory:
    return PatchMemory(peak, peak, peak, 0, macs, macs, macs, (1, 1), (4, 4), [], halo)


def test_auto_rule_picks_a_mode_and_says_why():
    """The auto rule over (split, halo) options: the fewest MACs among the peaks within 10 % of the smallest,
    ties to recompute then to the shallower split; the reason names the choice and the other mode's best."""
    opts = [(_figures(1000, 900, "recompute"), "recompute", 5), (_figures(1080, 700, "cache"), "cache", 5),
            (_figures(1500, 600, "cache"), "cache", 6)]
    c = pick_schedule(opts, lbl_peak=5000)
    assert (c.split, c.halo) == (5, "cache")
    assert "split 5, halo cache: the fewest MACs (700)" in c.why and "best recompute" in c.why and "more MACs" in c.why
    c = pick_schedule([(_figures(1000, 900, "recompute"), "recompute", 5), (_figures(1800, 700, "cache"), "cache", 5)])
    assert c.halo == "recompute" and "peak +80% over the smallest" in c.why
    tie = pick_schedule([(_figures(1000, 700, "cache"), "cache", 4), (_figures(1000, 700, "recompute"), "recompute", 6)])
    assert (tie.split, tie.halo) == (6, "recompute") and "ties go to recompute" in tie.why
    assert pick_schedule(opts, lbl_peak=900) is None  # no option lowers the layer-by-layer peak


def test_profile_auto_split_and_halo(mlperf_paths):
    """`profile --split auto --halo auto` (vww, 4x4): both modes considered over every split, the chosen mode's
    figures are the ones reported, and the reason is in the JSON (and printed)."""
    pb = report.profile(str(mlperf_paths["vww_96_int8"]), patches=4, split="auto", halo="auto")["patch_based"]
    assert pb["halo"] in ("recompute", "cache") and pb["halo_choice"].startswith(f"split {pb['split']}, halo {pb['halo']}")
    assert pb["peak_bytes"] == pb["halo_modes"][pb["halo"]]["peak_bytes"]
    other = "cache" if pb["halo"] == "recompute" else "recompute"
    assert f"best {other}" in pb["halo_choice"]


def test_cached_plan_proof_rejects_what_it_cannot_show():
    """The proof is not a formality: a cache placed over a per-patch buffer, an add whose computed part reaches
    into the rows and columns its cache fills wrote (every loop from 0), and a patch reading columns its cache
    fills no longer write (what the previous patch left there) are refused."""
    stage = mbv2_stage(resolution=24, blocks=7, layout="NCHW", dtype="int8", width=0.25)
    func = build_cached_stage(stage, (2, 2))
    prove_cached_plan(func)
    attr = func.attrs[STAGE_OFFSETS_ATTR]
    offs = {str(k): int(v) for k, v in attr["offsets"].items()}
    cache = next(n for n in offs if n.endswith("_rows"))
    moved = func.with_attr(STAGE_OFFSETS_ATTR, {"offsets": offs | {cache: offs["layer5"]}, "bytes": int(attr["bytes"]),
                                                "live": int(attr["live"])})
    with pytest.raises(TvmPatchError, match="overlaps"):
        prove_cached_plan(moved)
    from_zero = func.with_body(tvm_ffi.structural_map(func.body, (tirx.Select, lambda e: e.false_value)))
    with pytest.raises(TvmPatchError, match=r"updates layer\d+ in place"):
        prove_cached_plan(from_zero)

    def never(node):  # the column-cache fills' `j > 0` made never true: those columns are then never written
        c = node.condition
        if isinstance(c, tirx.GT) and isinstance(c.a, tirx.Var) and c.a.name == "j":
            return tirx.IfThenElse(tirx.GT(c.a, tirx.const(100, "int32")), node.then_case, node.else_case)
        return node

    stale = func.with_body(tvm_ffi.structural_map(func.body, (tirx.IfThenElse, never)))
    # (refused where it is first read: a per-patch buffer, or the planned output channel buffer they fill)
    with pytest.raises(TvmPatchError, match="no earlier statement of the patch surely wrote|read before it is filled"):
        prove_cached_plan(stale)


def _int8_conv(rng: np.random.Generator, layout: str):
    """A maker of random int8 convs in `layout` (`conv(cin, cout, k, stride, groups, zp_in)`, padding k // 2,
    requantization scales 0.002-0.01: shifts <= -6)."""

    def conv(cin, cout, k, s, groups, zp_in):
        shape = (cout, cin // groups, k, k) if layout == "NCHW" else (k, k, cin // groups, cout)
        if groups > 1 and layout == "NHWC":
            shape = (k, k, cout, 1)
        mults, shifts = zip(*(quantize_multiplier(float(r)) for r in rng.uniform(0.002, 0.01, cout)))
        q = ConvQuant(zp_in, int(rng.integers(-10, 10)), np.array(mults), np.array(shifts), 0, -128, 127)
        return Conv(rng.integers(-127, 128, shape).astype("int8"), rng.integers(-500, 500, cout).astype("int32"),
                    s, k // 2, groups, "none", quant=q)

    return conv


def _blocked_forms_stage(layout: str) -> Stage:
    """An int8 stage with every blocked form of the stage kernels: a 3x3 stride-2 stem over 3 channels (8 outputs:
    rows 4; in NCHW its 27-byte window copied), a depthwise 3x3, 1x1 convs with 6 and 8 outputs (two pixels x 2
    channels), on a 19 x 19 input whose 10 x 10 output 3 x 3 patches do not divide (odd pixel-pair remainders)."""
    conv = _int8_conv(np.random.default_rng(7), layout)
    layers = [conv(3, 8, 3, 2, 1, 5)]
    for cin, cout, k, groups in ((8, 8, 3, 8), (8, 6, 1, 1), (6, 8, 1, 1)):
        layers.append(conv(cin, cout, k, 1, groups, layers[-1].quant.output_zero_point))
    return Stage((1, 3, 19, 19) if layout == "NCHW" else (1, 19, 19, 3), tuple(layers), layout, "int8")


@pytest.mark.parametrize("halo", ["recompute", "recompute-te", "cache"])
@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
def test_blocked_stage_forms_in_c(layout, halo):
    """The stage kernels' register-blocked forms as the C export emits and places them (its micro-kernel calls
    included: built under `extern_requantization`), the calls there and the result equal to the layer-by-layer
    numpy reference bit for bit. Written forms (cache mode and recompute mode's `build_recompute_stage`): two pixels
    x 2 channels for the 1x1 convs and the 3x3 stem too (NHWC: its kernel rows of 3 x 3 bytes; NCHW: the two
    pixels' 27-byte windows copied), the 1x1's pair widened once (`tvmp_widen_px2`; NCHW: `tvmp_widen_px2_planes`
    from the channel planes, no copy), window pairs over the live
    part's run-time extent, the bias as the accumulators' start and the bounded requantization with the output zero
    point (`tvmp_requant_rbz`), barriers between the loop nests. The TE form (`build_stage`, kept for stages whose residual
    add computes two convs that copy windows): rows 4 / 2, the NCHW stem's window copy."""
    stage = _blocked_forms_stage(layout)
    with extern_requantization():
        if halo == "cache":
            func = build_cached_stage(stage, (3, 3))
        elif halo == "recompute":
            func = build_recompute_stage(stage, (3, 3))
        else:
            func = plan_stage_arena(build_stage(stage, (3, 3), in_place=True))[0]
    emitted = emit_c({"stage": func})
    code = emitted.code
    body = code[code.index("void stage("):]
    if halo == "recompute-te":
        assert "tvmp_dot_s8_rows4(" in body
        if layout == "NCHW":  # the stem reads its copied window: one rows call over its 27 bytes padded to 28
            # (codegen/pad_rows.py), the window then widened once
            assert re.search(r"tvmp_dot_(s8|q15)_rows4\([^;]*, 28, \(&", body)
    else:
        caches = [n for n in func.attrs[STAGE_OFFSETS_ATTR]["offsets"] if str(n).endswith(("_rows", "_cols"))]
        assert has_workspace_plan(func) and bool(caches) == (halo == "cache")
        prove_cached_plan(func)
        # the stem's pixel pairs: the two copied windows (NCHW: I, H, W; NHWC: H, W, I, its kernel rows of 9 bytes
        # no whole words) 28 apart, their 27 taps padded to 28 (cache_stage's zeroed tap, codegen/pad_rows.py's
        # zero weights), then widened once for the channel blocks
        assert re.search(r"tvmp_widen_px2\(\(&\(pixel\w*\[0\]\)\), 28, 28, ", body)
        assert re.search(r"tvmp_dot_q15_px2_rows2\([^;]*layer0_weight[^;]*, 28, 28, \(&", body)
        assert int(emitted.functions["stage"].params[1].shape[-1]) == 28  # the C parameter: rows of 28
        # the 1x1 conv over 8 channels: its pixel pair widened once for its channel blocks (widen_kernels); in NCHW
        # straight from the channel planes, no copy widened (its pair window has its own buffer, read by nothing else)
        widen = "tvmp_widen_px2_planes(" if layout == "NCHW" else "tvmp_widen_px2("
        assert widen in body and re.search(r"tvmp_dot_q15_px2_rows2\([^;]*, 8, \(&", body)
        assert layout == "NHWC" or not re.search(r"tvmp_widen_px2\(\(&\(pixel_pair", body)  # (the stem's is above)
        # the bias as the accumulators' start, the output zero point in the rounding addend (tvmp_requant_rbz)
        assert "tvmp_window2_s8(" in body and "tvmp_requant_rbz(" in body and "tvmp_barrier();" in body
        assert re.search(r"acc\w*\[[^]]*\] = layer\d_bias\[", body)
    x = np.random.default_rng(2).integers(-128, 128, stage.input_shape).astype("int8")
    assert np.array_equal(run_c(func, stage, x), run_numpy(stage, x))


@pytest.mark.parametrize("halo", ["recompute", "cache"])
def test_odd_column_in_pairs_down(halo):
    """An NCHW 1x1 conv of 16 blocks of 2 channels (8 -> 32) over regions of odd width and height: its rows in pixel
    pairs, then its odd last column either in pairs down it (`block_plan.pairs_down`: the two pixels, a row apart,
    copied into `pixel_down` and widened; the last row's pixel alone) or each row's last pixel alone, both forms in
    the stage's TIR under its flag (`stage_forms`), the default by halo mode; TVM runs the default, the C export the
    form chosen, each bit for bit the numpy reference. A 1x1 of fewer blocks has no such choice."""
    conv = _int8_conv(np.random.default_rng(11), "NCHW")
    layers = [conv(3, 8, 3, 1, 1, 4)]
    layers.append(conv(8, 32, 1, 1, 1, layers[-1].quant.output_zero_point))
    layers.append(conv(32, 8, 1, 1, 1, layers[-1].quant.output_zero_point))
    stage = Stage((1, 3, 15, 15), tuple(layers), "NCHW", "int8")
    assert [pairs_down(stage, {1: 2, 2: 2}, v) for v in (1, 2)] == [True, False]
    build = build_cached_stage if halo == "cache" else build_recompute_stage
    x = np.random.default_rng(3).integers(-128, 128, stage.input_shape).astype("int8")
    want = run_numpy(stage, x)
    assert np.array_equal(run_tvm(build(stage, (3, 3)), stage, x), want)  # TVM's requantization: runs on the host
    with extern_requantization():
        func = build(stage, (3, 3))
    assert form_default(func) is (halo == "cache") is pairs_down_default(halo == "cache", "NCHW")
    for down in (True, False):
        formed = with_form(func, down)
        assert form_default(formed) is None and with_form(formed, not down) is formed
        body = emit_c({"stage": formed}).code
        body = body[body.index("void stage("):]
        assert PAIRS_DOWN not in body
        # the 8 -> 32 layer: its row pairs from the channel planes; down its odd column, pairs of copied pixels
        assert re.search(r"tvmp_widen_px2_planes\(\(&\(layer0\[", body)
        assert bool(re.search(r"tvmp_widen_px2\(\(&\(pixel_down\w*\[0\]\)\), \w+, 8, ", body)) is down
        assert ("pixel_down" in body) is down
        assert np.array_equal(run_c(formed, stage, x), want)
    # no conv of 16 blocks: no flag, the function as written
    small = Stage((1, 3, 15, 15), tuple(layers[:1]) + (conv(8, 8, 1, 1, 1, layers[0].quant.output_zero_point),),
                  "NCHW", "int8")
    with extern_requantization():
        plain = build_cached_stage(small, (3, 3))
    assert form_default(plain) is None and with_form(plain, True) is plain


@pytest.mark.parametrize("halo", ["recompute", "cache"])
def test_odd_column_in_pairs_down_nhwc(halo):
    """NHWC: every 1x1 pair conv can take its odd last column in pairs down it, its dot reading the two pixels where
    they are, a row apart (the widening's pixel stride a constant row of the region, no copy); on by default in
    both modes, each form bit for bit the numpy reference."""
    conv = _int8_conv(np.random.default_rng(11), "NHWC")
    layers = [conv(3, 8, 3, 1, 1, 4)]
    layers.append(conv(8, 32, 1, 1, 1, layers[-1].quant.output_zero_point))
    layers.append(conv(32, 8, 1, 1, 1, layers[-1].quant.output_zero_point))
    stage = Stage((1, 15, 15, 3), tuple(layers), "NHWC", "int8")
    assert [pairs_down(stage, {1: 2, 2: 2}, v) for v in (0, 1, 2)] == [False, True, True]
    build = build_cached_stage if halo == "cache" else build_recompute_stage
    x = np.random.default_rng(3).integers(-128, 128, stage.input_shape).astype("int8")
    want = run_numpy(stage, x)
    with extern_requantization():
        func = build(stage, (3, 3))
    assert form_default(func) is True is pairs_down_default(halo == "cache", "NHWC")
    for down in (True, False):
        formed = with_form(func, down)
        body = emit_c({"stage": formed}).code
        body = body[body.index("void stage("):]
        for v, c in ((0, 8), (1, 32)):  # the inputs of the two 1x1 layers, c channels a pixel
            strides = re.findall(rf"tvmp_widen_px2\(\(&\(layer{v}\[[^;]*?\]\)\), (\d+), {c}, ", body)
            assert bool(strides) is down and all(int(t) % c == 0 and int(t) > c for t in strides)
        assert "pixel_down" not in body
        assert np.array_equal(run_c(formed, stage, x), want)


@pytest.mark.parametrize("halo", ["recompute", "cache"])
def test_word_row_stem_windows_copied(halo):
    """An NHWC stem over one channel whose kernel rows are one word each (4 x 4 over 1 channel, kws's 10 x 4 in
    small): the stage copies its pixels' 16-byte windows and runs one dot call over each (round 20: a call per
    kernel row before), bit-exact with the numpy reference."""
    conv = _int8_conv(np.random.default_rng(5), "NHWC")
    stem = conv(1, 8, 4, 2, 1, 3)
    stage = Stage((1, 18, 18, 1), (stem, conv(8, 8, 1, 1, 1, stem.quant.output_zero_point)), "NHWC", "int8")
    with extern_requantization():
        func = build_cached_stage(stage, (3, 3)) if halo == "cache" else build_recompute_stage(stage, (3, 3))
    body = emit_c({"stage": func}).code
    body = body[body.index("void stage("):]
    # (the pixel stride 16 a constant or a common subexpression's variable)
    assert re.search(r"tvmp_widen_px2\(\(&\(pixel\w*\[0\]\)\), (16|cse_\w+), 16, ", body)
    assert re.search(r"tvmp_dot_q15_px2_rows2\([^;]*layer0_weight[^;]*, (16|cse_\w+), 16, \(&", body)
    assert not re.search(r"layer0_weight[^;]*, 4, \(&", body)  # no call over one 4-byte kernel row
    x = np.random.default_rng(3).integers(-128, 128, stage.input_shape).astype("int8")
    assert np.array_equal(run_c(func, stage, x), run_numpy(stage, x))


def _residual_stage() -> Stage:
    """resnet8's stage in small (NHWC int8): a 3x3 stem, a block whose second 3x3 conv is fused into its add over
    the stem's output (written over its skip), a stride-2 block whose 3x3 conv and 1x1 stride-2 projection are
    both fused into the last add; 10 x 10 outputs of 3 x 3 patches (odd pixel-pair remainders)."""
    conv = _int8_conv(np.random.default_rng(11), "NHWC")
    m, s = quantize_multiplier(0.5)
    mo, so = quantize_multiplier(1.0 / (1 << 20) / 0.6)

    def add(other, a, b):
        zps = (a.quant.output_zero_point, b.quant.output_zero_point)
        return Add(other, quant=AddQuant(zps, (m, m), (s, s), 3, mo, so))

    stem = conv(3, 8, 3, 1, 1, 5)
    c1 = conv(8, 8, 3, 1, 1, stem.quant.output_zero_point)
    c2 = conv(8, 8, 3, 1, 1, c1.quant.output_zero_point)
    a1 = add(0, c2, stem)
    d1 = conv(8, 16, 3, 2, 1, 3)
    d2 = conv(16, 16, 3, 1, 1, d1.quant.output_zero_point)
    proj = replace(conv(8, 16, 1, 2, 1, 3), input=3)
    a2 = add(5, proj, d2)
    return Stage((1, 20, 20, 3), (stem, c1, c2, a1, d1, d2, proj, a2), "NHWC", "int8")


@pytest.mark.parametrize("halo", ["recompute", "cache"])
def test_convs_inside_residual_adds_blocked(halo):
    """A dense conv computed inside its residual add (`schedule.skip_accumulations`: resnet8's) is register
    blocked there in the written nest, two pixels x 2 channels (`blocked_convs.add_block`): recompute mode keeps the
    written nest (no TE form), the add over its skip is proven in place on the TIR (mixed-radix stores, the pair
    loop's and the odd last pixel's stores disjoint), and the C run is bit-exact."""
    stage = _residual_stage()
    plan = plan_patches(stage, (3, 3))
    assert set(skip_accumulations(stage, plan)) == {2, 5, 6}
    with extern_requantization():
        func = build_cached_stage(stage, (3, 3)) if halo == "cache" else build_recompute_stage(stage, (3, 3))
    assert has_workspace_plan(func)
    proof = prove_cached_plan(func)
    assert proof.updates  # the first add, over its skip
    code = emit_c({"stage": func}).code
    body = code[code.index("void stage("):]
    # two pixels for all six dense convs, the three inside the adds too (their outputs in the C locals fused_rows*)
    assert len(re.findall(r"tvmp_dot_(?:s8|q15)_px2_rows2\(", body)) == 6 and "fused_rows1" in body

    def updates_layer0(stmt) -> bool:  # the add's (the stem's stores there too, but reads the input)
        found = set()
        tvm_ffi.structural_walk(stmt, [(tirx.BufferStore, lambda st: found.add(("st", st.buffer.name)) or
                                        tvm_ffi.WalkResult.ADVANCE),
                                       (TensorLoad, lambda ld: found.add(("ld", ld.source.name)) or
                                        tvm_ffi.WalkResult.ADVANCE)], order="pre")
        return {("st", "layer0"), ("ld", "layer0")} <= found

    def always(node):  # the add's odd last pixel computed whatever the width: then it repeats the pair loop's last
        c = node.condition
        if isinstance(c, tirx.EQ) and isinstance(c.a, tirx.FloorMod) and updates_layer0(node.then_case):
            return tirx.IfThenElse(tirx.const(True, "bool"), node.then_case, node.else_case)
        return node

    twice = func.with_body(tvm_ffi.structural_map(func.body, (tirx.IfThenElse, always)))
    with pytest.raises(TvmPatchError, match="updates layer0 in place"):
        prove_cached_plan(twice)
    x = np.random.default_rng(5).integers(-128, 128, stage.input_shape).astype("int8")
    assert np.array_equal(run_c(func, stage, x), run_numpy(stage, x))


@settings(max_examples=16, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stages())
def test_recompute_stage_in_c_is_exact(case):
    """Random stages in recompute mode as the C export builds them (`build_recompute_stage` under
    `extern_requantization`: the written nest without caches, its in-place steps proven on its TIR, or the TE form
    for a stage with a conv inside its residual add, placed by `plan_stage_arena`), buffers at their planned
    offsets: equal to the layer-by-layer numpy reference bit for bit."""
    stage, x, patches = case
    try:
        plan_patches(stage, patches)
    except StageError:
        return
    with extern_requantization():
        func = build_recompute_stage(stage, patches)
    if has_workspace_plan(func):
        prove_cached_plan(func)
    else:
        func = plan_stage_arena(func)[0]
    assert np.array_equal(run_c(func, stage, x), run_numpy(stage, x))


def test_recompute_stage_odd_last_column_exact():
    """A stage hypothesis found: an NCHW 3x3 stem over a 5 x 5 input in pixel pairs, a 5x5 stride-2 depthwise last,
    1 x 2 patches. The stem's odd last column, indexed as built (first column + run-time width - 1), made TVM's
    buffer compaction divide by zero; simplified over the patch index's range it lowers, and is exact."""
    conv = _int8_conv(np.random.default_rng(3), "NCHW")
    layers = [conv(1, 2, 3, 1, 1, 3)]
    layers.append(conv(2, 2, 1, 1, 2, layers[-1].quant.output_zero_point))
    layers.append(conv(2, 2, 5, 2, 2, layers[-1].quant.output_zero_point))
    stage = Stage((1, 1, 5, 5), tuple(layers), "NCHW", "int8")
    with extern_requantization():
        func = build_recompute_stage(stage, (1, 2))
    if has_workspace_plan(func):
        prove_cached_plan(func)
    else:
        func = plan_stage_arena(func)[0]
    x = np.random.default_rng(4).integers(-128, 128, stage.input_shape).astype("int8")
    assert np.array_equal(run_c(func, stage, x), run_numpy(stage, x))


def test_cached_stage_fused_add_over_its_input_exact():
    """A stage hypothesis found (cache mode, NHWC, 1 x 2 patches over a 5 x 11 input): a 3x3 conv whose residual add
    over the stage's input computes it in pixel pairs, then a 1x1 conv and a 1x1 stride-2 conv. The pair loop read
    the input at column j * 6 + ... - (j * 6 - 1) (the patch index left uncancelled), and TVM's buffer compaction
    divided by zero estimating that region; the positions simplified, it lowers and is exact."""
    conv = _int8_conv(np.random.default_rng(5), "NHWC")
    m, s = quantize_multiplier(0.5)
    mo, so = quantize_multiplier(1.0 / (1 << 20) / 0.6)
    c0 = conv(2, 2, 3, 1, 1, 3)
    a1 = Add(-1, quant=AddQuant((c0.quant.output_zero_point, 3), (m, m), (s, s), 0, mo, so))
    c2 = conv(2, 1, 1, 1, 1, 0)
    c3 = conv(1, 1, 1, 2, 1, c2.quant.output_zero_point)
    stage = Stage((1, 5, 11, 2), (c0, a1, c2, c3), "NHWC", "int8")
    with extern_requantization():
        func = build_cached_stage(stage, (1, 2))
    prove_cached_plan(func)
    x = np.random.default_rng(6).integers(-128, 128, stage.input_shape).astype("int8")
    assert np.array_equal(run_c(func, stage, x), run_numpy(stage, x))


@pytest.mark.parametrize("reals, zps, out_real, out_zp, calls", [
    # input scales 0.5 (shift 0: the narrow call) and 0.3 (shift -1: rounding add); the zero point in the output's
    ((0.5, 0.3), (3, -7), 1.0 / (1 << 20) / 0.6, 3, {"tvmp_requant_rs_narrow", "tvmp_requant_rb", "tvmp_requant_rbz"}),
    # extreme zero points, an output right shift of 24 with zero point 127: no room for it in the addend (rb + zp)
    ((0.2, 0.2), (-128, 127), 1.5 / (1 << 25), 127, {"tvmp_requant_rb"}),
    # an input scale above 1 (a left shift, never from TFLite's converter): the general call
    ((1.5, 0.25), (0, 0), 1.0 / (1 << 20), -5, {"tvmp_requant", "tvmp_requant_rb", "tvmp_requant_rbz"}),
])
@pytest.mark.parametrize("halo", ["recompute", "cache"])
def test_residual_add_requantization_calls(halo, reals, zps, out_real, out_zp, calls):
    """The stage's residual add (`element_values.add_steps`) requantizes with the cheapest call its constants' bounds
    allow (`fixedpoint.mbqm_proven`: an operand's |(value - zero point) 2^20| <= 255 2^20, each rescaled one at most
    1 more, their sum), exactly the calls expected, and the C run equals the numpy reference bit for bit; the add
    over a conv fused into it and over the stage's input, on inputs spanning int8."""
    conv = _int8_conv(np.random.default_rng(5), "NHWC")
    (m1, s1), (m2, s2) = (quantize_multiplier(r) for r in reals)
    mo, so = quantize_multiplier(out_real)
    c0 = conv(4, 4, 3, 1, 1, zps[1])
    c0 = replace(c0, quant=replace(c0.quant, output_zero_point=zps[0]))
    a1 = Add(-1, quant=AddQuant(zps, (m1, m2), (s1, s2), out_zp, mo, so))
    stage = Stage((1, 9, 9, 4), (c0, a1), "NHWC", "int8")
    with extern_requantization():
        func = build_cached_stage(stage, (2, 2)) if halo == "cache" else build_recompute_stage(stage, (2, 2))
    body = emit_c({"stage": func}).code
    body = body[body.index("void stage("):]
    conv_call = "tvmp_requant_rbz" if zero_point_requantization(stage, 0) else "tvmp_requant_rb"
    assert bounded_requantization(stage, 0)
    assert set(re.findall(r"\b(tvmp_requant\w*)\(", body)) == calls | {conv_call}
    rng = np.random.default_rng(6)
    for _ in range(3):
        x = rng.integers(-128, 128, stage.input_shape).astype("int8")
        x.flat[:2] = (-128, 127)
        assert np.array_equal(run_c(func, stage, x), run_numpy(stage, x))


def _output_copy_stage(layout: str) -> Stage:
    """A 1x1 conv, a 5x5 stride-2 depthwise whose 4 x 4 output region per channel (16 bytes, a C local) is smaller
    than its 11 x 11 input region, a 1x1 conv: the depthwise computes each channel from its input region into the
    one-channel buffer, then copies it over (`cache_plan.copies_output`)."""
    conv = _int8_conv(np.random.default_rng(11), layout)
    layers = [conv(3, 8, 1, 1, 1, 3)]
    layers.append(conv(8, 8, 5, 2, 8, layers[-1].quant.output_zero_point))
    layers.append(conv(8, 8, 1, 1, 1, layers[-1].quant.output_zero_point))
    return Stage((1, 3, 24, 24) if layout == "NCHW" else (1, 24, 24, 3), tuple(layers), layout, "int8")


def _check_output_copy(func, stage: Stage, seed: int, refusal: str) -> None:
    """The output-copy form's checks: the proof takes layer1 over layer0, the C run is bit-exact, and the same nest
    with the copy moved before the computation is refused with ``refusal``."""
    proof = prove_cached_plan(func)
    assert [(s, d) for s, d, _ in proof.depthwise] == [("layer0", "layer1")]
    x = np.random.default_rng(seed).integers(-128, 128, stage.input_shape).astype("int8")
    assert np.array_equal(run_c(func, stage, x), run_numpy(stage, x))
    with pytest.raises(TvmPatchError, match=refusal):
        prove_cached_plan(_channel_copy_first(func))


def _channel_copy_first(func):
    """`func` with each depthwise channel loop's last statement (the output-copy form's copy over the input) moved
    first: the copy before the channel is computed."""

    def copy_first(loop):
        if loop.loop_var.name != "ch" or not isinstance(loop.body, tirx.SeqStmt):
            return loop
        seq = list(loop.body.seq)
        return tirx.For(loop.loop_var, loop.min, loop.extent, loop.kind, tirx.SeqStmt([seq[-1], *seq[:-1]]))

    return func.with_body(tvm_ffi.structural_map(func.body, (tirx.For, copy_first)))


@pytest.mark.parametrize("halo", ["recompute", "cache"])
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_depthwise_output_copied_over_its_input(layout, halo):
    """The output-copy form of an in-place depthwise layer: its output shares its input's offset, the proof takes
    it (`inplace_cache._prove_depthwise_out`), the C run with the buffers at their planned offsets is bit-exact;
    the same nest with the copy moved before the computation (writing over the input channel it still reads) is
    refused."""
    stage = _output_copy_stage(layout)
    func = build_cached_stage(stage, (3, 3), caches=halo == "cache")
    offs = {str(k): int(v) for k, v in func.attrs[STAGE_OFFSETS_ATTR]["offsets"].items()}
    assert offs["layer1"] == offs["layer0"]  # written over its input
    assert "layer1_chan" in emit_c({"stage": func}).code  # the output channel's buffer (not layer0_chan)
    _check_output_copy(func, stage, 5, "no in-place step is proven")


@pytest.mark.parametrize("stride", [1, 2])
def test_nhwc_cache_mode_copies_a_stride_1_input_channel_first(stride):
    """In cache mode an NHWC in-place stride-1 depthwise layer copies its input channel into a contiguous buffer
    first (`cache_plan.copies_output(..., caches=True)`: its windows then pair over adjacent bytes); a stride-2
    layer keeps the output-copy form (its input channel is four times its output's: copying it cost vww's deeper
    cache stage 512,000 instructions). The cache-mode stage is proven and bit-exact in C."""
    conv = _int8_conv(np.random.default_rng(17), "NHWC")
    layers = [conv(3, 8, 1, 1, 1, 3)]
    layers.append(conv(8, 8, 5, stride, 8, layers[-1].quant.output_zero_point))
    layers.append(conv(8, 8, 1, 1, 1, layers[-1].quant.output_zero_point))
    stage = Stage((1, 24, 24, 3), tuple(layers), "NHWC", "int8")
    cached = build_cached_stage(stage, (3, 3), caches=True)
    offs = {str(k) for k in cached.attrs[STAGE_OFFSETS_ATTR]["offsets"].keys()}
    code = emit_c({"stage": cached}).code
    if stride == 1:
        assert "layer1_in_chan" in code and "layer1_chan" not in code
    else:
        assert "layer1_chan" in code and "layer1_in_chan" not in code and "layer1_in_chan" not in offs
    prove_cached_plan(cached)
    x = np.random.default_rng(4).integers(-128, 128, stage.input_shape).astype("int8")
    assert np.array_equal(run_c(cached, stage, x), run_numpy(stage, x))


@pytest.mark.parametrize("halo", ["recompute", "cache"])
def test_depthwise_output_channel_buffer_planned(halo, monkeypatch):
    """The output-copy form where the output channel's buffer is no C local (NHWC stride 2, 100 bytes against its
    input channel's 441: vww's stride-2 depthwise): the buffer is planned in the workspace, sharing bytes with
    buffers of other steps; the proof shows its ring and live part fill it before the copy over the input reads it
    (`inplace_cache._filled_by_stores`), the C run over a garbage workspace is bit-exact; the copy moved before
    the computation is refused. (The export writes such a layer at its input's top-left corner instead,
    `cache_plan.writes_top_left`: turned off here.)"""
    monkeypatch.setattr(cache_stage, "writes_top_left", lambda *a, **k: False)
    conv = _int8_conv(np.random.default_rng(13), "NHWC")
    layers = [conv(3, 8, 1, 1, 1, 3)]
    layers.append(conv(8, 8, 3, 2, 8, layers[-1].quant.output_zero_point))
    layers.append(conv(8, 8, 1, 1, 1, layers[-1].quant.output_zero_point))
    stage = Stage((1, 40, 40, 3), tuple(layers), "NHWC", "int8")
    func = build_cached_stage(stage, (2, 2), caches=halo == "cache")
    offs = {str(k): int(v) for k, v in func.attrs[STAGE_OFFSETS_ATTR]["offsets"].items()}
    assert offs["layer1"] == offs["layer0"] and "layer1_chan" in offs  # over its input; its channel buffer planned
    plan = plan_patches(stage, (2, 2))
    chan = int(np.prod(plan.region_shape(1)))
    assert chan > 64
    sizes = {n: int(np.prod(plan.region_shape(v))) * stage.value_shape(v)[0]
             for v, n in ((-1, "input_patch"), (0, "layer0"), (2, "layer2"))}
    assert any(offs[n] < offs["layer1_chan"] + chan and offs["layer1_chan"] < offs[n] + size
               for n, size in sizes.items() if n in offs)  # it shares bytes: the fill proof is needed
    _check_output_copy(func, stage, 6, "layer1_chan shares bytes and is read before it is filled")


class _ShiftedHomes(dict):
    """`cache_plan.homes`' result, every home set after it (a top-left depthwise layer's) one row and column on."""

    def __setitem__(self, key, value):
        super().__setitem__(key, (value[0], value[1] + 1, value[2] + 1))


@pytest.mark.parametrize("halo", ["recompute", "cache"])
@pytest.mark.parametrize("layout, stride", [("NHWC", 1), ("NHWC", 2), ("NCHW", 1), ("NCHW", 2)])
def test_depthwise_written_at_its_inputs_top_left(layout, stride, halo, monkeypatch):
    """An in-place depthwise layer whose output channel is no C local writes output (r, q) of channel c over input
    (r, q) of channel c (`cache_plan.writes_top_left`): no one-channel buffer, its region in its input's (a strided
    one in recompute mode in a compact buffer of its own at its input's offset, `cache_plan.over_input`); the proof
    takes it (`inplace_cache._prove_window_update`: per patch, every element's last load no later than the store
    over it) and the C run is bit-exact; the same nest written one row and column further on (a stride-1 window
    then reads an element already written) is refused. Cache mode's NHWC stride-1 layer keeps its input channel's
    copy (its windows pair by words there)."""
    conv = _int8_conv(np.random.default_rng(13), layout)
    layers = [conv(3, 8, 1, 1, 1, 3)]
    layers.append(conv(8, 8, 3, stride, 8, layers[-1].quant.output_zero_point))
    layers.append(conv(8, 8, 1, 1, 1, layers[-1].quant.output_zero_point))
    stage = Stage((1, 3, 40, 40) if layout == "NCHW" else (1, 40, 40, 3), tuple(layers), layout, "int8")
    caches = halo == "cache"
    func = build_cached_stage(stage, (2, 2), caches=caches)
    offs = {str(k) for k in func.attrs[STAGE_OFFSETS_ATTR]["offsets"]}
    top_left = writes_top_left(stage, plan_patches(stage, (2, 2)), 1, caches)
    assert top_left == (not (layout == "NHWC" and stride == 1 and caches))
    proof = prove_cached_plan(func)
    if top_left:  # strided in recompute mode: a compact buffer of its own over its input's (`over_input`)
        compact = stride == 2 and not caches
        assert ("layer1" in offs) == compact and not offs & {"layer1_chan", "layer1_in_chan"}
        assert [n for n, _ in proof.updates] == ([] if compact else ["layer0"])
        assert [(s, d) for s, d, _ in proof.over if d == "layer1"] == ([("layer0", "layer1")] if compact else [])
    else:
        assert "layer1_in_chan" in offs
    x = np.random.default_rng(8).integers(-128, 128, stage.input_shape).astype("int8")
    assert np.array_equal(run_c(func, stage, x), run_numpy(stage, x))
    if top_left and stride == 1:
        real = cache_stage.homes
        monkeypatch.setattr(cache_stage, "homes", lambda *a: _ShiftedHomes(real(*a)))
        with pytest.raises(TvmPatchError, match="updates layer0 in place"):
            prove_cached_plan(build_cached_stage(stage, (2, 2), caches=caches))


def _over_input_stage(layout: str) -> Stage:
    """An int8 stage whose 1x1 expansion's input dies there, a 3x3 stride-2 depthwise written at its input's top-left
    corner, a 1x1 projection over it and a 3x3 conv last, on a 40 x 40 input."""
    conv = _int8_conv(np.random.default_rng(21), layout)
    layers = [conv(3, 8, 3, 1, 1, 3)]
    for cin, cout, k, s, groups in ((8, 24, 1, 1, 1), (24, 24, 3, 2, 24), (24, 8, 1, 1, 1), (8, 8, 3, 1, 1)):
        layers.append(conv(cin, cout, k, s, groups, layers[-1].quant.output_zero_point))
    return Stage((1, 3, 40, 40) if layout == "NCHW" else (1, 40, 40, 3), tuple(layers), layout, "int8")


@pytest.mark.parametrize("patches", [(2, 2), (3, 3)])
def test_layers_written_over_their_inputs(patches, monkeypatch):
    """Recompute mode's written nest gives a layer its own buffer at its input's offset where that is safe
    (`cache_plan.over_input`): the strided top-left depthwise layer a compact one (it was held in its input's
    whole region), the NCHW 1x1 convs theirs over their inputs, pixel by pixel, kept where the stage's workspace
    falls. The proof takes them (`inplace_cache._prove_over_input`: per patch, every shared element last read
    before it is first written), the workspace is smaller than without them, and the C run is bit-exact. An NHWC
    1x1 expansion forced over its input (it reads a pixel's channels while writing wider pixels over later ones) is
    refused."""
    stage = _over_input_stage("NCHW")
    func = build_recompute_stage(stage, patches)
    offs = {str(k): int(v) for k, v in func.attrs[STAGE_OFFSETS_ATTR]["offsets"].items()}
    assert offs["layer2"] == offs["layer1"]  # the depthwise's compact buffer over its input
    assert offs["layer1"] == offs["layer0"] or offs["layer3"] == offs["layer2"]  # a 1x1 conv over its input
    over = {(s, d) for s, d, _ in prove_cached_plan(func).over}
    assert ("layer1", "layer2") in over and over & {("layer0", "layer1"), ("layer2", "layer3")}
    x = np.random.default_rng(4).integers(-128, 128, stage.input_shape).astype("int8")
    assert np.array_equal(run_c(func, stage, x), run_numpy(stage, x))
    cached = build_cached_stage(stage, patches)  # (its 1x1 convs with caches keep their own place)
    prove_cached_plan(cached)
    assert np.array_equal(run_c(cached, stage, x), run_numpy(stage, x))
    monkeypatch.setattr(cache_stage, "over_input", lambda *a: False)
    plain = build_recompute_stage(stage, patches)
    assert int(func.attrs[STAGE_OFFSETS_ATTR]["bytes"]) < int(plain.attrs[STAGE_OFFSETS_ATTR]["bytes"])

    nhwc = _over_input_stage("NHWC")
    monkeypatch.setattr(cache_stage, "over_input", lambda stage, plan, v, *a: v == 1)
    forced = build_recompute_stage(nhwc, patches)
    offs = {str(k): int(v) for k, v in forced.attrs[STAGE_OFFSETS_ATTR]["offsets"].items()}
    assert offs["layer1"] == offs["layer0"]
    with pytest.raises(TvmPatchError, match="overlaps layer0 and layer1"):
        prove_cached_plan(forced)


def test_bounded_requantization_facts():
    """`te_stage.bounded_requantization` holds only where its facts do (every shift in [-31, -1], every multiplier
    >= 0, each channel's |bias| + 128 x sum|w| within BOUNDED_ACC_MAX), and where it holds `mbqm_bounded`'s C kernel
    equals TFLite's MultiplyByQuantizedMultiplier: on the host, 400,000 bounded accumulators with every right shift
    (small multipliers too, whose high word rounds to 0: the kernel takes the rounding's sign from the accumulator)."""
    stage = _output_copy_stage("NHWC")
    assert all(bounded_requantization(stage, i) for i in range(3))
    layers = list(stage.layers)
    q = layers[2].quant
    layers[2] = replace(layers[2], quant=replace(q, shift=np.where(np.arange(8) == 3, 0, q.shift)))
    assert not bounded_requantization(replace(stage, layers=tuple(layers)), 2)  # one channel's shift is 0
    layers = list(stage.layers)
    layers[2] = replace(layers[2], bias=np.full(8, BOUNDED_ACC_MAX - 10, dtype="int64"))
    assert not bounded_requantization(replace(stage, layers=tuple(layers)), 2)  # the bound is exceeded
    layers = list(stage.layers)
    layers[2] = replace(layers[2], quant=replace(q, multiplier=np.where(np.arange(8) == 5, -(2**30), q.multiplier)))
    assert not bounded_requantization(replace(stage, layers=tuple(layers)), 2)  # one channel's multiplier < 0
    rng = np.random.default_rng(3)
    n = 400_000
    acc = rng.integers(-BOUNDED_ACC_MAX, BOUNDED_ACC_MAX + 1, n, dtype=np.int64)
    acc[::2] >>= rng.integers(0, 30, n // 2)
    mult = rng.integers(2**30, 2**31, n, dtype=np.int64)
    mult[::7] = rng.integers(0, 2**31, len(mult[::7]))
    mult[3::7] = rng.integers(0, 2**12, len(mult[3::7]))
    shift = rng.integers(-31, 0, n, dtype=np.int64)
    edges = np.array([0, 1, -1, -2, BOUNDED_ACC_MAX, -BOUNDED_ACC_MAX, 2**29], dtype=np.int64)
    ea, em, es = np.meshgrid(edges, np.array([2**31 - 1, 2**30, 1, 0]), np.arange(-31, 0), indexing="ij")
    acc, mult, shift = (np.concatenate([a, b.ravel()]).astype(np.int32) for a, b in ((acc, ea), (mult, em), (shift, es)))
    with tempfile.TemporaryDirectory(prefix="tvmp_rb_") as tmp:
        c, so = Path(tmp) / "rb.c", Path(tmp) / "rb.so"
        c.write_text(f'#include "{MICRO_KERNELS}"\n'
                     "void rb(const int32_t *a, const int32_t *m, const int32_t *s, int32_t *o, int n) {\n"
                     "  for (int i = 0; i < n; i++) o[i] = tvmp_requant_rb(a[i], m[i], s[i]);\n}\n")
        subprocess.run(["gcc", "-O2", "-Wall", "-Werror", "-std=c99", "-shared", "-fPIC", str(c), "-o", str(so)],
                       check=True, timeout=120)
        out = np.empty_like(acc)
        ptr = ctypes.POINTER(ctypes.c_int32)
        ctypes.CDLL(str(so)).rb(acc.ctypes.data_as(ptr), mult.ctypes.data_as(ptr), shift.ctypes.data_as(ptr),
                                out.ctypes.data_as(ptr), len(acc))
    np.testing.assert_array_equal(out, multiply_by_quantized_multiplier_ref(acc, mult, shift))


def _inverted_residual_stage(expand: int) -> Stage:
    """An NCHW int8 stage with an inverted residual block (MobileNetV2's): a 3x3 stride-2 stem over 3 channels,
    a 1x1 expansion 8 -> ``expand``, a 3x3 depthwise layer, the 1x1 projection ``expand`` -> 8 added to the stem's
    output, then a 1x1 conv; on a 17 x 17 input (9 x 9 outputs: 3 x 3 patches, odd pixel-pair remainders)."""
    conv = _int8_conv(np.random.default_rng(11), "NCHW")
    layers = [conv(3, 8, 3, 2, 1, 5)]
    for cin, cout, k, groups in ((8, expand, 1, 1), (expand, expand, 3, expand), (expand, 8, 1, 1)):
        layers.append(conv(cin, cout, k, 1, groups, layers[-1].quant.output_zero_point))
    m, s = quantize_multiplier(0.5)
    mo, so = quantize_multiplier(1.0 / (1 << 20) / 0.6)
    zps = (layers[3].quant.output_zero_point, layers[0].quant.output_zero_point)
    layers.append(Add(0, quant=AddQuant(zps, (m, m), (s, s), -3, mo, so)))
    layers.append(conv(8, 8, 1, 1, 1, -3))
    return Stage((1, 3, 17, 17), tuple(layers), "NCHW", "int8")


@pytest.mark.parametrize("expand", [16, 80, 160])
@pytest.mark.parametrize("halo", ["recompute", "cache"])
def test_inverted_residual_projection_blocked_in_its_add(halo, expand):
    """NCHW: an inverted residual block's projection, computed inside its add (`skip_accumulations`), copies its
    pixels' channels into `pixel` (`window_bytes`: an int8 1x1 conv's up to `PIXEL_MAX_BYTES`, two pixels a call up
    to 128 channels) as any NCHW 1x1 conv does; as the add's only conv it is register blocked there
    (`block_plan.blocked_adds`), so recompute mode keeps the written nest (`build_recompute_stage`: until session 41
    such a stage fell back to the TE form, whose scalar one-element accumulators cost mcunet-in3's 4x4 build 588.8 M
    instructions on the M7 against 277.2 M now), its reduction a dot call on the weights; the C run equal to the
    numpy reference bit for bit."""
    stage = _inverted_residual_stage(expand)
    fused = skip_accumulations(stage, plan_patches(stage, (3, 3)))
    assert set(fused) == {3} and window_bytes(stage, 3) == expand and blocked_adds(stage, fused) == {4: [3]}
    with extern_requantization():
        func = build_cached_stage(stage, (3, 3)) if halo == "cache" else build_recompute_stage(stage, (3, 3))
    assert has_workspace_plan(func)  # the written nest (the TE form's plan is made by plan_stage_arena)
    prove_cached_plan(func)
    body = emit_c({"stage": func}).code
    body = body[body.index("void stage("):]
    assert re.search(r"tvmp_dot_\w+\([^;]*layer3_weight", body)
    assert "layer3_acc" not in body  # not the TE form's accumulator (one element, scalar MACs)
    rng = np.random.default_rng(12)
    for _ in range(2):
        x = rng.integers(-128, 128, stage.input_shape).astype("int8")
        assert np.array_equal(run_c(func, stage, x), run_numpy(stage, x))


def _depthwise_rows_stage(k: int, size: int) -> Stage:
    """An NCHW int8 stage whose depthwise ``k`` x ``k`` layer (stride 1) has contiguous rows of ``k`` taps: a 3x3
    stride-2 stem over 3 channels, a 1x1 expansion 8 -> 16, the depthwise layer, a 3x3 depthwise layer (so that the
    first one's output regions reach past the image: its rows clipped to the live part), a 1x1 projection 16 -> 8."""
    conv = _int8_conv(np.random.default_rng(k), "NCHW")
    layers = [conv(3, 8, 3, 2, 1, 5)]
    for cin, cout, kk, groups in ((8, 16, 1, 1), (16, 16, k, 16), (16, 16, 3, 16), (16, 8, 1, 1)):
        layers.append(conv(cin, cout, kk, 1, groups, layers[-1].quant.output_zero_point))
    return Stage((1, 3, size, size), tuple(layers), "NCHW", "int8")


@pytest.mark.parametrize("size", [11, 17, 29, 35])
@pytest.mark.parametrize("k", [5, 7])
@pytest.mark.parametrize("halo", ["recompute", "cache"])
def test_stage_depthwise_rows_four_windows_a_call(halo, k, size):
    """NCHW 5x5 and 7x7 depthwise rows in a patch stage, whose output rows are as wide as the patch's region (known
    only at run time), run four windows a call (`window_blocks`: `tvmp_window4_s8`, as the per-layer kernels do;
    until session 42 two). Where every row has at least four outputs (`_min_value`), the last `E % 4` are the last
    four windows of the row, only those outputs stored (the others' windows may read what the row's outputs
    overwrote in place); else they are a pair and one alone, each under its test. Recomputing the halos over 3 x 3
    patches of 6, 9, 15 and 18 outputs, the rows are 3-4, 4-5, 6-7 and 7-8 wide: every remainder, and the pair and
    the single for the first; caching them, the rows are only the new columns, 1-4, 2-5, 4-7 and 5-8 wide. The C
    run equal to numpy bit for bit."""
    stage = _depthwise_rows_stage(k, size)
    with extern_requantization():
        func = build_cached_stage(stage, (3, 3)) if halo == "cache" else build_recompute_stage(stage, (3, 3))
    body = emit_c({"stage": func}).code
    body = body[body.index("void stage("):]
    calls = re.findall(r"(tvmp_window\d?_s8w?)\([^;]*layer2_weight", body)
    assert "tvmp_window4_s8" in calls
    # the rows' last outputs: the pair (and the single, dot calls) only where a row may be narrower than four
    narrow = size == 11 or (halo == "cache" and size == 17)
    assert ("tvmp_window2_s8" in calls) == narrow
    assert bool(re.search(r"tvmp_dot_s8\([^;]*layer2_weight", body)) == narrow
    rng = np.random.default_rng(size)
    x = rng.integers(-128, 128, stage.input_shape).astype("int8")
    assert np.array_equal(run_c(func, stage, x), run_numpy(stage, x))


@pytest.mark.skipif(shutil.which("arm-none-eabi-gcc") is None or shutil.which("qemu-system-arm") is None,
                    reason="make setup installs arm-none-eabi-gcc and qemu-system-arm")
def test_stage_depthwise_quads_widened_on_the_emulator(tmp_path):
    """The fingerprint's probe of that form (`DW_ROWS_NET`: a 7x7 depthwise layer whose rows a 5x5 one after it
    clips to the image) built for the H743 and run on the emulated M7 (the DSP paths): every window of the 7x7
    layer in the stage is a quad (`tvmp_window4_s8w`: the rows' last outputs the last four windows), so its weights
    are stored widened; the outputs equal TVM's bit for bit."""
    onnx = write_onnx(DW_ROWS_NET, tmp_path / "dw_rows.onnx")
    out = tmp_path / "build"
    proc = subprocess.run([sys.executable, "-m", "tvm_patch", "build", str(onnx), "--board", "h743", "--split",
                           "block:3", "--patches", "3", "--halo", "recompute", "--run", "emulator", "--json", "-o",
                           str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["run"]["bit_exact"]
    code = (out / "model" / "model.c").read_text()
    stage = code[code.index("{", code.index("void tvmp_patch_stage(")):]  # its body
    calls = re.findall(r"(tvmp_\w+)\([^;]*layer2_weight", stage)
    assert len(calls) == 2 and set(calls) == {"tvmp_window4_s8w"}  # the rows' quads, then their last four
