"""The `tvm-patch` command line: zoo, profile, verify, build, run, tune, rpc-server, search.

Bad input is reported as one line on stderr with exit code 2; set TVM_PATCH_DEBUG=1 for tracebacks.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

from microtvm_projects.boards import get_board
from microtvm_projects.errors import ProjectError
from microtvm_projects.firmware import load_project
from microtvm_projects.options import EMULATOR_MEMORY

from tvm_patch import report, zoo
from tvm_patch.atomic import write_atomic
from tvm_patch.board_build import build_for_board, run_project
from tvm_patch.cost import collect as cost_collect, latency as cost_latency
from tvm_patch.cost.evaluate import evaluate as cost_evaluate
from tvm_patch.cost.measure import core_key
from tvm_patch.cost.search import search as plan_search
from tvm_patch.errors import TvmPatchError
from tvm_patch.export import export_model
from tvm_patch.frontend import load
from tvm_patch.plot import plot_profile
from tvm_patch.reference import ORT_INT8_KERNELS, verify_against_reference
from tvm_patch.search import search, write_results
from tvm_patch.search.output import format_summary
from tvm_patch.tune import RUNNERS, parse_address, start_server, tune_model, tuned_kernels
from tvm_patch.verify import verify_patch

PROG = "tvm-patch"


HALO_HELP = ("with --patches: recompute (default) the overlapping halos, cache them (row and column caches: each "
             "intermediate element computed once) or auto (the fewest MACs among the modes within 10%% of the "
             "smaller peak)")

def _cmd_zoo(args: argparse.Namespace) -> int:
    if args.export:
        if not args.output:
            raise TvmPatchError("zoo --export NAME needs -o FILE.onnx")
        proto = zoo.onnx_model(args.export, int8=args.int8)
        _write_bytes(args.output, proto.SerializeToString())
        print(f"wrote {args.output}")
        return 0
    for name in zoo.names():
        print(f"{name:24s} {zoo.describe(name)}")
    return 0


def _cmd_profile(args: argparse.Namespace) -> int:
    result = report.profile(args.model, patches=args.patches, split=args.split, halo=args.halo)
    if args.plot:
        plot_profile(result, args.plot)
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print(report.format_profile(result))
        if args.plot:
            print(f"plot written to {args.plot}")
    return 0


def _cmd_build(args: argparse.Namespace) -> int:
    split = int(args.split) if args.split is not None and args.split.isdigit() else args.split
    if args.board:
        return _build_board(args, split)
    if args.run or args.profile:
        raise TvmPatchError("--run and --profile need --board f412|f746|h743")
    tuned = tuned_kernels(args.tuning_db, args.board)
    result = export_model(args.model, args.output, patches=args.patches, split=split, emit=args.emit,
                          check=args.check, integer=not args.float_chains, rounding=args.rounding,
                          kernels=args.kernels, halo=args.halo,
                          wide=(lambda _name: True) if args.wide_weights == "all" else None,
                          **(tuned.export_args() if tuned else {}))
    if args.json:
        print(json.dumps(dict(result.to_json(), **({"tuning": tuned.to_json()} if tuned else {})), indent=1))
    else:
        print(_build_summary(result))
    if result.check is not None and not result.check.passed:
        print(f"{PROG}: check failed: {result.check.summary()}", file=sys.stderr)
        return 1
    return 0


def _build_summary(result) -> str:
    def size(n: int | None) -> str:
        return "n/a" if n is None else f"{n} B ({n / 1024:.1f} kB)"

    lines = [
        f"wrote {result.out_dir}: {', '.join(result.files)}",
        f"arena:               {size(result.arena_bytes)}  ({result.calls} kernel calls, {result.inplace_calls} in place)",
        f"planner lower bound: {size(result.lower_bound_bytes)}",
        f"analytic peak:       {size(result.analytic_peak_bytes)}  (int8 activations, paper convention)",
        *([f"analytic patch peak: {size(result.analytic_patch_peak_bytes)}  (patch mode, input streamed from the caller's buffer)"]
          if result.analytic_patch_peak_bytes is not None else []),
        *([f"patch plan:          {result.plan['patches']}x{result.plan['patches']} patches, "
           f"{result.plan['split_layers']} layers, {result.plan['halo_choice']}"]
          if result.plan.get("halo_choice") else []),
        f"TVM static plan:     {size(result.tvm_static_plan_bytes)}  (StaticPlanBlockMemory storages)",
        f"TFLM arena head:     {size(result.tflm_arena_head_bytes)}",
        f"weights:             {size(result.weights_bytes)}" + _widened_text(result.wide_weights, result.wide_narrowed)
        + _tables_text(result.weight_sum_tables),
        f"export time:         {result.export_seconds:.1f} s",
    ]
    if result.check is not None:
        lines.append(f"check: {result.check.summary()}")
    return "\n".join(lines)


def _planned(args: argparse.Namespace, split: int | str | None) -> tuple[int | None, int | str | None, str,
                                                                          dict | None]:
    """(patches, split, halo, the plan's JSON) of a board build: the options given, or with none of
    --patches/--split (and --plan auto) `tvm-patch plan`'s answer (the fastest plan that fits the board)."""
    if args.patches is not None or args.split is not None or args.plan == "none":
        return args.patches, split, args.halo, None
    res = plan_search(args.model, args.board, "latency", args.cost_model, fast=True, tuning_db=args.tuning_db)
    out = res.to_json()
    if res.chosen is None:
        raise TvmPatchError(_no_plan_message(args.model, args.board, res, out) + "; give --patches/--split or "
                            "--plan none to build anyway")
    summary = {k: out[k] for k in ("split", "split_layers", "patches", "halo", "sram_bytes", "flash_bytes",
                                   "predicted_latency_ms", "latency_estimated")}
    summary["source"] = "tvm-patch plan --fast (the first plan that fits in increasing estimated latency)"
    p = res.chosen.plan
    return (None if p["patches"] is None else p["patches"][0]), p["split"], p["halo"], summary


def _no_plan_message(model: str, board: str, res, out: dict) -> str:
    if res.reason:
        return f"no plan of {model} fits {board}: {res.reason}"
    return f"no plan of {model} fits {board}" + (
        f": the closest misses by {out['misses_sram_by_bytes']:,} B of SRAM and {out['misses_flash_by_bytes']:,} "
        "B of Flash" if res.best_miss else ": no plan could be exported")


def _build_board(args: argparse.Namespace, split: int | str | None) -> int:
    if args.check or args.emit != "c":
        raise TvmPatchError("--check and --emit are host options; a board build checks its run against the host "
                            "build with --run")
    tuned = tuned_kernels(args.tuning_db, args.board)
    patches, split, halo, plan = _planned(args, split)
    if plan is not None and not args.json:
        print(f"plan: {_plan_text(plan)}", flush=True)
    built = build_for_board(args.model, args.output, args.board, patches=patches, split=split, halo=halo,
                             runner=args.run or "emulator", run=args.run is not None, profile=args.profile,
                             opt=args.opt, stack_bytes=args.stack, seed=args.seed, timeout_sec=args.timeout,
                             port=args.port, probe=args.probe, integer=not args.float_chains,
                             rounding=args.rounding, kernels=args.kernels, wide=args.wide_weights,
                             emulator_memory=args.emulator_memory, **(tuned.export_args() if tuned else {}))
    if tuned:
        built["tuning"] = tuned.to_json()
    if plan is not None:
        built["plan"] = plan
    return _board_output(args, built)


def _widened_text(wide: dict[str, int] | None, kept: list[str] | None) -> str:
    """A summary's note on the weights stored widened (``--wide-weights``) and those kept int8, or nothing."""
    wide, kept = wide or {}, kept or []
    if not wide and not kept:
        return ""
    return (f" (weights of {len(wide)} kernels widened: +{sum(wide.values()):,} B"
            + (f"; {len(kept)} kept int8 to fit" if kept else "") + ")")


def _tables_text(tables: dict[str, int] | None) -> str:
    """A summary's note on the padded taps' weight-sum tables in Flash (export/weight_sums.py), or nothing."""
    if not tables:
        return ""
    return f" (border-tap sum tables of {len(tables)} kernels: +{sum(tables.values()):,} B)"


def _plan_text(plan: dict) -> str:
    where = "layer by layer" if plan["split"] is None else \
        f"split {plan['split']}, {plan['patches'][0]}x{plan['patches'][1]} patches, halo {plan['halo']}"
    return (f"{where} (from tvm-patch plan: SRAM {plan['sram_bytes']:,} B, predicted "
            f"{plan['predicted_latency_ms']:.2f} ms{' (estimated)' if plan['latency_estimated'] else ''})")


def _board_output(args: argparse.Namespace, result: dict) -> int:
    """Print a board build / run (JSON or a summary); exit 1 when a run's outputs differ from the host build."""
    run = result.get("run")
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print(_board_summary(result))
    if run is not None and not run["bit_exact"]:
        print(f"{PROG}: the {run['runner']} run's outputs {run['mismatched_outputs']} differ from the host build",
              file=sys.stderr)
        return 1
    return 0


def _board_summary(result: dict) -> str:
    c = result["conditions"]
    lines = []
    if "elf" in result:
        lines += [
            f"{result['board']}: {result['elf']} ({c['compiler']}, -{c['opt']}, {c['clock_mhz']} MHz, caches "
            f"{c['caches']})",
            f"SRAM:  {result['sram_bytes']:,} of {result['board_sram_bytes']:,} B (arena {result['arena_bytes']:,} + "
            f"stack {result['stack_bytes']:,} + data/bss {result['data_bss_bytes']:,})",
            f"Flash: {result['flash_bytes']:,} of {result['board_flash_bytes']:,} B"
            + _widened_text(result.get("export", {}).get("wide_weights"), result.get("export", {}).get("wide_narrowed"))
            + _tables_text(result.get("export", {}).get("weight_sum_tables")),
        ]
        if result.get("emulator_memory") == "machine":
            lines.append(f"linked with the QEMU machine's memory (--emulator-memory machine): "
                         f"{'fits' if result['fits'] else 'does NOT fit'} {result['board']}")
    run = result.get("run")
    if run is not None:
        if run["runner"] == "emulator":
            lines.append(f"run (QEMU): {run['instructions']:,} instructions; est. {run['est_cycles']:,} cycles at CPI "
                         f"{run['cpi']} = {run['latency_ms']:.2f} ms at {c['clock_mhz']} MHz (estimated)")
        else:
            lines.append(f"run (board): {run['cycles']:,} cycles = {run['latency_ms']:.2f} ms at {c['clock_mhz']} MHz")
        unit = "instructions" if run["runner"] == "emulator" else "cycles"
        if run.get("per_mac"):
            lines.append(f"{run[unit] / run['macs']:.2f} {unit} per MAC ({run['macs']:,} MACs)")
        lines.append(f"stack used: {run['stack_used_bytes']:,} B; outputs "
                     f"{'bit-exact with the host build' if run['bit_exact'] else 'DIFFER from the host build'}")
        for k in run.get("kernels", []):
            ratio = f"{k['per_mac']:8.2f}/MAC" if k.get("per_mac") else " " * 12
            lines.append(f"  {k['index']:4d} {k['name']:58s} {k['kind']:11s} {k[unit]:>13,} {ratio}")
        for kind, agg in sorted(run.get("per_kind", {}).items()):
            ratio = f"{agg['per_mac']:.2f} per MAC" if agg.get("per_mac") else ""
            lines.append(f"  {kind:11s} {agg['calls']:3d} calls {agg[unit]:>13,} {unit} {ratio}")
    return "\n".join(lines)


def _cmd_run(args: argparse.Namespace) -> int:
    project = load_project(args.project)
    run = run_project(args.project, runner=args.runner, profile=args.profile, timeout_sec=args.timeout,
                      port=args.port, probe=args.probe)
    board = get_board(project["board"])
    result = {"board": board.key, "project_dir": args.project, "run": run,
              "conditions": {"clock_mhz": board.mhz, "caches": board.caches, "opt": project["options"]["opt"],
                             "model_sha256": project.get("model_sha256")}}
    return _board_output(args, result)


def _add_board_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profile", action="store_true",
                   help="count the instructions (emulator) or cycles (board) of every kernel call")
    p.add_argument("--port", help="device: the board's serial port (default: found by the ST-LINK's USB id)")
    p.add_argument("--probe", choices=["openocd", "pyocd"], help="device: the flash tool (default: the one installed)")
    p.add_argument("--timeout", type=float, default=600.0, metavar="SEC",
                   help="longest wait for a build step, a flash or one run (default 600)")


