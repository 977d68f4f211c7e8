"""The network's own activations at a kernel's call: what the tuning harness feeds the kernel.

Some kernels' instruction counts depend on their data (a depthwise layer's or a residual add's, by a few per cent),
so a harness on random bytes can rank two candidates the other way round from the network. The network's host
program (the export's ``model.c`` and ``main.c``, gcc) runs on its board project's input with
``TVMP_KERNEL_BEGIN`` defined to write the arena to a file before the calls asked for; each kernel's activation
inputs are then cut out of its first call's snapshot at their planned offsets (``ArenaPlan.tensor_offsets``).
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

from tvm_patch.errors import TvmPatchError
from tvm_patch.export.lower import Program

__all__ = ["call_inputs"]

# Included before model.c: its driver then snapshots the arena before each call the environment names.
_TAP_HEADER = r"""#include <stdio.h>
#include <stdlib.h>
#include <string.h>
static void tvmp_tap(int index, const void *arena, size_t n) {
    const char *want = getenv("TVMP_TAP_CALLS");
    char key[32], path[64];
    snprintf(key, sizeof key, ",%d,", index);
    if (want == NULL || strstr(want, key) == NULL) return;
    snprintf(path, sizeof path, "tap%d.bin", index);
    FILE *f = fopen(path, "wb");
    if (f == NULL || fwrite(arena, 1, n, f) != n || fclose(f) != 0) { perror(path); exit(3); }
}
#define TVMP_KERNEL_BEGIN(index) tvmp_tap((index), tvmp_arena, sizeof tvmp_arena)
#define TVMP_KERNEL_END(index, name)
"""


def _input_tensors(prog: Program, call_index: int) -> list[int]:
    """The activation tensors a call reads, in the order ``harness.kernel_program`` makes them its inputs."""
    call = prog.calls[call_index]
    seen: list[int] = []
    for a in call.args[:len(call.args) - call.n_outputs]:
        if a.kind == "tensor" and a.index not in seen:
            seen.append(a.index)
    return seen


def call_inputs(prog: Program, offsets: dict[int, int], export_dir: Path, network_input: list[bytes],
                kernels: list[str], timeout_sec: float) -> dict[str, list[bytes]]:
    """Per kernel of ``kernels`` (its first call in ``prog``), the bytes of its activation inputs as the network's
    host program (in ``export_dir``) computes them from ``network_input``; a kernel with an input outside the arena
    (``offsets``: the arena plan's) is left out (its harness keeps seeded inputs)."""
    first: dict[str, int] = {}
    for k, call in enumerate(prog.calls):
        first.setdefault(call.func, k)
    wanted = {n: first[n] for n in kernels
              if n in first and all(t in offsets for t in _input_tensors(prog, first[n]))}
    if not wanted:
        return {}
    with tempfile.TemporaryDirectory(prefix="tvmp_tap_") as tmp:
        work = Path(tmp)
        (work / "tvmp_tap.h").write_text(_TAP_HEADER)
        exe = work / "tap"
        _run(["gcc", "-O1", "-std=c99", "-fno-strict-aliasing", "-I", str(export_dir), "-include",
              str(work / "tvmp_tap.h"), "-o", str(exe), str(export_dir / "model.c"), str(export_dir / "main.c"), "-lm"],
             work, timeout_sec, "compiling the network's host program to read its activations")
        ins = []
        for i, data in enumerate(network_input):
            ins.append(work / f"input{i}.bin")
            ins[-1].write_bytes(data)
        outs = [work / f"output{i}.bin" for i in range(len(prog.outputs))]
        env = dict(os.environ, TVMP_TAP_CALLS="," + ",".join(str(k) for k in sorted(set(wanted.values()))) + ",")
        _run([str(exe), *map(str, ins), *map(str, outs)], work, timeout_sec, "the network's host program", env)
        taken: dict[str, list[bytes]] = {}
        for name, k in wanted.items():
            arena = (work / f"tap{k}.bin").read_bytes()
            taken[name] = [arena[offsets[t]:offsets[t] + prog.tensors[t].nbytes] for t in _input_tensors(prog, k)]
    return taken


def _run(cmd: list[str], cwd: Path, timeout_sec: float, what: str, env: dict[str, str] | None = None) -> None:
    try:
        p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout_sec, env=env)
    except subprocess.TimeoutExpired:
        raise TvmPatchError(f"{what}: no result within {timeout_sec:.0f} s") from None
    if p.returncode != 0:
        last = (p.stderr or p.stdout).strip().splitlines()
        raise TvmPatchError(f"{what} failed (exit {p.returncode}): {last[-1] if last else 'no message'}")
