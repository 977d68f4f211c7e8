"""``tvm-patch plan``: the schedule search. Every plan (layer by layer; each valid split x square patch grid
1..8 x halo mode) is first ranked by cheap estimates (the analytic patched peak of the profile and the
MACs); the plans on the first two layers of that estimated Pareto front are then exported and predicted
exactly (SRAM as linked, the latency model's sum over the real kernels), the Pareto front of
(SRAM, predicted latency) is taken again on the exact figures, and the fastest plan that fits the board
(all of its SRAM, and Flash) is chosen (``objective="memory"``: the smallest SRAM).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from microtvm_projects.boards import get_board
import tvm
from tvm import relax

from tvm_patch.cost import cache
from tvm_patch.cost.latency import LatencyModel, for_core
from tvm_patch.cost.measure import core_key, export_plan
from tvm_patch.cost.plan import HALO_MODES, MAX_PATCHES, Plan
from tvm_patch.cost.predict import Prediction, predict_export
from tvm_patch.errors import TvmPatchError
from tvm_patch.export.prefold import prefold_constants
from tvm_patch.frontend import load, model_sha256
from tvm_patch.graph import build_graph
from tvm_patch.patch.figures import patch_based
from tvm_patch.profile import peak, profile_layers
from tvm_patch.split import valid_splits
from tvm_patch.tune.records import TunedKernels, database_digest, tuned_kernels
from tvm_patch.transform.lower_to_integer import lower_to_integer

MAX_EXACT = 12  # plans exported and predicted exactly (each is one export: seconds)


@dataclass
class Estimate:
    """A plan's cheap estimate: analytic activation peak (bytes) and MACs."""

    plan: Plan
    peak_bytes: int
    macs: int


def pareto(points: list[Any], key) -> list[Any]:
    """The points no other point beats on both coordinates of ``key(point)`` (both minimised), by the first."""
    front: list[Any] = []
    for p in sorted(points, key=key):
        if not front or key(p)[1] < key(front[-1])[1]:
            front.append(p)
    return front


def estimates(model: str) -> tuple[list[Estimate], int]:
    """Every plan of the space with its estimate, and the Flash no plan can do with less of (``flash_floor``)."""
    mod = load(model).mod
    base = prefold_constants(lower_to_integer(mod))
    folded = relax.transform.FoldConstant()(prefold_constants(base))
    graph = build_graph(folded)
    rows = profile_layers(graph)
    out = [Estimate(Plan(), peak(rows).bytes, graph.macs)]
    floor = flash_floor(graph, folded["main"])
    for p in range(1, MAX_PATCHES + 1):
        for n in valid_splits(graph, (p, p)):
            try:
                fig = patch_based(graph, folded, p, n, tir=False, imported=base)
            except TvmPatchError:
                continue
            for halo in HALO_MODES:
                mode = fig["halo_modes"][halo]
                out.append(Estimate(Plan(n, (p, p), halo), mode["peak_bytes"], mode["macs"]))
    return out, floor


def flash_floor(graph: Any, func: relax.Function) -> int:
    """Bytes of Flash every plan needs at least: the convolutions' and dense layers' weights, one byte each (the
    integer-lowered module's constants; a plan only adds to them: widened copies, tables, code), and the input the
    firmware keeps in Flash (``microtvm_projects.firmware.check_fit_before``'s count). A network over the board's
    Flash by this alone fits no plan: the search says so without exporting any (mcunet-in3 on the F412)."""
    values = {b.var: b.value for block in func.body.blocks for b in block.bindings}
    weights = 0
    for layer in graph.layers:
        call = values.get(layer.anchor)
        if layer.op not in ("conv2d", "depthwise_conv2d", "dense") or call is None or len(call.args) < 2:
            continue
        w = call.args[1]
        w = values.get(w, w)
        if isinstance(w, tvm.ir.expr.Constant):
            weights += w.value.numpy().size
    return weights + sum(graph.tensors[t].nbytes for t in graph.inputs)