def _cmd_verify(args: argparse.Namespace) -> int:
    if args.inputs is not None and args.inputs < 1:
        raise TvmPatchError(f"--inputs {args.inputs}: give at least 1")
    if args.reference:
        return _verify_reference(args)
    if args.patches is None or args.split is None:
        raise TvmPatchError("verify needs --patches P and --split S (patched vs layer by layer), "
                            "or --reference tflm|onnxruntime (integer lowering vs a reference runtime)")
    model = load(args.model)
    n = args.inputs or 3
    r = verify_patch(model.mod, args.patches, args.split, n, halo=args.halo)
    verdict = "PASS" if r.passed else "FAIL"
    print(f"{verdict}: {model.name}, {args.patches}x{args.patches} patches, split {args.split}, halo {args.halo}, "
          f"{r.inputs} seeded "
          f"inputs ({r.dtype}): largest difference {r.max_abs_diff:g} (relative {r.max_rel_diff:.3g}); "
          f"required: {r.detail}")
    return 0 if r.passed else 1


def _verify_reference(args: argparse.Namespace) -> int:
    if args.patches is not None or args.split is not None:
        raise TvmPatchError("--reference compares the integer-lowered model layer by layer; drop --patches/--split "
                            "(check patching with a separate `verify --patches P --split S`)")
    ref = {"tflm": "tflite-micro"}.get(args.reference, args.reference)
    rounding = args.rounding or "both"
    if ref == "onnxruntime" or (ref == "auto" and not str(args.model).endswith(".tflite")):
        # TFLite arithmetic against onnxruntime as configured by default (every layer within one step), and
        # onnxruntime's own float32 requantization against onnxruntime's int8 kernels (end to end within one
        # step; bit-exact layer by layer)
        runs = {"tflite": ("tflite", None), "onnxruntime": ("onnxruntime", ORT_INT8_KERNELS)}
        chosen = list(runs) if rounding == "both" else [rounding]
        ok = True
        for name in chosen:
            rnd, cfg = runs[name]
            r = verify_against_reference(args.model, ref, n_inputs=args.inputs or 20, rounding=rnd, ort_config=cfg)
            print(r.summary())
            ok = ok and r.passed
        return 0 if ok else 1
    if rounding == "onnxruntime":
        raise TvmPatchError("--rounding onnxruntime needs --reference onnxruntime")
    r = verify_against_reference(args.model, ref, n_inputs=args.inputs or 20)
    print(r.summary())
    return 0 if r.passed else 1


