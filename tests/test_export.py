"""Whole network as plain C over one static arena: bit-exact against TVM, valid plans, clean errors.

Fast tests use small Relax modules built here, the single-op TFLite fixtures and one MLPerf Tiny model;
the zoo models and the other shared .tflite models are slow (each needs a full tvm.compile and gcc build).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import tvm
from tvm import relax, topi

from relay_passes import lower_to_integer
from tvm_patch.errors import TvmPatchError
from tvm_patch.export import export_model, lower_module
from tvm_patch.export.inplace import inplace_pairs
from tvm_patch.export.lower import Arg, _c_name
from tvm_patch.export.prefold import prefold_constants
from tvm_patch.export.schedule import lean_schedule
from tvm_patch.frontend import load
from tvm_patch.memplan import lower_bound, validate
from tvm_patch.codegen.c_kernels import C_TARGET, lower_plain

from onnx_graphs import tiny_residual

FIXTURES = Path(__file__).parent / "fixtures" / "tflite"
ARM_GCC = shutil.which("arm-none-eabi-gcc")
ARM_NM = shutil.which("arm-none-eabi-nm")
# arm_acle.h: the compiler's ACLE intrinsics, included by the micro-kernels only on cores with the DSP extension
STD_HEADERS = {"stdint.h", "string.h", "math.h", "stdbool.h", "tvmp_model.h", "tvmp_kernels.h", "arm_acle.h"}


# ---------------------------------------------------------------- small Relax modules


def _const(rng: np.random.Generator, shape: tuple[int, ...], dtype: str = "float32", scale: float = 0.3) -> relax.Expr:
    if dtype == "int8":
        return relax.const(rng.integers(-128, 128, size=shape, dtype=np.int8))
    if dtype == "int32":
        return relax.const(rng.integers(-(2**12), 2**12, size=shape, dtype=np.int32))
    return relax.const((rng.standard_normal(shape) * scale).astype(dtype))


def residual_f32() -> tvm.IRModule:
    """conv3x3+relu -> conv3x3 -> + input (residual, the input dies there) -> reshape -> dense."""
    rng = np.random.default_rng(0)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 8, 10, 10), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            c1 = bb.emit(relax.op.nn.conv2d(x, _const(rng, (8, 8, 3, 3)), padding=1))
            r1 = bb.emit(relax.op.nn.relu(relax.op.add(c1, _const(rng, (1, 8, 1, 1)))))
            c2 = bb.emit(relax.op.nn.conv2d(r1, _const(rng, (8, 8, 3, 3)), padding=1))
            a = bb.emit(relax.op.add(c2, x))
            f = bb.emit(relax.op.reshape(a, (1, 800)))
            d = bb.emit(relax.op.matmul(f, _const(rng, (800, 10), scale=0.05)))
            gv = bb.emit_output(d)
        bb.emit_func_output(gv)
    return bb.get()


def conv_int8() -> tvm.IRModule:
    """int8 conv (int32 accumulation) -> fixed-point requantization -> clip -> int8, twice, then a view."""
    rng = np.random.default_rng(1)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 6, 12, 12), "int8"))
    with bb.function("main", [x]):
        with bb.dataflow():
            h = x
            for cin, cout, stride in ((6, 16, 2), (16, 16, 1)):
                acc = bb.emit(relax.op.nn.conv2d(h, _const(rng, (cout, cin, 3, 3), "int8"), strides=stride, padding=1,
                                                 out_dtype="int32"))
                acc = bb.emit(relax.op.add(acc, _const(rng, (1, cout, 1, 1), "int32")))
                q = bb.emit_te(topi.fixed_point_multiply, acc, 1518500250, -9)
                h = bb.emit(relax.op.astype(relax.op.clip(q, -128, 127), "int8"))
            gv = bb.emit_output(bb.emit(relax.op.reshape(h, (1, 16 * 36))))
        bb.emit_func_output(gv)
    return bb.get()


def conv_then_pad_int8() -> tvm.IRModule:
    """int8 1x1 conv -> requantize -> clip -> int8 -> pad bottom/right (a stride-2 layer's input, as
    LowerToInteger writes it): FuseOps puts the pad, whose domain is larger, at the end of the conv kernel."""
    rng = np.random.default_rng(4)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 10, 10, 8), "int8"))
    with bb.function("main", [x]):
        with bb.dataflow():
            acc = bb.emit(relax.op.nn.conv2d(x, _const(rng, (1, 1, 8, 16), "int8"), data_layout="NHWC",
                                             kernel_layout="HWIO", out_dtype="int32"))
            q = bb.emit_te(topi.fixed_point_multiply, acc, 1518500250, -7)
            y = bb.emit(relax.op.astype(relax.op.clip(q, -128, 127), "int8"))
            gv = bb.emit_output(relax.op.nn.pad(y, [0, 0, 0, 1, 0, 1, 0, 0], pad_value=-128.0))
        bb.emit_func_output(gv)
    return bb.get()


def two_outputs() -> tvm.IRModule:
    """Two inputs, a tuple of two outputs (one of them a view)."""
    rng = np.random.default_rng(2)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 4, 6, 6), "float32"))
    y = relax.Var("y", relax.TensorType((1, 4, 6, 6), "float32"))
    with bb.function("main", [x, y]):
        with bb.dataflow():
            s = bb.emit(relax.op.multiply(relax.op.add(x, y), _const(rng, (1, 4, 1, 1))))
            p = bb.emit(relax.op.nn.max_pool2d(s, pool_size=(2, 2), strides=(2, 2)))
            m = bb.emit(relax.op.mean(s, axis=[2, 3]))
            gv = bb.emit_output(relax.Tuple([p, m]))
        bb.emit_func_output(gv)
    return bb.get()


def _assert_plain_c(out: Path) -> None:
    """No TVM header or runtime call, no allocator, only standard headers."""
    for name in ("model.c", "tvmp_model.h", "main.c"):
        text = re.sub(r"/\*.*?\*/", "", (out / name).read_text(), flags=re.S)  # code, not comments
        includes = set(re.findall(r'#include [<"]([^>"]+)[>"]', text))
        allowed = STD_HEADERS | ({"stdio.h"} if name == "main.c" else set())
        assert includes <= allowed, (name, includes - allowed)
        assert not re.search(r"\b(malloc|calloc|realloc|free|alloca)\s*\(", text), name
        assert not re.search(r"\b(TVM(?!P_)\w*|DLTensor|__tvm\w*|tvm_ffi\w*)\b", text), name  # TVMP_: ours


def _arena_decl(out: Path) -> int:
    m = re.search(r"static uint8_t tvmp_arena\[(\d+)\] __attribute__\(\(aligned\(16\)\)\) TVMP_ARENA_ATTRIBUTES;", (out / "model.c").read_text())
    assert m, "one static, 16-aligned arena"
    return int(m.group(1))


def _check_result(result, out: Path) -> None:
    assert result.check is not None and result.check.passed, result.check.summary()
    assert result.check.bit_exact, result.check.summary()
    ap = result.arena_plan
    validate(ap.plan, ap.buffers)
    assert result.arena_bytes >= result.lower_bound_bytes == lower_bound(ap.buffers, ap.plan.hints)
    header = (out / "tvmp_model.h").read_text()
    assert f"#define TVMP_ARENA_BYTES {result.arena_bytes}u" in header
    assert _arena_decl(out) == max(result.arena_bytes, 1)
    assert json.loads((out / "tvmp_export.json").read_text())["arena_bytes"] == result.arena_bytes
    _assert_plain_c(out)


# ---------------------------------------------------------------- bit-exact builds


@pytest.mark.parametrize("make", [residual_f32, conv_int8, conv_then_pad_int8, two_outputs], ids=lambda f: f.__name__)
def test_small_modules_bit_exact(make, tmp_path):
    out = tmp_path / "out"
    result = export_model(make(), out, check=True, seeds=(0, 1))
    _check_result(result, out)
    assert (out / "model_host").exists()
    # every stored tensor and every workspace is in the arena, nowhere else
    assert set(result.arena_plan.tensor_offsets) == {t.index for t in result.program.tensors}


def test_residual_add_runs_in_place(tmp_path):
    result = export_model(residual_f32(), tmp_path / "out", check=True, seeds=(0,))
    assert result.check.bit_exact
    prog, ap = result.program, result.arena_plan
    assert ap.plan.aliases, "the residual add may write over the input that dies there"
    (k,) = ap.inplace_calls
    call = prog.calls[k]
    src = {a.index for a in call.inputs if a.kind == "tensor"}
    dst = call.outputs[0].index
    assert any(ap.tensor_offsets[s] == ap.tensor_offsets[dst] for s in src)
    # that kernel's overlapping input and output are emitted without restrict; its other params (another
    # input, constants) and the other kernels keep it (codegen.c_kernels.mark_in_place)
    code = (tmp_path / "out" / "model.c").read_text()
    decls = re.search(r"void " + call.func + r"\(([^)]*)\)", code).group(1).split(", ")
    assert "restrict" not in decls[-1] and sum("restrict" not in d for d in decls) == 2
    assert code.count("*restrict") > 0


def test_inputs_outside_arena(tmp_path):
    out = tmp_path / "out"
    inside = export_model(residual_f32(), tmp_path / "in", seeds=(0,))
    result = export_model(residual_f32(), out, check=True, seeds=(0,), io_in_arena=False)
    placed = result.arena_plan.tensor_offsets
    assert result.program.inputs[0].tensor not in placed
    assert result.program.outputs[0].tensor not in placed
    assert result.check.bit_exact
    validate(result.arena_plan.plan, result.arena_plan.buffers)
    assert result.arena_bytes <= inside.arena_bytes
    assert "memcpy" not in (out / "model.c").read_text().split("int tvmp_run")[1]


def test_lean_schedule_shrinks_workspace():
    prog = lower_module(residual_f32())
    name = next(c.func for c in prog.calls if "conv2d" in c.func)
    func = prog.funcs[name]
    _, before = lower_plain({name: func}, C_TARGET)
    _, after = lower_plain({name: lean_schedule(func)}, C_TARGET)
    conv_out = 1 * 8 * 10 * 10 * 4
    assert before[name].workspace_bytes >= conv_out  # padded input and conv accumulator as full buffers
    assert after[name].workspace_bytes <= 16  # one accumulator


def test_lean_schedule_keeps_a_trailing_pad_exact():
    """The pad after the epilogue must not move under the convolution's loops (its border would be lost)."""
    prog = lower_module(conv_then_pad_int8())
    (call,) = prog.calls
    func = prog.funcs[call.func]
    rng = np.random.default_rng(5)
    arrays = []
    for a, p in zip(call.args, func.params):
        shape = tuple(int(d) for d in p.shape)
        arrays.append(prog.constants[a.index].reshape(shape) if a.kind == "const"
                      else rng.integers(-128, 128, size=shape, dtype=np.int8))

    def run(f: tvm.tirx.PrimFunc) -> np.ndarray:
        ex = tvm.compile(tvm.IRModule({"main": f.with_attr("global_symbol", "main")}), target=tvm.target.Target({"kind": "llvm"}))
        ts = [tvm.runtime.tensor(np.ascontiguousarray(x)) for x in arrays]
        ex(*ts)
        return ts[-1].numpy()

    lean = lean_schedule(func)
    assert np.array_equal(run(func), run(lean))
    _, infos = lower_plain({call.func: lean}, C_TARGET)
    assert infos[call.func].workspace_bytes <= 10 * 10 * 16 + 16  # the int8 epilogue tensor + one accumulator


