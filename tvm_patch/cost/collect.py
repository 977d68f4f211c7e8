"""``tvm-patch costmodel collect``: measure a seeded set of networks on a board and append the records to a
JSONL file. Resumable: every item has an id, items already in the file are skipped, and each record is
one flushed line, so Ctrl-C and a re-run continue where it stopped.

Items: ``n`` synthetic networks (synth.py), each layer by layer and under one seeded patch plan (a valid
split, 2..4 patches a side, a halo mode; ``seed`` >= 1: with inserted plain convolutions and a second patch
plan; ``seed`` >= 2: as NHWC modules in TFLite's form, nhwc.py; ``seed`` 4, DEEP_ROUND: deep networks, patched
only; ``seed`` 6, NARROW_ROUND: the same with the stage's weights kept int8; ``seed`` 7, INT8_ROUND: round 2's
networks layer by layer with every weight int8; ``seed`` 8 and 9, KIND_ROUNDS: deep networks of one layout, patch
grid or halo mode that the deep round draws too rarely), for training; then the held-out real
networks (zoo and MLPerf Tiny models, layer by layer and 4x4 patches at the middle valid split, the halos
recomputed and cached), which training never reads and ``eval`` scores.
"""

from __future__ import annotations

import gzip
import json
import random
import tempfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from microtvm_projects.errors import FitError, ProjectError
from tqdm import tqdm

from tvm_patch.atomic import write_atomic
from tvm_patch.cost.features import FEATURES_VERSION
from tvm_patch.cost.fingerprint import kernels_fingerprint
from tvm_patch.cost.measure import core_key, export_plan, measure
from tvm_patch.cost.plan import HALO_MODES, Plan
from tvm_patch.cost.adaptive import near_items
from tvm_patch.cost.stage_layers import stage_nest_counts
from tvm_patch.cost.synth import nhwc_model, sample_deep, sample_inserts, sample_near, sample_net, write_onnx
from tvm_patch.errors import TvmPatchError
from tvm_patch.frontend import load
from tvm_patch.graph import build_graph
from tvm_patch.names import STAGE_FUNC
from tvm_patch.paths import cache_dir, shared_models_dir
from tvm_patch.split import valid_splits

# The training set of the shipped models, as (seed, n) rounds: MCUNet-space ONNX networks; with inserted
# plain k x k convolutions and a second patch plan; NHWC modules in TFLite's form (see items()).
DEFAULT_ROUNDS = ((0, 30), (2, 12), (4, 24), (5, 8), (6, 12), (7, 12), (8, 12), (9, 12))
# Rounds 4 and 5 are the deep rounds (items()): deep networks patched only, for the patch stage's model; round 5
# with 5x5 to 8x8 patches (plan's grids go to 8x8), where most of a border patch's positions are out of the image.
# Round 6 as round 4 with the stage's weights int8 (not widened), as a board whose Flash cannot hold them widened
# builds it (`board_build.fit_wide`; mcunet-in0's cache stage on the F412 and F746): no training stage had that form.
DEEP_ROUND, MANY_PATCHES_ROUND, NARROW_ROUND = 4, 5, 6
# Round 7: networks as round 2's, layer by layer, every kernel's weights int8 (`--wide-weights none`): the 1x1 and
# dense kernels a small Flash keeps int8 (mcunet-in0's late layers on the F412 and F746), which the other rounds
# hardly have (5 of 156 training networks on either core before it); kernels round 28 made them 13 % faster, and
# both models then missed mcunet-in0 layer by layer by +12 % and +15 %, those kernels overpredicted by 40-70 %.
INT8_ROUND = 7
# Rounds 8 and 9, the kind rounds: the deep round's kind of network, all of one kind the deep round draws too rarely
# (its stages cross-validated worse than the others, and held-out stages of that kind missed), patched only:
# round 8 NHWC (TFLite's form) with the halos cached, the MLPerf Tiny models' cache-mode stages (copy-first and
# top-left depthwise layers, row and column caches of interleaved channels): 8 of 86 training stages on the M7
# before it, cross-validated 12.8 % off against 5-8 % for the other kinds; round 9 NCHW (ONNX) with 3x3 patches
# and the halos recomputed, the zoo networks' deep 3x3 stages (1 training stage of that kind on the M7 after
# round 8; the held-out 3x3 recompute runs of mcunet-in0, mbv2-w0.3-r80, mcunet-in1 overpredicted by 9.5-12.4 %).
# (nhwc, patches a side or None: drawn as the deep round does, halo mode, the items' id tag)
KIND_ROUNDS = {8: (True, None, "cache", "nhwc-cache"), 9: (False, 3, "recompute", "3x3-recompute")}
# the kernel NARROW_ROUND keeps int8: the stage's C name (export/lower.py's ``tvmp_<name>``)
STAGE_KERNEL = f"tvmp_{STAGE_FUNC}"
# Then an adaptive round (adaptive.py): (round number, networks): neighbours of the worst-predicted ones.
ADAPTIVE_ROUND = (3, 12)
HELDOUT_ZOO = ("mcunet-in0", "mbv2-w0.3-r80", "proxyless-w0.25-r112", "mcunet-in1")
HELDOUT_MLPERF = ("kws_int8", "vww_96_int8", "resnet8_int8")


