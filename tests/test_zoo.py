"""Model zoo: architectures, ONNX form, numpy reference vs onnxruntime, int8 QDQ, TVM import, cache."""

from __future__ import annotations

import collections
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from tvm_patch import zoo
from tvm_patch.errors import TvmPatchError
from tvm_patch.zoo import cache
from tvm_patch.zoo.mcunet import config_path

EXPECTED = [
    "mbv2-w1.0-r224", "mbv2-w0.35-r144", "mnasnet-a1-r224", "mcunet-in0", "mcunet-in1", "mcunet-in2",
    "mcunet-in3", "mcunet-in4", "mbv2-w0.3-r80", "proxyless-w0.25-r112", "proxyless-w0.3-r176",
]
# small and structurally different: MCUNet, ProxylessNAS with ZeroLayers, MobileNetV2, MnasNet with SE
ALL = zoo.names()  # EXPECTED plus the optional proxyless-mobile
INT8_MODELS = ["mcunet-in0", "proxyless-w0.25-r112", "mbv2-w0.35-r144", "mnasnet-a1-r224"]


@pytest.fixture(autouse=True, scope="module")
def _private_cache(tmp_path_factory):
    """Keep the user's cache untouched; models built once here are reused by every test of the module."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(cache.ENV_VAR, str(tmp_path_factory.mktemp("zoo-cache")))
        yield


def _input(name: str, seed: int = 0) -> np.ndarray:
    r = zoo.spec(name).resolution
    return np.random.default_rng(seed).standard_normal((1, 3, r, r)).astype(np.float32)


def _ort(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"input": x})[0]


def _relax_ops(model: onnx.ModelProto) -> collections.Counter:
    import tvm
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx

    mod = from_onnx(model, keep_params_in_input=False)
    ops: collections.Counter = collections.Counter()

    def visit(expr):
        if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op):
            ops[expr.op.name] += 1

    relax.analysis.post_order_visit(mod["main"], visit)
    return ops


def _onnx_macs(model: onnx.ModelProto) -> int:
    """MACs counted from the ONNX graph itself (weight shapes x inferred output sizes), not from the spec."""
    inferred = onnx.shape_inference.infer_shapes(model).graph
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in list(inferred.value_info) + list(inferred.output)}
    weights = {t.name: t.dims for t in model.graph.initializer}
    total = 0
    for node in model.graph.node:
        if node.op_type == "Conv":
            o, i, kh, kw = weights[node.input[1]]
            total += int(np.prod(shapes[node.output[0]][1:])) * i * kh * kw
        elif node.op_type == "Gemm":
            total += int(np.prod(weights[node.input[1]]))
    return total


def test_names():
    assert zoo.names() == sorted(zoo.names())
    assert set(EXPECTED) <= set(zoo.names())
    assert not any(n.endswith("int4") for n in zoo.names())


@pytest.mark.parametrize("name", EXPECTED)
def test_describe_is_one_line(name):
    text = zoo.describe(name)
    net = zoo.spec(name)
    assert "\n" not in text
    assert net.family in text and f"resolution {net.resolution}" in text and "blocks" in text


@pytest.mark.parametrize("call", [zoo.describe, zoo.onnx_model, lambda n: zoo.reference_forward(n, np.zeros(1))])
def test_unknown_name(call):
    with pytest.raises(TvmPatchError) as err:
        call("resnet-50")
    assert str(err.value) == f"unknown zoo model 'resnet-50'; known: {', '.join(zoo.names())}"


def test_wrong_input_shape():
    with pytest.raises(TvmPatchError, match=r"\(N, 3, 48, 48\)"):
        zoo.reference_forward("mcunet-in0", np.zeros((1, 3, 32, 32), np.float32))


def test_missing_shared_models(monkeypatch, tmp_path):
    monkeypatch.setenv("TVM_PATCH_SHARED_MODELS", str(tmp_path / "nowhere"))
    with pytest.raises(TvmPatchError) as err:
        zoo.describe("mcunet-in2")
    msg = str(err.value)
    assert "\n" not in msg and str(tmp_path / "nowhere") in msg and "TVM_PATCH_SHARED_MODELS" in msg


def test_mcunet_json_rules(monkeypatch, tmp_path):
    """mid_channels from the config wins over in*expand_ratio; ZeroLayer blocks vanish."""
    cfg = json.loads(config_path("mcunet-in0").read_text())
    conv = cfg["blocks"][2]["mobile_inverted_conv"]
    conv["mid_channels"] = round(conv["in_channels"] * conv["expand_ratio"]) + 8
    (tmp_path / "mcunet").mkdir()
    (tmp_path / "mcunet" / config_path("mcunet-in0").name).write_text(json.dumps(cfg))
    monkeypatch.setenv("TVM_PATCH_SHARED_MODELS", str(tmp_path))
    assert zoo.spec("mcunet-in0").blocks[2].mid_ch == conv["mid_channels"]
    monkeypatch.delenv("TVM_PATCH_SHARED_MODELS")

    raw = json.loads(config_path("proxyless-w0.25-r112").read_text())["blocks"]
    zeros = sum(b["mobile_inverted_conv"]["name"] == "ZeroLayer" for b in raw)
    assert zeros == 2 and len(zoo.spec("proxyless-w0.25-r112").blocks) == len(raw) - zeros


def test_mbv2_macs():
    net = zoo.spec("mbv2-w1.0-r224")
    assert abs(zoo.macs(net) / 300.8e6 - 1) < 0.005
    assert _onnx_macs(zoo.onnx_model("mbv2-w1.0-r224")) == zoo.macs(net)


@pytest.mark.parametrize("name,published", [
    ("mcunet-in2", 68e6), ("mcunet-in4", 126e6), ("proxyless-w0.3-r176", 38e6), ("mnasnet-a1-r224", 312e6)])
def test_macs_match_published(name, published):
    """MCUNetV2 Table 2 (MCUNet 68 M / 126 M, Proxyless 0.3x 38 M) and MnasNet-A1's 312 M, rounded there."""
    assert abs(zoo.macs(zoo.spec(name)) / published - 1) < 0.02