def test_inplace_analysis():
    prog = lower_module(residual_f32())
    funcs = {n: lean_schedule(f) for n, f in prog.funcs.items()}
    by_func = {c.func: c for c in prog.calls}
    found = {n: inplace_pairs(f, by_func[n].n_outputs) for n, f in funcs.items()}
    x = prog.inputs[0].tensor
    # the second conv with the residual add fused at its end: its output may replace the input x ...
    (res,) = [c for c in prog.calls if sum(a.kind == "tensor" for a in c.inputs) == 2]
    xi = [i for i, a in enumerate(res.args) if a == Arg("tensor", x)]
    assert found[res.func] == [(xi[0], len(res.args) - 1)]
    # ... but never the tensors a convolution or a dense layer reads at other indices
    for call in prog.calls:
        for si, oi in found[call.func]:
            assert call.args[si] == Arg("tensor", x) and si < len(call.inputs) <= oi
    matmul = next(n for n in funcs if "matmul" in n)
    assert found[matmul] == []


def test_views_are_free(tmp_path):
    prog = lower_module(conv_int8())
    assert len(prog.calls) == 2, [c.func for c in prog.calls]  # the reshape is a view, no kernel
    assert prog.outputs[0].shape == (1, 576) and prog.tensors[prog.outputs[0].tensor].shape == (1, 16, 6, 6)


