"""The kernels fingerprint: which kernels a latency model was measured on, as a hash of what decides the
measured counts, so that a model or a measurement record is stale when that code changes and not when its
sources are only rearranged. Hashed: the C (model.c, tvmp_model.h) that the measurements' own export (the
micro-kernels, every kernel's weights widened, or int8 for a few probes) writes for a fixed set of probe
exports, and the firmware's compile flags (each board's generated Makefile, comments left out, and the header it
force-includes into model.c). Computed once per installation's sources (cost/cache.py) and TVM version, about
28 s, then read from the disk cache.
"""

from __future__ import annotations

import contextvars
import hashlib
import re
import tempfile
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path
from typing import Any

import tvm

from microtvm_projects.boards import BOARDS
from microtvm_projects.generate import TEMPLATE, makefile
from microtvm_projects.options import resolve_options
from tvm_patch.cost import cache as disk_cache
from tvm_patch.cost.plan import Plan
from tvm_patch.cost.synth import Inserted, nhwc_model, write_onnx
from tvm_patch.export import export_model
from tvm_patch.frontend import load
from tvm_patch.zoo.spec import BlockSpec, ConvSpec, NetSpec

# the measured firmware's arm-none-eabi-gcc optimisation level (measure.py's builds, predict.py's Flash)
OPT = "O3"


def every_kernel(_name: str) -> bool:
    """The widening policy allowing every kernel (export_model's ``wide``): the measured builds' weights."""
    return True


# The probe network: every kernel kind the latency models price, at sizes the collected networks have (widths
# even and odd: the pixel-pair and one-pixel kernels). Stem: padded 3x3 stride 2; then a plain 3x3 (stride 1)
# and 5x5 convolution inserted as the collection's later rounds do; blocks with 1x1 expand / project, the
# residual add fused into the project, depthwise 3x3, 5x5 and 7x7 at strides 1 and 2; a 1x1 head, pool, dense.
PROBE_NET = NetSpec("kernels-probe", "synthetic", 56, ConvSpec(3, 8, 3, 2, 1, "relu6"), (
    BlockSpec(8, 32, 8, 3, 1, True, True),
    BlockSpec(8, 24, 16, 3, 2, True, False),
    BlockSpec(16, 16, 16, 5, 1, False, True),
    BlockSpec(16, 48, 16, 5, 2, True, False),
    BlockSpec(16, 48, 16, 7, 1, True, True),
    BlockSpec(16, 16, 24, 7, 2, False, False)), ConvSpec(24, 32, 1, 1, 1, "relu6"), num_classes=10)
PROBE_INSERTS = (Inserted("stem.relu6", 8, 3, 1), Inserted("b4.add", 16, 5, 1))
# The patch stage's probe: the stem, the inserted 3x3 and the first two blocks over 3 x 3 patches, in both halo
# modes; the network ends there (then pool and dense: the per-layer probe has the other kernels).
STAGE_NET = replace(PROBE_NET, name="kernels-probe-stage", blocks=PROBE_NET.blocks[:2], head=None)
STAGE_INSERTS = PROBE_INSERTS[:1]
LAYOUTS = ("NCHW", "NHWC")  # the ONNX networks' kernels and the TFLite form's (nhwc.py)
# An NCHW stage in recompute mode of a block without the add (the stage its four layers), its 8 -> 32 1x1 layer
# over 7-wide regions, the interior patches' as wide as their buffers (one row of pixel pairs: codegen/channel_rows.py's
# ``_flat_rows``), the others clipped by the image's border. (Until session 41 the stage probe's NCHW recompute stage
# kept the TE form, `schedule.build_stage`, its residual add's conv reading a copied window: this probe was the
# written nest's only one there.)
ROWS_NET = NetSpec("kernels-probe-rows", "synthetic", 30, ConvSpec(3, 8, 3, 2, 1, "relu6"),
                   (BlockSpec(8, 32, 16, 3, 1, True, False),), None, num_classes=10)
# An NCHW stage in recompute mode whose 7x7 depthwise layer (stride 1) is followed by a 5x5 one: the 7x7 layer's
# output regions reach past the image, so its rows are clipped to the live part and as wide as the patch says at
# run time (window_blocks: four windows a call since session 42, each row's last outputs from its last four windows).
DW_ROWS_NET = NetSpec("kernels-probe-dw-rows", "synthetic", 30, ConvSpec(3, 8, 3, 2, 1, "relu6"),
                      (BlockSpec(8, 16, 8, 7, 1, True, False), BlockSpec(8, 16, 8, 5, 1, True, True)), None,
                      num_classes=10)
# ROWS_NET layer by layer under a name whose seeded calibration gives the float input a zero point of 0 (the
# synthetic networks' inputs have one now and then): TVM drops the "+ 0", so that input's quantization is its
# own match in codegen/quantize_kernels.py (tests/test_cost_model.py checks the zero point).
ZP0_NET = replace(ROWS_NET, name="kernels-probe-zp0-11")

# Small planes through 7x7 depthwise layers, NCHW layer by layer: 12 x 12 at stride 2 (rows of six), 6 x 6 at stride
# 1 (a quad and a pair a row: the pair on widened weights, `tvmp_window2_s8w`), 6 x 6 at stride 2 (rows of three,
# `tvmp_window3_s8`), the forms of mcunet-in0's late layers that no other probe has.
SMALL_PLANES_NET = NetSpec("kernels-probe-small-planes", "synthetic", 24, ConvSpec(3, 8, 3, 2, 1, "relu6"),
                           (BlockSpec(8, 16, 8, 7, 2, True, False), BlockSpec(8, 16, 8, 7, 1, True, True),
                            BlockSpec(8, 16, 16, 7, 2, True, False)), None, num_classes=10)


