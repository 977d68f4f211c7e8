"""The command line: help, JSON output, plots, and one-line errors with exit code 2 on bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import onnx
import pytest

from onnx_graphs import tiny_residual
from tvm_patch import cli


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tvm_patch", *args], capture_output=True, text=True, timeout=600)


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def test_help_lists_commands():
    proc = run("--help")
    assert proc.returncode == 0
    for cmd in ("zoo", "profile"):
        assert cmd in proc.stdout


def test_profile_json_and_plot(tmp_path):
    model = tmp_path / "tiny.onnx"
    onnx.save(tiny_residual(), model)
    png = tmp_path / "fig.png"
    proc = run("profile", str(model), "--json", "--plot", str(png))
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["model"] == "tiny.onnx"
    for row in result["layers"]:
        assert {"name", "op", "out_shape", "bytes", "macs"} <= row.keys()
    lbl = result["layer_by_layer"]
    assert lbl["peak_bytes"] == 3 * 16 * 16 + 8 * 8 * 8 and lbl["macs"] == sum(r["macs"] for r in result["layers"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_profile_table(tmp_path):
    model = tmp_path / "tiny.onnx"
    onnx.save(tiny_residual(), model)
    proc = run("profile", str(model))
    assert proc.returncode == 0, proc.stderr
    assert "<- peak" in proc.stdout and "layer-by-layer peak: 1280 B" in proc.stdout


@pytest.mark.parametrize("argv", [
    ["profile"],
    ["plan", "--board", "h743"],  # hashed for the plan cache before it is loaded
    ["build", "--board", "f412", "-o", "OUT"],  # the default plan (auto) is searched first
])
def test_missing_file(argv, tmp_path):
    argv = [argv[0], "/no/such/model.onnx", *(str(tmp_path / a) if a == "OUT" else a for a in argv[1:])]
    assert_one_line_error(run(*argv), "/no/such/model.onnx", "no such file")
    assert not (tmp_path / "OUT").exists()


def test_unknown_zoo_variant_before_the_plan_search():
    assert_one_line_error(run("plan", "zoo:mcunet-in0:int4", "--board", "h743"), "unknown zoo variant 'int4'")


def test_directory_and_unknown_extension(tmp_path):
    assert_one_line_error(run("profile", str(tmp_path)), "directory")
    other = tmp_path / "model.pb"
    other.write_bytes(b"abc")
    assert_one_line_error(run("profile", str(other)), "unknown model format")


def test_truncated_onnx(tmp_path):
    data = tiny_residual().SerializeToString()
    bad = tmp_path / "cut.onnx"
    bad.write_bytes(data[: len(data) // 2])
    assert_one_line_error(run("profile", str(bad)), "cut.onnx")


@pytest.mark.parametrize("cut", [0.02, 0.5])
def test_truncated_tflite(tmp_path, mlperf_paths, cut):
    data = mlperf_paths["kws_int8"].read_bytes()
    bad = tmp_path / "cut.tflite"
    bad.write_bytes(data[: int(len(data) * cut)])
    assert_one_line_error(run("profile", str(bad)), "cut.tflite")


def test_unsupported_onnx_op(tmp_path):
    from onnx import TensorProto, helper

    node = helper.make_node("NoSuchOp", ["input"], ["output"], name="weird_node", domain="")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 4])])
    path = tmp_path / "weird.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    assert_one_line_error(run("profile", str(path)), "NoSuchOp", "weird_node")


def test_unknown_zoo_name():
    assert_one_line_error(run("profile", "zoo:no-such-net"), "no-such-net")


@pytest.mark.parametrize("argv", [["profile", "M", "--split", "3", "--patches", "0"],
                                  ["verify", "M", "--split", "3", "--patches", "-1"],
                                  ["build", "M", "--split", "3", "--patches", "0"],
                                  ["tune", "M", "--board", "h743", "--split", "3", "--db", "DB", "--patches", "0"]])
def test_patch_count_below_one_is_refused_alike(argv, tmp_path, capsys):
    """Every command's --patches is checked by the parser, with one message, before any work (no --db made)."""
    argv = [str(tmp_path / "DB") if a == "DB" else a for a in argv]
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith(
        f"error: argument --patches: {argv[-1]}: give at least 1 patch per side")
    assert not (tmp_path / "DB").exists()


