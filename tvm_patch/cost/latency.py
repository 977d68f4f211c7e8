"""The latency model: an XGBoost regressor of a kernel's instructions (emulator) or cycles (board) per unit
of work (its MACs, or the bytes it moves when it has none) from its features, summed over a network's
kernels, plus the driver's input/output copies (a line in the copied bytes). One model per core (M4, M7),
stored as one versioned JSON file (the booster as zlib-compressed UBJSON in base64); a file that is corrupt, of another format version or another feature
set is refused with one line.
"""

from __future__ import annotations

import base64
import json
import zlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import xgboost as xgb

from tvm_patch.cost.features import FEATURES_VERSION, columns, vector, work
from tvm_patch.errors import TvmPatchError

FORMAT = "tvm-patch-cost-model"
FORMAT_VERSION = 1
CORES = ("m4", "m7")
PARAMS = {"max_depth": 4, "eta": 0.1, "subsample": 0.9, "colsample_bytree": 0.9, "min_child_weight": 2,
          "objective": "reg:squarederror", "seed": 0, "nthread": 1}
ROUNDS = 200


@dataclass
class LatencyModel:
    """A trained per-core model: the booster, the copy overhead (a + b x copied bytes), what it was fit on."""

    core: str
    unit: str
    booster: xgb.Booster
    overhead: tuple[float, float]
    meta: dict[str, Any]

    def kernel_counts(self, rows: list[dict[str, Any]]) -> list[float]:
        """Predicted instructions (or cycles) of each kernel row."""
        if not rows:
            return []
        x = np.array([vector(r) for r in rows], dtype=np.float64)
        ratio = self.booster.predict(xgb.DMatrix(x, feature_names=columns()))
        return [max(0.0, float(q)) * work(r) for q, r in zip(ratio, rows)]

    def network_count(self, rows: list[dict[str, Any]], io_bytes: int) -> float:
        """Predicted instructions (or cycles) of one inference: the kernels plus the input/output copies."""
        return sum(self.kernel_counts(rows)) + self.overhead[0] + self.overhead[1] * io_bytes

    def save(self, path: str | Path) -> Path:
        """Write the model file (JSON; the booster as base64 of zlib-compressed UBJSON)."""
        path = Path(path)
        data = {"format": FORMAT, "format_version": FORMAT_VERSION, "features_version": FEATURES_VERSION,
                "core": self.core, "unit": self.unit, "columns": columns(), "overhead": list(self.overhead),
                "meta": self.meta,
                "booster": base64.b64encode(zlib.compress(bytes(self.booster.save_raw(raw_format="ubj")), 9)).decode()}
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(data) + "\n")
        tmp.replace(path)
        return path


def fit(records: list[dict[str, Any]], core: str) -> LatencyModel:
    """Train on the kernels of ``records`` (one core, one unit); records with a failed kernel count are dropped."""
    recs = [r for r in records if r.get("core") == core and all(k.get("measured") for k in r["rows"])]
    if not recs:
        raise TvmPatchError(f"no measurements for core {core}: collect some with `tvm-patch costmodel collect`")
    units = {r["unit"] for r in recs}
    if len(units) != 1:
        raise TvmPatchError(f"measurements for {core} mix {' and '.join(sorted(units))}; train on one runner")
    rows = [k for r in recs for k in r["rows"]]
    x = np.array([vector(k) for k in rows], dtype=np.float64)
    y = np.array([k["measured"] / work(k) for k in rows], dtype=np.float64)
    booster = xgb.train(PARAMS, xgb.DMatrix(x, label=y, feature_names=columns()), num_boost_round=ROUNDS)
    rest = np.array([r["total"] - sum(k["measured"] for k in r["rows"]) for r in recs], dtype=np.float64)
    io = np.array([r["io_bytes"] for r in recs], dtype=np.float64)
    a, b = np.linalg.lstsq(np.stack([np.ones_like(io), io], 1), rest, rcond=None)[0]
    meta = {"n_networks": len(recs), "n_kernels": len(rows), "boards": sorted({r["board"] for r in recs}),
            "runner": sorted({r["runner"] for r in recs})}
    return LatencyModel(core, units.pop(), booster, (float(a), float(b)), meta)


def load(path: str | Path) -> LatencyModel:
    """Read a model file; anything wrong with it is one line naming the file and what to do."""
    path = Path(path)
    fix = "retrain it with `tvm-patch costmodel train` or remove it to use the shipped default"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise TvmPatchError(f"cost model {path}: no such file; {fix}") from None
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise TvmPatchError(f"cost model {path}: corrupt ({type(e).__name__}); {fix}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise TvmPatchError(f"cost model {path}: not a tvm-patch cost model file; {fix}")
    if data.get("format_version") != FORMAT_VERSION or data.get("features_version") != FEATURES_VERSION \
            or data.get("columns") != columns():
        raise TvmPatchError(f"cost model {path}: made for format {data.get('format_version')} / features "
                            f"{data.get('features_version')}, this tvm-patch reads {FORMAT_VERSION} / "
                            f"{FEATURES_VERSION}; {fix}")
    try:
        booster = xgb.Booster()
        booster.load_model(bytearray(zlib.decompress(base64.b64decode(data["booster"], validate=True))))
        return LatencyModel(data["core"], data["unit"], booster, tuple(map(float, data["overhead"])),
                            dict(data.get("meta", {})))
    except (KeyError, TypeError, ValueError, zlib.error, xgb.core.XGBoostError) as e:
        raise TvmPatchError(f"cost model {path}: corrupt ({type(e).__name__}); {fix}") from None


def default_path(core: str) -> Path:
    """The shipped model file of ``core``."""
    return Path(str(resources.files("tvm_patch.cost") / "models" / f"{core}.json"))


def for_core(core: str, path: str | Path | None = None) -> LatencyModel:
    """The model at ``path``, or the shipped default of ``core``; a model for another core is refused."""
    if path is None and not default_path(core).is_file():
        raise TvmPatchError(f"no shipped cost model for {core} in this installation; make one with `tvm-patch "
                            f"costmodel collect` and `train`, and give it with --cost-model FILE")
    model = load(path if path is not None else default_path(core))
    if model.core != core:
        raise TvmPatchError(f"cost model {path}: trained for {model.core}, the board has a {core}; "
                            f"give a {core} model")
    return model
