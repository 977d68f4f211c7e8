"""`python -m bench.arena_sweep`: the patch-mode C arena against the analytic patched peak over the int8 zoo.

Every int8 zoo model, 2x2 / 3x3 / 4x4 patches at the auto split and block:3/4/5, one `export_model` per
configuration (no `--check`: bit-exactness is the tests' job), in this process. Per configuration: the arena,
the analytic patched peak (`analytic_patch_peak_bytes`; the per-layer peak when auto keeps the network layer by
layer), the goal's allowance (`alignment_allowance_bytes`: 16 B per buffer live at once) and, where the arena is
above the analytic figure, what sits above it at the arena's top: a kernel workspace (`ws`) or a depthwise
output written before its input (`shift`, inplace_shift.py). Writes arena_sweep.json and arena_sweep.md to --out.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from tvm_patch.errors import TvmPatchError
from tvm_patch.export import export_model
from tvm_patch.export.plan import workspace_buffer

ZOO = ["mbv2-w0.3-r80", "mbv2-w0.35-r144", "mbv2-w1.0-r224", "mcunet-in0", "mcunet-in1", "mcunet-in2", "mcunet-in3",
       "mcunet-in4", "mnasnet-a1-r224", "proxyless-mobile", "proxyless-w0.25-r112", "proxyless-w0.3-r176"]
SPLITS = ["auto", "block:3", "block:4", "block:5"]
PATCHES = [2, 3, 4]
# cache mode (--halo cache without --models): the MCUNet models at the cache mode's own auto split and at block:5
# (where the caches dominate), and MbV2-224 at the paper's block:5
CACHE_CASES = [(f"mcunet-in{k}", split) for k in range(5) for split in ("auto", "block:5")] + [
    ("mbv2-w1.0-r224", "block:5")]


def above_analytic(result: Any, analytic: int) -> str:
    """What lies above `analytic` at the steps where the network's plan reaches its top (the arena): workspaces
    (bytes) and negative-shift aliases starting there (bytes before their input), e.g. "ws3 144 B; shift t2->t3 64 B"."""
    ap = result.arena_plan
    offs = ap.plan.offsets
    by_name = {b.name: b for b in ap.buffers}
    notes: list[str] = []
    for s in sorted({b.first for b in ap.buffers}):
        live = [b for b in ap.buffers if b.first <= s <= b.last]
        if max(offs[b.name] + b.size for b in live) < result.arena_bytes:
            continue  # not a step where the plan reaches its top
        for b in live:
            if b.name.startswith("ws") and offs[b.name] + b.size > analytic:
                call = next(k for k in range(len(result.program.calls)) if workspace_buffer(k) == b.name)
                notes.append(f"{b.name} {b.size} B ({result.program.calls[call].func})")
        for a in ap.plan.aliases:
            if a.shift < 0 and by_name[a.dst].first == s:
                notes.append(f"shift {a.src}->{a.dst} {-a.shift} B")
    notes = list(dict.fromkeys(notes))
    return "; ".join(notes)


def sweep_one(model: str, patches: int, split: str, halo: str) -> dict[str, Any]:
    """One configuration's figures, or its refusal line."""
    row: dict[str, Any] = {"model": model, "patches": patches, "split": split, "halo": halo}
    with tempfile.TemporaryDirectory(prefix="tvmp_sweep_") as tmp:
        try:
            r = export_model(f"zoo:{model}:int8", Path(tmp) / "out", patches=patches, split=split, halo=halo)
        except TvmPatchError as e:
            row["refused"] = str(e)
            return row
    analytic = r.analytic_patch_peak_bytes if r.analytic_patch_peak_bytes is not None else r.analytic_peak_bytes
    row |= {"layers": r.plan.get("split_layers"), "halo_used": r.plan.get("halo"), "arena": r.arena_bytes,
            "analytic": analytic, "allowance": r.alignment_allowance_bytes, "seconds": round(r.export_seconds, 1)}
    diff = r.arena_bytes - analytic
    row["verdict"] = "=" if diff == 0 else "below" if diff < 0 else "align" if diff <= r.alignment_allowance_bytes else "OVER"
    row["above"] = above_analytic(r, analytic) if diff > 0 else ""
    return row


def markdown(rows: list[dict[str, Any]]) -> str:
    out = ["| model | PxP | split | halo | layers | arena | analytic | diff | allowance | verdict | above the analytic figure |",
           "| --- | --- | --- | --- | --: | --: | --: | --: | --: | --- | --- |"]
    for r in rows:
        head = f"| {r['model']} | {r['patches']}x{r['patches']} | {r['split']} | {r['halo']} |"
        if "refused" in r:
            out.append(f"{head} refused: {r['refused'][:70]} ||||||")
            continue
        out.append(f"{head} {r['layers']} | {r['arena']:,} | {r['analytic']:,} | {r['arena'] - r['analytic']:+,} | "
                   f"{r['allowance']} | {r['verdict']} | {r['above']} |")
    counts = {v: sum(1 for r in rows if r.get("verdict") == v) for v in ("below", "=", "align", "OVER")}
    refused = sum(1 for r in rows if "refused" in r)
    out.append("")
    out.append(f"measured {len(rows)}: below {counts['below']}, equal {counts['=']}, within the allowance "
               f"{counts['align']}, over {counts['OVER']}, refused {refused}")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="bench_out/arena_sweep")
    ap.add_argument("--models", nargs="*", help="default: the whole zoo; with --halo cache, CACHE_CASES")
    ap.add_argument("--patches", nargs="*", type=int, default=PATCHES)
    ap.add_argument("--splits", nargs="*", default=SPLITS)
    ap.add_argument("--halo", default="recompute", choices=["recompute", "cache", "auto"])
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    t0 = time.monotonic()
    if args.models is None and args.halo == "cache":
        cases = [(m, p, s) for p in args.patches for m, s in CACHE_CASES if s in args.splits]
    else:
        cases = [(m, p, s) for m in (args.models or ZOO) for p in args.patches for s in args.splits]
    for model, p, split in cases:
        rows.append(sweep_one(model, p, split, args.halo))
        print(json.dumps(rows[-1]), flush=True)
        (out / "arena_sweep.json").write_text(json.dumps(rows, indent=1) + "\n")
    (out / "arena_sweep.md").write_text(markdown(rows))
    print(f"{len(rows)} configurations in {time.monotonic() - t0:.0f} s; {out / 'arena_sweep.md'}")


if __name__ == "__main__":
    main()
