"""Low-K 1x1 convolutions channel by channel along a row (codegen/channel_rows.py): where the rewrite applies,
its row chunks, and whole exports with it bit-exact with TVM's build on the host (the DSP path of its kernel,
tvmp_row_q15w_px2, is checked on the emulator by test_micro_kernels)."""

from __future__ import annotations

import re

import numpy as np
import onnx
import pytest
import tvm
from hypothesis import example, given, settings
from hypothesis import strategies as st
from tvm import relax, tirx

from tvm_patch.codegen.c_kernels import MICRO_KERNELS
from tvm_patch.codegen.channel_rows import MAX_K, ROW_KERNEL, _chunk, _Context, _fused_rows, _odd_test, _one_store
from tvm_patch.codegen.widen_kernels import MAX_WIDE_BYTES
from tvm_patch.export import export_model
from tvm_patch.quant import extern_requantization, requantize_te
from tvm_patch.zoo import build_spec
from tvm_patch.zoo.spec import BlockSpec, ConvSpec, NetSpec


@pytest.mark.parametrize("pairs, k, chunk", [
    (44, 8, 44),  # mcunet-in3's 88-wide 8 -> 24 layer: the whole row (1,408 B)
    (44, 16, 22),  # 16 channels over 88: half rows fit the stack budget
    (22, 16, 22),
    (12, 16, 12),  # weights read per pair: at least 12 pairs
    (6, 16, None),  # a 12-wide row alone measured slower (in0's 12 x 12 layers now run as whole planes)
    (6, 8, 6),
    (3, 8, None),  # too few pairs to keep a channel's constants for
    (7, 4, 7),
])
def test_row_chunks(pairs, k, chunk):
    assert _chunk(pairs, k) == chunk
    if chunk:
        assert pairs % chunk == 0 and chunk * k * 4 <= MAX_WIDE_BYTES


def _pointwise(k: int, c: int, h: int, w: int, layout: str, seed: int) -> tvm.IRModule:
    """int8 1x1 convolution + bias, per-channel requantization (zero point -5), clamp: the layers LowerToInteger
    writes (the requantization as the export's extern call, so the export packs its constants)."""
    rng = np.random.default_rng(seed)
    nchw = layout == "NCHW"
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, k, h, w) if nchw else (1, h, w, k), "int8"))
    with bb.function("main", [x]):
        with bb.dataflow():
            wt = rng.integers(-128, 128, size=(c, k, 1, 1) if nchw else (1, 1, k, c), dtype=np.int8)
            acc = bb.emit(relax.op.nn.conv2d(x, relax.const(wt), data_layout=layout,
                                             kernel_layout="OIHW" if nchw else "HWIO", out_dtype="int32"))
            bias = rng.integers(-2**12, 2**12, size=(1, c, 1, 1) if nchw else (1, 1, 1, c), dtype=np.int32)
            acc = bb.emit(relax.op.add(acc, relax.const(bias)))
            mult = relax.const(rng.integers(2**30, 2**31 - 1, size=(c,), dtype=np.int64).astype(np.int32))
            shift = relax.const(rng.integers(-12, -6, size=(c,), dtype=np.int32))
            with extern_requantization():
                q = bb.emit_te(requantize_te, acc, mult, shift, -5, axis=1 if nchw else 3)
            gv = bb.emit_output(bb.emit(relax.op.astype(relax.op.clip(q, -128, 127), "int8")))
        bb.emit_func_output(gv)
    return bb.get()


def _row_calls(out) -> list[str]:
    return _row_calls_in((out / "model.c").read_text().replace(MICRO_KERNELS.read_text(), ""))


def _row_calls_in(code: str) -> list[str]:
    """The argument lists of the row kernel's calls in ``code``."""
    return re.findall(ROW_KERNEL + r"\(([^;]*)\);", code)


@settings(max_examples=8, deadline=None)
@given(k=st.sampled_from([4, 8, 12, 16, 20, 6]), c=st.sampled_from([4, 6, 8]), h=st.integers(1, 3),
       w=st.sampled_from([8, 12, 24, 30, 48]), layout=st.sampled_from(["NCHW", "NHWC"]), seed=st.integers(0, 2**16))
