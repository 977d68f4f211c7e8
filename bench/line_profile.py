"""Where one kernel's instructions go, line by line and loop nest by loop nest, on the emulator.

`--profile` counts each kernel call; inside one long kernel (the patch stage: every layer's loop nest in one C
function) it says nothing. This runs a project's firmware once more on QEMU with `-d in_asm,exec,nochain`: every
translation of a block is logged with its instructions and every execution of one once (no chaining), so the
instructions executed at each address are exact (`_Replay`: which translation ran, and executions QEMU stopped; a
kernel's total equals its `--profile` count). `arm-none-eabi-addr2line -i` maps each address to its outermost
inlined frame: a line of the kernel's own C (what a micro-kernel inlined there executes counts on the calling line).
A function the compiler left out of line counts on the calling line too: the trace is replayed with a shadow call
stack (pushed after a block ending in BL or BLX, popped when a block starts at the return address), and what runs
under a call made from the kernel's line is that line's.
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
from dataclasses import dataclass
from pathlib import Path

from microtvm_projects.api import ProjectAPI
from microtvm_projects.boards import Board, get_board
from microtvm_projects.emulator import qemu_command
from microtvm_projects.errors import ProjectError

BARRIER = "tvmp_barrier();"
TIMEOUT_SEC = 1800
_IN_ASM = re.compile(r"0x([0-9a-f]+):")
_INSN = re.compile(r"0x[0-9a-f]+:\s+((?:[0-9a-f]{4} )+)\s*(\S+)")  # the halfwords and the mnemonic
_EXEC = re.compile(r"Trace \d+: (\S+) \[[0-9a-f]+/([0-9a-f]+)/")
_REWOUND = re.compile(r"cpu_io_recompile: rewound execution of TB to ([0-9a-f]+)")
_STOPPED = re.compile(r"Stopped execution of TB chain before (\S+) ")
_CALLS = ("bl", "blx")


@dataclass
class Execution:
    """One run's instructions: at each address, and under each stack of call sites (outermost first: the addresses
    of the BL / BLX instructions whose calls had not returned when they ran)."""

    counts: collections.Counter[int]
    under: collections.Counter[tuple[int, ...]]


def _fail(message: str) -> None:
    """One line on stderr and exit status 2 (bad input: what is wrong, where, what to do)."""
    print(f"line_profile: {message}", file=sys.stderr)
    raise SystemExit(2)


class _Replay:
    """The trace of a `-d in_asm,exec,nochain` log replayed: instructions per address and under each call stack.

    QEMU may hold several translations of one guest address at once (under -icount, a shorter one where the
    instruction budget ends inside a block, one cut at an I/O access), so an execution is told by its translation's
    host address, which the trace prints: a translation is logged (IN:) just before its first execution, whose trace
    line gives that host address. An execution stopped before its first instruction (the budget spent: QEMU says so,
    then runs the block again) counts none; a rewound one (stopped at an I/O access, translated again from there) its
    instructions before the access. The call stack: pushed after a block ending in BL or BLX, popped when a block
    starts at the return address."""

    def __init__(self) -> None:
        self.shapes: dict[str, tuple[list[int], int | None]] = {}  # host address -> (guest addresses, return addr.)
        self.pending: tuple[list[int], int | None] | None = None  # the block just logged, not yet executed
        self.runs: collections.Counter[str] = collections.Counter()
        self.partial: collections.Counter[int] = collections.Counter()  # rewound executions: address -> runs
        self.under: collections.Counter[tuple[int, ...]] = collections.Counter()
        self.stack: list[tuple[int, int]] = []  # (call site, return address), outermost first
        self.last: tuple[str, tuple[int, ...]] | None = None  # the last block run, and the call sites it ran under

    def block(self, addrs: list[int], insn: re.Match | None) -> None:
        """A translation logged: its instructions' addresses and (``insn``) its last instruction."""
        ret = addrs[-1] + 2 * len(insn.group(1).split()) if insn is not None and insn.group(2) in _CALLS else None
        self.pending = (addrs, ret)

    def executed(self, host: str, pc: int) -> None:
        """A trace line: the translation at ``host`` (guest address ``pc``) ran."""
        if self.pending is not None and self.pending[0][0] == pc:
            self.shapes[host], self.pending = self.pending, None
        block, ret = self.shapes.get(host, ([], None))
        if self.stack and self.stack[-1][1] == pc:
            self.stack.pop()
        sites = tuple(site for site, _ in self.stack)
        self.runs[host] += 1
        if sites:
            self.under[sites] += len(block)
        self.last = (host, sites)
        if ret is not None:
            self.stack.append((block[-1], ret))

    def cut(self, host: str | None, stop: int | None) -> None:
        """The last execution stopped: before its first instruction (``stop`` None, if it was ``host``'s) or
        before the instruction at ``stop``."""
        if self.last is None or (host is not None and self.last[0] != host):
            return
        (run, sites), self.last = self.last, None
        block, ret = self.shapes.get(run, ([], None))
        done = [] if stop is None else [a for a in block if a < stop]
        self.runs[run] -= 1
        self.partial.update(done)
        if sites:
            self.under[sites] -= len(block) - len(done)
        if ret is not None and self.stack and self.stack[-1][0] == block[-1]:
            self.stack.pop()  # its call was not made

    def result(self) -> Execution:
        counts: collections.Counter[int] = collections.Counter(self.partial)
        for host, n in self.runs.items():
            for addr in self.shapes.get(host, ([], None))[0]:
                counts[addr] += n
        return Execution(counts, self.under)


