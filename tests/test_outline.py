"""A patch stage's layer nests outlined into functions of their own (codegen/outline.py) and its patch loops peeled
(codegen/peel_patches.py), the tuning knobs of tune/space.py: the outlined C is bit-exact with TVM in both halo
modes, has one static noinline function per chosen nest and no declaration the stage no longer uses (the host
build is -Werror); the peeled stage is bit-exact, alone and with its nests outlined, one copy of the patch body per
first / interior / last patch of each axis; the knobs' decisions round trip through a trace and become the stage's
feature row; a nest the stage lacks is refused."""

from __future__ import annotations

import re

import numpy as np
import pytest
from tvm import s_tir, te

from conftest import mlperf_tflite_files
from tvm_patch.codegen.c_kernels import C_TARGET, NOINLINE_MACRO, lower_plain
from tvm_patch.codegen.c_types import PlainCError
from tvm_patch.codegen.outline import layer_nests, outline_nests, outlined_name, patch_body
from tvm_patch.codegen.peel_patches import peel_patches
from tvm_patch.export import export_model
from tvm_patch.tune.features import decision_row
from tvm_patch.tune.space import Choice, kernel_space, trace_choice

KWS = next((f for f in mlperf_tflite_files() if f.endswith("kws_int8.tflite")), None)
STAGE = "tvmp_patch_stage"
needs_kws = pytest.mark.skipif(KWS is None, reason="the MLPerf Tiny models are not in the shared folder")


@needs_kws
@pytest.mark.parametrize("halo, chosen", [("cache", "all"), ("recompute", "odd")])
def test_outlined_nests_are_bit_exact_and_the_stage_calls_them(tmp_path, halo, chosen):
    plain = export_model(KWS, tmp_path / "plain", patches=4, split=5, halo=halo)
    assert STAGE + "_nest" not in (tmp_path / "plain" / "model.c").read_text()  # the default: nothing outlined
    low, _ = lower_plain({STAGE: plain.kernel_funcs[STAGE]}, C_TARGET, 16)
    n = layer_nests(low[STAGE])
    assert n >= 5
    nests = tuple(range(n)) if chosen == "all" else tuple(range(1, n, 2))
    seen = []

    def outline(name, func):
        seen.append(name)
        return nests if name == STAGE else ()

    res = export_model(KWS, tmp_path / "out", patches=4, split=5, halo=halo, check=True, seeds=(0, 1),
                       outline=outline)
    assert res.check.bit_exact and STAGE in seen
    code = (tmp_path / "out" / "model.c").read_text()
    helpers = re.findall(r"^static " + NOINLINE_MACRO + r" void (\w+)\(", code, flags=re.M)
    assert helpers == [outlined_name(STAGE, k) for k in nests]
    assert re.search(r"^" + NOINLINE_MACRO + r" void " + STAGE + r"\(", code, flags=re.M)
    body = code[code.index(f"void {STAGE}("):]
    assert all(body.count(f"{h}(") == 1 for h in helpers)  # each called once, from the stage
    assert res.arena_bytes == plain.arena_bytes  # the workspace plan is the stage's, unchanged


@needs_kws
@pytest.mark.parametrize("halo, outlined", [("cache", False), ("recompute", True)])
def test_peeled_patch_loops_are_bit_exact_one_copy_per_border_class(tmp_path, halo, outlined):
    """4x4 patches: each axis's first, interior (a loop of two) and last patches, 3 x 3 copies of the patch body,
    their barriers with them; the same outputs as TVM (host build, two seeds); with every nest outlined, each
    outlined function still defined once and called from each copy."""
    plain = export_model(KWS, tmp_path / "plain", patches=4, split=5, halo=halo)
    low, _ = lower_plain({STAGE: plain.kernel_funcs[STAGE]}, C_TARGET, 16)
    nests = tuple(range(layer_nests(low[STAGE]))) if outlined else ()
    res = export_model(KWS, tmp_path / "out", patches=4, split=5, halo=halo, check=True, seeds=(0, 1),
                       peel=lambda name, func: name == STAGE, outline=lambda name, func: nests if name == STAGE else ())
    assert res.check.bit_exact and res.arena_bytes == plain.arena_bytes
    before = _stage_body((tmp_path / "plain" / "model.c").read_text())
    code = (tmp_path / "out" / "model.c").read_text()
    after = _stage_body(code)
    if not outlined:
        assert after.count("tvmp_barrier()") == 9 * before.count("tvmp_barrier()")
    for k in nests:
        assert code.count(f"void {outlined_name(STAGE, k)}(") == 1 and after.count(f"{outlined_name(STAGE, k)}(") == 9


