"""The cost model and the schedule search: predicted SRAM equals the linked firmware's exactly and Flash is
within 1 % (layer by layer and patched, two boards); the per-kernel features; the model file's errors;
collection resumes; `plan` reports a Pareto front whose chosen plan builds to the predicted SRAM."""

from __future__ import annotations

import dataclasses
import gzip
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import onnx
import pytest
from tvm import tirx
from tvm.script import tirx as T

from microtvm_projects.boards import BOARDS
from microtvm_projects.errors import FitError

from bench import cost_model as bench_cost_model
from bench.cost_model import stage_comparison
from tvm_patch.board_build import build_for_board
from tvm_patch.cli import main
from relay_passes import LowerToInteger, float_ops_remaining
from tvm_patch.cost import Plan, predict
from tvm_patch.cost.adaptive import cv_errors, near_items
from tvm_patch.cost.synth import nhwc_model, sample_inserts, sample_near, sample_net, synth_layers
from tvm_patch.cost import cache as cost_cache, collect as cost_collect, fingerprint, memory as cost_memory
from tvm_patch.codegen import c_kernels, micro_kernels
from tvm_patch.cost.features import EXEC_KEYS, exec_counts, kernel_rows
from tvm_patch.cost.fingerprint import kernels_fingerprint
from tvm_patch.cost.latency import CORES, KNOWN_STAGE_TERMS, STAGE_TERMS, default_path, for_core, \
    load as load_cost_model, stage_terms, warn_if_stale
from tvm_patch.cost import measure as cost_measure
from tvm_patch.cost.measure import measure
from tvm_patch.cost.search import search
from tvm_patch.cost import trips
from tvm_patch.cost.trips import _micro_macs, executed
from tvm_patch.zoo.quantize import calibrate
from tvm_patch.split import valid_splits
from tvm_patch.errors import TvmPatchError
from tvm_patch.export import export_model
from tvm_patch.frontend import load
from tvm_patch.graph import build_graph
from tvm_patch.zoo import build_spec
from tvm_patch.zoo.spec import BlockSpec, ConvSpec, NetSpec

pytestmark = pytest.mark.skipif(shutil.which("arm-none-eabi-gcc") is None or shutil.which("qemu-system-arm") is None,
                                reason="make setup installs arm-none-eabi-gcc and qemu-system-arm")

KWS = "mlperf_tiny/kws_int8.tflite"
VWW = "mlperf_tiny/vww_96_int8.tflite"
FAST_CASES = [(KWS, "f746", Plan()), (KWS, "f412", Plan(3, (2, 2))), (KWS, "f412", Plan(3, (2, 2), "cache"))]
SLOW_CASES = [(m, b, p) for m in (KWS, VWW, "zoo:mcunet-in0:int8") for b in ("f412", "h743")
              for p in (Plan(), Plan(4, (3, 3)), Plan(4, (3, 3), "cache"))] + \
    [("zoo:mcunet-in0:int8", "f412", Plan(6, (4, 4))), ("zoo:mcunet-in0:int8", "f412", Plan(6, (4, 4), "cache"))]


def _spec(model: str, shared_models: Path) -> str:
    return model if model.startswith("zoo:") else str(shared_models / model)


@pytest.fixture(scope="session")
def built(tmp_path_factory):
    """Firmware builds (device, the board's link) keyed by (model, board, plan), each built once a session."""
    cache: dict = {}

    def get(model: str, board: str, plan: Plan) -> dict:
        key = (model, board, plan)
        if key not in cache:
            out = tmp_path_factory.mktemp("fw") / "p"
            cache[key] = build_for_board(model, out, board, runner="device", **plan.export_args())
        return cache[key]

    return get


def _check_memory(built, model: str, board: str, plan: Plan) -> None:
    pred = predict(model, plan, board)
    fw = built(model, board, plan)
    assert pred.arena_bytes == fw["arena_bytes"]
    assert pred.sram_bytes == fw["sram_bytes"], (model, board, plan)
    assert abs(pred.flash_bytes - fw["flash_bytes"]) <= 0.01 * fw["flash_bytes"], (pred.flash_bytes, fw["flash_bytes"])
    assert pred.latency_estimated and pred.latency_ms > 0 and pred.instructions > 0


def test_linked_bytes_counts_what_the_link_kept(tmp_path):
    """The firmware base subtracts the network's objects as linked: sections the link discarded (a function's own
    copy after GCC inlined it into its one caller) do not count, long section names on their own line do."""
    (tmp_path / "firmware.map").write_text(
        "Discarded input sections\n\n .text.tvmp_quantize\n                0x00000000      0x2fc build/device/model/model.o\n"
        "\nMemory Configuration\n\nLinker script and memory map\n\n"
        " .text.tvmp_run\n                0x08000200       0x40 build/device/model/model.o\n"
        " .rodata        0x08000300      0x100 build/device/model/model.o\n"
        " .text          0x08000400       0x18 build/device/src/startup.o\n"
        " .rodata.tvmp_input0\n                0x08000420       0x30 build/device/io/tvmp_io.o\n"
        " .bss           0x20000000     0x2000 build/device/model/model.o\n")
    assert cost_memory.linked_bytes(tmp_path / "firmware.map", cost_memory.NETWORK_OBJECTS) == 0x40 + 0x100 + 0x30
    (tmp_path / "bad.map").write_text("not a map\n")
    with pytest.raises(TvmPatchError, match="not a GNU ld map"):
        cost_memory.linked_bytes(tmp_path / "bad.map", cost_memory.NETWORK_OBJECTS)


@pytest.mark.parametrize("model,board,plan", FAST_CASES, ids=["kws-f746-lbl", "kws-f412-2x2", "kws-f412-2x2-cache"])
def test_predicted_sram_exact_and_flash_within_1pct(built, shared_models, model, board, plan):
    _check_memory(built, _spec(model, shared_models), board, plan)


@pytest.mark.slow
@pytest.mark.parametrize("model,board,plan", SLOW_CASES)
def test_predicted_memory_matrix(built, shared_models, model, board, plan):
    _check_memory(built, _spec(model, shared_models), board, plan)


def test_kernel_features_of_kws(tmp_path, shared_models):
    result = export_model(str(shared_models / KWS), tmp_path / "e")
    rows = kernel_rows(result, (tmp_path / "e" / "model.c").read_text())
    ops = [r["op"] for r in rows]
    assert ops.count("depthwise") == 4 and ops.count("conv1x1") == 4 and ops.count("convkxk") == 1
    first = rows[0]  # 10x4 convolution, stride 2, 1 -> 64 channels, 25x5 output
    assert (first["kernel"], first["stride"], first["in_c"], first["out_c"], first["out_h"], first["out_w"]) == \
        (10, 2, 1, 64, 25, 5)
    assert first["macs"] == 320000 and first["nhwc"] == 1
    dw = rows[ops.index("depthwise")]
    assert dw["groups"] == 64 and dw["inplace"] == 1 and dw["uses_requant"] >= 1
    assert sum(r["uses_dot"] > 0 for r in rows if r["op"] == "conv1x1") == 4
    for r in rows:  # what runs: every 1x1 MAC inside a register-blocked dot product of 4 rows (trips.py)
        if r["op"] == "conv1x1":
            e = r["exec"]
            assert e["rows_calls"] == e["dot_calls"] > 0 and 4 * e["dot_elems"] == r["macs"] and e["mac"] == 0
            assert r["x_dot_len"] == 64 and r["x_rows_share"] == 1


