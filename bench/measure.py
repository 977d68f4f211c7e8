"""Measure one model on one board: the analytic profiles, and per schedule the export, the firmware and one run.

Only the public entry points are used: `tvm_patch.report.profile`, `tvm_patch.export.export_model` and
`tvm_patch.board_build.build_for_board`. Every figure in the returned entry is measured in this call.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from microtvm_projects.boards import Board
from microtvm_projects.errors import FitError, ProjectError

from tvm_patch.board_build import build_for_board
from tvm_patch.cost.search import search as plan_search
from tvm_patch.errors import TvmPatchError
from tvm_patch.export import export_model
from tvm_patch.report import profile

from bench import peers
from bench.models import Model
from bench.results import count

PATCHES = 4
PLAN_SOURCE = ("layer by layer; the paper's settings (4x4, auto split); and `tvm-patch plan --fast`'s choice for "
               "the board (the first plan that fits in increasing estimated latency, with its predicted SRAM and "
               "latency beside the measured ones)")
PLANNED = "plan"  # the split of the schedule whose patches, split and halo come from the plan search
# results.json key -> (patches, split) given to the entry points.
SCHEDULES: dict[str, tuple[int | None, str | None]] = {
    "layer_by_layer": (None, None),
    "patch_4x4_auto": (PATCHES, "auto"),
    "plan": (None, PLANNED),
}
FIRMWARE_KEYS = ("fits", "sram_bytes", "flash_bytes", "arena_bytes", "stack_bytes", "data_bss_bytes",
                 "board_sram_bytes", "board_flash_bytes", "conditions")
EXPORT_DROP = ("out_dir", "files", "check")
CALL_KEYS = ("name", "kind", "macs", "instructions", "cycles")  # a profiled kernel call, in execution order
ERRORS = (TvmPatchError, ProjectError)

Step = Callable[[str], None]


def one_line(e: BaseException) -> str:
    """An error as one line: the project's own errors as they word it, anything else with its type."""
    if isinstance(e, ERRORS):
        return e.one_line()
    first = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), "")
    return f"{type(e).__name__}: {first}" if first else type(e).__name__


def _export_json(result: Any) -> dict[str, Any]:
    """An ExportResult as the board build reports it (without paths and host-check details)."""
    return {k: v for k, v in result.to_json().items() if k not in EXPORT_DROP}


def _firmware(out: dict[str, Any], report: dict[str, Any]) -> None:
    """Copy the board build's figures (and its run, if any) into a schedule's entry."""
    out.update({k: report[k] for k in FIRMWARE_KEYS})
    out["export"] = report["export"]
    out["run"] = report.get("run")


