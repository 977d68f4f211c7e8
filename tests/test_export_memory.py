"""The export's memory-saving rewrites: pads merged into convolutions, elementwise residual adds fused into
the convolution before them, accumulators as C locals. Each must leave results bit-exact."""

from __future__ import annotations

import re

import numpy as np
import pytest
import tvm
from tvm import relax, te, tirx

from tvm_patch.export import export_model, lower_module
from tvm_patch.export.lower import Arg
from tvm_patch.export.padfuse import merge_pads
from tvm_patch.export.patterns import BROADCAST, ELEMWISE, is_elementwise, mark_elementwise
from tvm_patch.report import profile


def _ops(mod: tvm.IRModule) -> list[str]:
    names = []
    for block in mod["main"].body.blocks:
        for b in block.bindings:
            v = b.value
            if isinstance(v, relax.Call) and isinstance(v.op, tvm.ir.Op):
                names.append(v.op.name)
    return names


def pad_conv_int8(layout: str = "NHWC", pool_too: bool = False) -> tvm.IRModule:
    """An int8 pad with a non-zero pad value (a zero point) before an unpadded 3x3 convolution."""
    rng = np.random.default_rng(3)
    shape = (1, 7, 9, 4) if layout == "NHWC" else (1, 4, 7, 9)
    kshape, klayout = ((3, 3, 4, 6), "HWIO") if layout == "NHWC" else ((6, 4, 3, 3), "OIHW")
    pw = [0, 0, 1, 1, 2, 1, 0, 0] if layout == "NHWC" else [0, 0, 0, 0, 1, 1, 2, 1]
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(shape, "int8"))
    with bb.function("main", [x]):
        with bb.dataflow():
            p = bb.emit(relax.op.nn.pad(x, pw, pad_value=-5.0))
            w = relax.const(rng.integers(-128, 128, size=kshape, dtype=np.int8))
            c = bb.emit(relax.op.nn.conv2d(p, w, strides=(2, 1), data_layout=layout, kernel_layout=klayout,
                                           out_dtype="int32"))
            outs = [c]
            if pool_too:
                outs.append(bb.emit(relax.op.nn.max_pool2d(p, pool_size=(2, 2), layout=layout)))
            gv = bb.emit_output(relax.Tuple(outs) if pool_too else c)
        bb.emit_func_output(gv)
    return bb.get()


@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
def test_pad_merged_into_conv(layout, tmp_path):
    mod = pad_conv_int8(layout)
    merged = merge_pads(mod)
    assert "relax.nn.pad" not in _ops(merged) and "relax.nn.conv2d" not in _ops(merged)
    prog = lower_module(mod)
    assert len(prog.calls) == 1  # no pad kernel, no padded tensor: input -> output
    assert [t.role for t in prog.tensors] == ["input", "output"]
    result = export_model(mod, tmp_path / "out", check=True, seeds=(0, 1))
    assert result.check.bit_exact, result.check.summary()
    assert not result.arena_plan.workspace_offsets  # the padded tensor is nowhere, not even workspace
    assert result.arena_bytes < sum(t.nbytes for t in prog.tensors) + 16  # input + output (aligned)


def test_pad_with_other_readers_is_kept(tmp_path):
    mod = pad_conv_int8("NHWC", pool_too=True)
    merged = merge_pads(mod)
    assert _ops(merged).count("relax.nn.pad") == 1  # still there for the pool
    result = export_model(mod, tmp_path / "out", check=True, seeds=(0,))
    assert result.check.bit_exact, result.check.summary()


def test_non_spatial_pad_is_not_merged():
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 6, 6, 4), "int8"))
    with bb.function("main", [x]):
        with bb.dataflow():
            p = bb.emit(relax.op.nn.pad(x, [0, 0, 1, 1, 1, 1, 0, 2], pad_value=3.0))  # pads channels too
            w = relax.const(np.ones((3, 3, 6, 2), dtype=np.int8))
            gv = bb.emit_output(bb.emit(relax.op.nn.conv2d(p, w, data_layout="NHWC", kernel_layout="HWIO",
                                                            out_dtype="int32")))
        bb.emit_func_output(gv)
    assert "relax.nn.pad" in _ops(merge_pads(bb.get()))


