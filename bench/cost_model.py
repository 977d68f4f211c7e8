"""`python -m bench.cost_model`: the latency cost model's accuracy on held-out whole networks (the goal:
within +-10 % on at least 95 % of them; nn-Meter reports +-10 % on 99 % of models on mobile CPUs), for
the shipped model of each core on the measurements it was trained beside (bench/cost_data), written to
<out>/cost_model.json and cost_model.md. See docs/cost-model.md.

`--retrain` first re-collects the training and held-out measurements on this installation's kernels (the
rounds of collect.DEFAULT_ROUNDS and the adaptive one, on QEMU; resumable: an interrupted run continues), then retrains and
replaces the shipped model (tvm_patch/cost/models/<core>.json) and its data (bench/cost_data/<core>.jsonl.gz), and
measures the extra held-out runs (--measure-extra) and, for the M7, the blind check's (--measure-blind).
`make costmodel` (or `make -j2 costmodel` for both cores at once) runs it.

`--stage-layers MODEL --board B --split S --patches P [--halo H]`: where the patch stage's prediction errs, layer
by layer: the stage's firmware is instrumented (a counter reading before each top-level loop nest of the patch
body, accumulated over the patches) and each loop nest's measured count is printed beside the stage model's
prediction of it and the terms that make it up (a diagnosis; no model changes).
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import xgboost as xgb
from microtvm_projects.errors import ProjectError

from tvm_patch.atomic import write_atomic
from tvm_patch.board_build import build_project, fit_wide
from tvm_patch.cost.collect import ADAPTIVE_ROUND, DEFAULT_ROUNDS, collect, done_ids, heldout_models, heldout_patch_plan, \
    read_records
from tvm_patch.cost.evaluate import evaluate
from tvm_patch.cost.features import columns, vector
from tvm_patch.cost.fingerprint import kernels_fingerprint
from tvm_patch.cost.measure import core_key, generate_measured_project, measure
from tvm_patch.cost.plan import Plan
from tvm_patch.cost.stage_layers import instrument_stage, measured_nests
from tvm_patch.cost.latency import CORES, STAGE_TERMS, choose_nest_weight, default_path, fit, fit_booster, for_core, \
    has_stage_terms, pinned_nnls, pinned_prices, relative_nnls, stage_terms
from tvm_patch.errors import TvmPatchError
from tvm_patch.export import export_model
from tvm_patch.frontend import load as load_model
from tvm_patch.graph import build_graph
from tvm_patch.paths import cache_dir
from tvm_patch.split import valid_splits

DATA = Path(__file__).resolve().parent / "cost_data"
GOAL_SHARE = 0.95
CV_FOLDS = 8
# the per-layer stage model's terms beside the layers' booster sum: what the stage adds to its layers' kernels
LAYER_OVERHEADS = ("stores", "requant", "sat", "red_loops", "patches", "one")
# the linear stage model's terms as shipped before the dot products' SIMD/tail split and the cache stores
OLDER_TERMS = ("mac", "mac_flat", "red_loops", "stores", "dot_calls", "dot_elems", "rows_calls", "window_calls",
               "window_elems", "requant", "pad_calls", "sat", "patches", "one")
# the linear stage model's terms of round 3 (one store term, no window MACs; its scalar MACs were classed by all
# the loops around them, so a register-blocked 1x1 counted as depthwise: here they are mac_blk, not in the set)
ROUND3_TERMS = ("mac_flat", "red_loops", "stores", "dot_calls", "dot_elems", "rows_calls", "window_calls", "window_elems",
                "requant", "pad_calls", "sat", "dot_simd_macs", "dot_tail_macs", "mac_1x1", "mac_dw", "mac_kxk",
                "cache_stores", "patches", "one")
BOARD_OF_CORE = {"m7": "f746", "m4": "f412"}  # the board whose build measures each core (QEMU mps2-an500 / an386)


PARTIAL = DATA / "partial"  # re-collections saved part way (--save-partial), so that another machine resumes them


def _work_file(name: str) -> Path:
    """The resumable collection file ``name`` in the cache, seeded from PARTIAL/<name>.gz when the cache has none
    (a re-collection started on another machine and saved with --save-partial)."""
    work = cache_dir("cost") / name
    seed = PARTIAL / f"{name}.gz"
    if not work.exists() and seed.is_file():
        write_atomic(work, gzip.decompress(seed.read_bytes()))
    return work


def save_partial() -> list[Path]:
    """Copy this kernel fingerprint's unfinished collection files from the cache to PARTIAL (gzip), to be
    committed and resumed elsewhere; the files written."""
    out = []
    for work in sorted(cache_dir("cost").glob(f"*_{kernels_fingerprint()}.jsonl")):
        out.append(PARTIAL / f"{work.name}.gz")
        out[-1].parent.mkdir(parents=True, exist_ok=True)
        write_atomic(out[-1], gzip.compress(work.read_bytes(), 9, mtime=0))
    return out


def retrain(core: str) -> dict[str, float]:
    """Collect DEFAULT_ROUNDS on ``core``'s board into a resumable file of this kernel fingerprint, write it to
    bench/cost_data, train and write the shipped model; returns the seconds each step took."""
    t0 = time.monotonic()
    work = _work_file(f"retrain_{core}_{kernels_fingerprint()}.jsonl")
    for seed, n in DEFAULT_ROUNDS:
        collect(BOARD_OF_CORE[core], work, n=n, seed=seed)
    collect(BOARD_OF_CORE[core], work, seed=ADAPTIVE_ROUND[0], adaptive=ADAPTIVE_ROUND[1])
    t1 = time.monotonic()
    write_atomic(DATA / f"{core}.jsonl.gz", gzip.compress(work.read_bytes(), 9, mtime=0))
    model = fit([r for r in read_records(work) if not r.get("heldout")], core)
    model.save(default_path(core))
    (PARTIAL / f"{work.name}.gz").unlink(missing_ok=True)  # finished: the saved part is in the data now
    return {"collect_seconds": round(t1 - t0, 1), "train_seconds": round(time.monotonic() - t1, 1)}


def _network(rec: dict[str, Any]) -> Any:
    """The network a record measured (synthetic seed or model spec): a stage's layer-by-layer twin."""
    return rec.get("synth") if rec.get("synth") is not None else rec["model"]


