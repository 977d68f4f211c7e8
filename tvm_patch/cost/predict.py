"""``predict(model, plan, board)``: the firmware's SRAM (exact) and Flash (within 1 %) and the latency of one
inference, without building the firmware: the export of the plan gives the arena, the outputs and the
kernels; memory.py turns them into linked bytes; the latency model sums its per-kernel predictions.
Instructions (emulator) x the board's documented CPI / clock = latency in ms, an estimate, and says so.
With a tuning database (`tvm-patch tune`), the plan is exported with its records applied, as `build --tuning-db`
builds it, and each kernel that took a record counts the record's measured cost instead of its prediction.
"""

from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from microtvm_projects.boards import get_board

from tvm_patch.board_build import build_project, narrowed
from tvm_patch.cost import memory
from tvm_patch.cost.latency import LatencyModel, for_core
from tvm_patch.cost.fingerprint import OPT
from tvm_patch.cost.measure import STACK_BYTES, core_key, export_plan, generate_measured_project
from tvm_patch.cost.plan import Plan
from tvm_patch.cost.synth import write_onnx
from tvm_patch.tune.records import tuned_kernels
from tvm_patch.zoo.spec import ConvSpec, NetSpec


@dataclass
class Prediction:
    """What a plan costs on a board. Bytes; ``instructions`` is the emulator count the latency comes from."""

    board: str
    plan: dict[str, Any]
    split_layers: int | None
    sram_bytes: int
    flash_bytes: int
    flash_exact: bool  # False: weights + input only, a lower bound (the search's ranking before it compiles)
    arena_bytes: int
    stack_bytes: int
    instructions: int
    latency_ms: float
    latency_estimated: bool
    fits: bool
    sram_margin_bytes: int  # board SRAM - predicted SRAM (negative: misses by that much)
    flash_margin_bytes: int
    measured_kernels: list[str] = field(default_factory=list)  # counted from a tuning database's records

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _tiny_net() -> NetSpec:
    return NetSpec("cost-base", "synthetic", 16, ConvSpec(3, 8, 3, 2, 1, "relu6"), (), None, num_classes=10)


def firmware_base(board: str, runner: str = "device", timeout_sec: float = 600.0) -> tuple[int, set[str]]:
    """The firmware's own Flash bytes for ``board`` (cached; measured once from a one-layer firmware)."""
    b = get_board(board)
    cached = memory.read_base(b, runner, OPT)
    if cached is not None:
        return cached
    with tempfile.TemporaryDirectory(prefix="tvmp_base_") as tmp:
        model = write_onnx(_tiny_net(), Path(tmp) / "tiny.onnx")
        result, _ = export_plan(str(model), Plan(), Path(tmp) / "export")
        generate_measured_project(Path(tmp) / "export", Path(tmp) / "project", board)
        report = build_project(Path(tmp) / "project", runner=runner, timeout_sec=timeout_sec)
        # the one-layer network's objects as the link kept them: GCC inlines its input quantization into
        # tvmp_run and the link drops the function's own copy (764 B on the F746), which compile_objects counts
        objects = memory.linked_bytes(Path(report["elf"]).with_name("firmware.map"), memory.NETWORK_OBJECTS)
        return memory.write_base(b, runner, OPT, report["flash_bytes"], objects,
                                 memory.defined_symbols(Path(report["elf"])))


def unwidened(rows: list[dict[str, Any]], names: set[str]) -> list[dict[str, Any]]:
    """``rows`` with the kernels ``names`` featured as with int8 weights (their dot calls the same, none widened)."""
    out = []
    for row in rows:
        if row.get("func") in names and row.get("exec", {}).get("dot_wide_macs"):
            row = dict(row, exec=dict(row["exec"], dot_wide_macs=0), x_wide_pw=0.0)
        out.append(row)
    return out


def predict_export(result: Any, rows: list[dict[str, Any]], model_c: Path, plan: Plan, board: str,
                   cost_model: LatencyModel, flash: bool = True, runner: str = "device",
                   measured: dict[str, float] | None = None) -> Prediction:
    """The prediction for an export already made (``export_plan``); Flash of the ``runner``'s firmware (the
    board's by default, which is what must fit; the emulator's links other board code). ``measured``: per kernel,
    a count per call to use instead of the prediction (``TunedKernels.measured``)."""
    b = get_board(board)
    ins = [io.nbytes for io in result.program.inputs]
    outs = [io.nbytes for io in result.program.outputs]
    sram = memory.sram_bytes(result.arena_bytes, outs, STACK_BYTES)
    extra = result.wide_weights  # the build's "auto": widened weights while the Flash holds them
    measured = dict(measured or {})
    if flash:
        objects, undefined = memory.compile_objects(model_c.parent, result.to_json(), b, OPT)
        base, in_base = firmware_base(board, runner)
        flash_b = base + objects + memory.library_bytes(undefined, in_base, b.cpu_flags)
        if flash_b > b.flash_bytes and extra:  # the kernels the build would keep int8, as board_build.fit_wide
            narrow = narrowed(extra, result.call_info, flash_b - b.flash_bytes)
            flash_b -= sum(extra[n] for n in narrow)
            rows = unwidened(rows, narrow)
            for n in narrow:  # a record may be of the widened form: predicted as int8 instead
                measured.pop(n, None)
    else:  # a lower bound: the weights (all int8) and the input, no code (used to rank plans before the exact figures)
        flash_b = result.weights_bytes - sum(extra.values()) + sum(ins)
    measured = {n: c for n, c in measured.items() if any(r.get("func") == n for r in rows)}
    count = cost_model.network_count(rows, sum(ins) + sum(outs), measured)
    ms = count * b.qemu_cpi / (b.mhz * 1e3) if cost_model.unit == "instructions" else count / (b.mhz * 1e3)
    return Prediction(board=b.key, plan=plan.to_json(), split_layers=result.plan.get("split_layers"),
                      sram_bytes=sram, flash_bytes=flash_b, flash_exact=flash, arena_bytes=result.arena_bytes, stack_bytes=STACK_BYTES,
                      instructions=int(round(count)), latency_ms=round(ms, 3),
                      latency_estimated=cost_model.unit == "instructions",
                      fits=sram <= b.sram_bytes and flash_b <= b.flash_bytes,
                      sram_margin_bytes=b.sram_bytes - sram, flash_margin_bytes=b.flash_bytes - flash_b,
                      measured_kernels=sorted(measured))


def predict(model: Any, plan: Plan, board: str, cost_model: str | Path | LatencyModel | None = None,
            flash: bool = True, runner: str = "device", tuning_db: str | Path | None = None) -> Prediction:
    """SRAM, Flash and latency of ``model`` (a spec: path or zoo:NAME) under ``plan`` on ``board``; the
    memory of the ``runner``'s firmware (device: the board's; SRAM is the same for both); with ``tuning_db``,
    of the build that applies it."""
    get_board(board)
    lm = cost_model if isinstance(cost_model, LatencyModel) else for_core(core_key(board), cost_model)
    tuned = tuned_kernels(tuning_db, board)
    with tempfile.TemporaryDirectory(prefix="tvmp_predict_") as tmp:
        export_dir = Path(tmp) / "export"
        result, rows = export_plan(model, plan, export_dir, tuned=tuned)
        return predict_export(result, rows, export_dir / "model.c", plan, board, lm, flash, runner,
                              tuned.measured(lm.unit) if tuned else None)
