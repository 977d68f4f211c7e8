"""On-disk cache of built zoo models, keyed so that a stale file is never read.

The key hashes the zoo's own source code, the numpy/onnx versions (weights come from numpy's RNG) and the
architecture spec (so an edited MCUNet JSON config rebuilds too). Writes are atomic: tmp file + os.replace.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

import numpy as np
import onnx

from tvm_patch import paths
from tvm_patch.atomic import write_atomic

ENV_VAR = "TVM_PATCH_CACHE"


def cache_dir() -> Path:
    """$TVM_PATCH_CACHE/zoo, else ~/.cache/tvm-patch/zoo."""
    return paths.cache_dir("zoo")


@lru_cache(maxsize=1)
def code_version() -> str:
    """Hash of every zoo source file and of the numpy and onnx versions."""
    h = hashlib.sha256(f"numpy {np.__version__} onnx {onnx.__version__}".encode())
    for path in sorted(Path(__file__).parent.glob("*.py")):
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:16]


def cache_path(name: str, variant: str, spec_text: str) -> Path:
    """File for (model, variant) under the current code version and this exact spec."""
    key = hashlib.sha256(f"{code_version()}\0{spec_text}".encode()).hexdigest()[:16]
    return cache_dir() / f"{name}.{variant}.{key}.onnx"


def cached(path: Path, build: Callable[[], onnx.ModelProto]) -> onnx.ModelProto:
    """Load `path` if it holds a model, else build it and write it atomically."""
    if path.is_file():
        try:
            return onnx.load_model(str(path))
        except Exception:  # a damaged cache file (disk full, foreign write): rebuild it
            pass
    model = build()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, model.SerializeToString())
    except OSError:
        pass  # a read-only or full cache folder only costs a rebuild next time
    return model