def _cmd_search(args: argparse.Namespace) -> int:
    result = search(args.board, population=args.population, iterations=args.iterations, seed=args.seed,
                    proxy=args.proxy, max_sram=args.max_sram, max_flash=args.max_flash)
    if not result.population:
        print(f"{PROG}: interrupted before any architecture was found; nothing written", file=sys.stderr)
        return 130
    settings = {k: getattr(args, k) for k in ("population", "iterations", "max_sram", "max_flash")}
    write_results(result, args.out, settings)
    print(format_summary(result, args.out))
    if result.interrupted:
        print(f"{PROG}: interrupted; wrote the best so far to {args.out}", file=sys.stderr)
        return 130
    return 0


# --- the cost model and the schedule search (tvm_patch/cost, docs/cost-model.md) ---
def _cost_data(args: argparse.Namespace, core: str) -> list[dict]:
    paths = args.data or [str(cost_collect.default_data(core))]
    return [r for p in paths for r in cost_collect.read_records(Path(p))]


def _cmd_costmodel(args: argparse.Namespace) -> int:
    if args.action == "collect":
        if not args.board:
            raise TvmPatchError("costmodel collect needs --board f412|f746|h743")
        out = args.data[0] if args.data else str(cost_collect.default_data(core_key(args.board)))
        counts = cost_collect.collect(args.board, Path(out), n=args.n, seed=args.seed, runner=args.runner,
                                      timeout_sec=args.timeout, adaptive=args.adaptive)
        print(f"{out}: {counts['measured']} measured, {counts['skipped']} already there, {counts['failed']} failed")
        return 0
    if args.action == "refeature":
        if not args.data or not args.out:
            raise TvmPatchError("costmodel refeature needs --data FILE.jsonl and --out FILE.jsonl")
        counts = cost_collect.refeature(Path(args.data[0]), Path(args.out))
        print(f"{args.out}: {counts['refeatured']} records with this version's features, {counts['dropped']} dropped "
              "(measured on other kernels)")
        return 0
    core = args.core or (core_key(args.board) if args.board else None)
    if core not in cost_latency.CORES:
        raise TvmPatchError(f"costmodel {args.action} needs --core m4|m7 (or --board)")
    if args.action == "train":
        model = cost_latency.fit([r for r in _cost_data(args, core) if not r.get("heldout")], core)
        path = model.save(args.model or cost_collect.default_model(core))
        print(f"wrote {path}: {core}, {model.meta['n_kernels']} kernels of {model.meta['n_networks']} networks; "
              f"use it with --cost-model {path}")
        return 0
    model = cost_latency.for_core(core, args.model)
    print(json.dumps(cost_evaluate(model, _cost_data(args, core)), indent=1))
    return 0