def _call_tir_constants(mod: tvm.IRModule) -> list[np.ndarray]:
    out = []
    for block in mod["main"].body.blocks:
        for b in block.bindings:
            v = b.value
            if isinstance(v, relax.Call) and isinstance(v.op, tvm.ir.Op) and v.op.name == "relax.call_tir":
                out += [f.value.numpy() for f in v.args[1].fields if isinstance(f, tvm.ir.expr.Constant)]
    return out


def test_prefold_matches_fold_constant(tmp_path):
    """The numpy pre-fold gives the very constants TVM's FoldConstant computes, and leaves no weight op."""
    rng = np.random.default_rng(3)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 3, 8, 8), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            w = bb.emit(relax.op.dequantize(_const(rng, (4, 3, 3, 3), "int8"), _const(rng, (4,), scale=0.01),
                                            relax.const(rng.integers(-3, 3, size=4, dtype=np.int8)), axis=0))
            wt = bb.emit(relax.op.permute_dims(relax.op.permute_dims(w, [1, 0, 2, 3]), [1, 0, 2, 3]))
            c = bb.emit(relax.op.nn.conv2d(x, wt, padding=1))
            bias = bb.emit(relax.op.reshape(_const(rng, (4,)), (1, 4, 1, 1)))
            lo = bb.emit(relax.op.where(relax.op.isnan(relax.const(0.0)), relax.const(-np.inf), relax.const(0.0)))
            gv = bb.emit_output(relax.op.maximum(relax.op.add(c, bias), lo))
        bb.emit_func_output(gv)
    mod = bb.get()
    # scalars differ in form only: folded before legalization they become immediates in the kernel
    ours = [c for c in _call_tir_constants(lower_module(mod).fused_mod) if c.ndim]
    tvms = [c for c in _call_tir_constants(relax.get_pipeline("zero")(mod)) if c.ndim]
    assert len(ours) == len(tvms) == 2
    for a, b in zip(ours, tvms):
        assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
    folded = prefold_constants(mod)["main"].script()
    for op in ("R.dequantize", "R.permute_dims", "R.isnan", "R.where", "R.reshape"):
        assert op not in folded
    result = export_model(mod, tmp_path / "out", check=True, seeds=(0,))
    assert result.check.bit_exact


