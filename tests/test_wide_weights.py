"""Weights stored widened to int16 (codegen/wide_weights.py): the layout, which kernels take it, and the C on the
host bit-exact with TVM's build of the int8 kernel (the emulator runs of whole networks check the DSP path)."""

from __future__ import annotations

import ctypes
import subprocess

import numpy as np
import pytest
import tvm
from hypothesis import example, given, settings
from hypothesis import strategies as st

from test_micro_kernels import _c_in_place, _c_out_of_place, _conv_nhwc_ohwi, _depthwise, _matmul_requant, _tvm_out
from microtvm_projects.errors import FitError
from tvm_patch.board_build import fit_wide, narrowed
from tvm_patch.codegen import emit_c
from tvm_patch.codegen.c_kernels import MICRO_KERNELS
from tvm_patch.codegen.wide_weights import WIDEN_ATTR, padded_layout, widened_layout
from tvm_patch.export import export_model
from tvm_patch.export.blocking import block_output_channels, block_pixels
from tvm_patch.export.schedule import lean_schedule
from tvm_patch.quant import expand_extern_requantization


def test_layout_swaps_the_middle_pair_of_each_four():
    w = np.arange(-8, 8, dtype=np.int8).reshape(2, 8)
    got = widened_layout(w)
    assert got.dtype == np.int16 and got.tolist() == [-8, -6, -7, -5, -4, -2, -3, -1, 0, 2, 1, 3, 4, 6, 5, 7]
    with pytest.raises(ValueError, match="groups of four"):
        widened_layout(np.zeros(6, np.int8))
    with pytest.raises(ValueError, match="groups of four"):
        widened_layout(np.zeros(8, np.int16))


def test_rows_padded_to_the_parameters_shape():
    """A C parameter with more elements than its constant: each row padded with zeros (a depthwise kernel row of 7
    taps as 8, then widened: its last four (w4, w6, w5, 0); a stem's 27 weights a channel as 28, int8)."""
    w = np.arange(1, 15, dtype=np.int8).reshape(2, 1, 1, 7)
    assert padded_layout(w, (2, 1, 1, 7)) is w  # the same element count: as it is
    assert padded_layout(w, (2, 8)).tolist() == [[1, 2, 3, 4, 5, 6, 7, 0], [8, 9, 10, 11, 12, 13, 14, 0]]
    assert widened_layout(w, (2, 1, 1, 8)).tolist() == [1, 3, 2, 4, 5, 7, 6, 0, 8, 10, 9, 11, 12, 14, 13, 0]
    stem = np.ones((4, 3, 3, 3), np.int8)
    assert padded_layout(stem, (4, 28)).sum(axis=1).tolist() == [27] * 4 and padded_layout(stem, (4, 28))[:, 27].tolist() == [0] * 4
    with pytest.raises(ValueError, match="cannot be stored"):
        padded_layout(stem, (4, 26))