def _cmd_plan(args: argparse.Namespace) -> int:
    res = plan_search(args.model, args.board, args.objective, args.cost_model, fast=args.fast,
                      tuning_db=args.tuning_db)
    out = res.to_json()
    if args.json:
        print(json.dumps(out, indent=1))
    else:
        _print_plan(args, res)
    if res.chosen is None:
        raise TvmPatchError(_no_plan_message(args.model, args.board, res, out))
    return 0


def _print_plan(args: argparse.Namespace, res) -> None:
    print(f"{args.model} on {args.board}: {res.note}")
    for p in res.pareto:
        halo = p.plan["halo"] if p.plan["patches"] else ""
        print(f"  pareto: {p.plan['split'] or '-':>4} {str(p.plan['patches'] or 'layer-by-layer'):>14} {halo:9s} "
              f"SRAM {p.sram_bytes:>9,} B  latency {p.latency_ms:9.2f} ms (estimated)")
    c = res.chosen
    if c is None:
        return
    print(f"chosen: split {c.plan['split']}, patches {c.plan['patches']}, halo {c.plan['halo']}: SRAM "
          f"{c.sram_bytes:,} B, Flash {c.flash_bytes:,} B, {c.latency_ms:.2f} ms (estimated)" if c.plan["split"]
          else f"chosen: layer by layer: SRAM {c.sram_bytes:,} B, Flash {c.flash_bytes:,} B, {c.latency_ms:.2f} ms "
               "(estimated)")
    if c.measured_kernels:
        print(f"  {len(c.measured_kernels)} kernels counted at their tuning records' measured cost "
              f"(--tuning-db {args.tuning_db})")