def _layer_sum(stage_rec: dict[str, Any], lbl_rec: dict[str, Any], booster: xgb.Booster) -> float:
    """The per-layer estimate of a stage: each stage layer's MACs (trips' ``wmacs:layer{i}_weight``, halos
    included) x the booster's count per MAC of the same layer's kernel in the layer-by-layer export."""
    st = stage_rec["rows"][0]
    macs = [v for _, v in sorted((int(re.search(r"layer(\d+)_weight", k).group(1)), v)
                                 for k, v in st["exec"].items() if k.startswith("wmacs:"))]
    layers = [k for k in lbl_rec["rows"] if k["macs"] > 0][:len(macs)]
    ratio = booster.predict(xgb.DMatrix(np.array([vector(k) for k in layers]), feature_names=columns()))
    return float(sum(q * m for q, m in zip(ratio, macs)))


def stage_comparison(records: list[dict[str, Any]]) -> dict[str, Any]:
    """The patch stage's linear model (shipped: STAGE_TERMS, fitted on the stages and their loop nests at the nest
    weight latency.choose_nest_weight picks) against ablations of it (without the loop nests; one store term
    instead of one per kind of store; without the window MACs; one scalar ``mac`` term instead of one per
    reduction shape; without the branch counts; the skipped branches instead of the taken ones; ROUND3_TERMS and OLDER_TERMS: rounds 3 and 2) and a per-layer model.
    The per-layer model predicts each stage layer with the kernel booster (``_layer_sum``) plus non-negative
    costs of LAYER_OVERHEADS, fitted like the linear one, on the stages whose network was also measured layer by
    layer (the deep round's were not). All by cross-validation over the training stages (grouped by network,
    CV_FOLDS folds; a fold's loop nests and, for the per-layer model, the booster's kernels left out with it) and
    on the held-out stages (fitted on every training stage). Relative errors of the stage kernel's count."""
    ok = [r for r in records if all(k.get("measured") for k in r["rows"])]
    lbl = {_network(r): r for r in ok if r["plan"]["split"] is None}
    stages = [r for r in ok if r["plan"]["split"] is not None and has_stage_terms(r["rows"][0])]
    train, held = [r for r in stages if not r.get("heldout")], [r for r in stages if r.get("heldout")]
    twin = np.array([_network(r) in lbl for r in train])
    if twin.sum() < 2 * CV_FOLDS or not held or not all(_network(r) in lbl for r in held):
        raise TvmPatchError(f"{int(twin.sum())} training and {len(held)} held-out patch stages with a layer-by-layer "
                            "measurement of the same network: too few to compare; collect more")
    nest_recs = [(r, n) for r in ok if not r.get("heldout") for n in r.get("loop_nests", ())
                 if n.get("measured") and has_stage_terms(n)]
    stores = tuple(t for t in STAGE_TERMS if not t.startswith("stores_")) + ("stores",)
    linear = {"linear": STAGE_TERMS, "linear_without_loop_nests": STAGE_TERMS, "linear_one_store_term": stores,
              "linear_without_window_macs": tuple(t for t in STAGE_TERMS if t not in ("window_macs", "window12_macs")),
              "linear_one_scalar_mac_term": ("mac", *(t for t in STAGE_TERMS if not t.startswith("mac_") or t == "mac_flat")),
              "linear_without_branches": tuple(t for t in STAGE_TERMS if not t.startswith("branches")),
              "linear_branches_skipped": tuple("branches_skipped" if t == "branches_taken" else t for t in STAGE_TERMS),
              "linear_round3_terms": ROUND3_TERMS, "linear_older_terms": OLDER_TERMS}
    weight, _ = choose_nest_weight([r["rows"][0] for r in train], [str(_network(r)) for r in train],
                                   [n for _, n in nest_recs], [str(_network(r)) for r, _ in nest_recs]) \
        if nest_recs else (0.0, {})

    def terms(recs: list[Any], model: str, booster: xgb.Booster | None) -> np.ndarray:
        if model in linear:
            return np.array([stage_terms(r["rows"][0] if "rows" in r else r, linear[model]) for r in recs],
                            dtype=np.float64).reshape(len(recs), len(linear[model]))
        return np.array([[_layer_sum(r, lbl[_network(r)], booster)] + stage_terms(r["rows"][0], LAYER_OVERHEADS)
                         for r in recs])

    models = (*linear, "per_layer")
    y_train = np.array([r["rows"][0]["measured"] for r in train], dtype=np.float64)
    y_held = np.array([r["rows"][0]["measured"] for r in held], dtype=np.float64)
    y_nest = np.array([n["measured"] for _, n in nest_recs], dtype=np.float64)
    nets = sorted({str(_network(r)) for r in train})
    fold = {n: i % CV_FOLDS for i, n in enumerate(nets)}
    in_fold = np.array([fold[str(_network(r))] for r in train])
    nest_fold = np.array([fold.get(str(_network(r)), -1) for r, _ in nest_recs])

    def fit_errors(m: str, booster: xgb.Booster | None, fit_mask: np.ndarray, nest_mask: np.ndarray,
                   test: list[dict[str, Any]], y_test: np.ndarray) -> np.ndarray:
        """Fit model ``m`` on the training stages of ``fit_mask`` (and the loop nests of ``nest_mask``); the
        relative errors on ``test``."""
        use = fit_mask & (twin if m == "per_layer" else True)
        a, y = terms([r for r, u in zip(train, use) if u], m, booster), y_train[use]
        w = np.ones_like(y)
        if m not in linear:
            return terms(test, m, booster) @ relative_nnls(a, y, w) / y_test - 1
        nests = [n for (_, n), u in zip(nest_recs, nest_mask) if u] if m != "linear_without_loop_nests" else []
        if nests and weight:
            a = np.vstack([a, terms(nests, m, None)])
            y, w = np.concatenate([y, y_nest[nest_mask]]), np.concatenate([w, np.full(int(nest_mask.sum()), weight)])
        return terms(test, m, booster) @ pinned_nnls(a, y, w, linear[m], pinned_prices(nests, linear[m])) / y_test - 1

    cv: dict[str, list[float]] = {m: [] for m in models}
    for f in range(CV_FOLDS):
        te = in_fold == f
        b = fit_booster([k for r in ok if not r.get("heldout") and fold.get(str(_network(r))) != f
                         for k in r["rows"] if k["op"] != "patch_stage"])
        for m in models:
            test = [r for r, t in zip(train, te) if t and (m != "per_layer" or _network(r) in lbl)]
            y_test = np.array([r["rows"][0]["measured"] for r in test], dtype=np.float64)
            cv[m] += list(fit_errors(m, b, ~te, nest_fold != f, test, y_test))
    b = fit_booster([k for r in ok if not r.get("heldout") for k in r["rows"] if k["op"] != "patch_stage"])
    every = np.ones(len(train), dtype=bool)
    held_err = {m: fit_errors(m, b, every, np.ones(len(nest_recs), dtype=bool), held, y_held) for m in models}
    return {"n_train_stages": len(train), "n_train_stages_per_layer": int(twin.sum()), "n_loop_nests": len(nest_recs),
            "nest_weight": weight, "n_heldout_stages": len(held), "cv_folds": CV_FOLDS,
            "cv_mape": {m: round(float(np.mean(np.abs(e))), 4) for m, e in cv.items()},
            "heldout_mape": {m: round(float(np.mean(np.abs(e))), 4) for m, e in held_err.items()},
            "heldout": [{"id": r["id"], **{m: round(float(e[i]), 4) for m, e in held_err.items()}}
                        for i, r in enumerate(held)]}