def test_kernel_names_stay_clear_of_the_driver():
    taken: set[str] = set()
    names = [_c_name(n, taken) for n in ("run", "arena", "c0", "conv", "conv", "fused.add")]
    assert names == ["tvmp_run_kernel", "tvmp_arena_kernel", "tvmp_c0_kernel", "tvmp_conv", "tvmp_conv_1", "tvmp_fused_add"]


# ---------------------------------------------------------------- real models


def _tflite_fixtures() -> list[Path]:
    return sorted(FIXTURES.glob("*.tflite")) if FIXTURES.is_dir() else []


@pytest.mark.parametrize("path", _tflite_fixtures(), ids=lambda p: p.stem)
def test_tflite_single_op_fixtures_bit_exact(path, tmp_path):
    out = tmp_path / "out"
    result = export_model(str(path), out, check=True, seeds=(0,))
    _check_result(result, out)
    assert result.tflm_arena_head_bytes is None or result.tflm_arena_head_bytes > 0


def test_kws_bit_exact_with_baselines(mlperf_paths, tmp_path):
    out = tmp_path / "kws"
    result = export_model(str(mlperf_paths["kws_int8"]), out, check=True, seeds=(0, 1))
    _check_result(result, out)
    largest = max(t.nbytes for t in result.program.tensors)
    assert result.tvm_static_plan_bytes >= largest
    head = result.tflm_arena_head_bytes
    assert head is not None and head >= max(int(np.prod(io.shape)) for io in result.program.inputs)
    assert result.analytic_peak_bytes is not None and result.analytic_peak_bytes > 0
    j = result.to_json()
    assert {"arena_bytes", "analytic_peak_bytes", "lower_bound_bytes", "weights_bytes", "plan",
            "tvm_static_plan_bytes", "tflm_arena_head_bytes"} <= j.keys()
    assert j["plan"] == {"split": None, "patches": None, "split_layers": None, "halo": None, "halo_choice": None}


