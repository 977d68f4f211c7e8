"""Benchmarks for one board: every figure printed is measured in this run; what is not built yet is named.

Sections:
1. patch-based inference per zoo model: layer-by-layer peak, patched peak (4x4 patches, the split
   `PatchStage(split="auto")` picks), reduction, MAC overhead, what the stage PrimFunc allocates, and how long
   the PatchStage pass and the TVM build take (goal: < 30 s per model on 2 cores);
2. plain-C export: (a) the MLPerf Tiny models, layer by layer and with 4x4 patches: planned arena against
   the analytic peak, the planner's lower bound, TVM's StaticPlanBlockMemory and TensorFlow Lite Micro's
   arena (goals: below TFLite Micro; >= 3x below it with patches); (b) the zoo's int8 models: arena
   against the analytic peak (goal: <= analytic x 1.05 + the largest kernel workspace).
`--quick` restricts sections 1 and 2b to the small zoo models.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time

import tvm
from tvm import relax

from bench.boards import BOARDS
from relay_passes import PatchStage
from tvm_patch import zoo
from tvm_patch.errors import TvmPatchError
from tvm_patch.export import export_model
from tvm_patch.frontend import load
from tvm_patch.graph import build_graph
from tvm_patch.patch.figures import patch_based
from tvm_patch.patch.memory import best_split
from tvm_patch.paths import shared_models_dir
from tvm_patch.profile import peak, profile_layers

PATCHES = 4
QUICK = ("mcunet-in0", "mbv2-w0.3-r80", "proxyless-w0.25-r112")


def _kb(n: int) -> str:
    return f"{n / 1024:.0f}"


def patch_section(board, names: list[str]) -> None:
    """Section 1 (see the module docstring)."""
    print(f"\n1. patch-based inference, {PATCHES}x{PATCHES} patches, auto split (int8 analytic; kB = 1024 B)")
    print(f"{'model':22} {'layer kB':>8} {'patch kB':>8} {'x':>5} {'MACs+':>6} {'split':>10} {'TIR B':>8} "
          f"{'fits':>4} {'pass s':>6} {'build s':>7}")
    target = tvm.target.Target({"kind": "llvm"})
    for name in names:
        mod = relax.transform.FoldConstant()(load(f"zoo:{name}").mod)
        graph = build_graph(mod)
        lbl = peak(profile_layers(graph)).bytes
        n = best_split(graph, mod["main"], (PATCHES, PATCHES))
        if n is None:
            print(f"{name:22} {_kb(lbl):>8} {'-':>8}  no split lowers the peak")
            continue
        pb = patch_based(graph, mod, PATCHES, n, tir=True)
        t0 = time.perf_counter()
        patched = PatchStage(n, PATCHES)(mod)
        t1 = time.perf_counter()
        tvm.compile(patched, target)
        t2 = time.perf_counter()
        fits = "yes" if pb["peak_bytes"] <= board.sram_bytes else "no"
        print(f"{name:22} {_kb(lbl):>8} {_kb(pb['peak_bytes']):>8} {pb['reduction']:>5.1f} "
              f"{pb['mac_overhead']:>6.1%} {pb['split_layer']:>10} {pb['tir_allocated_bytes']:>8} {fits:>4} "
              f"{t1 - t0:>6.1f} {t2 - t1:>7.1f}")


def export_section(zoo_names: list[str]) -> None:
    """Section 2 (see the module docstring)."""
    print("\n2a. plain-C export of the MLPerf Tiny models, int8 (bytes); goal: below TFLite Micro layer by "
          f"layer, >= 3x below it with {PATCHES}x{PATCHES} patches")
    print(f"{'model':16} {'arena':>8} {'analytic':>8} {'bound':>8} {'TVM plan':>8} {'TFLM':>8} {'TFLM/arena':>10} "
          f"{'patched':>8} {'analytic':>8} {'TFLM/patched':>12}")
    for path in sorted((shared_models_dir() / "mlperf_tiny").glob("*.tflite")):
        with tempfile.TemporaryDirectory() as tmp:
            r = export_model(str(path), f"{tmp}/out")
            p = export_model(str(path), f"{tmp}/patch", patches=PATCHES, split="auto")
        tflm = r.tflm_arena_head_bytes
        ratio = f"{tflm / r.arena_bytes:.2f}x" if tflm else "-"
        pratio = f"{tflm / p.arena_bytes:.2f}x" if tflm else "-"
        print(f"{path.stem:16} {r.arena_bytes:>8} {r.analytic_peak_bytes:>8} {r.lower_bound_bytes:>8} "
              f"{r.tvm_static_plan_bytes:>8} {tflm or '-':>8} {ratio:>10} {p.arena_bytes:>8} "
              f"{p.analytic_patch_peak_bytes or '-':>8} {pratio:>12}")
    print("\n2b. plain-C export of the zoo's int8 models, layer by layer (bytes); goal: arena <= analytic peak x 1.05"
          " + largest kernel workspace")
    print(f"{'model':22} {'arena':>9} {'analytic':>9} {'bound':>9} {'workspace':>9} {'goal':>9} {'met':>4} {'in place':>8}")
    for name in zoo_names:
        with tempfile.TemporaryDirectory() as tmp:
            r = export_model(f"zoo:{name}:int8", f"{tmp}/out")
        ws = max((b.size for b in r.arena_plan.buffers if b.name.startswith("ws")), default=0)
        goal = int(r.analytic_peak_bytes * 1.05) + ws
        print(f"{name:22} {r.arena_bytes:>9} {r.analytic_peak_bytes:>9} {r.lower_bound_bytes:>9} {ws:>9} {goal:>9} "
              f"{'yes' if r.arena_bytes <= goal else 'NO':>4} {len(r.arena_plan.inplace_calls):>8}")


def main(argv: list[str] | None = None) -> int:
    """Run the benchmarks for --board and print the tables."""
    p = argparse.ArgumentParser(prog="python -m bench.run")
    p.add_argument("--board", required=True, choices=sorted(BOARDS))
    p.add_argument("--quick", action="store_true", help="only the small zoo models in section 1")
    args = p.parse_args(argv)
    board = BOARDS[args.board]

    print(f"board {board.name} ({board.core}, {board.mhz} MHz): SRAM {board.sram_bytes // 1024} kB, "
          f"Flash {board.flash_bytes // 1024} kB. Host measurements; nothing here ran on the board.")
    try:
        patch_section(board, list(QUICK) if args.quick else zoo.names())
        export_section(list(QUICK) if args.quick else zoo.names())
    except TvmPatchError as e:
        print(f"bench: error: {e.one_line()}", file=sys.stderr)
        return 2
    print("\nnot built yet (open issues): on-board/QEMU latency and SRAM, the peers side by side (TinyEngine, "
          "TFLite Micro on the board), the cost model and search. No figure for them is printed.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
