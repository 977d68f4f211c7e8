"""The network's own activations at a kernel's call: what the tuning harness feeds the kernel.

Some kernels' instruction counts depend on their data (a depthwise layer's or a residual add's, by a few per cent),
so a harness on random bytes can rank two candidates the other way round from the network. The network's host
program (the export's ``model.c`` and ``main.c``, gcc) runs on its board project's input with
``TVMP_KERNEL_BEGIN`` defined to write the arena to a file before the calls asked for; each kernel's activation
inputs are then cut out of its first call's snapshot at their planned offsets (``ArenaPlan.tensor_offsets``).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from microtvm_projects.generate import run_checked
from tvm_patch.export.lower import Program
from tvm_patch.tune.harness import input_tensors

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


def call_inputs(prog: Program, offsets: dict[int, int], export_dir: Path, network_input: list[bytes],
                kernels: list[str], timeout_sec: float) -> dict[str, list[bytes]]:
    """Per kernel of ``kernels`` (its first call in ``prog``), the bytes of its activation inputs as the network's
    host program (in ``export_dir``) computes them from ``network_input``; a kernel with an input outside the arena
    (``offsets``: the arena plan's) is left out (its harness keeps seeded inputs)."""
    first: dict[str, int] = {}
    for k, call in enumerate(prog.calls):
        first.setdefault(call.func, k)
    wanted = {n: first[n] for n in kernels
              if n in first and all(t in offsets for t in input_tensors(prog.calls[first[n]]))}
    if not wanted:
        return {}
    with tempfile.TemporaryDirectory(prefix="tvmp_tap_") as tmp:
        work = Path(tmp)
        (work / "tvmp_tap.h").write_text(_TAP_HEADER)
        exe = work / "tap"
        run_checked(["gcc", "-O1", "-std=c99", "-fno-strict-aliasing", "-I", str(export_dir), "-include",
                     str(work / "tvmp_tap.h"), "-o", str(exe), str(export_dir / "model.c"), str(export_dir / "main.c"),
                     "-lm"], "compiling the network's host program to read its activations", timeout_sec)
        ins = []
        for i, data in enumerate(network_input):
            ins.append(work / f"input{i}.bin")
            ins[-1].write_bytes(data)
        outs = [work / f"output{i}.bin" for i in range(len(prog.outputs))]
        env = dict(os.environ, TVMP_TAP_CALLS="," + ",".join(str(k) for k in sorted(set(wanted.values()))) + ",")
        run_checked([str(exe), *map(str, ins), *map(str, outs)], "the network's host program", timeout_sec, work, env)
        taken: dict[str, list[bytes]] = {}
        for name, k in wanted.items():
            arena = (work / f"tap{k}.bin").read_bytes()
            taken[name] = [arena[offsets[t]:offsets[t] + prog.tensors[t].nbytes] for t in input_tensors(prog.calls[k])]
    return taken
