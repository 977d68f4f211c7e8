"""A disk cache of plan predictions, so that `plan`, and `build`/the bench using its answer, predict each plan
of a model once: keyed by the model's bytes, the plan, the board, the latency model file and a hash of this
installation's sources (any change to the export, the kernels or the firmware template invalidates it). The
kernels fingerprint (fingerprint.py) is kept here too, under the sources' hash. ``kind`` "runs": the emulator runs
of the cost model's measurements, keyed by what the firmware is built from instead (measure.py).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from functools import cache
from pathlib import Path
from typing import Any

from tvm_patch.atomic import write_atomic
from tvm_patch.paths import cache_dir

_ROOTS = ("tvm_patch", "microtvm_projects")
_SOURCE_SUFFIXES = (".py", ".h", ".c", ".ld", ".s", ".S", ".mk", "")
BASE = Path(__file__).resolve().parents[2]  # the folder holding tvm_patch and microtvm_projects


def hash_files(h: Any, base: Path, roots: Iterable[str], suffixes: tuple[str, ...] | None = None) -> None:
    """Feed ``h`` each file under ``base``/root (its path relative to ``base``, then its bytes), in order;
    ``suffixes``: only those (None: every file); never __pycache__."""
    for root in roots:
        for f in sorted((base / root).rglob("*")):
            if f.is_file() and (suffixes is None or f.suffix in suffixes) and "__pycache__" not in f.parts:
                h.update(str(f.relative_to(base)).encode() + b"\0" + f.read_bytes() + b"\0")


@cache
def source_fingerprint() -> str:
    """A hash of every source file of tvm_patch and microtvm_projects (.py, .h, .c, .ld, .s, Makefiles)."""
    h = hashlib.sha256()
    hash_files(h, BASE, _ROOTS, _SOURCE_SUFFIXES)
    return h.hexdigest()[:20]


def key(*parts: Any) -> str:
    """A cache key of JSON-serialisable ``parts`` and the source fingerprint."""
    return hashlib.sha256(json.dumps([source_fingerprint(), *parts], sort_keys=True, default=str).encode()).hexdigest()


def get(k: str, kind: str = "plans") -> dict[str, Any] | None:
    """The cached JSON of key ``k``, or None (missing or unreadable: recomputed)."""
    path = cache_dir(kind) / f"{k}.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def put(k: str, value: dict[str, Any], kind: str = "plans") -> None:
    """Store ``value`` under ``k`` (whole-file write; a cache that cannot be written is skipped)."""
    try:
        write_atomic(cache_dir(kind) / f"{k}.json", json.dumps(value))
    except OSError:
        pass