def test_patch_stage_features(tmp_path):
    result = export_model("zoo:mcunet-in0:int8", tmp_path / "e", patches=4, split=6)
    rows = kernel_rows(result, (tmp_path / "e" / "model.c").read_text())
    stage = rows[0]
    assert stage["op"] == "patch_stage" and stage["patches"] == 16 and stage["stage_layers"] == 6
    assert stage["patch_in_h"] > 48 // 4 and stage["halo"] == stage["patch_in_h"] - 12
    lbl = sum(layer.macs for layer in build_graph(load("zoo:mcunet-in0:int8").mod).layers[:6])
    assert lbl < stage["macs"] < 3 * lbl  # every patch recomputes its halo: more MACs than layer by layer
    assert stage["halo_cache"] == 0 and stage["exec"]["all_macs"] == stage["macs"]
    e = stage["exec"]  # the stores by what they write (the float input quantized into the first patch: float), and
    # the copy / fill calls' word stores apart (an NCHW stage's runs: codegen/copy_kernels.py)
    assert sum(e[f"stores_{c}"] for c in ("const", "reg", "copy", "float", "int", "call")) == e["stores"] \
        and e["stores_float"] > 0
    assert e["stores_call"] > 0 and e["run_calls"] > 0 and e["requant"] > 0  # tvmp_requant_rbzr counted since version 5
    assert e["window_macs"] >= 9 * e["window_calls"] > 0  # 3x3 windows and larger


def test_stage_executes_exactly_the_analysed_macs(tmp_path, shared_models, capsys):
    """The stage's loop nests counted exactly (trips.py: loop bounds that depend on the patch run value by value,
    border checks evaluated over their loops): the cache mode executes the layer-by-layer MACs, the recompute
    mode the profile's patched MACs (halos recomputed, only in-image positions), each layer's MACs add up."""
    counts = {}
    for halo in ("recompute", "cache"):
        out = tmp_path / halo
        result = export_model(str(shared_models / KWS), out, patches=4, split=5, halo=halo)
        counts[halo] = kernel_rows(result, (out / "model.c").read_text(), halo)[0]
    lbl = sum(layer.macs for layer in build_graph(load(str(shared_models / KWS)).mod).layers[:5])
    assert main(["profile", str(shared_models / KWS), "--patches", "4", "--split", "5", "--json"]) == 0
    modes = json.loads(capsys.readouterr().out)["patch_based"]["halo_modes"]
    assert counts["cache"]["halo_cache"] == 1 and counts["recompute"]["halo_cache"] == 0
    assert counts["cache"]["macs"] == lbl
    assert counts["recompute"]["macs"] - lbl == modes["recompute"]["macs"] - modes["cache"]["macs"] > 0
    for row in counts.values():  # per layer (trips' wmacs:<weight buffer>): five convolutions
        per_layer = [v for k, v in row["exec"].items() if k.startswith("wmacs:layer")]
        assert len(per_layer) == 5 and sum(per_layer) == pytest.approx(row["exec"]["all_macs"])
    # each element computed once: fewer computed stores (its copies, caches and the NHWC stride-1 depthwise layers'
    # input channels, may outnumber recompute mode's, whose depthwise layers write at their input's top-left)
    assert counts["cache"]["exec"]["stores_int"] < counts["recompute"]["exec"]["stores_int"]


@T.prim_func
def _blocked_and_window(ha: T.handle, hw: T.handle, hd: T.handle, hout: T.handle, ho2: T.handle):
    a = T.match_buffer(ha, (8, 10), "int8")
    w = T.match_buffer(hw, (32,), "int8")
    d = T.match_buffer(hd, (9,), "int8")
    out = T.match_buffer(hout, (10, 4), "int32")
    o2 = T.match_buffer(ho2, (10,), "int32")
    for p in range(10):
        acc = T.alloc_buffer((4,), "int32")
        for j in range(4):
            acc[j] = 0
        for k in range(8):  # a scalar 1x1 register-blocked over 4 output channels: one reduction loop
            for j in range(4):
                acc[j] = acc[j] + T.Cast("int32", a[k, p]) * T.Cast("int32", w[j * 8 + k])
        for j in range(4):
            out[p, j] = acc[j]
        for ky in range(3):  # a 3x3 depthwise window: two reduction loops
            for kx in range(3):
                o2[p] = o2[p] + T.Cast("int32", a[ky, kx]) * T.Cast("int32", d[ky * 3 + kx])


def test_scalar_macs_classed_by_their_reduction_loops():
    """trips: a MAC's class is the number of loops it reduces over (not of all the loops around it: a scalar 1x1
    over 8 channels blocked over 4 outputs is `blk`, not depthwise); stores are told by what they write, the
    zeros into the kernel's own 4-element accumulator as `stores_reg` (features 11: kept in registers)."""
    e = executed(_blocked_and_window)
    assert e["mac_blk"] == 10 * 8 * 4 and e["mac_dw"] == 10 * 9 and e["mac_1x1"] == e["mac_kxk"] == 0
    assert e["stores"] == e["stores_reg"] + e["stores_copy"] == 80 and e["stores_reg"] == 40
    assert e["stores_const"] == 0


@T.prim_func
def _local_inits(hout: T.handle):
    out = T.match_buffer(hout, (10, 8), "int32")
    for p in range(10):
        acc = T.alloc_buffer((1,), "int32")
        window = T.alloc_buffer((8,), "int32")
        acc[0] = 0
        for j in range(8):
            window[j] = 0
        for j in range(8):
            acc[0] = acc[0] + window[j]
            out[p, j] = 0
        out[p, 0] = acc[0]


def test_constant_stores_into_registers_told_from_memory():
    """trips (features 11): a constant into a local the kernel allocates with at most REG_ELEMS elements (a one-
    element accumulator, which GCC keeps in a register) is `stores_reg`; into a larger local (a padded window copy,
    on the stack) or a parameter's buffer it stays `stores_const`."""
    e = executed(_local_inits)
    assert e["stores_reg"] == 10 and e["stores_const"] == 10 * 8 + 10 * 8


def test_let_expressions_under_loops_run_value_by_value():
    """trips: a loop whose variable decides a branch runs value by value; a let expression under it (TVM's lowering
    of a floor division binds ``rmod``) takes another value in each, which one shared analyzer refused (TVM's
    "different const bound" error stopped a deep network's collection). Counted exactly: x = p % 2 + 1 > 1 for
    p = 1 and 3."""
    p, rm, x = tirx.Var("p", "int32"), tirx.Var("rmod", "int32"), tirx.Var("x", "int32")
    out = tirx.decl_buffer((4,), "int32", "out")
    body = tirx.SeqStmt([tirx.Bind(x, tirx.Let(rm, tirx.floormod(p, 2), rm + 1)),
                         tirx.IfThenElse(x > 1, tirx.BufferStore(out, tirx.const(1, "int32"), [p]), None)])
    e = executed(tirx.PrimFunc([out], tirx.For(p, 0, 4, tirx.ForKind.SERIAL, body)))
    assert e["branches"] == 4 and e["stores"] == e["stores_const"] == 2


def test_border_checks_repeated_and_pad_stores_split():
    """trips: the patch stage's border positions. A branch testing a condition already tested on the way (an
    earlier branch of the same sequence, or the enclosing one) is counted as repeated (the compiler reuses the
    outcome); a store of if_then_else(in image, computed, pad) counts the computed class and its calls only in
    the positions that take it (here 3 of 8), the pad constant in the others."""
    p, k = tirx.Var("p", "int32"), tirx.Var("k", "int32")
    out = tirx.decl_buffer((8,), "int8", "out")
    src = tirx.decl_buffer((8,), "float32", "src")
    acc = tirx.decl_buffer((1,), "int32", "acc")
    inside = tirx.all(2 <= p, p < 5)
    quantized = tirx.Cast("int8", tirx.call_extern("int32", "tvmp_sat_s8", tirx.Cast("int32", src[p])))
    body = tirx.SeqStmt([
        tirx.IfThenElse(inside, tirx.BufferStore(acc, tirx.const(0, "int32"), [0]), None),
        tirx.IfThenElse(inside, tirx.For(k, 0, 2, tirx.ForKind.SERIAL, tirx.IfThenElse(
            inside, tirx.BufferStore(acc, acc[0] + 1, [0]), None)), None),
        tirx.BufferStore(out, tirx.if_then_else(inside, quantized, tirx.const(-128, "int8")), [p])])
    e = executed(tirx.PrimFunc([out, src, acc], tirx.For(p, 0, 8, tirx.ForKind.SERIAL, body)))
    assert e["branches"] == 8 + 8 + 3 * 2 and e["branches_repeated"] == 8 + 3 * 2
    assert e["stores_float"] == 3 and e["stores_const"] == 3 + 5 and e["call_tvmp_sat_s8"] == 3


