"""The boards tvm-patch targets, as facts from their reference manuals and user manuals.

One record per board: the core and its compiler flags, the clock the firmware sets, the memory map used by
the board link (Flash for code and weights, one SRAM region for arena, data, bss and stack), the region
sizes the emulator link keeps, the QEMU machine that stands in for the board, the console UART, and the
debug probe's target names. SRAM is the paper's budget for the board: F412 256 kB, F746 320 kB (DTCM +
SRAM1 + SRAM2, contiguous), H743 512 kB (the AXI SRAM; DTCM and SRAM1-4 are left unused).
"""

from __future__ import annotations

from dataclasses import dataclass

from microtvm_projects.errors import ProjectError

KB = 1024


@dataclass(frozen=True)
class Board:
    """A target board and how to build for it, run it in QEMU and reach it over its probe."""

    key: str
    name: str
    kit: str
    core: str
    cpu_flags: tuple[str, ...]
    mhz: int
    flash_origin: int
    flash_bytes: int
    sram_origin: int
    sram_bytes: int
    caches: str
    qemu_machine: str
    qemu_cpi: float
    openocd_target: str
    pyocd_target: str


_M4 = ("-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv4-sp-d16")
# TVMP_FPV5: the kernels' C may use FPv5's instructions (VMINNM); GCC predefines nothing that tells FPv5-SP from FPv4
_M7_SP = ("-mcpu=cortex-m7", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv5-sp-d16", "-DTVMP_FPV5=1")
_M7_DP = ("-mcpu=cortex-m7", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv5-d16", "-DTVMP_FPV5=1")

# qemu_cpi: cycles per instruction used to turn emulator instruction counts into estimated cycles. QEMU counts
# instructions, not cycles; these are documented guesses for int8 integer code (see docs/boards.md), and every
# latency derived from them is marked estimated.
BOARDS: dict[str, Board] = {
    "f412": Board("f412", "STM32F412ZG", "NUCLEO-F412ZG", "cortex-m4", _M4, 100,
                  0x08000000, 1024 * KB, 0x20000000, 256 * KB, "none", "mps2-an386", 1.25,
                  "target/stm32f4x.cfg", "stm32f412zgtx"),
    "f746": Board("f746", "STM32F746NG", "32F746GDISCOVERY", "cortex-m7", _M7_SP, 216,
                  0x08000000, 1024 * KB, 0x20000000, 320 * KB, "4 kB I + 4 kB D", "mps2-an500", 1.0,
                  "target/stm32f7x.cfg", "stm32f746nghx"),
    "h743": Board("h743", "STM32H743ZI", "NUCLEO-H743ZI", "cortex-m7", _M7_DP, 480,
                  0x08000000, 2048 * KB, 0x24000000, 512 * KB, "16 kB I + 16 kB D", "mps2-an500", 1.0,
                  "target/stm32h7x.cfg", "stm32h743zitx"),
}


# The mps2 machines' memory as QEMU maps it (both cores): 4 MB of code memory at 0x0 and 4 MB of RAM at 0x20000000
# (QEMU's hw/arm/mps2.c; ../shared/notes/toolchain.md). `emulator_memory` "machine" links the emulator firmware
# against these instead of the board's sizes: a network too large for the board still runs and is counted.
QEMU_CODE_BYTES = 4 * 1024 * KB
QEMU_RAM_BYTES = 4 * 1024 * KB


def link_memory(board: Board, memory: str = "board") -> tuple[str, int, int]:
    """(what holds the firmware, its Flash bytes, its SRAM bytes) of a link with ``memory`` "board" (the board's
    sizes) or "machine" (the QEMU machine standing in for it)."""
    if memory == "machine":
        return f"the QEMU machine ({board.qemu_machine})", QEMU_CODE_BYTES, QEMU_RAM_BYTES
    return board.key, board.flash_bytes, board.sram_bytes


def get_board(key: str) -> Board:
    """The board called `key`; an unknown key is a one-line error listing the known ones."""
    try:
        return BOARDS[key]
    except KeyError:
        raise ProjectError(f"unknown board {key!r}; choose one of {', '.join(BOARDS)}") from None
