"""Assemble results.md from the run's results: conditions, the measured tables, the published comparisons."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench import compare, peers, tables, tuning
from bench.measure import PLAN_SOURCE


def conditions_lines(c: dict[str, Any]) -> list[str]:
    """The run's conditions as a bullet list."""
    dirty = " (uncommitted changes)" if c.get("git_dirty") else ""
    runner = (f"emulator: QEMU {c['qemu_machine']}, exact instruction counts, latency = instructions x CPI "
              f"{c['qemu_cpi']} at {c['clock_mhz']} MHz (estimated)" if c["runner"] == "emulator"
              else "device: DWT cycles on the board")
    return [f"- board: {c['board_name']} ({c['kit']}, {c['core']}, {c['clock_mhz']} MHz, caches {c['caches']}, "
            f"SRAM {c['board_sram_bytes']:,} B, Flash {c['board_flash_bytes']:,} B)",
            f"- runner: {runner}",
            f"- compiler: {c['compiler']}, -{c['opt']}; tvm-patch {c['tvm_patch_version']}, commit {c['git_commit']}"
            f"{dirty}; Python {c['python']}; host {c['host']}",
            f"- plan: {PLAN_SOURCE}",
            f"- started {c['started']}; `{c['command']}`"]


def render(data: dict[str, Any]) -> str:
    """The whole results.md."""
    c = data["conditions"]
    elapsed = data.get("elapsed_seconds")
    done = (f"Run took {elapsed:,.0f} s" + ("" if data.get("complete") else " (interrupted: not every model ran)")
            if elapsed is not None else "Run in progress")
    parts = [f"# tvm-patch benchmarks on {c['board_name']}", "", *conditions_lines(c), f"- {done}.", "",
             "Every figure not labelled published was measured in this run. Bytes unless kB (1024 B).", "",
             "## Per model (layer by layer / 4x4 patches, auto split)", "", *tables.model_table(data), "",
             "## Per model and schedule", "", *tables.summary_table(data), "",
             f"Memory: {peers.OURS_FIRMWARE}; arena = the planned static arena. Latency: {peers.LATENCY_OURS}.", "",
             "## The plan `tvm-patch plan --fast` chooses: predicted vs measured", "", *tables.plan_table(data), "",
             "Predicted: the cost model (tvm_patch/cost; SRAM exact, Flash within 1 %, latency from the per-kernel "
             "model, docs/cost-model.md); measured: the firmware as linked and its run.", "",
             "## Patch-based inference (analytic, int8)", "", *tables.patch_table(data), "",
             f"Convention: {peers.OURS_ANALYTIC}. MACs + = recomputed halos over the network and over the stage.", "",
             "## Plain-C export: arena", "", *tables.export_table(data), "",
             "analytic = the profile's peak; bound = the most bytes live at once; TVM plan = StaticPlanBlockMemory; "
             "TFLM = TensorFlow Lite Micro's activation arena (print_allocations head; .tflite models only), "
             "measured by the export on the host.", "",
             "## Firmware on the board's runner", "", *tables.firmware_table(data), "",
             "## Cortex-M kernels (issue 13's goals: at most 1.5 per MAC, 5x fewer than plain)", "",
             *tables.kernel_table(data), "",
             "At kernel parity: the patched build if the stage ran each of its layers at the instructions per MAC of "
             "that layer's own kernel layer by layer (bench/parity.py). Above its bound, no stage kernel at the "
             "per-layer kernels' speed meets the goal: recompute mode's extra MACs fall on the layers dearest per "
             "MAC.", "",
             *(["## Tuned vs untuned 1x1 convolutions (issue 13's goal: tuned beats untuned; emulator instructions, "
                "`--tuning TRIALS`)", "", *tuning.sections(data["tuning"], "###")] if data.get("tuning") else []),
             "## The paper and the peers beside this run", "",
             "### MCUNetV2 Table 1: MobileNetV2-224", "", *compare.table1(data), "",
             "### MCUNetV2 Fig. 5: peak-memory reduction of existing networks", "", *compare.fig5(data), "",
             "### MCUNetV2 Table 2: ImageNet models on MCUs", "", *compare.table2(data), "",
             "### TinyEngine's STM32H743 table: TFLite Micro, CMSIS-NN, X-CUBE-AI, TinyEngine", "",
             *compare.peer_table(data), "",
             "## Did not fit or failed", "", *tables.failures(data), "",
             "## Not built yet", "", f"Not measured, no figure printed: {tables.NOT_BUILT}.", ""]
    return "\n".join(parts)


def write_markdown(data: dict[str, Any], path: Path) -> None:
    """Write results.md."""
    path.write_text(render(data))
