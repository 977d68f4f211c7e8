"""Tuning sessions (tvm_patch/tune): a short emulator session on one vww kernel whose records change the
build (still bit-exact), the packing and unrolling knobs' record applied, a session on a kernel the F412's build keeps int8
(measured and recorded in that form), an RPC session through a local tracker and two servers, failing
candidates, and bad input."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from tvm import rpc
from tvm.rpc.tracker import Tracker

from conftest import mlperf_tflite_files
from tvm_patch import cli
from tvm_patch.codegen.c_kernels import NOINLINE_MACRO, UNROLL_MACRO
from tvm_patch.errors import TvmPatchError
from tvm_patch.export import export_model
from tvm_patch.export.odd_planes import OVERLAP_ATTR
from tvm_patch.export.wide_weights import weights_key
from tvm_patch.patch.stage_forms import PAIRS_DOWN
from microtvm_projects.boards import get_board
from tvm.s_tir.meta_schedule.builder import BuilderInput
from tvm.s_tir.meta_schedule.runner import RunnerInput
from tvm.target import Target
from tvm_patch.tune import CandidateError, tune_model
from tvm_patch.tune.builder import HarnessBuilder
from tvm_patch.tune.harness import (BLOCKINGS, KernelHarness, kernel_program, network_rewrite, runs_in_place,
                                    write_kernel_export)
from tvm_patch.tune.activations import call_inputs
from tvm_patch.tune.measure import measure_export
from tvm.s_tir.meta_schedule.arg_info import ArgInfo
from tvm.s_tir.meta_schedule.database import TuningRecord
from tvm_patch.tune.records import TunedKernels, open_database, tuning_target, workload
from tvm_patch.tune.runners import HarnessRunner, local_measure
from tvm_patch.tune.space import Choice, fixed_trace, row_choices, trace_choice
from tvm_patch.cost import Plan, predict
from tvm_patch.cost.latency import for_core
from tvm_patch.cost.measure import export_plan
from tvm_patch.zoo import build_spec
from tvm_patch.zoo.spec import BlockSpec, ConvSpec, NetSpec

KWS = next((f for f in mlperf_tflite_files() if f.endswith("kws_int8.tflite")), None)
VWW = next((f for f in mlperf_tflite_files() if f.endswith("vww_96_int8.tflite")), None)
# vww's classifier (256 -> 2): blockings 1 (the default: 4 does not divide 2) and 2, and 2 wins on the M7 (its
# multiplier and shift are per tensor: no packing knob)
VWW_DENSE = "tvmp_fused_matmul_add10_requantize10_tir_clip10_cast10"
DENSE = "tvmp_fused_matmul_add1_requantize1_tir_clip1_cast1"  # kws's classifier
KWS_DW = "tvmp_fused_conv2d1_add_requantize_tir_clip_cast"  # a depthwise kernel: the packing is its only knob
# mcunet-in0's dense layer (192 -> 1000): the F412's build keeps its weights int8 (the Flash)
IN0_INT8 = "tvmp_fused_matmul_add24_requantize32_tir_clip24_cast24_dequantize"
REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(KWS is None or VWW is None, reason="the MLPerf Tiny models are not in the shared folder")


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    """Emulator trials on vww's classifier into a fresh database: its whole space (rows 1 or 2, unrolled or not)."""
    db = tmp_path_factory.mktemp("tune") / "db"
    return tune_model(VWW, "h743", trials=6, runner="emulator", db_dir=db, kernels=[VWW_DENSE], progress=False), db


def test_session_records_every_choice_and_the_best(session):
    s, db = session
    (k,) = s.kernels
    assert k.name == VWW_DENSE and k.choices == [1, 2] and not k.pack_knob and k.failed == 0
    assert (k.default_rows, k.default_packed) == (1, True)
    assert s.measured >= 1 and not s.interrupted
    records = open_database(db, create=False).get_all_tuning_records()
    assert len(records) == 1 + s.measured  # the default's record, then one per trial
    by_choice: dict[Choice, set[float]] = {}
    for r in records:
        by_choice.setdefault(trace_choice(r.trace), set()).add(float(r.run_secs[0]))
    assert all(len(c) == 1 for c in by_choice.values()), by_choice  # exact counts: a choice always costs the same
    assert by_choice[Choice(1, True)] == {k.default_cost}
    assert k.best_cost == min(min(c) for c in by_choice.values())
    assert by_choice[Choice(k.best_rows, k.best_packed, k.best_unrolled)] == {k.best_cost}
    assert k.best_cost <= k.default_cost
    assert s.totals() == (k.calls * k.default_cost, k.calls * k.best_cost)  # what the session saves per inference
    assert s.to_json()["totals"] == {"default": k.calls * k.default_cost, "tuned": k.calls * k.best_cost}