def test_runs_of_patch_dependent_length_and_64_bit_multiplies_counted():
    """trips (features 9): a fill call whose length depends on the patch loop (a stage's border run: here 4 - 2p
    bytes, then none) runs value by value, its word stores counted for each patch (they counted 0); a stored value's
    64-bit multiplications (TVM's fixed-point arithmetic of a stage's residual add) are counted as ``mul64``."""
    p = tirx.Var("p", "int32")
    out = tirx.decl_buffer((8,), "int8", "out")
    wide = tirx.decl_buffer((4,), "int32", "wide")
    fill = tirx.Evaluate(tirx.call_extern("void", "tvmp_fill_s8", out.access_ptr("w"), tirx.const(0, "int32"),
                                          tirx.max(4 - 2 * p, 0)))
    scaled = tirx.Cast("int32", (tirx.Cast("int64", wide[p]) * tirx.const(3 << 33, "int64")
                                 + tirx.Cast("int64", wide[p]) * tirx.const(5, "int64")) >> tirx.const(31, "int64"))
    body = tirx.SeqStmt([fill, tirx.BufferStore(wide, scaled, [p])])
    e = executed(tirx.PrimFunc([out, wide], tirx.For(p, 0, 4, tirx.ForKind.SERIAL, body)))
    assert e["call_tvmp_fill_s8"] == 4 and e["stores_call"] == 1 + 2  # 4 bytes: one word store; 2 bytes: two byte stores
    assert e["mul64"] == 4 * 2 and e["stores_int"] == 4


def test_contiguous_constant_fills_counted_as_fill_calls():
    """trips (features 12): a nest of loops storing an int8 constant whose index runs through one unit-stride run
    (an NHWC stage's padding rows: ``for q: for c: buf[q * 3 + c] = -128``, which GCC compiles to word stores) is
    counted as that run's word stores and tail bytes (``stores_fill``) and one run (``fill_runs``), apart from an
    NCHW stage's fill calls (``stores_call``, ``run_calls``); a strided constant store, a run shorter than MIN_FILL and
    a nest with a branch inside stay ``stores_const``. A run's length may depend on a patch loop (counted value by
    value)."""
    def loop(v: tirx.Var, n: Any, body: Any) -> tirx.For:
        return tirx.For(v, 0, n, tirx.ForKind.SERIAL, body)

    r, q, c, p = (tirx.Var(n, "int32") for n in "rqcp")
    a, b = tirx.decl_buffer((256,), "int8", "a"), tirx.decl_buffer((256,), "int8", "b")
    pad = tirx.const(-128, "int8")
    assert trips.MIN_FILL == 4
    nests = {
        # rows as long as the stride: one run of 4 x 5 x 3 = 60 bytes, 15 words
        "whole": (loop(r, 4, loop(q, 5, loop(c, 3, tirx.BufferStore(a, pad, [r * 15 + q * 3 + c])))),
                  dict(fill_runs=1, stores_fill=15, stores_const=0)),
        # rows of 15 bytes 20 apart: four runs of 3 words and 3 tail bytes
        "rows": (loop(r, 4, loop(q, 5, loop(c, 3, tirx.BufferStore(a, pad, [r * 20 + q * 3 + c])))),
                 dict(fill_runs=4, stores_fill=4 * (3 + 3), stores_const=0)),
        # every third byte: strided, not a run
        "strided": (loop(q, 5, tirx.BufferStore(b, pad, [q * 3])), dict(fill_runs=0, stores_const=5)),
        # runs of 3 bytes (below MIN_FILL) 8 apart
        "short": (loop(r, 4, loop(c, 3, tirx.BufferStore(b, pad, [r * 8 + c]))),
                  dict(fill_runs=0, stores_const=12)),
        # a condition inside the nest: not a plain fill
        "guarded": (loop(q, 8, tirx.IfThenElse(q < 6, tirx.BufferStore(b, pad, [q]), None)),
                    dict(fill_runs=0, stores_const=6)),
        # a run of 2p x 3 bytes for patch p = 0, 1, 2: none, then 6 bytes (1 word, 2 bytes), then 12 (3 words)
        "patches": (loop(p, 3, loop(q, 2 * p, loop(c, 3, tirx.BufferStore(a, pad, [q * 3 + c])))),
                    dict(fill_runs=2, stores_fill=(1 + 2) + 3, stores_const=0)),
    }
    for name, (nest, want) in nests.items():
        e = executed(tirx.PrimFunc([a, b], nest))
        assert {k: e[k] for k in want} == want, name
        counts = exec_counts(tirx.PrimFunc([a, b], nest))
        assert counts["fill_runs"] == want["fill_runs"] and counts["run_calls"] == e["call_tvmp_fill_s8"] == 0, name


def test_stage_measured_loop_nest_by_loop_nest(tmp_path, shared_models):
    """measure(loop_nests=True): the patch stage's firmware instrumented before each top-level loop nest of the
    patch body; the loop nests' counts add up to the stage's (the code between them is a few instructions per
    patch) and their executed counts to the stage's."""
    rec = measure(str(shared_models / KWS), Plan(3, (2, 2)), "f746", work_dir=tmp_path, loop_nests=True)
    stage, nests = rec["rows"][0], rec["loop_nests"]
    assert stage["op"] == "patch_stage" and len(nests) >= 3 and all(n["measured"] > 0 for n in nests)
    assert sum(n["measured"] for n in nests) == pytest.approx(stage["measured"], rel=0.01)
    for key in ("stores", "all_macs", "requant"):
        assert sum(n["exec"][key] for n in nests) == pytest.approx(stage["exec"][key])
    assert all(n["patches"] == 0 and stage_terms(n, ("one",)) == [0.0] for n in nests)


def test_stage_loop_nests_with_a_region_run(tmp_path):
    """A recompute stage whose 1x1 layer's rows run as one run where the region is as wide as its buffer (the
    export's choice, `if (n == W) { run } else { rows }`: codegen/channel_rows.py): that choice is one loop nest in
    the TIR and in the instrumented C, and the loop nests add up to the stage."""
    net = NetSpec("run_nests", "mbv2", 30, ConvSpec(3, 16, 3, 2), (BlockSpec(16, 32, 16, 3, 1, True, False),), None, 10)
    path = tmp_path / "run_nests.onnx"
    onnx.save(build_spec(net, int8=True), path)
    rec = measure(str(path), Plan(4, (3, 3)), "f746", work_dir=tmp_path, loop_nests=True)
    stage, nests = rec["rows"][0], rec["loop_nests"]
    assert rec["bit_exact"] and stage["op"] == "patch_stage" and len(nests) >= 4
    assert sum(n["measured"] for n in nests) == pytest.approx(stage["measured"], rel=0.01)


