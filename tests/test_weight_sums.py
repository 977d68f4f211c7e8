"""Border taps of padded convolutions from tables of weight sums (codegen/weight_sums.py, export/weight_sums.py):
which calls become table reads, the tables' values, the C on the host bit-exact with TVM's build of the kernel."""

from __future__ import annotations

import ctypes
import subprocess

import numpy as np
import pytest
import tvm
from hypothesis import example, given, settings
from hypothesis import strategies as st

from test_micro_kernels import _conv_nhwc_ohwi
from tvm_patch.codegen import emit_c
from tvm_patch.codegen.c_kernels import MICRO_KERNELS
from tvm_patch.codegen.weight_sums import SUMS_ATTR, table_sums
from tvm_patch.codegen.wide_weights import WIDEN_ATTR, padded_layout, widened_layout
from tvm_patch.export.blocking import block_output_channels
from tvm_patch.export.schedule import lean_schedule
from tvm_patch.quant import expand_extern_requantization


def test_table_is_pad_times_each_rows_sum():
    w = np.array([[1, -2, 3, 4], [-128, -128, 127, 0]], np.int8)
    assert table_sums(w, 4, -128).tolist() == [-128 * 6, -128 * -129]
    assert table_sums(w, 2, 3).tolist() == [-3, 21, -768, 381]
    assert table_sums(w, 4, 7).dtype == np.int32
    with pytest.raises(ValueError, match="rows of 3"):
        table_sums(w, 3, 1)


def _run(func, arrays, tmp) -> tuple[str, np.ndarray, np.ndarray]:
    """(the kernel's C without the header, its output on the host with the weights as its parameter stores them
    and each weight-sum table appended, TVM's output)."""
    src = emit_c({"kern": func})
    fn = src.functions["kern"]
    ours = [x.copy() for x in arrays]
    tables = [table_sums(padded_layout(arrays[s], fn.params[s].shape), n, pad) for s, n, pad in fn.weight_sums]
    if fn.params[1].dtype == "int16":
        ours[1] = widened_layout(arrays[1])
    (tmp / "k.c").write_text(src.code)
    subprocess.run(["gcc", "-O2", "-Wall", "-Werror", "-std=c99", "-shared", "-fPIC", str(tmp / "k.c"), "-o",
                    str(tmp / "k.so")], check=True, timeout=120)
    lib = ctypes.CDLL(str(tmp / "k.so"))
    lib.kern.restype = None
    lib.kern(*[ctypes.c_void_p(x.ctypes.data) for x in ours + tables])
    ex = tvm.compile(expand_extern_requantization(func), target={"kind": "llvm"})
    tensors = [tvm.runtime.tensor(x) for x in arrays]
    ex(*tensors)
    return src.code.replace(MICRO_KERNELS.read_text(), ""), ours[-1], tensors[-1].numpy()


@settings(max_examples=16, deadline=None)
@given(cin=st.sampled_from([4, 6, 8, 16]), k=st.sampled_from([3, 5]), rows=st.sampled_from([1, 2, 4]),
       wide=st.booleans(), pad_value=st.integers(-128, 127), seed=st.integers(0, 2**16))
@example(cin=16, k=3, rows=2, wide=True, pad_value=-128, seed=0)  # resnet8's form: widened rows, pad -128
@example(cin=6, k=3, rows=4, wide=False, pad_value=5, seed=1)  # rows of 18: int8, a table all the same
def test_border_taps_read_the_table_exactly(tmp_path_factory, cin, k, rows, wide, pad_value, seed):
    """With its weights listed (``SUMS_ATTR``) a padded convolution's border taps add a table entry a row
    (``tvmp_pad_sums``; one row: a load) instead of summing weights, widened or not; bit-exact with TVM."""
    func = lean_schedule(block_output_channels(_conv_nhwc_ohwi(cin, k, 1, pad_value), rows)).with_attr(SUMS_ATTR, [1])
    if wide:
        func = func.with_attr(WIDEN_ATTR, [1])
    rng = np.random.default_rng(seed)
    arrays = [rng.integers(-128, 128, (1, 7, 6, cin), dtype=np.int8), rng.integers(-128, 128, (4, k, k, cin), dtype=np.int8),
              np.full(tuple(int(x) for x in func.params[-1].shape), 77, dtype=np.int8)]
    code, got, want = _run(func, arrays, tmp_path_factory.mktemp("sums"))
    assert "tvmp_pad_rows" not in code and "tvmp_sum_s8(" not in code
    assert ("tvmp_pad_sums(" in code) == (rows > 1)
    np.testing.assert_array_equal(got, want)


def test_without_the_list_the_weights_are_summed():
    """Not listed (weights that are no constant in some call): the border taps sum the weights as before and the
    kernel has no table parameter."""
    func = lean_schedule(block_output_channels(_conv_nhwc_ohwi(8, 3, 1, -7), 4))
    src = emit_c({"kern": func})
    assert "tvmp_pad_rows(" in src.code and not src.functions["kern"].weight_sums
    listed = emit_c({"kern": func.with_attr(SUMS_ATTR, [1])}).functions["kern"]
    assert listed.weight_sums == ((1, 8, -7),) and listed.params[-1].dtype == "int32"
    assert listed.params[-1].shape == (4 * 3 * 3,)  # a row per output channel and tap


def test_resnet8_exports_its_tables_bit_exact(mlperf_paths, tmp_path):
    """A whole network (resnet8: 3x3 layers padded with the input zero point -128): the calls pass each kernel's
    tables, built from that call's own weights, and the C on the host is bit-exact with TVM's build."""
    from tvm_patch.export import export_model

    result = export_model(str(mlperf_paths["resnet8_int8"]), tmp_path / "out", check=True, seeds=(0,))
    code = (tmp_path / "out" / "model.c").read_text()
    assert MICRO_KERNELS.read_text() in code
    code = code.replace(MICRO_KERNELS.read_text(), "")  # the kernels' own C
    assert "tvmp_pad_rows" not in code and "tvmp_sum_s8(" not in code
    prog = result.program
    tabled = [c for c in prog.calls if "tvmp_pad_sums(" in code.split(f"void {c.func}(", 1)[-1].split("\n}\n", 1)[0]]
    assert len(tabled) >= 6  # the 3x3 convolutions after the stem
    # their Flash, reported per kernel (--json: weight_sum_tables): int32 per output channel and tap
    tables = result.to_json()["weight_sum_tables"]
    assert set(tables) == {c.func for c in tabled}
    widths = {c.func: prog.tensors[c.outputs[0].index].shape[-1] for c in tabled}  # NHWC: output channels
    assert all(b > 0 and b % (4 * widths[f]) == 0 for f, b in tables.items())
