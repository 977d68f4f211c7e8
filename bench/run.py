"""`python -m bench.run --board h743`: measure the models on a board (or its emulator) and write
results.json, results.csv, results.md and PNG plots, with the paper's and the peers' published figures beside.

Per model, layer by layer and with the paper's 4x4 patches at the auto split: analytic peaks, the planned
arena, the firmware's SRAM and Flash and fit, MACs and their overhead, one run (instructions and estimated
latency on the emulator, cycles on a device), bit-exactness, TFLite Micro's arena (.tflite), export time.
results.json is rewritten after each model, so an interrupted or failing run keeps what it measured.
See docs/bench.md.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path
from typing import NoReturn

from tqdm import tqdm

from microtvm_projects.boards import BOARDS, Board, get_board
from microtvm_projects.errors import ProjectError

from bench.conditions import conditions
from bench.markdown import write_markdown
from bench.measure import PATCHES, measure_model, one_line
from bench.models import Model, UnknownModel, default_models, resolve
from bench.plots import write_plots
from bench.results import Results, write_csv
from bench.tables import summary_table
from bench import tuning

RUNNERS = ("emulator", "device")
TUNING_TIMEOUT = 3600.0  # seconds per step of a model's tuning comparison (its session, its two builds)


class UsageError(Exception):
    """A bad command line: reported as one line, exit 2."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad command line is one line on stderr (exit 2), not the usage text."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def parse(argv: list[str]) -> argparse.Namespace:
    """The command line."""
    p = _Parser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    p.add_argument("--board", required=True, help=f"one of {', '.join(BOARDS)}")
    p.add_argument("--models", nargs="+", metavar="NAME_OR_PATH",
                   help="zoo names, MLPerf Tiny names (vww, kws, resnet8) or .onnx/.tflite paths "
                        "(default: every MLPerf Tiny and zoo model)")
    p.add_argument("--out", help="output folder (default: bench_out/<board>)")
    p.add_argument("--quick", action="store_true", help="a few small models (vww, kws, mcunet-in0)")
    p.add_argument("--runner", default="emulator", help="emulator (QEMU, default) or device (the board)")
    p.add_argument("--tuning", type=int, default=0, metavar="TRIALS",
                   help="also tune each model (TRIALS trials, emulator) and compare its 1x1 convolutions tuned and "
                        "untuned, then its 4x4 patch stage and the patched goal with both builds tuned "
                        "(bench/tuning.py; minutes per model; default: not run)")
    return p.parse_args(argv)


def prepare(args: argparse.Namespace) -> tuple[Board, list[Model], Path]:
    """Check the board, the models and the output folder before any work; UsageError on the first problem."""
    try:
        board = get_board(args.board)
    except ProjectError as e:
        raise UsageError(e.one_line()) from None
    if args.runner not in RUNNERS:
        raise UsageError(f"unknown runner {args.runner!r}; choose one of {', '.join(RUNNERS)}")
    if args.tuning < 0:
        raise UsageError(f"--tuning {args.tuning}: give a number of trials (0: no tuning)")
    try:
        models = [resolve(m) for m in args.models] if args.models else default_models(args.quick)
    except UnknownModel as e:
        raise UsageError(str(e)) from None
    out = Path(args.out or f"bench_out/{board.key}")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write_test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise UsageError(f"cannot write to --out {out}: {e.strerror or e}") from None
    return board, models, out


def write_all(results: Results, out: Path, plots: bool) -> None:
    """results.json, results.csv, results.md and (at the end) the plots, from what has been measured so far."""
    results.write()
    write_csv(results.data, out / "results.csv")
    write_markdown(results.data, out / "results.md")
    if plots:
        try:
            write_plots(results.data, out)
        except Exception as e:  # noqa: BLE001  (the measurements are written; a plot must not lose the summary)
            print(f"bench: warning: plots not drawn: {one_line(e)}", file=sys.stderr)


class _Interrupts:
    """Remembers Ctrl-C even when a library swallows the KeyboardInterrupt (e.g. inside a TVM call)."""

    def __init__(self) -> None:
        self.seen = False

    def __call__(self, signum: int, frame: object) -> None:
        self.seen = True
        raise KeyboardInterrupt


def run(board: Board, models: list[Model], out: Path, runner: str, argv: list[str], tuning_trials: int = 0) -> int:
    """Measure every model, writing the results after each (then, with ``tuning_trials``, tune each and compare
    tuned with untuned: bench/tuning.py); returns the exit code."""
    t0 = time.perf_counter()
    results = Results(out, conditions(board, runner, argv))
    complete = False
    interrupts = _Interrupts()
    previous = signal.signal(signal.SIGINT, interrupts)
    try:
        bar = tqdm(models, desc=f"bench {board.key}", unit="model", file=sys.stderr)
        for model in bar:
            bar.set_postfix_str(model.key)
            entry = measure_model(model, board, runner, step=lambda s, m=model.key: bar.set_postfix_str(f"{m}: {s}"))
            if interrupts.seen:  # interrupted while measuring this model: its entry may hold the interrupt as an error
                raise KeyboardInterrupt
            results.add(entry)
            write_all(results, out, plots=False)
        if tuning_trials:
            for model in tqdm(models, desc="tuning", unit="model", file=sys.stderr):
                results.data.setdefault("tuning", []).append(
                    tuning.bench_model(model.spec, board.key, tuning_trials, out / "tuning", TUNING_TIMEOUT,
                                       patches=PATCHES))
                if interrupts.seen:
                    raise KeyboardInterrupt
                write_all(results, out, plots=False)
        complete = True
    except KeyboardInterrupt:
        print("\nbench: interrupted; writing what was measured", file=sys.stderr)
    finally:
        signal.signal(signal.SIGINT, previous)
        elapsed = time.perf_counter() - t0
        results.finish(elapsed, complete)
        write_all(results, out, plots=True)
    print("\n".join(summary_table(results.data)))
    failed = [k for k, e in results.data["models"].items() if e["status"] != "ok"]
    print(f"\nbench: {len(results.data['models'])} of {len(models)} models on {board.name} ({runner}) took "
          f"{elapsed:,.0f} s ({elapsed / 60:.1f} min); "
          f"{len(failed)} with errors{': ' + ', '.join(failed) if failed else ''}. Results in {out}/ "
          "(results.json, results.csv, results.md, *.png)")
    return 0 if complete else 130


def main(argv: list[str] | None = None) -> int:
    """Entry point: one clear line and exit 2 for a bad board, model, runner or --out."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = parse(argv)
        board, models, out = prepare(args)
    except UsageError as e:
        print(f"bench: error: {e}", file=sys.stderr)
        return 2
    return run(board, models, out, args.runner, argv, args.tuning)


if __name__ == "__main__":
    raise SystemExit(main())
