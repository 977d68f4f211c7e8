"""The PatchStage Relax pass, the mcunetv2 pipeline, the patch-based profile and `tvm-patch verify`."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import pytest
import tvm
from tvm import relax

import relay_passes
from relay_passes import PatchStage
from tvm_patch.errors import TvmPatchError
from tvm_patch.frontend import load
from tvm_patch.report import profile
from tvm_patch.verify import compile_vm, run_vm, seeded_inputs, verify_patch

from onnx_graphs import OnnxBuilder, tiny_residual


@pytest.fixture(scope="module")
def tiny_mod(tmp_path_factory):
    path = tmp_path_factory.mktemp("m") / "tiny.onnx"
    onnx.save(tiny_residual(), path)
    return load(str(path)).mod


def odd_net() -> onnx.ModelProto:
    """19x19 input; 7x7 kernel at stride 2, 5x5 depthwise, residual, 1x1: a 10x10 stage output."""
    b = OnnxBuilder((1, 3, 19, 19), seed=3)
    x = b.conv("input", 3, 6, 7, stride=2, act="relu")
    y = b.conv(x, 6, 6, 5, groups=6, act="relu6")
    y = b.conv(y, 6, 6, 1, act=None)
    z = b.add(x, y)
    z = b.conv(z, 6, 4, 3, act="relu6")
    return b.model(b.head(z, 4, 5), [1, 5])


def test_pass_replaces_stage_with_one_call_tir(tiny_mod):
    out = PatchStage("block:2", (2, 2))(tiny_mod)
    names = sorted(gv.name_hint for gv in out.functions)
    assert "patch_stage" in names and "maximum" not in names  # the stage's relu6 PrimFuncs are gone
    calls = [b.value for blk in out["main"].body.blocks for b in blk.bindings
             if isinstance(b.value, relax.Call) and b.value.op.name == "relax.nn.conv2d"]
    assert calls == []  # every conv of this model is inside the stage


@pytest.mark.parametrize("split,patches", [(1, 2), (4, 2), ("block:2", 3), (4, 4), ("auto", 2)])
def test_patched_tiny_equals_unpatched(tiny_mod, split, patches):
    r = verify_patch(tiny_mod, patches, split, n_inputs=2)
    assert r.passed and r.max_abs_diff <= 1e-5 * 10, r


@pytest.mark.parametrize("patches,split", [(3, 5), (4, 5), (2, 4), (3, 1)])
def test_odd_sizes_and_kernels(tmp_path, patches, split):
    """10x10 stage output over 3x3 / 4x4 patches (do not divide), 7x7 s2 and 5x5 kernels, image padding."""
    path = tmp_path / "odd.onnx"
    onnx.save(odd_net(), path)
    r = verify_patch(load(str(path)).mod, patches, split, n_inputs=2)
    assert r.passed, r


def test_pipeline_registered_and_reimport_safe(tiny_mod):
    import importlib

    importlib.reload(relay_passes)  # must not raise on the second registration
    assert "mcunetv2" in relax.pipeline.PIPELINE_MAP
    target = tvm.target.Target({"kind": "llvm"})
    x = seeded_inputs(tiny_mod["main"], 1)[0]
    ref = run_vm(compile_vm(tiny_mod), x)[0]
    ex = tvm.compile(tiny_mod, target, relax_pipeline="mcunetv2")
    got = relax.VirtualMachine(ex, tvm.cpu())["main"](*[tvm.runtime.tensor(a) for a in x]).numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
    # composes with other passes in a Sequential
    seq = tvm.transform.Sequential([PatchStage(4, 2), relax.get_pipeline("default")])
    ex = tvm.compile(tiny_mod, target, relax_pipeline=seq)
    got = relax.VirtualMachine(ex, tvm.cpu())["main"](*[tvm.runtime.tensor(a) for a in x]).numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)


def test_bad_splits_name_the_problem(tiny_mod):
    with pytest.raises(TvmPatchError, match="global_pool2d.*largest valid split is 4"):
        PatchStage(5, 2)(tiny_mod)
    with pytest.raises(TvmPatchError, match="inside a residual block.*largest valid split is 4"):
        PatchStage(3, 2)(tiny_mod)
    with pytest.raises(TvmPatchError, match=r"^split 40: outside the network \(1\.\.\d+ layers\); the largest valid"):
        PatchStage(40, 2)(tiny_mod)
    with pytest.raises(TvmPatchError, match="beyond the network"):
        PatchStage("block:9", 2)(tiny_mod)
    with pytest.raises(TvmPatchError, match="do not fit"):
        PatchStage(4, 9)(tiny_mod)


def test_mbv2_table1_patch_based():
    """MCUNetV2 Table 1: 4x4 patches after 5 blocks: 75x75 patch input, 172 kB, <= +10 % MACs. The paper's
    convention gives 175,616 B (block 6's 28x28x192 depthwise in place beside the 28x28x32 skip); ours adds the
    29 B (one row and one element) that layer's raster-order kernel must hold before it may overwrite its input."""
    r = profile("zoo:mbv2-w1.0-r224", patches=4, split="block:5", tir=False)
    pb = r["patch_based"]
    assert pb["patch_input_hw"] == [75, 75] and pb["patches"] == [4, 4]
    assert pb["peak_bytes"] == 28 * 28 * 192 + 28 * 28 * 32 + 29 == 175_645 and round(pb["peak_bytes"] / 1024) == 172
    assert 0 < pb["mac_overhead"] <= 0.10
    assert abs(pb["stage_mac_overhead"] - 0.31) < 0.01  # paper: about +31 % over in-image regions
    assert pb["peak_bytes_with_input"] > pb["peak_bytes"] + 100_000  # the 150,528 B image is then held
    assert r["layer_by_layer"]["peak_bytes"] / pb["peak_bytes"] == pytest.approx(pb["reduction"])


def _allocation_within_analytic(model: str, patches: int, split: int) -> None:
    """A 7x7 stride-2 stem on an odd input once left the input patch full-size; now every buffer compacts."""
    pb = profile(model, patches=patches, split=split)["patch_based"]
    # TVM's StorageRewrite reuses dead buffers: between the live peak and the sum of all buffer entries
    assert pb["tir_buffer_bytes"]["peak"] <= pb["tir_allocated_bytes"] <= pb["tir_buffer_bytes"]["entries"]


def test_tir_allocation_matches_analytic_buffers(tmp_path):
    path = tmp_path / "tiny.onnx"
    onnx.save(tiny_residual(), path)
    _allocation_within_analytic(str(path), 2, 4)


def test_tir_allocation_odd_stem(tmp_path):
    path = tmp_path / "odd.onnx"
    onnx.save(odd_net(), path)
    _allocation_within_analytic(str(path), 2, 5)


def test_verify_cli(tmp_path):
    path = tmp_path / "odd.onnx"
    onnx.save(odd_net(), path)
    ok = subprocess.run([sys.executable, "-m", "tvm_patch", "verify", str(path), "--patches", "3", "--split", "5",
                         "--inputs", "2"], capture_output=True, text=True, timeout=600)
    assert ok.returncode == 0 and ok.stdout.startswith("PASS"), ok.stdout + ok.stderr
    bad = subprocess.run([sys.executable, "-m", "tvm_patch", "verify", str(path), "--patches", "3", "--split", "7"],
                         capture_output=True, text=True, timeout=600)
    assert bad.returncode == 2 and "largest valid split is 5" in bad.stderr and "Traceback" not in bad.stderr


def test_mbv2_int8_qdq_patch_profile():
    """The int8 QDQ zoo model: the stage is read from the integer-lowered module; same figures as float32."""
    pb = profile("zoo:mbv2-w1.0-r224:int8", patches=4, split="block:5", tir=False, lowering=False)["patch_based"]
    assert pb["peak_bytes"] == 175_645 and pb["patch_input_hw"] == [75, 75]
