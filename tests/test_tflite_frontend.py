"""The extended TFLite frontend (tvm_patch.frontend.tflite_ext) against TFLite Micro on small int8 fixtures.

Fixtures: tests/fixtures/tflite/*.tflite, made by make_fixtures.py (TensorFlow in a separate venv; see its
docstring). Reference outputs come from tflite-micro's host interpreter, run here on seeded int8 inputs.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
import tvm
from tvm import relax

from tvm_patch.errors import TvmPatchError, UnsupportedOpError
from tvm_patch.frontend.tflite_ext import SUPPORTED_INT8_OPS, tflite_to_relax

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "tflite"

# fixture -> TFLite builtin ops it must contain (the op under test first)
EXPECTED_OPS: dict[str, set[str]] = {
    "conv2d_3x3_s1_relu6": {"CONV_2D"},
    "conv2d_3x3_s2_relu6": {"CONV_2D"},
    "depthwise_3x3_s2": {"DEPTHWISE_CONV_2D"},
    "dense": {"FULLY_CONNECTED"},
    "add": {"ADD", "CONV_2D"},
    "add_relu6": {"ADD", "CONV_2D"},
    "avg_pool": {"AVERAGE_POOL_2D"},
    "mean": {"MEAN"},
    "mul_se": {"MUL", "MEAN", "LOGISTIC", "CONV_2D"},
    "pad": {"PAD"},
    "max_pool": {"MAX_POOL_2D"},
    "concat": {"CONCATENATION", "MAX_POOL_2D"},
    "reshape": {"RESHAPE"},
    "transpose": {"TRANSPOSE"},
    "resize_nearest_x2": {"RESIZE_NEAREST_NEIGHBOR"},
    "resize_nearest_align_corners": {"RESIZE_NEAREST_NEIGHBOR"},
    "resize_nearest_half_pixel": {"RESIZE_NEAREST_NEIGHBOR"},
    "logistic": {"LOGISTIC"},
    "softmax": {"SOFTMAX"},
    "hard_swish": {"HARD_SWISH"},
    "mini_mcunet": {"PAD", "DEPTHWISE_CONV_2D", "TRANSPOSE", "CONV_2D", "ADD", "RESHAPE", "FULLY_CONNECTED"},
}
# Only int8 data movement: must equal TFLite Micro bit for bit.
DATA_MOVEMENT = [
    "pad", "transpose", "reshape", "resize_nearest_x2", "resize_nearest_align_corners",
    "resize_nearest_half_pixel", "max_pool", "concat",
]
# dequantize -> float op -> quantize chains: within one quantization step of TFLite Micro.
FLOAT_CHAIN = [name for name in EXPECTED_OPS if name not in DATA_MOVEMENT]
# Smallest share of outputs that must be bit-exact (catches systematic rounding errors such as TVM's own
# truncating int8 AVERAGE_POOL_2D, which matches only about half of TFLite's outputs on avg_pool).
MIN_EXACT_SHARE = {"mini_mcunet": 0.6}
DEFAULT_MIN_EXACT_SHARE = 0.75
# Ops TVM 0.27 refuses in int8 models; fixtures that contain them.
STOCK_REFUSED = ["pad", "transpose", "resize_nearest_x2", "mini_mcunet"]
N_INPUTS = 5
ARENA = 256 * 1024


def _path(name: str) -> Path:
    return FIXTURES / f"{name}.tflite"


def _op_names(data: bytes) -> list[str]:
    """Builtin op names of subgraph 0, in order, read with the `tflite` flatbuffer package."""
    import tflite
    from tflite.BuiltinOperator import BuiltinOperator

    names = {v: k for k, v in vars(BuiltinOperator).items() if not k.startswith("_")}
    model = tflite.Model.GetRootAsModel(data, 0)
    sg = model.Subgraphs(0)
    out = []
    for i in range(sg.OperatorsLength()):
        code = model.OperatorCodes(sg.Operators(i).OpcodeIndex())
        out.append(names[max(code.BuiltinCode(), code.DeprecatedBuiltinCode())])
    return out


@functools.cache
def _import(name: str) -> tvm.IRModule:
    return tflite_to_relax(_path(name).read_bytes(), str(_path(name)))


@functools.cache
def _inputs_and_reference(name: str) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """N_INPUTS seeded random int8 inputs and TFLite Micro's outputs for them."""
    from tflite_micro.python.tflite_micro import runtime

    interp = runtime.Interpreter.from_file(str(_path(name)), arena_size=ARENA)
    detail = interp.get_input_details(0)
    assert detail["dtype"] == np.int8
    rng = np.random.default_rng(20240611)
    xs = [rng.integers(-128, 128, size=tuple(detail["shape"]), dtype=np.int8) for _ in range(N_INPUTS)]
    refs = []
    for x in xs:
        interp.set_input(x, 0)
        interp.invoke()
        refs.append(np.array(interp.get_output(0), copy=True))
    return xs, refs