@pytest.mark.parametrize("h, w, k, stride, calls", [
    (12, 44, 7, 1, {"tvmp_window4_s8w"}),  # 44 outputs a row: eleven calls of four
    (11, 11, 7, 1, {"tvmp_window4_s8w"}),  # 11: two calls of four, then the last four again (a local copy)
    (12, 22, 7, 2, {"tvmp_window4_s8w"}),  # stride 2, 11 outputs a row
    (12, 12, 7, 2, {"tvmp_window4_s8w", "tvmp_window2_s8w"}),  # 6 a row: four, then a pair (mcunet-in0's 7x7)
    (24, 24, 5, 2, {"tvmp_window2_s8w"}),  # 5x5 stride 2, 12 a row in pairs (mcunet-in0's 5x5)
    (12, 12, 5, 2, {"tvmp_window2_s8w"}),  # 6 a row: three pairs
    (13, 13, 5, 2, set()),  # 7 a row: the last output read otherwise (no widened twin): the weights stay int8
])
def test_depthwise_windows_widened_exactly(tmp_path, h, w, k, stride, calls):
    """An NCHW 7x7 or 5x5 depthwise kernel through its padded channel copy, its windows four or two a call: with the
    export's leave its weights are stored widened, each kernel row padded to 8 (tvmp_window4_s8w, tvmp_window2_s8w:
    the parameter (C, 1, k, 8)), no int8 window call left (or, where another read of the weights has no widened twin, int8 throughout); bit-exact
    with TVM, in place (channel by channel, as the export runs it)."""
    from tvm_patch.codegen.c_kernels import mark_in_place
    from tvm_patch.export.inplace_conv import inplace_conv_pairs
    from tvm_patch.export.padded_copy import padded_copy_schedule

    src = _depthwise("NCHW", h, w, k, stride, k // 2, -9)
    func = padded_copy_schedule(src, 1)
    pairs = inplace_conv_pairs(func, 1)
    out = emit_c({"kern": (mark_in_place(func, pairs) if pairs else func).with_attr(WIDEN_ATTR, [1])})
    code = out.code.replace(MICRO_KERNELS.read_text(), "")
    param = out.functions["kern"].params[1]
    assert {c for c in ("tvmp_window4_s8w", "tvmp_window2_s8w") if c + "(" in code} == calls
    if calls:
        assert "tvmp_window2_s8(" not in code and "tvmp_window4_s8(" not in code and "tvmp_window_s8(" not in code
        assert param.dtype == "int16" and tuple(param.shape) == (3, 1, k, 8)
    else:
        assert param.dtype == "int8" and "tvmp_window2_s8(" in code
    rng = np.random.default_rng(h + w)
    oh, ow = (h - 1) // stride + 1, (w - 1) // stride + 1
    arrays = [rng.integers(-128, 128, (1, 3, h, w), dtype=np.int8), rng.integers(-128, 128, (3, 1, k, k), dtype=np.int8),
              np.zeros((1, 3, oh, ow), dtype=np.int8)]
    weights = widened_layout(arrays[1], tuple(param.shape)) if calls else arrays[1].copy()
    ours = [arrays[0].copy(), weights, arrays[2].copy()]
    got = _c_out_of_place(out.code, ours, out.workspace_bytes.get("kern", 0), tmp_path)
    np.testing.assert_array_equal(got, _tvm_out(src, arrays))


@pytest.mark.parametrize("k, stride", [(7, 1), (7, 2), (5, 1)])
def test_depthwise_rows_end_in_their_last_four_windows(tmp_path, k, stride):
    """Per-layer NCHW 7x7 and 5x5 depthwise rows of 4 to 9 outputs (every remainder after the quads), as the export
    builds them (through the padded channel copy, proven in place) and without padding (the windows read the input
    tensor): where ``window_blocks._last_four`` says so (three left; one over 7-wide rows that read the copy) the
    row's last outputs come from its last four windows, only those stored (round 35), so every 7x7 call through the
    copy is a quad on widened weights (`tvmp_window4_s8w`, no `tvmp_dot_s8` single left; two left: a widened pair,
    as before). Bit-exact with TVM out of place and run in place; the unpadded kernel is run in place too (its
    channel by channel, row by row order never reads what an earlier output overwrote), where the last four
    windows' unstored ones do read outputs written over their input: their sums are thrown away (storing all four
    fails that run)."""
    from tvm_patch.codegen.c_kernels import mark_in_place
    from tvm_patch.export.inplace_conv import inplace_conv_pairs
    from tvm_patch.export.padded_copy import padded_copy_schedule

    for e in range(4, 10):
        for pad in (k // 2, 0):
            h = w = (e - 1) * stride + k - 2 * pad  # rows of e outputs
            src = _depthwise("NCHW", h, w, k, stride, pad, -9)
            func = padded_copy_schedule(src, 1) if pad else lean_schedule(src)
            pairs = inplace_conv_pairs(func, 1) if pad else [(0, 2)]  # unpadded: run in place all the same
            assert pairs == [(0, 2)]
            out = emit_c({"kern": mark_in_place(func, pairs).with_attr(WIDEN_ATTR, [1])})
            code = out.code.replace(MICRO_KERNELS.read_text(), "")
            calls = {c for c in ("tvmp_window4_s8", "tvmp_window4_s8w", "tvmp_window3_s8", "tvmp_window2_s8",
                                 "tvmp_window2_s8w", "tvmp_dot_s8") if c + "(" in code}
            param = out.functions["kern"].params[1]
            left = e % 4
            if k == 7 and pad:  # through the copy: quads alone (two left: a pair), the weights widened
                want_calls = {"tvmp_window4_s8w"} | ({"tvmp_window2_s8w"} if left == 2 else set())
                assert calls == want_calls and param.dtype == "int16", (e, calls)
            elif left in (0, 3) and not (stride == 2 and left == 3):  # quads alone (int8 where a border reads them)
                assert calls in ({"tvmp_window4_s8"}, {"tvmp_window4_s8w"}), (e, pad, calls)
            elif left == 3:  # 7 wide, stride 2, reading the tensor: its last three one call (tvmp_window3_s8)
                assert calls == {"tvmp_window4_s8", "tvmp_window3_s8"}, (e, calls)
            else:  # a pair or a single after the quads (measured faster than the last four there)
                assert "tvmp_window4_s8" in calls or "tvmp_window4_s8w" in calls, (e, pad, calls)
                assert ("tvmp_dot_s8" in calls) == (left == 1) and (left == 2) == bool(
                    calls & {"tvmp_window2_s8", "tvmp_window2_s8w"}), (e, pad, calls)
            oh = ow = (h + 2 * pad - k) // stride + 1
            assert ow == e
            rng = np.random.default_rng(10 * e + pad)
            # small weights: outputs mostly unsaturated, so that one tap read wrong shows
            arrays = [rng.integers(-128, 128, (1, 3, h, w), dtype=np.int8),
                      rng.integers(-4, 5, (3, 1, k, k), dtype=np.int8), np.zeros((1, 3, oh, ow), dtype=np.int8)]
            want = _tvm_out(src, [a.copy() for a in arrays])
            weights = widened_layout(arrays[1], tuple(param.shape)) if param.dtype == "int16" else arrays[1].copy()
            ours = [arrays[0].copy(), weights, arrays[2].copy()]
            ws = out.workspace_bytes.get("kern", 0)
            for run, where in ((_c_out_of_place, "out"), (_c_in_place, "in")):
                tmp = tmp_path / f"e{e}p{pad}{where}"
                tmp.mkdir()
                np.testing.assert_array_equal(run(out.code, ours, ws, tmp), want, err_msg=f"{e} {pad} {where}")


def _run(func, arrays, weight: int, tmp) -> tuple[str, np.ndarray, np.ndarray]:
    """(the kernels' C without the header, the C kernel's output (gcc, host) with the weights stored as its
    parameter's type says, TVM's output from the int8 arrays)."""
    src = emit_c({"kern": func})
    ours = [x.copy() for x in arrays]
    if src.functions["kern"].params[weight].dtype == "int16":
        ours[weight] = widened_layout(arrays[weight])
    (tmp / "k.c").write_text(src.code)
    subprocess.run(["gcc", "-O2", "-Wall", "-Werror", "-std=c99", "-shared", "-fPIC", str(tmp / "k.c"), "-o",
                    str(tmp / "k.so")], check=True)
    lib = ctypes.CDLL(str(tmp / "k.so"))
    lib.kern.restype = None
    lib.kern(*[ctypes.c_void_p(x.ctypes.data) for x in ours])
    ex = tvm.compile(expand_extern_requantization(func), target={"kind": "llvm"})
    tensors = [tvm.runtime.tensor(x) for x in arrays]
    ex(*tensors)
    return src.code.replace(MICRO_KERNELS.read_text(), ""), ours[-1], tensors[-1].numpy()


@settings(max_examples=10, deadline=None)
@given(k=st.integers(1, 40), rows=st.sampled_from([2, 4]), seed=st.integers(0, 2**16))
@example(k=16, rows=4, seed=0)
@example(k=18, rows=2, seed=1)  # rows 18 apart: not a multiple of four, stays int8
def test_dense_rows_widened_exactly(tmp_path_factory, k, rows, seed):
    f_out = 2 * rows
    func = lean_schedule(block_output_channels(_matmul_requant(k, False, extern=True, f_out=f_out), rows))
    rng = np.random.default_rng(seed)
    arrays = [rng.integers(-128, 128, (3, k), dtype=np.int8), rng.integers(-128, 128, (f_out, k), dtype=np.int8),
              rng.integers(-(2**14), 2**14, f_out, dtype=np.int32), np.full((3, f_out), 77, dtype=np.int8)]
    code, got, want = _run(func.with_attr(WIDEN_ATTR, [1]), arrays, 1, tmp_path_factory.mktemp("rows"))
    # each input row meets both channel blocks: widened once (tvmp_widen_px1) where k % 4 == 0, then the rows
    # kernel on widened activations and widened weights
    assert (f"tvmp_dot_q15w_rows{rows}(" in code and "tvmp_widen_px1(" in code) == (k >= 4 and k % 4 == 0)
    assert "int16_t" not in code or k % 4 == 0
    np.testing.assert_array_equal(got, want)
    plain, got, want = _run(func, arrays, 1, tmp_path_factory.mktemp("rows8"))  # without the export's leave: int8
    assert f"tvmp_dot_s8w_rows{rows}(" not in plain and f"tvmp_dot_q15w_rows{rows}(" not in plain
    assert (f"tvmp_dot_q15_rows{rows}(" in plain) == (k >= 4 and k % 4 == 0)
    np.testing.assert_array_equal(got, want)


@settings(max_examples=10, deadline=None)
@given(cin=st.sampled_from([4, 8, 12, 6]), rows=st.sampled_from([2, 4]), seed=st.integers(0, 2**16))
@example(cin=8, rows=2, seed=0)  # the pair widened once for both channel blocks: tvmp_dot_q15w_px2_rows2
@example(cin=4, rows=4, seed=1)  # one channel block: tvmp_dot_s8w_px2_rows4
def test_pixel_pairs_widened_exactly(tmp_path_factory, cin, rows, seed):
    func = lean_schedule(block_pixels(_conv_nhwc_ohwi(cin, 1, 1, 0), rows))
    rng = np.random.default_rng(seed)
    arrays = [rng.integers(-128, 128, (1, 7, 6, cin), dtype=np.int8), rng.integers(-128, 128, (4, 1, 1, cin), dtype=np.int8),
              np.full(tuple(int(x) for x in func.params[-1].shape), 77, dtype=np.int8)]
    code, got, want = _run(func.with_attr(WIDEN_ATTR, [1]), arrays, 1, tmp_path_factory.mktemp("px2"))
    wide = f"tvmp_dot_q15w_px2_rows{rows}(" in code or f"tvmp_dot_s8w_px2_rows{rows}(" in code
    assert wide == (cin % 4 == 0)
    assert f"tvmp_dot_q15_px2_rows{rows}(" not in code and f"tvmp_dot_s8_px2_rows{rows}(" not in code or not wide
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("cin, rows, pad_value", [(8, 4, -7), (4, 2, 100), (6, 2, -128)])
def test_padded_conv_border_sums_widened_exactly(tmp_path, cin, rows, pad_value):
    """A padded 3x3 convolution's border taps sum the weights (tvmp_pad_rows): widened too where every row is
    whole groups of four (tvmp_pad_rows_w: the same weights summed), bit-exact with TVM."""
    func = lean_schedule(block_output_channels(_conv_nhwc_ohwi(cin, 3, 1, pad_value), rows)).with_attr(WIDEN_ATTR, [1])
    rng = np.random.default_rng(cin)
    arrays = [rng.integers(-128, 128, (1, 7, 6, cin), dtype=np.int8), rng.integers(-128, 128, (4, 3, 3, cin), dtype=np.int8),
              np.full(tuple(int(x) for x in func.params[-1].shape), 77, dtype=np.int8)]
    code, got, want = _run(func, arrays, 1, tmp_path)
    wide = cin % 4 == 0  # a kernel row's 3 x cin taps are one run of the rows kernel: 3 x 6 = 18 is not
    assert (f"tvmp_dot_s8w_rows{rows}(" in code and "tvmp_pad_rows_w(" in code) == wide
    assert ("tvmp_pad_rows(" in code) == (not wide)
    np.testing.assert_array_equal(got, want)


def test_weights_other_reads_keep_int8():
    """Unblocked, the convolution's taps are tvmp_dot_s8 and its border tvmp_sum_s8, which have no widened twins:
    the weights stay int8 even where the export allows widening."""
    func = lean_schedule(block_output_channels(_conv_nhwc_ohwi(8, 3, 1, -7), 1)).with_attr(WIDEN_ATTR, [1])
    src = emit_c({"kern": func})
    assert src.functions["kern"].params[1].dtype == "int8"
    assert "tvmp_dot_s8(" in src.code.replace(MICRO_KERNELS.read_text(), "")


def test_narrowed_takes_fewest_macs_per_byte_first():
    extra = {"a": 1000, "b": 100, "c": 4000, "d": 10}
    calls = [{"func": "a", "macs": 50_000}, {"func": "b", "macs": 50_000}, {"func": "c", "macs": 40_000},
             {"func": "a", "macs": 50_000}, {"func": "d", "macs": 100}]  # per byte: a 100, b 500, c 10, d 10
    assert narrowed(extra, calls, 0) == set()
    assert narrowed(extra, calls, 1) == {"c"}  # c and d tie at 10 a byte: by name
    assert narrowed(extra, calls, 4010) == {"c", "d"}
    assert narrowed(extra, calls, 4011) == {"c", "d", "a"}
    assert narrowed(extra, calls, 10**9) == {"a", "b", "c", "d"}


class _Result:
    """What fit_wide reads of an export: the widened kernels' extra bytes, the calls' MACs."""

    def __init__(self, chosen):
        names = {"k1": 3000, "k2": 2000, "k3": 1000}
        self.wide_weights = {n: b for n, b in names.items() if chosen is not None and chosen(n)}
        self.call_info = [{"func": n, "macs": m} for n, m in (("k1", 30_000), ("k2", 60_000), ("k3", 5_000))]
        self.wide_narrowed = []


@pytest.mark.parametrize("wide, limit, narrowed_to", [
    ("auto", 10**6, []), ("auto", 4500, ["k1", "k3"]), ("auto", 2600, ["k1", "k3"]), ("none", 0, []),
])
def test_fit_wide_narrows_until_the_flash_holds(wide, limit, narrowed_to):
    """A fake export (6,000 extra bytes over three kernels) and a fake build that overflows while more than
    ``limit`` extra bytes are widened, first by the weights' lower bound (half the overflow), then exactly."""
    seen = []

    def finish(result):
        used = sum(result.wide_weights.values())
        seen.append(sorted(result.wide_weights))
        if used > limit:
            raise FitError("Flash: too much", flash_over=(used - limit) // (2 if len(seen) == 1 else 1))
        return used

    result, used = fit_wide(_Result, finish, wide)
    assert result.wide_narrowed == narrowed_to and used <= limit
    assert sorted(result.wide_weights) == sorted({"k1", "k2", "k3"} - set(narrowed_to)) or wide == "none"


def test_fit_wide_keeps_the_given_kernels_narrow():
    """``narrow`` (the cost model's NARROW_ROUND: a stage measured with int8 weights): those kernels never widen,
    the result names them, and an overflow narrows others on top."""
    result, used = fit_wide(_Result, lambda r: sum(r.wide_weights.values()), "auto", narrow=["k2"])
    assert sorted(result.wide_weights) == ["k1", "k3"] and result.wide_narrowed == ["k2"] and used == 4000

    def finish(result):
        used = sum(result.wide_weights.values())
        if used > 3000:
            raise FitError("Flash: too much", flash_over=used - 3000)
        return used

    result, used = fit_wide(_Result, finish, "auto", narrow=["k2"])  # k3: the fewest MACs per extra byte
    assert result.wide_narrowed == ["k2", "k3"] and used == 3000


def test_fit_wide_gives_up_with_the_builds_error():
    def finish(result):
        raise FitError("Flash: needs more", flash_over=10**6)

    with pytest.raises(FitError, match="needs more"):
        fit_wide(_Result, finish, "auto")
    with pytest.raises(FitError, match="needs more"):  # "all" never narrows
        fit_wide(_Result, finish, "all")


def test_export_with_widened_weights_checks_against_tvm(tmp_path, mlperf_paths):
    """kws exported with every kernel allowed to widen: the host build equals TVM's on seeded inputs (--check),
    its constants are the int16 ones (the weights' bytes grow by the widened kernels' extra bytes)."""
    narrow = export_model(str(mlperf_paths["kws_int8"]), tmp_path / "narrow")
    wide = export_model(str(mlperf_paths["kws_int8"]), tmp_path / "wide", wide=lambda _n: True, check=True)
    assert wide.check is not None and wide.check.passed
    assert wide.wide_weights and not narrow.wide_weights
    assert wide.weights_bytes == narrow.weights_bytes + sum(wide.wide_weights.values())
    code = (tmp_path / "wide" / "model.c").read_text()
    assert "tvmp_dot_s8w_rows" in code and "TVMP_WORD_ALIGNED" in code