def execution(elf: Path, board: Board, timeout_sec: float = TIMEOUT_SEC) -> Execution:
    """Instructions executed at each address, and under each stack of call sites, in one run of ``elf`` on
    ``board``'s emulator (`_Replay`)."""
    with tempfile.TemporaryDirectory(prefix="tvmp_lines_") as tmp:
        log = Path(tmp) / "exec.log"
        cmd = qemu_command(board, elf, 7) + ["-d", "in_asm,exec,nochain", "-D", str(log)]
        try:
            proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout_sec)
        except subprocess.TimeoutExpired:
            _fail(f"{elf}: QEMU did not finish in {timeout_sec:.0f} s")
        if proc.returncode != 0:
            _fail(f"{elf}: the firmware exited with {proc.returncode}")
        replay = _Replay()
        current: list[int] | None = None
        insn = None
        with open(log, errors="replace") as f:
            for line in f:
                if line.startswith("IN:"):
                    current = []
                    continue
                if current is not None:
                    m = _IN_ASM.match(line)
                    if m:
                        current.append(int(m.group(1), 16))
                        insn = _INSN.match(line)
                        continue
                    if current:
                        replay.block(current, insn)
                    current = None
                if m := _EXEC.match(line):
                    replay.executed(m.group(1), int(m.group(2), 16))
                elif m := _STOPPED.match(line):
                    replay.cut(m.group(1), None)
                elif m := _REWOUND.match(line):
                    replay.cut(None, int(m.group(1), 16))
    return replay.result()


def line_counts(elf: Path, run: Execution, function: str) -> dict[int, int]:
    """Instructions executed per source line of ``function``: its own lines (the outermost inlined frame), and at
    each line that calls out of line, what ran under that call (the innermost call site of ``function`` on the
    stack)."""
    counts = run.counts
    addrs = sorted(set(counts) | {site for stack in run.under for site in stack})
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
    own: dict[int, int] = {}  # an address of `function` -> its line
    for a, f in frames.items():
        name, where = f[-2], f[-1]  # the outermost frame: (function, file:line)
        m = re.search(r":(\d+)", where)
        if name == function and m:
            own[a] = int(m.group(1))
    lines: collections.Counter[int] = collections.Counter()
    for a, ln in own.items():
        lines[ln] += counts.get(a, 0)
    for stack, n in run.under.items():
        site = next((s for s in reversed(stack) if s in own), None)  # the call `function` made
        if site is not None:
            lines[own[site]] += n
    return {ln: n for ln, n in lines.items() if n}


def nests(source: list[str], function: str) -> list[tuple[int, int]]:
    """[first, last) line numbers (1-based) of ``function``'s loop nests in ``source``: split at its barriers."""
    start = next(i for i, s in enumerate(source) if re.match(rf"\w.*\b{re.escape(function)}\(", s) and "{" in s)
    end = next(i for i in range(start, len(source)) if source[i] == "}")
    cuts = [i + 1 for i in range(start, end) if BARRIER in source[i]]
    edges = [start + 1, *(c + 1 for c in cuts), end + 2]
    return list(zip(edges, edges[1:]))


def profile(project: Path, function: str) -> dict:
    """Per nest of ``function`` in ``project``'s firmware (its emulator profile build, made first where missing or
    older than its C, a ``model.c`` edited by hand included): its lines, the instructions executed on them, the
    micro-kernels it calls and the buffers it writes."""
    try:  # `make`: nothing to do when the ELF is newer than its sources, so lines and counts never disagree
        elf = ProjectAPI(project).build({"runner": "emulator", "profile": True}).elf
    except ProjectError as e:
        _fail(e.one_line())
    board = get_board(json.loads((project / "tvmp_project.json").read_text())["board"])
    source = (project / "model" / "model.c").read_text().splitlines()
    per_line = line_counts(elf, execution(elf, board), function)
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