@dataclass
class PlanResult:
    """The search's answer: the chosen prediction (or None), the exact Pareto front, what was searched."""

    chosen: Prediction | None
    pareto: list[Prediction]
    best_miss: Prediction | None  # when nothing fits: the plan that misses by the least
    space: int
    exact: int
    note: str
    reason: str | None = None  # why nothing fits, where that is known before any plan is predicted

    def to_cache(self) -> dict[str, Any]:
        """Everything, for the disk cache (from_cache reads it back)."""
        return {"chosen": self.chosen.to_json() if self.chosen else None, "pareto": [p.to_json() for p in self.pareto],
                "best_miss": self.best_miss.to_json() if self.best_miss else None, "space": self.space,
                "exact": self.exact, "note": self.note, "reason": self.reason}

    @classmethod
    def from_cache(cls, d: dict[str, Any]) -> PlanResult:
        def pred(x: dict[str, Any] | None) -> Prediction | None:
            return Prediction(**x) if x else None

        return cls(pred(d["chosen"]), [Prediction(**p) for p in d["pareto"]], pred(d["best_miss"]), d["space"],
                   d["exact"], d["note"], d.get("reason"))

    def plan(self) -> Plan | None:
        """The chosen plan (None when nothing fits)."""
        c = self.chosen
        if c is None:
            return None
        return Plan(c.plan["split"], tuple(c.plan["patches"]) if c.plan["patches"] else None, c.plan["halo"])

    def to_json(self) -> dict[str, Any]:
        c = self.chosen or self.best_miss
        out = {
            "split": c.plan["split"] if c else None,
            "split_layers": c.split_layers if c else None,
            "patches": c.plan["patches"] if c else None,
            "halo": c.plan["halo"] if c else None,
            "sram_bytes": c.sram_bytes if c else None,
            "flash_bytes": c.flash_bytes if c else None,
            "predicted_latency_ms": c.latency_ms if c else None,
            "latency_estimated": c.latency_estimated if c else None,
            "fits": self.chosen is not None,
            "pareto": [p.to_json() for p in self.pareto],
            "plans_in_space": self.space,
            "plans_predicted_exactly": self.exact,
            "note": self.note,
            "reason": self.reason,
        }
        if self.chosen is None and c is not None:
            out["misses_sram_by_bytes"] = max(0, -c.sram_margin_bytes)
            out["misses_flash_by_bytes"] = max(0, -c.flash_margin_bytes)
        return out


