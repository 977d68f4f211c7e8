"""What a search leaves behind: the best architectures as zoo spec JSON files, and a summary.

`DIR/best.json` (and `DIR/rank01.json` ... for the top `TOP`) is a ProxylessNAS/MCUNet config
(`tvm_patch.zoo.to_config`) whose `tvm_patch` entry names the model, asks for its int8 variant (what the
board runs) and records the schedule and the evaluation, so `tvm-patch profile DIR/best.json` and
`tvm-patch build DIR/best.json --board B` take it as a model. `DIR/search.json` holds the run's settings,
the best score per generation and the top candidates. Every file is written whole (temporary file, then
rename): an interrupted write leaves the previous file or none.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from tvm_patch.atomic import write_atomic
from tvm_patch.errors import TvmPatchError
from tvm_patch.search.loop import Candidate, SearchResult
from tvm_patch.zoo import to_config

TOP = 5


def top(result: SearchResult, n: int = TOP) -> list[Candidate]:
    """The best `n` distinct architectures of the population (each with its best schedule), best first."""
    out: list[Candidate] = []
    seen = set()
    for c in result.population:
        arch = (c.genome.resolution, c.genome.width, c.spec.blocks)
        if arch not in seen:
            seen.add(arch)
            out.append(c)
    return out[:n]


def candidate_json(c: Candidate, rank: int) -> dict:
    """One candidate as the summary lists it."""
    s = c.genome.schedule()
    return {"rank": rank, "name": c.spec.name, "score": c.score, "resolution": c.genome.resolution,
            "width": c.genome.width, "depths": list(c.genome.depths), "describe": c.spec.describe(),
            "schedule": {"split": f"block:{s.split}" if s.split else None, "patches": s.patches if s.split else None,
                         "halo": s.halo if s.split else None, "describe": s.describe(), "cli": s.cli_args()},
            "evaluation": c.evaluation.to_json()}


def _write(path: Path, data: dict) -> None:
    write_atomic(path, json.dumps(data, indent=1) + "\n")


def write_results(result: SearchResult, out_dir: str | os.PathLike, settings: dict) -> list[Path]:
    """Write the top candidates' spec files, best.json and search.json into `out_dir`; returns the paths."""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        written = []
        best = top(result)
        for rank, c in enumerate(best, start=1):
            entry = candidate_json(c, rank)
            meta = {"variant": "int8", "board": result.board, "schedule": entry["schedule"],
                    "evaluation": entry["evaluation"], "search": {"seed": result.seed, "proxy": result.proxy,
                                                                   "score": c.score, "rank": rank}}
            cfg = to_config(c.spec, meta)
            for name in ([f"rank{rank:02d}.json"] + (["best.json"] if rank == 1 else [])):
                _write(out / name, cfg)
                written.append(out / name)
        summary = {**settings, "board": result.board, "seed": result.seed, "proxy": result.proxy,
                   "interrupted": result.interrupted, "generations": len(result.history),
                   "best_score_per_generation": result.history, "evaluated": result.evaluated,
                   "latency": "not predicted: no cost model is wired in yet",
                   "top": [candidate_json(c, r) for r, c in enumerate(best, start=1)]}
        _write(out / "search.json", summary)
        written.append(out / "search.json")
    except OSError as e:
        raise TvmPatchError(f"{out}: cannot write the search results ({e.strerror}); choose a writable --out") from None
    return written


def format_summary(result: SearchResult, out_dir: str | os.PathLike) -> str:
    """The top candidates as text: architecture, schedule, memory against the limits, MACs, and how to use them."""
    lines = [f"search on {result.board} (seed {result.seed}, proxy {result.proxy}): {len(result.history)} "
             f"generation(s), {result.evaluated} genomes evaluated" + (", INTERRUPTED" if result.interrupted else "")]
    best = top(result)
    for rank, c in enumerate(best, start=1):
        ev, g = c.evaluation, c.genome
        lines += [
            f"{rank}. {c.spec.name}: r{g.resolution} w{g.width:g} depths {'-'.join(map(str, g.depths))}, "
            f"{ev.arch_macs / 1e6:.1f} M MACs (executed {ev.macs / 1e6:.1f} M, {ev.macs / ev.arch_macs - 1:+.1%}), "
            f"score {c.score:.6g}",
            f"   {g.schedule().describe()}; SRAM {ev.sram_bytes:,} of {ev.sram_limit:,} B (activations "
            f"{ev.activation_peak_bytes:,}), Flash {ev.flash_bytes:,} of {ev.flash_limit:,} B (weights "
            f"{ev.weights_bytes:,}); latency: not predicted (no cost model yet)",
        ]
    path = Path(out_dir) / "best.json"
    lines.append(f"wrote {path} (and rank01..rank{len(best):02d}.json, search.json); try: tvm-patch profile "
                 f"{path} {' '.join(best[0].genome.schedule().cli_args())}".rstrip())
    return "\n".join(lines)
