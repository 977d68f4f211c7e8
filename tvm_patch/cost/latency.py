"""The latency model: an XGBoost regressor of a kernel's instructions (emulator) or cycles (board) per unit
of work (its MACs, or the bytes it moves when it has none) from its features, summed over a network's
kernels, plus the driver's input/output copies (a line in the copied bytes). One model per core (M4, M7),
stored as one versioned JSON file (the booster as zlib-compressed UBJSON in base64); a file that is corrupt, of another format version or another feature
set is refused with one line.
"""

from __future__ import annotations

import base64
import hashlib
import json
import sys
import zlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import xgboost as xgb
from scipy.optimize import nnls

from tvm_patch.cost.features import EXEC_KEYS, FEATURES_VERSION, columns, vector, work
from tvm_patch.cost.fingerprint import kernels_fingerprint
from tvm_patch.errors import TvmPatchError

FORMAT = "tvm-patch-cost-model"
FORMAT_VERSION = 2
CORES = ("m4", "m7")
PARAMS = {"max_depth": 4, "eta": 0.1, "subsample": 0.9, "colsample_bytree": 0.9, "min_child_weight": 2,
          "objective": "reg:squarederror", "seed": 0, "nthread": 1}
ROUNDS = 200
# a loop nest's equation in the stage fit, against a whole stage's 1: the one of these that cross-validates best
# over the training stages (choose_nest_weight; 0: the whole stages alone)
NEST_WEIGHTS = (0.0, 0.25, 0.5, 1.0)
# stage terms priced on the loop nests that execute them alone, not by the stages' fit (pinned_prices): the
# constant fills, whose nests measure about 2 instructions a word where the stages' fit, through terms that grow
# with them (an NHWC stage's padded regions), priced them at 35
PINNED_TERMS = ("stores_fill", "fill_runs")
CV_FOLDS = 8
_warned: set[str] = set()


def warn_if_stale(model: "LatencyModel", path: str | Path) -> bool:
    """One line on stderr (once per file and process) when ``model`` was trained on other kernels than these;
    True when it was. Not an error: the prediction still comes, from a model of older code."""
    trained = model.meta.get("kernels_fingerprint")
    if trained == kernels_fingerprint():
        return False
    if str(path) not in _warned:
        _warned.add(str(path))
        print(f"tvm-patch: warning: cost model {path} was trained on other kernels (fingerprint {trained or 'none'}, "
              f"these are {kernels_fingerprint()}): latency predictions may be off; retrain with `make costmodel`",
              file=sys.stderr)
    return True


# The patch stage's linear model: its count = the sum over what its loop nest executes (every layer over every
# patch region, the recomputed halos or the cache copies included) of a per-operation cost (the scalar MACs by
# the shape of their reduction: 1x1, depthwise, k x k, register-blocked; the element stores by what they write:
# constants, copies, float, integer results; the depthwise windows per call, per row and per MAC; the branch
# conditions evaluated and those that run what they guard, not a border patch's out-of-image positions), the element
# stores of a cache-mode stage at a cost of their own, and its copies once more (its row and column caches, in
# short guarded rows: cross-validated over the training stages, docs/cost-model.md round 6), plus a cost per patch
# and a constant: STAGE_TERMS, in this order. A model file names its terms (older files: others).
_DERIVED = {"cache_stores": lambda r: r["exec"]["stores"] * r["halo_cache"],
            # a cache-mode stage's copies (its row and column caches, filled and read back in short guarded rows)
            "cache_copies": lambda r: r["exec"]["stores_copy"] * r["halo_cache"], "patches": lambda r: r["patches"],
            "one": lambda r: 0.0 if "loop_nest" in r else 1.0,  # a loop nest of a stage (stage_layers.py): no constant
            # the branch evaluations that run what they guard (an in-image position; NNLS cannot price the skipping
            # ones below the others, so the model weighs every evaluation and, on top, the taken ones)
            "branches_taken": lambda r: r["exec"]["branches"] - r["exec"]["branches_skipped"],
            # the MACs of the window calls computing one or two windows (NHWC stages' single windows, NCHW pairs):
            # 2.5-3.3 instructions a MAC measured in the loop nests, against 1.3-1.7 in four-window calls
            "window12_macs": lambda r: r["exec"]["window_macs"] - r["exec"]["window4_macs"]}