def test_stage_loop_nests_with_a_column_paired_down(tmp_path):
    """An NHWC recompute stage whose last layer's tiles are odd both ways (30 -> 15, 3 x 3 patches: 5 x 5): its
    odd column paired down after the rows (`stage_forms.one_nest`) shows in the C as three blocks at the body's
    level (the rows' loop, the column's pairs, the last pixel's channel loop; the deep round's
    synth-400009-deep-nhwc-patch failed "120 loop nests in the C, 116 in its TIR" on it): one loop nest, and the
    loop nests add up to the stage."""
    net = NetSpec("odd_nests", "mbv2", 30, ConvSpec(3, 16, 3, 2), (BlockSpec(16, 32, 16, 3, 1, True, False),), None, 10)
    rec = measure(nhwc_model(net), Plan(4, (3, 3)), "f746", work_dir=tmp_path, label="odd_nests", loop_nests=True)
    stage, nests = rec["rows"][0], rec["loop_nests"]
    assert rec["bit_exact"] and stage["op"] == "patch_stage" and len(nests) >= 4
    assert sum(n["measured"] for n in nests) == pytest.approx(stage["measured"], rel=0.02)


def test_an_emulator_run_of_the_same_firmware_is_reused(tmp_path, monkeypatch, shared_models):
    """measure() reuses the emulator run of a firmware built from the same files (QEMU's counts are exact): kws from
    another path (which the generated C names in a comment) is not built again and counts the same."""
    monkeypatch.setenv("TVM_PATCH_CACHE", str(tmp_path / "cache"))
    first = measure(str(shared_models / KWS), Plan(), "f746", work_dir=tmp_path)
    other = tmp_path / "elsewhere" / "kws_int8.tflite"
    other.parent.mkdir()
    shutil.copy(shared_models / KWS, other)

    def no_build(*_a, **_k):
        raise AssertionError("the same firmware was built again")

    monkeypatch.setattr(cost_measure, "build_project", no_build)
    again = measure(str(other), Plan(), "f746", work_dir=tmp_path)
    assert again["total"] == first["total"] and [r["measured"] for r in again["rows"]] == \
        [r["measured"] for r in first["rows"]]
    with pytest.raises(AssertionError, match="built again"):  # another firmware (int8 weights) is measured
        measure(str(other), Plan(), "f746", work_dir=tmp_path, wide="none")


def test_a_runs_key_is_what_the_firmware_is_built_from(tmp_path):
    """run_key: the firmware's files, board and options; not the export folder or the model's name; None on a
    board (cycles are always measured)."""
    proj = tmp_path / "p"
    for rel, text in (("Makefile", "all:"), ("src/a.c", "int a;"), ("model/model.c", "/* from /tmp/x/n.onnx */ int m;"),
                      ("export/tvmp_export.json", '{"export_seconds": 1.0}')):
        (proj / rel).parent.mkdir(parents=True, exist_ok=True)
        (proj / rel).write_text(text)
    meta = {"board": "f746", "options": {"opt": "O3"}, "model": "/tmp/x/n.onnx"}
    (proj / "tvmp_project.json").write_text(json.dumps(meta))
    key = cost_measure.run_key(proj, "emulator", "/tmp/x/n.onnx")
    assert cost_measure.run_key(proj, "device", "/tmp/x/n.onnx") is None
    (proj / "export" / "tvmp_export.json").write_text('{"export_seconds": 2.0}')
    (proj / "tvmp_project.json").write_text(json.dumps({**meta, "model": "/tmp/y/n.onnx"}))
    (proj / "model" / "model.c").write_text("/* from /tmp/y/n.onnx */ int m;")
    assert cost_measure.run_key(proj, "emulator", "/tmp/y/n.onnx") == key
    (proj / "src" / "a.c").write_text("int a, b;")
    assert cost_measure.run_key(proj, "emulator", "/tmp/y/n.onnx") != key
    (proj / "src" / "a.c").write_text("int a;")
    (proj / "tvmp_project.json").write_text(json.dumps({**meta, "options": {"opt": "O2"}}))
    assert cost_measure.run_key(proj, "emulator", "/tmp/y/n.onnx") != key


def test_stage_layers_diagnosis_beside_the_prediction(shared_models):
    """`python -m bench.cost_model --stage-layers`: each loop nest of kws's stage measured (adding up to the stage's
    count) beside the shipped model's prediction of it; built as the measurements are (widened where the Flash
    holds them: ``wide_narrowed`` says what was not)."""
    from bench.cost_model import stage_layers

    out = stage_layers(str(shared_models / KWS), Plan(3, (2, 2)), "f746")
    nests = out["loop_nests"]
    assert out["wide_narrowed"] == [] and len(nests) >= 3 and all(n["measured"] > 0 for n in nests)
    assert out["loop_nests_measured"] == pytest.approx(out["stage_measured"], rel=0.01)
    assert out["loop_nests_predicted"] > 0 and any(n["layers"] == ["layer0"] for n in nests)


def test_shipped_models_load():
    """Both shipped models load; each names the stage terms its coefficients weigh (an older file: fewer)."""
    for core in ("m4", "m7"):
        m = load_cost_model(default_path(core))
        assert m.core == core and m.unit == "instructions" and m.meta["n_networks"] > 0
        assert m.stage_coef is not None and len(m.meta["kernels_fingerprint"]) == 16
        assert len(m.stage_coef) == len(m.stage_names) and set(m.stage_names) <= KNOWN_STAGE_TERMS
    assert load_cost_model(default_path("m7")).stage_names == STAGE_TERMS


def test_stage_model_comparison_on_the_shipped_measurements():
    """`python -m bench.cost_model --compare-stage`: every stage model cross-validated and scored on the
    held-out stages (about 12 s: nine booster fits)."""
    out = stage_comparison(cost_collect.read_records(DATA / "m7.jsonl.gz"))
    models = {"linear", "linear_one_store_term", "linear_without_window_macs", "linear_one_scalar_mac_term",
              "linear_without_branches", "linear_branches_skipped", "linear_without_loop_nests", "linear_round3_terms", "linear_older_terms",
              "per_layer"}
    assert set(out["cv_mape"]) == set(out["heldout_mape"]) == models and out["n_train_stages"] >= 2 * out["cv_folds"]
    assert len(out["heldout"]) == out["n_heldout_stages"] > 0
    for m in models:
        assert out["heldout_mape"][m] == pytest.approx(sum(abs(h[m]) for h in out["heldout"]) / len(out["heldout"]),
                                                       abs=1e-3)


def test_fill_terms_priced_on_their_own_loop_nests():
    """The PINNED_TERMS (constant fills) take the price their loop nests measure alone, not what the stages' fit
    would give them: here the stages' fills grow with a cost no term names (3 a MAC beyond the modelled 1), which an
    unpinned fit loads on the fills; with the fill nests measuring 2 a word and 10 a run, the fit keeps those."""
    from tvm_patch.cost.latency import PINNED_TERMS, fit_stage, pinned_prices

    def row(measured, nest=False, **exec_):
        return {"measured": measured, "patches": 0 if nest else 4, "halo_cache": 0,
                **({"loop_nest": 0} if nest else {}),
                "exec": {**dict.fromkeys(EXEC_KEYS, 0.0), **exec_}}
    nests = [row(2 * w + 10 * r, True, stores_fill=w, fill_runs=r) for w, r in ((100, 2), (400, 3), (50, 5), (900, 4))]
    stages = []
    for i in range(80):
        macs, fills, big = 1000.0 * (1 + i % 7), 10.0 * (1 + (i * 5) % 11), i % 2
        # what only the big-kernel stages pay (3 a MAC), whose padded regions (fills) are 21 times larger
        stages.append(row(macs + 2 * fills * (1 + 20 * big) + 3 * macs * big, mac_flat=macs,
                          stores_fill=fills * (1 + 20 * big)))
    assert set(PINNED_TERMS) == {"stores_fill", "fill_runs"}
    assert pinned_prices(nests) == pytest.approx({"stores_fill": 2.0, "fill_runs": 10.0}, rel=1e-6)
    coef = dict(zip(STAGE_TERMS, fit_stage(stages, nests=nests, nest_weight=0.0)))
    assert coef["stores_fill"] == pytest.approx(2.0) and coef["fill_runs"] == pytest.approx(10.0)
    free = dict(zip(STAGE_TERMS, fit_stage(stages, nests=[], nest_weight=0.0)))  # no nests: the fills fitted freely
    assert free["stores_fill"] > 2 * coef["stores_fill"]


