"""A firmware's SRAM and Flash from an export, before any firmware is built.

SRAM, exactly as microtvm_projects.firmware measures a linked firmware (.data + .bss + .stack): the linker
places the output buffers of ``io/tvmp_io.c`` (each 16-byte aligned) and then the 16-byte aligned arena of
``model.c`` in .bss (link order: the firmware's own sources, which keep nothing in .data/.bss outside the
profile build, then io, then the model), ends .bss on 4 bytes, and the .stack section starts on 8 bytes.
Flash: ``model.c`` compiled to an object with the board's flags (its code, weights and constants, laid out
with their alignments), the input (16-byte aligned, in Flash), the library functions the model calls that
the firmware does not already hold (sizes from the libraries themselves), plus the firmware's own code,
measured once per board, runner and optimisation level from a one-layer firmware and cached.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any

from microtvm_projects.boards import Board
from microtvm_projects.generate import TEMPLATE, io_sources

from tvm_patch.atomic import write_atomic
from tvm_patch.errors import TvmPatchError
from tvm_patch.paths import cache_dir

ALIGN = 16  # the alignment of the output buffers and of the arena (microtvm_projects/generate.py, the export)


def _up(n: int, a: int) -> int:
    return (n + a - 1) // a * a


def sram_bytes(arena_bytes: int, output_bytes: list[int], stack_bytes: int = 8192) -> int:
    """The firmware's SRAM (.data + .bss + .stack as linked) for an arena and the network's outputs."""
    end = 0
    for n in output_bytes:
        end = _up(end, ALIGN) + n
    end = _up(_up(end, ALIGN) + arena_bytes, 4)  # .bss ends on 4 bytes
    stack = _up(end, 8) - end + _up(stack_bytes, 8)  # .stack: ALIGN(8) inside the section, then the stack
    return end + stack


def object_flash_bytes(sections: list[tuple[str, int, int]]) -> int:
    """The Flash an object's (name, size, alignment) sections take once linked: its code, read-only data and
    initialised data, each output section laid out in file order with every input section aligned."""
    total = 0
    for kind in (".text", ".rodata", ".data"):
        end = 0
        for name, size, align in sections:
            if size and (name == kind or name.startswith(kind + ".")):
                end = _up(end, align) + size
        total += end
    return total


def object_sections(obj: Path) -> list[tuple[str, int, int]]:
    """(name, size, alignment) of every section of an object file (``arm-none-eabi-objdump -h``)."""
    out = subprocess.run(["arm-none-eabi-objdump", "-h", str(obj)], capture_output=True, text=True, timeout=120).stdout
    found = []
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 7 and parts[0].isdigit() and parts[-1].startswith("2**"):
            found.append((parts[1], int(parts[2], 16), 2 ** int(parts[-1][3:])))
    return found


def _compile(src: Path, obj: Path, board: Board, opt: str, includes: list[Path], extra: list[str],
             timeout_sec: float) -> None:
    cmd = ["arm-none-eabi-gcc", *board.cpu_flags, f"-{opt}", "-std=c99", "-ffunction-sections", "-fdata-sections",
           "-fno-strict-aliasing", *[f"-I{p}" for p in includes], f"-DTVMP_BOARD_KEY=\"{board.key}\"",
           f"-DTVMP_MODEL_ID=\"{'0' * 16}\"", f"-DTVMP_OPT=\"{opt}\"", "-DTVMP_PROFILE=0", "-DTVMP_ICOUNT_SHIFT=7",
           *extra, "-c", "-o", str(obj), str(src)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_sec)
    except FileNotFoundError:
        raise TvmPatchError("arm-none-eabi-gcc not found; install gcc-arm-none-eabi (`make setup`)") from None
    except subprocess.TimeoutExpired:
        raise TvmPatchError(f"compiling {src.name} took more than {timeout_sec:.0f} s; stopped") from None
    if proc.returncode != 0:
        last = proc.stderr.strip().splitlines()
        raise TvmPatchError(f"compiling {src.name} for {board.key} failed: {last[-1] if last else 'no message'}")


NETWORK_OBJECTS = ("/model.o", "/tvmp_io.o", "/firmware.o")  # the objects compile_objects compiles, as linked


def compile_objects(export_dir: Path, export_json: dict[str, Any], board: Board, opt: str = "O3",
                    timeout_sec: float = 600.0) -> tuple[int, list[str]]:
    """The Flash of the firmware's network-dependent objects, compiled for ``board`` as the project's Makefile
    compiles them (``model.c``, the io source and ``firmware.c``, whose output printing the compiler
    specialises to the outputs' sizes), and the functions they call without defining."""
    with tempfile.TemporaryDirectory(prefix="tvmp_cost_") as tmp:
        work = Path(tmp)
        inputs = [bytes(io["bytes"]) for io in export_json["inputs"]]
        header, source = io_sources(export_json, inputs)
        (work / "tvmp_io.h").write_text(header)
        (work / "tvmp_io.c").write_text(source)
        incs = [TEMPLATE / "src", export_dir, work]
        total, undefined = 0, []
        for src, extra in ((export_dir / "model.c", ["-include", "tvmp_profile.h"]), (work / "tvmp_io.c", []),
                           (TEMPLATE / "src" / "firmware.c", [])):
            obj = work / (src.stem + ".o")
            _compile(src, obj, board, opt, incs, extra, timeout_sec)
            total += object_flash_bytes(object_sections(obj))
            undefined += undefined_symbols(obj)
        return total, undefined


LIBRARIES = ("libc_nano.a", "libm.a", "libgcc.a")  # what the firmware links (nano.specs, -lm, libgcc)


def _tool(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120).stdout
    except FileNotFoundError:
        raise TvmPatchError(f"{cmd[0]} not found; install gcc-arm-none-eabi (`make setup`)") from None
    except subprocess.TimeoutExpired:
        raise TvmPatchError(f"{cmd[0]} took more than 120 s; stopped") from None


def undefined_symbols(obj: Path) -> list[str]:
    """The functions an object calls but does not define (memcpy, libm's, libgcc's helpers)."""
    return [ln.split()[-1] for ln in _tool(["arm-none-eabi-nm", "-u", str(obj)]).splitlines() if ln.strip()]


def defined_symbols(elf: Path) -> list[str]:
    """Every symbol a linked firmware defines."""
    return [ln.split()[-1] for ln in _tool(["arm-none-eabi-nm", "--defined-only", str(elf)]).splitlines()
            if len(ln.split()) >= 3]


@lru_cache(maxsize=8)
def library_sizes(cpu_flags: tuple[str, ...]) -> dict[str, int]:
    """Function -> bytes in the C, math and gcc libraries the firmware links for these CPU flags."""
    sizes: dict[str, int] = {}
    for lib in LIBRARIES:
        path = _tool(["arm-none-eabi-gcc", *cpu_flags, "--specs=nano.specs", f"-print-file-name={lib}"]).strip()
        for line in _tool(["arm-none-eabi-nm", "-S", "--defined-only", path]).splitlines():
            parts = line.split()
            if len(parts) == 4 and parts[2] in "Tt":
                sizes.setdefault(parts[3], int(parts[1], 16))
    return sizes


def library_bytes(undefined: list[str], in_base: set[str], cpu_flags: tuple[str, ...]) -> int:
    """The library code the objects pull in beyond what the measured firmware base already holds."""
    sizes = library_sizes(cpu_flags)
    return sum(_up(sizes.get(name, 0), 4) for name in set(undefined) - in_base)


def linked_bytes(map_file: Path, objects: tuple[str, ...]) -> int:
    """The Flash a linked firmware gives the input sections (code, read-only and initialised data) of the objects
    whose paths end with one of ``objects``, from the linker's map: what the link kept of them, so a function the
    compiler also inlined into its one caller (its own copy unreferenced, dropped by --gc-sections) counts once."""
    text = map_file.read_text(errors="replace")
    start = text.find("Linker script and memory map")
    if start < 0:
        raise TvmPatchError(f"{map_file}: not a GNU ld map file (no memory map); rebuild the project")
    total = 0
    for m in re.finditer(r"^ (\.(?:text|rodata|data)\S*)\s+(0x[0-9a-f]+)\s+(0x[0-9a-f]+)\s+(\S+)$", text[start:], re.M):
        if int(m.group(2), 16) and m.group(4).endswith(objects):
            total += int(m.group(3), 16)
    return total


def template_hash() -> str:
    """A hash of the firmware template's sources (a firmware base measured from another template is stale)."""
    h = hashlib.sha256()
    for p in sorted((TEMPLATE / "src").iterdir()):
        h.update(p.name.encode() + p.read_bytes())
    return h.hexdigest()[:16]


def base_cache(board: Board, runner: str, opt: str) -> Path:
    """Where the firmware's own Flash bytes for this board, runner and level are cached."""
    # v2: the base less what the link kept of the network-dependent objects (v1 subtracted them as compiled)
    return cache_dir("cost") / f"firmware_base_v2_{board.key}_{runner}_{opt}_{template_hash()}.json"


def read_base(board: Board, runner: str, opt: str) -> tuple[int, set[str]] | None:
    """The cached firmware base (Flash bytes outside the model and its input, the symbols it defines), or None."""
    path = base_cache(board, runner, opt)
    try:
        data = json.loads(path.read_text())
        return int(data["flash_base_bytes"]), set(data["symbols"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_base(board: Board, runner: str, opt: str, built_flash: int, objects_flash: int,
               symbols: list[str]) -> tuple[int, set[str]]:
    """Record the firmware base from one built firmware: its Flash less the network-dependent objects (as linked:
    ``linked_bytes``)."""
    base = built_flash - objects_flash
    # whole-file: test workers (and parallel tuning sessions) read and write the same cache file
    write_atomic(base_cache(board, runner, opt), json.dumps({"flash_base_bytes": base, "board": board.key,
                                                             "runner": runner, "opt": opt,
                                                             "symbols": sorted(symbols)}) + "\n")
    return base, set(symbols)