def _add_cost_parsers(sub) -> None:
    c = sub.add_parser("costmodel", help="the latency cost model: collect measurements, train, evaluate")
    c.add_argument("action", choices=["collect", "train", "eval", "refeature"])
    c.add_argument("--out", metavar="FILE.jsonl", help="refeature: where to write the records")
    c.add_argument("--board", choices=["f412", "f746", "h743"], help="collect: the board measured")
    c.add_argument("--core", choices=list(cost_latency.CORES), help="train/eval: the core (default: the board's)")
    c.add_argument("--n", type=int, default=40, help="collect: synthetic networks (each layer by layer and patched)")
    c.add_argument("--seed", type=int, default=0, help="collect: seed of the synthetic networks and plans")
    c.add_argument("--adaptive", type=int, default=0, metavar="K",
                   help="collect: instead, neighbours of the K training networks the model predicts worst "
                        "(cross-validated on the data collected so far; --seed numbers the round)")
    c.add_argument("--runner", choices=["emulator", "device"], default="emulator",
                   help="collect: instructions on QEMU (default) or cycles on the board")
    c.add_argument("--data", nargs="+", metavar="FILE.jsonl", help="measurements (default: the cache's, per core)")
    c.add_argument("--model", metavar="FILE.json", help="train: where to write; eval: the model (default: shipped)")
    c.add_argument("--timeout", type=float, default=600.0, metavar="SEC", help="collect: longest build or run")
    c.set_defaults(func=_cmd_costmodel)
    pl = sub.add_parser("plan", help="search splits, patch counts and halo modes for the fastest plan that fits")
    pl.add_argument("model", help="an .onnx or .tflite file, or zoo:NAME[:int8]")
    pl.add_argument("--board", choices=["f412", "f746", "h743"], required=True)
    pl.add_argument("--objective", choices=["latency", "memory"], default="latency")
    pl.add_argument("--cost-model", metavar="FILE.json", help="a trained latency model (default: the shipped one)")
    pl.add_argument("--json", action="store_true", help="print one JSON object")
    pl.add_argument("--fast", action="store_true",
                    help="predict plans in increasing estimated latency and stop at the first that fits (what "
                         "`build --board` and the bench use) instead of the whole exact Pareto front")
    pl.add_argument("--tuning-db", metavar="DIR",
                    help="predict each plan as `build --tuning-db DIR` builds it: the records applied, each tuned "
                         "kernel counted at its record's measured cost")
    pl.set_defaults(func=_cmd_plan)


def _write_bytes(path: str, data: bytes) -> None:
    """Write a file atomically; an unwritable place is a one-line error."""
    try:
        write_atomic(path, data)
    except OSError as e:
        raise TvmPatchError(f"{path}: cannot write ({e.strerror}); choose a writable path") from None