def test_stale_model_warns_once_on_stderr(tmp_path, capsys):
    """A model trained on other kernels (another fingerprint) predicts, with one warning line on stderr."""
    data = json.loads(default_path("m7").read_text())
    data["meta"]["kernels_fingerprint"] = "0" * 16
    stale = tmp_path / "stale.json"
    stale.write_text(json.dumps(data))
    m = for_core("m7", stale)
    for_core("m7", stale)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "trained on other kernels" in err[0] and str(stale) in err[0] and "make costmodel" in err[0]
    assert warn_if_stale(m, stale) and m.core == "m7"
    fresh = tmp_path / "fresh.json"
    data["meta"]["kernels_fingerprint"] = kernels_fingerprint()
    fresh.write_text(json.dumps(data))
    assert not warn_if_stale(load_cost_model(fresh), fresh) and capsys.readouterr().err == ""


@pytest.fixture(scope="session")
def installed_fingerprint() -> str:
    """This installation's kernels fingerprint: computed once (about 15 s of probe exports) or read from the disk
    cache, shared by the session."""
    return kernels_fingerprint()


@pytest.fixture
def fresh_fingerprint(monkeypatch, tmp_path):
    """An empty disk cache and no fingerprint remembered in this process, before and after the test (whose
    monkeypatched probes must not leave their value behind)."""
    monkeypatch.setenv("TVM_PATCH_CACHE", str(tmp_path / "cache"))
    kernels_fingerprint.cache_clear()
    yield
    kernels_fingerprint.cache_clear()


STAGE_PROBE = next(p for p in fingerprint.PROBES if p.plan.halo == "cache")  # one of the quick probes (~2 s)


def test_shipped_models_carry_this_installations_fingerprint(installed_fingerprint):
    """The shipped models were measured on the code this tree generates: a change of the kernels' C without a
    re-collection (or a re-labelling, when the C is unchanged) fails here, not only with a warning."""
    for core in CORES:
        assert load_cost_model(default_path(core)).meta["kernels_fingerprint"] == installed_fingerprint, core


def test_fingerprint_is_stable_across_calls_and_processes(installed_fingerprint, tmp_path):
    """The same value on every call; a probe's digest computed afresh in another process (an empty cache) is
    this process's."""
    assert kernels_fingerprint() == installed_fingerprint and re.fullmatch(r"[0-9a-f]{16}", installed_fingerprint)
    code = f"from tvm_patch.cost import fingerprint as f; print(f.digest((f.PROBES[{fingerprint.PROBES.index(STAGE_PROBE)}],)))"
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "TVM_PATCH_CACHE": str(tmp_path)},
                         cwd=Path(fingerprint.__file__).parents[2], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == fingerprint.digest((STAGE_PROBE,))


def test_fingerprint_follows_the_generated_c_not_its_comments(monkeypatch, tmp_path):
    """Other kernels' code (no dot-product micro-kernel for short loops) is another fingerprint; the micro-kernel
    header with one more comment (in model.c, but no code) is the same one."""
    before = fingerprint.digest((STAGE_PROBE,))
    header = tmp_path / "tvmp_kernels.h"
    header.write_text("/* a comment, as a refactor writes one */\n" + c_kernels.MICRO_KERNELS.read_text())
    monkeypatch.setattr(c_kernels, "MICRO_KERNELS", header)
    assert fingerprint.digest((STAGE_PROBE,)) == before
    monkeypatch.setattr(micro_kernels, "MIN_DOT_LENGTH", 10_000)
    assert fingerprint.digest((STAGE_PROBE,)) != before


@pytest.fixture(scope="module")
def probes_model_c(tmp_path_factory) -> dict[fingerprint.Probe, str]:
    """Each probe export's model.c (as the fingerprint hashes it), exported once for the tests that read them."""
    tmp = tmp_path_factory.mktemp("probes")
    return {p: fingerprint.probe_c(p, tmp)["model.c"].decode() for p in fingerprint.PROBES}


def test_a_probe_quantizes_an_input_of_zero_point_0(probes_model_c):
    """One probe's float input calibrates to zero point 0 (TVM then drops the "+ 0", its own quantize match):
    the fingerprint sees that match's code."""
    probe = next(p for p in fingerprint.PROBES if p.net is fingerprint.ZP0_NET)
    layers = synth_layers(probe.net)
    assert calibrate(probe.net.name, layers, probe.net.resolution)["input"].zero_point == 0
    c = probes_model_c[probe]
    quantize = c[c.index("void tvmp_quantize("):]
    assert re.search(r"tvmp_quant_row_s8\([^;]*, 0\);", quantize[:quantize.index("\n}")])


# Micro-kernels that kernels may call but that no probe export calls (the probes widen every kernel's weights, and
# none has these layers' forms): the fingerprint hashes their code, in the header, but not the decisions that call
# them, so a codegen change that only alters where they are called goes unseen (round 40's trap). Give a probe the
# form at the next collection and take the name off; a new micro-kernel must come with a probe that calls it.
UNPROBED_KERNELS = frozenset({
    # blocks of four rows, int8 weights and widened (the probes' pixel pairs take two: export/reschedule.py caps
    # them; which layers take four, e.g. export/odd_planes.py's rows, is for the probe that adds them to find)
    "tvmp_dot_q15_px2_rows4", "tvmp_dot_q15_px4_rows4", "tvmp_dot_s8_px2_rows4", "tvmp_dot_q15w_px2_rows4",
    "tvmp_dot_s8w_px2_rows4", "tvmp_dot_s8w_rows4",
    # a border tap's weight sums at run time, int8 weights and widened
    "tvmp_pad_rows", "tvmp_pad_rows_w",
    # an unbounded requantization
    "tvmp_requant_rs"})


def test_the_probes_call_every_micro_kernel_but_the_listed_ones(probes_model_c):
    """Each micro-kernel a kernel may call (one the header defines and does not call itself) is called by some probe
    export's kernels, except UNPROBED_KERNELS, which stays the exact list of those that are not."""
    header = fingerprint.code_text(c_kernels.MICRO_KERNELS.read_bytes()).decode()
    # not called by the header itself: its one "name(" is its definition (a macro-made kernel's has none)
    entries = {name for name in c_kernels.MICRO_KERNEL_NAMES if len(re.findall(rf"\b{name}\(", header)) <= 1}
    called: set[str] = set()
    for probe, c in probes_model_c.items():
        assert header in c, probe.name
        called |= set(re.findall(c_kernels.MICRO_KERNEL_CALL, c.replace(header, "")))
    assert UNPROBED_KERNELS <= entries and entries - called == UNPROBED_KERNELS


def test_fingerprint_cached_by_sources_and_same_for_the_same_c(monkeypatch, fresh_fingerprint):
    """Computed once per installation's sources (the disk cache); after a source change that leaves the C as it
    was (another cache key) it is computed again, to the same value."""
    monkeypatch.setattr(fingerprint, "PROBES", (STAGE_PROBE,))
    computed = []
    digest = fingerprint.digest
    monkeypatch.setattr(fingerprint, "digest", lambda probes: computed.append(probes) or digest(probes))
    first = kernels_fingerprint()
    kernels_fingerprint.cache_clear()
    assert kernels_fingerprint() == first and len(computed) == 1
    monkeypatch.setattr(cost_cache, "source_fingerprint", lambda: "a refactored tree")
    kernels_fingerprint.cache_clear()
    assert kernels_fingerprint() == first and len(computed) == 2