def search(model: str, board: str, objective: str = "latency", cost_model: str | Path | LatencyModel | None = None,
           max_exact: int = MAX_EXACT, fast: bool = False, tuning_db: str | Path | None = None) -> PlanResult:
    """Search the plans of ``model`` on ``board`` (see the module docstring). ``fast``: predict the picked plans
    one at a time in increasing estimated latency (MACs; ``objective="memory"``: analytic peak) and stop at the
    first whose exact SRAM and Flash fit (usually one export: layer by layer when it fits), instead of
    predicting them all for the exact Pareto front; the front reported is that of the plans predicted.
    ``tuning_db``: each plan predicted as `build --tuning-db` builds it (predict.py)."""
    if objective not in ("latency", "memory"):
        raise TvmPatchError(f"unknown --objective {objective!r}; use latency or memory")
    b = get_board(board)
    lm = cost_model if isinstance(cost_model, LatencyModel) else for_core(core_key(board), cost_model)
    sha = model_sha256(model) if isinstance(model, str) else None
    tuned = tuned_kernels(tuning_db, board)  # opened here: a bad database is an error before any export
    db = database_digest(tuning_db) if tuned else None
    ck = cache.key("plan", sha, b.key, objective, lm.digest, max_exact, HALO_MODES, fast, db) \
        if sha and lm.digest else None
    hit = cache.get(ck) if ck else None
    if hit is not None:
        return PlanResult.from_cache(hit)
    est, floor = estimates(model)
    space = len(est)
    if floor > b.flash_bytes:
        result = PlanResult(None, [], None, space, 0, f"{space} plans; none predicted: the Flash floor decides",
                            f"its weights (int8) and input alone need {floor:,} B of Flash, {b.key} has "
                            f"{b.flash_bytes:,} B (a larger board, or `build --emulator-memory machine` to count it "
                            "on the emulator)")
        if ck is not None:
            cache.put(ck, result.to_cache())
        return result
    lbl = est[0]
    # estimated latency: MACs. The first two Pareto layers of (analytic peak, MACs): the analytic peak ranks
    # plans of one split close together, and the exact arena can reorder them (e.g. 4x4 below 3x3 patches)
    front = pareto(est, key=lambda e: (e.peak_bytes, e.macs))
    second = pareto([e for e in est if e not in front], key=lambda e: (e.peak_bytes, e.macs))
    picked = _spread(front, max_exact // 2 + 1) + _spread(second, max_exact // 2 - 1)
    if lbl not in picked:
        picked.insert(0, lbl)
    preds: list[Prediction] = []
    chosen = None
    with tempfile.TemporaryDirectory(prefix="tvmp_plan_") as tmp:
        predictor = _Predictor(model, board, lm, Path(tmp), tuned, db)
        if fast:
            # estimated latency: MACs, then fewer patches (cache mode computes as many MACs as layer by layer,
            # plus its copies)
            n_patches = lambda e: 1 if e.plan.patches is None else e.plan.patches[0] * e.plan.patches[1]  # noqa: E731
            picked.sort(key=lambda e: (e.macs, n_patches(e), e.peak_bytes) if objective == "latency"
                        else (e.peak_bytes, e.macs))
        for e in picked:
            p = predictor(e.plan, flash=False)
            if p is None:
                continue
            preds.append(p)
            if fast and p.sram_bytes <= b.sram_bytes and p.flash_bytes <= b.flash_bytes:
                full = predictor(e.plan, flash=True)
                if full is not None and full.fits:
                    chosen = full
                    break
        exact = pareto(preds, key=lambda p: (p.sram_bytes, p.latency_ms))
        order = sorted(exact, key=lambda p: (p.latency_ms, p.sram_bytes) if objective == "latency"
                       else (p.sram_bytes, p.latency_ms))
        for p in ([] if fast else order):
            if p.sram_bytes > b.sram_bytes or p.flash_bytes > b.flash_bytes:
                continue
            # Flash with the code (compiling the network's objects) only for the plan about to be chosen
            plan = Plan(p.plan["split"], tuple(p.plan["patches"]) if p.plan["patches"] else None, p.plan["halo"])
            full = predictor(plan, flash=True)
            if full is not None and full.fits:
                chosen = full
                break
    best_miss = None if chosen else min(preds, key=lambda p: (max(0, -p.sram_margin_bytes) + max(0, -p.flash_margin_bytes)), default=None)
    note = (f"{space} plans (layer by layer; valid splits x square patch grids 1..{MAX_PATCHES} x halo "
            f"{'/'.join(HALO_MODES)}); rectangular grids are not enumerated: the C export builds square ones; "
            f"{len(preds)} plans of the estimated front (two layers) predicted exactly" +
            ("; fast: in increasing estimated latency (MACs), up to the first that fits" if fast else ""))
    result = PlanResult(chosen, exact, best_miss, space, len(preds), note)
    if ck is not None:
        cache.put(ck, result.to_cache())
    return result


class _Predictor:
    """Predictions of plans of one model on one board, from the disk cache (cache.py) or by exporting the plan
    (each plan exported at most once in a search)."""

    def __init__(self, model: Any, board: str, lm: LatencyModel, tmp: Path, tuned: TunedKernels | None = None,
                 db: str | None = None) -> None:
        """``tuned``: a tuning database's records to apply, ``db`` its digest (``database_digest``)."""
        self.model, self.board, self.lm, self.tmp, self.tuned, self.db = model, board, lm, tmp, tuned, db
        self.sha = model_sha256(model) if isinstance(model, str) else None
        self.exports: dict[str, tuple[Any, list[dict[str, Any]], Path, dict[str, float] | None]] = {}

    def __call__(self, plan: Plan, flash: bool) -> Prediction | None:
        ck = cache.key("prediction", self.sha, plan.to_json(), self.board, self.lm.digest, flash, self.db) \
            if self.sha and self.lm.digest else None
        hit = cache.get(ck) if ck else None
        if hit is not None:
            return Prediction(**hit)
        label = plan.label()
        if label not in self.exports:
            out = self.tmp / f"p{len(self.exports)}"
            # a lookup of its own per export: its `used` is that export's, its choices keyed by kernel name
            tuned = TunedKernels(self.tuned.db, self.tuned.core) if self.tuned else None
            try:
                result, rows = export_plan(self.model, plan, out, tuned=tuned)
            except TvmPatchError:
                return None
            self.exports[label] = (result, rows, out, tuned.measured(self.lm.unit) if tuned else None)
        result, rows, out, measured = self.exports[label]
        p = predict_export(result, rows, out / "model.c", plan, self.board, self.lm, flash=flash, measured=measured)
        if ck:
            cache.put(ck, p.to_json())
        return p


def _spread(front: list[Any], k: int) -> list[Any]:
    """At most ``k`` points of ``front``, evenly spread, first and last included."""
    if len(front) <= k:
        return front
    idx = sorted({round(i * (len(front) - 1) / (k - 1)) for i in range(k)})
    return [front[i] for i in idx]
