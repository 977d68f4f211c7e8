"""What a search needs to know of one (architecture, schedule) on one board: its memory and its compute.

`evaluate` is the one place a search asks; the cost model (`tvm_patch.cost.predict`, issue 14) is meant to
replace or extend it (predicted latency, exact firmware SRAM and Flash) without the search changing.

Until then, memory is analytic and cheap (a few milliseconds): the spec's layer graph (`specgraph`) counted by
the project's own profile (layer by layer) or patch-based memory (`tvm_patch.patch.memory`, the input image
streamed), in the paper's convention (int8 activations, bytes). To compare with the board, SRAM and Flash
add what the firmware needs beside the arena and the weights (`SRAM_RESERVE_BYTES`, `FLASH_CODE_BYTES`,
measured on mcunet-in0 for the STM32H743: 12,192 B of stack + data/bss above the arena, 44,392 B of code
and vectors beside the weights and the input). No latency is reported: there is no measured model of it here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from microtvm_projects.boards import Board, get_board

from tvm_patch.errors import TvmPatchError
from tvm_patch.names import HALO_MODES
from tvm_patch.patch.memory import patch_memory
from tvm_patch.profile import peak, profile_layers
from tvm_patch.search.specgraph import spec_graph, spec_stage, weight_bytes
from tvm_patch.split import resolve_split
from tvm_patch.zoo.spec import NetSpec, macs

SRAM_RESERVE_BYTES = 8192 + 4096  # the firmware's default stack, and its .data/.bss rounded up
FLASH_CODE_BYTES = 64 * 1024  # code, vectors and tables beside the weights, rounded up
INPUT_BYTES_PER_ELEMENT = 4  # the firmware keeps one float32 input in Flash (its bit-exactness check)


@dataclass(frozen=True)
class Schedule:
    """How to run a network: layer by layer (`split` None), or its first `split` blocks (the stem is block 1,
    as `--split block:N`) over `patches` x `patches` patches with the given halo mode."""

    split: int | None = None
    patches: int = 1
    halo: str = HALO_MODES[0]

    def describe(self) -> str:
        """e.g. '4x4 patches, block:5, recompute' or 'layer by layer'."""
        if self.split is None:
            return "layer by layer"
        return f"{self.patches}x{self.patches} patches, block:{self.split}, {self.halo}"

    def cli_args(self) -> list[str]:
        """The `tvm-patch profile/build` options for this schedule."""
        return [] if self.split is None else ["--patches", str(self.patches), "--split", f"block:{self.split}",
                                              "--halo", self.halo]


@dataclass(frozen=True)
class Evaluation:
    """Memory (bytes) and compute of one architecture under one schedule, and the limits it was held to."""

    sram_bytes: int  # activation peak + SRAM_RESERVE_BYTES
    flash_bytes: int  # weights + input + FLASH_CODE_BYTES
    activation_peak_bytes: int  # analytic, the paper's convention (patch-based when scheduled so)
    weights_bytes: int
    macs: int  # executed: the patch stage's halos recomputed
    arch_macs: int  # the architecture's, every output once
    sram_limit: int
    flash_limit: int
    patch_input_hw: tuple[int, int] | None

    @property
    def fits(self) -> bool:
        return self.sram_bytes <= self.sram_limit and self.flash_bytes <= self.flash_limit

    def to_json(self) -> dict:
        out = asdict(self)
        out["patch_input_hw"] = list(self.patch_input_hw) if self.patch_input_hw else None
        out["fits"] = self.fits
        out["mac_overhead"] = self.macs / self.arch_macs - 1
        out["latency_ms"] = None  # no latency model yet (the cost model provides it)
        return out


def board_limits(board: Board | str, max_sram: int | None = None, max_flash: int | None = None) -> tuple[int, int]:
    """(SRAM, Flash) bytes a network may take on `board`: the board's, or tighter limits given by the user."""
    b = get_board(board) if isinstance(board, str) else board
    limits = []
    for what, given, full in (("SRAM", max_sram, b.sram_bytes), ("Flash", max_flash, b.flash_bytes)):
        if given is None:
            limits.append(full)
            continue
        if given <= 0 or given > full:
            raise TvmPatchError(f"--max-{what.lower()} {given}: give 1..{full} B (the {b.key}'s {what})")
        limits.append(given)
    return limits[0], limits[1]


def evaluate(spec: NetSpec, schedule: Schedule, board: Board | str,
             limits: tuple[int, int] | None = None) -> Evaluation:
    """Memory and MACs of `spec` run with `schedule`, against `board`'s SRAM and Flash (or `limits`).

    A schedule the network cannot run (a split inside a residual block or beyond the network, a patch count
    larger than the stage output, an unknown halo mode) is a TvmPatchError naming the problem."""
    b = get_board(board) if isinstance(board, str) else board
    sram_limit, flash_limit = limits if limits is not None else (b.sram_bytes, b.flash_bytes)
    graph = spec_graph(spec)
    arch = macs(spec)
    if schedule.split is None:
        act, executed, patch_in = peak(profile_layers(graph)).bytes, arch, None
    else:
        if schedule.halo not in HALO_MODES:
            raise TvmPatchError(f"halo mode {schedule.halo!r} is unknown; use one of {', '.join(HALO_MODES)}")
        pp = (schedule.patches, schedule.patches)
        n = resolve_split(graph, f"block:{schedule.split}", pp)
        m = patch_memory(graph, spec_stage(graph, n), n, pp, schedule.halo)
        act, executed, patch_in = m.peak_bytes, m.macs, m.patch_input_hw
    weights = weight_bytes(spec)
    image = 3 * spec.resolution ** 2 * INPUT_BYTES_PER_ELEMENT
    return Evaluation(sram_bytes=act + SRAM_RESERVE_BYTES, flash_bytes=weights + image + FLASH_CODE_BYTES,
                      activation_peak_bytes=act, weights_bytes=weights, macs=executed, arch_macs=arch,
                      sram_limit=sram_limit, flash_limit=flash_limit, patch_input_hw=patch_in)
