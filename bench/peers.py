"""Published figures of the paper and its peers, typed from ../shared/notes/paper.md and labelled "published".

Nothing here is measured: the bench prints these beside what it measured, each with its source and the
memory convention it uses, so a reader can tell which side counts what.
"""

from __future__ import annotations

from dataclasses import dataclass

KB = 1024
PAPER = "MCUNetV2 (Lin et al., NeurIPS 2021, arXiv 2110.15352)"
TINYENGINE = "TinyEngine README (mit-han-lab/tinyengine), STM32H743 at 480 MHz, newer library versions than the paper"

# The memory conventions, one sentence each, quoted in every comparison table.
OURS_ANALYTIC = ("ours, analytic: int8 activations only (inputs + output + live tensors; depthwise and residual "
                 "add in place, an in-place k x k depthwise layer holding the p (W + 1) outputs its kernel must keep; "
                 "weights in Flash); patched: input image streamed, not held")
OURS_FIRMWARE = "ours, firmware: SRAM = arena + stack + .data/.bss as linked (arm-none-eabi-size)"
PAPER_ANALYTIC = ("paper, analytic: int8 activations, ours' convention without the in-place depthwise layer's "
                  "p (W + 1) held outputs (paper.md)")
PAPER_DEVICE = "paper, on device: measured peak SRAM, activations + kernel buffers (im2col and the like)"
PEER_DEVICE = ("peers, on device: each library's measured peak SRAM as TinyEngine reports it (activations + "
               "kernel buffers; whether stack and runtime are counted is not stated)")
LATENCY_OURS = "ours: QEMU instructions x the board's CPI at its clock (estimated), or DWT cycles (device)"
LATENCY_PEER = "peers: measured on an STM32H743 at 480 MHz"


@dataclass(frozen=True)
class Table1:
    """MCUNetV2 Table 1: MobileNetV2-224 width 1.0, layer by layer and 4x4 patches after 5 blocks."""

    model: str = "mbv2-w1.0-r224"
    layer_by_layer_bytes: int = 1_404_928
    patch_bytes: int = 175_616
    macs: int = 300_000_000
    network_mac_overhead: float = 0.10
    stage_mac_overhead: float = 0.42
    in_image_network_mac_overhead: float = 0.093
    in_image_stage_mac_overhead: float = 0.31
    schedule: str = "4x4 patches after 5 blocks (stem + 4 inverted residual blocks)"
    source: str = f"{PAPER}, Table 1"
    convention: str = PAPER_ANALYTIC


TABLE1 = Table1()

# Fig. 5 / Appendix C: the range over existing 224x224 networks, 4x4 patches (no per-network factor in the text).
FIG5 = {
    "models": ("mbv2-w1.0-r224", "mnasnet-a1-r224"),
    "reduction_min": 3.7, "reduction_max": 8.0,
    "mac_overhead_min": 0.08, "mac_overhead_max": 0.17,
    "networks": "MbV2, MbV2-RD, OFA-CPU, MnasNet, FBNet-A; 224x224, 4x4 patches, int8, analytic",
    "source": f"{PAPER}, Fig. 5 and Appendix C (a range over the networks, not per network)",
    "convention": PAPER_ANALYTIC,
}


@dataclass(frozen=True)
class Table2Row:
    """One row of MCUNetV2 Table 2 (ImageNet on MCUs, int8) for a network the zoo has."""

    model: str
    paper_name: str
    board: str
    macs: int
    sram_bytes: int
    flash_bytes: int
    top1: float


