"""Where one kernel's instructions go, line by line and loop nest by loop nest, on the emulator.

`--profile` counts each kernel call; inside one long kernel (the patch stage: every layer's loop nest in one C
function) it says nothing. This runs a project's firmware once more on QEMU with `-d in_asm,exec,nochain`: every
translated block is logged once with its instructions and every execution of it once (no chaining), so the
instructions executed at each address are exact. `arm-none-eabi-addr2line -i` maps each address to its outermost
inlined frame: a line of the kernel's own C (what a micro-kernel inlined there executes counts on the calling line).
Loop nests are the runs of lines between the kernel's `tvmp_barrier();` statements (the patch stage puts one between
its layers' nests); a kernel without barriers is one nest.

    python -m bench.line_profile PROJECT_DIR [--function tvmp_patch_stage] [--lines FIRST-LAST] [--json]

The log is large (about 30 bytes per executed block: 0.4 GB for 13 M instructions); it goes to a temporary file.
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from microtvm_projects.boards import Board, get_board
from microtvm_projects.emulator import qemu_command

BARRIER = "tvmp_barrier();"
TIMEOUT_SEC = 1800
_IN_ASM = re.compile(r"0x([0-9a-f]+):")
_EXEC = re.compile(r"Trace \d+: \S+ \[[0-9a-f]+/([0-9a-f]+)/")


def _fail(message: str) -> None:
    """One line on stderr and exit status 2 (bad input: what is wrong, where, what to do)."""
    print(f"line_profile: {message}", file=sys.stderr)
    raise SystemExit(2)


def address_counts(elf: Path, board: Board, timeout_sec: float = TIMEOUT_SEC) -> collections.Counter[int]:
    """Instructions executed at each address in one run of ``elf`` on ``board``'s emulator."""
    with tempfile.TemporaryDirectory(prefix="tvmp_lines_") as tmp:
        log = Path(tmp) / "exec.log"
        cmd = qemu_command(board, elf, 7) + ["-d", "in_asm,exec,nochain", "-D", str(log)]
        try:
            proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout_sec)
        except subprocess.TimeoutExpired:
            _fail(f"{elf}: QEMU did not finish in {timeout_sec:.0f} s")
        if proc.returncode != 0:
            _fail(f"{elf}: the firmware exited with {proc.returncode}")
        blocks: dict[int, list[int]] = {}  # a block's first address -> its instructions' addresses
        runs: collections.Counter[int] = collections.Counter()
        current: list[int] | None = None
        with open(log, errors="replace") as f:
            for line in f:
                if line.startswith("IN:"):
                    current = []
                    continue
                if current is not None:
                    m = _IN_ASM.match(line)
                    if m:
                        current.append(int(m.group(1), 16))
                        continue
                    if current:
                        blocks[current[0]] = current
                    current = None
                m = _EXEC.match(line)
                if m:
                    runs[int(m.group(1), 16)] += 1
    counts: collections.Counter[int] = collections.Counter()
    for pc, n in runs.items():
        for addr in blocks.get(pc, ()):
            counts[addr] += n
    return counts


def line_counts(elf: Path, counts: dict[int, int], function: str) -> dict[int, int]:
    """Instructions executed per source line of ``function`` (its own lines: the outermost inlined frame)."""
    addrs = sorted(counts)
    out = subprocess.run(["arm-none-eabi-addr2line", "-e", str(elf), "-a", "-f", "-i", *map(hex, addrs)],
                         capture_output=True, text=True, check=True, timeout=600).stdout.splitlines()
    frames: dict[int, list[str]] = {}
    addr = None
    for text in out:
        if re.fullmatch(r"0x[0-9a-f]+", text):
            addr = int(text, 16)
            frames[addr] = []
        elif addr is not None:
            frames[addr].append(text)
    lines: collections.Counter[int] = collections.Counter()
    for a, f in frames.items():
        name, where = f[-2], f[-1]  # the outermost frame: (function, file:line)
        m = re.search(r":(\d+)", where)
        if name == function and m:
            lines[int(m.group(1))] += counts[a]
    return dict(lines)


def nests(source: list[str], function: str) -> list[tuple[int, int]]:
    """[first, last) line numbers (1-based) of ``function``'s loop nests in ``source``: split at its barriers."""
    start = next(i for i, s in enumerate(source) if re.match(rf"\w.*\b{re.escape(function)}\(", s) and "{" in s)
    end = next(i for i in range(start, len(source)) if source[i] == "}")
    cuts = [i + 1 for i in range(start, end) if BARRIER in source[i]]
    edges = [start + 1, *(c + 1 for c in cuts), end + 2]
    return list(zip(edges, edges[1:]))


def profile(project: Path, function: str) -> dict:
    """Per nest of ``function`` in ``project``'s firmware (the profile build's if there is one): its lines, the
    instructions executed on them, the micro-kernels it calls and the buffers it writes."""
    build = project / "build"
    elf = next((p for p in (build / "emulator-profile" / "firmware.elf", build / "emulator" / "firmware.elf")
                if p.is_file()), None)
    if elf is None:
        _fail(f"{project}: no emulator firmware; build it with `tvm-patch build MODEL --board B --run emulator -o "
              f"{project}`")
    project_json = json.loads((project / "tvmp_project.json").read_text())
    board = get_board(project_json["board"])
    source = (project / "model" / "model.c").read_text().splitlines()
    per_line = line_counts(elf, address_counts(elf, board), function)
    rows = []
    for first, last in nests(source, function):
        text = "\n".join(source[first - 1:last - 1])
        rows.append({"lines": [first, last], "instructions": sum(n for ln, n in per_line.items() if first <= ln < last),
                     "calls": sorted(set(re.findall(r"\b(tvmp_\w+)\(", text)) - {"tvmp_barrier"}),
                     "writes": sorted(set(re.findall(r"(\w+)\[[^\]]*\] = ", text)))})
    return {"function": function, "elf": str(elf), "instructions": sum(per_line.values()), "nests": rows,
            "lines": {str(ln): n for ln, n in sorted(per_line.items())}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.line_profile", description=__doc__.split("\n\n")[0])
    ap.add_argument("project", type=Path, help="a board project built for the emulator")
    ap.add_argument("--function", default="tvmp_patch_stage", help="the kernel (default: the patch stage)")
    ap.add_argument("--lines", metavar="FIRST-LAST", help="also each executed line of model.c in this range")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    span = re.fullmatch(r"(\d+)-(\d+)", args.lines or "0-0")
    if span is None:
        _fail(f"--lines {args.lines!r}: give two line numbers of model.c, as 794-902")
    out = profile(args.project, args.function)
    if args.json:
        print(json.dumps(out, indent=1))
        return 0
    print(f"{out['function']}: {out['instructions']:,} instructions ({out['elf']})")
    for row in out["nests"]:
        if row["instructions"]:
            print(f"  lines {row['lines'][0]}-{row['lines'][1] - 1}: {row['instructions']:>12,}  "
                  f"writes {', '.join(row['writes'][:4]) or '-'}; calls {', '.join(row['calls']) or '-'}")
    if args.lines:
        source = (args.project / "model" / "model.c").read_text().splitlines()
        first, last = int(span[1]), int(span[2])
        for ln, n in out["lines"].items():
            if first <= int(ln) <= last:
                print(f"  {int(ln):>6} {n:>12,}  {source[int(ln) - 1].strip()[:90]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