def _run_tvm(name: str, xs: list[np.ndarray]) -> list[np.ndarray]:
    # tvm.compile(mod, target={"kind": "llvm"}) with a plain dict fails in TVM 0.27's relax.build
    # ("gpu" in target.keys); a Target built from the same JSON dict works.
    ex = tvm.compile(_import(name), target=tvm.target.Target({"kind": "llvm"}))
    vm = relax.VirtualMachine(ex, tvm.cpu())
    return [vm["main"](tvm.runtime.tensor(x)).numpy() for x in xs]


def _compare(name: str) -> np.ndarray:
    """Element-wise TVM minus TFLite Micro (int32) over all seeded inputs; also checks shapes and dtype."""
    xs, refs = _inputs_and_reference(name)
    outs = _run_tvm(name, xs)
    for out, ref in zip(outs, refs):
        assert out.dtype == np.int8 and ref.dtype == np.int8
        assert out.shape == ref.shape
    return np.concatenate([(o.astype(np.int32) - r.astype(np.int32)).ravel() for o, r in zip(outs, refs)])


# --------------------------------------------------------------------------------------------- fixtures


def test_fixture_set_is_complete() -> None:
    on_disk = {p.stem for p in FIXTURES.glob("*.tflite")}
    assert on_disk == set(EXPECTED_OPS)


@pytest.mark.parametrize("name", sorted(EXPECTED_OPS))
def test_fixture_is_small_full_int8_with_its_op(name: str) -> None:
    data = _path(name).read_bytes()
    assert len(data) <= 16 * 1024
    ops = _op_names(data)
    assert EXPECTED_OPS[name] <= set(ops), ops
    assert not {"QUANTIZE", "DEQUANTIZE"} & set(ops), "full-int8 fixtures take and give int8 directly"
    from tflite_micro.python.tflite_micro import runtime

    interp = runtime.Interpreter.from_file(str(_path(name)), arena_size=ARENA)
    assert interp.get_input_details(0)["dtype"] == np.int8
    assert interp.get_output_details(0)["dtype"] == np.int8


# --------------------------------------------------------------------------------------------- import


@pytest.mark.parametrize("name", sorted(EXPECTED_OPS))
def test_fixture_imports_with_int8_interface(name: str) -> None:
    mod = _import(name)
    main = mod["main"]
    assert len(main.params) == 1
    assert main.params[0].ty.dtype == "int8"
    assert main.ret_ty.dtype == "int8"


def _mlperf_models() -> list[Path]:
    from tvm_patch.paths import shared_models_dir

    try:
        return sorted((shared_models_dir() / "mlperf_tiny").glob("*.tflite"))
    except TvmPatchError:
        return []


@pytest.mark.parametrize("path", _mlperf_models(), ids=lambda p: p.stem)
def test_mlperf_tiny_model_imports(path: Path) -> None:
    mod = tflite_to_relax(path.read_bytes(), str(path))
    assert mod["main"].params[0].ty.dtype == "int8"


def test_mlperf_tiny_models_present() -> None:
    models = _mlperf_models()
    if not models:
        pytest.skip("shared models folder not found (set TVM_PATCH_SHARED_MODELS)")
    assert {p.stem for p in models} >= {"vww_96_int8", "resnet8_int8", "kws_int8"}


def test_stock_tvm_refuses_what_the_extension_imports() -> None:
    """TVM 0.27's own converter rejects quantized PAD/TRANSPOSE/RESIZE_NEAREST_NEIGHBOR: the extension is needed."""
    import tflite
    from tvm.relax.frontend.tflite import from_tflite

    refused = []
    for name in STOCK_REFUSED:
        data = _path(name).read_bytes()
        try:
            from_tflite(tflite.Model.GetRootAsModel(data, 0))
        except tvm.error.OpNotImplemented:
            refused.append(name)
        assert isinstance(_import(name), tvm.IRModule)
    assert refused, "stock TVM imported every fixture: the extension may no longer be needed"


