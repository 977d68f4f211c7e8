"""Build a board project's firmware with arm-none-eabi-gcc and measure what it keeps in Flash and SRAM.

Fitting is checked twice. Before compiling, from the export's figures (arena + stack + output buffers must
fit the SRAM, weights + inputs the Flash). After linking, from the ELF: SRAM = .data + .bss (the arena is in
.bss) + .stack, Flash = .isr_vector + .text + .rodata + .ARM.exidx + the load image of .data (sizes from
arm-none-eabi-size -A). When the link overflows, the same objects are linked again against an oversized
script to measure exactly how much is needed; the user sees one line with the region and the bytes, never
ld's own message.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from microtvm_projects.boards import Board, get_board, link_memory
from microtvm_projects.errors import FitError, ProjectError
from microtvm_projects.generate import PROJECT_JSON, link_sizes, linker_script

ARENA_SYMBOL = "tvmp_arena"
RAM_SECTIONS = (".data", ".bss", ".stack")
FLASH_SECTIONS = (".isr_vector", ".text", ".rodata", ".ARM.exidx", ".data")
MEASURE_BYTES = 256 * 1024 * 1024


@dataclass
class FirmwareBuild:
    """A linked firmware and its memory: bytes, as the board keeps them."""

    board: str
    runner: str
    profile: bool
    elf: Path
    flash_bytes: int
    sram_bytes: int
    arena_bytes: int
    stack_bytes: int
    data_bss_bytes: int  # .data + .bss less the arena: output buffers, counters, C library state
    sections: dict[str, int]
    compiler: str
    opt: str
    memory: str = "board"  # the emulator's link: the board's sizes or the QEMU machine's ("emulator_memory")


def load_project(project_dir: str | Path) -> dict[str, Any]:
    """The project's ``tvmp_project.json``; a directory that is not a board project is a one-line error."""
    path = Path(project_dir) / PROJECT_JSON
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ProjectError(f"{project_dir}: not a board project (no {PROJECT_JSON}); make one with "
                           "`tvm-patch build MODEL --board B -o DIR`") from None
    except (OSError, ValueError) as e:
        raise ProjectError(f"{path}: unreadable ({e}); generate the project again") from None


def _fmt(n: int) -> str:
    return f"{n:,} B"


# the stack a run uses besides the kernels' scratch: start-up, the runner, the deepest call chain (measured 268-428 B
# on five networks, M4 and M7)
STACK_HEADROOM = 1024


def check_fit_before(project: dict[str, Any], board: Board, stack_bytes: int, memory: str = "board") -> None:
    """The check from the export's figures, before anything is compiled: the stack always, the SRAM and Flash
    against the board's sizes, or the QEMU machine's with ``memory`` "machine" (an emulator link)."""
    ex = project["export"]
    scratch = ex.get("kernel_stack_scratch_bytes") or 0  # (projects of older exports: not recorded)
    if scratch + STACK_HEADROOM > stack_bytes:
        raise FitError(f"stack: the kernels keep up to {scratch:,} B on the stack (widened pixel pairs), so a stack of "
                       f"{stack_bytes:,} B leaves less than {STACK_HEADROOM:,} B for the rest; give --stack "
                       f"{-(-(scratch + STACK_HEADROOM) // 8) * 8:,} or more")
    where, flash_cap, sram_cap = link_memory(board, memory)
    outs = sum(io["bytes"] for io in project["outputs"])
    ram = ex["arena_bytes"] + stack_bytes + outs
    if ram > sram_cap:
        raise FitError(f"SRAM: needs at least {_fmt(ram)} (arena {ex['arena_bytes']:,} + stack {stack_bytes:,} + "
                       f"outputs {outs:,}), {where} has {_fmt(sram_cap)}")
    ins = sum(io["bytes"] for io in project["inputs"])
    rom = ex["weights_bytes"] + ins
    if rom > flash_cap:
        raise FitError(f"Flash: needs at least {_fmt(rom)} (weights {ex['weights_bytes']:,} + input {ins:,}), "
                       f"{where} has {_fmt(flash_cap)}", flash_over=rom - flash_cap)



def toolchain(cross: str = "arm-none-eabi-") -> str:
    """The cross compiler's version line; a missing toolchain is a one-line error saying what to install."""
    if shutil.which(f"{cross}gcc") is None:
        raise ProjectError(f"{cross}gcc not found; install gcc-arm-none-eabi and libnewlib-arm-none-eabi "
                           "(`make setup` does it)")
    out = subprocess.run([f"{cross}gcc", "--version"], capture_output=True, text=True, timeout=30).stdout
    return out.splitlines()[0].strip() if out else f"{cross}gcc"


def section_sizes(elf: Path, cross: str = "arm-none-eabi-") -> dict[str, int]:
    """Section name -> size in bytes (``arm-none-eabi-size -A``)."""
    out = _run([f"{cross}size", "-A", str(elf)], "arm-none-eabi-size", 60).stdout
    sizes = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].startswith(".") and parts[1].isdigit():
            sizes[parts[0]] = int(parts[1])
    return sizes