STAGE_TERMS = ("mac_flat", "red_loops", "stores_const", "stores_reg", "stores_copy", "stores_float", "stores_int",
               "dot_calls", "dot_elems", "rows_calls", "window_calls", "window_elems", "window_macs", "window12_macs",
               "requant", "pad_calls", "sat", "dot_simd_macs", "dot_tail_macs", "mac_1x1", "mac_dw", "mac_kxk",
               "mac_blk", "branches", "branches_taken", "cache_stores", "cache_copies", "stores_call", "run_calls",
               "stores_fill", "fill_runs", "dot_wide_macs", "dot_s8act_macs", "patches", "mul64", "one")
KNOWN_STAGE_TERMS = frozenset(EXEC_KEYS) | frozenset(_DERIVED)  # what a model file's stage terms may name


def stage_terms(row: dict[str, Any], names: tuple[str, ...] = STAGE_TERMS) -> list[float]:
    """The patch stage row's terms of the linear stage model (``names``, by default STAGE_TERMS)."""
    return [float(_DERIVED[k](row)) if k in _DERIVED else float(row["exec"][k]) for k in names]


def has_stage_terms(row: dict[str, Any]) -> bool:
    """Does the stage row have every term (rows of older feature code may lack the newer counts)?"""
    return set(STAGE_TERMS) - set(_DERIVED) <= set(row["exec"])


def fit_booster(rows: list[dict[str, Any]]) -> xgb.Booster:
    """The regressor of a kernel's count per unit of work, on measured kernel rows."""
    x = np.array([vector(k) for k in rows], dtype=np.float64)
    y = np.array([k["measured"] / work(k) for k in rows], dtype=np.float64)
    return xgb.train(PARAMS, xgb.DMatrix(x, label=y, feature_names=columns()), num_boost_round=ROUNDS)


def relative_nnls(a: np.ndarray, y: np.ndarray, w: np.ndarray | None = None) -> np.ndarray:
    """Non-negative coefficients c minimising the relative error of ``a @ c`` against ``y`` (each equation
    divided by its measured count, then weighted by ``w``, default 1)."""
    w = np.ones_like(y) if w is None else w
    return nnls(a / y[:, None] * w[:, None], w)[0]


def pinned_prices(nests: list[dict[str, Any]], names: tuple[str, ...] = STAGE_TERMS) -> dict[str, float]:
    """The prices of PINNED_TERMS (those in ``names``) measured on the loop nests that execute nothing else (a
    stage's constant fills: their cost per word and per run), by relative_nnls; {} without such nests."""
    pins = [t for t in PINNED_TERMS if t in names]
    if not pins:
        return {}
    pure = [n for n in nests if not any(v for t, v in zip(names, stage_terms(n, names)) if t not in pins)]
    a = np.array([stage_terms(n, tuple(pins)) for n in pure], dtype=np.float64).reshape(len(pure), len(pins))
    if len(pure) < 2 * len(pins) or np.linalg.matrix_rank(a) < len(pins):
        return {}
    return dict(zip(pins, map(float, relative_nnls(a, np.array([n["measured"] for n in pure], dtype=np.float64)))))


def pinned_nnls(a: np.ndarray, y: np.ndarray, w: np.ndarray, names: tuple[str, ...],
                pins: dict[str, float]) -> np.ndarray:
    """relative_nnls of the terms ``names`` (the columns of ``a``) with those in ``pins`` held at their price:
    their share of each count comes off it, the others are fitted to the rest."""
    held = np.array([t in pins for t in names])
    rest = 1 - a[:, held] @ np.array([pins[t] for t in names if t in pins]) / y
    coef = np.array([pins.get(t, 0.0) for t in names])
    coef[~held] = nnls(a[:, ~held] / y[:, None] * w[:, None], rest * w)[0]
    return coef


def fit_stage(stages: list[dict[str, Any]], names: tuple[str, ...] = STAGE_TERMS,
              nests: list[dict[str, Any]] = (), nest_weight: float = 0.5) -> list[float]:
    """The linear stage model's coefficients (``names``) on measured patch stage rows and loop nest rows
    (stage_layers.py; each weighs ``nest_weight`` of a stage), by relative_nnls, the PINNED_TERMS priced first
    on the loop nests that execute them alone (pinned_prices), whatever ``nest_weight``."""
    rows = list(stages) + list(nests)
    a = np.array([stage_terms(k, names) for k in rows], dtype=np.float64)
    w = np.array([1.0] * len(stages) + [nest_weight] * len(nests))
    y = np.array([k["measured"] for k in rows], dtype=np.float64)
    return [float(c) for c in pinned_nnls(a, y, w, names, pinned_prices(list(nests), names))]


