"""The bench's PNG plots (matplotlib, Agg): per-layer memory, peaks beside the peers', latency against SRAM."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the non-interactive backend)

from tvm_patch import plot  # noqa: E402
from bench.measure import PATCHES  # noqa: E402
from tvm_patch.plot import PatchedView  # noqa: E402


LBL, PATCH, FW, TFLM, PUB = "#4c72b0", "#dd8452", "#55a868", "#8172b3", "#c44e52"


def _save(fig: Any, path: Path) -> Path:
    """Write a figure as PNG and close it."""
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _sram_line(ax: Any, board: dict[str, Any], vertical: bool = False) -> None:
    """The board's SRAM as a dashed reference line."""
    kb = board["board_sram_bytes"] / 1024
    label = f"{board['board_name']} SRAM ({kb:.0f} kB)"
    (ax.axvline if vertical else ax.axhline)(kb, color="0.3", linestyle="--", linewidth=1, label=label)


def memory_plot(entry: dict[str, Any], board: dict[str, Any], path: Path) -> Path:
    """Per-layer activation memory layer by layer, and beside it the patched schedule's (Fig. 1 and 3):
    tvm_patch.plot's figure, with this board's SRAM line."""
    a = entry["analytic"]
    patched = PatchedView(a["split_layers"] or 0, a["stage_peak_bytes"] or 0, a["patch_peak_bytes"], (PATCHES, PATCHES))
    sram = {f"{board['board_name']} SRAM ({board['board_sram_bytes'] / 1024:.0f} kB)": board["board_sram_bytes"]}
    return plot.memory_plot(entry["model"], [r["bytes"] for r in a["layers"]], path, patched=patched, sram_bytes=sram,
                            dpi=90)


def peak_bars(entry: dict[str, Any], board: dict[str, Any]) -> list[tuple[str, float, str]]:
    """(label, kB, colour) for the peaks plot: ours analytic and as linked, TFLite Micro, the peers' published."""
    a = entry["analytic"]
    bars = [("per layer, analytic", a["layer_by_layer_peak_bytes"], LBL),
            ("4x4 patches, analytic", a["patch_peak_bytes"], PATCH)]
    for sched, label in (("layer_by_layer", "per layer"), ("patch_4x4_auto", "4x4 patches")):
        c = entry["configs"].get(sched, {})
        if c.get("sram_bytes"):
            bars.append((f"{label}, firmware SRAM on {board['board']}", c["sram_bytes"], FW))
    export = entry["configs"].get("layer_by_layer", {}).get("export") or {}
    if export.get("tflm_arena_head_bytes"):
        bars.append(("TFLite Micro arena (host)", export["tflm_arena_head_bytes"], TFLM))
    pub = entry.get("published", {})
    for lib in ("TinyEngine", "X-CUBE-AI 7.3"):
        v = pub.get("peers", {}).get("libraries", {}).get(lib, {})
        if v.get("sram_bytes"):
            bars.append((f"{lib} on h743 (published)", v["sram_bytes"], PUB))
    if "table2" in pub:
        t = pub["table2"]
        bars.append((f"MCUNetV2 Table 2 on {t['board']} (published)", t["sram_bytes"], PUB))
    return [(label, b / 1024, color) for label, b, color in bars]


def peaks_plot(entry: dict[str, Any], board: dict[str, Any], path: Path) -> Path:
    """Per-layer vs patched peak vs TFLite Micro vs the published figures, for one model."""
    bars = peak_bars(entry, board)
    fig, ax = plt.subplots(figsize=(7.5, 0.42 * len(bars) + 1.4))
    y = range(len(bars))
    for i, (_, v, color) in enumerate(bars):
        ax.barh(i, v, color=color, hatch="//" if color == PUB else None, edgecolor="white")
    for i, (_, v, _) in enumerate(bars):
        ax.text(v, i, f" {v:,.0f}", va="center", fontsize=8)
    ax.set_yticks(list(y), [b[0] for b in bars], fontsize=8)
    ax.invert_yaxis()
    if max(b[1] for b in bars) * 2 > board["board_sram_bytes"] / 1024:
        _sram_line(ax, board, vertical=True)
        ax.legend(fontsize=8, loc="lower right")
    ax.set_xlabel("peak memory (kB = 1024 B)")
    ax.set_title(f"{entry['model']}: peak memory (hatched: published, not measured here)", fontsize=9)
    return _save(fig, path)


