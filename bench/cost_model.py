"""`python -m bench.cost_model`: the latency cost model's accuracy on held-out whole networks (the goal:
within +-10 % on at least 95 % of them; nn-Meter reports +-10 % on 99 % of models on mobile CPUs), for
the shipped model of each core on the measurements it was trained beside (bench/cost_data), written to
<out>/cost_model.json and cost_model.md. See docs/cost-model.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tvm_patch.cost.collect import read_records
from tvm_patch.cost.evaluate import evaluate
from tvm_patch.cost.latency import CORES, for_core

DATA = Path(__file__).resolve().parent / "cost_data"
GOAL_SHARE = 0.95


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
                f"split {n['plan']['split']}, {n['plan']['patches'][0]}x{n['plan']['patches'][1]}"
            lines.append(f"| {core} | {Path(n['model']).name} | {plan} | {n['measured']:,} | {n['predicted']:,} | "
                         f"{n['error']:+.1%} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Evaluate every core with data; write JSON and markdown."""
    p = argparse.ArgumentParser(prog="python -m bench.cost_model", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="bench_out", help="output folder (default bench_out)")
    args = p.parse_args(argv)
    results = {core: evaluate(for_core(core), read_records(DATA / f"{core}.jsonl.gz")) for core in CORES
               if (DATA / f"{core}.jsonl.gz").is_file()}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "cost_model.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / "cost_model.md").write_text(markdown(results))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
