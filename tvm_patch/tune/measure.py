"""Measure one harness export (harness.py) on a board's emulator, the board itself, or the host CPU.

The harness becomes a board project (``microtvm_projects``: seeded input in Flash, the host build's output
as the expected one). Its host output must equal the reference (the kernel unblocked, as TVM scheduled it):
else the candidate computes something else and fails. Then:

* ``emulator``: the profile firmware on QEMU, the kernel's exact instruction count (its ``KERNEL`` line),
  outputs checked bit for bit against the host build;
* ``device``: the same firmware flashed on the board, DWT cycles;
* ``host``: a timing main around ``tvmp_run`` (gcc -O2, best of 5 repetitions of a loop), seconds per call
  including the harness's input and output copies; a quick check, not a Cortex-M figure.

Every failure is a ``CandidateError`` (one line); every process has a timeout (``run_checked``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from microtvm_projects.api import ProjectAPI
from microtvm_projects.errors import ProjectError
from microtvm_projects.generate import run_checked

from tvm_patch.errors import TvmPatchError

__all__ = ["RUNNERS", "CandidateError", "Measurement", "measure_export"]

RUNNERS = ("emulator", "host", "device", "rpc")
SEED = 0
HOST_REPEATS = 5


class CandidateError(TvmPatchError):
    """A candidate that failed (build error, timeout, wrong output): logged and skipped by the session."""


@dataclass
class Measurement:
    """A candidate's cost in ``unit`` ("instructions", "cycles" or "seconds"), and the host build's outputs."""

    cost: float
    unit: str
    outputs: list[bytes]

    def to_json(self) -> dict:
        return dict(asdict(self), outputs=[o.hex() for o in self.outputs])


_TIMING_MAIN = r"""/* tvm-patch tune: times tvmp_run on the harness input, writes its outputs. */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include "tvmp_io.h"
#include "tvmp_model.h"
int main(int argc, char **argv) {
    long loops = argc > 1 ? atol(argv[1]) : 1;
    double best = 1e30;
    for (int r = 0; r < %(repeats)d; r++) {
        struct timespec a, b;
        clock_gettime(CLOCK_MONOTONIC, &a);
        for (long i = 0; i < loops; i++) TVMP_RUN_CALL;
        clock_gettime(CLOCK_MONOTONIC, &b);
        double t = (double)(b.tv_sec - a.tv_sec) + 1e-9 * (double)(b.tv_nsec - a.tv_nsec);
        if (t < best) best = t;
    }
    printf("%%.9e\n", best / (double)loops);
%(writes)s    return 0;
}
"""


def measure_export(export_dir: str | Path, work_dir: str | Path, board: str, runner: str,
                   reference: list[bytes] | None, timeout_sec: float = 120.0, port: str | None = None,
                   probe: str | None = None) -> Measurement:
    """Measure the harness in ``export_dir`` (project written under ``work_dir``); ``reference``: the
    outputs the candidate must give on the seeded input (None: this is the reference)."""
    project = Path(work_dir) / "project"
    api = ProjectAPI()
    try:
        api.generate_project(export_dir, project, {"board": board, "seed": SEED})
        outputs = api.expected_outputs()
        if reference is not None and outputs != reference:
            raise CandidateError("wrong output: the candidate's host build differs from the unblocked kernel's")
        if runner == "host":
            return Measurement(_host_seconds(project, len(outputs), reference or outputs, timeout_sec), "seconds",
                               outputs)
        api.build({"runner": runner, "profile": True, "timeout_sec": timeout_sec})
        rep = api.run({"runner": runner, "profile": True, "timeout_sec": timeout_sec, "port": port, "probe": probe})
    except ProjectError as e:
        raise CandidateError(e.one_line()) from None
    if not rep.bit_exact:
        raise CandidateError(f"wrong output on the {runner}: outputs {rep.mismatched_outputs} differ from the host build")
    unit = "instructions" if rep.instructions is not None else "cycles"
    return Measurement(float(sum(k[unit] for k in rep.kernels)), unit, outputs)


def _host_seconds(project: Path, n_outputs: int, want: list[bytes], timeout_sec: float) -> float:
    """Seconds per ``tvmp_run`` of the project's model on the host; its outputs checked against ``want``."""
    writes = "".join(f'    {{ FILE *f = fopen(argv[{2 + i}], "wb"); fwrite(tvmp_output{i}, 1, sizeof tvmp_output{i}, f); '
                     f"fclose(f); }}\n" for i in range(n_outputs))
    src = project / "tune_host.c"
    src.write_text(_TIMING_MAIN % {"repeats": HOST_REPEATS, "writes": writes})
    exe = project / "tune_host"
    run_checked(["gcc", "-O2", "-std=gnu99", "-fno-strict-aliasing", f"-I{project / 'model'}", f"-I{project / 'io'}",
          "-o", str(exe), str(src), str(project / "io" / "tvmp_io.c"), str(project / "model" / "model.c"), "-lm"],
         "host build", timeout_sec)
    outs = [project / f"host_output{i}.bin" for i in range(n_outputs)]
    loops = 1
    while True:
        proc = run_checked([str(exe), str(loops), *map(str, outs)], "host run", timeout_sec)
        seconds = float(proc.stdout.split()[0])
        if seconds * loops * HOST_REPEATS > 0.05 or loops >= 1 << 20:
            break
        loops *= 8
    if [p.read_bytes() for p in outs] != want:
        raise CandidateError("wrong output on the host")
    return seconds