def choose_nest_weight(stages: list[dict[str, Any]], groups: list[str], nests: list[dict[str, Any]],
                       nest_groups: list[str]) -> tuple[float, dict[float, float]]:
    """The loop nests' weight (NEST_WEIGHTS) whose stage model cross-validates best over the training stages
    (CV_FOLDS folds grouped by network, ``groups``; a fold's loop nests left out with its stages), and each
    weight's cross-validated stage MAPE."""
    fold = {g: i % CV_FOLDS for i, g in enumerate(sorted(set(groups)))}
    y = np.array([k["measured"] for k in stages], dtype=np.float64)
    a = np.array([stage_terms(k, STAGE_TERMS) for k in stages], dtype=np.float64)
    scores = {}
    for w in NEST_WEIGHTS:
        err = []
        for f in range(CV_FOLDS):
            train = [k for k, g in zip(stages, groups) if fold[g] != f]
            test = np.array([fold[g] == f for g in groups])
            if not test.any():
                continue
            c = np.array(fit_stage(train, nests=[n for n, g in zip(nests, nest_groups) if fold.get(g) != f],
                                   nest_weight=w))
            err += list(np.abs(a[test] @ c / y[test] - 1))
        scores[w] = float(np.mean(err))
    return min(scores, key=scores.get), scores