@pytest.mark.slow
@pytest.mark.parametrize("name", ["vww_96_int8", "resnet8_int8"])
def test_mlperf_tiny_bit_exact(name, mlperf_paths, tmp_path):
    out = tmp_path / name
    result = export_model(str(mlperf_paths[name]), out, check=True, seeds=(0, 1, 2))
    _check_result(result, out)
    assert result.tflm_arena_head_bytes is not None


@pytest.mark.slow
@pytest.mark.parametrize("spec", ["zoo:mcunet-in0", "zoo:mcunet-in0:int8", "zoo:mbv2-w0.3-r80", "zoo:mbv2-w0.3-r80:int8"])
def test_zoo_bit_exact(spec, tmp_path):
    out = tmp_path / "out"
    result = export_model(spec, out, check=True, seeds=(0, 1, 2))
    _check_result(result, out)
    assert result.inplace_calls >= 1  # the inverted residual blocks' adds
    assert result.analytic_peak_bytes is not None and result.arena_bytes >= result.analytic_peak_bytes


@pytest.mark.slow
@pytest.mark.parametrize("name", ["kws_int8", "vww_96_int8", "resnet8_int8"])
def test_after_lower_to_integer_bit_exact(name, mlperf_paths, tmp_path):
    """Whatever ran before: the integer-only module of LowerToInteger exports and stays bit-exact."""
    path = str(mlperf_paths[name])
    mod = lower_to_integer(load(path).mod)
    out = tmp_path / name
    result = export_model(mod, out, check=True, seeds=(0, 1, 2), tflite_path=path)
    _check_result(result, out)
    float_tensors = [t for t in result.program.tensors if t.dtype.startswith("float")]
    assert not float_tensors  # int8 activations between kernels
    assert result.tflm_arena_head_bytes is not None


@pytest.mark.slow
@pytest.mark.skipif(ARM_GCC is None or ARM_NM is None, reason="arm-none-eabi-gcc not installed")
def test_cortex_m7_object_and_driver(tmp_path, mlperf_paths):
    out = tmp_path / "out"
    export_model(str(mlperf_paths["kws_int8"]), out, emit="object")
    flags = ["-mcpu=cortex-m7", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv5-d16", "-O2", "-std=c99", "-Wall", "-Werror",
             "-fno-strict-aliasing", "-ffunction-sections", "-fdata-sections"]
    for src in ("model.c", "model_driver.c"):
        subprocess.run([ARM_GCC, *flags, "-c", str(out / src), "-o", str(tmp_path / (src + ".o"))], check=True,
                       capture_output=True, text=True)
    # the driver plus TVM's thumb object link into one relocatable object with only libc symbols missing
    linked = tmp_path / "net.o"
    subprocess.run([ARM_GCC, "-mcpu=cortex-m7", "-mthumb", "-mfloat-abi=hard", "-nostdlib", "-r", "-o", str(linked),
                    str(tmp_path / "model_driver.c.o"), str(out / "tvmp_kernels_cm7.o")], check=True,
                   capture_output=True, text=True)
    undefined = subprocess.run([ARM_NM, "-u", str(linked)], check=True, capture_output=True, text=True).stdout.split()
    undefined = [u for u in undefined if u != "U"]
    assert not [u for u in undefined if re.search(r"tvm|TVM", u)], undefined  # every kernel resolved, no runtime
    assert "memcpy" in undefined or "__aeabi_memcpy" in undefined  # the driver's copy-in/out: libc only
    assert "tvmp_run" in subprocess.run([ARM_NM, str(linked)], check=True, capture_output=True, text=True).stdout


# ---------------------------------------------------------------- errors


def _no_lowering() -> tvm.IRModule:
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 4), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(relax.call_dps_packed("my_device_kernel", [x], out_ty=relax.TensorType((1, 4), "float32")))
            gv = bb.emit_output(relax.op.nn.relu(y))
        bb.emit_func_output(gv)
    return bb.get()


def _huge() -> tvm.IRModule:
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 1 << 30), "float32"))  # 4 GiB input
    with bb.function("main", [x]):
        with bb.dataflow():
            gv = bb.emit_output(relax.op.sum(x, axis=[1]))
        bb.emit_func_output(gv)
    return bb.get()


