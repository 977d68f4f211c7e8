"""Where the shared data lives (real models, zoo configs) and where caches go."""

from __future__ import annotations

import os
from pathlib import Path

from tvm_patch.errors import TvmPatchError

REPO_ROOT = Path(__file__).resolve().parent.parent


def shared_models_dir() -> Path:
    """The shared models folder: $TVM_PATCH_SHARED_MODELS, else <repo>/../shared/models."""
    env = os.environ.get("TVM_PATCH_SHARED_MODELS")
    path = Path(env) if env else REPO_ROOT.parent / "shared" / "models"
    if not path.is_dir():
        raise TvmPatchError(f"shared models folder not found at {path}; set TVM_PATCH_SHARED_MODELS to its path")
    return path


def cache_dir(kind: str) -> Path:
    """A cache folder: $TVM_PATCH_CACHE/<kind>, else ~/.cache/tvm-patch/<kind>."""
    root = Path(os.environ.get("TVM_PATCH_CACHE") or Path.home() / ".cache" / "tvm-patch")
    path = root / kind
    path.mkdir(parents=True, exist_ok=True)
    return path