@dataclass(frozen=True)
class Probe:
    """One probe export: ``net`` (with ``inserts``) in ``layout`` under ``plan``."""

    net: NetSpec
    inserts: tuple[Inserted, ...]
    layout: str
    plan: Plan
    wide: bool = True  # every kernel's weights widened (the measured builds'), or none (a Flash that cannot hold them)

    @property
    def name(self) -> str:
        """Network, layout, plan and int8 weights if so, e.g. ``kernels-probe/NHWC/layer-by-layer``."""
        return f"{self.net.name}/{self.layout}/{self.plan.label()}" + ("" if self.wide else "/int8-weights")


# Every kernel's weights int8, as a board whose Flash cannot hold them widened builds them and the collection's rounds
# 6 and 7 measure them: the int8-weight dot kernels, which the widened probes never call.
INT8_PROBES = (*(Probe(PROBE_NET, PROBE_INSERTS, layout, Plan(), wide=False) for layout in LAYOUTS),
               Probe(ROWS_NET, (), "NCHW", Plan(4, (3, 3), "recompute"), wide=False))
PROBES = tuple(p for layout in LAYOUTS for p in (
    Probe(PROBE_NET, PROBE_INSERTS, layout, Plan()),
    *(Probe(STAGE_NET, STAGE_INSERTS, layout, Plan("block:3", (3, 3), halo)) for halo in ("recompute", "cache")))) \
    + (Probe(ROWS_NET, (), "NCHW", Plan(4, (3, 3), "recompute")),
       Probe(DW_ROWS_NET, (), "NCHW", Plan("block:3", (3, 3), "recompute")),
       Probe(ZP0_NET, (), "NCHW", Plan()), *INT8_PROBES, Probe(SMALL_PLANES_NET, (), "NCHW", Plan()))


def probe_model(probe: Probe, tmp: Path) -> Any:
    """The probe's network as the collection measures networks: an int8 QDQ ONNX file (NCHW, written to
    ``tmp``, loaded: the C names the file, not its path) or the NHWC module in TFLite's form."""
    if probe.layout == "NHWC":
        return nhwc_model(probe.net, probe.inserts)
    return load(str(write_onnx(probe.net, tmp / f"{probe.net.name}.onnx", probe.inserts)))


def probe_c(probe: Probe, tmp: Path) -> dict[str, bytes]:
    """The C files a probe export writes that the firmware compiles (model.c, tvmp_model.h), as code_text."""
    out = tmp / re.sub(r"\W+", "_", probe.name)
    export_model(probe_model(probe, tmp), out, wide=every_kernel if probe.wide else None, **probe.plan.export_args())
    return {name: code_text((out / name).read_bytes()) for name in ("model.c", "tvmp_model.h")}


# a string or character literal (kept), or a comment (dropped)
_C_TOKEN = re.compile(rb'"(?:\\.|[^"\\\n])*"|\'(?:\\.|[^\'\\\n])*\'|/\*.*?\*/|//[^\n]*', re.S)


def code_text(c: bytes) -> bytes:
    """C source without its comments, blank lines and trailing blanks: what the compiler reads (a comment
    edited in tvmp_kernels.h, which model.c holds, is no new code)."""
    text = _C_TOKEN.sub(lambda m: m.group(0) if m.group(0)[:1] in b"\"'" else b" ", c)
    return b"\n".join(ln.rstrip() for ln in text.splitlines() if ln.strip())


def firmware_flags() -> dict[str, bytes]:
    """What compiles the kernels on each board: its generated Makefile (the measured level, comments left out)
    and the header the Makefile force-includes into model.c."""
    out = {}
    for key, board in sorted(BOARDS.items()):
        text = makefile(board, resolve_options({"board": key, "opt": OPT}, "generate_project"), "probe")
        out[f"Makefile.{key}"] = "\n".join(ln for ln in text.splitlines() if not ln.lstrip().startswith("#")).encode()
    out["tvmp_profile.h"] = code_text((TEMPLATE / "src" / "tvmp_profile.h").read_bytes())
    return out


def digest(probes: tuple[Probe, ...]) -> str:
    """The fingerprint computed afresh: a hash of ``probes``' C and the firmware flags (the exports run in a
    fresh context: no ambient ``plain_kernels()``)."""
    h = hashlib.sha256()

    def add(name: str, data: bytes) -> None:
        h.update(name.encode() + b"\0" + str(len(data)).encode() + b"\0" + data)

    with tempfile.TemporaryDirectory(prefix="tvmp_fingerprint_") as tmp:
        for i, probe in enumerate(probes):
            files = contextvars.Context().run(probe_c, probe, Path(tmp))
            for name, data in files.items():
                add(f"probe{i}/{name}", data)
    for name, data in firmware_flags().items():
        add(name, data)
    return h.hexdigest()[:16]


@cache
def kernels_fingerprint() -> str:
    """A short hash (16 hex digits) of the code the kernels of this installation compile to (``digest``),
    read from the disk cache when these sources and this TVM computed it before."""
    k = disk_cache.key("kernels_fingerprint", tvm.__version__)
    hit = disk_cache.get(k)
    if hit is not None and isinstance(hit.get("fingerprint"), str):
        return hit["fingerprint"]
    fp = digest(PROBES)
    disk_cache.put(k, {"fingerprint": fp})
    return fp