# ---------------------------------------------------------------- tuning (tvm_patch/tune, docs/tuning.md)
def _cmd_tune(args: argparse.Namespace) -> int:
    split = int(args.split) if args.split is not None and args.split.isdigit() else args.split
    s = tune_model(args.model, args.board, trials=args.trials, runner=args.runner, db_dir=args.db,
                   patches=args.patches, split=split, halo=args.halo, kernels=args.kernel,
                   tracker=parse_address(args.tracker) if args.tracker else None, rpc_runner=args.rpc_runner,
                   parallel=args.parallel, timeout_sec=args.timeout, port=args.port, probe=args.probe,
                   progress=not args.json, emulator_memory=args.emulator_memory)
    if args.json:
        print(json.dumps(s.to_json(), indent=1))
        return 0
    print(f"{s.model} on {s.board} ({s.runner}, {s.unit}): {s.measured} trials"
          f"{' (interrupted)' if s.interrupted else ''}, records in {s.db}")
    def cost(c: float | None) -> str:
        return "-" if c is None else f"{c:.3g} s" if s.unit == "seconds" else f"{int(c):,}"

    def form(rows: int | None, packed: bool | None, knob: bool, unrolled: bool | None = False,
             outlined: list[int] | None = None, peeled: bool | None = False, down: bool | None = None) -> str:
        # the packing only where it is a knob, the unrolling when on, a stage's outlined nests when any, its peeling,
        # its odd columns' form where it is a knob
        return (f"rows {rows}" + ("" if not knob or packed is None else ", packed" if packed else ", unpacked")
                + (", unrolled" if unrolled else "")
                + (f", nests {','.join(map(str, outlined))} outlined" if outlined else "")
                + (", patches peeled" if peeled else "")
                + ("" if down is None else ", odd columns paired down" if down else ", odd columns alone"))

    for k in s.kernels:
        gain = f"{k.default_cost / k.best_cost:.3f}x" if k.default_cost and k.best_cost else "-"
        default = form(k.default_rows, k.default_packed, k.pack_knob, down=k.down_default)
        tuned = form(k.best_rows, k.best_packed, k.pack_knob, k.best_unrolled, k.best_outlined, k.best_peeled,
                     k.best_paired_down if k.best_paired_down is not None else k.down_default)
        print(f"  {k.name}: default {default} {cost(k.default_cost)}, tuned {tuned} {cost(k.best_cost)} ({gain}), "
              f"{k.failed} failed, "
              f"{k.calls} calls{', int8 weights (Flash)' if k.int8_weights else ''}")
    totals = s.totals()
    if totals is not None and totals[0]:
        print(f"  all kernels, weighted by their calls: default {cost(totals[0])}, tuned {cost(totals[1])} "
              f"({totals[1] / totals[0] - 1:+.1%})")
    if s.untunable:
        print(f"  not tuned (kernels the harness does not reproduce as the network emits them): {', '.join(s.untunable)}")
    return 0