@dataclass
class LatencyModel:
    """A trained per-core model: the booster (every kernel but the patch stage), the patch stage's linear
    coefficients (STAGE_TERMS; None: the booster predicts it too), the copy overhead (a + b x copied bytes),
    what it was fit on."""

    core: str
    unit: str
    booster: xgb.Booster
    overhead: tuple[float, float]
    meta: dict[str, Any]
    stage_coef: list[float] | None = None
    digest: str | None = None  # SHA-256 of the file it was read from (None: trained in this process)
    stage_names: tuple[str, ...] = STAGE_TERMS  # the terms stage_coef weighs

    def kernel_counts(self, rows: list[dict[str, Any]]) -> list[float]:
        """Predicted instructions (or cycles) of each kernel row."""
        if not rows:
            return []
        x = np.array([vector(r) for r in rows], dtype=np.float64)
        ratio = self.booster.predict(xgb.DMatrix(x, feature_names=columns()))
        out = [max(0.0, float(q)) * work(r) for q, r in zip(ratio, rows)]
        if self.stage_coef is not None:
            out = [float(np.dot(self.stage_coef, stage_terms(r, self.stage_names))) if r["op"] == "patch_stage" else c
                   for r, c in zip(rows, out)]
        return out

    def network_count(self, rows: list[dict[str, Any]], io_bytes: int,
                      measured: dict[str, float] | None = None) -> float:
        """Predicted instructions (or cycles) of one inference: the kernels plus the input/output copies; a kernel
        named in ``measured`` (its count per call, a tuning record's) counts that instead of its prediction."""
        measured = measured or {}
        counts = self.kernel_counts(rows)
        return (sum(measured.get(r.get("func"), c) for r, c in zip(rows, counts)) + self.overhead[0]
                + self.overhead[1] * io_bytes)

    def save(self, path: str | Path) -> Path:
        """Write the model file (JSON; the booster as base64 of zlib-compressed UBJSON)."""
        path = Path(path)
        data = {"format": FORMAT, "format_version": FORMAT_VERSION, "features_version": FEATURES_VERSION,
                "core": self.core, "unit": self.unit, "columns": columns(), "overhead": list(self.overhead),
                "meta": self.meta, "stage_terms": list(self.stage_names), "stage_coef": self.stage_coef,
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
    stages = [k for k in rows if k["op"] == "patch_stage" and has_stage_terms(k)]
    # the stage model from the stages measured on this installation's kernels when there are enough of them
    # (a change of the stage kernels only needs its stages measured again), else from all
    complete = {id(k) for k in stages}
    current = [k for r in recs if r.get("kernels_fingerprint") == kernels_fingerprint() for k in r["rows"]
               if id(k) in complete]
    stage_data = current if len(current) >= 2 * len(STAGE_TERMS) else stages
    older = sum(k["op"] == "patch_stage" for k in rows) - len(stages)
    if older and len(stage_data) < 2 * len(STAGE_TERMS):
        raise TvmPatchError(f"{older} patch stage measurements were featured by older code (without all of "
                            f"{', '.join(STAGE_TERMS)}); recompute their features with `tvm-patch costmodel refeature` "
                            "or collect them again")
    coef, weight, scores = None, None, {}
    used = [r for r in recs if stage_data is not current or r.get("kernels_fingerprint") == kernels_fingerprint()]
    nests = [n for r in used for n in r.get("loop_nests", ()) if n.get("measured") and has_stage_terms(n)]
    if len(stage_data) >= 2 * len(STAGE_TERMS):
        if nests:
            net = {id(k): _network(r) for r in used for k in [*r["rows"], *r.get("loop_nests", ())]}
            weight, scores = choose_nest_weight(stage_data, [net[id(k)] for k in stage_data], nests,
                                                [net[id(n)] for n in nests])
        coef = fit_stage(stage_data, nests=nests, nest_weight=weight or 0.0)
        rows = [k for k in rows if k["op"] != "patch_stage"]
    booster = fit_booster(rows)
    rest = np.array([r["total"] - sum(k["measured"] for k in r["rows"]) for r in recs], dtype=np.float64)
    io = np.array([r["io_bytes"] for r in recs], dtype=np.float64)
    a, b = np.linalg.lstsq(np.stack([np.ones_like(io), io], 1), rest, rcond=None)[0]
    meta = {"n_networks": len(recs), "n_kernels": len(rows) + (len(stages) if coef is not None else 0),
            "n_stages": len(stage_data), "n_loop_nests": len(nests) if coef is not None else 0,
            "nest_weight": weight, "nest_weight_cv_mape": {str(w): round(v, 4) for w, v in scores.items()},
            "stage_model": "linear" if coef is not None else "booster",
            "data_fingerprints": {fp: sum((r.get("kernels_fingerprint") or "unknown") == fp for r in recs)
                                  for fp in sorted({r.get("kernels_fingerprint") or "unknown" for r in recs})}, "boards": sorted({r["board"] for r in recs}),
            "runner": sorted({r["runner"] for r in recs}),
            "kernels_fingerprint": kernels_fingerprint() if stage_data is current and coef is not None
            else _data_fingerprint(recs)}
    return LatencyModel(core, units.pop(), booster, (float(a), float(b)), meta, coef)


def _network(rec: dict[str, Any]) -> str:
    """The network a record measured (synthetic seed or model spec): its stage and loop nests' CV group."""
    return str(rec.get("synth") if rec.get("synth") is not None else rec["model"])


def _data_fingerprint(recs: list[dict[str, Any]]) -> str:
    """The kernel fingerprint the measurements were taken on ("mixed" when they span several, "unknown"
    for records from before fingerprints were recorded)."""
    fps = {r.get("kernels_fingerprint") or "unknown" for r in recs}
    return fps.pop() if len(fps) == 1 else "mixed"


def load(path: str | Path) -> LatencyModel:
    """Read a model file; anything wrong with it is one line naming the file and what to do."""
    path = Path(path)
    fix = "retrain it with `tvm-patch costmodel train` or remove it to use the shipped default"
    try:
        text = path.read_text()
        data = json.loads(text)
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
        coef = data.get("stage_coef")
        names = tuple(data.get("stage_terms") or STAGE_TERMS)
        if coef is not None and (not set(names) <= KNOWN_STAGE_TERMS or len(coef) != len(names)):
            raise ValueError("stage terms")
        return LatencyModel(data["core"], data["unit"], booster, tuple(map(float, data["overhead"])),
                            dict(data.get("meta", {})), None if coef is None else [float(c) for c in coef],
                            hashlib.sha256(text.encode()).hexdigest(), names)
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
    warn_if_stale(model, path if path is not None else default_path(core))
    if model.core != core:
        raise TvmPatchError(f"cost model {path}: trained for {model.core}, the board has a {core}; "
                            f"give a {core} model")
    return model
