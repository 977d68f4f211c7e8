"""meta_schedule's builder for tvm-patch candidates: a scheduled kernel -> its harness export directory.

The candidate's annotations (space.py) say which kernel and which blocking; the harness export is written
with the export's own functions, so the candidate measured is the code ``build --tuning-db`` emits. A
candidate that does not lower or emit is a failed build (its one-line reason), never a stopped session.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from pathlib import Path

from tvm.ir.utils import derived_object
from tvm.s_tir.meta_schedule.builder import BuilderInput, BuilderResult, PyBuilder

from tvm_patch.tune.harness import KernelHarness
from tvm_patch.tune.space import candidate_choice

__all__ = ["HarnessBuilder", "first_line"]


def first_line(e: BaseException) -> str:
    """``Type: first line of the message`` (TVM appends frames after it)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return f"{type(e).__name__}: {lines[0] if lines else ''}"


@derived_object
class HarnessBuilder(PyBuilder):
    """Writes each candidate's harness export under ``work_dir`` (one temporary directory per candidate)."""

    def __init__(self, kernels: Mapping[str, KernelHarness], work_dir: str | Path) -> None:
        super().__init__()
        self.kernels = dict(kernels)
        self.work_dir = Path(work_dir)

    def build(self, build_inputs: list[BuilderInput]) -> list[BuilderResult]:
        results = []
        for bi in build_inputs:
            try:
                choice = candidate_choice(bi.mod)
                if choice is None or choice[0] not in self.kernels:
                    raise ValueError("the candidate carries no tvm-patch kernel annotation")
                name, chosen = choice
                prefix = (f"rows{chosen.rows}_{'packed' if chosen.packed else 'unpacked'}"
                          f"{'_unrolled' if chosen.unrolled else ''}"
                          f"{'_outlined' + '-'.join(map(str, chosen.outlined)) if chosen.outlined else ''}"
                          f"{'_peeled' if chosen.peeled else ''}"
                          f"{'' if chosen.paired_down is None else '_down' if chosen.paired_down else '_alone'}_")
                cand = Path(tempfile.mkdtemp(prefix=prefix, dir=self.work_dir))
                self.kernels[name].export(chosen, cand / "export")
                results.append(BuilderResult(str(cand / "export"), None))
            except Exception as e:  # any failure of one candidate is that candidate's build error
                results.append(BuilderResult(None, first_line(e)))
        return results