def _stop(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _cmd_rpc_server(args: argparse.Namespace) -> int:
    server = start_server(parse_address(args.tracker), args.board, args.runner, args.host, args.port, args.port_end,
                          args.serial, args.probe)
    signal.signal(signal.SIGTERM, _stop)
    print(f"serving {args.board}-{args.runner} on {args.host}:{server.port} for the tracker {args.tracker}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return 0
    finally:
        server.terminate()


def _patch_count(text: str) -> int:
    """``--patches P`` of every command: a whole number of at least 1 (argparse prints the one line)."""
    try:
        p = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give a whole number of patches per side") from None
    if p < 1:
        raise argparse.ArgumentTypeError(f"{p}: give at least 1 patch per side")
    return p


def _add_tune_commands(sub: argparse._SubParsersAction) -> None:
    t = sub.add_parser("tune", help="tune the kernels' schedules with meta_schedule; records to --db")
    t.add_argument("model", help="an .onnx or .tflite file, or zoo:NAME[:int8]")
    t.add_argument("--board", required=True, help="the board tuned for: f412, f746 or h743")
    t.add_argument("--trials", type=int, default=16, help="measured candidates in all (default 16)")
    t.add_argument("--runner", choices=RUNNERS, default="emulator",
                   help="emulator (exact instructions on QEMU), host (seconds, a quick check), device (cycles on "
                        "the board), rpc (a farm behind --tracker)")
    t.add_argument("--db", default="tuning_db", metavar="DIR", help="the record database (default tuning_db)")
    t.add_argument("--patches", type=_patch_count, metavar="P", help="tune the patch-mode network (needs --split)")
    t.add_argument("--split", metavar="S", help="with --patches: layer count, block:N or auto")
    t.add_argument("--halo", choices=["recompute", "cache", "auto"], default="recompute", help=HALO_HELP)
    t.add_argument("--kernel", action="append", metavar="NAME", help="tune only this kernel (repeatable)")
    t.add_argument("--emulator-memory", choices=EMULATOR_MEMORY, default="board",
                   help="machine: tune the kernels as `build --emulator-memory machine` builds them (a network too "
                        "large for the board, counted on its core)")
    t.add_argument("--tracker", metavar="HOST:PORT", help="with --runner rpc: the RPC tracker")
    t.add_argument("--rpc-runner", choices=["emulator", "device"], default="emulator",
                   help="with --runner rpc: the servers' runner (key BOARD-RUNNER)")
    t.add_argument("--parallel", type=int, default=1, help="candidates measured at once (rpc: servers used)")
    t.add_argument("--json", action="store_true", help="print one JSON object (no progress bar)")
    t.add_argument("--port", help="device: the board's serial port")
    t.add_argument("--probe", choices=["openocd", "pyocd"], help="device: the flash tool")
    t.add_argument("--timeout", type=float, default=120.0, metavar="SEC",
                   help="longest wait for one candidate's build step or run (default 120)")
    t.set_defaults(func=_cmd_tune)
    r = sub.add_parser("rpc-server", help="serve measurements on this machine's emulator or board to a TVM RPC "
                                          "tracker (key BOARD-RUNNER), for `tune --runner rpc`")
    r.add_argument("--tracker", required=True, metavar="HOST:PORT")
    r.add_argument("--board", required=True, help="f412, f746 or h743")
    r.add_argument("--runner", choices=["emulator", "device"], default="emulator")
    r.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    r.add_argument("--port", type=int, default=9091, help="first port to try (default 9091)")
    r.add_argument("--port-end", type=int, default=9199, help="last port to try (default 9199)")
    r.add_argument("--serial", help="device: the board's serial port (default: found by the ST-LINK's USB id)")
    r.add_argument("--probe", choices=["openocd", "pyocd"], help="device: the flash tool")
    r.set_defaults(func=_cmd_rpc_server)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for the docs and the tests)."""
    p = argparse.ArgumentParser(prog=PROG, description="MCUNetV2 patch-based inference for microcontrollers, on TVM.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    z = sub.add_parser("zoo", help="list the model zoo (MODEL arguments accept zoo:NAME and zoo:NAME:int8)")
    z.add_argument("--export", metavar="NAME", help="write the zoo model NAME as ONNX to -o FILE")
    z.add_argument("--int8", action="store_true", help="with --export: the int8 QDQ model")
    z.add_argument("-o", "--output", metavar="FILE")
    z.set_defaults(func=_cmd_zoo)

    pr = sub.add_parser("profile", help="per-layer analytic activation memory, MACs and receptive fields")
    pr.add_argument("model", help="an .onnx or .tflite file, or zoo:NAME[:int8]")
    pr.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    pr.add_argument("--plot", metavar="FILE.png", help="draw the per-layer memory bar chart (MCUNetV2 Fig. 1)")
    pr.add_argument("--patches", type=_patch_count, metavar="P",
                    help="also profile running the first stage over PxP patches")
    pr.add_argument("--split", metavar="S",
                    help="with --patches: where the stage ends, a layer count N, block:N or auto (the split "
                         "PatchStage picks; the profile says which)")
    pr.add_argument("--halo", choices=["recompute", "cache", "auto"], default="recompute", help=HALO_HELP)
    pr.set_defaults(func=_cmd_profile)

    b = sub.add_parser("build", help="export the whole network as plain C over one static arena")
    b.add_argument("model", help="an .onnx or .tflite file, or zoo:NAME[:int8]")
    b.add_argument("--target", choices=["host"], default="host",
                   help="host: gcc build with the generated Makefile (see --board for the STM32 boards)")
    b.add_argument("-o", "--output", metavar="DIR", required=True, help="output directory (replaced atomically)")
    b.add_argument("--patches", type=_patch_count, metavar="P", help="patch mode: P x P patches (needs --split)")
    b.add_argument("--split", metavar="S",
                   help="patch mode: layers in the patch stage, block:N or auto (needs --patches)")
    b.add_argument("--halo", choices=["recompute", "cache", "auto"], default="recompute", help=HALO_HELP)
    b.add_argument("--emit", choices=["c", "object"], default="c",
                   help="object: also the kernels as a Cortex-M7 object with model_driver.c")
    b.add_argument("--check", action="store_true",
                   help="build with gcc, run on seeded inputs, compare with TVM bit for bit (exit 1 if not equal)")
    b.add_argument("--json", action="store_true", help="print one JSON object instead of a summary")
    b.add_argument("--float-chains", action="store_true",
                   help="skip LowerToInteger: export quantized models' dequantize/quantize chains as imported")
    b.add_argument("--rounding", choices=["tflite", "onnxruntime"], default="tflite",
                   help="LowerToInteger's requantization: TFLite Micro's (default) or onnxruntime's int8 "
                        "kernels', emulated in integers (layer by layer only)")
    b.add_argument("--kernels", choices=["micro", "plain"], default="micro",
                   help="micro (default): kernels call the Cortex-M micro-kernels (SMLAD dot products, a 32-bit "
                        "requantization); plain: TVM's own kernels only, the baseline")
    b.add_argument("--wide-weights", choices=["auto", "all", "none"], default="auto",
                   help="weights of the dot kernels stored as int16 in Flash (twice their bytes, no sign extension "
                        "per use): auto (default) as many as the board's Flash holds (none without --board), all, none")
    b.add_argument("--board", choices=["f412", "f746", "h743"],
                   help="write a board project to -o DIR (STM32 firmware over the export) and build it")
    b.add_argument("--run", choices=["emulator", "device"],
                   help="with --board: run once on QEMU (exact instruction count) or on the board, and check the "
                        "outputs against the host build")
    b.add_argument("--opt", choices=["O0", "O1", "O2", "O3", "Os", "Ofast"], default="O3",
                   help="with --board: arm-none-eabi-gcc optimisation level (default O3)")
    b.add_argument("--stack", type=int, default=8192, metavar="BYTES",
                   help="with --board: stack reserved in SRAM (default 8192)")
    b.add_argument("--seed", type=int, default=0, help="with --board: seed of the input compiled into the firmware")
    b.add_argument("--emulator-memory", choices=EMULATOR_MEMORY, default="board",
                   help="with --board: link the emulator firmware with the board's Flash and SRAM sizes (default) or "
                        "the QEMU machine's 4 MB + 4 MB, to count a network too large for the board on its core "
                        "(the report still says whether the board holds it)")
    b.add_argument("--plan", choices=["auto", "none"], default="auto",
                   help="with --board and no --patches/--split: auto (default) builds `tvm-patch plan --fast`'s answer "
                        "(cached per model and board); none: layer by layer")
    b.add_argument("--cost-model", metavar="FILE.json", help="with --plan auto: the latency model (default: shipped)")
    _add_board_run_options(b)
    b.add_argument("--tuning-db", metavar="DIR", help="apply a `tvm-patch tune` database: each kernel takes its "
                   "fastest record's schedule (on --board's core, else any); --json says which")
    b.set_defaults(func=_cmd_build)
    _add_tune_commands(sub)
    r = sub.add_parser("run", help="run a board project (tvm-patch build --board) once, its firmware built first "
                       "where missing or stale")
    r.add_argument("project", help="the project directory (-o DIR of `tvm-patch build --board`)")
    r.add_argument("--runner", choices=["emulator", "device"], default="emulator",
                   help="emulator: QEMU, exact instruction counts; device: flash the board and read its serial port")
    r.add_argument("--json", action="store_true", help="print one JSON object instead of a summary")
    _add_board_run_options(r)
    r.set_defaults(func=_cmd_run)
    v = sub.add_parser("verify", help="check the patch-based module against the layer-by-layer one "
                                      "(quantized models: both after LowerToInteger, bit-exact)")
    v.add_argument("model", help="an .onnx or .tflite file, or zoo:NAME[:int8]")
    v.add_argument("--patches", type=_patch_count, metavar="P", help="PxP patches")
    v.add_argument("--split", metavar="S", help="where the stage ends: a layer count N, block:N or auto")
    v.add_argument("--halo", choices=["recompute", "cache", "auto"], default="recompute", help=HALO_HELP)
    v.add_argument("--reference", choices=["tflm", "tflite-micro", "onnxruntime", "auto"],
                   help="compare the integer-lowered model with TensorFlow Lite Micro (.tflite, bit-exact) or "
                        "onnxruntime (ONNX QDQ, every layer within one quantization step)")
    v.add_argument("--rounding", choices=["tflite", "onnxruntime", "both"],
                   help="with --reference onnxruntime: the integer arithmetic compared, TFLite's (vs onnxruntime's "
                        "default session; every layer within one step) or onnxruntime's float32 requantization "
                        "emulated in integers (vs onnxruntime's int8 kernels; end to end within one step); "
                        "default both")
    v.add_argument("--inputs", type=int, metavar="N",
                   help="number of seeded random inputs (default 3 with --patches, 20 with --reference)")
    v.set_defaults(func=_cmd_verify)
    s = sub.add_parser("search", help="evolve MCUNet architectures and their patch schedules for a board "
                                      "(docs/search.md)")
    s.add_argument("--board", required=True, help="f412, f746 or h743: its SRAM and Flash bound the search")
    s.add_argument("--population", type=int, default=100, help="architectures per generation (default 100)")
    s.add_argument("--iterations", type=int, default=30, help="generations after the first (default 30)")
    s.add_argument("--seed", type=int, default=0, help="seed of the whole run: a seed repeats a run (default 0)")
    s.add_argument("--out", default="search_out", metavar="DIR", help="where best.json and search.json go")
    s.add_argument("--proxy", metavar="MODULE:FUNCTION",
                   help="accuracy proxy f(spec, evaluation) -> float, higher is better (default: the MACs)")
    s.add_argument("--max-sram", type=int, metavar="BYTES", help="a tighter SRAM limit than the board's")
    s.add_argument("--max-flash", type=int, metavar="BYTES", help="a tighter Flash limit than the board's")
    s.set_defaults(func=_cmd_search)
    _add_cost_parsers(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except (TvmPatchError, ProjectError) as e:
        if os.environ.get("TVM_PATCH_DEBUG"):
            raise
        print(f"{PROG}: error: {e.one_line()}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