def test_records_apply_and_change_the_built_kernel(session, tmp_path, capsys):
    s, db = session
    (k,) = s.kernels
    assert (k.best_rows, k.best_unrolled) != (k.default_rows, False), "the emulator's counts make another choice win"
    assert cli.main(["build", VWW, "-o", str(tmp_path / "tuned"), "--tuning-db", str(db), "--check", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["check"]["passed"] and out["tuning"]["tuned_kernels"][VWW_DENSE]["rows"] == k.best_rows
    assert out["tuning"]["tuned_kernels"][VWW_DENSE]["packed"] == k.best_packed
    assert out["tuning"]["tuned_kernels"][VWW_DENSE]["unrolled"] == k.best_unrolled
    assert list(out["tuning"]["tuned_kernels"]) == [VWW_DENSE]
    default = export_model(VWW, tmp_path / "default")
    tuned_c = (tmp_path / "tuned" / "model.c").read_text()
    assert tuned_c != (tmp_path / "default" / "model.c").read_text()
    # the applied choice is the database's: the same lookup on the default build's kernel
    tuned = TunedKernels(open_database(db, create=False))
    chosen = Choice(k.best_rows, k.best_packed, k.best_unrolled)
    assert tuned.choice(VWW_DENSE, default.program.funcs[VWW_DENSE]) == chosen


def test_predict_counts_a_tuned_kernel_at_its_records_cost(session, tmp_path, capsys):
    """`predict`/`plan` with the database: the plan exported as `build --tuning-db` builds it, the tuned kernel
    counted at its record's measured cost instead of the model's prediction (the rest as without it); the record's
    cost is the kernel's count in the built network's emulator run (a one-kernel firmware on the network's own
    activations: the same instructions, within 0.1 %)."""
    s, db = session
    (k,) = s.kernels
    lm = for_core("m7")
    default = predict(VWW, Plan(), "h743", lm, flash=False)
    tuned = predict(VWW, Plan(), "h743", lm, flash=False, tuning_db=db)
    assert default.measured_kernels == [] and tuned.measured_kernels == [VWW_DENSE]
    _, rows = export_plan(VWW, Plan(), tmp_path / "default")
    predicted = sum(c for r, c in zip(rows, lm.kernel_counts(rows)) if r["func"] == VWW_DENSE)
    assert abs(tuned.instructions - (default.instructions - predicted + k.calls * k.best_cost)) <= 1
    assert (tuned.sram_bytes, tuned.arena_bytes) == (default.sram_bytes, default.arena_bytes)
    assert cli.main(["build", VWW, "--board", "h743", "--plan", "none", "--tuning-db", str(db), "--run", "emulator",
                     "--profile", "--json", "-o", str(tmp_path / "built")]) == 0
    run = json.loads(capsys.readouterr().out)["run"]
    counts = [c["instructions"] for c in run["kernels"] if c["name"] == VWW_DENSE]
    assert len(counts) == k.calls and all(abs(c - k.best_cost) <= 1e-3 * k.best_cost for c in counts), counts
    assert cli.main(["plan", VWW, "--board", "h743", "--fast", "--json", "--tuning-db", str(db)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["patches"] is None and out["pareto"][0]["measured_kernels"] == [VWW_DENSE]
    assert out["pareto"][0]["instructions"] == tuned.instructions


def _definition(model_c: str, kernel: str) -> str:
    """The line that opens ``kernel``'s definition (with the unrolling and no-inlining macros when it has them)."""
    return next(line for line in model_c.splitlines() if _prototype_of(line).startswith(f"void {kernel}("))


def _prototype_of(line: str) -> str:
    return line.removeprefix(UNROLL_MACRO + " ").removeprefix(NOINLINE_MACRO + " ")


def _prototype(model_c: str, kernel: str) -> str:
    return _prototype_of(_definition(model_c, kernel))


def test_a_record_unpacking_and_unrolling_applies(tmp_path, capsys):
    """A database whose fastest record of a kws depthwise kernel keeps its constants unpacked and unrolls its loops
    (written here, not measured: this is about applying records) builds that kernel with three constant arrays
    instead of one and GCC's unroller on, bit-exact with TVM; the harness of that choice emits the same kernel."""
    default = export_model(KWS, tmp_path / "default")
    func = default.program.funcs[KWS_DW]
    n_out = next(c.n_outputs for c in default.program.calls if c.func == KWS_DW)
    blocking, rewrite = network_rewrite(func, 4, default.kernel_funcs[KWS_DW], n_out)
    h = KernelHarness(KWS_DW, kernel_program(default.program, KWS_DW), rewrite, blocking)
    assert h.packs and not row_choices(func)
    db = open_database(tmp_path / "db", create=True)
    choice = Choice(1, False, True)
    db.commit_tuning_record(TuningRecord(fixed_trace(KWS_DW, func, choice, False, True),
                                         db.commit_workload(workload(func)), [1.0],
                                         tuning_target("cortex-m7", "emulator"), ArgInfo.from_prim_func(func)))
    assert cli.main(["build", KWS, "-o", str(tmp_path / "tuned"), "--tuning-db", str(tmp_path / "db"), "--check",
                     "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["check"]["passed"] and out["tuning"]["tuned_kernels"][KWS_DW]["packed"] is False
    assert out["tuning"]["tuned_kernels"][KWS_DW]["unrolled"] is True
    assert list(out["tuning"]["tuned_kernels"]) == [KWS_DW]
    tuned = _prototype((tmp_path / "tuned" / "model.c").read_text(), KWS_DW)
    assert _prototype((tmp_path / "default" / "model.c").read_text(), KWS_DW).count("int32_t *") == 1
    assert tuned.count("int32_t *") == 3, tuned
    tuned_c = (tmp_path / "tuned" / "model.c").read_text()
    assert _definition(tuned_c, KWS_DW).startswith(UNROLL_MACRO + " void ")
    assert [ln.split("(")[0] for ln in tuned_c.splitlines() if ln.startswith(UNROLL_MACRO + " ")] == [
        f"{UNROLL_MACRO} void {KWS_DW}"]  # that kernel only
    assert UNROLL_MACRO not in (tmp_path / "default" / "model.c").read_text()
    harness = (h.export(choice, tmp_path / "harness" / "export") / "model.c").read_text()
    assert _prototype(harness, KWS_DW).count("int32_t *") == 3
    assert _definition(harness, KWS_DW).startswith(UNROLL_MACRO + " void ")


def test_the_harness_runs_a_kernel_in_place_exactly_when_the_network_does(tmp_path):
    """vww's first depthwise kernel could run in place in its one-call harness but does not in the network (its
    arena plan): the harness follows the network (``restrict`` kept), since the C compiler's unrolled code differs
    between the two forms; an in-place kernel of the network stays in place in its harness."""
    res = export_model(VWW, tmp_path / "vww")
    forms = {}
    for name in ("tvmp_fused_conv2d1_add_requantize_tir_clip_cast", "tvmp_fused_conv2d3_add3_requantize3_tir_clip3_cast3"):
        func, emitted = res.program.funcs[name], res.kernel_funcs[name]
        n_out = next(c.n_outputs for c in res.program.calls if c.func == name)
        blocking, rewrite = network_rewrite(func, 4, emitted, n_out)
        h = KernelHarness(name, kernel_program(res.program, name), rewrite, blocking, in_place=runs_in_place(emitted))
        out = h.export(Choice(unrolled=True), tmp_path / name / "export")
        forms[name] = (runs_in_place(emitted), json.loads((out / "tvmp_export.json").read_text())["in_place"],
                       "restrict lv" in _prototype((out / "model.c").read_text(), name))
        free = write_kernel_export(h.program, BLOCKINGS[blocking](func, 4), tmp_path / "free" / name, rewrite)
        forms[name] += (json.loads((free / "tvmp_export.json").read_text())["in_place"],)
    # (in place in the network, in its harness, restrict on its input; in place where the harness alone decides)
    assert list(forms.values()) == [(False, False, True, True), (True, True, False, True)], forms


def test_the_harness_runs_on_the_networks_activations(tmp_path):
    """The network's host program snapshots its arena before a call (tune/activations.py): vww's first kernel's
    harness, fed the network's input that way, computes exactly the activations the second kernel then reads; the
    project takes the export's sample input, and refuses one of the wrong size."""
    res = export_model(VWW, tmp_path / "vww")
    first, second = res.program.calls[0].func, res.program.calls[1].func
    net_in = [np.random.default_rng(5).integers(-128, 128, io.nbytes, dtype=np.int8).tobytes() for io in res.program.inputs]
    acts = call_inputs(res.program, res.arena_plan.tensor_offsets, tmp_path / "vww", net_in, [first, second], 120)
    assert acts[first] == net_in  # the first call reads the input as the driver copied it into the arena
    blocking, rewrite = network_rewrite(res.program.funcs[first], 4, res.kernel_funcs[first], 1)
    h = KernelHarness(first, kernel_program(res.program, first), rewrite, blocking, inputs=acts[first])
    export = h.export(Choice(), tmp_path / "h" / "export")
    got = measure_export(export, tmp_path / "h", "h743", "host", None).outputs
    assert got == [acts[second][0]]
    (export / "sample_input0.bin").write_bytes(net_in[0][:-1])
    with pytest.raises(CandidateError, match="bytes, but input input0 has"):
        measure_export(export, tmp_path / "h2", "h743", "host", None)


def test_a_patch_stage_is_tuned_and_its_record_applies(tmp_path):
    """With --patches the patch stage is a kernel like the others: its loop nest (which TVM's feature extraction
    rejects: tune/features.py gives it a row of its decisions) is measured unrolled or not, its patch loops peeled or
    not and its layer nests outlined or not (every candidate's outputs those of the default schedule on the emulator:
    none failed), and the build applies the best record to the stage: its unrolling, its peeling, and each outlined
    nest a static noinline function the stage calls."""
    stage = "tvmp_patch_stage"
    s = tune_model(KWS, "h743", trials=6, runner="emulator", db_dir=tmp_path / "db", patches=2, split=5,
                   halo="cache", kernels=[stage], progress=False)
    (k,) = s.kernels
    assert k.name == stage and k.failed == 0 and k.choices == [] and s.measured >= 2
    assert k.best_cost <= k.default_cost and s.untunable == []
    assert k.nests == 6  # the stage's input copy and its five layers (split 5)
    records = open_database(tmp_path / "db", create=False).get_all_tuning_records()
    choices = [trace_choice(r.trace) for r in records]
    assert {c.unrolled for c in choices} == {False, True}  # both measured
    assert any(c.outlined for c in choices) and all(set(c.outlined) <= set(range(k.nests)) for c in choices)
    assert {c.peeled for c in choices} == {False, True}  # the patch loops peeled or not: both measured, none failed
    tuned = TunedKernels(open_database(tmp_path / "db", create=False), get_board("h743").core)
    res = export_model(KWS, tmp_path / "built", patches=2, split=5, halo="cache", check=True, seeds=(0,),
                       **tuned.export_args())
    assert res.check.bit_exact and tuned.used[stage]["unrolled"] == k.best_unrolled
    assert tuned.used[stage]["outlined"] == k.best_outlined and tuned.used[stage]["peeled"] == k.best_peeled
    code = (tmp_path / "built" / "model.c").read_text()
    assert _definition(code, stage).startswith(UNROLL_MACRO + " ") == k.best_unrolled
    assert (NOINLINE_MACRO + " void " + stage + "(" in _definition(code, stage)) == bool(k.best_outlined)
    helpers = sorted(int(m) for m in re.findall(r"^static .*\bvoid " + stage + r"_nest(\d+)\(", code, flags=re.M))
    assert helpers == k.best_outlined


@pytest.fixture(scope="module")
def odd_columns(tmp_path_factory) -> str:
    """A tiny int8 NCHW network (30 x 30, a stride-2 stem 3 -> 8, one block 8 -> 32 -> 8) whose 3 x 3 patch stage has
    a 1x1 conv of 16 channel blocks over regions of odd width: a stage of two odd-column forms (stage_forms.py)."""
    net = NetSpec("odd_columns", "mbv2", 30, ConvSpec(3, 8, 3, 2), (BlockSpec(8, 32, 8, 3, 1, True, True),), None, 10)
    path = tmp_path_factory.mktemp("odd_columns") / "odd_columns.onnx"
    onnx.save(build_spec(net, int8=True), path)
    return str(path)


def test_the_odd_columns_form_is_a_knob_of_the_stage(odd_columns, tmp_path):
    """A patch stage with such columns: the export writes the form asked (`pairs_down`; the stage's default
    otherwise: paired down in cache mode), both bit-exact with TVM; a session measures both forms (the knob
    sampled, none failed) and the build applies the best record's."""
    stage = "tvmp_patch_stage"
    for down in (None, True, False):
        res = export_model(odd_columns, tmp_path / f"x{down}", patches=3, split="auto", halo="cache", check=True,
                           seeds=(0,), pairs_down=None if down is None else lambda n, f, down=down: down)
        assert res.check.bit_exact
        code = (tmp_path / f"x{down}" / "model.c").read_text()
        assert ("pixel_down" in code) is (down is not False) and PAIRS_DOWN not in code
    s = tune_model(odd_columns, "h743", trials=6, runner="emulator", db_dir=tmp_path / "db", patches=3,
                   split="auto", halo="cache", kernels=[stage], progress=False)
    (k,) = s.kernels
    assert k.name == stage and k.failed == 0 and k.down_default is True and s.measured >= 2
    records = open_database(tmp_path / "db", create=False).get_all_tuning_records()
    assert {trace_choice(r.trace).paired_down for r in records} == {False, True}
    tuned = TunedKernels(open_database(tmp_path / "db", create=False), get_board("h743").core)
    res = export_model(odd_columns, tmp_path / "built", patches=3, split="auto", halo="cache", check=True,
                       seeds=(0,), **tuned.export_args())
    assert res.check.bit_exact and tuned.used[stage]["paired_down"] == k.best_paired_down is not None
    assert ("pixel_down" in (tmp_path / "built" / "model.c").read_text()) is k.best_paired_down


@pytest.fixture(scope="module")
def dense(tmp_path_factory):
    """kws's dense kernel as a harness, with its reference outputs (host build of the unblocked kernel)."""
    tmp = tmp_path_factory.mktemp("dense")
    prog = export_model(KWS, tmp / "network").program
    h = KernelHarness(DENSE, kernel_program(prog, DENSE), "none")
    ref = measure_export(h.export(Choice(), tmp / "ref" / "export"), tmp / "ref", "h743", "host", None).outputs
    return h, ref, tmp


def test_a_kernel_kept_int8_is_tuned_and_recorded_in_that_form(tmp_path, capsys):
    """On the F412 mcunet-in0's widened weights overflow the Flash and its build keeps some kernels int8 (its dense
    layer among them): a session measures those on int8 weights and records them under that form (``weights_key``);
    the build that narrows the kernel applies the record, a build that widens it does not."""
    db = tmp_path / "db"
    s = tune_model("zoo:mcunet-in0:int8", "f412", trials=6, runner="emulator", db_dir=db, kernels=[IN0_INT8],
                   progress=False)
    (k,) = s.kernels
    assert k.int8_weights and k.failed == 0 and k.choices == [1, 2, 4] and k.default_rows == 4
    assert k.best_cost <= k.default_cost, k
    func = export_model("zoo:mcunet-in0:int8", tmp_path / "in0").program.funcs[IN0_INT8]
    tuned = TunedKernels(open_database(db, create=False), get_board("f412").core)
    assert tuned.choice(IN0_INT8, weights_key(func, False)) == Choice(k.best_rows, k.best_packed, k.best_unrolled)
    assert tuned.used[IN0_INT8]["cost"] == k.best_cost
    assert tuned.choice(IN0_INT8, weights_key(func, True)) is None and IN0_INT8 not in tuned.used


def test_with_the_machines_memory_the_kernel_is_tuned_widened(tmp_path):
    """`tune --emulator-memory machine` tunes the kernels as `build --emulator-memory machine` builds them: with QEMU's
    memory nothing needs narrowing, so the dense layer the F412's build keeps int8 is measured widened."""
    s = tune_model("zoo:mcunet-in0:int8", "f412", trials=1, runner="emulator", db_dir=tmp_path / "db",
                   kernels=[IN0_INT8], progress=False, emulator_memory="machine")
    (k,) = s.kernels
    assert not k.int8_weights and k.failed == 0 and k.best_cost <= k.default_cost


def test_records_are_keyed_by_the_weights_form(dense, tmp_path):
    """A record of a kernel on int8 weights applies to that form only; one on widened weights applies to its form
    and, where no int8 record exists, to the int8 form too (a session that measured the widened form only); the
    harness exports the kernel's weights in its form."""
    h, _, _ = dense
    func = h.func
    db = open_database(tmp_path / "db", create=True)

    def commit(form: Any, choice: Choice, cost: float) -> None:
        db.commit_tuning_record(TuningRecord(fixed_trace(DENSE, form, choice, True, False), db.commit_workload(
            workload(form)), [cost], tuning_target("cortex-m7", "emulator"), ArgInfo.from_prim_func(func)))

    commit(weights_key(func, True), Choice(2, True), 5.0)
    tuned = TunedKernels(db)
    assert tuned.choice(DENSE, weights_key(func, False)) == Choice(2, True)  # the widened form's, no int8 record
    commit(weights_key(func, False), Choice(1, True), 7.0)
    tuned = TunedKernels(db)
    assert tuned.choice(DENSE, weights_key(func, False)) == Choice(1, True) and tuned.used[DENSE]["cost"] == 7.0
    assert tuned.choice(DENSE, weights_key(func, True)) == Choice(2, True) and tuned.used[DENSE]["cost"] == 5.0
    assert weights_key(func, True).same_as(func)
    int8 = KernelHarness(DENSE, h.program, h.rewrite, h.blocking, widened=False)
    assert not int8.workload_func.same_as(func) and h.workload_func.same_as(func)
    protos = {w: _prototype((x.export(Choice(2), tmp_path / str(w) / "export") / "model.c").read_text(), DENSE)
              for w, x in ((True, h), (False, int8))}
    assert "int16_t *restrict param_0" in protos[True] and "int8_t *restrict param_0" in protos[False], protos


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_rpc_session_with_a_local_tracker_and_two_servers(dense, tmp_path):
    port = _free_port()
    tracker = Tracker(host="127.0.0.1", port=port, port_end=port + 1, silent=True)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    servers = []
    try:
        with pytest.raises(TvmPatchError, match="no server with key h743-emulator"):
            tune_model(KWS, "h743", runner="rpc", tracker=("127.0.0.1", tracker.port), db_dir=tmp_path / "none")
        for _ in range(2):
            sp = _free_port()
            servers.append(subprocess.Popen(
                [sys.executable, "-m", "tvm_patch", "rpc-server", "--tracker", f"127.0.0.1:{tracker.port}",
                 "--board", "h743", "--runner", "emulator", "--port", str(sp), "--port-end", str(sp + 1)],
                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        deadline = time.monotonic() + 120
        while True:
            info = rpc.connect_tracker("127.0.0.1", tracker.port).summary()
            free = info["queue_info"].get("h743-emulator", {}).get("free", 0)
            if free == 2:
                break
            assert time.monotonic() < deadline, f"the servers did not register: {info}"
            assert all(p.poll() is None for p in servers), servers[0].stderr.read() if servers[0].poll() else ""
            time.sleep(0.5)
        s = tune_model(KWS, "h743", trials=2, runner="rpc", tracker=("127.0.0.1", tracker.port), parallel=2,
                       db_dir=tmp_path / "db", kernels=[DENSE], progress=False, timeout_sec=60)
        (k,) = s.kernels
        assert k.failed == 0 and s.measured >= 1 and k.best_cost is not None
        # what the farm measured is what this machine's emulator measures
        h, ref, _ = dense
        local = measure_export(h.export(Choice(k.default_rows), tmp_path / "r4" / "export"), tmp_path / "r4", "h743",
                               "emulator", ref)
        assert k.default_cost == local.cost
    finally:
        for p in servers:
            p.terminate()
        for p in servers:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=10)
        tracker.terminate()


@pytest.mark.parametrize("argv, needle", [
    (["tune", "MODEL", "--board", "zz"], "unknown board 'zz'"),
    (["tune", "MODEL", "--board", "h743", "--runner", "rpc"], "--runner rpc needs --tracker"),
    (["tune", "MODEL", "--board", "h743", "--runner", "rpc", "--tracker", "127.0.0.1:1"], "cannot reach the tracker"),
    (["build", "MODEL", "-o", "OUT", "--tuning-db", "DB"], "unreadable tuning database"),
    (["build", "MODEL", "-o", "OUT", "--tuning-db", "NODB"], "no tuning records"),
    (["plan", "MODEL", "--board", "h743", "--fast", "--tuning-db", "NODB"], "no tuning records"),
    (["rpc-server", "--tracker", "127.0.0.1:1", "--board", "h743"], "cannot reach the tracker"),
    (["rpc-server", "--tracker", "nohost", "--board", "h743"], "give HOST:PORT"),
    (["tune", "NOMODEL", "--board", "h743", "--db", "NODB"], "no such file"),
    (["tune", "MODEL", "--board", "h743", "--db", "NODB", "--kernel", "nosuch"], "no such kernel"),
])
def test_bad_input_is_one_line_and_exit_2(argv, needle, tmp_path, capsys):
    (tmp_path / "DB").mkdir()
    (tmp_path / "DB" / "database_tuning_record.json").write_text("{not json\n")
    argv = [str(tmp_path / a) if a in ("OUT", "DB", "NODB", "NOMODEL") else KWS if a == "MODEL" else a for a in argv]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err
    assert not (tmp_path / "NODB").exists()  # no empty database left behind


def test_a_wrong_output_fails_the_candidate_and_the_session_goes_on(dense):
    h, ref, tmp = dense
    wrong = [bytes(b ^ 1 for b in ref[0])] + ref[1:]
    export = h.export(Choice(2), tmp / "c2" / "export")
    host = measure_export(export, tmp / "c2", "h743", "host", ref)
    assert host.unit == "seconds" and host.cost > 0 and host.outputs == ref
    with pytest.raises(CandidateError, match="wrong output"):
        measure_export(export, tmp / "c2w", "h743", "host", wrong)
    # as meta_schedule sees it: a result with the error and no cost, not an exception
    runner = HarnessRunner(local_measure("h743", "host", 60), {DENSE: wrong})
    (res,) = [f.result() for f in runner.run([RunnerInput(str(export), "cpu", [])])]
    assert res.run_secs is None and "wrong output" in res.error_msg
    # a candidate the builder cannot make is a build error, not an exception
    (built,) = HarnessBuilder({DENSE: h}, tmp).build([BuilderInput(workload(h.func), Target({"kind": "c"}))])
    assert built.artifact_path is None and "annotation" in built.error_msg


def test_bench_tuning_reports_the_patched_goal_with_both_builds_tuned():
    """bench.tuning --patches: each patched build against the layer-by-layer build in the same state, the bound from
    the MAC overhead, within or over, and the stage's tuned choice in the report."""
    from bench.tuning import _patched_line, goal

    g = goal({"untuned": 1000, "tuned": 900}, {"untuned": 1800, "tuned": 1570}, 0.7)
    assert g["bound"] == pytest.approx(1.72) and g["ratio"] == {"untuned": 1.8, "tuned": pytest.approx(1.7444, 1e-3)}
    assert g["within"] == {"untuned": False, "tuned": False}
    assert goal({"untuned": 1000, "tuned": 900}, {"untuned": 1800, "tuned": 1540}, 0.7)["within"]["tuned"]
    line = _patched_line({"patches": 4, "split_layers": 8, "network": {"untuned": 1800, "tuned": 1570},
                          "bit_exact": {"untuned": True, "tuned": True},
                          "stage": {"rows": 4, "packed": True, "unrolled": True, "outlined": [1, 2]}, **g})
    assert "bound 1.720x" in line and "1.800x the untuned" in line and "over" in line
    assert "unrolled, nests 1,2 outlined" in line and "halos recomputed" in line
    cached = _patched_line({"patches": 2, "halo": "cache", "split_layers": 8,
                            "network": {"untuned": 1800, "tuned": 1570}, "bit_exact": {"untuned": True, "tuned": True},
                            "stage": None, **g})
    assert "halos cached" in cached and "the stage tuned: its default" in cached
    assert _patched_line({"error": "tune (patch stage): boom"}) == "patched: error: tune (patch stage): boom"


def test_bench_tuning_totals_are_runs_without_the_profile(monkeypatch, tmp_path):
    """bench.tuning compares 1x1 calls in profiled builds, but its network totals (and the patched goal) are the
    same projects run without the profile's counters, as the patched builds are: a profiled firmware counts more."""
    import bench.tuning as bt

    calls = []

    def fake_cli(args, timeout):
        calls.append(args)
        if args[0] == "tune":
            return {"measured": 1, "kernels": [], "untunable": []}
        if args[0] == "profile":
            return {"patch_based": {"mac_overhead": 0.0}}
        tuned = "--tuning-db" in args
        if args[0] == "build" and "--patches" in args:  # run without --profile: its count is the plain one
            return {"export": {"plan": {"split_layers": 6}}, "tuning": {"tuned_kernels": {}},
                    "run": {"instructions": 1_019 if tuned else 1_300, "bit_exact": True}}
        if args[0] == "build":
            k = {"index": 0, "name": "k", "kind": "conv1x1", "macs": 10, "instructions": 90 if tuned else 100}
            return {"project_dir": str(tmp_path / ("t" if tuned else "u")), "tuning": {"tuned_kernels": {}},
                    "run": {"instructions": 1_010 if tuned else 1_110, "bit_exact": True, "kernels": [k]}}
        assert args[0] == "run" and args[2:] == ["--runner", "emulator"]  # the plain firmware of a built project
        return {"run": {"instructions": 1_000 if args[1] == str(tmp_path / "t") else 1_100}}

    monkeypatch.setattr(bt, "_cli", fake_cli)
    r = bt.bench_model("m.tflite", "h743", 4, tmp_path, 60.0, patches=2, halo="cache")
    assert r["network"] == {"untuned": 1_100, "tuned": 1_000}
    assert r["conv1x1"] == {"untuned": 100, "tuned": 90}
    assert [c[0] for c in calls] == ["tune", "build", "build", "run", "run", "tune", "build", "build", "profile"]
    assert all(c[c.index("--halo") + 1] == "cache" for c in calls[5:])
    p = r["patched"]
    assert p["halo"] == "cache" and p["ratio"]["tuned"] == pytest.approx(1.019) and p["within"]["tuned"]
    assert not p["within"]["untuned"]  # 1,300 / 1,100


def test_bench_tuning_reports_each_1x1_layer():
    """bench.tuning's per-layer verdicts: better, equal or worse per 1x1 call, other kinds left out, and builds
    whose calls differ refused."""
    from bench.tuning import compare, markdown

    def build(costs: list[tuple[str, str, int]]) -> dict:
        return {"run": {"kernels": [{"index": i, "name": n, "kind": k, "instructions": c, "macs": 100}
                                    for i, (n, k, c) in enumerate(costs)]}}

    untuned = build([("a", "conv1x1", 50), ("d", "depthwise", 9), ("b", "conv1x1", 40), ("c", "conv1x1", 30)])
    tuned = build([("a", "conv1x1", 45), ("d", "depthwise", 8), ("b", "conv1x1", 40), ("c", "conv1x1", 31)])
    rows = compare(untuned, tuned)
    assert [(r["kernel"], r["verdict"]) for r in rows] == [("a", "better"), ("b", "equal"), ("c", "worse")]
    with pytest.raises(ValueError):
        compare(untuned, build([("x", "conv1x1", 1)]))
    md = markdown([{"model": "m.tflite", "network": {"untuned": 129, "tuned": 124}, "bit_exact": {"untuned": True, "tuned": True},
                    "conv1x1": {"untuned": 120, "tuned": 116}, "layers": rows,
                    "tuned_kernels": {"a": {"rows": 2, "packed": False, "unrolled": True}, "b": {"rows": 4}}}], "h743")
    assert "1 better, 1 equal, 1 worse" in md and "| 0 | `a` | 100 | 50 | 45 | better |" in md
    assert "tuned kernels: `a` rows 2, unpacked, unrolled, `b` rows 4" in md


def test_the_harness_reproduces_every_kernel_of_an_nchw_network(tmp_path):
    """Each kernel of mcunet-in0 (NCHW: padded copies, pixel copies, in-place kernels, pixel pairs widened from the
    channel planes, overlapping pairs over its odd 3 x 3 planes) as the network's export emits it is one of the
    harness's forms, so a session measures what the build runs; the pixel-pair kernels have no blocking knob (rows
    2 and 4 are one kernel there)."""
    res = export_model("zoo:mcunet-in0:int8", tmp_path / "in0")
    forms = {}
    for name, func in res.program.funcs.items():
        n_out = next(c.n_outputs for c in res.program.calls if c.func == name)
        forms[name] = network_rewrite(func, 4, res.kernel_funcs[name], n_out)
    assert all(f is not None for f in forms.values()), [n for n, f in forms.items() if f is None]
    found = {f for f in forms.values()}
    assert {("channels", "padded copy"), ("channels", "in place"), ("pixels, channels first", "pixel pair copy")} <= found
    overlapped = [n for n, f in res.kernel_funcs.items() if f.attrs is not None and OVERLAP_ATTR in f.attrs]
    assert len(overlapped) == 10 and all(forms[n] == ("pixels, channels first", "pixel pair copy") for n in overlapped)
    pair = next(n for n, f in forms.items() if f[1] == "pixel pair copy")
    h = KernelHarness(pair, kernel_program(res.program, pair), "pixel pair copy", "pixels, channels first")
    assert row_choices(h.func) and h.row_choices == [] and h.packs