def test_no_command_prints_help():
    proc = run()
    assert proc.returncode == 2 and "usage" in proc.stdout.lower()


def test_verify_reference_tflm(mlperf_paths):
    proc = run("verify", str(mlperf_paths["kws_int8"]), "--reference", "tflm", "--inputs", "3")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith("PASS") and "100.00% of" in proc.stdout


def test_verify_patches_int8_qdq():
    """An int8 QDQ ONNX model: lowered by LowerToInteger, then patched vs unpatched bit for bit, with the
    split numbered as `tvm-patch profile` numbers the imported model."""
    proc = run("verify", "zoo:mbv2-w0.3-r80:int8", "--patches", "2", "--split", "block:3", "--inputs", "1")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith("PASS") and "largest difference 0 " in proc.stdout
    assert "bit-exact (both after LowerToInteger)" in proc.stdout
    # a split inside a residual block: one line naming the largest valid split, as `profile --patches` does
    assert_one_line_error(run("verify", "zoo:mbv2-w0.3-r80:int8", "--patches", "2", "--split", "8"),
                          "split 8", "inside a residual block", "largest valid split is 62 (layer b19.1")


def test_verify_needs_a_mode(mlperf_paths):
    assert_one_line_error(run("verify", str(mlperf_paths["kws_int8"])), "--patches", "--reference")
    assert_one_line_error(run("verify", str(mlperf_paths["kws_int8"]), "--reference", "onnxruntime"), "ONNX")


def test_build_int8_tflite_is_integer_and_bit_exact(tmp_path, mlperf_paths):
    import json as _json

    out = tmp_path / "kws"
    proc = run("build", str(mlperf_paths["kws_int8"]), "-o", str(out), "--check", "--json")
    assert proc.returncode == 0, proc.stderr
    result = _json.loads(proc.stdout)
    assert result["check"]["passed"] and result["tflm_arena_head_bytes"] == 16000
    assert result["analytic_peak_bytes"] == 16000  # 25x5x64 in + out, as imported
    header = (out / "tvmp_model.h").read_text()
    assert f"#define TVMP_ARENA_BYTES {result['arena_bytes']}u" in header
    model_c = (out / "model.c").read_text()
    # integer-only: LowerToInteger ran before the export (the micro-kernel header, pasted in whole, has a float
    # input's quantization, which no kernel here calls)
    from tvm_patch.codegen.c_kernels import MICRO_KERNELS

    assert MICRO_KERNELS.read_text() in model_c
    assert "float" not in model_c.replace(MICRO_KERNELS.read_text(), "")
    assert "malloc" not in model_c and "#include <tvm" not in model_c and "TVMFFI" not in model_c


def test_profile_auto_split_says_what_it_chose(mlperf_paths):
    """`profile --split auto` resolves the split PatchStage would pick (on the lowered module for int8
    models) and says so; a network no stage helps is one line saying auto keeps it layer by layer."""
    proc = run("profile", str(mlperf_paths["vww_96_int8"]), "--patches", "4", "--split", "auto", "--json")
    assert proc.returncode == 0, proc.stderr
    pb = json.loads(proc.stdout)["patch_based"]
    assert pb["split"] == 8 and pb["peak_bytes"] == 18432
    assert pb["split_choice"].startswith("auto: the fewest MACs")
    table = run("profile", str(mlperf_paths["vww_96_int8"]), "--patches", "4", "--split", "auto")
    assert "split auto: the fewest MACs among the splits whose peak is within 10% of the smallest: layer 8" in table.stdout
    assert_one_line_error(run("profile", str(mlperf_paths["kws_int8"]), "--patches", "4", "--split", "auto"),
                          "split auto", "layer by layer")
