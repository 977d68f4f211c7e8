"""The features meta_schedule's XGBoost cost model learns from: TVM's per-store features of each candidate, and for
a candidate whose loop nest TVM's feature extraction rejects, one row of its knobs' decisions.

A patch stage is such a kernel: its loop nest (patch/cache_stage.py) has loops whose extents depend on enclosing
loop variables, and TVM 0.27's extraction stops on it ("Trying to update var 'ax0' with a different maximum
value") for the whole batch, or on some stages (resnet8's and vww's 4x4 recompute stages) divides by zero and kills
the process (SIGFPE, no exception to catch): a stage's candidates are never given to it. The stage's space is its
unrolling, its patch loops peeled or not and, per layer nest, whether that nest is outlined (tune/space.py): the row
holds those decisions (unrolled, peeled, then one column per nest), so the model learns what each
nest's outlining is worth (nearly additive, measured: docs/tuning.md) and the search ranks untried combinations.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm.ir.utils import derived_object
from tvm.s_tir.meta_schedule.feature_extractor import PerStoreFeature, PyFeatureExtractor

from tvm_patch.tir_util import is_patch_stage
from tvm_patch.tune.space import candidate_choice

__all__ = ["TolerantFeatures", "decision_row"]


def decision_row(mod: tvm.IRModule, length: int) -> np.ndarray:
    """One feature row of ``length`` for a candidate TVM cannot extract: its unrolling (column 0), its patch loops
    peeled (column 1), its odd last columns paired down (column 2) and each layer nest outlined (column 3 + nest),
    zeros elsewhere (no annotation: all zeros)."""
    row = np.zeros((1, length), "float32")
    found = candidate_choice(mod)
    if found is not None:
        choice = found[1]
        row[0, 0] = float(choice.unrolled)
        row[0, 1] = float(choice.peeled)
        row[0, 2] = float(bool(choice.paired_down))
        for n in choice.outlined:
            if 3 + n < length:
                row[0, 3 + n] = 1.0
    return row


@derived_object
class TolerantFeatures(PyFeatureExtractor):
    """``PerStoreFeature`` candidate by candidate; for a patch stage, or where it fails, the candidate's decisions
    (``decision_row``)."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = PerStoreFeature()

    def extract_from(self, context, candidates):  # meta_schedule's signature
        out = []
        for cand in candidates:
            mod = cand.sch.mod
            if not is_patch_stage(mod["main"]):
                try:
                    out.extend(self.inner.extract_from(context, [cand]))
                    continue
                except RuntimeError:  # TVM's errors are RuntimeErrors
                    pass
            out.append(tvm.runtime.tensor(decision_row(mod, self.inner.feature_vector_length)))
        return out
