"""Shared test fixtures: paths to the real models and small hand-made ONNX graphs."""

from __future__ import annotations

from pathlib import Path

import pytest

from tvm_patch.paths import shared_models_dir

MLPERF = ["vww_96_int8", "resnet8_int8", "kws_int8"]


@pytest.fixture(scope="session")
def shared_models() -> Path:
    return shared_models_dir()


@pytest.fixture(scope="session")
def mlperf_paths(shared_models) -> dict[str, Path]:
    return {name: shared_models / "mlperf_tiny" / f"{name}.tflite" for name in MLPERF}
