"""Int8 .tflite versions of zoo models (tests/fixtures/tflite/zoo/, made by make_zoo_tflite.py with
TensorFlow's converter): imported with tvm_patch.frontend.load, lowered by LowerToInteger and compiled once
per model; every output bit-exact with TensorFlow Lite Micro on 20 seeded inputs. The fixtures' weights
are checked against the zoo's (a stale fixture would test a different network), and `tvm-patch profile`
runs on them.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from relay_passes import LowerToInteger, float_ops_remaining
from tvm_patch import frontend, zoo
from tvm_patch.reference import (
    TfliteMicroRunner,
    compile_for_host,
    random_inputs,
    relax_input_specs,
    tflite_operator_outputs,
    tflite_with_outputs,
    verify_against_reference,
)
from tvm_patch.zoo.graph import lower

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "tflite" / "zoo"
MODELS = ["mcunet-in0", "mbv2-w0.3-r80"]
N_INPUTS = 20


def _path(name: str) -> Path:
    return FIXTURES / f"{name}_int8.tflite"


class _Model:
    """A fixture imported with frontend.load and lowered once; verify_against_reference compiles it once."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.path = _path(name)
        self.model = frontend.load(str(self.path))
        self.lowered = LowerToInteger()(self.model.mod)


@pytest.fixture(scope="module", params=MODELS)
def model(request) -> _Model:
    return _Model(request.param)


def test_bit_exact_with_tflite_micro(model):
    assert model.model.source == "tflite" and model.model.layout == "NHWC"
    assert float_ops_remaining(model.lowered) == []
    r = verify_against_reference(str(model.path), "tflite-micro", n_inputs=N_INPUTS, lowered=model.lowered)
    assert r.n_inputs == N_INPUTS and r.n_values == N_INPUTS * 1000, r.summary()
    assert r.passed and r.n_equal == r.n_values and r.max_abs_diff == 0, r.summary()
    assert r.float_ops == []


def _weight_ops(path: Path) -> list[tuple[str, np.ndarray]]:
    """(op, dequantized float weights in the zoo's layout: OIHW / (out, in)) of every conv and dense."""
    import tflite

    m = tflite.Model.GetRootAsModel(path.read_bytes(), 0)
    g = m.Subgraphs(0)
    names = {v: k for k, v in tflite.BuiltinOperator.__dict__.items() if not k.startswith("_")}
    out = []
    for i in range(g.OperatorsLength()):
        op = g.Operators(i)
        oc = m.OperatorCodes(op.OpcodeIndex())
        kind = names[max(oc.BuiltinCode(), oc.DeprecatedBuiltinCode())]
        if kind not in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"):
            continue
        t = g.Tensors(op.Inputs(1))
        q = m.Buffers(t.Buffer()).DataAsNumpy().view(np.int8).reshape(t.ShapeAsNumpy())
        scale = t.Quantization().ScaleAsNumpy().astype(np.float64)
        if kind == "CONV_2D":  # OHWI, per output channel
            w = (q * scale[:, None, None, None]).transpose(0, 3, 1, 2)
        elif kind == "DEPTHWISE_CONV_2D":  # 1HWC, per channel
            w = (q * scale[None, None, None, :]).transpose(3, 0, 1, 2)
        else:  # (out, in), per tensor or per channel
            w = q * scale.reshape(-1, 1)
        out.append((kind, w))
    return out


@pytest.mark.parametrize("name", MODELS)
def test_fixture_has_the_zoo_weights(name):
    """Every conv / depthwise / dense of the fixture, in order, holds the zoo layer's weights to within half
    a quantization step: the fixture is the zoo model, not a stale or different network."""
    ops = _weight_ops(_path(name))
    layers = [ly for ly in lower(zoo.spec(name)) if ly.kind in ("conv", "gemm")]
    assert len(ops) == len(layers)
    for (kind, w), ly in zip(ops, layers):
        want = ly.weight.astype(np.float64)
        assert kind == ("FULLY_CONNECTED" if ly.kind == "gemm" else
                        "DEPTHWISE_CONV_2D" if ly.attrs["groups"] > 1 else "CONV_2D"), ly.name
        assert w.shape == want.shape, ly.name
        step = np.abs(want).reshape(len(want), -1).max(axis=1) / 127
        err = np.abs(w - want).reshape(len(want), -1).max(axis=1)
        assert np.all(err <= 0.5 * step * (1 + 1e-4) + 1e-12), ly.name


@pytest.mark.parametrize("name", MODELS)
def test_profile(name):
    """`tvm-patch profile` on the fixture: same MACs as the zoo spec; the PADs before strided convs are part
    of those convolutions (no layer of their own)."""
    proc = subprocess.run([sys.executable, "-m", "tvm_patch", "profile", str(_path(name)), "--json"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout)
    assert res["model"] == _path(name).name and res["layout"] == "NHWC"
    assert res["layer_by_layer"]["macs"] == zoo.macs(zoo.spec(name))
    ops = [row["op"] for row in res["layers"]]
    assert "pad" not in ops and ops.count("depthwise_conv2d") == len(zoo.spec(name).blocks)
    r = zoo.spec(name).resolution
    assert res["layers"][0]["op"] == "conv2d" and res["layers"][0]["out_shape"][1:3] == [r // 2, r // 2]  # stem
    assert res["layers"][-1]["out_shape"] == [1, 1000]


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
def test_every_layer_bit_exact(name):
    """Every operator's output tensor equal to tflite-micro's, not only the logits (a second compile)."""
    path = _path(name)
    data = tflite_with_outputs(path, [t for _, t in tflite_operator_outputs(path)])
    from tvm_patch.frontend.tflite_ext import tflite_to_relax

    mod = LowerToInteger()(tflite_to_relax(data, name))
    assert float_ops_remaining(mod) == []
    run, ref = compile_for_host(mod), TfliteMicroRunner(data)
    for xs in random_inputs(relax_input_specs(mod), 3, seed=1):
        got, want = run(xs), ref(xs)
        assert len(got) == len(want)
        for k, (g, w) in enumerate(zip(got, want)):
            np.testing.assert_array_equal(np.asarray(g).reshape(w.shape), w, err_msg=f"tensor {k}")