def _prim(fn, *shapes) -> tirx.PrimFunc:
    args = [te.placeholder(s, "int8", name=f"a{i}") for i, s in enumerate(shapes)]
    out = fn(*args)
    return te.create_prim_func([*args, out])


def test_elementwise_with_unit_batch_index():
    shape = (1, 4, 4, 8)
    # reads a[0, h, w, c] while writing y[n, h, w, c]: elementwise, though TVM calls it a broadcast
    add = _prim(lambda a, b: te.compute(shape, lambda n, h, w, c: a[0, h, w, c] + b[n, h, w, c]), shape, shape)
    assert is_elementwise(add)
    bias = _prim(lambda a, b: te.compute(shape, lambda n, h, w, c: a[n, h, w, c] + b[c]), shape, (8,))
    assert not is_elementwise(bias)
    shifted = _prim(lambda a: te.compute(shape, lambda n, h, w, c: a[n, w, h, c]), shape)
    assert not is_elementwise(shifted)
    mod = tvm.IRModule({"add": add.with_attr("op_pattern", BROADCAST), "bias": bias.with_attr("op_pattern", BROADCAST)})
    out = mark_elementwise(mod)
    assert int(out["add"].attrs["op_pattern"]) == ELEMWISE
    assert int(out["bias"].attrs["op_pattern"]) == BROADCAST


def test_kws_runs_in_place(mlperf_paths, tmp_path):
    """kws (DS-CNN): zero-point pads inside the convolutions, accumulators in registers, depthwise layers
    channel by channel and the 64->64 1x1 layers pixel by pixel in place: bit-exact, and the only
    workspace left is one padded channel ((25 + 2) x (5 + 2) B: the depthwise kernels read a padded copy) or one
    pixel (64 B) of copy buffer."""
    result = export_model(str(mlperf_paths["kws_int8"]), tmp_path / "kws", check=True, seeds=(0,))
    assert result.check.bit_exact, result.check.summary()
    assert not any("pad" in c.func for c in result.program.calls)
    ws = [b.size for b in result.arena_plan.buffers if b.name.startswith("ws")]
    assert ws and max(ws) <= 192  # 189 B, 16-byte aligned
    assert len(result.arena_plan.inplace_calls) >= 8  # 4 depthwise + 4 pointwise layers
    largest = max(t.nbytes for t in result.program.tensors)
    assert result.arena_bytes < 2 * largest  # no layer holds its input and output side by side


def conv_stack(layout: str, dtype: str = "int8") -> tvm.IRModule:
    """conv3x3 -> depthwise 3x3 (stride 1) -> depthwise 3x3 stride 2 -> 1x1 (8->8) -> 1x1 (8->16)."""
    rng = np.random.default_rng(11)
    nhwc = layout == "NHWC"
    shape = (1, 9, 7, 3) if nhwc else (1, 3, 9, 7)
    kl = "HWIO" if nhwc else "OIHW"

    def w(o: int, i: int, k: int) -> relax.Expr:
        s = (k, k, i, o) if nhwc else (o, i, k, k)
        if dtype == "int8":
            return relax.const(rng.integers(-8, 8, size=s, dtype=np.int8))
        return relax.const(rng.standard_normal(s).astype(dtype))

    def conv(x, o, i, k, stride=1, groups=1, pad=0):
        y = relax.op.nn.conv2d(x, w(o, i, k), strides=stride, padding=pad, groups=groups, data_layout=layout,
                               kernel_layout=kl, out_dtype="int32" if dtype == "int8" else dtype)
        if dtype == "int8":  # keep the values in int8: a shift and a clip stand in for requantization
            return relax.op.astype(relax.op.clip(relax.op.right_shift(y, relax.const(4, "int32")), -128, 127), "int8")
        bshape = (1, 1, 1, o) if nhwc else (1, o, 1, 1)
        return relax.op.nn.relu(relax.op.add(y, relax.const(rng.standard_normal(bshape).astype(dtype))))

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(shape, dtype))
    with bb.function("main", [x]):
        with bb.dataflow():
            a = bb.emit(conv(x, 8, 3, 3, pad=1))
            b = bb.emit(conv(a, 8, 1, 3, groups=8, pad=1))
            c = bb.emit(conv(b, 8, 1, 3, stride=2, groups=8, pad=1))
            d = bb.emit(conv(c, 8, 8, 1))
            gv = bb.emit_output(bb.emit(conv(d, 16, 8, 1)))
        bb.emit_func_output(gv)
    return bb.get()


