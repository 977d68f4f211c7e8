"""The conditions of a bench run, recorded in results.json: board, clock, caches, toolchain, versions, commit."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

from microtvm_projects.boards import Board

import tvm_patch

REPO = Path(__file__).resolve().parent.parent
OPT = "O3"  # build_for_board's default, which the bench keeps; each schedule's entry records the opt it built with


def _first_line(cmd: list[str], cwd: Path | None = None) -> str | None:
    """The first line a command prints, or None when it is missing or fails."""
    try:
        done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=30, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    lines = done.stdout.strip().splitlines()
    return lines[0].strip() if lines else None


def git_commit() -> str:
    """`git rev-parse HEAD` of the checkout the bench runs from, or "unknown" outside a checkout."""
    return _first_line(["git", "rev-parse", "HEAD"], REPO) or "unknown"


def git_dirty() -> bool | None:
    """Whether tracked files differ from the commit (None outside a checkout)."""
    try:
        done = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                              capture_output=True, text=True, timeout=30, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return bool(done.stdout.strip())


def conditions(board: Board, runner: str, argv: list[str]) -> dict[str, Any]:
    """Everything a reader needs to reproduce the run (each model's sha256 is in its own entry)."""
    return {
        "board": board.key,
        "board_name": board.name,
        "kit": board.kit,
        "core": board.core,
        "clock_mhz": board.mhz,
        "caches": board.caches,
        "board_sram_bytes": board.sram_bytes,
        "board_flash_bytes": board.flash_bytes,
        "runner": runner,
        "qemu_machine": board.qemu_machine if runner == "emulator" else None,
        "qemu_cpi": board.qemu_cpi if runner == "emulator" else None,
        "opt": OPT,
        "compiler": _first_line(["arm-none-eabi-gcc", "--version"]) or "unknown",
        "qemu": _first_line(["qemu-system-arm", "--version"]) if runner == "emulator" else None,
        "tvm_patch_version": tvm_patch.__version__,
        "git_commit": git_commit(),
        "git_dirty": git_dirty(),
        "python": sys.version.split()[0],
        "host": f"{platform.machine()}, {os.cpu_count()} cores",
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": "python -m bench.run " + " ".join(argv),
    }