@example(k=8, c=6, h=3, w=24, layout="NCHW", seed=0)  # mcunet-in3's form: weights in registers, a whole row
@example(k=16, c=6, h=2, w=48, layout="NCHW", seed=1)  # weights read per pair, rows of 24 pairs
def test_pointwise_rows_bit_exact(tmp_path_factory, k, c, h, w, layout, seed):
    """Random int8 1x1 layers exported with widened weights: the C on the host equals TVM's build; the row
    kernel only on widened low-K layers (K a multiple of four, at most MAX_K), one call per output channel."""
    out = tmp_path_factory.mktemp("rows")
    result = export_model(_pointwise(k, c, h, w, layout, seed), out, check=True, seeds=(0,), wide=lambda _n: True)
    assert result.check is not None and result.check.passed
    calls = _row_calls(out)
    if calls:
        assert k % 4 == 0 and k <= MAX_K
        assert len(calls) in (2, 4)  # a call per channel of the block (blocks of two or four)
    # the examples (channels in blocks of two; h = 1 runs another form, one pixel copied, that has no pixel pairs)
    if (k, c, h, w, layout) in ((8, 6, 3, 24, "NCHW"), (16, 6, 2, 48, "NCHW")):
        assert calls
        pairs = int(calls[0].split(",")[1])  # (row, pairs, weights, K, bias, mult, right, zp, out, stride)
        assert pairs == _chunk(h * w // 2, k)  # the plane's rows follow one another: one row of h * w / 2 pairs


def _plane_nest(width: int, row_stride: int) -> tirx.For:
    """for y in 0..3: for x in 0..width: out[y * row_stride + x] = inp[y * row_stride + x] + 1."""
    y, x = tirx.Var("y", "int32"), tirx.Var("x", "int32")
    inp, out = tirx.decl_buffer((64,), "int8", "inp"), tirx.decl_buffer((64,), "int8", "out")
    at = y * row_stride + x
    store = tirx.BufferStore(out, tirx.BufferLoad(inp, [at]) + tirx.const(1, "int8"), [at])
    serial = tirx.ForKind.SERIAL
    return tirx.For(y, tirx.const(0, "int32"), tirx.const(3, "int32"), serial,
                    tirx.For(x, tirx.const(0, "int32"), tirx.const(width, "int32"), serial, store))


def test_fused_rows_only_where_rows_follow_one_another():
    """A plane walked row after row is one loop of rows x width; rows with a gap between them are not."""
    fused = _fused_rows(_plane_nest(8, 8))
    assert fused is not None and int(fused.extent) == 24 and not isinstance(fused.body, tirx.For)
    assert str(fused.body.indices[0]) == fused.loop_var.name  # out[i] = inp[i] + 1
    assert _fused_rows(_plane_nest(8, 10)) is None  # a padded row: y * 10 + x is not (y * 8 + x)
    assert _fused_rows(_plane_nest(8, 8).body) is None  # one loop: nothing to fuse


def test_one_store_reads_through_a_scratch():
    """A patch stage's epilogue ``t[0] = v; out[i] = f(t[0])`` is read as ``out[i] = f(v)``; not when the scratch is
    read twice or is the stored buffer itself."""
    t, a = tirx.decl_buffer((1,), "int32", "t"), tirx.decl_buffer((8,), "int32", "a")
    out = tirx.decl_buffer((8,), "int8", "out")
    i = tirx.Var("i", "int32")
    zero = tirx.const(0, "int32")

    def epilogue(value_of_t, dest=out):
        return tirx.SeqStmt([tirx.BufferStore(t, tirx.BufferLoad(a, [i]) * 3, [zero]),
                             tirx.BufferStore(dest, value_of_t(tirx.BufferLoad(t, [zero])), [zero if dest is t else i])])

    one = _one_store(epilogue(lambda x: tirx.Cast("int8", x + 1)))
    assert one is not None and one.buffer.same_as(out) and "t[" not in str(one.value) and "a[i] * 3" in str(one.value)
    assert _one_store(epilogue(lambda x: tirx.Cast("int8", x + x))) is None
    assert _one_store(epilogue(lambda x: x + 1, dest=t)) is None


def test_context_bounds_a_row_length_through_lets():
    """The most pairs a patch's row can have: the row's length a let of the patch index (vww's cache stage:
    min(13, 48 - 12 j) - (j > 0) pixels), bounded over the patch loop's range; no bound for a free variable."""
    j, n, x = tirx.Var("j", "int32"), tirx.Var("n", "int32"), tirx.Var("x", "int32")
    serial, c = tirx.ForKind.SERIAL, (lambda v: tirx.const(v, "int32"))
    length = tirx.min(c(13), c(48) - j * 12) - tirx.Select(c(0) < j, c(1), c(0))
    body = tirx.SeqStmt([tirx.Bind(n, length), tirx.For(x, c(0), tirx.floordiv(n, 2), serial, tirx.Evaluate(c(0)))])
    ctx = _Context(tirx.PrimFunc([], tirx.For(j, c(0), c(4), serial, body)))
    assert ctx.bound(tirx.floordiv(n, 2)) == 6  # 13 pixels (j = 0), 12 after (j = 1, 2), 11 (j = 3)
    assert ctx.bound(tirx.Var("free", "int32")) is None


def test_odd_test_as_the_simplifier_writes_it():
    """A row's odd last pixel: ``n % 2 == 1`` as written, or as TVM's simplifier rewrites it over the patch loop
    (mbv2-w0.3-r80's regions: 10 pixels in the first patch column, 11 in the others: ``min(1, j * 10) == 1``),
    checked at every patch; not a condition that differs at one patch, nor one over a variable without a range."""
    j, i = tirx.Var("j", "int32"), tirx.Var("i", "int32")
    c = (lambda v: tirx.const(v, "int32"))
    ctx = _Context(tirx.PrimFunc([], tirx.For(j, c(0), c(4), tirx.ForKind.SERIAL, tirx.Evaluate(c(0)))))
    n = c(11) - tirx.max(c(0), c(1) - j * 10)
    assert _odd_test(tirx.floormod(n, c(2)) == c(1), n, ctx)
    assert _odd_test(tirx.min(c(1), j * 10) == c(1), n, ctx)
    assert not _odd_test(tirx.min(c(1), j * 10) == c(0), n, ctx)
    assert not _odd_test(j < c(3), n, ctx)  # odd at j = 1, 2 only: wrong at j = 3
    assert not _odd_test(tirx.min(c(1), i * 10) == c(1), c(11) - tirx.max(c(0), c(1) - i * 10), ctx)


@pytest.mark.slow
def test_mbv2_stage_rows_as_one_run_bit_exact(tmp_path):
    """mbv2-w0.3-r80 over 4 x 4 patches: its 8 -> 48 layer's 11 x 11 regions (10 wide in the first patch column,
    the odd test in the simplifier's form) run as one row where they are as wide as their buffers; bit-exact."""
    result = export_model("zoo:mbv2-w0.3-r80:int8", tmp_path / "out", patches=4, split="auto", check=True,
                          seeds=(0,), wide=lambda _n: True)
    assert result.check is not None and result.check.bit_exact
    code = (tmp_path / "out" / "model.c").read_text()
    stage = code[code.index("void tvmp_patch_stage("):]
    stage = stage[:stage.index("\n}\n")]
    assert re.search(r"if \(\w+ == 11\) \{", stage)
    runs = [c for c in _row_calls_in(stage) if c.split(",")[3].strip() == "8"]
    assert "1" in {c.split(",")[1].strip() for c in runs}  # the run's odd last pixel, in an overlapping pair
    assert len(runs) == 3 * 2  # a block's two channels: along the run, its overlapping pair, the rows as before


def test_vww_rows_bit_exact(mlperf_paths, tmp_path):
    """A network (vww: NHWC, outputs C bytes apart): its 8- and 16-channel 1x1 layers take the row kernel and the
    export stays bit-exact with TVM."""
    result = export_model(str(mlperf_paths["vww_96_int8"]), tmp_path / "out", check=True, seeds=(0,),
                          wide=lambda _n: True)
    assert result.check is not None and result.check.passed
    calls = _row_calls(tmp_path / "out")
    strides = {int(c.rsplit(",", 1)[1]) for c in calls}
    ks = {int(c.split(",")[3]) for c in calls}
    assert len(calls) >= 4 and ks == {8, 16} and min(strides) > 1


@pytest.mark.parametrize("k", [8, 16])
def test_stage_regions_as_wide_as_their_buffers_run_as_one_row(tmp_path, k):
    """A recompute-mode patch stage (NCHW, 3 x 3 patches: a 30 x 30 input, stem 3 -> k stride 2, a block k -> 32 ->
    16 without the residual add): its k -> 32 1x1 layer's regions are 7 x 7 where the image's border does not clip
    them and 6 wide where it does, in buffers of 7-pixel rows. The export writes both (`_flat_rows`): where a region
    is as wide as its buffer, its 49 pixels as one run of pairs channel by channel along the row kernel, the run's
    length known at run time and its odd last pixel in a pair overlapping the one before; the rows as before where
    not. Bit-exact with TVM's build on the host; no such form in cache mode (its rows are the new columns)."""
    net = NetSpec("flat_rows", "mbv2", 30, ConvSpec(3, k, 3, 2), (BlockSpec(k, 32, 16, 3, 1, True, False),), None, 10)
    path = tmp_path / "flat_rows.onnx"
    onnx.save(build_spec(net, int8=True), path)
    for halo in ("recompute", "cache"):
        result = export_model(str(path), tmp_path / halo, patches=3, split="auto", halo=halo, check=True, seeds=(0,),
                              wide=lambda _n: True)
        assert result.check is not None and result.check.bit_exact
        code = (tmp_path / halo / "model.c").read_text()
        stage = code[code.index("void tvmp_patch_stage("):]
        stage = stage[:stage.index("\n}\n")]
        runs = [c for c in _row_calls_in(stage) if c.split(",")[3].strip() == str(k)]
        if halo == "cache":
            assert not runs
            continue
        assert re.search(r"if \(\w+ == 7\) \{", stage)  # a row as wide as the buffer's: the run
        lengths = {c.split(",")[1].strip() for c in runs}
        assert "1" in lengths and any(not n.isdigit() for n in lengths)  # the overlapping pair; the run's pairs
        assert len(runs) == 2 * 2  # both channels of a block, along the run and its overlapping pair
        assert "tvmp_dot_q15w_px2_rows2" in stage  # the clipped regions' rows, pair by pair
