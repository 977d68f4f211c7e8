"""The boards the benchmarks target: memory budgets from the reference manuals (see docs in README)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Board:
    """A target board: the SRAM and Flash the paper budgets for it, and its core."""

    key: str
    name: str
    core: str
    sram_bytes: int
    flash_bytes: int
    mhz: int


BOARDS = {
    "f412": Board("f412", "STM32F412ZG", "cortex-m4", 256 * 1024, 1024 * 1024, 100),
    "f746": Board("f746", "STM32F746NG", "cortex-m7", 320 * 1024, 1024 * 1024, 216),
    "h743": Board("h743", "STM32H743ZI", "cortex-m7", 512 * 1024, 2048 * 1024, 480),
}