def test_mbv2_width_035_is_the_mcunet_config():
    """The MCUNet zoo's MbV2 0.35x r144 (448-channel head): the paper's Table 2 row, 24 M MACs."""
    net = zoo.spec("mbv2-w0.35-r144")
    assert net.stem.out_ch == 16 and net.head.out_ch == 448 and net.resolution == 144
    assert [b.out_ch for b in net.blocks] == [8, 8, 8, 16, 16, 16, 24, 24, 24, 24, 32, 32, 32, 56, 56, 56, 112]
    assert abs(zoo.macs(net) / 24e6 - 1) < 0.03


def test_mnasnet_structure():
    net = zoo.spec("mnasnet-a1-r224")
    assert [b.se_ch for b in net.blocks if b.se_ch] == [6, 10, 10, 20, 28, 28, 40, 40]
    ops = collections.Counter(n.op_type for n in zoo.onnx_model("mnasnet-a1-r224").graph.node)
    assert ops["Sigmoid"] == ops["Mul"] == 8 and ops["Relu"] > 0 and ops["Clip"] == 0


@pytest.mark.parametrize("name", ALL)
def test_float_onnx_form_and_relax_import(name):
    model = zoo.onnx_model(name)
    onnx.checker.check_model(model, full_check=True)
    net = zoo.spec(name)
    assert model.opset_import[0].version == 13
    (inp,), (out,) = model.graph.input, model.graph.output
    dims = [[d.dim_value for d in v.type.tensor_type.shape.dim] for v in (inp, out)]
    assert inp.name == "input" and dims[0] == [1, 3, net.resolution, net.resolution]
    assert out.name == "output" and dims[1] == [1, 1000]
    assert inp.type.tensor_type.elem_type == out.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    ops = collections.Counter(n.op_type for n in model.graph.node)
    assert _onnx_macs(model) == zoo.macs(net)
    assert ops["Gemm"] == 1 and ops["GlobalAveragePool"] == 1 + sum(b.se_ch > 0 for b in net.blocks)
    assert ops["Add"] == sum(b.residual for b in net.blocks)
    relax_ops = _relax_ops(model)
    assert relax_ops["relax.nn.conv2d"] == ops["Conv"]
    assert relax_ops["relax.matmul"] == 1 and relax_ops["relax.mean"] == ops["GlobalAveragePool"]