def default_data(core: str) -> Path:
    """The measurements file of ``core`` in the cache (collect appends to it, train and eval read it)."""
    return cache_dir("cost") / f"measurements_{core}.jsonl"


def default_model(core: str) -> Path:
    """Where ``train`` writes the model of ``core`` unless told otherwise."""
    return cache_dir("cost") / f"costmodel_{core}.json"


def heldout_models() -> list[str]:
    """The real networks kept out of training (model specs)."""
    mlperf = shared_models_dir() / "mlperf_tiny"
    return [f"zoo:{n}:int8" for n in HELDOUT_ZOO] + [str(mlperf / f"{n}.tflite") for n in HELDOUT_MLPERF]


def _module(model: Any) -> Any:
    """The Relax module of a model spec, or the module itself."""
    return load(model).mod if isinstance(model, str) else model


def _patched_plan(model: Any, seed: int, deep: bool = False, many: bool = False,
                  halo: str | None = None, grid: int | None = None) -> Plan | None:
    """A seeded valid patch plan for ``model``, or None when no split can be patched. ``deep``: the deep round's
    plans, the paper's 3x3-4x4 patches (``many``: 5x5-8x8) at a split in the deeper half of the valid ones (long
    stages), the halos recomputed two times in three; ``halo``, ``grid``: this halo mode, these patches a side
    instead of drawn ones (the draws still made, so that the other draws stay those of the seed)."""
    rng = random.Random(seed)
    p = rng.choice((5, 6, 8) if many else (3, 4, 4) if deep else (2, 2, 3, 4))
    p = grid or p
    splits = valid_splits(build_graph(_module(model)), (p, p))
    if not splits:
        return None
    split = rng.choice(splits[len(splits) // 2:] if deep else splits)
    drawn = rng.choice(("recompute", "recompute", "cache") if deep else HALO_MODES)
    return Plan(split, (p, p), halo or drawn)


def shallower_plans(model: Any, plan: Plan) -> Iterator[Plan]:
    """``plan``, then the same patches and halo mode at each shallower valid split, deepest first: a cache-mode
    stage's arena grows with its depth (round 8's deep NHWC networks at the deeper half of their splits need
    0.5-10 MB), so the deepest one that fits the board is the one measured. Lazy: the splits are only looked up
    when ``plan`` did not fit."""
    yield plan
    splits = valid_splits(build_graph(_module(model)), plan.patches)
    yield from (Plan(s, plan.patches, plan.halo) for s in sorted(splits, reverse=True) if s < plan.split)


def first_fitting(plans: Iterable[Plan], run: Callable[[Plan], dict[str, Any]]) -> dict[str, Any]:
    """``run`` of the first of ``plans`` whose firmware fits the board's SRAM (a Flash overflow, or the last
    plan's SRAM overflow, is raised: the caller records the item as failed)."""
    error = None
    for plan in plans:
        try:
            return run(plan)
        except FitError as e:
            if e.flash_over is not None:
                raise
            error = e
    raise error


def items(n: int, seed: int, heldout: bool = True) -> Iterator[tuple[str, dict[str, Any]]]:
    """(id, item) pairs in collection order; an item is {"synth": seed} or {"model": spec}, with "patched".
    Round DEEP_ROUND: deep networks (synth.sample_deep), NCHW and NHWC in turn, patched only (_deep_plan);
    NARROW_ROUND: the same with ``narrow`` (the stage's weights int8); KIND_ROUNDS: the same of one kind."""
    if seed in KIND_ROUNDS:
        nhwc, grid, halo, tag = KIND_ROUNDS[seed]
        for i in range(n):
            s = seed * 100_000 + i
            yield f"synth-{s}-deep-{tag}", {"synth": s, "deep": True, "inserts": False, "nhwc": nhwc, "patched": True,
                                            "many": False, "halo": halo, "fit_split": True} | ({"grid": grid} if grid else {})
        n = 0
    if seed in (DEEP_ROUND, MANY_PATCHES_ROUND, NARROW_ROUND):
        many, narrow = seed == MANY_PATCHES_ROUND, seed == NARROW_ROUND
        for i in range(n):
            s = seed * 100_000 + i
            nhwc = i % 2 == 1
            item = {"synth": s, "deep": True, "inserts": False, "nhwc": nhwc, "patched": True, "many": many}
            yield f"synth-{s}-deep-{'nhwc-' if nhwc else ''}{'narrow-' if narrow else ''}patch", \
                item | ({"narrow": [STAGE_KERNEL]} if narrow else {})
        n = 0
    if seed == INT8_ROUND:
        for i in range(n):
            s = seed * 100_000 + i
            nhwc = i % 2 == 1
            yield f"synth-{s}-{'nhwc-' if nhwc else ''}int8-lbl", \
                {"synth": s, "inserts": True, "nhwc": nhwc, "patched": False, "wide": "none"}
        n = 0
    for i in range(n):
        s = seed * 100_000 + i
        # round 0: the MCUNet-space networks; later rounds add plain k x k convolutions and a second patch plan
        # (where round 0's held-out error was largest)
        more, nhwc = seed >= 1, seed >= 2
        tag = "nhwc-" if nhwc else ""
        common = {"synth": s, "inserts": more, "nhwc": nhwc}
        yield f"synth-{s}-{tag}lbl", common | {"patched": False}
        yield f"synth-{s}-{tag}patch", common | {"patched": True}
        if more:
            yield f"synth-{s}-{tag}patch2", common | {"patched": True}
    if heldout:
        for m in heldout_models():
            yield f"heldout-{Path(m).name}-lbl", {"model": m, "patched": False}
            yield f"heldout-{Path(m).name}-patch", {"model": m, "patched": True}
            yield f"heldout-{Path(m).name}-cache", {"model": m, "patched": True, "halo": "cache"}


def done_ids(path: Path) -> set[str]:
    """The ids already recorded in ``path`` (a torn last line from an interrupted run is ignored)."""
    ids = set()
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                ids.add(json.loads(line)["id"])
            except (ValueError, KeyError, TypeError):
                continue
    return ids


def drop_torn_line(path: Path) -> None:
    """Cut a last line left unfinished by an interrupted run, so the next record starts on its own line."""
    if not path.is_file():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with open(path, "r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)


def read_records(path: Path) -> list[dict[str, Any]]:
    """Every complete record of a JSONL file (``.jsonl.gz``: gzip-compressed); a missing file is a one-line
    error."""
    return [rec for rec in _all_lines(path) if "rows" in rec]


def _all_lines(path: Path) -> list[dict[str, Any]]:
    """Every record of a measurements file, the failed runs' (no rows) included; a missing or unreadable file is
    a one-line error."""
    if not path.is_file():
        raise TvmPatchError(f"{path}: no such measurements file; run `tvm-patch costmodel collect` first")
    try:
        text = gzip.decompress(path.read_bytes()).decode() if path.suffix == ".gz" else path.read_text()
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise TvmPatchError(f"{path}: unreadable measurements ({type(e).__name__}); collect again") from None
    out = []
    for line in text.splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict):
            out.append(rec)
    return out


def collect(board: str, out: Path, n: int = 40, seed: int = 0, runner: str = "emulator", heldout: bool = True,
            timeout_sec: float = 600.0, adaptive: int = 0) -> dict[str, int]:
    """Measure the items not yet in ``out``; returns counts (measured, skipped, failed). ``adaptive`` > 0: the
    items are instead neighbours of the ``adaptive`` training networks of ``out`` the model predicts worst
    (cross-validated; round number ``seed``)."""
    core = core_key(board)  # an unknown board fails here
    out.parent.mkdir(parents=True, exist_ok=True)
    drop_torn_line(out)
    done = done_ids(out)
    chosen = near_items(read_records(out), core, adaptive, seed) if adaptive > 0 else items(n, seed, heldout)
    todo = [(i, it) for i, it in chosen if i not in done]
    counts = {"measured": 0, "skipped": len(done), "failed": 0}
    with tempfile.TemporaryDirectory(prefix="tvmp_collect_") as tmp, open(out, "a") as f:
        for item_id, item in tqdm(todo, desc=f"collect {board}", unit="net"):
            try:
                model = _item_model(item, item_id, tmp)
                plan = _patched_plan(model, zlib.crc32(item_id.encode()), item.get("deep", False),
                                     item.get("many", False), item.get("halo"), item.get("grid")) \
                    if item["patched"] else Plan()
                if item["patched"] and "model" in item:
                    plan = heldout_patch_plan(model, item.get("halo", "recompute"))
                if plan is None:
                    counts["failed"] += 1
                    continue
                rec = first_fitting(shallower_plans(model, plan) if item.get("fit_split") else [plan],
                                    lambda p: measure(model, p, board, runner, timeout_sec, tmp,
                                                      label=f"{item_id} (NHWC module)" if item.get("nhwc") else None,
                                                      loop_nests=bool(item.get("deep")), narrow=item.get("narrow", ()),
                                                      wide=item.get("wide", "auto")))
            except (TvmPatchError, ProjectError) as e:  # cannot be built or does not fit: recorded, skipped
                f.write(json.dumps({"id": item_id, "failed": str(e).splitlines()[0]}) + "\n")
                f.flush()
                counts["failed"] += 1
                continue
            rec.update(id=item_id, heldout="model" in item, synth=item.get("synth"), item=item)
            f.write(json.dumps(rec) + "\n")
            f.flush()
            counts["measured"] += 1
    return counts


def _item_model(item: dict[str, Any], item_id: str, tmp: str) -> Any:
    """The model of a collection item: a spec, a synthetic ONNX file written to ``tmp``, or an NHWC module."""
    if "synth" not in item:
        return item["model"]
    net = sample_deep(item["synth"]) if item.get("deep") else \
        sample_near(item["synth"], item["near"]) if "near" in item else sample_net(item["synth"])
    inserts = sample_inserts(net, item["synth"]) if item["inserts"] else ()
    if item.get("nhwc"):
        return nhwc_model(net, inserts)
    return str(write_onnx(net, Path(tmp) / f"{item_id}.onnx", inserts))


def _item_of(rec: dict[str, Any]) -> dict[str, Any]:
    """The item a record was measured from (recorded since features 2; older records: from the id)."""
    if "item" in rec:
        return rec["item"]
    if rec.get("synth") is None:
        return {"model": rec["model"]}
    s = int(rec["synth"])
    return {"synth": s, "inserts": s >= 100_000, "nhwc": s >= 200_000}


def refeature(path: Path, out: Path) -> dict[str, int]:
    """Recompute the feature rows of every record of ``path`` measured on this installation's kernels (the
    same kernels fingerprint: the measured counts still hold) with this version's features, into ``out``;
    records of other kernels are dropped. For a feature change that needs no new measurement. Resumable: the
    records are written one by one to ``out``.partial, which a second run continues; ``out`` appears complete."""
    fp = kernels_fingerprint()
    counts = {"refeatured": 0, "dropped": 0}
    partial = out.with_name(out.name + ".partial")
    drop_torn_line(partial)
    done = done_ids(partial)
    with tempfile.TemporaryDirectory(prefix="tvmp_refeature_") as tmp, open(partial, "a") as f:
        for rec in tqdm(_all_lines(path), desc="refeature", unit="net"):
            if rec.get("id") in done:
                counts["refeatured"] += "rows" in rec
                continue
            if "rows" not in rec:  # a run that failed (did not fit the board): kept as it was
                f.write(json.dumps(rec) + "\n")
                continue
            if rec.get("kernels_fingerprint") != fp:
                counts["dropped"] += 1
                continue
            rec = _refeatured(rec, tmp)
            if rec is None:
                counts["dropped"] += 1
                continue
            f.write(json.dumps(rec) + "\n")
            f.flush()
            counts["refeatured"] += 1
    lines = [line for line in partial.read_text().splitlines() if line.strip()]
    write_atomic(out, gzip.compress("".join(line + "\n" for line in lines).encode(), mtime=0)
                 if out.suffix == ".gz" else "".join(line + "\n" for line in lines))
    partial.unlink()
    return counts


def _refeatured(rec: dict[str, Any], tmp: str) -> dict[str, Any] | None:
    """``rec`` with its rows (and loop nests) featured by this version's code, its measured counts kept; None
    when the export no longer has the same kernels."""
    item = _item_of(rec)
    model = _item_model(item, rec["id"], tmp)
    plan = Plan(rec["plan"]["split"], tuple(rec["plan"]["patches"]) if rec["plan"]["patches"] else None,
                rec["plan"]["halo"])
    narrowed = set(rec.get("wide_narrowed", []))  # as measured: the kernels kept int8 to fit the Flash
    result, rows = export_plan(model, plan, Path(tmp) / "export", lambda name: name not in narrowed)
    if [r["func"] for r in rows] != [r["func"] for r in rec["rows"]]:
        return None
    for new, old in zip(rows, rec["rows"]):
        new["measured"] = old["measured"]
    rec = dict(rec, rows=rows, features_version=FEATURES_VERSION, item=item)
    if rec.get("loop_nests"):  # the stage's loop nests counted again (their measured counts kept)
        nests = stage_nest_counts(result) or []
        if len(nests) == len(rec["loop_nests"]):
            rec["loop_nests"] = [dict(old, exec=e) for old, e in zip(rec["loop_nests"], nests)]
        else:
            rec.pop("loop_nests")
    return rec


def heldout_patch_plan(model: Any, halo: str = "recompute") -> Plan | None:
    """A held-out network's patch plan: 4x4 patches (the paper's setting) at the middle valid split, the halos
    recomputed or cached."""
    graph = build_graph(_module(model))
    splits = valid_splits(graph, (4, 4))
    return Plan(splits[len(splits) // 2], (4, 4), halo) if splits else None
