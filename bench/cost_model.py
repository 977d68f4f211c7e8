"""`python -m bench.cost_model`: the latency cost model's accuracy on held-out whole networks (the goal:
within +-10 % on at least 95 % of them; nn-Meter reports +-10 % on 99 % of models on mobile CPUs), for
the shipped model of each core on the measurements it was trained beside (bench/cost_data), written to
<out>/cost_model.json and cost_model.md. See docs/cost-model.md.

`--retrain` first re-collects the training and held-out measurements on this installation's kernels (the
rounds of collect.DEFAULT_ROUNDS and the adaptive one, on QEMU; resumable: an interrupted run continues), then retrains and
replaces the shipped model (tvm_patch/cost/models/<core>.json) and its data (bench/cost_data/<core>.jsonl.gz).
`make costmodel` (or `make -j2 costmodel` for both cores at once) runs it.
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import time
from pathlib import Path

from tvm_patch.atomic import write_atomic
from tvm_patch.cost.collect import ADAPTIVE_ROUND, DEFAULT_ROUNDS, collect, read_records
from tvm_patch.cost.evaluate import evaluate
from tvm_patch.cost.latency import CORES, default_path, fit, for_core, kernels_fingerprint
from tvm_patch.paths import cache_dir

DATA = Path(__file__).resolve().parent / "cost_data"
GOAL_SHARE = 0.95
BOARD_OF_CORE = {"m7": "f746", "m4": "f412"}  # the board whose build measures each core (QEMU mps2-an500 / an386)


def retrain(core: str) -> dict[str, float]:
    """Collect DEFAULT_ROUNDS on ``core``'s board into a resumable file of this kernel fingerprint, write it to
    bench/cost_data, train and write the shipped model; returns the seconds each step took."""
    t0 = time.monotonic()
    work = cache_dir("cost") / f"retrain_{core}_{kernels_fingerprint()}.jsonl"
    for seed, n in DEFAULT_ROUNDS:
        collect(BOARD_OF_CORE[core], work, n=n, seed=seed)
    collect(BOARD_OF_CORE[core], work, seed=ADAPTIVE_ROUND[0], adaptive=ADAPTIVE_ROUND[1])
    t1 = time.monotonic()
    write_atomic(DATA / f"{core}.jsonl.gz", gzip.compress(work.read_bytes(), 9, mtime=0))
    model = fit([r for r in read_records(work) if not r.get("heldout")], core)
    model.save(default_path(core))
    return {"collect_seconds": round(t1 - t0, 1), "train_seconds": round(time.monotonic() - t1, 1)}


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
    args = p.parse_args(argv)
    cores = args.core or list(CORES)
    if args.retrain:
        for core in cores:
            print(f"{core}: {retrain(core)}", flush=True)
    results = {core: evaluate(for_core(core), read_records(DATA / f"{core}.jsonl.gz")) for core in cores
               if (DATA / f"{core}.jsonl.gz").is_file()}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "cost_model.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / "cost_model.md").write_text(markdown(results))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
