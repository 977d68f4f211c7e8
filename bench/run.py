"""Benchmarks for one board: what is built so far, measured now; what is not built yet, said plainly.

Today: the analytic layer-by-layer memory profile of every zoo model and of the shared MLPerf Tiny models,
against the board's SRAM. Patch-based figures, the C arena and on-board latency come with their issues.
"""

from __future__ import annotations

import argparse
import sys
import time

from bench.boards import BOARDS


def _zoo_rows() -> list[tuple[str, str]]:
    from tvm_patch import zoo
    from tvm_patch.paths import shared_models_dir

    rows = [(name, f"zoo:{name}") for name in zoo.names()]
    mlperf = shared_models_dir() / "mlperf_tiny"
    rows += [(p.stem, str(p)) for p in sorted(mlperf.glob("*.tflite"))]
    return rows


def main(argv: list[str] | None = None) -> int:
    """Run the benchmarks for --board and print a table."""
    p = argparse.ArgumentParser(prog="python -m bench.run")
    p.add_argument("--board", required=True, choices=sorted(BOARDS))
    args = p.parse_args(argv)
    board = BOARDS[args.board]
    from tvm_patch.errors import TvmPatchError
    from tvm_patch.report import profile

    print(f"board {board.name} ({board.core}, {board.mhz} MHz): SRAM {board.sram_bytes // 1024} kB, "
          f"Flash {board.flash_bytes // 1024} kB")
    print("analytic layer-by-layer profile (int8; kB = 1024 B):")
    print(f"{'model':24} {'peak B':>10} {'peak kB':>8} {'MACs M':>8} {'fits':>5} {'time s':>7}  peak layer")
    try:
        rows = _zoo_rows()
    except TvmPatchError as e:
        print(f"bench: error: {e}", file=sys.stderr)
        return 2
    for name, spec in rows:
        t0 = time.perf_counter()
        try:
            r = profile(spec)
        except TvmPatchError as e:
            print(f"{name:24} error: {e}")
            continue
        lbl = r["layer_by_layer"]
        fits = "yes" if lbl["peak_bytes"] <= board.sram_bytes else "no"
        print(f"{name:24} {lbl['peak_bytes']:>10} {lbl['peak_bytes'] / 1024:>8.1f} {lbl['macs'] / 1e6:>8.1f} "
              f"{fits:>5} {time.perf_counter() - t0:>7.1f}  {lbl['peak_layer']}")
    print("not built yet (open issues): patch-based peak and MAC overhead, planned C arena vs TFLite Micro, "
          "on-board/QEMU latency. No figure for them is printed until it is measured.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