def _leftovers(parent: Path) -> list[str]:
    return [p.name for p in parent.iterdir() if p.name.startswith(".")]


def test_error_op_without_lowering(tmp_path):
    with pytest.raises(TvmPatchError, match=r"relax\.call_dps_packed: an op with no lowering to C") as e:
        export_model(_no_lowering(), tmp_path / "out")
    assert "\n" not in str(e.value)
    assert not (tmp_path / "out").exists() and not _leftovers(tmp_path)


def test_error_arena_over_4gb(tmp_path):
    with pytest.raises(TvmPatchError, match="4 GB") as e:
        export_model(_huge(), tmp_path / "out")
    assert "\n" not in str(e.value)
    assert not (tmp_path / "out").exists() and not _leftovers(tmp_path)


def test_error_unwritable_output(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(TvmPatchError, match="cannot write") as e:
        export_model(two_outputs(), blocker / "sub" / "out")
    assert "nothing was left behind" in str(e.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_existing_output_directory(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(TvmPatchError, match="holds files an export did not write"):
        export_model(two_outputs(), out)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    (out / "notes.txt").unlink()
    first = export_model(two_outputs(), out)
    (out / "model.c").write_text("stale")
    second = export_model(two_outputs(), out)  # a previous export is replaced as a whole
    assert (out / "model.c").read_text() != "stale" and second.arena_bytes == first.arena_bytes
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_patch_mode_needs_both(tmp_path):
    with pytest.raises(TvmPatchError, match="both --patches and --split"):
        export_model(two_outputs(), tmp_path / "out", patches=3)
    assert not (tmp_path / "out").exists() and not _leftovers(tmp_path)


@pytest.mark.slow
def test_patch_mode_bit_exact(tmp_path):
    layer = export_model("zoo:mcunet-in0", tmp_path / "layer")
    patch = export_model("zoo:mcunet-in0", tmp_path / "patch", patches=3, split="auto", check=True, seeds=(0, 1))
    _check_result(patch, tmp_path / "patch")
    plan = patch.to_json()["plan"]
    assert plan["split"] == "auto" and plan["patches"] == 3 and plan["split_layers"] >= 1
    assert patch.arena_bytes < layer.arena_bytes


# ---------------------------------------------------------------- CLI


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tvm_patch", *args], capture_output=True, text=True, timeout=900)


def test_cli_build_json_check(tmp_path):
    model = tmp_path / "tiny.onnx"
    onnx.save(tiny_residual(), model)
    out = tmp_path / "out"
    proc = _cli("build", str(model), "--target", "host", "-o", str(out), "--json", "--check")
    assert proc.returncode == 0, proc.stderr
    j = json.loads(proc.stdout)
    for key in ("arena_bytes", "analytic_peak_bytes", "lower_bound_bytes", "weights_bytes", "plan",
                "tvm_static_plan_bytes", "tflm_arena_head_bytes"):
        assert key in j
    assert j["tflm_arena_head_bytes"] is None and j["plan"] == {"split": None, "patches": None, "split_layers": None, "halo": None, "halo_choice": None}
    assert j["check"]["passed"] and j["check"]["bit_exact"]
    assert j["arena_bytes"] >= j["lower_bound_bytes"] > 0
    assert f"#define TVMP_ARENA_BYTES {j['arena_bytes']}u" in (out / "tvmp_model.h").read_text()
    # the Makefile builds the host program by itself, with the project's flags
    subprocess.run(["make", "-s", "-C", str(out), "clean"], check=True)
    make = subprocess.run(["make", "-C", str(out)], capture_output=True, text=True)
    assert make.returncode == 0 and "-O2 -std=c99 -Wall -Werror -fno-strict-aliasing" in make.stdout


def test_cli_build_text(tmp_path):
    model = tmp_path / "tiny.onnx"
    onnx.save(tiny_residual(), model)
    proc = _cli("build", str(model), "-o", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr
    arena = json.loads((tmp_path / "out" / "tvmp_export.json").read_text())["arena_bytes"]
    assert f"arena:               {arena} B" in proc.stdout


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--patches", "2"], "both --patches and --split"),
        (["--emit", "c", "--split", "3"], "both --patches and --split"),
        (["--rounding", "onnxruntime", "--patches", "2", "--split", "3"], "works layer by layer only"),
    ],
)
def test_cli_build_errors(tmp_path, args, needle):
    model = tmp_path / "tiny.onnx"
    onnx.save(tiny_residual(), model)
    proc = _cli("build", str(model), "-o", str(tmp_path / "out"), *args)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert needle in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


def test_export_refuses_a_patch_count_below_one(tmp_path):
    """The library call checks what the command line's parser checks for its users (test_cli)."""
    model = tmp_path / "tiny.onnx"
    onnx.save(tiny_residual(), model)
    with pytest.raises(TvmPatchError, match="--patches must be positive"):
        export_model(str(model), tmp_path / "out", patches=0, split=3)
    assert not (tmp_path / "out").exists()


def test_cli_build_unwritable(tmp_path):
    model = tmp_path / "tiny.onnx"
    onnx.save(tiny_residual(), model)
    (tmp_path / "file").write_text("x")
    proc = _cli("build", str(model), "-o", str(tmp_path / "file" / "out"))
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "cannot write" in proc.stderr


def test_channel_constants_are_packed_per_call(tmp_path, shared_models):
    """pack_channel_constants on kws (its kernels as the C export emits them): each packed kernel reads its bias,
    multiplier and shift from one interleaved parameter in the first one's place (column k of every call's packed
    constant the k-th original array; a tvmp_requant_rbz shift stored as the right shift, the calls then
    tvmp_requant_rbzr), the other parameters and the constants no call reads any more gone, an in-place kernel's
    aliased parameters still the same buffers, the same Flash; the export that packs is bit-exact with TVM."""
    from tvm_patch.names import ALIASED_PARAMS
    from tvm_patch.export.api import nonpositive_shift_requant
    from tvm_patch.export.packed_constants import pack_channel_constants, packable, rbz_shift

    res = export_model(str(shared_models / "mlperf_tiny" / "kws_int8.tflite"), tmp_path / "kws", check=True)
    assert res.check.bit_exact
    prog, funcs = res.program, nonpositive_shift_requant(res.program, res.kernel_funcs)
    packed_prog, packed = pack_channel_constants(prog, funcs)
    groups = {n: packable(f, {p for p in range(len(f.params))
                              if all(c.args[p].kind == "const" for c in prog.calls if c.func == n)})
              for n, f in funcs.items()}
    assert sum(len(g) == 3 for g in groups.values()) >= 3  # the convolutions: bias, multiplier, shift
    right_shifts = 0
    for call, new_call in zip(prog.calls, packed_prog.calls):
        group = groups[call.func]
        assert len(new_call.args) == len(call.args) - max(len(group) - 1, 0)
        if not group:
            assert [packed_prog.constants[a.index].tobytes() if a.kind == "const" else a for a in new_call.args] == \
                [prog.constants[a.index].tobytes() if a.kind == "const" else a for a in call.args]
            continue
        f, g = funcs[call.func], packed[call.func]
        right = rbz_shift(f, group)
        table = packed_prog.constants[new_call.args[group[0]].index].reshape(-1, len(group))
        for k, p in enumerate(group):
            col = prog.constants[call.args[p].index].reshape(-1)
            assert np.array_equal(table[:, k], -col if k == right else col)
        if right is not None:
            assert "tvmp_requant_rbzr" in g.script() and "tvmp_requant_rbz\"" not in g.script()
            assert (table[:, right] >= 1).all() and (table[:, right] <= 31).all()
            right_shifts += 1
        assert len(g.params) == len(f.params) - len(group) + 1
        if ALIASED_PARAMS in (f.attrs or {}):
            keep = [p.name for i, p in enumerate(f.params) if i not in group[1:]]
            assert [f.params[int(i)].name for i in f.attrs[ALIASED_PARAMS]] == \
                [keep[int(i)] for i in g.attrs[ALIASED_PARAMS]]
    assert right_shifts >= 1
    read = {a.index for c in packed_prog.calls for a in c.args if a.kind == "const"}
    assert read == set(range(len(packed_prog.constants)))  # every constant read by some call, none left over
    assert res.weights_bytes == packed_prog.weights_bytes <= prog.weights_bytes  # the same bytes (or fewer: shared)
