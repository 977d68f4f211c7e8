"""The features meta_schedule's XGBoost cost model learns from: TVM's per-store features of each candidate, and a
row of zeros for a candidate whose loop nest TVM's feature extraction rejects.

A patch stage is such a kernel: its loop nest (patch/cache_stage.py) has loops whose extents depend on enclosing
loop variables, and TVM 0.27's extraction stops on it ("Trying to update var 'ax0' with a different maximum
value") for the whole batch. The stage's space is its unrolling alone (two points), so its candidates need no
features: with zeros the model ranks them alike and the search measures both.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm.ir.utils import derived_object
from tvm.s_tir.meta_schedule.feature_extractor import PerStoreFeature, PyFeatureExtractor

__all__ = ["TolerantFeatures"]


@derived_object
class TolerantFeatures(PyFeatureExtractor):
    """``PerStoreFeature`` candidate by candidate; a single zero row where it fails."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = PerStoreFeature()

    def extract_from(self, context, candidates):  # meta_schedule's signature
        out = []
        for cand in candidates:
            try:
                out.extend(self.inner.extract_from(context, [cand]))
            except RuntimeError:  # TVM's errors are RuntimeErrors
                out.append(tvm.runtime.tensor(np.zeros((1, self.inner.feature_vector_length), "float32")))
        return out