def test_node_names():
    nodes = {n.name: n for n in zoo.onnx_model("mbv2-w1.0-r224").graph.node}
    for name in ["stem", "stem.relu6", "b2.dw", "b2.project", "b3.expand", "b3.dw", "b3.project", "b4.add",
                 "b18.project", "head", "pool", "flatten", "classifier"]:
        assert name in nodes, name
    assert "b2.expand" not in nodes  # expand ratio 1
    assert nodes["b3.dw"].op_type == "Conv" and nodes["b4.add"].op_type == "Add"
    assert [a.i for a in nodes["b3.dw"].attribute if a.name == "group"] == [96]


@pytest.mark.parametrize("name", ALL)
def test_reference_matches_onnxruntime(name):
    x = _input(name)
    ref = zoo.reference_forward(name, x)
    np.testing.assert_allclose(ref, _ort(zoo.onnx_model(name), x), rtol=1e-4, atol=1e-5)
    # seeded He-style weights: logits neither vanish nor explode, and they depend on the input
    assert 0.2 < ref.std() < 5.0
    assert np.abs(zoo.reference_forward(name, _input(name, seed=1)) - ref).max() > 1e-3


def test_reference_batch():
    x = np.concatenate([_input("mcunet-in0", 0), _input("mcunet-in0", 1)])
    both = zoo.reference_forward("mcunet-in0", x)
    np.testing.assert_allclose(both[1:], zoo.reference_forward("mcunet-in0", x[1:]), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", INT8_MODELS)
def test_int8_qdq(name):
    """int8 QDQ model: checker, form, runs in onnxruntime close to the float model, imports into Relax.

    Tolerance: each of the 50-100 QuantizeLinear points adds up to half an LSB of its tensor; these errors
    reach the logits as a random walk, and logits above the calibrated range saturate at the output's
    QuantizeLinear (the test input is a different seed from the calibration inputs). Measured over all
    models: max error <= 4.2 % of the float logits' range, mean error <= 1.3 output LSB. Asserted: max error
    <= 6 % of the range and mean error <= 2 output LSB (a wrong bias or weight scale gives 100x more).
    """
    model = zoo.onnx_model(name, int8=True)
    onnx.checker.check_model(model, full_check=True)
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    nodes = list(model.graph.node)
    producer = {o: n for n in nodes for o in n.output}
    for conv in (n for n in nodes if n.op_type in ("Conv", "Gemm")):
        x_dq, w_dq, b_dq = (producer[i] for i in conv.input)
        if x_dq.op_type == "Flatten":  # the classifier reads the flattened, already quantized pool output
            x_dq = producer[x_dq.input[0]]
        assert x_dq.op_type == w_dq.op_type == b_dq.op_type == "DequantizeLinear"
        assert inits[w_dq.input[0]].dtype == np.int8 and inits[b_dq.input[0]].dtype == np.int32
        assert [a.i for a in w_dq.attribute if a.name == "axis"] == [0]
        w_scale, x_scale = inits[w_dq.input[1]], inits[x_dq.input[1]]
        assert w_scale.shape == (inits[w_dq.input[0]].shape[0],) and not inits[w_dq.input[2]].any()
        np.testing.assert_allclose(inits[b_dq.input[1]], x_scale * w_scale, rtol=1e-6)
    for clip in (n for n in nodes if n.op_type == "Clip"):  # relu6 range == quantized range
        q = next(n for n in nodes if n.op_type == "QuantizeLinear" and n.input[0] == clip.output[0])
        assert np.isclose(inits[q.input[1]], 6 / 255) and inits[q.input[2]] == -128
    q_inputs = {n.input[0] for n in nodes if n.op_type == "QuantizeLinear"}
    assert "input" in q_inputs and "classifier" in q_inputs
    assert all(n.output[0] in q_inputs for n in nodes if n.op_type in ("Add", "Mul", "GlobalAveragePool"))

    x = _input(name, seed=5)
    ref = zoo.reference_forward(name, x)
    got = _ort(model, x)
    out_scale = float(inits["classifier.scale"])
    err = np.abs(got - ref)
    assert err.max() <= 0.06 * (ref.max() - ref.min()), err.max()
    assert err.mean() <= 2 * out_scale, err.mean() / out_scale

    relax_ops = _relax_ops(model)
    ops = collections.Counter(n.op_type for n in nodes)
    assert relax_ops["relax.quantize"] == ops["QuantizeLinear"]
    assert relax_ops["relax.dequantize"] == ops["DequantizeLinear"]


def test_deterministic_builds():
    for int8 in (False, True):
        a = zoo.build("mcunet-in0", int8).SerializeToString()
        b = zoo.build("mcunet-in0", int8).SerializeToString()
        assert a == b
    # across processes and hash seeds too (weights are seeded with crc32, not hash())
    code = ("import hashlib, sys; from tvm_patch import zoo; "
            "sys.stdout.write(hashlib.sha256(zoo.build('mcunet-in0').SerializeToString()).hexdigest())")
    env = dict(os.environ, PYTHONHASHSEED="123")
    other = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert other.stdout == hashlib.sha256(zoo.build("mcunet-in0").SerializeToString()).hexdigest()
    assert zoo.build("mcunet-in0").SerializeToString() != zoo.build("mcunet-in1").SerializeToString()


def test_cache(monkeypatch, tmp_path):
    monkeypatch.setenv(cache.ENV_VAR, str(tmp_path))
    built = []
    real_build = zoo.build_spec  # every build goes through it (zoo names and spec files alike)
    monkeypatch.setattr(zoo, "build_spec", lambda *a: built.append(a) or real_build(*a))

    first = zoo.onnx_model("mcunet-in0")
    tmp_path = tmp_path / "zoo"  # $TVM_PATCH_CACHE is the root; the zoo has its own folder
    files = list(tmp_path.iterdir())
    assert len(files) == 1 and files[0].name.startswith("mcunet-in0.fp32.") and len(built) == 1
    assert zoo.onnx_model("mcunet-in0") == first and len(built) == 1  # served from disk

    # another variant gets its own file
    zoo.onnx_model("mcunet-in0", int8=True)
    assert len(built) == 2 and len(list(tmp_path.glob("mcunet-in0.int8.*.onnx"))) == 1

    # new code version: the old file is never read, a new one is written
    files[0].write_bytes(b"")  # would fail to load if it were read
    monkeypatch.setattr(cache, "code_version", lambda: "another-version")
    assert zoo.onnx_model("mcunet-in0") == first and len(built) == 3
    assert len(list(tmp_path.glob("mcunet-in0.fp32.*.onnx"))) == 2

    # a damaged current file is rebuilt, and no temporary files are left behind
    current = max(tmp_path.glob("mcunet-in0.fp32.*.onnx"), key=lambda p: p.stat().st_mtime_ns)
    current.write_bytes(b"garbage")
    assert zoo.onnx_model("mcunet-in0") == first and len(built) == 4
    assert not list(tmp_path.glob("*.tmp"))


def test_cache_key_follows_spec(monkeypatch, tmp_path):
    """An edited MCUNet JSON config gives a different cache file (stale models are never used)."""
    monkeypatch.setenv(cache.ENV_VAR, str(tmp_path / "cache"))
    zoo.onnx_model("mcunet-in0")
    cfg = json.loads(config_path("mcunet-in0").read_text())
    cfg["resolution"] = 64
    (tmp_path / "mcunet").mkdir()
    (tmp_path / "mcunet" / config_path("mcunet-in0").name).write_text(json.dumps(cfg))
    monkeypatch.setenv("TVM_PATCH_SHARED_MODELS", str(tmp_path))
    model = zoo.onnx_model("mcunet-in0")
    assert model.graph.input[0].type.tensor_type.shape.dim[2].dim_value == 64
    assert len(list((tmp_path / "cache" / "zoo").glob("mcunet-in0.fp32.*.onnx"))) == 2


def test_default_cache_dir(monkeypatch):
    monkeypatch.delenv(cache.ENV_VAR)
    assert cache.cache_dir() == Path.home() / ".cache" / "tvm-patch" / "zoo"
