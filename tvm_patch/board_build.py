"""A model on a board: export it as plain C, wrap it in the board's project, build the firmware, and run it on
the emulator or the board when asked. The glue between the C export (tvm_patch.export) and the board
projects (microtvm_projects), used by `tvm-patch build --board`, `tvm-patch run` and the benchmarks.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

from microtvm_projects.api import ProjectAPI
from microtvm_projects.errors import FitError
from microtvm_projects.boards import get_board
from microtvm_projects.firmware import FirmwareBuild, load_project

import tvm_patch
from tvm_patch.export import export_model
from tvm_patch.errors import TvmPatchError
from tvm_patch.export.blocking import DEFAULT_ROWS


def firmware_json(fw: FirmwareBuild, project: dict[str, Any]) -> dict[str, Any]:
    """The board build as JSON: memory (bytes: SRAM = arena + stack + data/bss, as linked), fit, conditions."""
    board = get_board(fw.board)
    return {
        "board": board.key,
        "flash_bytes": fw.flash_bytes,
        "sram_bytes": fw.sram_bytes,
        "arena_bytes": fw.arena_bytes,
        "stack_bytes": fw.stack_bytes,
        "data_bss_bytes": fw.data_bss_bytes,
        "board_sram_bytes": board.sram_bytes,
        "board_flash_bytes": board.flash_bytes,
        "fits": fw.sram_bytes <= board.sram_bytes and fw.flash_bytes <= board.flash_bytes,
        "runner": fw.runner,
        "emulator_memory": fw.memory,  # "machine": linked with the QEMU machine's memory, "fits" still the board's
        "elf": str(fw.elf),
        "conditions": {
            "clock_mhz": board.mhz,
            "caches": board.caches,
            "opt": fw.opt,
            "compiler": fw.compiler,
            "model_sha256": project.get("model_sha256"),
            "tvm_patch_version": tvm_patch.__version__,
        },
    }


WIDE_CHOICES = ("auto", "all", "none")
T = TypeVar("T")
MAX_NARROWINGS = 3  # "auto" builds again at most this often (a check before the link knows the weights, not the code)


def build_for_board(model: Any, out_dir: str | Path, board: str, *, patches: int | None = None,
                    split: int | str | None = None, runner: str = "emulator", run: bool = False,
                    profile: bool = False, opt: str = "O3", stack_bytes: int = 8192, seed: int = 0,
                    timeout_sec: float = 600.0, port: str | None = None, probe: str | None = None,
                    integer: bool = True, rounding: str = "tflite", kernels: str = "micro",
                    rows: int | Mapping[str, int] | Callable[[str, Any], int] = DEFAULT_ROWS,
                    halo: str = "recompute", packing: Callable[[str, Any], bool] | None = None,
                    wide: str = "auto", unroll: Callable[[str, Any], bool] | None = None,
                    outline: Callable[[str, Any], tuple[int, ...]] | None = None,
                    peel: Callable[[str, Any], bool] | None = None,
                    pairs_down: Callable[[str, Any], bool | None] | None = None,
                    emulator_memory: str = "board") -> dict[str, Any]:
    """Export ``model`` (layer by layer, or its first ``split`` layers over ``patches`` x ``patches`` patches,
    the halos as ``halo`` says), generate the ``board`` project in ``out_dir``, build it for ``runner`` and,
    with ``run``, run it once; returns the JSON report (``"run"`` present when it ran).

    ``emulator_memory``: "machine" links the emulator firmware with the QEMU machine's memory instead of the board's
    sizes (a network too large for the board still runs on its core; ``"fits"`` still says whether the board holds
    it, and "auto" widens what the machine's memory holds).

    ``wide``: which kernels store their weights widened to int16 (export/wide_weights.py): "auto" every kernel
    that can while the firmware fits the board's Flash (when it does not, the kernels with the fewest MACs per
    extra byte go back to int8 and it builds once more), "all", or "none"."""
    if wide not in WIDE_CHOICES:
        raise TvmPatchError(f"unknown --wide-weights {wide!r}; use {', '.join(WIDE_CHOICES)}")
    if emulator_memory == "machine" and runner != "emulator":
        raise TvmPatchError("--emulator-memory machine links the emulator's firmware; a device build always takes "
                            "the board's memory: drop it or use --run emulator")
    get_board(board)  # an unknown board fails before the export's work
    result, report = fit_wide(
        lambda chosen: _export_project(model, out_dir, dict(patches=patches, split=split, integer=integer,
                                                            rounding=rounding, kernels=kernels, rows=rows, halo=halo,
                                                            packing=packing, wide=chosen, unroll=unroll,
                                                            outline=outline, peel=peel, pairs_down=pairs_down),
                                       {"board": board, "opt": opt, "stack_bytes": stack_bytes, "seed": seed,
                                        "emulator_memory": emulator_memory}),
        lambda _result: build_project(out_dir, runner=runner, profile=profile, timeout_sec=timeout_sec), wide)
    if run:
        report["run"] = _run_built(out_dir, runner, profile, timeout_sec, port, probe)
    report["export"] = {k: v for k, v in result.to_json().items() if k not in ("out_dir", "files", "check")}
    return report


def fitted_export(model: Any, out_dir: str | Path, board: str, *, patches: int | None = None,
                  split: int | str | None = None, halo: str = "recompute", timeout_sec: float = 600.0,
                  emulator_memory: str = "board") -> Any:
    """The export of ``model`` with its weights in the form ``build_for_board`` gives them on ``board`` (``wide``
    "auto": its ``wide_narrowed`` kept int8 to fit the Flash; with ``emulator_memory`` "machine", QEMU's), found by
    generating the project in ``out_dir`` and linking its emulator firmware: a tuning session measures each kernel
    in the form the build will run."""
    result, _ = fit_wide(
        lambda chosen: _export_project(model, out_dir, dict(patches=patches, split=split, halo=halo, wide=chosen),
                                       {"board": board, "emulator_memory": emulator_memory}),
        lambda _result: build_project(out_dir, runner="emulator", timeout_sec=timeout_sec))
    return result


def fit_wide(export: Callable[[Callable[[str], bool] | None], Any], finish: Callable[[Any], T],
             wide: str = "auto", narrow: Iterable[str] = ()) -> tuple[Any, T]:
    """``export(chosen)`` (an ExportResult, ``chosen`` the kernels allowed to widen their weights: every one but
    ``narrow``, or None for none) then ``finish(result)`` (a build, a measurement); with ``wide`` "auto", a Flash
    overflow (FitError) narrows the kernels with the fewest MACs per extra byte back to int8 and tries again (the
    result's ``wide_narrowed`` names them)."""
    narrow = set(narrow)
    for attempt in range(MAX_NARROWINGS + 1):
        kept = frozenset(narrow)
        result = export(None if wide == "none" else (lambda name: name not in kept))
        result.wide_narrowed = sorted(kept)
        try:
            return result, finish(result)
        except FitError as e:
            widened = {n: b for n, b in result.wide_weights.items() if n not in narrow}
            if wide != "auto" or e.flash_over is None or not widened or attempt == MAX_NARROWINGS:
                raise
            narrow |= narrowed(widened, result.call_info, e.flash_over)
    raise AssertionError("unreachable")


def _export_project(model: Any, out_dir: str | Path, export_args: dict[str, Any], options: dict[str, Any]) -> Any:
    """The export of ``model`` and the board project generated from it in ``out_dir``."""
    with tempfile.TemporaryDirectory(prefix="tvmp_export_") as tmp:
        export_dir = Path(tmp) / "export"
        result = export_model(model, export_dir, **export_args)
        ProjectAPI().generate_project(export_dir, out_dir, options)
    return result


def narrowed(extra: Mapping[str, int], call_info: list[dict[str, Any]], over: int) -> set[str]:
    """The widened kernels to store as int8 again so that ``over`` Flash bytes go: fewest MACs per extra byte
    first (all of them when that is what it takes)."""
    macs: dict[str, int] = {}
    for c in call_info:
        macs[c["func"]] = macs.get(c["func"], 0) + int(c["macs"])
    out: set[str] = set()
    freed = 0
    for name in sorted(extra, key=lambda n: (macs.get(n, 0) / max(extra[n], 1), n)):
        if freed >= over:
            break
        out.add(name)
        freed += extra[name]
    return out


def build_project(project_dir: str | Path, *, runner: str = "emulator", run: bool = False, profile: bool = False,
                  timeout_sec: float = 600.0, port: str | None = None, probe: str | None = None) -> dict[str, Any]:
    """Build a generated project's firmware for ``runner`` and, with ``run``, run it once."""
    api = ProjectAPI(project_dir)
    fw = api.build({"runner": runner, "profile": profile, "timeout_sec": timeout_sec})
    report = firmware_json(fw, load_project(project_dir))
    report["project_dir"] = str(Path(project_dir))
    if run:
        report["run"] = _run_built(project_dir, runner, profile, timeout_sec, port, probe)
    return report


def run_project(project_dir: str | Path, *, runner: str = "emulator", profile: bool = False,
                timeout_sec: float = 600.0, port: str | None = None, probe: str | None = None) -> dict[str, Any]:
    """Run the firmware of ``project_dir`` once (flashing it on a board); the run as JSON, with the network's MACs
    and, with ``profile``, each kernel's kind and MACs from the export. The runner's variant is built first where
    it is missing or older than its sources (``make``: nothing to do otherwise; a project's C edited by hand too)."""
    ProjectAPI(project_dir).build({"runner": runner, "profile": profile, "timeout_sec": timeout_sec})
    return _run_built(project_dir, runner, profile, timeout_sec, port, probe)


def _run_built(project_dir: str | Path, runner: str, profile: bool, timeout_sec: float, port: str | None,
               probe: str | None) -> dict[str, Any]:
    """``run_project`` on firmware just built (the build functions here): no second ``make``."""
    api = ProjectAPI(project_dir)
    run = api.run({"runner": runner, "profile": profile, "timeout_sec": timeout_sec, "port": port,
                   "probe": probe}).to_json()
    export_json = Path(project_dir) / "export" / "tvmp_export.json"
    calls = json.loads(export_json.read_text()).get("call_info", []) if export_json.is_file() else []
    return per_mac(run, calls)


def per_mac(run: dict[str, Any], calls: list[dict[str, Any]]) -> dict[str, Any]:
    """``run`` with instructions (or cycles) per MAC for the network, each kernel call and each op kind."""
    unit = "instructions" if run.get("instructions") is not None else "cycles"
    # a patch stage without its MACs (no analytic profile of the model) leaves the network's figure unknown
    macs = 0 if any(c["kind"] == "patch_stage" and not c["macs"] for c in calls) else sum(c["macs"] for c in calls)
    run = dict(run, macs=macs, per_mac=round(run[unit] / macs, 3) if macs else None)
    by_index = {c["index"]: c for c in calls}
    kinds: dict[str, dict[str, Any]] = {}
    kernels = []
    for k in run.get("kernels", []):
        info = by_index.get(k["index"], {"kind": "other", "macs": 0})
        kernels.append(dict(k, kind=info["kind"], macs=info["macs"],
                            per_mac=round(k[unit] / info["macs"], 3) if info["macs"] else None))
        agg = kinds.setdefault(info["kind"], {"calls": 0, "macs": 0, unit: 0})
        agg["calls"] += 1
        agg["macs"] += info["macs"]
        agg[unit] += k[unit]
    if kernels:
        for agg in kinds.values():
            agg["per_mac"] = round(agg[unit] / agg["macs"], 3) if agg["macs"] else None
        run.update(kernels=kernels, per_kind=kinds)
    return run
