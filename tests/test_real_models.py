"""Real-model shapes end to end (issue 11): squeeze-and-excitation chains, several outputs, the rough edges.

Fixtures in tests/fixtures/tflite/models (make_fixtures.py): se_net (SE blocks: MEAN, 1x1 conv or FC gate,
hard sigmoid as ADD / MUL, MUL with the features, hard swish), det_net (backbone, two RESIZE_NEAREST_NEIGHBOR
merged by ADD and CONCATENATION, three float32 heads; its ONNX QDQ twin is tests/fixtures/onnx/det_qdq.onnx),
conv_per_tensor, uint8_io, dynamic_batch; in tests/fixtures/tflite/refused a fully uint8 model and a dynamic
height and width.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import tvm_ffi
from tvm import s_tir, tirx
from tvm.ir.expr import Expr

from bench import export_time
from conftest import FIXTURES
from onnx_graphs import tiny_residual
from tvm_patch.board_build import build_for_board
from tvm_patch.codegen.micro_kernels import plain_kernels
from tvm_patch.errors import TvmPatchError, UnsupportedOpError
from tvm_patch.export import export_model
from tvm_patch.export.lower import lower_module
from tvm_patch.export.schedule import lean_schedule
from tvm_patch.frontend import load, onnx_to_relax
from tvm_patch.plot import plot_profile
from tvm_patch.reference import ORT_INT8_KERNELS, verify_against_reference
from tvm_patch.report import profile
from tvm_patch.transform.lower_to_integer import lower_to_integer
from tvm_patch.verify import verify_patch

MODELS = FIXTURES / "models"
SE = MODELS / "se_net.tflite"
DET = MODELS / "det_net.tflite"
DET_QDQ = FIXTURES.parent / "onnx" / "det_qdq.onnx"
REFUSED = FIXTURES / "refused"
HEADS = [(1, 8, 10, 6), (1, 4, 5, 6), (1, 16, 20, 6)]  # det_net's outputs in the .tflite's order


# ---------------------------------------------------------------- squeeze-and-excitation chains


def _blocks(func: tirx.PrimFunc) -> list[s_tir.SBlock]:
    found: list[s_tir.SBlock] = []
    tvm_ffi.structural_walk(func.body, [(s_tir.SBlock, lambda b: found.append(b) or tvm_ffi.WalkResult.ADVANCE)],
                            order="pre")
    return [b for b in found if b.name_hint != "root"]


def _size(expr) -> int:
    n = [0]
    tvm_ffi.structural_walk(expr, [(Expr, lambda e: n.__setitem__(0, n[0] + 1) or tvm_ffi.WalkResult.ADVANCE)],
                            order="pre")
    return n[0]


def _store_sizes(func: tirx.PrimFunc) -> list[int]:
    return [_size(b.body.value) for b in _blocks(func) if isinstance(b.body, tirx.BufferStore)]


@pytest.fixture(scope="module")
def se_program():
    """se_net lowered with TVM's own requantization spelled out in TIR (--kernels plain): the longest
    expressions, the form whose inlined chains took minutes to simplify."""
    with plain_kernels():
        return lower_module(lower_to_integer(load(str(SE)).mod))


def test_se_gate_chain_stages_stay_their_own_size(se_program):
    # the fused hard-sigmoid gate: q_add -> q_mul -> q_mul (ADD 3, MUL 1/6, MUL with the features) in one kernel
    chains = {n: f for n, f in se_program.funcs.items() if n.startswith("tvmp_fused_q_")}
    assert sum("q_add" in n and n.count("q_mul") == 2 for n in chains) == 3, sorted(se_program.funcs)
    for name, func in chains.items():
        before = _store_sizes(func)
        lean = lean_schedule(func)
        after = _store_sizes(lean)
        # every stage keeps its own store (a scalar C local), none grows: no expression nests in the next
        assert len(after) == len(before), name
        assert max(after) <= max(before), name
        if len(before) < 3:
            continue
        # what inlining every stage would have given: a nested expression about three times larger (and
        # doubling with each further stage: the requantization reads its input twice)
        sch = s_tir.Schedule(func)
        for b in list(sch.get_child_blocks(sch.get_sblock("root")))[:-1]:
            sch.compute_inline(b)
        assert max(_store_sizes(sch.mod["main"])) > 2 * max(after), name


def test_se_net_export_bit_exact(tmp_path):
    result = export_model(str(SE), tmp_path / "out", check=True, seeds=(0,))
    assert result.check.bit_exact and result.micro_kernels


@pytest.mark.slow
def test_se_net_plain_kernels_bit_exact(tmp_path):
    result = export_model(str(SE), tmp_path / "out", kernels="plain", check=True, seeds=(0,))
    assert result.check.bit_exact
    assert not result.micro_kernels


def test_se_net_bit_exact_with_tflite_micro():
    res = verify_against_reference(str(SE), "tflite-micro", n_inputs=3)
    assert res.passed and res.n_equal == res.n_values == 3 * 10


# ---------------------------------------------------------------- several outputs


@pytest.fixture(scope="module")
def det_profile() -> dict:
    return profile(str(DET), patches=2, split="auto", tir=False)


def test_det_profile_counts_every_head(det_profile):
    rows = det_profile["layers"]
    assert [r["op"] for r in rows].count("resize2d") == 2 and "concat" in [r["op"] for r in rows]
    heads = [r for r in rows if tuple(r["out_shape"]) in HEADS]
    assert len(heads) == 3
    # outputs are live until the end: the last layer holds its input, its output and the two earlier heads
    last = rows[-1]
    prev_heads = sum(int(np.prod(h["out_shape"])) for h in heads if h is not last)
    assert last["bytes"] == 16 * 20 * 16 + int(np.prod(last["out_shape"])) + prev_heads


def test_det_bit_exact_with_tflite_micro():
    res = verify_against_reference(str(DET), "tflite-micro", n_inputs=3)
    assert res.passed and res.n_equal == res.n_values == 3 * sum(int(np.prod(s)) for s in HEADS)


@pytest.mark.slow
def test_det_patch_stage_bit_exact():
    res = verify_patch(load(str(DET)).mod, 2, "auto", n_inputs=2)
    assert res.passed and res.max_abs_diff == 0


@pytest.fixture(scope="module")
def det_export(tmp_path_factory):
    out = tmp_path_factory.mktemp("det") / "out"
    return export_model(str(DET), out, check=True, seeds=(0,)), out


def test_det_build_one_buffer_per_output(det_export):
    result, out = det_export
    assert result.check.bit_exact
    assert sorted({d.output for d in result.check.diffs}) == [0, 1, 2]  # --check compares every output
    assert [io.shape for io in result.program.outputs] == HEADS
    header = (out / "tvmp_model.h").read_text()
    assert "#define TVMP_NUM_OUTPUTS 3" in header
    for i, shape in enumerate(HEADS):
        assert f"#define TVMP_OUTPUT{i}_SHAPE {{{', '.join(map(str, shape))}}}" in header
        assert f"#define TVMP_OUTPUT{i}_BYTES {int(np.prod(shape)) * 4}" in header
    # one buffer per output, named after the model's output tensors (StatefulPartitionedCall_1:1 ...)
    names = [f"StatefulPartitionedCall_1:{k}" for k in (1, 0, 2)]
    assert re.search(r"int tvmp_run\(const int8_t \*input, " + ", ".join(
        rf"float \*{n.replace(':', '_')}" for n in names) + r"\);", header)
    for i, n in enumerate(names):
        assert f'#define TVMP_OUTPUT{i}_NAME "{n}"' in header
    assert [o["shape"] for o in result.to_json()["outputs"]] == [list(s) for s in HEADS]


@pytest.mark.skipif(shutil.which("arm-none-eabi-gcc") is None or shutil.which("qemu-system-arm") is None,
                    reason="make setup installs arm-none-eabi-gcc and qemu-system-arm")
def test_det_on_h743_emulator_bit_exact(tmp_path):
    report = build_for_board(str(DET), tmp_path / "h7", "h743", run=True)
    assert report["run"]["bit_exact"] and report["run"]["mismatched_outputs"] == []
    assert len(report["export"]["outputs"]) == 3
    assert sorted(p.name for p in (tmp_path / "h7" / "io").glob("expected*.bin")) == \
        ["expected0.bin", "expected1.bin", "expected2.bin"]
    sizes = [(tmp_path / "h7" / "io" / f"expected{i}.bin").stat().st_size for i in range(3)]
    assert sizes == [int(np.prod(s)) * 4 for s in HEADS]


def test_det_onnx_qdq_twin(tmp_path, det_profile):
    res = profile(str(DET_QDQ), lowering=False)
    assert [r["op"] for r in res["layers"]] == [r["op"] for r in det_profile["layers"]]
    result = export_model(str(DET_QDQ), tmp_path / "out", check=True, seeds=(0,))
    assert result.check.bit_exact and len(result.program.outputs) == 3
    # the ONNX graph's output names are C identifiers as they are
    assert "int tvmp_run(const float *input, float *head0, float *head1, float *head2);" in \
        (tmp_path / "out" / "tvmp_model.h").read_text()



@pytest.mark.slow
def test_det_onnx_qdq_twin_bit_exact_with_onnxruntime():
    ort = verify_against_reference(str(DET_QDQ), "onnxruntime", n_inputs=2, layerwise=False, rounding="onnxruntime",
                                   ort_config=ORT_INT8_KERNELS)
    assert ort.passed and ort.max_abs_diff == 0


# ---------------------------------------------------------------- quantization schemes, shapes


def test_per_tensor_convolutions_bit_exact_with_tflite_micro():
    res = verify_against_reference(str(MODELS / "conv_per_tensor.tflite"), "tflite-micro", n_inputs=3)
    assert res.passed and res.max_abs_diff == 0


def test_uint8_input_output_bit_exact_with_tflite_micro():
    res = verify_against_reference(str(MODELS / "uint8_io.tflite"), "tflite-micro", n_inputs=3)
    assert res.passed and res.max_abs_diff == 0


def test_fully_uint8_model_refused_naming_the_tensor():
    with pytest.raises(UnsupportedOpError, match=r"tensor 'input' of operator #0 CONV_2D is uint8 .*full-integer int8"):
        load(str(REFUSED / "uint8_conv.tflite"))


def test_dynamic_batch_is_compiled_as_one():
    assert [int(d) for d in load(str(MODELS / "dynamic_batch.tflite")).mod["main"].params[0].ty.shape] == [1, 8, 8, 4]


def test_dynamic_height_refused_naming_the_input():
    with pytest.raises(TvmPatchError, match=r"input 'serving_default_keras_tensor:0' has a dynamic dimension 1 "
                                            r"\(shape signature \[1, -1, -1, 4\]\).*fixed input shape"):
        load(str(REFUSED / "dynamic_hw.tflite"))
    proto = tiny_residual()
    proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "N"
    ok = onnx_to_relax(proto, "m.onnx")  # a symbolic batch: compiled as 1
    assert [int(d) for d in ok["main"].params[0].ty.shape] == [1, 3, 16, 16]
    proto.graph.input[0].type.tensor_type.shape.dim[3].dim_param = "W"
    with pytest.raises(TvmPatchError, match=r"m.onnx: input 'input' has a dynamic dimension 3 \('W'\)"):
        onnx_to_relax(proto, "m.onnx")


def test_plot_with_patches(tmp_path, det_profile):
    assert det_profile["patch_based"]["split"] >= 1
    path = tmp_path / "fig.png"
    plot_profile(det_profile, str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert Path(path).stat().st_size > 10_000


def test_export_time_bench_records_each_model(tmp_path):
    code = export_time.main(["--models", str(FIXTURES / "add.tflite"), str(REFUSED / "uint8_conv.tflite"),
                             "--out", str(tmp_path)])
    rows = json.loads((tmp_path / "export_time.json").read_text())["rows"]
    assert code == 0 and [r["status"].split(":")[0] for r in rows] == ["ok", "refused"]
    assert rows[0]["export_seconds"] > 0 and rows[0]["within_goal"] and rows[1]["export_seconds"] is None
    assert "| add.tflite | micro | c |" in (tmp_path / "export_time.md").read_text()
