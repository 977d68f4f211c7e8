"""Bench section 3: the firmware on the board's emulator. For each model, layer by layer and with 4x4
patches at the auto split: the linked firmware's SRAM and Flash against the board's, the exact instructions
of one inference on QEMU (and per MAC), the latency at the board's clock from the documented CPI (marked
estimated), and whether the outputs equal the host build's. Every figure is measured in this run.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from microtvm_projects.boards import Board
from microtvm_projects.errors import ProjectError

from tvm_patch.board_build import build_for_board
from tvm_patch.errors import TvmPatchError
from tvm_patch.paths import shared_models_dir

SMALL_ZOO = ("mcunet-in0", "mbv2-w0.3-r80")


def firmware_models() -> list[str]:
    """The MLPerf Tiny int8 models from the shared folder, then small int8 zoo models."""
    tflite = sorted(str(p) for p in (shared_models_dir() / "mlperf_tiny").glob("*.tflite"))
    return tflite + [f"zoo:{n}:int8" for n in SMALL_ZOO]


def firmware_section(board: Board, models: list[str]) -> None:
    """Print section 3 (see the module docstring)."""
    from tvm_patch.report import profile

    print(f"\n3. firmware on {board.name}'s emulator ({board.qemu_machine}, -O3; SRAM = arena + stack + data/bss as "
          f"linked; latency = instructions x CPI {board.qemu_cpi} at {board.mhz} MHz, estimated)")
    print(f"{'model':22} {'schedule':10} {'SRAM B':>9} {'Flash B':>9} {'fits':>4} {'instructions':>13} "
          f"{'instr/MAC':>9} {'est. ms':>8} {'exact':>5} {'s':>5}")
    for spec in models:
        name = Path(spec).stem if spec.endswith(".tflite") else spec[4:]
        try:
            macs = profile(spec)["layer_by_layer"]["macs"]
        except TvmPatchError as e:
            print(f"{name:22} error: {e.one_line()}")
            continue
        for label, patches, split in (("per layer", None, None), ("4x4 auto", 4, "auto")):
            t0 = time.perf_counter()
            with tempfile.TemporaryDirectory(prefix="tvmp_bench_") as tmp:
                try:
                    r = build_for_board(spec, Path(tmp) / "p", board.key, patches=patches, split=split, run=True)
                except (TvmPatchError, ProjectError) as e:
                    print(f"{name:22} {label:10} {e.one_line()}")
                    continue
            run = r["run"]
            print(f"{name:22} {label:10} {r['sram_bytes']:>9,} {r['flash_bytes']:>9,} "
                  f"{'yes' if r['fits'] else 'NO':>4} {run['instructions']:>13,} {run['instructions'] / macs:>9.2f} "
                  f"{run['latency_ms']:>8.1f} {'yes' if run['bit_exact'] else 'NO':>5} {time.perf_counter() - t0:>5.0f}")
