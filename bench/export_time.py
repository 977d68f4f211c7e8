"""`python -m bench.export_time`: how long the C export takes per model, against the goal of 30 s each.

Each model is exported to host C (`tvm-patch build M --target host --json`) in its own process, with a
timeout, so one that blows up is reported instead of stalling the run; the time is the export's own
`export_seconds` (import, integer lowering, fusion, schedules, C emission; no gcc). Default models: every
zoo model (int8), every test model in tests/fixtures (the 224x224 squeeze-and-excitation network
tflite/models/se_net_224 among them; those in tflite/refused are refused at once), every MLPerf Tiny model.
Writes export_time.json and export_time.md to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tvm_patch import zoo

from bench.models import mlperf_models

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures"
GOAL_SECONDS = 30.0


def default_models() -> list[str]:
    """Every zoo model (int8), every .tflite / .onnx test model, every MLPerf Tiny model."""
    tests = sorted(str(p) for ext in ("*.tflite", "*.onnx") for p in FIXTURES.rglob(ext))
    return [f"zoo:{n}:int8" for n in zoo.names()] + tests + [str(p) for p in mlperf_models().values()]


def export_seconds(model: str, kernels: str, emit: str, timeout: float) -> tuple[float | None, str]:
    """(the export's own seconds or None, "ok" / "timeout" / the error line) of one export in a child process."""
    with tempfile.TemporaryDirectory(prefix="tvmp_export_time_") as tmp:
        cmd = [sys.executable, "-m", "tvm_patch", "build", model, "--target", "host", "-o", f"{tmp}/out", "--json",
               "--kernels", kernels, "--emit", emit]
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=os.environ.copy())
        except subprocess.TimeoutExpired:
            return None, f"timeout after {timeout:.0f} s"
        if p.returncode != 0:  # exit 2: the model is refused (one line), which is not a matter of time
            lines = (p.stderr or p.stdout).strip().splitlines()
            return None, ("refused: " if p.returncode == 2 else "failed: ") + (lines[-1] if lines else f"exit {p.returncode}")
        return float(json.loads(p.stdout)["export_seconds"]), "ok"


def main(argv: list[str] | None = None) -> int:
    """Export every model once per --kernels/--emit choice; print the table; exit 1 if any misses the goal."""
    ap = argparse.ArgumentParser(prog="python -m bench.export_time", description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", help="model specs (default: zoo, test models, MLPerf Tiny)")
    ap.add_argument("--kernels", nargs="+", default=["micro"], choices=["micro", "plain"])
    ap.add_argument("--emit", nargs="+", default=["c"], choices=["c", "object"])
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds before an export counts as hung")
    ap.add_argument("--out", type=Path, default=Path("bench_out/export_time"))
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    t0 = time.perf_counter()
    for model in args.models or default_models():
        for kernels in args.kernels:
            for emit in args.emit:
                secs, status = export_seconds(model, kernels, emit, args.timeout)
                row = {"model": model, "kernels": kernels, "emit": emit, "export_seconds": secs, "status": status,
                       "within_goal": secs is not None and secs <= GOAL_SECONDS}
                rows.append(row)
                shown = f"{secs:7.1f} s" if secs is not None else status
                print(f"{Path(model).name:40s} {kernels:5s} {emit:6s} {shown}", flush=True)
    missed = [r for r in rows if not r["within_goal"] and not r["status"].startswith("refused")]
    result = {"goal_seconds": GOAL_SECONDS, "total_seconds": round(time.perf_counter() - t0, 1), "rows": rows}
    (args.out / "export_time.json").write_text(json.dumps(result, indent=1) + "\n")
    md = ["| model | kernels | emit | export s | within 30 s |", "| --- | --- | --- | --: | --- |"]
    md += [f"| {Path(r['model']).name} | {r['kernels']} | {r['emit']} | "
           f"{r['export_seconds'] if r['export_seconds'] is not None else r['status']} | "
           f"{'yes' if r['within_goal'] else 'no'} |" for r in rows]
    (args.out / "export_time.md").write_text("\n".join(md) + "\n")
    print(f"export_time: {len(rows) - len(missed)} of {len(rows)} exports within (or refused in) {GOAL_SECONDS:.0f} s; "
          f"slowest {max((r['export_seconds'] or 0.0) for r in rows):.1f} s; results in {args.out}/")
    return 1 if missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