def stage_layers(model: str, plan: Plan, board: str, cost_model: str | None = None) -> dict[str, Any]:
    """Each top-level loop nest of ``model``'s patch stage under ``plan`` on ``board`` (QEMU): its measured count
    (instrumented firmware, accumulated over the patches; each reading's own cost is in its loop nest's figure)
    beside the stage model's prediction (``cost_model`` or the shipped model of the board's core) and the terms
    of that prediction, largest first; the weight buffers it reads name its layers."""
    model_ = for_core(core_key(board), cost_model)
    if model_.stage_coef is None:
        raise TvmPatchError("the cost model has no linear stage model to compare with")
    with tempfile.TemporaryDirectory(prefix="tvmp_stage_layers_") as tmp:
        export_dir, proj = Path(tmp) / "export", Path(tmp) / "project"
        made: dict[str, Any] = {}

        def export(chosen: Any) -> Any:  # widened where the Flash holds them, as the measured builds are
            made["result"] = export_model(model, export_dir, wide=chosen, **plan.export_args())
            generate_measured_project(export_dir, proj, board)
            made["counts"] = instrument_stage(made["result"], proj)
            if made["counts"] is None:
                raise TvmPatchError(f"{model} under {plan}: no patch stage to instrument; give --split and --patches")
            return made["result"]

        result, report = fit_wide(export, lambda _r: build_project(proj, runner="emulator", run=True, profile=True))
        counts, run = made["counts"], report["run"]
        n_calls = len(result.program.calls)
    unit = "instructions" if run.get("instructions") is not None else "cycles"
    measured = {kk["index"]: kk[unit] for kk in run.get("kernels", [])}
    coef, names = np.array(model_.stage_coef), model_.stage_names
    layers = []
    for row in measured_nests(counts, measured, n_calls, int(plan.halo == "cache")):
        terms = np.array(stage_terms(row, names))
        pred, meas = float(terms @ coef), row["measured"]
        top = sorted(((float(v * c), n) for n, v, c in zip(names, terms, coef) if v * c), reverse=True)[:5]
        layers.append({"loop_nest": row["loop_nest"], "layers": sorted(k.removeprefix("wmacs:").removesuffix("_weight")
                                                                       for k in row["exec"] if k.startswith("wmacs:")),
                       "measured": meas, "predicted": round(pred), "error": round(pred / meas - 1, 4) if meas else None,
                       "terms": {n: round(v) for v, n in top}})
    return {"model": model, "plan": plan.to_json(), "board": board, "unit": unit, "wide_narrowed": result.wide_narrowed,
            "stage_measured": measured.get(0),
            "loop_nests_measured": sum(x["measured"] or 0 for x in layers),
            "loop_nests_predicted": sum(x["predicted"] for x in layers), "loop_nests": layers}