def symbol_size(elf: Path, name: str, cross: str = "arm-none-eabi-") -> int:
    """Size of one symbol (``arm-none-eabi-nm -S``); 0 when absent."""
    out = _run([f"{cross}nm", "-S", str(elf)], "arm-none-eabi-nm", 60).stdout
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[3] == name:
            return int(parts[1], 16)
    return 0


def _run(cmd: list[str], what: str, timeout: float, cwd: Path | None = None) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd)
    except subprocess.TimeoutExpired:
        raise ProjectError(f"{what} took more than {timeout:.0f} s; stopped (raise --timeout)") from None


def _first_error(text: str) -> str:
    """The line of a compiler or linker log that says what went wrong (not collect2's summary)."""
    lines = [ln.strip() for ln in text.splitlines()]
    for needle in ("error:", "undefined reference", "error"):
        for line in lines:
            if needle in line.lower() and not line.startswith("collect2"):
                return line
    lines = text.strip().splitlines()
    return lines[-1] if lines else "no message"


def build_firmware(project_dir: str | Path, runner: str = "emulator", profile: bool = False,
                   opt: str | None = None, timeout_sec: float = 600.0) -> FirmwareBuild:
    """``make`` the firmware for ``runner`` (device or emulator), check that it fits, measure it."""
    proj_dir = Path(project_dir)
    project = load_project(proj_dir)
    board = get_board(project["board"])
    opts = project["options"]
    opt = opt or opts["opt"]
    stack = opts["stack_bytes"]
    emulator_memory = opts.get("emulator_memory", "board")  # (projects generated before the option: the board's)
    memory = emulator_memory if runner == "emulator" else "board"
    check_fit_before(project, board, stack, memory)
    compiler = toolchain()
    for kind in ("device", "emulator"):  # the project's options are the one source of the stack and link sizes
        script = proj_dir / "linker" / f"{kind}.ld"
        text = linker_script(board, kind, stack, *link_sizes(board, kind, emulator_memory))
        if not script.is_file() or script.read_text() != text:
            script.write_text(text)
    make = ["make", "-C", str(proj_dir), f"RUNNER={runner}", f"PROFILE={int(profile)}", f"OPT=-{opt}"]
    build = proj_dir / "build" / (runner + ("-profile" if profile else ""))
    proc = _run(make + ["-j2"], "firmware build", timeout_sec)
    if proc.returncode != 0:
        text = proc.stderr + proc.stdout
        if "overflowed by" in text or "will not fit in region" in text:
            _raise_overflow(proj_dir, board, runner, make, build, stack, timeout_sec, memory)
        raise ProjectError(f"firmware build in {proj_dir} failed: {_first_error(text)}")
    elf = build / "firmware.elf"
    return _measure(elf, board, runner, profile, stack, compiler, opt, memory)


def _measure(elf: Path, board: Board, runner: str, profile: bool, stack: int, compiler: str,
             opt: str, memory: str = "board") -> FirmwareBuild:
    sizes = section_sizes(elf)
    sram = sum(sizes.get(s, 0) for s in RAM_SECTIONS)
    flash = sum(sizes.get(s, 0) for s in FLASH_SECTIONS)
    arena = symbol_size(elf, ARENA_SYMBOL)
    return FirmwareBuild(board.key, runner, profile, elf, flash, sram, arena, sizes.get(".stack", stack),
                         sizes.get(".data", 0) + sizes.get(".bss", 0) - arena, sizes, compiler, opt, memory)


def _raise_overflow(proj_dir: Path, board: Board, runner: str, make: list[str], build: Path, stack: int,
                    timeout_sec: float, memory: str = "board") -> None:
    """Link again against an oversized script, then report exactly what the firmware needs."""
    script = proj_dir / "linker" / "measure.ld"
    script.write_text(linker_script(board, runner, stack, MEASURE_BYTES, MEASURE_BYTES))
    try:
        proc = _run(make + ["LDSCRIPT=linker/measure.ld", "-B", str(build.relative_to(proj_dir) / "firmware.elf")],
                    "measuring link", timeout_sec)
        if proc.returncode != 0:
            raise ProjectError(f"firmware does not fit {board.key}, and the measuring link failed: "
                               f"{_first_error(proc.stderr + proc.stdout)}")
        m = _measure(build / "firmware.elf", board, runner, False, stack, "", "")
    finally:
        script.unlink(missing_ok=True)
        (build / "firmware.elf").unlink(missing_ok=True)
    where, flash_cap, sram_cap = link_memory(board, memory)
    if m.sram_bytes > sram_cap:
        raise FitError(f"SRAM: needs {_fmt(m.sram_bytes)} (arena {m.arena_bytes:,} + stack {m.stack_bytes:,} + "
                       f"data/bss {m.data_bss_bytes:,}), {where} has {_fmt(sram_cap)}")
    raise FitError(f"Flash: needs {_fmt(m.flash_bytes)} (code, weights and constants), {where} has "
                   f"{_fmt(flash_cap)}", flash_over=m.flash_bytes - flash_cap)
