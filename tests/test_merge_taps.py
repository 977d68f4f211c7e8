"""A window's per-tap dot and widening calls merged into one call over contiguous runs (codegen/merge_taps.py):
the merged lengths, and padded k x k convolutions bit-exact with TVM's build on the host."""

from __future__ import annotations

import re

import numpy as np
from hypothesis import example, given, settings
from hypothesis import strategies as st

from test_micro_kernels import _conv_nhwc_ohwi
from test_weight_sums import _run
from tvm_patch.codegen.weight_sums import SUMS_ATTR
from tvm_patch.codegen.wide_weights import WIDEN_ATTR
from tvm_patch.export.blocking import block_pixels
from tvm_patch.export.schedule import lean_schedule


@settings(max_examples=6, deadline=None)
@given(cin=st.sampled_from([4, 8, 12, 16, 6]), k=st.sampled_from([3, 5]), rows=st.sampled_from([2, 4]),
       pad_value=st.integers(-128, 127), seed=st.integers(0, 2**16))
@example(cin=16, k=3, rows=2, pad_value=-128, seed=0)  # resnet8's 3x3 layers: nine calls of 16 -> one of 144
def test_window_taps_merged_exactly(tmp_path_factory, cin, k, rows, pad_value, seed):
    """The interior pair of a padded k x k convolution with widened weights: one dot call a channel block over the
    whole window (k x k x C_in), the widening one call a window row (k x C_in); bit-exact with TVM."""
    func = lean_schedule(block_pixels(_conv_nhwc_ohwi(cin, k, 1, pad_value), rows))
    func = func.with_attr(WIDEN_ATTR, [1]).with_attr(SUMS_ATTR, [1])
    rng = np.random.default_rng(seed)
    arrays = [rng.integers(-128, 128, (1, 7, 6, cin), dtype=np.int8), rng.integers(-128, 128, (4, k, k, cin), dtype=np.int8),
              np.full(tuple(int(x) for x in func.params[-1].shape), 77, dtype=np.int8)]
    code, got, want = _run(func, arrays, tmp_path_factory.mktemp("taps"))
    np.testing.assert_array_equal(got, want)
    lengths = {int(n) for n in re.findall(rf"tvmp_dot_q15w_px2_rows{rows}\([^;]*, (\d+), \(&", code)}
    widened = {int(n) for n in re.findall(r"tvmp_widen_px2\([^;]*, (\d+), \(&", code)}
    if lengths or widened:  # widened pairs over an interior window: one call each, over the window and its rows
        assert cin % 4 == 0 and lengths == {k * k * cin} and widened == {k * cin}
    if (cin, k, rows) == (16, 3, 2):  # the example: 6 wide, its middle pair interior
        assert lengths == {144}