EXTRA_PATCHES = 3  # the extra held-out runs: the held-out networks with 3x3 patches at the middle valid split
# the blind check (docs/cost-model.md, round 6): zoo networks that neither training nor any model decision saw,
# measured on the H743's build (the M7 board with the most SRAM and Flash: none of them fits the F746 or the F412)
BLIND_MODELS = ("zoo:mcunet-in2:int8", "zoo:mbv2-w0.35-r144:int8", "zoo:proxyless-w0.3-r176:int8")
BLIND_BOARD = "h743"


def _measure_runs(kind: str, core: str, runs: list[tuple[str, str, Any, str]]) -> Path:
    """Measure ``runs`` ((id, model, a function giving its Plan or None, board) each) into a resumable file in
    the cache, a run that does not fit or has no plan kept as ``failed``; write it to
    bench/cost_data/<core>_<kind>.jsonl.gz."""
    work = _work_file(f"{kind}_{core}_{kernels_fingerprint()}.jsonl")
    done = done_ids(work)
    with tempfile.TemporaryDirectory(prefix=f"tvmp_{kind}_") as tmp:
        for item_id, model, plan_of, board in runs:
            if item_id in done:
                continue
            try:
                plan = plan_of()
                if plan is None:
                    raise TvmPatchError(f"{model}: no valid split for {item_id}")
                rec = measure(model, plan, board, work_dir=tmp)
                rec.update(id=item_id, heldout=True, synth=None,
                           item={"model": model, "patched": plan.split is not None})
            except (TvmPatchError, ProjectError) as e:
                rec = {"id": item_id, "failed": str(e).splitlines()[0]}
            with open(work, "a") as f:
                f.write(json.dumps(rec) + "\n")
    out = DATA / f"{core}_{kind}.jsonl.gz"
    write_atomic(out, gzip.compress(work.read_bytes(), 9, mtime=0))
    (PARTIAL / f"{work.name}.gz").unlink(missing_ok=True)
    return out


