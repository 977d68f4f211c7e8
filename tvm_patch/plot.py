"""The per-layer memory bar chart of `tvm-patch profile --plot` (MCUNetV2 Fig. 1)."""

from __future__ import annotations

import os

from microtvm_projects.boards import BOARDS

from tvm_patch.errors import TvmPatchError

# SRAM of the boards this project targets, drawn as reference lines (the smallest and the largest).
BOARD_SRAM_KB = {f"{b.name[:9]} ({b.sram_bytes // 1024} kB)": b.sram_bytes // 1024
                 for b in (BOARDS["f412"], BOARDS["h743"])}


def plot_profile(result: dict, path: str) -> None:
    """Draw per-layer activation memory (kB), coloured by block, with the peak and board SRAM marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["layers"]
    kb = [r["bytes"] / 1024 for r in rows]
    colors = ["#4c72b0" if r["block"] % 2 else "#8fb3de" for r in rows]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.14 * len(rows) + 2), 3.6))
    ax.bar(range(1, len(rows) + 1), kb, color=colors, width=0.85)
    lbl = result["layer_by_layer"]
    ax.bar([lbl["peak_index"]], [lbl["peak_bytes"] / 1024], color="#c44e52", width=0.85,
           label=f"peak {lbl['peak_bytes'] / 1024:.0f} kB: {lbl['peak_layer']}")
    for i, (label, limit) in enumerate(BOARD_SRAM_KB.items()):
        if limit > 2 * max(kb):
            continue  # a line far above every bar would only flatten the chart
        ax.axhline(limit, color="0.4", linestyle="--" if i == 0 else ":", linewidth=1, label=label)
    ax.set_xlabel("layer (alternating shades: blocks)")
    ax.set_ylabel("activation memory (kB, int8)")
    ax.set_title(f"{result['model']}: per-layer memory, layer by layer")
    ax.legend(fontsize=8, loc="upper right")
    ax.set_xlim(0, len(rows) + 1)
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=120)
    except OSError as e:
        raise TvmPatchError(f"{path}: cannot write the plot ({e.strerror or e}); choose a writable path") from None
    finally:
        plt.close(fig)
    if not os.path.exists(path):
        raise TvmPatchError(f"{path}: the plot was not written")