def measure_planned(model: Model, board: Board, runner: str, work: Path,
                    measured: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The schedule `tvm-patch plan --fast` chooses for the board, built and run like the others, with the
    plan's predictions (SRAM, Flash, instructions, latency) beside what was measured. A layer-by-layer choice
    is the firmware already measured as ``measured["layer_by_layer"]`` (the same build): not built again."""
    t0 = time.perf_counter()
    try:
        res = plan_search(model.spec, board.key, fast=True)
    except Exception as e:  # noqa: BLE001  (recorded in the entry; the run goes on)
        return {"patches": None, "split": None, "status": "error", "message": one_line(e), "run": None,
                "seconds": round(time.perf_counter() - t0, 2)}
    summary = {k: v for k, v in res.to_json().items() if k != "pareto"}
    if res.chosen is None:
        return {"patches": None, "split": None, "status": "does_not_fit", "fits": False, "run": None, "plan": summary,
                "message": f"no plan fits {board.key}" + (f": {res.reason}" if res.reason else ""),
                "seconds": round(time.perf_counter() - t0, 2)}
    p = res.chosen.plan
    if p["patches"] is None and "layer_by_layer" in measured:
        out = dict(measured["layer_by_layer"], same_as="layer_by_layer")
    else:
        out = measure_schedule(model, board, runner, None if p["patches"] is None else p["patches"][0], p["split"],
                               work, p["halo"])
    out["plan"] = dict(summary, predicted_instructions=res.chosen.instructions)
    out["seconds"] = round(time.perf_counter() - t0, 2)
    return out


def measure_schedule(model: Model, board: Board, runner: str, patches: int | None, split: str | int | None,
                     work: Path, halo: str = "recompute") -> dict[str, Any]:
    """Export, build and run one schedule; a firmware that does not fit, or a run that fails, is recorded with
    its one-line reason and the figures measured before it."""
    t0 = time.perf_counter()
    out: dict[str, Any] = {"patches": patches, "split": split, "halo": halo if patches else None, "status": "ok",
                           "message": None, "run": None}
    try:
        _firmware(out, build_for_board(model.spec, work, board.key, patches=patches, split=split, run=True,
                                       runner=runner, halo=halo))
    except FitError as e:
        out.update(status="does_not_fit", message=e.one_line(), fits=False)
        try:  # the export alone still gives the planned arena, the analytic peaks and the export time
            with tempfile.TemporaryDirectory(prefix="tvmp_bench_") as tmp:
                out["export"] = _export_json(export_model(model.spec, Path(tmp) / "x", patches=patches, split=split,
                                                          halo=halo))
        except Exception as e2:  # noqa: BLE001  (recorded in the entry; the run goes on)
            out["export_error"] = one_line(e2)
    except Exception as e:  # noqa: BLE001  (one schedule failing is recorded and does not stop the other)
        out.update(status="error", message=one_line(e))
        try:  # a run that failed (no board attached, a fault) still leaves the firmware's sizes to measure
            _firmware(out, build_for_board(model.spec, work, board.key, patches=patches, split=split, run=False,
                                           runner=runner, halo=halo))
        except Exception:  # noqa: BLE001  (the export or the build itself failed: the first message says why)
            pass
    out["seconds"] = round(time.perf_counter() - t0, 2)
    return out


def measure_kernels(model: Model, board: Board, runner: str, work: Path) -> dict[str, Any]:
    """The kernel figures of issue 13, layer by layer: one run with TVM's plain kernels (the baseline) and one
    profiled run with the micro-kernels (instructions, or cycles on a board, per op kind). On the emulator, a
    network the board cannot hold is counted on its core with the QEMU machine's memory (the goals are the emulated
    cores'): then also its unprofiled micro-kernel count (``"micro"``: the layer-by-layer schedule did not fit),
    and ``"board_fit"`` says why the board does not hold it."""
    out: dict[str, Any] = {"status": "ok", "message": None, "plain": None, "per_kind": None, "calls": None,
                           "emulator_memory": "board", "board_fit": None, "micro": None}

    def build(sub: str, **kw: Any) -> dict[str, Any]:
        if out["emulator_memory"] == "board":
            try:
                return build_for_board(model.spec, work / sub, board.key, run=True, runner=runner, **kw)
            except FitError as e:
                if runner != "emulator":
                    raise
                out.update(emulator_memory="machine", board_fit=e.one_line())
        return build_for_board(model.spec, work / sub, board.key, run=True, runner=runner, emulator_memory="machine",
                               **kw)

    try:
        out["plain"] = count(build("plain", kernels="plain")["run"])
        prof = build("profile", profile=True)
        out["per_kind"] = prof["run"].get("per_kind")
        out["calls"] = [{k: c.get(k) for k in CALL_KEYS} for c in prof["run"].get("kernels") or []]
        if out["emulator_memory"] == "machine":
            out["micro"] = count(build("micro")["run"])
    except Exception as e:  # noqa: BLE001  (recorded in the entry; the run goes on)
        out.update(status="error", message=one_line(e))
    return out


def analytic(model: Model, split_layers: int | None) -> dict[str, Any]:
    """The per-layer profile and, at the split the export resolved, the patch-based one (int8, the paper's way)."""
    prof = profile(model.spec, patches=PATCHES, split=split_layers) if split_layers else profile(model.spec)
    lbl = prof["layer_by_layer"]
    out: dict[str, Any] = {
        "convention": prof["convention"],
        "macs": lbl["macs"],
        "layer_by_layer_peak_bytes": lbl["peak_bytes"],
        "peak_layer": lbl["peak_layer"],
        "stage": bool(split_layers),
        "layers": [{k: r[k] for k in ("index", "name", "op", "bytes", "macs", "block")} for r in prof["layers"]],
    }
    pb = prof.get("patch_based")
    if pb is None:  # the auto split picked no stage: the patched schedule is the layer-by-layer one
        out.update(patch_peak_bytes=lbl["peak_bytes"], patch_peak_bytes_with_input=lbl["peak_bytes"], reduction=1.0,
                   patched_macs=lbl["macs"], mac_overhead=0.0, stage_mac_overhead=0.0, stage_layer_macs=[],
                   stage_input_reads=None, split_layers=None, split_layer=None, patches=None, patch_input_hw=None,
                   stage_peak_bytes=None, after_stage_peak_bytes=None, tir_allocated_bytes=None)
        return out
    out.update(patch_peak_bytes=pb["peak_bytes"], patch_peak_bytes_with_input=pb["peak_bytes_with_input"],
               reduction=pb["reduction"], patched_macs=pb["macs"], mac_overhead=pb["mac_overhead"],
               stage_mac_overhead=pb["stage_mac_overhead"], stage_layer_macs=pb["stage_layer_macs"],
               stage_input_reads=pb["stage_input_reads"], split_layers=pb["split"], split_layer=pb["split_layer"],
               patches=pb["patches"], patch_input_hw=pb["patch_input_hw"], stage_peak_bytes=pb["stage_peak_bytes"],
               after_stage_peak_bytes=pb["after_stage_peak_bytes"], tir_allocated_bytes=pb.get("tir_allocated_bytes"))
    return out


def _split_layers(configs: dict[str, dict[str, Any]]) -> int | None:
    """The layer count the export's auto split resolved to (None: no stage, or no export)."""
    export = configs["patch_4x4_auto"].get("export") or {}
    return (export.get("plan") or {}).get("split_layers")


def measure_model(model: Model, board: Board, runner: str, step: Step = lambda _: None) -> dict[str, Any]:
    """The results.json entry of one model: each schedule's firmware and run, the analytic and published figures."""
    t0 = time.perf_counter()
    entry: dict[str, Any] = {"model": model.key, "spec": model.spec, "zoo_name": model.zoo_name, "status": "ok",
                             "error": None, "plan_source": PLAN_SOURCE, "configs": {}}
    with tempfile.TemporaryDirectory(prefix="tvmp_bench_") as tmp:
        for key, (patches, split) in SCHEDULES.items():
            step(key)
            entry["configs"][key] = measure_planned(model, board, runner, Path(tmp) / key, entry["configs"]) \
                if split == PLANNED \
                else measure_schedule(model, board, runner, patches, split, Path(tmp) / key)
        lbl = entry["configs"]["layer_by_layer"]["status"]
        if lbl == "ok" or (lbl == "does_not_fit" and runner == "emulator"):  # the latter on QEMU's memory
            step("kernels")
            entry["kernels"] = measure_kernels(model, board, runner, Path(tmp) / "kernels")
    step("profile")
    try:
        entry["analytic"] = analytic(model, _split_layers(entry["configs"]))
    except Exception as e:  # noqa: BLE001  (recorded in the entry; the run goes on)
        entry["analytic"] = None
        entry.update(status="error", error=one_line(e))
    failed = [c["message"] for c in entry["configs"].values() if c["status"] == "error"]
    if failed and entry["status"] == "ok":
        entry.update(status="error", error=failed[0])
    exports = [c["export"] for c in entry["configs"].values() if c.get("export")]
    entry["sha256"] = exports[0]["model_sha256"] if exports else None
    entry["published"] = peers.published_for(model.zoo_name) if model.zoo_name else {}
    entry["seconds"] = round(time.perf_counter() - t0, 2)
    return entry
