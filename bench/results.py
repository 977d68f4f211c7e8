"""results.json (rewritten after every model, so an interrupted run keeps what it measured) and results.csv."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from tvm_patch.atomic import write_atomic

SCHEMA = 1
CSV_COLUMNS = ("model", "board", "runner", "schedule", "status", "macs", "ram_bytes", "rom_bytes", "arena_bytes",
               "analytic_peak_bytes", "tflm_arena_bytes", "fits", "instructions", "cycles", "latency_ms",
               "latency_estimated", "bit_exact", "stack_used_bytes", "split_layers", "export_seconds", "sha256",
               "message")


def count(run: dict[str, Any]) -> int | None:
    """A run's (or a profiled call's) count: exact instructions on the emulator, cycles on a board."""
    return run.get("instructions") if run.get("instructions") is not None else run.get("cycles")


class Results:
    """The run's results.json: conditions, one entry per model under its key, and the run's duration."""

    def __init__(self, out_dir: Path, conditions: dict[str, Any]) -> None:
        self.path = out_dir / "results.json"
        self.data: dict[str, Any] = {"schema": SCHEMA, "conditions": conditions, "models": {},
                                     "complete": False, "elapsed_seconds": None}

    def add(self, entry: dict[str, Any]) -> None:
        """Record one model's entry and write the file at once."""
        self.data["models"][entry["model"]] = entry
        self.write()

    def finish(self, elapsed: float, complete: bool) -> None:
        """Record how long the run took and whether every model was attempted."""
        self.data.update(elapsed_seconds=round(elapsed, 1), complete=complete)
        self.write()

    def write(self) -> None:
        """Write atomically (a temporary file renamed over the old one), so the file is never half-written."""
        write_atomic(self.path, json.dumps(self.data, indent=1) + "\n")


def schedule_macs(entry: dict[str, Any], schedule: str) -> int | None:
    """The MACs of a schedule: the network's, or with the patch stage's recomputed halos (the plan's schedule:
    what its export's kernels compute)."""
    if schedule == "plan":
        return ((entry.get("configs", {}).get("plan") or {}).get("run") or {}).get("macs")
    a = entry.get("analytic")
    if not a:
        return None
    return a["macs"] if schedule == "layer_by_layer" else a["patched_macs"]


def schedule_peak(entry: dict[str, Any], schedule: str) -> int | None:
    """The analytic peak (bytes) of a schedule."""
    if schedule == "plan":
        export = (entry.get("configs", {}).get("plan") or {}).get("export") or {}
        return export.get("analytic_patch_peak_bytes") or export.get("analytic_peak_bytes")
    a = entry.get("analytic")
    if not a:
        return None
    return a["layer_by_layer_peak_bytes"] if schedule == "layer_by_layer" else a["patch_peak_bytes"]


def csv_rows(data: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per model and schedule, in the style of TinyML benchmark tables."""
    cond = data["conditions"]
    rows = []
    for entry in data["models"].values():
        for schedule, cfg in entry.get("configs", {}).items():
            run = cfg.get("run") or {}
            export = cfg.get("export") or {}
            rows.append({
                "model": entry["model"], "board": cond["board"], "runner": cond["runner"], "schedule": schedule,
                "status": cfg["status"], "macs": schedule_macs(entry, schedule), "ram_bytes": cfg.get("sram_bytes"),
                "rom_bytes": cfg.get("flash_bytes"), "arena_bytes": export.get("arena_bytes"),
                "analytic_peak_bytes": schedule_peak(entry, schedule),
                "tflm_arena_bytes": export.get("tflm_arena_head_bytes"), "fits": cfg.get("fits"),
                "instructions": run.get("instructions"), "cycles": run.get("cycles"),
                "latency_ms": round(run["latency_ms"], 3) if run.get("latency_ms") is not None else None,
                "latency_estimated": run.get("latency_estimated"), "bit_exact": run.get("bit_exact"),
                "stack_used_bytes": run.get("stack_used_bytes"),
                "split_layers": (export.get("plan") or {}).get("split_layers"),
                "export_seconds": export.get("export_seconds"), "sha256": entry.get("sha256"),
                "message": cfg.get("message"),
            })
    return rows


def write_csv(data: dict[str, Any], path: Path) -> None:
    """results.csv: the columns of CSV_COLUMNS, empty where a figure does not apply."""
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        w.writeheader()
        for row in csv_rows(data):
            w.writerow({k: "" if v is None else v for k, v in row.items()})