@pytest.mark.parametrize("content,why", [(b"\x00garbage", "corrupt"), (b'{"format": "x"}', "not a tvm-patch"),
                                          (None, "made for format")])
def test_bad_model_file_is_one_line_exit_2(tmp_path, capsys, content, why):
    bad = tmp_path / "bad.json"
    if content is None:  # a real model file of another feature version
        data = json.loads(default_path("m7").read_text())
        data["features_version"] = -1
        bad.write_text(json.dumps(data))
    else:
        bad.write_bytes(content)
    assert main(["plan", "zoo:mcunet-in0:int8", "--board", "f746", "--cost-model", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and why in err and str(bad) in err


def test_model_of_another_core_is_refused(capsys):
    assert main(["plan", "zoo:mcunet-in0:int8", "--board", "f412", "--cost-model", str(default_path("m7"))]) == 2
    assert "trained for m7" in capsys.readouterr().err


def test_collect_resumes_after_interruption(tmp_path, monkeypatch):
    """Records are flushed one a line; a torn last line (Ctrl-C mid-write) is ignored and its item redone."""
    measured = []

    # resume, not measuring
    def fake_measure(model, plan, board, runner, timeout_sec, tmp, label=None, loop_nests=False, narrow=(),
                     wide="auto"):
        measured.append((Path(model).name, plan))
        return {"core": "m7", "unit": "instructions", "rows": [], "total": 1, "io_bytes": 0}

    monkeypatch.setattr(cost_collect, "measure", fake_measure)
    monkeypatch.setattr(cost_collect, "_patched_plan", lambda model, seed, deep=False, many=False, halo=None, grid=None: Plan(1, (2, 2)))
    out = tmp_path / "m.jsonl"
    assert cost_collect.collect("f746", out, n=2, heldout=False)["measured"] == 4
    lines = out.read_text().splitlines()
    out.write_text("\n".join(lines[:2]) + "\n" + lines[2][:10])  # interrupted while writing the third
    measured.clear()
    counts = cost_collect.collect("f746", out, n=2, heldout=False)
    assert counts == {"measured": 2, "skipped": 2, "failed": 0} and len(measured) == 2
    ids = [json.loads(ln)["id"] for ln in out.read_text().splitlines()[:2]]
    assert len(cost_collect.done_ids(out)) == 4 and ids == [i for i, _ in cost_collect.items(2, 0, False)][:2]


def test_refeature_resumes_and_keeps_failed_runs(tmp_path, monkeypatch):
    """refeature writes record by record to OUT.partial (a second run continues it, a torn line redone), keeps
    the runs that failed (did not fit) as they were, drops other kernels' records, and leaves OUT whole, gzipped
    like its input."""
    fp = cost_collect.kernels_fingerprint()
    recs = [{"id": f"r{i}", "rows": [], "kernels_fingerprint": fp} for i in range(3)] + \
        [{"id": "f", "failed": "does not fit"}, {"id": "old", "rows": [], "kernels_fingerprint": "other"}]
    src, out = tmp_path / "in.jsonl.gz", tmp_path / "out.jsonl.gz"
    src.write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in recs).encode()))
    done = []

    def fake(rec, tmp):
        done.append(rec["id"])
        return dict(rec, refeatured=True)

    monkeypatch.setattr(cost_collect, "_refeatured", fake)
    partial = tmp_path / "out.jsonl.gz.partial"
    partial.write_text(json.dumps(dict(recs[0], refeatured=True)) + "\n" + '{"id": "r1", "ro')  # interrupted
    assert cost_collect.refeature(src, out) == {"refeatured": 3, "dropped": 1}
    assert done == ["r1", "r2"] and not partial.exists()
    lines = [json.loads(x) for x in gzip.decompress(out.read_bytes()).decode().splitlines()]
    assert [r["id"] for r in lines] == ["r0", "r1", "r2", "f"] and lines[3] == recs[3]
    assert all(r["refeatured"] for r in lines[:3])