def _stage_body(code: str) -> str:
    start = code.index(f"void {STAGE}(")
    return code[start:code.index("\n}\n", start)]


def test_a_nest_the_stage_lacks_is_refused():
    a = te.placeholder((4,), "int8", name="a")
    b = te.compute((4,), lambda i: a[i] + 1, name="b")
    func = te.create_prim_func([a, b])
    low, _ = lower_plain({"k": func}, C_TARGET, 16)
    assert layer_nests(low["k"]) == 0  # no patch loop: not a stage
    with pytest.raises(PlainCError, match="no layer nest"):
        outline_nests("k", low["k"], [0])
    assert patch_body(low["k"]) is None and peel_patches(low["k"]).same_as(low["k"])  # nothing to peel


def test_the_outlining_decisions_round_trip_and_make_the_feature_row():
    a = te.placeholder((4, 4), "int8", name="a")
    k = te.reduce_axis((0, 4), name="k")
    b = te.compute((4,), lambda i: te.sum(a[i, k].astype("int32"), axis=k), name="b")
    sch = s_tir.Schedule(te.create_prim_func([a, b]))
    chosen = Choice(unrolled=True, outlined=(1, 3), peeled=True)
    kernel_space("k", False, False, chosen, nests=4)(sch)
    assert trace_choice(sch.trace) == chosen  # no odd-column knob: paired_down None
    row = decision_row(sch.mod, 8)
    assert row.shape == (1, 8) and row[0].tolist() == [1, 1, 0, 0, 1, 0, 1, 0]
    assert not np.any(decision_row(s_tir.Schedule(te.create_prim_func([a, b])).mod, 8))
    # the odd-column knob (a stage of two forms, stage_forms.py): either value round trips, whatever the default;
    # the default schedule's record (paired_down None) takes the stage's default
    for default, down in [(True, False), (False, True), (True, True)]:
        sch = s_tir.Schedule(te.create_prim_func([a, b]))
        kernel_space("k", False, False, Choice(paired_down=down), nests=2, down_default=default)(sch)
        assert trace_choice(sch.trace).paired_down is down and decision_row(sch.mod, 8)[0, 2] == float(down)
    sch = s_tir.Schedule(te.create_prim_func([a, b]))
    kernel_space("k", False, False, Choice(), nests=2, down_default=True)(sch)
    assert trace_choice(sch.trace).paired_down is True


RESNET8 = next((f for f in mlperf_tflite_files() if f.endswith("resnet8_int8.tflite")), None)


@pytest.mark.skipif(RESNET8 is None, reason="the MLPerf Tiny models are not in the shared folder")
def test_a_stage_candidate_gets_its_decisions_without_tvms_extraction(tmp_path):
    """TVM's PerStoreFeature kills the process (SIGFPE) on resnet8's 4x4 recompute stage: a stage's candidates never
    reach it; each gets its decision row."""
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.meta_schedule.arg_info import ArgInfo
    from tvm.s_tir.meta_schedule.search_strategy import MeasureCandidate
    from tvm.target import Target
    from tvm_patch.tune.features import TolerantFeatures
    from tvm_patch.tune.records import workload
    from tvm_patch.tune.session import _without_tensor_intrinsics

    stage = export_model(RESNET8, tmp_path / "r8", patches=4, split="auto").program.funcs[STAGE]
    sch = s_tir.Schedule(workload(stage))
    kernel_space(STAGE, False, True, Choice(unrolled=False, outlined=(0, 2)), nests=4)(sch)
    with _without_tensor_intrinsics():  # (as a session makes its contexts)
        context = ms.TuneContext(workload(stage), target=Target("c"), num_threads=1)
    (feats,) = TolerantFeatures().extract_from(context, [MeasureCandidate(sch, ArgInfo.from_prim_func(stage))])
    row = feats.numpy()
    assert row.shape[0] == 1 and row[0, :7].tolist() == [0, 0, 0, 1, 0, 1, 0]