@pytest.mark.parametrize("layout,dtype", [("NHWC", "int8"), ("NCHW", "int8"), ("NCHW", "float32")])
def test_depthwise_and_pointwise_in_place(layout, dtype, tmp_path):
    result = export_model(conv_stack(layout, dtype), tmp_path / "out", check=True, seeds=(0, 1))
    assert result.check.bit_exact, result.check.summary()
    # both depthwise layers and the 8->8 1x1 may run in place (the planner then uses what helps); the
    # first conv and the 8->16 expansion may not
    outs = {call.outputs[0].index: k for k, call in enumerate(result.program.calls)}
    assert sorted(outs[int(h.dst[1:])] for h in result.arena_plan.plan.hints) == [1, 2, 3]
    assert {1, 2} <= result.arena_plan.inplace_calls
    ws = [b.size for b in result.arena_plan.buffers if b.name.startswith("ws")]
    elt = 1 if dtype == "int8" else 4
    # one channel of the largest depthwise input, with its pad ring where the kernel reads a padded copy of it
    # (export/padded_copy.py: 3x3 at stride 1)
    assert max(ws, default=0) <= -(-(9 + 2) * (7 + 2) * elt // 16) * 16


def test_inplace_proof_rejects_unsafe_kernels():
    """The proof looks at the TIR, not at what the schedule meant: kernels that would clobber input
    still to be read get no pair."""
    from tvm_patch.export.inplace_conv import inplace_conv_pairs, inplace_conv_schedule
    from tvm_patch.export.schedule import lean_schedule

    prog = lower_module(conv_stack("NHWC"))
    funcs = {c.func: lean_schedule(prog.funcs[c.func]) for c in prog.calls}
    first, dw, dw2, pw, expand = (funcs[c.func] for c in prog.calls)
    assert inplace_conv_schedule(first, 1) is first  # a 3x3 over 3 channels: neither kind
    assert inplace_conv_schedule(expand, 1) is expand  # 1x1 8->16: pixel p would overwrite pixel p + 1
    for f in (dw, dw2, pw):
        assert inplace_conv_pairs(f, 1) == []  # not in the copy-then-write form yet
        assert inplace_conv_pairs(inplace_conv_schedule(f, 1), 1) == [(0, len(f.params) - 1)]


def test_float_input_quantized_from_the_callers_buffer(tmp_path):
    """A float image that the model quantizes first (ONNX QDQ) is read in place from the caller's buffer:
    the arena holds int8 tensors only. An int8 input is still copied in (TFLite Micro's convention)."""
    from tvm_patch.export.plan import external_tensors

    rng = np.random.default_rng(4)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 8, 8, 4), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            q = bb.emit(relax.op.quantize(x, relax.const(0.05, "float32"), relax.const(3, "int8"), axis=-1, out_dtype="int8"))
            w = relax.const(rng.integers(-8, 8, size=(1, 1, 4, 4), dtype=np.int8))
            c = bb.emit(relax.op.nn.conv2d(q, w, data_layout="NHWC", kernel_layout="HWIO", out_dtype="int32"))
            gv = bb.emit_output(bb.emit(relax.op.astype(relax.op.clip(c, -128, 127), "int8")))
        bb.emit_func_output(gv)
    out = tmp_path / "out"
    result = export_model(bb.get(), out, check=True, seeds=(0, 1))
    assert result.check.bit_exact, result.check.summary()
    prog = result.program
    assert external_tensors(prog, True) == {prog.inputs[0].tensor}
    assert prog.inputs[0].tensor not in result.arena_plan.tensor_offsets
    assert result.arena_bytes < prog.inputs[0].nbytes  # the 1 kB float image is not in the arena
    assert "input: used in place in the caller's buffer" in (out / "tvmp_model.h").read_text()  # its C name
    int8_in = export_model(pad_conv_int8(), tmp_path / "int8")
    assert external_tensors(int8_in.program, True) == set()