def test_plan_json_and_chosen_plan_builds_to_prediction(built, shared_models, capsys):
    """One fast case of the search: kws on the F412 (the slow test checks every Pareto plan of two models)."""
    assert main(["plan", str(shared_models / KWS), "--board", "f412", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    for key in ("split", "patches", "halo", "sram_bytes", "predicted_latency_ms", "fits", "pareto"):
        assert key in out
    assert out["fits"] and out["sram_bytes"] <= 256 * 1024
    front = out["pareto"]
    assert [p["sram_bytes"] for p in front] == sorted(p["sram_bytes"] for p in front)
    assert all(a["latency_ms"] > b["latency_ms"] for a, b in zip(front, front[1:]))
    chosen = Plan(out["split"], tuple(out["patches"]) if out["patches"] else None, out["halo"])
    assert built(str(shared_models / KWS), "f412", chosen)["sram_bytes"] == out["sram_bytes"]


def test_build_uses_the_plan_when_none_is_given(shared_models, tmp_path, capsys):
    """`build --board` without --patches/--split builds `plan --fast`'s answer and says so in --json; the
    firmware has the SRAM the plan predicted."""
    assert main(["build", str(shared_models / KWS), "--board", "f412", "-o", str(tmp_path / "fw"), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    plan = r["plan"]
    assert plan["source"].startswith("tvm-patch plan --fast") and plan["sram_bytes"] == r["sram_bytes"]
    assert r["export"]["plan"]["patches"] == (plan["patches"][0] if plan["patches"] else None)
    assert r["export"]["plan"]["split"] == plan["split"] and plan["predicted_latency_ms"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("model", ["zoo:mcunet-in0:int8", VWW])
@pytest.mark.parametrize("board", ["f412", "h743"])
def test_every_pareto_plan_builds_to_predicted_sram(built, shared_models, model, board):
    res = search(_spec(model, shared_models), board)
    assert res.pareto
    for p in res.pareto:
        plan = Plan(p.plan["split"], tuple(p.plan["patches"]) if p.plan["patches"] else None, p.plan["halo"])
        assert built(_spec(model, shared_models), board, plan)["sram_bytes"] == p.sram_bytes


def test_nothing_fits_says_by_how_much(monkeypatch, shared_models, capsys):
    """A board too small for every plan (a 12 kB F746): JSON with fits false and the miss, one line, exit 2."""
    tiny = dataclasses.replace(BOARDS["f746"], key="tiny", sram_bytes=12 * 1024)
    monkeypatch.setitem(BOARDS, "tiny", tiny)
    res = search(str(shared_models / KWS), "tiny")
    assert res.chosen is None and res.best_miss is not None
    out = res.to_json()
    assert not out["fits"] and out["misses_sram_by_bytes"] == res.best_miss.sram_bytes - 12 * 1024 > 0
    assert res.best_miss.sram_bytes == min(p.sram_bytes for p in res.pareto)
    with pytest.raises(TvmPatchError, match="bad objective|unknown --objective"):
        search(str(shared_models / KWS), "f746", objective="speed")


@pytest.mark.parametrize("model,board,plan", FAST_CASES, ids=["kws-f746-lbl", "kws-f412-2x2", "kws-f412-2x2-cache"])
def test_flash_floor_is_below_every_plans_flash(built, shared_models, model, board, plan):
    """The search's Flash floor (int8 weights and the input) is at most each plan's constants as int8 (biases and
    tables besides the weights) with the input, so at most what its firmware links."""
    from tvm_patch.cost.search import estimates

    spec = _spec(model, shared_models)
    floor = estimates(spec)[1]
    fw = built(spec, board, plan)
    ex, ins = fw["export"], sum(io["bytes"] for io in fw["export"]["inputs"])
    assert ins < floor <= ex["weights_bytes"] - sum(ex["wide_weights"].values()) + ins <= fw["flash_bytes"]


def test_a_network_over_the_flash_floor_is_refused_without_exports(monkeypatch, shared_models):
    """A board whose Flash is below the floor (kws's weights and input) fits no plan: the search says so from the
    estimates alone, in the one line `plan` and `build --plan auto` exit 2 with."""
    from tvm_patch.cli import _no_plan_message
    from tvm_patch.cost import search as search_mod

    spec = str(shared_models / KWS)
    floor = search_mod.estimates(spec)[1]
    small = dataclasses.replace(BOARDS["f412"], key="small-flash", flash_bytes=floor - 1)
    monkeypatch.setitem(BOARDS, "small-flash", small)
    monkeypatch.setattr(search_mod, "export_plan", lambda *a, **k: pytest.fail("a plan was exported"))
    res = search(spec, "small-flash")
    assert res.chosen is None and res.exact == 0 and not res.pareto
    assert res.to_json()["reason"] == res.reason
    assert f"need {floor:,} B of Flash, small-flash has {floor - 1:,} B" in res.reason
    message = _no_plan_message(spec, "small-flash", res, res.to_json())
    assert message == f"no plan of {spec} fits small-flash: {res.reason}"


DATA = Path(__file__).resolve().parent.parent / "bench" / "cost_data"


def test_train_and_eval_on_the_shipped_measurements(tmp_path, capsys):
    """`train` on the M7 measurements writes a model that `eval` scores on the held-out networks only."""
    model = tmp_path / "m7.json"
    assert main(["costmodel", "train", "--core", "m7", "--data", str(DATA / "m7.jsonl.gz"), "--model", str(model)]) == 0
    capsys.readouterr()
    trained = load_cost_model(model)
    assert trained.meta["n_networks"] == len([r for r in cost_collect.read_records(DATA / "m7.jsonl.gz")
                                              if not r.get("heldout")])
    assert main(["costmodel", "eval", "--core", "m7", "--data", str(DATA / "m7.jsonl.gz"), "--model", str(model)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {"mape", "within_10pct_share", "n_heldout", "per_op"} <= set(out)
    nets = out["networks"]
    assert out["n_heldout"] == len(nets) > 0 and all(n["id"].startswith("heldout-") for n in nets)
    assert out["mape"] == pytest.approx(sum(abs(n["error"]) for n in nets) / len(nets), abs=1e-3)
    assert out["within_10pct_share"] == pytest.approx(sum(abs(n["error"]) <= 0.10 for n in nets) / len(nets), abs=1e-3)
    for n in nets:
        assert n["error"] == pytest.approx((n["predicted"] - n["measured"]) / n["measured"], abs=1e-3)


def test_nhwc_synthetic_network_has_tflite_form_kernels(tmp_path):
    """Round 2's training networks: the NHWC module exports integer-only, its convolutions as NHWC kernels."""
    net = sample_net(3)
    mod = nhwc_model(net, sample_inserts(net, 3))
    assert float_ops_remaining(LowerToInteger()(mod)) == []
    result = export_model(mod, tmp_path / "e")
    rows = kernel_rows(result, (tmp_path / "e" / "model.c").read_text())
    convs = [r for r in rows if r["op"] in ("conv1x1", "convkxk", "depthwise")]
    assert len(convs) >= 2 * len(net.blocks) and all(r["nhwc"] == 1 for r in convs)


def test_narrow_round_keeps_the_stage_int8():
    """The training round of deep patched networks whose stage keeps int8 weights (collect.NARROW_ROUND): its items
    name the stage kernel as narrow, apart from the deep round's ids."""
    got = list(cost_collect.items(2, cost_collect.NARROW_ROUND, heldout=False))
    assert [i for i, _ in got] == ["synth-600000-deep-narrow-patch", "synth-600001-deep-nhwc-narrow-patch"]
    assert all(it["narrow"] == [cost_collect.STAGE_KERNEL] and it["deep"] and it["patched"] for _, it in got)
    assert "narrow" not in dict(cost_collect.items(1, cost_collect.DEEP_ROUND, heldout=False))["synth-400000-deep-patch"]


def test_kind_rounds_fix_their_kind(tmp_path):
    """The training rounds of one kind of deep stage (collect.KIND_ROUNDS): round 8 NHWC with the halos cached (the
    MLPerf Tiny models' cache-mode form), round 9 NCHW with 3x3 patches recomputing them: every item deep and
    patched, of its layout, and its drawn plan of its halo mode (and grid) whatever the seed draws (the deep round's
    draw would recompute two times in three), its split drawn as the deep round draws it."""
    got = list(cost_collect.items(3, 8, heldout=False))
    assert [i for i, _ in got] == [f"synth-80000{k}-deep-nhwc-cache" for k in range(3)]
    assert all(it["nhwc"] and it["deep"] and it["patched"] and it["halo"] == "cache" and it["fit_split"]
               and "grid" not in it for _, it in got)
    nine = list(cost_collect.items(2, 9, heldout=False))
    assert [i for i, _ in nine] == [f"synth-90000{k}-deep-3x3-recompute" for k in range(2)]
    assert all(not it["nhwc"] and it["deep"] and it["halo"] == "recompute" and it["grid"] == 3 for _, it in nine)
    assert {(8, 12), (9, 12)} <= set(cost_collect.DEFAULT_ROUNDS)
    model9 = cost_collect._item_model(nine[0][1], nine[0][0], str(tmp_path))
    assert {cost_collect._patched_plan(model9, seed, deep=True, halo="recompute", grid=3).patches
            for seed in range(8)} == {(3, 3)}
    model = cost_collect._item_model(got[0][1], got[0][0], str(tmp_path))
    drawn = {cost_collect._patched_plan(model, seed, deep=True).halo for seed in range(12)}
    assert drawn == {"recompute", "cache"}  # the deep round's own draw, both modes
    plans = [cost_collect._patched_plan(model, seed, deep=True, halo="cache") for seed in range(12)]
    assert {p.halo for p in plans} == {"cache"}
    assert [(p.split, p.patches) for p in plans] == \
        [(q.split, q.patches) for q in (cost_collect._patched_plan(model, seed, deep=True) for seed in range(12))]
    # where the drawn split's arena does not fit, the next shallower valid split is measured, deepest first
    chain = list(cost_collect.shallower_plans(model, plans[0]))
    assert chain[0] == plans[0] and [p.split for p in chain[1:]] == sorted(
        (s for s in valid_splits(build_graph(cost_collect._module(model)), plans[0].patches) if s < plans[0].split),
        reverse=True)
    assert {(p.patches, p.halo) for p in chain} == {(plans[0].patches, "cache")}
    tried = []

    def run(plan):
        tried.append(plan.split)
        if len(tried) < 3:
            raise FitError("SRAM: needs at least ...")
        return {"plan": plan}
    assert cost_collect.first_fitting(chain, run)["plan"] == chain[2] and tried == [p.split for p in chain[:3]]
    tried.clear()

    def flash(plan):
        tried.append(plan.split)
        raise FitError("Flash: needs at least ...", flash_over=100)
    with pytest.raises(FitError, match="Flash"):  # a Flash overflow is not what a shallower split cures
        cost_collect.first_fitting(chain, flash)
    assert tried == [chain[0].split]


def test_int8_round_keeps_every_kernel_int8():
    """The training round of networks layer by layer with every weight int8 (collect.INT8_ROUND, the kernels a
    small Flash keeps int8): its items ask for no widening, alternate ONNX and NHWC, and are never patched."""
    got = list(cost_collect.items(2, cost_collect.INT8_ROUND, heldout=False))
    assert [i for i, _ in got] == ["synth-700000-int8-lbl", "synth-700001-nhwc-int8-lbl"]
    assert all(it["wide"] == "none" and not it["patched"] for _, it in got)
    assert [it["nhwc"] for _, it in got] == [False, True]
    assert (cost_collect.INT8_ROUND, 12) in cost_collect.DEFAULT_ROUNDS


def test_adaptive_round_picks_the_worst_training_networks():
    """nn-Meter's adaptive sampling: neighbours of the networks worst predicted under cross-validation, never
    of a held-out one."""
    recs = cost_collect.read_records(DATA / "m7.jsonl.gz")
    errors = cv_errors(recs, "m7")
    assert errors and all(not r.get("heldout") for _, r in errors)
    assert [abs(e) for e, _ in errors] == sorted((abs(e) for e, _ in errors), reverse=True)
    items = near_items(recs, "m7", 3, 9)
    assert len(items) == 3 and len({i["synth"] for _, i in items}) == 3
    assert all(i.startswith("adapt9-") and it["near"] == 9 for i, it in items)
    assert sample_near(items[0][1]["synth"], 9).blocks  # the neighbour builds


@pytest.mark.parametrize("name,args,macs", [
    ("tvmp_dot_s8", [0, 0, 24, 0], 24),
    ("tvmp_dot_s8_rows4", [0, 0, 0, 16, 0], 64),
    ("tvmp_dot_s8_px2_rows2", [0, 0, 0, 0, 16, 0], 64),
    ("tvmp_dot_q15_px2_rows4", [0, 0, 0, 32, 0], 256),  # a widened pair: (q, w, ws, n, acc)
    ("tvmp_dot_q15_px4_rows2", [0, 0, 0, 32, 0], 256),  # two widened pairs (four pixels) x 2 rows
    ("tvmp_window2_s8", [0] * 9 + [3, 3, 0], 18),
    ("tvmp_window4_s8", [0] * 9 + [7, 7, 0], 196),  # four 7x7 windows
    ("tvmp_window2_s8w", [0] * 9 + [5, 5, 0], 50),  # two 5x5 windows on widened weights
    ("tvmp_widen_px2", [0, 0, 32, 0], 0),  # a copy, no MACs
])
def test_micro_kernel_macs_by_signature(name, args, macs):
    """The MACs of one micro-kernel call from its constant arguments (tvmp_kernels.h's signatures)."""
    assert _micro_macs(name, args) == macs


def test_a_saved_partial_collection_resumes_on_another_machine(tmp_path, monkeypatch):
    """`--save-partial` copies this fingerprint's unfinished collection files to bench/cost_data/partial; on a
    machine whose cache has none, the re-collection starts from them (and a cache file of its own wins)."""
    fp = kernels_fingerprint()
    monkeypatch.setattr(bench_cost_model, "PARTIAL", tmp_path / "partial")
    monkeypatch.setenv("TVM_PATCH_CACHE", str(tmp_path / "cache_a"))
    work = bench_cost_model._work_file(f"retrain_m7_{fp}.jsonl")
    assert not work.exists()  # nothing saved yet: a fresh start
    work.write_text('{"id": "a"}\n{"id": "b"}\n')
    (work.parent / "retrain_m7_0000000000000000.jsonl").write_text("{}\n")  # other kernels: not saved
    saved = bench_cost_model.save_partial()
    assert [p.name for p in saved] == [f"retrain_m7_{fp}.jsonl.gz"]
    monkeypatch.setenv("TVM_PATCH_CACHE", str(tmp_path / "cache_b"))  # the other machine
    resumed = bench_cost_model._work_file(f"retrain_m7_{fp}.jsonl")
    assert resumed.read_text() == work.read_text() and resumed != work
    resumed.write_text('{"id": "a"}\n')
    assert bench_cost_model._work_file(f"retrain_m7_{fp}.jsonl").read_text() == '{"id": "a"}\n'


def test_loop_nests_count_what_the_instrumented_c_measures():
    """stage_layers.loop_nest_counts: a statement between loop nests of the patch body (a cache mode's guarded row
    copy, a barrier) counts with the loop nest before it, as the C readings before each loop nest measure it (it
    counted with the next one, so the cache mode's copies were predicted in the wrong loop nest), and what runs
    outside the patch body counts once, in the first: the loop nests add up to the stage."""
    from tvm_patch.cost.features import exec_counts
    from tvm_patch.cost.stage_layers import loop_nest_counts

    i, j, a, c, b = (tirx.Var(n, "int32") for n in ("i", "j", "a", "c", "b"))
    buf = tirx.decl_buffer((64,), "int8", "buf")
    one = tirx.const(1, "int8")
    nest_a = tirx.For(a, 0, 4, tirx.ForKind.SERIAL, tirx.BufferStore(buf, one, [a]))
    guarded = tirx.IfThenElse(j < 1, tirx.For(c, 0, 8, tirx.ForKind.SERIAL, tirx.BufferStore(buf, buf[c], [c + 8])), None)
    nest_b = tirx.For(b, 0, 2, tirx.ForKind.SERIAL, tirx.BufferStore(buf, one, [b + 16]))
    patches = tirx.For(i, 0, 2, tirx.ForKind.SERIAL, tirx.For(j, 0, 2, tirx.ForKind.SERIAL,
                                                              tirx.SeqStmt([nest_a, guarded, nest_b])))
    func = tirx.PrimFunc([buf], tirx.SeqStmt([tirx.BufferStore(buf, one, [63]), patches]))
    first, second = loop_nest_counts(func)
    # nest_a's 4 bytes are a run: one word store a patch (a fill, features 12); nest_b's 2 bytes stay byte stores
    assert (first["stores"], first["stores_copy"], first["branches"]) == (1 + 4 * 1 + 2 * 8, 2 * 8, 4)
    assert (second["stores"], second["stores_copy"], second["branches"]) == (4 * 2, 0, 0)
    assert first["stores"] + second["stores"] == exec_counts(func)["stores"]


def test_held_out_runs_resume_and_keep_what_did_not_fit(tmp_path, monkeypatch):
    """bench.cost_model's extra and blind runs (_measure_runs): each run measured once into a resumable cache file
    (a second call measures nothing), a run without a plan or that does not fit kept as one `failed` line, and
    bench/cost_data/<core>_<kind>.jsonl.gz written whole."""
    monkeypatch.setattr(bench_cost_model, "DATA", tmp_path / "data")
    monkeypatch.setattr(bench_cost_model, "PARTIAL", tmp_path / "data" / "partial")
    monkeypatch.setenv("TVM_PATCH_CACHE", str(tmp_path / "cache"))
    (tmp_path / "data").mkdir()
    measured = []

    def fake_measure(model, plan, board, work_dir=None):
        measured.append((model, plan, board))
        if model == "big":
            raise TvmPatchError("SRAM: needs at least 600,000 B, h743 has 524,288 B")
        return {"model": model, "rows": [], "total": 1}

    monkeypatch.setattr(bench_cost_model, "measure", fake_measure)
    runs = [("a-lbl", "small", Plan, "h743"), ("a-patch", "small", lambda: None, "h743"),
            ("b-lbl", "big", Plan, "h743")]
    out = bench_cost_model._measure_runs("blind", "m7", runs)
    recs = cost_collect._all_lines(out)
    assert out == tmp_path / "data" / "m7_blind.jsonl.gz" and [r["id"] for r in recs] == ["a-lbl", "a-patch", "b-lbl"]
    assert recs[0]["heldout"] and recs[0]["item"] == {"model": "small", "patched": False}
    assert recs[1]["failed"] == "small: no valid split for a-patch" and recs[2]["failed"].startswith("SRAM: needs")
    assert [m for m, _, _ in measured] == ["small", "big"]
    bench_cost_model._measure_runs("blind", "m7", runs)  # resumed: nothing measured again
    assert len(measured) == 2 and cost_collect._all_lines(out) == recs