# --------------------------------------------------------------------------------------------- Relax forms


def _bindings(mod: tvm.IRModule) -> dict[relax.Var, relax.Expr]:
    return {b.var: b.value for block in mod["main"].body.blocks for b in block.bindings}


def _op_name(expr: relax.Expr) -> str | None:
    return expr.op.name if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op) else None


def _call_ops(mod: tvm.IRModule) -> list[str]:
    return [n for v in _bindings(mod).values() if (n := _op_name(v))]


@pytest.mark.parametrize("name", DATA_MOVEMENT)
def test_data_movement_stays_int8(name: str) -> None:
    mod = _import(name)
    ops = _call_ops(mod)
    assert ops
    assert not {"relax.quantize", "relax.dequantize"} & set(ops), ops
    for var in _bindings(mod):
        assert var.ty.dtype == "int8", (var.name, var.ty)


def test_pad_fills_with_output_zero_point() -> None:
    import tflite

    data = _path("pad").read_bytes()
    sg = tflite.Model.GetRootAsModel(data, 0).Subgraphs(0)
    out_zp = int(sg.Tensors(sg.Outputs(0)).Quantization().ZeroPointAsNumpy()[0])
    pads = [v for v in _bindings(_import("pad")).values() if _op_name(v) == "relax.nn.pad"]
    assert len(pads) == 1
    assert float(pads[0].attrs.pad_value) == float(out_zp)


# Fixture -> float op of the chain that produces the model output.
OUTPUT_CHAIN_OP = {
    "add": "relax.add",
    "add_relu6": "relax.add",
    "avg_pool": "relax.nn.avg_pool2d",
    "mean": "relax.mean",
    "mul_se": "relax.multiply",
    "logistic": "relax.sigmoid",
    "softmax": "relax.nn.softmax",
    "hard_swish": "relax.call_tir",
}


@pytest.mark.parametrize("name", sorted(OUTPUT_CHAIN_OP))
def test_arithmetic_is_a_clean_dequantize_op_quantize_chain(name: str) -> None:
    """Output = quantize(op(dequantize(int8), ...)) [-> int8 clip for a fused activation]: one float op,
    each tensor input a dequantize of int8."""
    mod = _import(name)
    bind = _bindings(mod)
    out = mod["main"].body.body
    while isinstance(out, relax.Var) and out in bind and isinstance(bind[out], relax.Var):
        out = bind[out]
    q = bind[out]
    if _op_name(q) == "relax.clip":
        q = bind[q.args[0]]
    assert _op_name(q) == "relax.quantize"
    assert q.ty.dtype == "int8"
    op = bind[q.args[0]]
    assert _op_name(op) == OUTPUT_CHAIN_OP[name]
    args = op.args[1] if name == "hard_swish" else op.args  # call_tir(func, (args...))
    tensor_args = [a for a in args if isinstance(a, relax.Var)]
    assert tensor_args
    for a in tensor_args:
        dq = bind[a]
        assert _op_name(dq) == "relax.dequantize"
        assert dq.args[0].ty.dtype == "int8"


def test_fused_relu6_is_an_int8_clamp_to_tflite_bounds() -> None:
    """ADD with fused RELU6: quantize, then clip to [zp + round(0/s), zp + round(6/s)] within int8."""
    import tflite

    data = _path("add_relu6").read_bytes()
    sg = tflite.Model.GetRootAsModel(data, 0).Subgraphs(0)
    q = sg.Tensors(sg.Outputs(0)).Quantization()
    scale, zp = float(q.ScaleAsNumpy()[0]), int(q.ZeroPointAsNumpy()[0])
    lo, hi = max(-128, zp), min(127, zp + int(np.floor(6.0 / np.float32(scale) + 0.5)))
    mod = _import("add_relu6")
    bind = _bindings(mod)
    clip = bind[mod["main"].body.body]
    assert _op_name(clip) == "relax.clip"
    assert _op_name(bind[clip.args[0]]) == "relax.quantize"
    assert (int(clip.args[1].value), int(clip.args[2].value)) == (lo, hi)


# --------------------------------------------------------------------------------------------- numerics


@pytest.mark.parametrize("name", DATA_MOVEMENT)
def test_data_movement_bit_exact_vs_tflite_micro(name: str) -> None:
    diff = _compare(name)
    assert np.count_nonzero(diff) == 0, f"{np.count_nonzero(diff)} of {diff.size} outputs differ"


