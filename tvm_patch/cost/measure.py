"""One measurement: a network under a plan exported, built for a board with the per-kernel profile, run
once on the emulator (instructions) or the board (cycles), and returned as a record: the per-kernel
features with each kernel's measured count, the total, and the firmware's memory.

An emulator run is reused when the firmware it would build is the same (``run_key``: every file the firmware is
built from, the board and options, the compiler's and QEMU's versions, the project template's and runner's
sources): QEMU's instruction counts are exact, so the same firmware counts the same. A kernel change re-collects
only the networks whose generated C it changed (the others' projects are byte-identical). Board runs (cycles) are
always measured."""

from __future__ import annotations

import hashlib
import json
import subprocess
import tempfile
from functools import cache
from pathlib import Path
from collections.abc import Callable, Iterable
from typing import Any

from microtvm_projects.api import ProjectAPI
from microtvm_projects.boards import get_board

from tvm_patch.board_build import build_project, fit_wide
from tvm_patch.cost import cache as disk_cache
from tvm_patch.cost.features import FEATURES_VERSION, kernel_rows
from tvm_patch.cost.fingerprint import OPT, every_kernel, kernels_fingerprint
from tvm_patch.cost.plan import Plan
from tvm_patch.cost.stage_layers import consistent, instrument_stage, measured_nests
from tvm_patch.export import export_model
from tvm_patch.tune.records import TunedKernels

STACK_BYTES = 8192


def generate_measured_project(export_dir: Path, project: Path, board: str) -> None:
    """The board project of an export as the cost model's measurements build it (OPT, STACK_BYTES, seed 0)."""
    ProjectAPI().generate_project(export_dir, project, {"board": board, "opt": OPT, "stack_bytes": STACK_BYTES,
                                                        "seed": 0})


# what the firmware is built from (the project's "export" folder and tvmp_project.json also say what it came from)
_FIRMWARE_PARTS = ("Makefile", "src", "linker", "model", "io")
RUNS = "runs"  # the disk cache's kind of reused emulator runs


@cache
def _tools() -> str:
    """The compiler's and QEMU's version lines and the project template's sources (firmware, runner, profiler)."""
    lines = []
    for cmd in (["arm-none-eabi-gcc", "--version"], ["qemu-system-arm", "--version"]):
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout
        except (OSError, subprocess.TimeoutExpired):
            out = ""
        lines.append(out.splitlines()[0] if out else f"{cmd[0]}: none")
    h = hashlib.sha256("\n".join(lines).encode())
    disk_cache.hash_files(h, disk_cache.BASE / "microtvm_projects", [""])  # every file, the template's too
    return h.hexdigest()


def run_key(project: Path, runner: str, model_name: str) -> str | None:
    """The key of a profiled run of ``project``: its firmware's files (``model_name``, which the generated files
    name in a comment, replaced: a synthetic network's path is a temporary one), board and options, ``_tools()``;
    None for a board run."""
    if runner != "emulator":
        return None
    h = hashlib.sha256(_tools().encode())
    meta = json.loads((project / "tvmp_project.json").read_text())
    h.update(json.dumps([runner, meta.get("board"), meta.get("options")], sort_keys=True).encode())
    name = model_name.encode()
    for part in _FIRMWARE_PARTS:
        base = project / part
        for f in sorted(base.rglob("*")) if base.is_dir() else [base]:
            if f.is_file():
                data = f.read_bytes()
                h.update(str(f.relative_to(project)).encode() + b"\0" + (data.replace(name, b"<model>") if name else data)
                         + b"\0")
    return h.hexdigest()


def measured_run(project: Path, runner: str, timeout_sec: float, model_name: str) -> dict[str, Any]:
    """``build_project(project, run=True, profile=True)``'s report, an emulator run reused when its firmware was
    already run (``run_key``; the module docstring). A build that does not fit raises as the build does."""
    key = run_key(project, runner, model_name)
    hit = disk_cache.get(key, RUNS) if key else None
    if hit is not None:
        return hit
    report = build_project(project, runner=runner, run=True, profile=True, timeout_sec=timeout_sec)
    if key:
        disk_cache.put(key, report, RUNS)
    return report


def core_key(board: str) -> str:
    """The cost model's core key of a board: "m4" or "m7"."""
    return get_board(board).core.removeprefix("cortex-")


def export_plan(model: Any, plan: Plan, out_dir: Path, wide: Callable[[str], bool] | None = every_kernel,
                tuned: TunedKernels | None = None) -> tuple[Any, list[dict[str, Any]]]:
    """Export ``model`` under ``plan`` into ``out_dir``, the kernels ``wide`` allows with widened weights (every
    one by default: a board build's "auto" where the Flash holds them), with ``tuned``'s records applied (a
    `tvm-patch tune` database, as `build --tuning-db`); (ExportResult, per-kernel feature rows)."""
    result = export_model(model, out_dir, wide=wide, **plan.export_args(), **(tuned.export_args() if tuned else {}))
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

        result, report = fit_wide(export, lambda r: measured_run(proj, runner, timeout_sec, r.model), wide,
                                  narrow=narrow)
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
