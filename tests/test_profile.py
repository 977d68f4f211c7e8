"""The layer graph and the analytic memory profile on hand-made and real models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import tvm
from tvm import relax

from relay_passes import lower_to_integer
from tvm_patch import zoo
from tvm_patch.frontend import load
from tvm_patch.graph import build_graph
from tvm_patch.convention import inplace_shift
from tvm_patch.profile import depthwise_shift_bytes, layer_bytes, peak, profile_layers
from tvm_patch.report import profile

from conftest import MLPERF
from onnx_graphs import tiny_residual

FIXTURES = Path(__file__).parent / "fixtures" / "tflite"


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("m") / "tiny.onnx"
    onnx.save(tiny_residual(), path)
    return str(path)


def test_tiny_residual_layers(tiny_path):
    graph = build_graph(load(tiny_path).mod)
    ops = [layer.op for layer in graph.layers]
    assert ops == ["conv2d", "depthwise_conv2d", "conv2d", "add", "global_pool2d", "dense"]
    assert [layer.activation for layer in graph.layers[:3]] == ["minimum", "minimum", None]
    # the residual add reads the stem output (tensor of layer 0) and the projection
    add = graph.layers[3]
    assert set(add.inputs) == {graph.layers[0].output, graph.layers[2].output}
    assert graph.layers[0].macs == 8 * 8 * 8 * 3 * 3 * 3
    assert graph.layers[1].macs == 8 * 8 * 8 * 3 * 3
    assert graph.layers[5].macs == 8 * 10
    # receptive fields: 3, then +2*2 for the 3x3 at stride 2
    assert [layer.rf[0] for layer in graph.layers[:4]] == [3, 7, 7, 7]


def test_tiny_residual_memory(tiny_path):
    graph = build_graph(load(tiny_path).mod)
    got = [layer_bytes(graph, layer) for layer in graph.layers]
    stem_in, act = 3 * 16 * 16, 8 * 8 * 8
    assert got == [
        stem_in + act,  # stem: input + output
        2 * act,  # depthwise: its input is held for the skip, so it cannot run in place
        2 * act,  # projection: input + the held skip, which it accumulates into (no output of its own)
        act,  # add: already done in the skip buffer, which is its output
        act + 8,  # pooling
        8 + 10,  # dense
    ]


def test_blocks_of_real_models(mlperf_paths):
    vww = build_graph(load(str(mlperf_paths["vww_96_int8"])).mod)
    # MobileNetV1: the stem, then one block per depthwise + pointwise pair
    assert [layer.name for layer in vww.layers[:5]] == ["b1.1", "b2.1", "b2.2", "b3.1", "b3.2"]
    resnet = build_graph(load(str(mlperf_paths["resnet8_int8"])).mod)
    adds = [layer for layer in resnet.layers if layer.op == "add"]
    assert len(adds) == 3
    # each residual add closes its block
    assert [layer.block for layer in adds] == [2, 3, 4]
    assert all(resnet.layers[a.index + 1].block == a.block + 1 for a in adds)


@pytest.mark.parametrize("name", ["vww_96_int8", "resnet8_int8", "kws_int8"])
def test_mlperf_profiles(mlperf_paths, name):
    result = profile(str(mlperf_paths[name]))
    rows = result["layers"]
    assert rows and all(r["bytes"] > 0 for r in rows)
    lbl = result["layer_by_layer"]
    assert lbl["peak_bytes"] == max(r["bytes"] for r in rows)
    assert lbl["macs"] == sum(r["macs"] for r in rows)
    # the layer-by-layer peak is at least the largest single tensor and at most all tensors together
    graph = build_graph(load(str(mlperf_paths[name])).mod)
    largest = max(t.elements for t in graph.tensors)
    assert largest <= lbl["peak_bytes"] <= sum(t.elements for t in graph.tensors)


def test_vww_peak_is_first_pointwise(mlperf_paths):
    result = profile(str(mlperf_paths["vww_96_int8"]))
    # 48x48x8 in + 48x48x16 out
    assert result["layer_by_layer"]["peak_bytes"] == 48 * 48 * 8 + 48 * 48 * 16
    assert result["layer_by_layer"]["peak_layer"].startswith("b2.2 (conv2d 1x1")


def test_peak_picks_first_on_ties(tiny_path):
    rows = profile_layers(build_graph(load(tiny_path).mod))
    assert rows[1].bytes == rows[2].bytes and peak(rows).index == 1  # the stem (1280 B) is the peak
    rows[1].bytes = rows[2].bytes = 2000
    assert peak(rows).index == 2


def test_mbv2_table1_layer_by_layer():
    """MCUNetV2 Table 1: MobileNetV2 224, peak 1,404,928 B (1372 kB) at the 1x1 expansion of block 3 (the
    paper's Fig. 1 counts the stem as block 1; its text's 'block 2' counts inverted-residual blocks), 300.8 M MACs."""
    result = profile("zoo:mbv2-w1.0-r224")
    lbl = result["layer_by_layer"]
    assert lbl["peak_bytes"] == 1_404_928 == 112 * 112 * 16 + 112 * 112 * 96
    assert lbl["peak_layer"] == "b3.1 (conv2d 1x1)"
    assert abs(lbl["macs"] / 300.8e6 - 1) <= 0.005


def test_every_zoo_model_profiles():
    from tvm_patch import zoo

    for name in zoo.names():
        for variant in ("", ":int8"):
            result = profile(f"zoo:{name}{variant}", lowering=False)
            lbl = result["layer_by_layer"]
            assert lbl["peak_bytes"] > 0 and lbl["macs"] > 1e6, name
            # the int8 QDQ graph has the same layers as the float one
            if variant:
                assert lbl == float_result["layer_by_layer"], name
            else:
                float_result = result


def test_profile_reports_float_ops_after_lowering(mlperf_paths):
    assert profile(str(mlperf_paths["kws_int8"]))["integer_lowering"] == {"integer_only": True, "float_ops": []}
    zoo_int8 = profile("zoo:mbv2-w0.3-r80:int8")["integer_lowering"]
    # an ONNX QDQ model takes a float image and returns float logits: only that boundary stays float
    assert not zoo_int8["integer_only"]
    assert len(zoo_int8["float_ops"]) == 2 and "quantize" in zoo_int8["float_ops"][0]
    assert "integer_lowering" not in profile("zoo:mbv2-w0.3-r80")  # a float32 model is not lowered


@pytest.mark.parametrize("name", ["mcunet-in0", "mbv2-w0.3-r80"])
def test_tflite_with_pads_profiles_like_onnx(name):
    """The .tflite export of a zoo model has explicit PAD ops before stride-2 convolutions; they are part of
    the convolution that reads them, so both files of the same network have the same layers, peak and MACs."""
    tfl = profile(str(FIXTURES / "zoo" / f"{name}_int8.tflite"), lowering=False)
    onnx_result = profile(f"zoo:{name}", lowering=False)
    assert [(r["op"], r["name"]) for r in tfl["layers"]] == [(r["op"], r["name"]) for r in onnx_result["layers"]]
    assert tfl["layers"][0]["out_shape"][1:3] == onnx_result["layers"][0]["out_shape"][2:4]  # NHWC / NCHW
    assert tfl["layer_by_layer"]["peak_bytes"] == onnx_result["layer_by_layer"]["peak_bytes"]
    assert tfl["layer_by_layer"]["macs"] == onnx_result["layer_by_layer"]["macs"]


QUANTIZED = ([f"zoo:{name}:int8" for name in zoo.names()] + [f"mlperf:{name}" for name in MLPERF]
             + ["zoo/mcunet-in0_int8.tflite", "zoo/mbv2-w0.3-r80_int8.tflite", "mini_mcunet.tflite"])


@pytest.mark.parametrize("spec", QUANTIZED)
def test_lowered_graph_numbers_layers_like_the_imported(mlperf_paths, spec):
    """A quantized model as imported and after LowerToInteger has the same layers: the same op, name (block)
    and output shape at every index, so `--split N` / `block:N` mean the same layers in `tvm-patch profile`
    (the imported graph) and in the patch stage (the lowered one). LowerToInteger's zero-point pads are part
    of their convolutions, and its saturating clips are no activation (a ReLU clamp that coincides with the
    int8 range still is). Within a block the same kinds of layers have an activation; LowerToInteger may
    emit the branches of a residual block in another order (resnet8's stride-2 blocks)."""
    if spec.startswith("mlperf:"):
        path = str(mlperf_paths[spec[len("mlperf:"):]])
    else:
        path = spec if spec.startswith("zoo:") else str(FIXTURES / spec)
    mod = load(path).mod
    imported, lowered = build_graph(mod), build_graph(lower_to_integer(mod))  # no FoldConstant needed

    def rows(g):
        return [(la.op, la.name, g.tensors[la.output].shape) for la in g.layers]

    def activations(g):
        return sorted((la.block, la.op, la.activation is None) for la in g.layers)

    assert rows(lowered) == rows(imported)
    assert activations(lowered) == activations(imported)
    assert "pad" not in [la.op for la in lowered.layers]
    if spec.startswith("zoo:"):  # and the float model's layers (profile reads the folded modules: the same)
        assert rows(build_graph(load(spec[:-len(":int8")]).mod)) == rows(imported)
    if spec == "mlperf:kws_int8":  # profile reads the folded module: the same graph
        assert rows(build_graph(relax.transform.FoldConstant()(mod))) == rows(imported)


def _raster_in_place_clobbers(h: int, w: int, k: int, s: int, pad: int, shift: int) -> bool:
    """Simulate one channel of an in-place depthwise kernel in raster order, its output placed `shift` elements
    before its input: does any output read an input element an earlier output already overwrote?"""
    ho, wo = (h + 2 * pad - k) // s + 1, (w + 2 * pad - k) // s + 1
    live = np.ones(shift + h * w, bool)  # address shift + a holds input element a until written over
    for y in range(ho):
        for x in range(wo):
            for r in range(y * s - pad, y * s - pad + k):
                for c in range(x * s - pad, x * s - pad + k):
                    if 0 <= r < h and 0 <= c < w and not live[shift + r * w + c]:
                        return True
            live[y * wo + x] = False
    return False


@pytest.mark.parametrize("h,w,k,s,pad", [(9, 9, 3, 1, 1), (8, 11, 3, 1, 1), (10, 7, 5, 1, 2), (12, 12, 7, 1, 3),
                                         (12, 12, 3, 2, 1), (13, 13, 5, 2, 2), (12, 12, 7, 2, 3), (9, 9, 1, 1, 0),
                                         (11, 9, 3, 1, 0)])
def test_inplace_shift_is_what_a_raster_kernel_needs(h, w, k, s, pad):
    """`convention.inplace_shift` against a simulated in-place kernel: with the output that many elements before
    its input no read meets an overwritten input, with one element fewer one does; p (W + 1) for stride 1, same
    padding (the convention's count for an in-place depthwise layer, docs/patch-arena-sweep.md)."""
    ho, wo = (h + 2 * pad - k) // s + 1, (w + 2 * pad - k) // s + 1
    need = inplace_shift((h, w), (ho, wo), (k, k), (s, s), (pad, pad))
    assert not _raster_in_place_clobbers(h, w, k, s, pad, need)
    if need > 0:
        assert _raster_in_place_clobbers(h, w, k, s, pad, need - 1)
    if s == 1 and 2 * pad == k - 1:
        assert need == (k // 2) * (w + 1)


def _expand_depthwise_project(k: int, stride: int) -> tvm.IRModule:
    """x (3 ch, 12x12) -> 1x1 conv to 16 ch -> k x k depthwise (same padding) -> 1x1 conv to 4 ch: the
    depthwise layer's input dies there, so it runs in place."""
    rng = np.random.default_rng(0)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 3, 12, 12), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            def conv(v, shape, **kw):
                return bb.emit(relax.op.nn.conv2d(v, relax.const(rng.standard_normal(shape).astype("float32")), **kw))
            e = conv(x, (16, 3, 1, 1))
            d = conv(e, (16, 1, k, k), padding=(k // 2, k // 2), strides=(stride, stride), groups=16)
            gv = bb.emit_output(conv(d, (4, 16, 1, 1)))
        bb.emit_func_output(gv)
    return bb.get()


@pytest.mark.parametrize("k,stride,extra", [(3, 1, 13), (7, 1, 3 * 13), (3, 2, 0), (1, 1, 0)])
def test_in_place_depthwise_counts_its_shift(k, stride, extra):
    """The profile's in-place depthwise row: max(input, output) plus `inplace_shift` (3x3 at 12x12: one row and
    one element; 7x7: three of them; none for a 3x3 stride-2 or a 1x1 layer)."""
    graph = build_graph(_expand_depthwise_project(k, stride))
    dw = graph.layers[1]
    assert dw.op == "depthwise_conv2d"
    assert depthwise_shift_bytes(graph, dw) == extra
    assert layer_bytes(graph, dw) == 16 * 12 * 12 + extra
