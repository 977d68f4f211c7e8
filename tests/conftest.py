"""Shared test fixtures and helpers: paths to the real models and fixtures, Relax binding walkers, a TE runner.

Test modules import the helpers with ``from conftest import ...`` (pytest puts ``tests/`` on ``sys.path``)."""

from __future__ import annotations

import glob
from pathlib import Path

import numpy as np
import pytest
import tvm
from tvm import te

from tvm_patch.errors import TvmPatchError
from tvm_patch.paths import shared_models_dir

MLPERF = ["vww_96_int8", "resnet8_int8", "kws_int8"]
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "tflite"
LLVM = {"kind": "llvm"}


@pytest.fixture(scope="session")
def shared_models() -> Path:
    return shared_models_dir()


@pytest.fixture(scope="session")
def mlperf_paths(shared_models) -> dict[str, Path]:
    return {name: shared_models / "mlperf_tiny" / f"{name}.tflite" for name in MLPERF}


def bindings(mod: tvm.IRModule, name: str = "main") -> list:
    """Every binding of function `name`, in order."""
    return [b for blk in mod[name].body.blocks for b in blk.bindings]


def compile_te(fn, shapes_dtypes):
    """Compile ``fn(*placeholders)`` (a TE compute) for the host; returns run(*arrays) -> numpy output."""
    phs = [te.placeholder(s, d, name=f"in{i}") for i, (s, d) in enumerate(shapes_dtypes)]
    out = fn(*phs)
    f = tvm.compile(te.create_prim_func([*phs, out]), target=tvm.target.Target(LLVM))

    def run(*arrays):
        o = tvm.runtime.empty([int(d) for d in out.shape], str(out.dtype))
        f(*[tvm.runtime.tensor(np.ascontiguousarray(a)) for a in arrays], o)
        return o.numpy()

    return run


def mlperf_tflite_files() -> list[str]:
    """The MLPerf Tiny .tflite models of the shared folder; [] when it is missing (their tests then skip)."""
    try:
        return sorted(glob.glob(str(shared_models_dir() / "mlperf_tiny" / "*.tflite")))
    except TvmPatchError:
        return []