def _log_axes(ax: Any) -> None:
    """Both axes logarithmic, ticked at 1, 2, 5 x 10^n with plain numbers."""
    ax.set_xscale("log")
    ax.set_yscale("log")
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_locator(matplotlib.ticker.LogLocator(base=10, subs=(1, 2, 5)))
        axis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        axis.set_minor_formatter(matplotlib.ticker.NullFormatter())


def latency_plot(data: dict[str, Any], path: Path) -> Path:
    """Latency against firmware SRAM for every model and schedule (the Pareto view), with the peers' points."""
    board = data["conditions"]
    fig, ax = plt.subplots(figsize=(7.5, 5.6))
    measured = 0  # points drawn, ours and the peers'
    for e in data["models"].values():
        pts = []
        for sched, marker in (("layer_by_layer", "o"), ("patch_4x4_auto", "s")):
            c = e.get("configs", {}).get(sched, {})
            run = c.get("run") or {}
            if c.get("status") == "ok" and run.get("latency_ms"):
                pts.append((c["sram_bytes"] / 1024, run["latency_ms"]))
                measured += 1
                ax.scatter(*pts[-1], marker=marker, color=PATCH if sched != "layer_by_layer" else LBL, zorder=3)
        if pts:
            ax.plot(*zip(*pts), color="0.6", linewidth=0.8)
            ax.annotate(e["model"], pts[-1], fontsize=7, xytext=(3, 3), textcoords="offset points")
        for lib, color in (("TinyEngine", PUB), ("X-CUBE-AI 7.3", TFLM)):
            v = e.get("published", {}).get("peers", {}).get("libraries", {}).get(lib, {})
            if v.get("latency_ms"):
                xy = (v["sram_bytes"] / 1024, v["latency_ms"])
                ax.scatter(*xy, marker="^", facecolors="none", edgecolors=color)
                measured += 1
                ax.annotate(e["model"], xy, fontsize=6, color=color, xytext=(3, -8), textcoords="offset points")
    est = "estimated: QEMU instructions x CPI" if board["runner"] == "emulator" else "DWT cycles"
    ax.scatter([], [], marker="o", color=LBL, label=f"tvm-patch, layer by layer ({est})")
    ax.scatter([], [], marker="s", color=PATCH, label="tvm-patch, 4x4 patches, auto split")
    ax.scatter([], [], marker="^", facecolors="none", edgecolors=PUB, label="TinyEngine on h743 (published)")
    ax.scatter([], [], marker="^", facecolors="none", edgecolors=TFLM, label="X-CUBE-AI 7.3 on h743 (published)")
    _sram_line(ax, board, vertical=True)
    if measured:
        _log_axes(ax)
    else:
        ax.text(0.5, 0.5, "no latency measured (see results.md)", transform=ax.transAxes, ha="center")
    ax.set_xlabel("SRAM (kB; ours: firmware as linked)")
    ax.set_ylabel(f"latency (ms) at {board['clock_mhz']} MHz")
    ax.set_title(f"latency against SRAM on {board['board_name']} ({board['runner']})", fontsize=10)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2)
    return _save(fig, path)


def write_plots(data: dict[str, Any], out_dir: Path) -> list[Path]:
    """Every plot of the run: per model memory and peaks, and the board's latency/SRAM view."""
    board = data["conditions"]
    written = []
    for e in data["models"].values():
        if e.get("analytic"):
            written.append(memory_plot(e, board, out_dir / f"memory_{e['model']}.png"))
            written.append(peaks_plot(e, board, out_dir / f"peaks_{e['model']}.png"))
    written.append(latency_plot(data, out_dir / f"latency_sram_{board['board']}.png"))
    return written