# The zoo's mcunet-in2 is MCUNet's mcunet-256kb-1mb config and mcunet-in4 its mcunet-512kb-2mb config
# (../shared/models/README.md), the MCUNet rows of Table 2 for the F412 and the H743.
TABLE2 = (
    Table2Row("mbv2-w0.35-r144", "MbV2 0.35x r144", "f412", 24_000_000, 308 * KB, 862 * KB, 49.0),
    Table2Row("proxyless-w0.3-r176", "Proxyless 0.3x r176", "f412", 38_000_000, 292 * KB, 892 * KB, 56.2),
    Table2Row("mcunet-in2", "MCUNet (256 kB / 1 MB)", "f412", 68_000_000, 238 * KB, 1007 * KB, 60.3),
    Table2Row("mcunet-in4", "MCUNet (512 kB / 2 MB)", "h743", 126_000_000, 452 * KB, 2014 * KB, 68.5),
)
TABLE2_SOURCE = f"{PAPER}, Table 2"

PEER_LIBS = ("TFLite Micro", "CMSIS-NN", "X-CUBE-AI 7.3", "TinyEngine")

# TinyEngine's published table: (latency ms, peak SRAM kB) per library; None = out of memory.
PEER_TABLE: dict[str, tuple[tuple[float, int] | None, ...]] = {
    "mcunet-in0": ((586, 161), (51, 161), (35, 69), (25, 49)),
    "mcunet-in1": ((1227, 219), (103, 219), (63, 106), (56, 96)),
    "mcunet-in2": ((6463, 460), (642, 469), (351, 238), (280, 215)),
    "mcunet-in3": ((7821, 493), (770, 493), (414, 243), (336, 260)),
    "mcunet-in4": (None, None, (516, 342), (463, 416)),
    "proxyless-w0.3-r176": ((3801, 453), (380, 453), (205, 221), (176, 259)),
}
PEER_BOARD = "h743"
TINYENGINE_FLASH_KB = {"mcunet-in0": 842, "mcunet-in1": 727, "mcunet-in2": 830, "mcunet-in3": 835,
                       "mcunet-in4": 1825}


def peers_for(model: str) -> dict | None:
    """The published latency and SRAM of each library for a zoo model, as JSON, or None when not published."""
    row = PEER_TABLE.get(model)
    if row is None:
        return None
    libs = {lib: ({"latency_ms": v[0], "sram_bytes": v[1] * KB} if v else {"out_of_memory": True})
            for lib, v in zip(PEER_LIBS, row)}
    return {"published": True, "board": PEER_BOARD, "source": TINYENGINE, "convention": PEER_DEVICE,
            "libraries": libs, "tinyengine_flash_bytes": (TINYENGINE_FLASH_KB[model] * KB
                                                          if model in TINYENGINE_FLASH_KB else None)}


def table2_for(model: str) -> Table2Row | None:
    """Table 2's row for a zoo model, or None."""
    return next((r for r in TABLE2 if r.model == model), None)


def published_for(model: str) -> dict:
    """Every published figure that names this zoo model, as JSON (labelled published, with sources)."""
    out: dict = {}
    if model == TABLE1.model:
        out["table1"] = {"published": True, "source": TABLE1.source, "convention": TABLE1.convention,
                         "schedule": TABLE1.schedule, "layer_by_layer_bytes": TABLE1.layer_by_layer_bytes,
                         "patch_bytes": TABLE1.patch_bytes, "macs": TABLE1.macs,
                         "network_mac_overhead": TABLE1.network_mac_overhead,
                         "stage_mac_overhead": TABLE1.stage_mac_overhead,
                         "in_image_network_mac_overhead": TABLE1.in_image_network_mac_overhead}
    if model in FIG5["models"]:
        out["fig5"] = {"published": True, **{k: v for k, v in FIG5.items() if k != "models"}}
    row = table2_for(model)
    if row is not None:
        out["table2"] = {"published": True, "source": TABLE2_SOURCE, "convention": PAPER_DEVICE,
                         "paper_name": row.paper_name, "board": row.board, "macs": row.macs,
                         "sram_bytes": row.sram_bytes, "flash_bytes": row.flash_bytes, "top1": row.top1}
    peers = peers_for(model)
    if peers is not None:
        out["peers"] = peers
    return out