def test_patch_mode_streams_the_input(mlperf_paths, tmp_path):
    """Patch mode: the stage reads each patch's window straight from the caller's image (not copied into
    the arena), bit-exact; the JSON gives the patched analytic peak and the split auto resolved to."""
    out = tmp_path / "vww"
    result = export_model(str(mlperf_paths["vww_96_int8"]), out, patches=4, split="auto", check=True, seeds=(0,))
    assert result.check.bit_exact, result.check.summary()
    prog = result.program
    assert prog.inputs[0].tensor not in result.arena_plan.tensor_offsets
    assert all(b.name != f"t{prog.inputs[0].tensor}" for b in result.arena_plan.buffers)  # not even planned
    j = result.to_json()
    assert isinstance(j["plan"]["split_layers"], int) and j["plan"]["split_layers"] > 0
    assert 0 < j["analytic_patch_peak_bytes"] < j["analytic_peak_bytes"]
    # the stage's call counts its layers' patched MACs (halos included): the calls add up to the patched network's
    stage_calls = [c for c in j["call_info"] if c["kind"] == "patch_stage"]
    assert len(stage_calls) == 1 and stage_calls[0]["macs"] > 0
    prof = profile(str(mlperf_paths["vww_96_int8"]), patches=4, split="auto", tir=False)
    assert j["macs"] == prof["patch_based"]["macs"] > prof["layer_by_layer"]["macs"]
    assert "used in place in the caller's buffer" in (out / "tvmp_model.h").read_text()
    stage = _stage_source(out)  # NHWC: OHWI weights, register-blocked convs (pixel pairs), one requantization call
    assert re.search(r"tvmp_dot_(s8|s8w|q15|q15w)_(px2_)?rows[24]\(", stage) and re.search(r"tvmp_requant(_rs|_rb|_rbz|_rbzr)?\(", stage)
    assert "tvmp_window_s8(" in stage


def _stage_source(out) -> str:
    """The C body of the patch stage's kernel in an export directory."""
    src = (out / "model.c").read_text()
    start = src.index("void tvmp_patch_stage(")
    return src[start:src.index("\n}\n", start)]


def test_input_quantize_becomes_the_stage_prologue(tmp_path):
    """An ONNX QDQ model quantizes its float image first: in patch mode that quantize is folded into the
    stage (no full-size int8 image in the arena), bit-exact with TVM running the unfolded module."""
    out = tmp_path / "in0"
    result = export_model("zoo:mcunet-in0:int8", out, patches=3, split=4, check=True, seeds=(0,))
    assert result.check.bit_exact, result.check.summary()
    prog = result.program
    assert not any("quantize" in c.func for c in prog.calls[:1])  # the stage is the first call
    stage = prog.calls[0]
    assert stage.inputs[0] == Arg("tensor", prog.inputs[0].tensor)  # it reads the float image itself
    assert prog.inputs[0].tensor not in result.arena_plan.tensor_offsets
    image = tuple(prog.inputs[0].shape)
    assert not any(t.shape == image and t.dtype == "int8" for t in prog.tensors)  # no int8 copy of the image
    stage = _stage_source(out)  # NCHW: pixel copies feed the register-blocked 1x1 convs
    assert re.search(r"tvmp_dot_(s8|s8w|q15|q15w)_(px2_)?rows[24]\(", stage) and re.search(r"tvmp_requant(_rs|_rb|_rbz|_rbzr)?\(", stage)
    assert re.search(r"(_global|pixel)_ptr\[", stage)