def measure_extra(core: str) -> Path:
    """Measure the extra held-out runs of ``core`` (the held-out real networks with EXTRA_PATCHES x EXTRA_PATCHES
    patches at the middle valid split, halos recomputed: deeper stages than the 4x4 ones, a check beside the
    issue's held-out set, which training never reads either) into bench/cost_data/<core>_extra.jsonl.gz."""
    def plan_of(model: str) -> Any:
        splits = valid_splits(build_graph(load_model(model).mod), (EXTRA_PATCHES, EXTRA_PATCHES))
        return Plan(splits[len(splits) // 2], (EXTRA_PATCHES, EXTRA_PATCHES)) if splits else None

    return _measure_runs("extra", core, [(f"heldout{EXTRA_PATCHES}x{EXTRA_PATCHES}-{Path(m).name}", m,
                                          lambda m=m: plan_of(m), BOARD_OF_CORE[core]) for m in heldout_models()])


def measure_blind() -> Path:
    """Measure the blind check's runs on the M7 (BLIND_MODELS layer by layer and with the held-out set's patch
    plan, 4x4 patches at the middle split, in both halo modes) into bench/cost_data/m7_blind.jsonl.gz."""
    runs = []
    for m in BLIND_MODELS:
        runs += [(f"blind-{m}-lbl", m, Plan, BLIND_BOARD),
                 (f"blind-{m}-patch", m, lambda m=m: heldout_patch_plan(m, "recompute"), BLIND_BOARD),
                 (f"blind-{m}-cache", m, lambda m=m: heldout_patch_plan(m, "cache"), BLIND_BOARD)]
    return _measure_runs("blind", "m7", runs)


def markdown(results: dict[str, dict]) -> str:
    """The per-core and per-network tables."""
    lines = ["# Latency cost model: held-out whole networks", "",
             "| core | n held out | MAPE | within 10 % | goal (95 %) | per op MAPE |", "| --- | --: | --: | --: | --- | --- |"]
    for core, r in results.items():
        ops = ", ".join(f"{op} {v['mape']:.1%}" for op, v in r["per_op"].items())
        goal = "met" if r["within_10pct_share"] >= GOAL_SHARE else "not met"
        lines.append(f"| {core} | {r['n_heldout']} | {r['mape']:.1%} | {r['within_10pct_share']:.0%} | {goal} | {ops} |")
    lines += ["", "| core | network | plan | measured | predicted | error |", "| --- | --- | --- | --: | --: | --: |"]
    for core, r in results.items():
        for n in r["networks"]:
            plan = "layer by layer" if n["plan"]["split"] is None else \
                f"split {n['plan']['split']}, {n['plan']['patches'][0]}x{n['plan']['patches'][1]}, {n['plan']['halo']}"
            lines.append(f"| {core} | {Path(n['model']).name} | {plan} | {n['measured']:,} | {n['predicted']:,} | "
                         f"{n['error']:+.1%} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Evaluate every core with data; write JSON and markdown."""
    p = argparse.ArgumentParser(prog="python -m bench.cost_model", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="bench_out", help="output folder (default bench_out)")
    p.add_argument("--retrain", action="store_true",
                   help="re-collect the measurements on this installation's kernels and retrain the shipped models "
                        "first (about 40 minutes a core on a 2-core machine)")
    p.add_argument("--core", choices=CORES, action="append", help="only this core (repeatable; default both)")
    p.add_argument("--measure-extra", action="store_true",
                   help="first measure the extra held-out runs (3x3 patches at the middle split, about 10 minutes "
                        "a core) into bench/cost_data/<core>_extra.jsonl.gz; they are evaluated whenever present")
    p.add_argument("--measure-blind", action="store_true",
                   help="first measure the blind check's runs on the M7 (3 unseen zoo networks, about 10 minutes) "
                        "into bench/cost_data/m7_blind.jsonl.gz; they are evaluated whenever present")
    p.add_argument("--save-partial", action="store_true",
                   help="instead: save this kernel fingerprint's unfinished re-collection (the cache's resumable "
                        "files) to bench/cost_data/partial, where --retrain on another machine resumes it")
    p.add_argument("--compare-stage", metavar="FILE.jsonl", type=Path,
                   help="instead: the patch stage's linear model against the per-layer one on these measurements "
                        "(JSON: cross-validated and held-out stage errors)")
    p.add_argument("--stage-layers", metavar="MODEL",
                   help="instead: measure MODEL's patch stage loop nest by loop nest on QEMU (--board, --split, "
                        "--patches, --halo) beside the stage model's prediction of each (JSON)")
    p.add_argument("--board", default="f746", help="--stage-layers: the board (default f746, the M7)")
    p.add_argument("--split", type=int, help="--stage-layers: the split")
    p.add_argument("--patches", type=int, default=4, help="--stage-layers: patches a side (default 4)")
    p.add_argument("--halo", default="recompute", help="--stage-layers: recompute or cache")
    args = p.parse_args(argv)
    if args.save_partial:
        print("\n".join(str(f) for f in save_partial()) or "nothing to save: no collection of these kernels in the cache")
        return 0
    if args.stage_layers:
        print(json.dumps(stage_layers(args.stage_layers, Plan(args.split, (args.patches, args.patches), args.halo),
                                      args.board), indent=1))
        return 0
    if args.compare_stage:
        print(json.dumps(stage_comparison(read_records(args.compare_stage)), indent=1))
        return 0
    cores = args.core or list(CORES)
    if args.retrain:
        for core in cores:
            print(f"{core}: {retrain(core)}", flush=True)
    if args.measure_extra or args.retrain:  # a retrain measures the extra held-out runs on its kernels too
        for core in cores:
            print(f"{core}: {measure_extra(core)}", flush=True)
    if args.measure_blind or (args.retrain and "m7" in cores):  # and the blind check's, on the M7
        print(f"m7: {measure_blind()}", flush=True)
    results = {core: evaluate(for_core(core), read_records(DATA / f"{core}.jsonl.gz")) for core in cores
               if (DATA / f"{core}.jsonl.gz").is_file()}
    extra = {core: evaluate(for_core(core), read_records(DATA / f"{core}_extra.jsonl.gz")) for core in cores
             if (DATA / f"{core}_extra.jsonl.gz").is_file()}
    # a blind check (docs/cost-model.md, round 6): zoo networks no training or model decision saw, the ones that fit
    # a board (the M7's h743), measured once; their records that failed (did not fit) are skipped
    blind = {core: evaluate(for_core(core), [r for r in read_records(DATA / f"{core}_blind.jsonl.gz") if "failed" not in r])
             for core in cores if (DATA / f"{core}_blind.jsonl.gz").is_file()}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "cost_model.json").write_text(json.dumps(dict(results, extra_heldout=extra, blind=blind), indent=1) + "\n")
    text = markdown(results) + (f"\n## Extra held-out runs: {EXTRA_PATCHES}x{EXTRA_PATCHES} patches at the middle split "
                                "(not the issue's set)\n\n" + markdown(extra).split("\n", 2)[2] if extra else "")
    text += ("\n## Blind check: zoo networks unseen by training and by every model decision\n\n"
             + markdown(blind).split("\n", 2)[2] if blind else "")
    (out / "cost_model.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