@pytest.mark.parametrize("name", FLOAT_CHAIN)
def test_float_chain_within_one_step_of_tflite_micro(name: str, record_property) -> None:
    diff = _compare(name)
    exact = float(np.mean(diff == 0))
    record_property("exact_share", exact)
    print(f"{name}: max |diff| {np.abs(diff).max()}, exactly equal {exact:.2%} of {diff.size}")
    assert np.abs(diff).max() <= 1
    assert exact >= MIN_EXACT_SHARE.get(name, DEFAULT_MIN_EXACT_SHARE)


# --------------------------------------------------------------------------------------------- errors


def _assert_one_line(err: BaseException, where: str) -> None:
    msg = str(err)
    assert "\n" not in msg and msg.startswith(f"{where}: "), msg


@pytest.mark.parametrize("cut", ["half", "quarter", "minus1", "minus7", "header"])
def test_truncated_file_is_a_one_line_error(cut: str) -> None:
    data = _path("mini_mcunet").read_bytes()
    n = {"half": len(data) // 2, "quarter": len(data) // 4, "minus1": len(data) - 1,
         "minus7": len(data) - 7, "header": 6}[cut]
    with pytest.raises(TvmPatchError) as ei:
        tflite_to_relax(data[:n], "cut.tflite")
    assert not isinstance(ei.value, UnsupportedOpError)
    _assert_one_line(ei.value, "cut.tflite")


@pytest.mark.parametrize("kind", ["empty", "garbage", "garbage_with_identifier", "bad_root_offset", "zeroed_middle"])
def test_corrupt_file_is_a_one_line_error(kind: str) -> None:
    data = _path("conv2d_3x3_s1_relu6").read_bytes()
    rng = np.random.default_rng(3)
    if kind == "empty":
        bad = b""
    elif kind == "garbage":
        bad = rng.integers(0, 256, size=2000, dtype=np.uint8).tobytes()
    elif kind == "garbage_with_identifier":
        bad = rng.integers(0, 256, size=4, dtype=np.uint8).tobytes() + b"TFL3" + bytes(1500)
    elif kind == "bad_root_offset":
        bad = (len(data) + 1000).to_bytes(4, "little") + data[4:]
    else:  # the tables in the first part of the file wiped
        bad = data[:8] + bytes(len(data) // 2) + data[8 + len(data) // 2:]
    with pytest.raises(TvmPatchError) as ei:
        tflite_to_relax(bad, "bad.tflite")
    _assert_one_line(ei.value, "bad.tflite")


def _with_builtin(data: bytes, old: str, new: str) -> bytes:
    """The model with every use of builtin `old` relabelled as builtin `new` (same tensors, same options)."""
    import tflite
    from tflite.BuiltinOperator import BuiltinOperator

    old_code, new_code = getattr(BuiltinOperator, old), getattr(BuiltinOperator, new)
    assert new_code < 127
    model = tflite.Model.GetRootAsModel(data, 0)
    buf = bytearray(data)
    hits = 0
    for i in range(model.OperatorCodesLength()):
        oc = model.OperatorCodes(i)
        if max(oc.BuiltinCode(), oc.DeprecatedBuiltinCode()) != old_code:
            continue
        for vt_offset, width in ((4, 1), (10, 4)):  # deprecated_builtin_code: int8, builtin_code: int32
            field = oc._tab.Offset(vt_offset)
            if field:
                pos = oc._tab.Pos + field
                buf[pos:pos + width] = new_code.to_bytes(width, "little", signed=True)
                hits += 1
    assert hits
    return bytes(buf)


def test_unsupported_int8_op_names_op_and_index() -> None:
    data = _path("mini_mcunet").read_bytes()
    index = _op_names(data).index("TRANSPOSE")
    patched = _with_builtin(data, "TRANSPOSE", "REVERSE_V2")
    assert "REVERSE_V2" not in SUPPORTED_INT8_OPS
    assert _op_names(patched)[index] == "REVERSE_V2"
    with pytest.raises(UnsupportedOpError) as ei:
        tflite_to_relax(patched, "model.tflite")
    _assert_one_line(ei.value, "model.tflite")
    assert f"unsupported TFLite operator REVERSE_V2 (operator #{index} in subgraph 0)" in str(ei.value)
