"""One measurement: a network under a plan exported, built for a board with the per-kernel profile, run
once on the emulator (instructions) or the board (cycles), and returned as a record: the per-kernel
features with each kernel's measured count, the total, and the firmware's memory."""

from __future__ import annotations

import tempfile
from pathlib import Path
from collections.abc import Callable, Iterable
from typing import Any

from microtvm_projects.api import ProjectAPI
from microtvm_projects.boards import get_board

from tvm_patch.board_build import build_project, fit_wide
from tvm_patch.cost.features import FEATURES_VERSION, kernel_rows
from tvm_patch.cost.fingerprint import OPT, every_kernel, kernels_fingerprint
from tvm_patch.cost.plan import Plan
from tvm_patch.cost.stage_layers import consistent, instrument_stage, measured_nests
from tvm_patch.export import export_model

STACK_BYTES = 8192


def generate_measured_project(export_dir: Path, project: Path, board: str) -> None:
    """The board project of an export as the cost model's measurements build it (OPT, STACK_BYTES, seed 0)."""
    ProjectAPI().generate_project(export_dir, project, {"board": board, "opt": OPT, "stack_bytes": STACK_BYTES,
                                                        "seed": 0})


def core_key(board: str) -> str:
    """The cost model's core key of a board: "m4" or "m7"."""
    return get_board(board).core.removeprefix("cortex-")


def export_plan(model: Any, plan: Plan, out_dir: Path, wide: Callable[[str], bool] | None = every_kernel
                ) -> tuple[Any, list[dict[str, Any]]]:
    """Export ``model`` under ``plan`` into ``out_dir``, the kernels ``wide`` allows with widened weights (every
    one by default: a board build's "auto" where the Flash holds them); (ExportResult, per-kernel feature rows)."""
    result = export_model(model, out_dir, wide=wide, **plan.export_args())
    return result, kernel_rows(result, (out_dir / "model.c").read_text(), plan.halo)



def measure(model: Any, plan: Plan, board: str, runner: str = "emulator", timeout_sec: float = 600.0,
            work_dir: str | Path | None = None, label: str | None = None, loop_nests: bool = False,
            narrow: Iterable[str] = (), wide: str = "auto") -> dict[str, Any]:
    """Measure ``model`` (a spec, or a Relax module named by ``label``) under ``plan`` on ``board``: the record
    the cost model trains and is evaluated on. ``loop_nests``: the patch stage is also measured loop nest by loop
    nest in recompute mode (stage_layers.py; the record's ``loop_nests`` when they add up to the stage: consistent();
    the readings add a few instructions per loop nest and
    patch to the stage's count, well under 0.1 %). ``narrow``: kernels kept int8 from the start (their weights not
    widened, as where the Flash cannot hold them); ``wide`` "none": every kernel so (``board_build.fit_wide``)."""
    with tempfile.TemporaryDirectory(prefix="tvmp_measure_", dir=work_dir) as tmp:
        export_dir, proj = Path(tmp) / "export", Path(tmp) / "project"
        made: dict[str, Any] = {}

        def export(chosen: Callable[[str], bool] | None) -> Any:  # as `build --board` does: widened where it fits
            made["result"], made["rows"] = export_plan(model, plan, export_dir, chosen)
            generate_measured_project(export_dir, proj, board)
            # the recompute mode's patch body is a sequence of layer loop nests (the cache mode's is not)
            made["nests"] = instrument_stage(made["result"], proj) if loop_nests and plan.halo == "recompute" else None
            return made["result"]

        result, report = fit_wide(export, lambda _r: build_project(proj, runner=runner, run=True, profile=True,
                                                                   timeout_sec=timeout_sec), wide, narrow=narrow)
        rows, nests = made["rows"], made["nests"]
    run = report["run"]
    unit = "instructions" if run.get("instructions") is not None else "cycles"
    counts = {k["index"]: k[unit] for k in run.get("kernels", [])}
    for k, row in enumerate(rows):
        row["measured"] = counts.get(k)
    rec = {
        "features_version": FEATURES_VERSION,
        "kernels_fingerprint": kernels_fingerprint(),
        "board": board,
        "core": core_key(board),
        "runner": runner,
        "unit": unit,
        "model": label or str(model),
        "plan": plan.to_json(),
        "split_layers": result.plan.get("split_layers"),
        "total": run[unit],
        "bit_exact": run.get("bit_exact"),
        "io_bytes": sum(io.nbytes for io in result.program.inputs + result.program.outputs),
        "arena_bytes": result.arena_bytes,
        # kernels kept int8 (to fit the Flash, or all of them: ``wide`` "none"): refeaturing keeps them so
        "wide_narrowed": sorted(result.program.funcs) if wide == "none" else result.wide_narrowed,
        "rows": rows,
    }
    if nests is not None:
        measured = measured_nests(nests, counts, len(rows), int(plan.halo == "cache"))
        if rows and rows[0]["op"] == "patch_stage" and consistent(rows[0], measured):
            rec["loop_nests"] = measured
    return rec
