"""The `tvm-patch` command line: zoo, profile, verify, build, run, search.

Bad input is reported as one line on stderr with exit code 2; set TVM_PATCH_DEBUG=1 for tracebacks.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from microtvm_projects.boards import get_board
from microtvm_projects.errors import ProjectError
from microtvm_projects.firmware import load_project

from tvm_patch import report, zoo
from tvm_patch.board_build import build_for_board, run_project
from tvm_patch.errors import TvmPatchError
from tvm_patch.export import export_model
from tvm_patch.frontend import load
from tvm_patch.plot import plot_profile
from tvm_patch.reference import ORT_INT8_KERNELS, verify_against_reference
from tvm_patch.search import search, write_results
from tvm_patch.search.output import format_summary
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
    result = export_model(args.model, args.output, patches=args.patches, split=split, emit=args.emit,
                          check=args.check, integer=not args.float_chains, rounding=args.rounding,
                          kernels=args.kernels, halo=args.halo)
    if args.json:
        print(json.dumps(result.to_json(), indent=1))
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
        f"TVM static plan:     {size(result.tvm_static_plan_bytes)}  (StaticPlanBlockMemory storages)",
        f"TFLM arena head:     {size(result.tflm_arena_head_bytes)}",
        f"weights:             {size(result.weights_bytes)}",
        f"export time:         {result.export_seconds:.1f} s",
    ]
    if result.check is not None:
        lines.append(f"check: {result.check.summary()}")
    return "\n".join(lines)


def _build_board(args: argparse.Namespace, split: int | str | None) -> int:
    if args.check or args.emit != "c":
        raise TvmPatchError("--check and --emit are host options; a board build checks its run against the host "
                            "build with --run")
    built = build_for_board(args.model, args.output, args.board, patches=args.patches, split=split,
                             runner=args.run or "emulator", run=args.run is not None, profile=args.profile,
                             opt=args.opt, stack_bytes=args.stack, seed=args.seed, timeout_sec=args.timeout,
                             port=args.port, probe=args.probe, integer=not args.float_chains,
                             rounding=args.rounding, kernels=args.kernels)
    return _board_output(args, built)


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
            f"Flash: {result['flash_bytes']:,} of {result['board_flash_bytes']:,} B",
        ]
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
            lines.append(f"  {k['index']:4d} {k['name']:58s} {k['kind']:10s} {k[unit]:>13,} {ratio}")
        for kind, agg in sorted(run.get("per_kind", {}).items()):
            ratio = f"{agg['per_mac']:.2f} per MAC" if agg.get("per_mac") else ""
            lines.append(f"  {kind:10s} {agg['calls']:3d} calls {agg[unit]:>13,} {unit} {ratio}")
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


def _write_bytes(path: str, data: bytes) -> None:
    """Write a file atomically; an unwritable place is a one-line error."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise TvmPatchError(f"{path}: cannot write ({e.strerror}); choose a writable path") from None


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
    pr.add_argument("--patches", type=int, metavar="P", help="also profile running the first stage over PxP patches")
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
    b.add_argument("--patches", type=int, metavar="P", help="patch mode: P x P patches (needs --split)")
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
    _add_board_run_options(b)
    b.set_defaults(func=_cmd_build)
    r = sub.add_parser("run", help="run a board project already built (tvm-patch build --board) once")
    r.add_argument("project", help="the project directory (-o DIR of `tvm-patch build --board`)")
    r.add_argument("--runner", choices=["emulator", "device"], default="emulator",
                   help="emulator: QEMU, exact instruction counts; device: flash the board and read its serial port")
    r.add_argument("--json", action="store_true", help="print one JSON object instead of a summary")
    _add_board_run_options(r)
    r.set_defaults(func=_cmd_run)
    v = sub.add_parser("verify", help="check the patch-based module against the layer-by-layer one "
                                      "(quantized models: both after LowerToInteger, bit-exact)")
    v.add_argument("model", help="an .onnx or .tflite file, or zoo:NAME[:int8]")
    v.add_argument("--patches", type=int, metavar="P", help="PxP patches")
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
