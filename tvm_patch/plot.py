"""The per-layer memory figure (MCUNetV2 Fig. 1; with patches, Fig. 3's patched view beside it), drawn by
`tvm-patch profile --plot` and by the bench (bench/plots.py)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from microtvm_projects.boards import BOARDS

from tvm_patch.errors import TvmPatchError

# SRAM of the boards this project targets, drawn as reference lines (the smallest and the largest).
BOARD_SRAM_BYTES = {f"{b.name[:9]} SRAM ({b.sram_bytes // 1024} kB)": b.sram_bytes for b in (BOARDS["f412"], BOARDS["h743"])}

LBL, PATCH, PEAK = "#4c72b0", "#dd8452", "#c44e52"


@dataclass(frozen=True)
class PatchedView:
    """The patched schedule of a profile: the stage's first ``split`` layers run patch by patch."""

    split: int  # layers in the stage (0: no stage)
    stage_peak_bytes: int  # the stage's per-patch peak, held by each of its layers
    peak_bytes: int  # the whole network's patched peak
    patches: tuple[int, int]


def memory_plot(model: str, layer_bytes: Sequence[int], path: str | os.PathLike, *,
                patched: PatchedView | None = None, sram_bytes: Mapping[str, int] | None = None,
                dpi: int = 120) -> Path:
    """Per-layer activation memory (kB = 1024 B, the profile's analytic int8 convention), the peak marked;
    with ``patched``, the patched schedule's bars beside each layer's (the stage's layers hold the stage's
    per-patch peak: the profile gives the stage's peak, not each layer's per-patch figure; later layers run
    layer by layer as before). ``sram_bytes``: label -> SRAM lines (default: the smallest and largest board);
    a line more than twice above every bar is left out, it would only flatten the chart."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kb = [b / 1024 for b in layer_bytes]
    x = list(range(1, len(kb) + 1))
    peak = max(range(len(kb)), key=kb.__getitem__) if kb else 0
    fig, ax = plt.subplots(figsize=(max(6.0, 0.16 * len(kb) + 2.5), 3.8))
    width, shift = (0.4, 0.2) if patched else (0.85, 0.0)
    colors = [PEAK if i == peak else LBL for i in range(len(kb))]
    ax.bar([i - shift for i in x], kb, width=width, color=colors,
           label=f"layer by layer (peak {max(kb, default=0):.1f} kB, red)")
    tallest = max(kb, default=0.0)
    if patched:
        n = patched.split
        pk = [patched.stage_peak_bytes / 1024 if i < n else b for i, b in enumerate(kb)]
        p, q = patched.patches
        stage = f"{p}x{q} patches, stage = layers 1-{n}" if n else f"{p}x{q} patches: no stage"
        ax.bar([i + shift for i in x], pk, width=width, color=PATCH,
               label=f"{stage} (peak {patched.peak_bytes / 1024:.1f} kB)")
        if n:
            ax.axvline(n + 0.5, color="0.5", linewidth=0.8, linestyle="-.")
        tallest = max(tallest, *pk)
    lines = BOARD_SRAM_BYTES if sram_bytes is None else sram_bytes
    for i, (label, limit) in enumerate(lines.items()):
        if limit / 1024 <= 2 * tallest:
            ax.axhline(limit / 1024, color="0.3", linestyle="--" if i == 0 else ":", linewidth=1, label=label)
        else:  # named in the legend, off the chart
            ax.plot([], [], " ", label=f"{label}: far above")
    ax.set_xlabel("layer")
    ax.set_ylabel("activation memory (kB, int8, analytic)")
    ax.set_title(f"{model}: per-layer memory" + (", layer by layer and patched" if patched else ""))
    ax.set_xlim(0, len(kb) + 1)
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=dpi)
    except OSError as e:
        raise TvmPatchError(f"{path}: cannot write the plot ({e.strerror or e}); choose a writable path") from None
    finally:
        plt.close(fig)
    if not os.path.exists(path):
        raise TvmPatchError(f"{path}: the plot was not written")
    return Path(path)


def plot_profile(result: dict, path: str) -> None:
    """The figure of a `tvm-patch profile` result (its JSON form), patched bars beside when it has them."""
    pb = result.get("patch_based")
    patched = PatchedView(pb["split"], pb["stage_peak_bytes"], pb["peak_bytes"], tuple(pb["patches"])) if pb else None
    memory_plot(result["model"], [r["bytes"] for r in result["layers"]], path, patched=patched)
